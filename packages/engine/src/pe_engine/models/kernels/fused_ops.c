/* The small operations between a decoder layer's matrix products, fused, for float32 rows on
 * the CPU (models/fused_ops.py).
 *
 * At batch 1 a decode step of a 30-layer model spends about as long dispatching some 4,000
 * small torch operations (the norms' pow/mean/rsqrt/mul, RoPE's slices/negation/concatenation,
 * SiLU and its product, the residual additions) as reading weights for them
 * (benchmarks/RESULTS.md, "Batch-1 decode breakdown"). Each function below does one of those
 * groups in one pass over rows that are already in cache, so a layer makes four calls here
 * besides its products and its attention.
 *
 * Layouts (C order, float32): rows of a [M, width] matrix, `stride` floats apart.
 * Built at run time by pe_engine/native_kernels.py; no -ffast-math (sums are vectorised
 * through `omp simd reduction`, nothing changes the process's floating-point mode).
 */
#include <math.h>
#include <stdint.h>

/* residual += delta (when delta is given); out = residual / rms(residual) * weight.
 * residual, delta, out: [M, H]. The Llama RMSNorm, with the residual addition before it. */
void pe_add_rmsnorm(float *residual, const float *delta, const float *weight, float *out,
                    int64_t M, int64_t H, float eps) {
    for (int64_t m = 0; m < M; m++) {
        float *x = residual + m * H;
        if (delta) {
            const float *d = delta + m * H;
#pragma omp simd
            for (int64_t i = 0; i < H; i++) x[i] += d[i];
        }
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int64_t i = 0; i < H; i++) sum += x[i] * x[i];
        const float inv = 1.0f / sqrtf(sum / (float)H + eps);
        float *y = out + m * H;
#pragma omp simd
        for (int64_t i = 0; i < H; i++) y[i] = weight[i] * (x[i] * inv);
    }
}

/* In place, rotate-half RoPE on the first `num_heads` heads (of `head_dim`) of each row of x
 * (rows `stride` floats apart: the query and key heads at the front of a fused qkv row).
 * cos_sin: [max_positions, 2, head_dim] (cos then sin); positions: [M] int64. */
void pe_rope(float *x, int64_t stride, const int64_t *positions, const float *cos_sin,
             int64_t M, int64_t num_heads, int64_t head_dim) {
    const int64_t half = head_dim / 2;
    for (int64_t m = 0; m < M; m++) {
        const float *cos = cos_sin + positions[m] * 2 * head_dim;
        const float *sin = cos + head_dim;
        for (int64_t h = 0; h < num_heads; h++) {
            float *a = x + m * stride + h * head_dim; /* first half */
            float *b = a + half;                      /* second half */
#pragma omp simd
            for (int64_t i = 0; i < half; i++) {
                const float x1 = a[i], x2 = b[i];
                a[i] = x1 * cos[i] - x2 * sin[i];
                b[i] = x2 * cos[half + i] + x1 * sin[half + i];
            }
        }
    }
}

/* out[M, I] = silu(gate_up[:, :I]) * gate_up[:, I:]  (gate_up: [M, 2I]). */
void pe_silu_mul(const float *gate_up, float *out, int64_t M, int64_t I) {
    for (int64_t m = 0; m < M; m++) {
        const float *gate = gate_up + m * 2 * I, *up = gate + I;
        float *y = out + m * I;
        for (int64_t i = 0; i < I; i++) y[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
    }
}
