/* Int8 x int8 products for decode rows on x86 CPUs with AVX512-VNNI (quantization="int8").
 *
 * y[m, n] = w_scale[n] * sum_k w[n, k] * x[m, k] (+ bias[n]), with w int8 [N, K] (one scale per
 * output row) and x float32 [M, K]. Each row of x is first quantized to int8 in blocks of 32
 * inputs, one scale per block (absmax / 127), as llama.cpp's q8_0 does: a single scale for a
 * whole row is wrecked by the outlier channels of these models (benchmarks/RESULTS.md). The
 * products then run on VNNI's 4-way int8 dot products (vpdpbusd takes unsigned x signed bytes:
 * |w| times x with w's sign moved onto x), summed per block in int32 and scaled in float32.
 *
 * Built at run time by pe_engine/native_kernels.py (gcc -O3 -march=native -fopenmp); on a CPU
 * without AVX512-VNNI this file does not compile and pe keeps PyTorch's int8 kernel.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#if !defined(__AVX512VNNI__) || !defined(__AVX512BW__)
#error "needs AVX512-VNNI and AVX512-BW"
#endif

/* x's rows to int8 in blocks of 32; the scales as one 16-float vector per 64 inputs (lanes
 * 0-7: the first block's scale, 8-15: the second's), the layout the product multiplies by. */
static void quantize_rows(const float *x, int64_t M, int64_t K, int8_t *xq, float *xs) {
    for (int64_t m = 0; m < M; m++) {
        for (int64_t b = 0; b < K / 32; b++) {
            const float *src = x + m * K + b * 32;
            float amax = 0.f;
            for (int i = 0; i < 32; i++) amax = fmaxf(amax, fabsf(src[i]));
            float inv = amax > 0.f ? 127.f / amax : 0.f;
            int8_t *dst = xq + m * K + b * 32;
            for (int i = 0; i < 32; i++) dst[i] = (int8_t)lrintf(src[i] * inv);
            float *vec = xs + (m * (K / 64) + b / 2) * 16 + (b % 2) * 8;
            for (int i = 0; i < 8; i++) vec[i] = amax / 127.f;
        }
    }
}

/* Scratch: xq int8 [M, K], xs float32 [M, K / 4]. K must be a multiple of 64. */
int pe_int8_linear(const float *x, const int8_t *w, const float *w_scale, const float *bias,
                   float *y, int64_t M, int64_t N, int64_t K, int8_t *xq, float *xs,
                   int32_t threads) {
    if (K % 64) return 1;
    quantize_rows(x, M, K, xq, xs);
    const int64_t chunks = K / 64;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t n = 0; n < N; n++) {
        const int8_t *wr = w + n * K;
        for (int64_t m = 0; m < M; m++) {
            const int8_t *xr = xq + m * K;
            const float *sr = xs + m * chunks * 16;
            __m512 acc = _mm512_setzero_ps();
            for (int64_t c = 0; c < chunks; c++) {
                __m512i wv = _mm512_loadu_si512(wr + c * 64);
                __m512i xv = _mm512_loadu_si512(xr + c * 64);
                __mmask64 negative = _mm512_movepi8_mask(wv);
                __m512i signed_x = _mm512_mask_sub_epi8(xv, negative, _mm512_setzero_si512(), xv);
                __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_abs_epi8(wv),
                                                  signed_x);
                acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_loadu_ps(sr + c * 16), acc);
            }
            y[m * N + n] = _mm512_reduce_add_ps(acc) * w_scale[n] + (bias ? bias[n] : 0.f);
        }
    }
    return 0;
}

/* ---- a whole decoder layer for decode rows, in one call (models/int8_layers.py) ----------
 *
 * With int8 weights every product of a Llama layer runs on pe_int8_linear above, so a decode
 * step's layer needs no torch operator at all: this walks it in C, calling the fused small
 * ops (models/kernels/fused_ops.c) and the paged attention (attention/kernels/cpu_attention.c)
 * through the pointers in PeKernels, each library built on its own. One call a layer instead
 * of some thirty Python-level calls and their dispatch (about a third of an int8 step). */

typedef void (*pe_add_rmsnorm_fn)(float *, const float *, const float *, float *, int64_t,
                                  int64_t, float);
typedef void (*pe_rope_fn)(float *, int64_t, const int64_t *, const float *, int64_t, int64_t,
                           int64_t);
