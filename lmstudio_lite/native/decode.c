/* One decode step (1..8 rows, one new token each) through every transformer block, in one call,
   with each weight matrix in float32, bf16 or a GGUF block format (Q8_0, Q4_0, Q4_1).

   Why C: at decode a block is four weight-streaming GEMVs and some thirty tiny
   ops (norms, RoPE, cache writes, attention over the cache, the activation).
   Through PyTorch each tiny op costs a few microseconds of dispatch; on the
   30-layer SmolLM2 shape that was a third of a step on the CI CPUs. Here the
   tiny ops are plain loops, and the GEMVs split their outputs over the threads
   of one OpenMP team (the process already holds torch's libgomp, so this is the
   same thread pool torch uses). Every row of a step is served by one pass over
   each weight block: at batch 8 the weights are read once, not eight times.

   Shapes: B rows, C d_model, H query heads, KV key/value heads, D head_dim, F d_ff,
   Q = (H + 2 KV) D the fused q|k|v width. Matrices (mat below):
   - T_F32: float32 [in, out], contiguous (model/layers.py; measured fastest for f32);
   - T_BF16: bfloat16 [out, in] rows (layers.store_out_in), widened to float32 exactly;
   - T_Q8_0 / T_Q4_0 / T_Q4_1: GGUF rows [out, in/32 blocks], byte for byte ggml's layout:
     q8_0 = fp16 d, 32 int8 (34 B), value q*d; q4_0 = fp16 d, 16 B nibbles (low nibbles are
     elements 0..15, high 16..31), value (q-8)*d (18 B); q4_1 = fp16 d, fp16 m, 16 B, q*d+m (20 B).
   - T_Q4_0X / T_Q4_1X / T_Q8_0RX: the same blocks repacked 16 outputs side by side (lml_pack_x16,
     where LML_X16 is built: AVX-512 VNNI), as many bytes (gemv.h: rows_x16 has the layout).
   Fused q|k|v and gate|up are one matrix: columns side by side for T_F32, rows one after
   the other for the row formats; when the projections differ in format (GGUF files mix them)
   they are up to MAX_PARTS matrices side by side, each in its own format (P_QKV's parts).
   The KV cache of a layer is [cache_rows, KV, max_len, D] in float32, bf16 or float16; row b of the
   step uses cache row slot[b] at position pos[b]. The final norm and the vocabulary head run
   in the same call and parallel region when logits are asked for.

   A 4-bit model (Q4_0/Q4_1 layers) on AVX-512 with VNNI and VBMI, or on AVX2, computes as llama.cpp does:
   each input is rounded to int8 per block of 32 (dx = max|x| / 127) once per phase, and its
   Q4 and Q8_0 matrices (the head: T_Q8_0R) take integer dot products, vpdpbusd on 4 blocks of
   nibbles or 2 Q8_0 blocks at a time, whose scales come out of the same loaded bytes (gemv.h:
   rows_int8; on AVX2 a block at a time, vpmaddubsw or AVX-VNNI's vpdpbusd: 1.43-1.56x the exact
   AVX2 step). The result is exactly the rounded input times the dequantized
   weights (the tests' reference rounds the same way), so each output is off the float product
   by at most the sum over blocks of (dx / 2) sum |w|. SmolLM2-135M-Instruct's published Q4_1
   file then answers as llama.cpp answers from it ("What is the capital of France?": "L'Étoile,
   la Marseillaise, ..." from both, a near tie away from float32's "The capital of France is
   Paris."), and a step is 1.2-1.3x faster than exact float at one thread (the GEMVs 1.35-1.8x).
   With AVX-512 VNNI the model's 4-bit matrices and Q8_0 head come packed (T_*X, model/decode.py
   packs them within a memory limit): rows_x16 gives 16 outputs per 8 vpdpbusd per row and block,
   the same rounding, about a third of rows_int8's work per row; prefill's rows go through it too
   (lml_linear_x16).
   The exact path, which the plain C build, AVX-512 without VNNI and every Q8_0 model take: each block
   dequantized exactly in registers, multiplying the float32 activation and accumulating in
   float32 like the PyTorch reference (only the order of summation differs). On AVX-512 a Q4
   block's 32 weights are two vpermps lookups into a 16-entry table of its values ((q - 8) d or
   q d + m, computed as the reference computes them), indexed by the nibbles; a Q8_0 block at one
   row is d times the block's float32 sum of q x. AVX2 widens the nibbles instead (the same
   lookup on 8 lanes, two tables and a blend, was 1.5x slower per one-row GEMV) and at one row
   takes d times the block's sum of q x in every format, the 4-bit offset times the block's sum
   of x. Q8_0 models stay exact: people pick them for float's answers (SmolLM2 at Q8_0 decodes
   float32's 32 tokens on the tests' prompts; with int8 activations one of the three parts at
   token 13), and at one row they are bound by memory, where int8 gained nothing (1.00x).
   Each row stream prefetches 2 KiB ahead (gemv.h: LML_PREFETCH). On AVX-512 an exact row's
   blocks go in groups of 16 whose fp16 scales one vcvtph2ps converts (gemv.h: load_scales), and
   a one-row GEMV (every block path, bf16) runs 4 output rows at once, each from its own part of
   the range (LML_STREAMS: four memory streams in flight instead of one; x loaded once for the four).
   Float32 and bf16 weights are exact and accumulate in float32, following the PyTorch
   reference term by term; only the order of summation differs.

   Instruction sets are chosen at compile time: the library is built on the user's machine
   with -march=native (native/__init__.py), so the #ifdefs (in gemv.h, the matrix kernels) are
   the run-time choice. LML_PLAIN_C turns every intrinsic off (the tests build that way too;
   ARM builds it). */
#include <math.h>
#include <omp.h>
#include <sched.h>
#include <stdint.h>
#include <string.h>

#include "gemv.h"

/* A projection is up to MAX_PARTS matrices side by side (their outputs concatenated: q|k|v or
   gate|up fused into one matrix is one part; a GGUF file that mixes formats gives one part each),
   PART_SLOTS values per part: format, weights, bias (0: none), outputs (0: no such part). */
#define MAX_PARTS 3
enum { PART_T, PART_W, PART_B, PART_N, PART_SLOTS };
enum { P_NORM1_W, P_NORM1_B, P_QKV, P_O = P_QKV + MAX_PARTS * PART_SLOTS, P_NORM2_W = P_O + PART_SLOTS, P_NORM2_B,
       P_UP, P_DOWN = P_UP + MAX_PARTS * PART_SLOTS, P_SLOTS = P_DOWN + PART_SLOTS };
/* After the layers' slots: the final norm and the vocabulary head (one part). */
enum { HEAD_NORM_W, HEAD_NORM_B, HEAD_PART, HEAD_SLOTS = HEAD_PART + PART_SLOTS };
enum { D_LAYERS, D_C, D_H, D_KV, D_HEAD, D_FF, D_GATED, D_ROPE, D_LAYERNORM, D_ACT, D_CACHE, D_VOCAB, D_COUNT };
enum { CACHE_F32, CACHE_BF16, CACHE_F16 };  /* dims[D_CACHE]: the KV cache's element type */
enum { ACT_SILU, ACT_GELU_TANH, ACT_GELU, ACT_RELU };

#define F(p) ((const float *)(intptr_t)(p))

static float activate(float v, int64_t act) {
    switch (act) {
    case ACT_SILU: return v / (1.0f + expf(-v));
    case ACT_GELU_TANH: return 0.5f * v * (1.0f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)));
    case ACT_GELU: return 0.5f * v * (1.0f + erff(v * 0.7071067811865476f));
    default: return v > 0.0f ? v : 0.0f;
    }
}

/* out = norm(x) (* weight, + bias): each thread makes its own copy, so no barrier is needed. */
static void norm(const float *x, int64_t C, const float *w, const float *b, int64_t layernorm, float eps,
                 float *out) {
    if (layernorm) {
        float mean = 0.0f, var = 0.0f;
#pragma omp simd reduction(+ : mean)
        for (int64_t i = 0; i < C; i++) mean += x[i];
        mean /= (float)C;
#pragma omp simd reduction(+ : var)
        for (int64_t i = 0; i < C; i++) var += (x[i] - mean) * (x[i] - mean);
        float r = 1.0f / sqrtf(var / (float)C + eps);
        for (int64_t i = 0; i < C; i++) out[i] = (x[i] - mean) * r * w[i] + b[i];
    } else {
        float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
        for (int64_t i = 0; i < C; i++) ss += x[i] * x[i];
        float r = 1.0f / sqrtf(ss / (float)C + eps);
        for (int64_t i = 0; i < C; i++) out[i] = w[i] * (x[i] * r);
    }
}


