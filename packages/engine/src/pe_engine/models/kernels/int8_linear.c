/* Int8 x int8 products for decode rows on x86 CPUs (quantization="int8").
 *
 * The weights are llama.cpp's Q8_0: int8 [N, K] with one float16 scale per block of 32 inputs
 * of a row, ws [N, K / 32] (absmax / 127, as llama.cpp's quantizer rounds it, so a Q8_0 GGUF's
 * blocks come through bit for bit). y[m, n] = sum_b ws[n, b] * xs[m, b] * sum_{k in b}
 * w[n, k] * xq[m, k] (+ bias[n]): each row of x is first quantized to int8 in blocks of 32
 * the same way (a single scale for a whole row is wrecked by the outlier channels of these
 * models, benchmarks/RESULTS.md), and the blocks' dot products are int8 x int8 in int32:
 *
 * - AVX512-VNNI: vpdpbusd, 64 inputs (two blocks) a step; it takes unsigned x signed bytes, so
 *   |w| multiplies x with w's sign moved onto x;
 * - AVX2 (with FMA and F16C), as llama.cpp's AVX2 path: the same sign trick on vpmaddubsw,
 *   then vpmaddwd, 32 inputs (one block) a step.
 *
 * Each weight row meets up to four input rows at a time (rows_dot): its chunks are loaded and
 * their signs prepared once for all four, so several sequences cost less than one each.
 *
 * Built at run time by pe_engine/native_kernels.py (gcc -O3 -march=native -fopenmp); on a CPU
 * with neither this file does not compile and pe runs int8 layers dequantized.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define PE_VNNI 1
#elif !defined(__AVX2__) || !defined(__FMA__) || !defined(__F16C__)
#error "needs AVX512-VNNI, or AVX2 with FMA and F16C"
#endif

/* x's rows to int8 in blocks of 32, a float32 scale each: xq [M, K], xs [M, K / 32]. */
static void quantize_rows(const float *x, int64_t M, int64_t K, int8_t *xq, float *xs) {
    const int64_t blocks = K / 32;
    for (int64_t m = 0; m < M; m++) {
        for (int64_t b = 0; b < blocks; b++) {
            const float *src = x + m * K + b * 32;
            float amax = 0.f;
            for (int i = 0; i < 32; i++) amax = fmaxf(amax, fabsf(src[i]));
            const float d = amax / 127.f, inv = d > 0.f ? 1.f / d : 0.f;
            int8_t *dst = xq + m * K + b * 32;
            for (int i = 0; i < 32; i++) dst[i] = (int8_t)lrintf(src[i] * inv);
            xs[m * blocks + b] = d;
        }
    }
}

static inline float sum_of_lanes(__m256 v) {
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    s4 = _mm_add_ss(s4, _mm_movehdup_ps(s4));
    return _mm_cvtss_f32(s4);
}

#define TILE 4 /* input rows multiplied together with each weight row */

/* out[r] = the dot product of one weight row with each of R (<= TILE) quantized input rows
 * (xq + r * K, scales xs + r * blocks). Each weight chunk is loaded and prepared once for all
 * R rows, and the R sums are independent chains; called with R a constant, so it unrolls. */