typedef void (*pe_silu_mul_fn)(const float *, float *, int64_t, int64_t);
typedef void (*pe_store_kv_fn)(const float *, const float *, int64_t, float *, float *,
                               const int64_t *, int64_t, int64_t, int64_t, int64_t);
typedef int (*pe_decode_fn)(const float *, const float *, const float *, float *,
                            const int64_t *, const int64_t *, int64_t, int64_t, int64_t, int64_t,
                            int64_t, int64_t, int64_t, float, int32_t);

typedef struct {
    pe_add_rmsnorm_fn add_rmsnorm;
    pe_rope_fn rope;
    pe_silu_mul_fn silu_mul;
    pe_store_kv_fn store_kv;
    pe_decode_fn decode;
} PeKernels;

typedef struct { /* one int8 linear: weight [n, k], a scale per row, optional bias */
    const int8_t *weight;
    const float *scale;
    const float *bias;
    int64_t n, k;
} PeInt8Weight;

typedef struct { /* what a layer holds: fixed from the first step on */
    const float *input_norm, *post_norm;
    float eps, attn_scale;
    PeInt8Weight qkv, o, gate_up, down;
    float *k_pool, *v_pool; /* [num_kv_heads, num_slots, head_dim] each */
    int64_t num_slots, block_size, num_heads, num_kv_heads, head_dim;
} PeInt8Layer;

typedef struct { /* one step: its rows and where they go, and the scratch every layer reuses */
    int64_t num_rows;
    const int64_t *positions, *slot_mapping, *block_tables, *context_lens;
    int64_t table_stride;
    const float *cos_sin;
    float *normed, *qkv, *q, *attn, *gate_up, *act, *delta; /* [num_rows, width of each] */
    int8_t *xq;
    float *xs; /* pe_int8_linear's scratch, for the widest input */
    int32_t threads;
} PeStep;

static int linear(const PeInt8Weight *w, const float *x, float *y, const PeStep *s) {
    return pe_int8_linear(x, w->weight, w->scale, w->bias, y, s->num_rows, w->n, w->k, s->xq,
                          s->xs, s->threads);
}

/* residual [num_rows, hidden] += the layer's attention, then its MLP. Every row is a decode
 * query (one per sequence). Returns 0, or the first failing kernel's status. */
int pe_int8_decode_layer(const PeKernels *kern, const PeInt8Layer *L, const PeStep *s,
                         float *residual) {
    const int64_t M = s->num_rows, H = L->o.n, D = L->head_dim;
    const int64_t q_size = L->num_heads * D, kv_size = L->num_kv_heads * D;
    const int64_t width = L->qkv.n, inter = L->down.k;
    int status;
    kern->add_rmsnorm(residual, NULL, L->input_norm, s->normed, M, H, L->eps);
    if ((status = linear(&L->qkv, s->normed, s->qkv, s))) return status;
    kern->rope(s->qkv, width, s->positions, s->cos_sin, M, L->num_heads + L->num_kv_heads, D);
    kern->store_kv(s->qkv + q_size, s->qkv + q_size + kv_size, width, L->k_pool, L->v_pool,
                   s->slot_mapping, M, L->num_kv_heads, D, L->num_slots);
    for (int64_t m = 0; m < M; m++) /* the kernel reads queries as [num_rows, heads, D] */
        for (int64_t i = 0; i < q_size; i++) s->q[m * q_size + i] = s->qkv[m * width + i];
    status = kern->decode(s->q, L->k_pool, L->v_pool, s->attn, s->block_tables, s->context_lens,
                          M, L->num_heads, L->num_kv_heads, D, L->num_slots / L->block_size,
                          L->block_size, s->table_stride, L->attn_scale, s->threads);
    if (status) return status;
    if ((status = linear(&L->o, s->attn, s->delta, s))) return status;
    kern->add_rmsnorm(residual, s->delta, L->post_norm, s->normed, M, H, L->eps);
    if ((status = linear(&L->gate_up, s->normed, s->gate_up, s))) return status;
    kern->silu_mul(s->gate_up, s->act, M, inter);
    if ((status = linear(&L->down, s->act, s->delta, s))) return status;
    for (int64_t i = 0; i < M * H; i++) residual[i] += s->delta[i];
    return 0;
}