/* This thread's share [*j0, *j0 + *n) of N outputs, cut on multiples of 16. */
static void share(int64_t N, int t, int nt, int64_t *j0, int64_t *n) {
    int64_t lines = (N + 15) / 16, a = lines * t / nt * 16, b = lines * (t + 1) / nt * 16;
    if (b > N) b = N;
    if (a > N) a = N;
    *j0 = a;
    *n = b - a;
}

/* One projection's parts (see P_QKV), each a K -> N matrix. */
typedef struct {
    mat m[MAX_PARTS];
    const float *bias[MAX_PARTS];
    int n, quant;
} proj;

static proj proj_at(const int64_t *p, int nparts, int64_t K) {
    proj r = {.n = 0, .quant = 0};
    for (int i = 0; i < nparts && p[PART_N]; i++, p += PART_SLOTS, r.n++) {
        r.m[i] = (mat){p[PART_T], K, p[PART_N], (const void *)(intptr_t)p[PART_W]};
        r.bias[i] = F(p[PART_B]);
        const int64_t type = p[PART_T];  /* prepare_act's bits: block sums, int8 in the Q4 and Q8_0 orders */
        if (type >= T_Q8_0)
            r.quant |= 1 | (type == T_Q4_0X || type == T_Q4_1X || type == T_Q8_0RX ? 32
                            : lml_int8() ? (type == T_Q8_0R ? 4 : type == T_Q8_0 ? 0 : 2) : 0);
    }
    return r;
}

/* r[b * ldr + 0:n] = x[b] @ the projection's outputs j0..j0+n, plus the bias, every row b < B
   (a range may straddle parts); qa holds x's block sums when a part is quantized. */
static void project(const proj *pr, const float *x, const qact *qa, int64_t B, int64_t j0, int64_t n, float *r,
                    int64_t ldr) {
    int64_t start = 0;
    for (int i = 0; i < pr->n; start += pr->m[i].N, i++) {
        const int64_t end = start + pr->m[i].N, lo = j0 > start ? j0 : start, hi = j0 + n < end ? j0 + n : end;
        if (lo >= hi) continue;
        float *out = r + (lo - j0);
        matvec(&pr->m[i], x, qa, B, lo - start, hi - lo, out, ldr);
        if (pr->bias[i])
            for (int64_t b = 0; b < B; b++)
                for (int64_t j = 0; j < hi - lo; j++) out[b * ldr + j] += pr->bias[i][lo - start + j];
    }
}

/* v rotated: out[d] = v[d] cos[d] + v[(d + D/2) % D] sin[d] (sin's first half negated). */
static void rope(const float *v, const float *cos, const float *sin, int64_t D, float *out) {
    const int64_t half = D / 2;  /* two halves, not (d + half) % D: a division per value was 2% of a step */
    for (int64_t d = 0; d < half; d++) out[d] = v[d] * cos[d] + v[d + half] * sin[d];
    for (int64_t d = half; d < D; d++) out[d] = v[d] * cos[d] + v[d - half] * sin[d];
}

/* Element d of a cached K or V row of type ct, widened exactly. */
static inline float kv_at(const void *row, int ct, int64_t d) {
    if (ct == CACHE_BF16) return bf16_to_f32(((const uint16_t *)row)[d]);
    if (ct == CACHE_F16) return fp16_to_f32(((const uint16_t *)row)[d]);
    return ((const float *)row)[d];
}

/* Attention of one query over positions 0..pos of one KV head: out[D]. The cache is float32,
   bf16 or float16 (ct), widened exactly. With stats, out is the weighted sum before it is divided by
   the total of the weights, and stats receives (the largest score, that total): a block of a longer
   span, for merge_blocks. */
static void attend_any(const float *q, const void *kc, const void *vc, int ct, int64_t pos, int64_t D,
                   float *scores, float *out, float *stats) {
    const float scale = 1.0f / sqrtf((float)D);
    const int64_t row = D * (ct == CACHE_F32 ? 4 : 2);
    float best = -INFINITY;
    for (int64_t t = 0; t <= pos; t++) {
        float s = 0.0f;
        const char *k = (const char *)kc + t * row;
        if (ct == CACHE_F32) {
#pragma omp simd reduction(+ : s)
            for (int64_t d = 0; d < D; d++) s += q[d] * ((const float *)k)[d];
        } else {
#pragma omp simd reduction(+ : s)
            for (int64_t d = 0; d < D; d++) s += q[d] * kv_at(k, ct, d);
        }
        s *= scale;
        scores[t] = s;
        if (s > best) best = s;
    }
    float total = 0.0f;
    for (int64_t t = 0; t <= pos; t++) {
        scores[t] = expf(scores[t] - best);
        total += scores[t];
    }
    for (int64_t d = 0; d < D; d++) out[d] = 0.0f;
    if (stats) stats[0] = best, stats[1] = total;  /* a block of positions: its sums, merged later */
    for (int64_t t = 0; t <= pos; t++) {
        const float p = stats ? scores[t] : scores[t] / total;
        const char *v = (const char *)vc + t * row;
        if (ct == CACHE_F32) {
#pragma omp simd
            for (int64_t d = 0; d < D; d++) out[d] += p * ((const float *)v)[d];
        } else {
#pragma omp simd
            for (int64_t d = 0; d < D; d++) out[d] += p * kv_at(v, ct, d);
        }
    }
}

/* attend_any for each of the G query heads q + g D of one KV head: into out + g D, or, for a block,
   into part + g (D + 2) with its (largest score, total) after the D sums. */
static void attend_heads_any(const float *q, int64_t G, const void *kc, const void *vc, int ct, int64_t pos,
                             int64_t D, float *scores, float *out, float *part) {
    for (int64_t g = 0; g < G; g++)
        attend_any(q + g * D, kc, vc, ct, pos, D, scores, part ? part + g * (D + 2) : out + g * D,
                   part ? part + g * (D + 2) + D : NULL);
}

#if defined(LML_AVX512)
/* 16 values of a cached K or V row of type ct from element d, widened exactly. */
INLINE __m512 kv16(const void *row, int ct, int64_t d) {
    if (ct == CACHE_BF16)
        return _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)((const uint16_t *)row + d))), 16));
    if (ct == CACHE_F16) return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)row + d)));
    return _mm512_loadu_ps((const float *)row + d);
}

/* e^x for x <= 0 (softmax's shifted scores), 16 at a time: Cephes' expf (n = round(x / ln 2), a
   degree-6 polynomial on the rest, times 2^n), within 2 ulp of expf; llama.cpp's softmax also takes
   a vector exp. */
INLINE __m512 exp16(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.3365f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}

#define ATT_HEADS 4  /* heads whose dot products are made together (4 x 4 sums, a K row in registers) */
#define ATT_ACC 16   /* zmm accumulators of the weighted sums of V: 16 / (D / 16) heads at once */
#ifndef LML_ATT_AHEAD
#define LML_ATT_AHEAD 8  /* K rows asked for this many positions ahead (2 KiB of a float32 64-wide head) */
#endif

