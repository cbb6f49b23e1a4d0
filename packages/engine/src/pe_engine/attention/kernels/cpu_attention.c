/* Paged decode attention for the CPU, reading K and V where they lie in the KV pool.
 *
 * The torch reference backend gathers every context row of every decode sequence into a
 * padded [seqs, kv_heads, max_len, head_dim] copy at every layer and step, then runs SDPA over
 * the copy; this kernel reads each row once, in place, through the block table. One task is
 * one (sequence, KV head): its query heads (the grouped-query group) are scored against the
 * context block by block, softmaxed, and the values summed, all in float32. Tasks run on
 * OpenMP threads (the same libgomp runtime torch loads).
 *
 * Layouts (C order, float32):
 *   q, out        [num_seqs, num_heads, head_dim]
 *   k_pool/v_pool [num_kv_heads, num_blocks, block_size, head_dim]   (one layer's K or V)
 *   block_tables  [num_seqs, table_stride] int64; context_lens [num_seqs] int64, >= 1
 *
 * Built at run time by pe_engine/attention/cpu.py (gcc -O3 -march=native -fopenmp); no
 * -ffast-math: reductions are vectorised through `omp simd reduction`, and exp is the
 * polynomial below, so nothing changes the floating-point mode of the process.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* exp(x) for x <= 0 (scores minus their maximum), Cephes' expf polynomial: relative error
 * about 1e-7, and a form the compiler vectorises (no libm call, no branches). */
static inline float exp_nonpositive(float x) {
    x = x < -87.0f ? -87.0f : x;
    float n = (float)(int32_t)(x * 1.44269504088896341f - 0.5f); /* round to nearest, x <= 0 */
    float r = x - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* scores[g * stride + i] = scale * <q_g, k_i> for the n rows k_i of one block. */
static inline void score_block(const float *q, const float *k_rows, int64_t n, int64_t group,
                               int64_t head_dim, float scale, float *scores, int64_t stride) {
    for (int64_t i = 0; i < n; i++) {
        const float *k_row = k_rows + i * head_dim;
        for (int64_t g = 0; g < group; g++) {
            const float *q_row = q + g * head_dim;
            float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
            for (int64_t j = 0; j < head_dim; j++) dot += q_row[j] * k_row[j];
            scores[g * stride + i] = dot * scale;
        }
    }
}

/* acc_g += sum_i p[g * stride + i] * v_i over the n rows v_i of one block. */
static inline void add_block(const float *p, int64_t stride, const float *v_rows, int64_t n,
                             int64_t group, int64_t head_dim, float *acc) {
    for (int64_t i = 0; i < n; i++) {
        const float *v_row = v_rows + i * head_dim;
        for (int64_t g = 0; g < group; g++) {
            const float weight = p[g * stride + i];
            float *a = acc + g * head_dim;
#pragma omp simd
            for (int64_t j = 0; j < head_dim; j++) a[j] += weight * v_row[j];
        }
    }
}

/* Positions [t0, t0 + block_size) of a context, clipped to its length: the last block may
 * be partly filled. */
static inline int64_t block_len(int64_t t0, int64_t context_len, int64_t block_size) {
    return context_len - t0 < block_size ? context_len - t0 : block_size;
}

static void decode_one(const float *q, const float *k_head, const float *v_head, float *out,
                       const int64_t *table, int64_t context_len, int64_t group,
                       int64_t head_dim, int64_t block_size, float scale, float *scores,
                       float *acc) {
    const int64_t block_elems = block_size * head_dim;
    /* scores[g * context_len + t] = scale * <q_g, k_t> */
    for (int64_t t0 = 0; t0 < context_len; t0 += block_size) {
        const float *k_rows = k_head + table[t0 / block_size] * block_elems;
        score_block(q, k_rows, block_len(t0, context_len, block_size), group, head_dim, scale,
                    scores + t0, context_len);
    }
    /* softmax over each query head's row; the 1/sum is applied to the output */
    for (int64_t g = 0; g < group; g++) {
        float *row = scores + g * context_len;
        float max = row[0];
        for (int64_t t = 1; t < context_len; t++) max = row[t] > max ? row[t] : max;
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int64_t t = 0; t < context_len; t++) {
            row[t] = exp_nonpositive(row[t] - max);
            sum += row[t];
        }
        acc[group * head_dim + g] = 1.0f / sum;
    }
    memset(acc, 0, sizeof(float) * group * head_dim);
    for (int64_t t0 = 0; t0 < context_len; t0 += block_size) {
        const float *v_rows = v_head + table[t0 / block_size] * block_elems;
        add_block(scores + t0, context_len, v_rows, block_len(t0, context_len, block_size), group,
                  head_dim, acc);
    }
    for (int64_t g = 0; g < group; g++) {
        const float inv_sum = acc[group * head_dim + g];
        for (int64_t j = 0; j < head_dim; j++) out[g * head_dim + j] = acc[g * head_dim + j] * inv_sum;
    }
}

