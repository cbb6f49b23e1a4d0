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