/* Scores of gn heads (q rows of D = 16 nv floats) over positions 0..n-1 into rows of ld floats. */
INLINE void attend_scores(const int nv, const int gn, const float *q, const void *kc, const void *vc, int ct,
                          int64_t n, int64_t row, float scale, float *scores, int64_t ld, int first) {
    if (gn > ATT_HEADS) return;  /* never: the caller's passes hold at most ATT_HEADS (the compiler's bound) */
    int64_t t = 0;
    for (; t + 4 <= n; t += 4) {
        for (int64_t o = 0; o < 4 * row; o += 64) {
            _mm_prefetch((const char *)kc + (t + LML_ATT_AHEAD) * row + o, _MM_HINT_T0);
            if (first) _mm_prefetch((const char *)vc + t * row + o, _MM_HINT_T1);  /* V's turn comes next */
        }
        __m512 s4[ATT_HEADS][4];
        for (int u = 0; u < 4; u++) {
            const char *k = (const char *)kc + (t + u) * row;
            const __m512 k0 = kv16(k, ct, 0);
            for (int g = 0; g < gn; g++) s4[g][u] = _mm512_mul_ps(_mm512_loadu_ps(q + g * 16 * nv), k0);
            for (int i = 1; i < nv; i++) {
                const __m512 ki = kv16(k, ct, 16 * i);
                for (int g = 0; g < gn; g++)
                    s4[g][u] = _mm512_fmadd_ps(_mm512_loadu_ps(q + g * 16 * nv + 16 * i), ki, s4[g][u]);
            }
        }
        for (int g = 0; g < gn; g++) {
            /* the four sums: per 128-bit lane (a0+a2, b0+b2, a1+a3, b1+b3) and the same of c, d; then
               (a, b, c, d) per lane; then the four lanes added */
            const __m512 *sv = s4[g];
            const __m512 ab = _mm512_add_ps(_mm512_unpacklo_ps(sv[0], sv[1]), _mm512_unpackhi_ps(sv[0], sv[1]));
            const __m512 cd = _mm512_add_ps(_mm512_unpacklo_ps(sv[2], sv[3]), _mm512_unpackhi_ps(sv[2], sv[3]));
            const __m512 abcd = _mm512_add_ps(_mm512_shuffle_ps(ab, cd, 0x44), _mm512_shuffle_ps(ab, cd, 0xEE));
            const __m256 half = _mm256_add_ps(_mm512_castps512_ps256(abcd), _mm512_extractf32x8_ps(abcd, 1));
            const __m128 four = _mm_add_ps(_mm256_castps256_ps128(half), _mm256_extractf128_ps(half, 1));
            _mm_storeu_ps(scores + g * ld + t, _mm_mul_ps(four, _mm_set1_ps(scale)));
        }
    }
    for (; t < n; t++) {
        const char *k = (const char *)kc + t * row;
        for (int g = 0; g < gn; g++) {
            const float *qg = q + g * 16 * nv;
            __m512 s1 = _mm512_mul_ps(_mm512_loadu_ps(qg), kv16(k, ct, 0));
            for (int i = 1; i < nv; i++) s1 = _mm512_fmadd_ps(_mm512_loadu_ps(qg + 16 * i), kv16(k, ct, 16 * i), s1);
            scores[g * ld + t] = _mm512_reduce_add_ps(s1) * scale;
        }
    }
}

/* out (gn rows of D) = the weights (rows of ld, each head's exponentials) times V, times inv per head. */
INLINE void attend_values(const int nv, const int gn, const float *scores, int64_t ld, const void *vc, int ct,
                          int64_t n, int64_t row, const float *inv, float *out, int64_t ldo) {
    if (gn * nv > ATT_ACC) return;  /* never: the caller's passes fit (the compiler's bound) */
    __m512 acc[ATT_ACC];
    for (int i = 0; i < gn * nv; i++) acc[i] = _mm512_setzero_ps();
    for (int64_t t = 0; t < n; t++) {
        const char *v = (const char *)vc + t * row;
        for (int i = 0; i < nv; i++) {
            const __m512 vi = kv16(v, ct, 16 * i);
            for (int g = 0; g < gn; g++)
                acc[g * nv + i] = _mm512_fmadd_ps(_mm512_set1_ps(scores[g * ld + t]), vi, acc[g * nv + i]);
        }
    }
    for (int g = 0; g < gn; g++)
        for (int i = 0; i < nv; i++)
            _mm512_storeu_ps(out + g * ldo + i * 16, _mm512_mul_ps(acc[g * nv + i], _mm512_set1_ps(inv[g])));
}

/* The common head sizes (32, 64, 128) and head counts, compiled each with its loops unrolled (sums
   in registers); any other the same sums through the general loops. */
#define ATT_CASES(CALL) CALL(2, 1) CALL(2, 2) CALL(2, 3) CALL(2, 4) CALL(2, 5) CALL(2, 6) CALL(2, 7) CALL(2, 8) \
    CALL(4, 1) CALL(4, 2) CALL(4, 3) CALL(4, 4) CALL(8, 1) CALL(8, 2)

static void attend_scores_any(int nv, int gn, const float *q, const void *kc, const void *vc, int ct, int64_t n,
                              int64_t row, float scale, float *scores, int64_t ld, int first) {
    switch (nv * 16 + gn) {
#define CASE(V, G) case V * 16 + G: attend_scores(V, G, q, kc, vc, ct, n, row, scale, scores, ld, first); return;
        ATT_CASES(CASE)
#undef CASE
    }
    attend_scores(nv, gn, q, kc, vc, ct, n, row, scale, scores, ld, first);
}

static void attend_values_any(int nv, int gn, const float *scores, int64_t ld, const void *vc, int ct, int64_t n,
                              int64_t row, const float *inv, float *out, int64_t ldo) {
    switch (nv * 16 + gn) {
#define CASE(V, G) case V * 16 + G: attend_values(V, G, scores, ld, vc, ct, n, row, inv, out, ldo); return;
        ATT_CASES(CASE)
#undef CASE
    }
    attend_values(nv, gn, scores, ld, vc, ct, n, row, inv, out, ldo);
}

/* The G query heads q + g D of one KV head over positions 0..pos (out + g D each; scores: G rows
   of ld floats). Each head's sums are attend_any's, in vectors (head sizes that are multiples of
   16 up to 256): four positions' dot products reduced together, the exponentials 16 at a time, the
   weighted sum of V in registers, divided by the total once; the same numbers as one head at a
   time. The heads go through K and V together, each row read once for all of them, with K's next
   rows and V's asked for ahead. One head at a time (each from the start of K, nothing asked
   ahead), SmolLM2 Q4_1's 8-row step at position 100 spent 2.7 of its 10 ms in attention, waiting
   on the cache. Now its step there is 1.07x faster, one row's at position 1,000 1.2x
   (bench/kernel_ab.py --gguf FILE --rows 8 --pos 100 --threads 2). */
static void attend_heads(const float *q, int64_t G, const void *kc, const void *vc, int ct, int64_t pos,
                         int64_t D, float *scores, int64_t ld, float *out, float *part) {
    if (D % 16 || D > 256) {
        attend_heads_any(q, G, kc, vc, ct, pos, D, scores, out, part);
        return;
    }
    const int nv = (int)(D / 16), per = ATT_ACC / nv;
    const int64_t n = pos + 1, row = D * (ct == CACHE_F32 ? 4 : 2);
    const float scale = 1.0f / sqrtf((float)D);
    for (int64_t g0 = 0; g0 < G; g0 += ATT_HEADS) {
        const int gn = G - g0 < ATT_HEADS ? (int)(G - g0) : ATT_HEADS;
        attend_scores_any(nv, gn, q + g0 * D, kc, vc, ct, n, row, scale, scores + g0 * ld, ld, g0 == 0);
    }
    for (int64_t g0 = 0; g0 < G; g0 += per) {
        const int gn = G - g0 < per ? (int)(G - g0) : per;
        float inv[ATT_ACC];  /* 1 / each head's total */
        for (int g = 0; g < gn; g++) {
            float *sc = scores + (g0 + g) * ld;
            __m512 best = _mm512_set1_ps(-INFINITY);
            for (int64_t t = 0; t < n; t += 16) best = _mm512_max_ps(best, _mm512_mask_loadu_ps(best, lanes16(n - t), sc + t));
            const __m512 top = _mm512_set1_ps(_mm512_reduce_max_ps(best));
            __m512 sum = _mm512_setzero_ps();
            for (int64_t t = 0; t < n; t += 16) {
                const __mmask16 m = lanes16(n - t);
                const __m512 e = _mm512_maskz_mov_ps(m, exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, sc + t), top)));
                _mm512_mask_storeu_ps(sc + t, m, e);
                sum = _mm512_add_ps(sum, e);
            }
            const float total = _mm512_reduce_add_ps(sum);
            inv[g] = 1.0f / total;
            if (part) {  /* a block: the sum undivided (times 1, exactly), its largest score and total */
                part[(g0 + g) * (D + 2) + D] = _mm512_reduce_max_ps(best);
                part[(g0 + g) * (D + 2) + D + 1] = total;
                inv[g] = 1.0f;
            }
        }
        if (part) attend_values_any(nv, gn, scores + g0 * ld, ld, vc, ct, n, row, inv, part + g0 * (D + 2), D + 2);
        else attend_values_any(nv, gn, scores + g0 * ld, ld, vc, ct, n, row, inv, out + g0 * D, D);
    }
}
#else
static void attend_heads(const float *q, int64_t G, const void *kc, const void *vc, int ct, int64_t pos,
                         int64_t D, float *scores, int64_t ld, float *out, float *part) {
    (void)ld;
    attend_heads_any(q, G, kc, vc, ct, pos, D, scores, out, part);
}
#endif