/* Returns 0, or -1 when a thread could not allocate its scratch (nothing is then trusted). */
int pe_paged_decode_f32(const float *q, const float *k_pool, const float *v_pool, float *out,
                        const int64_t *block_tables, const int64_t *context_lens,
                        int64_t num_seqs, int64_t num_heads, int64_t num_kv_heads,
                        int64_t head_dim, int64_t num_blocks, int64_t block_size,
                        int64_t table_stride, float scale, int32_t num_threads) {
    const int64_t group = num_heads / num_kv_heads;
    const int64_t head_elems = num_blocks * block_size * head_dim;
    int64_t max_len = 1;
    for (int64_t s = 0; s < num_seqs; s++) max_len = context_lens[s] > max_len ? context_lens[s] : max_len;
    int failed = 0;
#pragma omp parallel num_threads(num_threads)
    {
        /* scores [group, max_len], then acc [group, head_dim] and the group's 1/sum */
        float *scores = malloc(sizeof(float) * (size_t)(group * max_len));
        float *acc = malloc(sizeof(float) * (size_t)(group * head_dim + group));
        if (scores == NULL || acc == NULL) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t task = 0; task < num_seqs * num_kv_heads; task++) {
            if (scores == NULL || acc == NULL) continue;
            const int64_t s = task / num_kv_heads, h = task % num_kv_heads;
            const int64_t offset = (s * num_heads + h * group) * head_dim;
            decode_one(q + offset, k_pool + h * head_elems, v_pool + h * head_elems, out + offset,
                       block_tables + s * table_stride, context_lens[s], group, head_dim,
                       block_size, scale, scores, acc);
        }
        free(scores);
        free(acc);
    }
    return failed ? -1 : 0;
}

/* Write the step's new K and V rows into the pool: row m, KV head h goes to slot
 * slot_mapping[m] of head h. k and v may be views into the fused qkv rows: their rows are
 * `row_stride` floats apart, their heads `head_dim` apart. One call for what torch does in a
 * dozen small operations (two index_copy_ with their views and transposes) every layer. */
void pe_store_kv_f32(const float *k, const float *v, int64_t row_stride, float *k_pool,
                     float *v_pool, const int64_t *slot_mapping, int64_t num_tokens,
                     int64_t num_kv_heads, int64_t head_dim, int64_t num_slots) {
    for (int64_t m = 0; m < num_tokens; m++) {
        const int64_t slot = slot_mapping[m];
        for (int64_t h = 0; h < num_kv_heads; h++) {
            const int64_t src = m * row_stride + h * head_dim;
            const int64_t dst = (h * num_slots + slot) * head_dim;
            memcpy(k_pool + dst, k + src, (size_t)head_dim * sizeof(float));
            memcpy(v_pool + dst, v + src, (size_t)head_dim * sizeof(float));
        }
    }
}