static inline __attribute__((always_inline)) void rows_dot(const int8_t *wr,
                                                           const uint16_t *wsr,
                                                           const int8_t *xq, const float *xs,
                                                           int64_t K, int64_t blocks, int R,
                                                           float *out) {
#ifdef PE_VNNI
    const __m512i halves = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    __m512 acc[TILE];
    for (int r = 0; r < R; r++) acc[r] = _mm512_setzero_ps();
    int64_t b = 0;
    for (; b + 2 <= blocks; b += 2) {
        __m512i wv = _mm512_loadu_si512(wr + b * 32);
        __mmask64 negative = _mm512_movepi8_mask(wv);
        __m512i magnitude = _mm512_abs_epi8(wv);
        uint32_t two;
        __builtin_memcpy(&two, wsr + b, 4);
        __m128 w_scales = _mm_cvtph_ps(_mm_cvtsi32_si128((int)two));
        for (int r = 0; r < R; r++) {
            __m512i xv = _mm512_loadu_si512(xq + r * K + b * 32);
            __m512i signed_x = _mm512_mask_sub_epi8(xv, negative, _mm512_setzero_si512(), xv);
            __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), magnitude, signed_x);
            /* lanes 0-7 hold block b's sums, 8-15 block b+1's: scale each half by its blocks */
            __m128 x_scales = _mm_castsi128_ps(
                _mm_loadl_epi64((const __m128i *)(xs + r * blocks + b))); /* 2 floats */
            __m128 scales = _mm_mul_ps(w_scales, x_scales);
            __m512 scale = _mm512_permutexvar_ps(halves, _mm512_castps128_ps512(scales));
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, acc[r]);
        }
    }
    for (int r = 0; r < R; r++) out[r] = _mm512_reduce_add_ps(acc[r]);
    if (b < blocks) { /* an odd last block */
        __m256i wv = _mm256_loadu_si256((const __m256i *)(wr + b * 32));
        __mmask32 negative = _mm256_movepi8_mask(wv);
        __m256i magnitude = _mm256_abs_epi8(wv);
        const float w_scale = _cvtsh_ss(wsr[b]);
        for (int r = 0; r < R; r++) {
            __m256i xv = _mm256_loadu_si256((const __m256i *)(xq + r * K + b * 32));
            __m256i signed_x = _mm256_mask_sub_epi8(xv, negative, _mm256_setzero_si256(), xv);
            __m256i dot = _mm256_dpbusd_epi32(_mm256_setzero_si256(), magnitude, signed_x);
            out[r] += sum_of_lanes(_mm256_cvtepi32_ps(dot)) * w_scale * xs[r * blocks + b];
        }
    }
#else
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[TILE];
    for (int r = 0; r < R; r++) acc[r] = _mm256_setzero_ps();
    for (int64_t b = 0; b < blocks; b++) {
        __m256i wv = _mm256_loadu_si256((const __m256i *)(wr + b * 32));
        __m256i magnitude = _mm256_sign_epi8(wv, wv);
        const float w_scale = _cvtsh_ss(wsr[b]);
        for (int r = 0; r < R; r++) {
            __m256i xv = _mm256_loadu_si256((const __m256i *)(xq + r * K + b * 32));
            __m256i pairs = _mm256_maddubs_epi16(magnitude, _mm256_sign_epi8(xv, wv));
            __m256i dot = _mm256_madd_epi16(pairs, ones);
            __m256 scale = _mm256_set1_ps(w_scale * xs[r * blocks + b]);
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), scale, acc[r]);
        }
    }
    for (int r = 0; r < R; r++) out[r] = sum_of_lanes(acc[r]);
#endif
}

/* Scratch: xq int8 [M, K], xs float32 [M, K / 32]. K must be a multiple of 32. */
int pe_int8_linear(const float *x, const int8_t *w, const uint16_t *w_scale, const float *bias,
                   float *y, int64_t M, int64_t N, int64_t K, int8_t *xq, float *xs,
                   int32_t threads) {
    if (K % 32) return 1;
    const int64_t blocks = K / 32;
    quantize_rows(x, M, K, xq, xs);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t n = 0; n < N; n++) {
        const int8_t *wr = w + n * K;
        const uint16_t *wsr = w_scale + n * blocks;
        const float add = bias ? bias[n] : 0.f;
        float out[TILE];
        for (int64_t m = 0; m < M; m += TILE) {
            const int8_t *xr = xq + m * K;
            const float *sr = xs + m * blocks;
            const int64_t R = M - m < TILE ? M - m : TILE;
            switch (R) { /* constant row counts, each its own unrolled copy */
            case 1: rows_dot(wr, wsr, xr, sr, K, blocks, 1, out); break;
            case 2: rows_dot(wr, wsr, xr, sr, K, blocks, 2, out); break;
            case 3: rows_dot(wr, wsr, xr, sr, K, blocks, 3, out); break;
            default: rows_dot(wr, wsr, xr, sr, K, blocks, TILE, out); break;
            }
            for (int64_t r = 0; r < R; r++) y[(m + r) * N + n] = out[r] + add;
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

typedef struct { /* one int8 linear: weight [n, k], a float16 scale per 32, optional bias */
    const int8_t *weight;
    const uint16_t *scale;
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