/* out[j] = act(g[j]) (times u[j] when u is given): the MLP's activation of one row's chunk. SiLU
   (every Llama-family model) goes 16 at a time on AVX-512 as v e / (1 + e) with e = exp(-|v|), and
   e = 1 for v >= 0, so exp16 never sees a positive power: the scalar expf and division per value
   were 6% of an 8-row SmolLM2 step. */
static void activate_row(const float *g, const float *u, int64_t n, int64_t act, float *out) {
    int64_t j = 0;
#if defined(LML_AVX512)
    if (act == ACT_SILU) {
        const __m512 one = _mm512_set1_ps(1.0f);
        for (; j < n; j += 16) {
            const __mmask16 m = n - j >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - j)) - 1);
            const __m512 v = _mm512_maskz_loadu_ps(m, g + j);
            const __m512 e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_abs_ps(v)));
            const __m512 num = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_LT_OQ), one, e);
            __m512 y = _mm512_div_ps(_mm512_mul_ps(v, num), _mm512_add_ps(one, e));
            if (u) y = _mm512_mul_ps(y, _mm512_maskz_loadu_ps(m, u + j));
            _mm512_mask_storeu_ps(out + j, m, y);
        }
        return;
    }
#endif
    for (; j < n; j++) out[j] = u ? activate(g[j], act) * u[j] : activate(g[j], act);
}

/* x[i] rounded to float16 and widened back, as the cache stores and attention reads a float16
   K or V value: the tests' view of both conversions (torch's, exactly). */
void lml_round_fp16(const float *x, uint16_t *h, float *back, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        h[i] = f32_to_fp16(x[i]);
        back[i] = fp16_to_f32(h[i]);
    }
}

/* A row's attention over more than ATT_BLOCK positions is cut into blocks of that many, each a
   chunk of its own (attend_heads with part), and merged after (merge_blocks), so that one row deep
   in a chat keeps both threads busy: one chunk per KV head left SmolLM2's three heads 2:1 on two
   threads. SmolLM2 Q4_1, float16 cache: one row 1.13x / 1.15x / 1.19x a step at positions 2,000 /
   3,000 / 4,000, 8 rows 1.02-1.13x; no change below 1,024. Blocks of 256 cost 8 rows up to 8% at
   positions 300-3,000 (more chunks and merges than threads need). The cut depends on the position
   alone, never on the rows or threads beside it: a row's numbers stay the same alone or among eight. */
#ifndef ATT_BLOCK
#define ATT_BLOCK 1024
#endif

/* out [G, D] = the blocks' weighted sums merged: each block's parts [G, D + 2] hold its undivided sum,
   largest score and total (attend_heads's part), blocks one after the other. */
static void merge_blocks(const float *parts, int64_t blocks, int64_t G, int64_t D, float *out) {
    for (int64_t g = 0; g < G; g++) {
        float top = -INFINITY, total = 0.0f;
        for (int64_t i = 0; i < blocks; i++) top = fmaxf(top, parts[(i * G + g) * (D + 2) + D]);
        float *o = out + g * D;
        for (int64_t d = 0; d < D; d++) o[d] = 0.0f;
        for (int64_t i = 0; i < blocks; i++) {
            const float *p = parts + (i * G + g) * (D + 2), w = expf(p[D] - top);
            total += p[D + 1] * w;
            for (int64_t d = 0; d < D; d++) o[d] += w * p[d];
        }
        const float inv = 1.0f / total;
        for (int64_t d = 0; d < D; d++) o[d] *= inv;
    }
}

/* A K or V row into the cache, rounded to its type ct as torch's .to() rounds. */
static void store(void *dst, const float *src, int64_t D, int ct) {
    if (ct == CACHE_BF16)
        for (int64_t d = 0; d < D; d++) ((uint16_t *)dst)[d] = f32_to_bf16(src[d]);
    else if (ct == CACHE_F16)
        for (int64_t d = 0; d < D; d++) ((uint16_t *)dst)[d] = f32_to_fp16(src[d]);
    else
        memcpy(dst, src, (size_t)D * sizeof(float));
}

static int64_t up16(int64_t n) { return (n + 15) / 16 * 16; }

/* The private (per thread) part of the scratch, in floats. */
typedef struct {
    int64_t h, rot, scores, r, r2, s, q4, q8, dx4, dx8, sx4, xi, total;
} layout;

static layout private_layout(int64_t B, int64_t C, int64_t D, int64_t G, int64_t max_len, int64_t widest_n,
                             int64_t widest_k) {
    layout l;
    l.h = 0;                                  /* normed rows [B, C] */
    l.rot = l.h + up16(B * C);                /* a rotated k, or a KV head's G rotated queries [G, D] */
    l.scores = l.rot + up16(G * D);           /* their scores [G, up16(max_len)] */
    l.r = l.scores + G * up16(max_len);       /* matvec results [B, widest_n] */
    l.r2 = l.r + up16(B * widest_n);          /* the gated MLP's up half */
    l.s = l.r2 + up16(B * widest_n);          /* an activation's block sums [B, widest_k/32] */
    l.q4 = l.s + up16(B * widest_k / 32 + 1);      /* its int8 blocks (qact; bytes) */
    l.q8 = l.q4 + up16(B * quads(widest_k) * 32);
    l.dx4 = l.q8 + up16(B * pairs(widest_k) * 16);  /* and their scales */
    l.dx8 = l.dx4 + up16(B * quads(widest_k) * 16);
    l.sx4 = l.dx8 + up16(B * pairs(widest_k) * 16);
    l.xi = l.sx4 + up16(B * quads(widest_k) * 16);  /* rows_x16's records (bytes) */
    l.total = l.xi + up16(B * (widest_k / 32) * X16_REC / 4);
    return l;
}

static int64_t max3(int64_t a, int64_t b, int64_t c) { return a > b ? (a > c ? a : c) : (b > c ? b : c); }

/* Work sharing without barriers. A step is a chain of phases (per layer: q|k|v, attention, the
   merge of attention's blocks, o, up, down), each cut into chunks that threads claim from an
   atomic counter; a phase is over when its done counter reaches its chunk count, and a thread then
   starts the next. Why not
   `omp barrier` (five per layer before): a barrier waits for every thread to arrive, and on a
   shared 2-core machine one of the two threads is often descheduled for a whole time slice, so a
   30-layer step waited up to 150 slices (SmolLM2 Q4_0 on 2 threads under load: 2-7 tok/s, against
   60 on one thread). Here a thread that is away holds no chunk, so the other one does all the
   work of the phase and goes on; only a chunk in flight is waited for. */
typedef struct {
    int64_t claim, done, pad[6];  /* one cache line each */
} phase_ctr;

static void relax(int *spins) {
    if (++*spins < 4000) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
    } else {
        sched_yield();  /* the thread we wait for may be waiting for this core */
    }
}

static void wait_done(phase_ctr *c, int64_t total) {
    int spins = 0;
    while (__atomic_load_n(&c->done, __ATOMIC_ACQUIRE) < total) relax(&spins);
}

static int64_t claim(phase_ctr *c) { return __atomic_fetch_add(&c->claim, 1, __ATOMIC_RELAXED); }
static void finish(phase_ctr *c) { __atomic_fetch_add(&c->done, 1, __ATOMIC_RELEASE); }

/* This thread's next chunk of a phase of total chunks; when none is left (the result is >= total),
   it returns once every thread's chunks are done, so the next phase may read their results. */
static int64_t take_chunk(phase_ctr *c, int64_t total) {
    const int64_t ci = claim(c);
    if (ci >= total) wait_done(c, total);
    return ci;
}

/* for each chunk ci < total of phase c that this thread claims (see take_chunk) */
#define EACH_CHUNK(ci, c, total) \
    for (int64_t ci = take_chunk(c, total); ci < (total); finish(c), ci = take_chunk(c, total))

/* Chunks of a matrix's N outputs: a couple per thread (so a thread that is away costs little),
   cut on multiples of 16 by share(). Two per thread rather than four: longer row streams and less
   waiting on the last chunk of a phase (SmolLM2 at 2 threads, paired steps: Q4_1 and Q8_0 1.04-1.08x
   per token; one per thread no better, eight 0.92x). */
#ifndef LML_CHUNKS
#define LML_CHUNKS 2
#endif

static int64_t chunks(int64_t N, int nt) {
    const int64_t lines = (N + 15) / 16, want = nt == 1 ? 1 : LML_CHUNKS * (int64_t)nt;
    return lines < want ? (lines > 0 ? lines : 1) : want;
}

#define PHASES_PER_LAYER 6

/* The phases of a step: six per layer, and the head's. */
static int64_t phases(const int64_t *dims) { return dims[D_LAYERS] * PHASES_PER_LAYER + 1; }

/* Rows b < B: x [B, C] enters as the embedded tokens (plus position embeddings) and leaves as the
   residual stream after the last block; pos[b] its position, slot[b] its cache row. ptrs: P_SLOTS
   values per layer (types, addresses; 0 where absent), then HEAD_SLOTS; k_cache, v_cache: the whole
   [n_layer, cache_rows, KV, max_len, D] caches; cos, sin: RoPE tables [*, D] (unused without RoPE);
   logits: NULL, or [B, dims[D_VOCAB]] to receive the head of the final norm of x, in the same
   parallel region (a second one per token cost a wake-up of the thread team, and the head's
   GEMV is a fifth of a quantized step); scratch: lml_scratch_floats(dims, B, max_len, nthreads)
   floats, 64-byte aligned. The caller checks B <= 8, positions against max_len, slots against
   cache_rows, and shapes against types. */
void lml_decode(const int64_t *ptrs, const int64_t *dims, float eps, int64_t B, const int64_t *pos,
                const int64_t *slot, const float *cos, const float *sin, void *k_cache, void *v_cache,
                int64_t cache_rows, int64_t max_len, float *x, float *logits, float *scratch, int nthreads) {
    const int64_t L = dims[D_LAYERS], C = dims[D_C], H = dims[D_H], KV = dims[D_KV], D = dims[D_HEAD];
    const int64_t FF = dims[D_FF], gated = dims[D_GATED], use_rope = dims[D_ROPE], V = dims[D_VOCAB];
    const int64_t layernorm = dims[D_LAYERNORM], act = dims[D_ACT];
    const int ct = (int)dims[D_CACHE];
    const int64_t Q = (H + 2 * KV) * D, group = H / KV, HD = H * D;
    const int64_t esize = ct == CACHE_F32 ? 4 : 2, layer_stride = cache_rows * KV * max_len * D * esize;
    const layout lay = private_layout(B, C, D, group, max_len, max3(Q, C, FF), max3(C, HD, FF));
    const int64_t most_blocks = (max_len - 1) / ATT_BLOCK + 1;
    float *qkv = scratch, *y = qkv + up16(B * Q), *a = y + up16(B * HD), *parts = a + up16(B * FF);
    float *priv = parts + up16(B * H * most_blocks * (D + 2));
    /* each row's blocks of positions, and its first attention chunk (a chunk: a block of one KV head) */
    int64_t blocks[MAX_ROWS], first[MAX_ROWS + 1], merges = 0;
    first[0] = 0;
    for (int64_t b = 0; b < B; b++) {
        blocks[b] = pos[b] / ATT_BLOCK + 1;
        first[b + 1] = first[b] + KV * blocks[b];
        if (blocks[b] > 1) merges = B * KV;
    }
    phase_ctr *ctr = (phase_ctr *)(priv + (int64_t)nthreads * lay.total);
    memset(ctr, 0, (size_t)phases(dims) * sizeof(phase_ctr));
    const int64_t *hp = ptrs + L * P_SLOTS;
    const proj head_p = proj_at(hp + HEAD_PART, 1, C);

#pragma omp parallel num_threads(nthreads)
    {
        const int t = omp_get_thread_num(), nt = omp_get_num_threads();
        float *mine = priv + t * lay.total, *h = mine + lay.h, *rot = mine + lay.rot, *sc = mine + lay.scores;
        float *r = mine + lay.r, *r2 = mine + lay.r2;
        qact qa = {NULL, mine + lay.s, (int8_t *)(mine + lay.q4), (int8_t *)(mine + lay.q8), mine + lay.dx4, mine + lay.dx8,
                   mine + lay.sx4, (uint8_t *)(mine + lay.xi)};
        const int64_t nq = chunks(Q, nt), nc = chunks(C, nt), nf = chunks(FF, nt), natt = first[B];
        int64_t j0, n;
        phase_ctr *ph = ctr;
        for (int64_t l = 0; l < L; l++) {
            const int64_t *p = ptrs + l * P_SLOTS;
            const proj qkv_p = proj_at(p + P_QKV, MAX_PARTS, C), o_p = proj_at(p + P_O, 1, HD);
            const proj up_p = proj_at(p + P_UP, MAX_PARTS, C), down_p = proj_at(p + P_DOWN, 1, FF);
            char *kl = (char *)k_cache + l * layer_stride, *vl = (char *)v_cache + l * layer_stride;

            /* 1. q|k|v of every row (a thread norms and quantizes its input once, on its first chunk) */
            int ready = 0;
            EACH_CHUNK(ci, ph, nq) {
                if (!ready++) {
                    for (int64_t b = 0; b < B; b++)
                        norm(x + b * C, C, F(p[P_NORM1_W]), F(p[P_NORM1_B]), layernorm, eps, h + b * C);
                    prepare_act(h, B, C, qkv_p.quant, &qa);
                }
                share(Q, (int)ci, (int)nq, &j0, &n);
                project(&qkv_p, h, &qa, B, j0, n, qkv + j0, Q);
            }
            ph++;
            /* 2. cache writes and attention: a block of positions of a (row, KV head), its queries per chunk */
            EACH_CHUNK(ci, ph, natt) {
                int64_t b = 0;
                while (ci >= first[b + 1]) b++;
                const int64_t nblk = blocks[b], g = (ci - first[b]) / nblk, blk = (ci - first[b]) % nblk, ps = pos[b];
                const float *row = qkv + b * Q;
                const size_t head = (size_t)((slot[b] * KV + g) * max_len) * D * esize;
                char *kc = kl + head, *vc = vl + head;
                if (blk == nblk - 1) {  /* the block that holds the new position writes its K and V first */
                    const float *k = row + (H + g) * D, *v = row + (H + KV + g) * D;
                    if (use_rope) { rope(k, cos + ps * D, sin + ps * D, D, rot); k = rot; }
                    store(kc + ps * D * esize, k, D, ct);
                    store(vc + ps * D * esize, v, D, ct);
                }
                const float *q = row + g * group * D;
                if (use_rope) {
                    for (int64_t i = 0; i < group; i++) rope(q + i * D, cos + ps * D, sin + ps * D, D, rot + i * D);
                    q = rot;
                }
                if (nblk == 1) {
                    attend_heads(q, group, kc, vc, ct, ps, D, sc, up16(max_len), y + b * HD + g * group * D, NULL);
                } else {
                    const int64_t t0 = blk * ATT_BLOCK, last = blk == nblk - 1 ? ps : t0 + ATT_BLOCK - 1;
                    attend_heads(q, group, kc + t0 * D * esize, vc + t0 * D * esize, ct, last - t0, D, sc, up16(max_len),
                                 NULL, parts + ((b * KV + g) * most_blocks + blk) * group * (D + 2));
                }
            }
            ph++;
            /* 2b. the blocks of rows cut in several merged (no chunks when none is) */
            EACH_CHUNK(ci, ph, merges) {
                const int64_t b = ci / KV, g = ci % KV;
                if (blocks[b] > 1)
                    merge_blocks(parts + (b * KV + g) * most_blocks * group * (D + 2), blocks[b], group, D,
                                 y + b * HD + g * group * D);
            }
            ph++;
            /* 3. output projection onto the residual */
            ready = 0;
            EACH_CHUNK(ci, ph, nc) {
                if (!ready++) prepare_act(y, B, HD, o_p.quant, &qa);
                share(C, (int)ci, (int)nc, &j0, &n);
                project(&o_p, y, &qa, B, j0, n, r, n);
                for (int64_t b = 0; b < B; b++)
                    for (int64_t j = 0; j < n; j++) x[b * C + j0 + j] += r[b * n + j];
            }
            ph++;
            /* 4. MLP up (and gate) with the activation */
            ready = 0;
            EACH_CHUNK(ci, ph, nf) {
                if (!ready++) {
                    for (int64_t b = 0; b < B; b++)
                        norm(x + b * C, C, F(p[P_NORM2_W]), F(p[P_NORM2_B]), layernorm, eps, h + b * C);
                    prepare_act(h, B, C, up_p.quant, &qa);
                }
                share(FF, (int)ci, (int)nf, &j0, &n);
                project(&up_p, h, &qa, B, j0, n, r, n);  /* gate is outputs [0, F), up is [F, 2F) */
                if (gated) project(&up_p, h, &qa, B, FF + j0, n, r2, n);
                for (int64_t b = 0; b < B; b++)
                    activate_row(r + b * n, gated ? r2 + b * n : NULL, n, act, a + b * FF + j0);
            }
            ph++;
            /* 5. MLP down onto the residual */
            ready = 0;
            EACH_CHUNK(ci, ph, nc) {
                if (!ready++) prepare_act(a, B, FF, down_p.quant, &qa);
                share(C, (int)ci, (int)nc, &j0, &n);
                project(&down_p, a, &qa, B, j0, n, r, n);
                for (int64_t b = 0; b < B; b++)
                    for (int64_t j = 0; j < n; j++) x[b * C + j0 + j] += r[b * n + j];
            }
            ph++;
        }
        /* 6. the head of the final norm, straight into the logits */
        if (logits) {
            const int64_t nv = chunks(V, nt) * (nt == 1 ? 1 : 4);  /* a large matrix: finer chunks */
            int ready = 0;
            EACH_CHUNK(ci, ph, nv) {
                if (!ready++) {
                    for (int64_t b = 0; b < B; b++)
                        norm(x + b * C, C, F(hp[HEAD_NORM_W]), F(hp[HEAD_NORM_B]), layernorm, eps, h + b * C);
                    prepare_act(h, B, C, head_p.quant, &qa);
                }
                share(V, (int)ci, (int)nv, &j0, &n);
                project(&head_p, h, &qa, B, j0, n, logits + j0, V);
            }
        }
    }
}

/* Floats of scratch lml_decode needs for B rows (the phase counters last). */
int64_t lml_scratch_floats(const int64_t *dims, int64_t B, int64_t max_len, int nthreads) {
    const int64_t C = dims[D_C], H = dims[D_H], KV = dims[D_KV], D = dims[D_HEAD], FF = dims[D_FF];
    const int64_t Q = (H + 2 * KV) * D;
    const layout lay = private_layout(B, C, D, H / KV, max_len, max3(Q, C, FF), max3(C, H * D, FF));
    return up16(B * Q) + up16(B * H * D) + up16(B * FF) + up16(B * H * ((max_len - 1) / ATT_BLOCK + 1) * (D + 2)) +
           (int64_t)nthreads * lay.total +
           phases(dims) * (int64_t)(sizeof(phase_ctr) / sizeof(float));
}

/* Prefill's attention of one segment: query t (t < T, at position start + t; q [T, H * D] float32,
   RoPE applied) over positions 0..start + t of one cache row, whose K and V (kc, vc: [KV, *, D] in
   type ct, head_stride elements from one KV head to the next) already hold the segment's own; out
   [T, H * D]. torch's SDPA took a fifth of a SmolLM2 prefill pass (five 100-token prompts: 413 against
   323 ms with it skipped), and each segment's cache prefix was first widened to float32.
   On AVX-512 (D a multiple of 16, up to 256; G at most ATT_VECS), a KV head at a time: the threads
   first widen its K into 16-position tiles laid out [D][16] and its V to float32 rows, then take
   blocks of queries, ATT_VECS query vectors each (a block's queries times the head's G query
   heads), one per register lane (attend_block). Elsewhere each query runs the decode step's
   attend_heads, which was also the first version here: K and V read again for every query, about
   100 GFLOP/s and 0.82x torch at 3,000 positions; the blocks run at 91-180 from 128 to 6,000
   positions (bench/attention.py --kernel, SmolLM2's heads, 2 threads).
   scratch: lml_attend_scratch_floats(H, KV, D, start + T, nthreads) floats. */
#define ATT_TB 4
#define ATT_VECS 16
int64_t lml_attend_scratch_floats(int64_t H, int64_t KV, int64_t D, int64_t length, int nthreads) {
    const int64_t n = up16(length), G = H / KV;
    return 2 * n * D + (int64_t)nthreads * ((G > ATT_VECS ? G : ATT_VECS) * n + D * ATT_VECS) + 64;
}

#if defined(LML_AVX512)
/* One block of up to ATT_VECS query vectors side by side (qt: [D][ATT_VECS], scaled; pos[i] the
   position vector i attends up to, last - 1 at most) over positions 0..last of kt (K in tiles of 16
   positions, [tile][D][16]) and v32 (V in float32 rows [*, D]); vector i's result into out[i]
   (D floats each), i < nv. st: [up16(last)][ATT_VECS] scratch. Every lane of a register is a query
   vector, so the scores (16 positions, one register each), the softmax and the weighted sum of V
   (16 dims of all vectors, one register each) are all FMAs on full registers, with each K and V
   value loaded once per block. */
static void attend_block(const float *qt, const float *pos, int nv, const float *kt, const float *v32, int64_t last,
                         int64_t D, float *st, float *const *out) {
    const int64_t tiles = (last + 15) / 16;
    for (int64_t b = 0; b < tiles; b++) {
        __m512 acc[16];
        for (int p = 0; p < 16; p++) acc[p] = _mm512_setzero_ps();
        for (int64_t d = 0; d < D; d++) {
            const __m512 qd = _mm512_loadu_ps(qt + d * ATT_VECS);
            const float *kp = kt + (b * D + d) * 16;
#pragma GCC unroll 16
            for (int p = 0; p < 16; p++) acc[p] = _mm512_fmadd_ps(_mm512_set1_ps(kp[p]), qd, acc[p]);
        }
        for (int p = 0; p < 16; p++) _mm512_storeu_ps(st + (b * 16 + p) * ATT_VECS, acc[p]);
    }
    const __m512 at = _mm512_loadu_ps(pos);
    __m512 best = _mm512_set1_ps(-INFINITY), sum = _mm512_setzero_ps();
    for (int64_t p = 0; p < last; p++) {
        const __mmask16 in = _mm512_cmp_ps_mask(_mm512_set1_ps((float)p), at, _CMP_LE_OQ);
        best = _mm512_mask_max_ps(best, in, best, _mm512_loadu_ps(st + p * ATT_VECS));
    }
    for (int64_t p = 0; p < last; p++) {
        const __mmask16 in = _mm512_cmp_ps_mask(_mm512_set1_ps((float)p), at, _CMP_LE_OQ);
        const __m512 e = _mm512_maskz_mov_ps(in, exp16(_mm512_sub_ps(_mm512_loadu_ps(st + p * ATT_VECS), best)));
        _mm512_storeu_ps(st + p * ATT_VECS, e);
        sum = _mm512_add_ps(sum, e);
    }
    float inv[ATT_VECS];
    _mm512_storeu_ps(inv, _mm512_div_ps(_mm512_set1_ps(1.0f), sum));
    for (int64_t j = 0; j < D; j += 16) {
        __m512 acc[ATT_VECS];
        for (int i = 0; i < ATT_VECS; i++) acc[i] = _mm512_setzero_ps();
        for (int64_t p = 0; p < last; p++) {
            const __m512 vj = _mm512_loadu_ps(v32 + p * D + j);
            const float *w = st + p * ATT_VECS;
#pragma GCC unroll 16
            for (int i = 0; i < ATT_VECS; i++) acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(w[i]), vj, acc[i]);
        }
        for (int i = 0; i < nv; i++) _mm512_storeu_ps(out[i] + j, _mm512_mul_ps(acc[i], _mm512_set1_ps(inv[i])));
    }
}
#endif

void lml_attend(const float *q, int64_t T, int64_t H, int64_t KV, int64_t D, int64_t start, const void *kc,
                const void *vc, int64_t ct, int64_t head_stride, float *out, float *scratch, int nthreads) {
    const int64_t G = H / KV, HD = H * D, end = start + T, ld = up16(end);
    const int64_t esize = ct == CACHE_F32 ? 4 : 2;
#if defined(LML_AVX512)
    if (D % 16 == 0 && D <= 256 && G <= ATT_VECS && KV <= 64) {
        const int64_t qb = ATT_VECS / G, blocks = (T + qb - 1) / qb;
        const int64_t wchunk = 64, widen = (end + wchunk - 1) / wchunk;  /* positions widened per chunk */
        float *kt = scratch, *v32 = kt + ld * D, *priv = v32 + ld * D;
        const float scale = 1.0f / sqrtf((float)D);
        phase_ctr ctr[2 * 64];  /* two phases per KV head */
        memset(ctr, 0, sizeof ctr);
#pragma omp parallel num_threads(nthreads)
        {
            float *S = priv + (int64_t)omp_get_thread_num() * (ATT_VECS * ld + D * ATT_VECS), *qt = S + ATT_VECS * ld;
            for (int64_t g = 0; g < KV; g++) {
                const char *k = (const char *)kc + g * head_stride * esize, *v = (const char *)vc + g * head_stride * esize;
                EACH_CHUNK(ci, &ctr[2 * g], widen) {  /* K into [tile][D][16], V into float32 rows */
                    const int64_t p0 = ci * wchunk, p1 = p0 + wchunk < ld ? p0 + wchunk : ld;
                    for (int64_t p = p0; p < p1; p++)
                        for (int64_t d = 0; d < D; d += 16) {
                            const __m512 kv = p < end ? kv16(k + p * D * esize, (int)ct, d) : _mm512_setzero_ps();
                            float lane[16];
                            _mm512_storeu_ps(lane, kv);
                            for (int i = 0; i < 16; i++) kt[(p / 16 * D + d + i) * 16 + p % 16] = lane[i];
                            if (p < end) _mm512_storeu_ps(v32 + p * D + d, kv16(v + p * D * esize, (int)ct, d));
                        }
                }
                EACH_CHUNK(ci, &ctr[2 * g + 1], blocks) {
                    const int64_t t0 = ci * qb, nq = t0 + qb < T ? qb : T - t0, last = start + t0 + nq;  /* positions < last */
                    const int nv = (int)(nq * G);
                    float *outs[ATT_VECS], pos[ATT_VECS];
                    for (int i = 0; i < ATT_VECS; i++) {
                        const int u = i < nv ? i : nv - 1;  /* lanes past nv repeat the last vector, unused */
                        const float *src = q + (t0 + u / G) * HD + (g * G + u % G) * D;
                        for (int64_t d = 0; d < D; d++) qt[d * ATT_VECS + i] = src[d] * scale;
                        pos[i] = (float)(start + t0 + u / G);
                        outs[i] = out + (t0 + u / G) * HD + (g * G + u % G) * D;
                    }
                    attend_block(qt, pos, nv, kt, v32, last, D, S, outs);
                }
            }
        }
        return;
    }
#endif
    {
        phase_ctr one;
        memset(&one, 0, sizeof one);
        const int64_t blocks = (T + ATT_TB - 1) / ATT_TB;
#pragma omp parallel num_threads(nthreads)
        {
            float *sc = scratch + (int64_t)omp_get_thread_num() * G * ld;
            EACH_CHUNK(ci, &one, KV * blocks) {
                const int64_t g = ci / blocks, t0 = ci % blocks * ATT_TB, t1 = t0 + ATT_TB < T ? t0 + ATT_TB : T;
                const char *k = (const char *)kc + g * head_stride * esize, *v = (const char *)vc + g * head_stride * esize;
                for (int64_t t = t0; t < t1; t++)
                    attend_heads(q + t * HD + g * G * D, G, k, v, (int)ct, start + t, D, sc, ld,
                                 out + t * HD + g * G * D, NULL);
            }
        }
    }
}

/* The most outputs share() gives one thread. */
static int64_t linear_share(int64_t N, int nt) { return ((N + 15) / 16 + nt - 1) / nt * 16; }

/* out [B, N] = x [B, K] @ one matrix (+ bias): the vocabulary head, and the tests' view of one GEMV.
   Any B: rows go through in groups of MAX_ROWS (each group reads the weights once).
   scratch: lml_linear_scratch_floats(K, N, B, nthreads) floats. */
void lml_linear(int64_t type, const void *w, const float *bias, int64_t K, int64_t N, int64_t B, const float *x,
                float *out, float *scratch, int nthreads) {
    const int64_t G = B < MAX_ROWS ? B : MAX_ROWS;
    const layout lay = private_layout(G, 0, 0, 0, 0, linear_share(N, nthreads), K);
    const int64_t part[PART_SLOTS] = {type, (int64_t)(intptr_t)w, (int64_t)(intptr_t)bias, N};
    const proj pr = proj_at(part, 1, K);
    /* (row group, output chunk) pairs claimed from one counter (as phase_ctr in lml_decode), so
       that a thread that is away does not hold up the other; a chunk is at most a static share */
    const int64_t lines = (N + 15) / 16, want = nthreads == 1 ? 1 : 16 * (int64_t)nthreads;
    const int64_t nch = lines < want ? (lines > 0 ? lines : 1) : want, total = (B + G - 1) / G * nch;
    phase_ctr ctr;
    memset(&ctr, 0, sizeof ctr);
#pragma omp parallel num_threads(nthreads)
    {
        const int t = omp_get_thread_num();
        float *mine = scratch + t * lay.total;
        qact qa = {NULL, mine + lay.s, (int8_t *)(mine + lay.q4), (int8_t *)(mine + lay.q8), mine + lay.dx4, mine + lay.dx8,
                   mine + lay.sx4, (uint8_t *)(mine + lay.xi)};
        int64_t j0, n, quantized = -1;
        EACH_CHUNK(ci, &ctr, total) {
            const int64_t b0 = ci / nch * G, g = B - b0 < G ? B - b0 : G;
            if (pr.quant && quantized != b0) {
                prepare_act(x + b0 * K, g, K, pr.quant, &qa);
                quantized = b0;
            }
            share(N, (int)(ci % nch), (int)nch, &j0, &n);
            project(&pr, x + b0 * K, &qa, g, j0, n, out + b0 * N + j0, N);
        }
    }
}

int64_t lml_linear_scratch_floats(int64_t K, int64_t N, int64_t B, int nthreads) {
    const int64_t G = B < MAX_ROWS ? B : MAX_ROWS;
    return (int64_t)nthreads * private_layout(G, 0, 0, 0, 0, linear_share(N, nthreads), K).total;
}

/* out [B, N] = x [B, K] @ a packed matrix (T_Q4_0X, T_Q4_1X or T_Q8_0RX: lml_pack_x16) + bias, any B: an
   InferenceModel's prefill (model/quant.py: kernel_rows). Every row is rounded to int8 once, then
   threads claim chunks of outputs and run every group of 8 rows over their chunk, so a chunk's
   weights come from memory once (lml_linear runs each group over every chunk: each group read the
   whole matrix again). scratch: lml_linear_x16_scratch_floats(K, B) floats. Where LML_X16 is not
   built there is no packed matrix: nothing to do. */
void lml_linear_x16(int64_t type, const void *w, const float *bias, int64_t K, int64_t N, int64_t B, const float *x,
                    float *out, float *scratch, int nthreads) {
#if defined(LML_X16)
    uint8_t *xi = (uint8_t *)scratch;
    const int64_t group = (K / 32) * X16_REC * MAX_ROWS, groups = (B + MAX_ROWS - 1) / MAX_ROWS;
    const int64_t lines = N / 16, want = nthreads == 1 ? 1 : 8 * (int64_t)nthreads;
    const int64_t nch = lines < want ? lines : want;
    phase_ctr ctr;
    memset(&ctr, 0, sizeof ctr);
#pragma omp parallel num_threads(nthreads)
    {
#pragma omp for schedule(static)
        for (int64_t gi = 0; gi < groups; gi++) {
            qact qa = {.xi = xi + gi * group};
            const int64_t b0 = gi * MAX_ROWS;
            quantize_act(x + b0 * K, B - b0 < MAX_ROWS ? B - b0 : MAX_ROWS, K, 32, &qa);
        }
        int64_t j0, n;
        EACH_CHUNK(ci, &ctr, nch) {
            share(N, (int)ci, (int)nch, &j0, &n);
            for (int64_t b0 = 0; b0 < B; b0 += MAX_ROWS) {
                const int64_t g = B - b0 < MAX_ROWS ? B - b0 : MAX_ROWS;
                const qact qa = {.xi = xi + b0 / MAX_ROWS * group};
                rows_quant_any(type, (const uint8_t *)w, K, &qa, g, j0, n, out + b0 * N + j0, N, 0);
                if (bias)
                    for (int64_t b = b0; b < b0 + g; b++)
                        for (int64_t j = 0; j < n; j++) out[b * N + j0 + j] += bias[j0 + j];
            }
        }
    }
#else
    (void)type, (void)w, (void)bias, (void)K, (void)N, (void)B, (void)x, (void)out, (void)scratch, (void)nthreads;
#endif
}

int64_t lml_linear_x16_scratch_floats(int64_t K, int64_t B) {
    return (B + MAX_ROWS - 1) / MAX_ROWS * MAX_ROWS * (K / 32) * X16_REC / 4 + 16;
}

/* Whether this build has rows_x16 (lml_pack_x16 packs for it). */
int lml_x16(void) {
#if defined(LML_X16)
    return 1;
#else
    return 0;
#endif
}

/* dst = w, N rows of GGUF Q4_0, Q4_1 or Q8_0 blocks (type T_Q4_0, T_Q4_1, or T_Q8_0 / T_Q8_0R for
   Q8_0 on int8 activations; N a multiple of 16, K of 32), repacked for rows_x16 (layout there): as
   many bytes, in another order. -> the packed matrix's type (T_Q4_0X, T_Q4_1X or T_Q8_0RX). */
int64_t lml_pack_x16(int64_t type, const void *w, int64_t N, int64_t K, void *dst) {
    const int64_t nb = K / 32, bytes = block_bytes(type), gb = 16 * bytes, head = type == T_Q4_1 ? 4 : 2;
    const int64_t xtype = type == T_Q4_0 ? T_Q4_0X : type == T_Q4_1 ? T_Q4_1X : T_Q8_0RX;
#pragma omp parallel for schedule(static)
    for (int64_t g = 0; g < N / 16; g++)
        for (int64_t k = 0; k < nb; k++) {
            uint8_t *o = (uint8_t *)dst + (g * nb + k) * gb;
            for (int oo = 0; oo < 16; oo++) {
                const uint8_t *blk = (const uint8_t *)w + ((g * 16 + oo) * nb + k) * bytes;
                if (type == T_Q8_0 || type == T_Q8_0R) {  /* 8 vectors of 4 inputs, w + 128 as unsigned bytes */
                    for (int j = 0; j < 8; j++)
                        for (int t = 0; t < 4; t++) o[64 * j + 4 * oo + t] = (uint8_t)(blk[2 + 4 * j + t] ^ 0x80);
                    memcpy(o + 512 + 2 * oo, blk, 2);
                    continue;
                }
                uint8_t e[32];
                for (int i = 0; i < 16; i++) {
                    e[i] = blk[head + i] & 0x0F;
                    e[i + 16] = blk[head + i] >> 4;
                }
                for (int j = 0; j < 4; j++)
                    for (int t = 0; t < 4; t++)
                        o[64 * j + 4 * oo + t] = (uint8_t)(e[4 * j + t] | (e[4 * (j + 4) + t] << 4));
                memcpy(o + 256 + 2 * oo, blk, 2);  /* d */
                if (type == T_Q4_1) memcpy(o + 288 + 2 * oo, blk + 2, 2);  /* m */
            }
        }
    return xtype;
}

/* Row r of a matrix packed by lml_pack_x16 as xtype (nb blocks a row) back in GGUF's layout into dst,
   byte for byte. */
static void unpack_x16_row(int64_t xtype, const uint8_t *src, int64_t nb, int64_t r, uint8_t *dst) {
    const int64_t bytes = block_bytes(xtype), gb = 16 * bytes, head = xtype == T_Q4_1X ? 4 : 2, oo = r % 16;
    for (int64_t k = 0; k < nb; k++) {
        const uint8_t *o = src + ((r / 16) * nb + k) * gb;
        uint8_t *blk = dst + k * bytes;
        if (xtype == T_Q8_0RX) {
            for (int j = 0; j < 8; j++)
                for (int t = 0; t < 4; t++) blk[2 + 4 * j + t] = (uint8_t)(o[64 * j + 4 * oo + t] ^ 0x80);
            memcpy(blk, o + 512 + 2 * oo, 2);
            continue;
        }
        uint8_t e[32];
        for (int j = 0; j < 4; j++)
            for (int t = 0; t < 4; t++) {
                e[4 * j + t] = o[64 * j + 4 * oo + t] & 0x0F;
                e[4 * (j + 4) + t] = o[64 * j + 4 * oo + t] >> 4;
            }
        for (int i = 0; i < 16; i++) blk[head + i] = (uint8_t)(e[i] | (e[i + 16] << 4));
        memcpy(blk, o + 256 + 2 * oo, 2);
        if (xtype == T_Q4_1X) memcpy(blk + 2, o + 288 + 2 * oo, 2);
    }
}

/* dst = src (N rows packed by lml_pack_x16 as xtype) back in GGUF's row layout, byte for byte. */
void lml_unpack_x16(int64_t xtype, const void *src, int64_t N, int64_t K, void *dst) {
    const int64_t nb = K / 32, row = nb * block_bytes(xtype);
    for (int64_t r = 0; r < N; r++) unpack_x16_row(xtype, (const uint8_t *)src, nb, r, (uint8_t *)dst + r * row);
}

/* dst [n] = rows ids[i] (each < N, the caller checks) of such a matrix in GGUF's layout: a tied
   embedding's lookups read the head the kernel packed in place. */
void lml_unpack_x16_rows(int64_t xtype, const void *src, int64_t N, int64_t K, const int64_t *ids, int64_t n,
                         void *dst) {
    const int64_t nb = K / 32, row = nb * block_bytes(xtype);
    (void)N;
    for (int64_t i = 0; i < n; i++) unpack_x16_row(xtype, (const uint8_t *)src, nb, ids[i], (uint8_t *)dst + i * row);
}

/* out [R, K] = the rows of a block matrix dequantized in float32, value for value as
   quant.dequantize computes them (q d, (q - 8) d, q d + m): prefill's GEMMs take the weights
   this way. One pass over memory instead of the reference's several. */
void lml_dequantize(int64_t type, const void *w, int64_t R, int64_t K, float *out, int nthreads) {
    const int64_t nb = K / 32, bytes = block_bytes(type);
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t r = 0; r < R; r++) {
        const uint8_t *blk = (const uint8_t *)w + r * nb * bytes;
        float *o = out + r * K;
        for (int64_t k = 0; k < nb; k++, blk += bytes, o += 32) {
            uint16_t h;
            memcpy(&h, blk, 2);
            const float d = fp16_to_f32(h);
            if (type == T_Q8_0) {
                const int8_t *q = (const int8_t *)(blk + 2);
                for (int i = 0; i < 32; i++) o[i] = (float)q[i] * d;
            } else if (type == T_Q4_0) {
                const uint8_t *q = blk + 2;
                for (int i = 0; i < 16; i++) {
                    o[i] = (float)((q[i] & 0x0F) - 8) * d;
                    o[i + 16] = (float)((q[i] >> 4) - 8) * d;
                }
            } else {
                memcpy(&h, blk + 2, 2);
                const float m = fp16_to_f32(h);
                const uint8_t *q = blk + 4;
                for (int i = 0; i < 16; i++) {
                    o[i] = (float)(q[i] & 0x0F) * d + m;
                    o[i + 16] = (float)(q[i] >> 4) * d + m;
                }
            }
        }
    }
}
