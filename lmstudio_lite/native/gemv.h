/* The matrix kernels of decode.c (included once, from there): one matrix times 1..8 rows, with the
   matrix in float32 [in, out], bf16 [out, in] or GGUF Q8_0/Q4_0/Q4_1 rows (layouts: decode.c's header).
   The instruction set is chosen here at compile time (-march=native on the user's machine):
   AVX-512, else AVX2+FMA, else plain C; LML_PLAIN_C forces the plain path. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#if !defined(LML_PLAIN_C) && defined(__AVX2__) && defined(__FMA__)
#define LML_AVX2 1
#include <immintrin.h>
#if defined(__AVX512F__) && defined(__AVX512BW__)
#define LML_AVX512 1
#endif
/* A 4-bit model's rows take int8 dot products with the activation rounded per block, as llama.cpp
   does (see rows_int8): on AVX-512 with VNNI and VBMI, and on AVX2 (vpmaddubsw, or AVX-VNNI's
   vpdpbusd); LML_EXACT keeps them on the exact float path. AVX-512 without VNNI stays exact. */
#if !defined(LML_EXACT) && defined(__F16C__) && \
    (defined(LML_AVX512) ? defined(__AVX512VNNI__) && defined(__AVX512VBMI__) : 1)
#define LML_INT8 1
#endif
#endif

/* T_Q8_0R: Q8_0 blocks whose activation is rounded to int8 like the Q4 formats' (a 4-bit model's
   head: its answers then follow llama.cpp's, whose every block format takes int8 activations);
   plain Q8_0 stays exact, for the models people pick for near-float answers. */
/* T_Q4_0X, T_Q4_1X, T_Q8_0RX: Q4_0, Q4_1 and (rounded) Q8_0 rows repacked 16 outputs side by side
   (lml_pack_x16, where LML_X16 is built), for rows_x16. */
enum { T_F32, T_BF16, T_Q8_0, T_Q4_0, T_Q4_1, T_Q8_0R, T_Q4_0X, T_Q4_1X, T_Q8_0RX, T_COUNT };

/* Bytes of one GGUF block of 32 inputs of a block format (its packed form holds 16 of them per
   group-block): q4_0 18, q4_1 20, q8_0 34. */
static inline int64_t block_bytes(int64_t type) {
    return type == T_Q4_0 || type == T_Q4_0X ? 18 : type == T_Q4_1 || type == T_Q4_1X ? 20 : 34;
}

#if defined(LML_INT8) && defined(LML_AVX512)
#define LML_X16 1
#endif

#define MAX_ROWS 8

/* The row kernels below are written for a compile-time format and row count (the switches in
   matvec instantiate each one): with B a constant the per-row accumulators live in registers;
   with B read at run time they lived in memory and a Q4 row ran at half the speed of a Q8 row. */
#define INLINE static inline __attribute__((always_inline))

/* Which SIMD path this build took: the tests print it and check the plain build says 0. */
int lml_simd_level(void) {
#if defined(LML_AVX512)
    return 2;
#elif defined(LML_AVX2)
    return 1;
#else
    return 0;
#endif
}

static float fp16_to_f32(uint16_t h) {
#if defined(LML_AVX2) && defined(__F16C__)
    return _cvtsh_ss(h);
#else
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0x1f) bits = sign | 0x7f800000u | (man << 13);
    else if (exp != 0) bits = sign | ((exp + 112) << 23) | (man << 13);
    else if (man == 0) bits = sign;
    else {  /* subnormal: normalise */
        exp = 113;
        while (!(man & 0x400)) { man <<= 1; exp--; }
        bits = sign | (exp << 23) | ((man & 0x3ff) << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
#endif
}

static inline float bf16_to_f32(uint16_t v) {
    uint32_t bits = (uint32_t)v << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* Round to nearest even, as torch's .to(torch.bfloat16) does (NaN kept a NaN). */
static inline uint16_t f32_to_bf16(float f) {
    uint32_t bits;
    memcpy(&bits, &f, 4);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((bits >> 16) | 0x40);
    return (uint16_t)((bits + 0x7fff + ((bits >> 16) & 1)) >> 16);
}

/* Round to nearest even, as torch's .to(torch.float16) does: overflow to infinity, subnormals
   kept, NaN kept a NaN. */
static inline uint16_t f32_to_fp16(float f) {
#if defined(LML_AVX2) && defined(__F16C__)
    return _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
#else
    uint32_t bits;
    memcpy(&bits, &f, 4);
    const uint16_t sign = (uint16_t)((bits >> 16) & 0x8000);
    const uint32_t a = bits & 0x7fffffffu;
    if (a > 0x7f800000u) return sign | 0x7e00;              /* NaN */
    if (a >= 0x477ff000u) return sign | 0x7c00;             /* rounds past 65504: infinity */
    if (a < 0x38800000u) {                                  /* below 2^-14: a subnormal (or 0) */
        if (a < 0x33000000u) return sign;                   /* under half the least subnormal */
        const uint32_t man = (a & 0x7fffffu) | 0x800000u, shift = 126 - (a >> 23);  /* 14..24 */
        uint32_t h = man >> shift;
        const uint32_t rest = man & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rest > half || (rest == half && (h & 1))) h++;
        return sign | (uint16_t)h;
    }
    const uint32_t r = a + 0xfffu + ((a >> 13) & 1);       /* to nearest even at bit 13 */
    return sign | (uint16_t)((r - 0x38000000u) >> 13);      /* rebias the exponent 127 -> 15 */
#endif
}

/* A matrix of one layer: K inputs, N outputs, in format type (see the header). */
typedef struct {
    int64_t type, K, N;
    const void *w;
} mat;

/* Whether this build takes the block formats' rows on int8 activations: the tests pick the bound. */
int lml_int8(void) {
#if defined(LML_INT8)
    return 1;
#else
    return 0;
#endif
}

/* x [B, K] in float32 and its sums per block of 32, s [B, K/32]: the 4-bit formats' offset term
   (q4_0: -8 d; q4_1: m) multiplies a block's sum of x once instead of every element.
   With LML_INT8, also x rounded to int8 per block (quantize_act), in the two orders the kernels
   read: q4 [B, quads(K) * 128] (quads of 4 blocks) with per-lane scales dx4 and quarter block
   sums sx4 [B, quads(K) * 16], and q8 [B, pairs(K) * 64] (pairs of blocks) with dx8
   [B, pairs(K) * 16]; the last quad or pair is padded with zeros. */
typedef struct {
    const float *x;
    float *s;
    int8_t *q4, *q8;
    float *dx4, *dx8, *sx4;
    uint8_t *xi;  /* rows_x16's: the rows of a group side by side, block by block (X16_REC) */
} qact;

/* rows_x16 reads, per block of 32 inputs, a record of the B <= MAX_ROWS rows of one group: their
   int8 blocks [B, 32], then dx [B], then sx [B] (dx times the block's sum of rounded x: the 4-bit
   offset's), then off8 [B] (128 times that sum: Q8_0's unsigned side), so that every operand of a
   block is at a fixed offset from one pointer. With each row's blocks apart (a row stride known
   only at run time), the 8-row loop kept 56 addresses on the stack and loaded one before every
   vpdpbusd's broadcast. */
#define X16_REC 44  /* bytes per row and block */

static inline int64_t quads(int64_t K) { return (K / 32 + 3) / 4; }
static inline int64_t pairs(int64_t K) { return (K / 32 + 1) / 2; }

static void block_sums(const float *x, int64_t B, int64_t K, qact *a) {
    a->x = x;
    for (int64_t r = 0; r < B * (K / 32); r++) {
        float sum = 0.0f;
        for (int i = 0; i < 32; i++) sum += x[r * 32 + i];
        a->s[r] = sum;
    }
}

#if defined(LML_INT8)
/* Block k of row b as int8: q = round(x / dx), dx = max|x| / 127, so |x - dx q| <= dx / 2.
   For the Q4 rows its elements 0..15 go to bytes (k % 4) * 16 of its quad's first 64, 16..31 to
   the same place in the second 64 (the order in which a quad's nibbles come out of the weights),
   dx and a quarter of its rounded sum (sx4, the 4-bit offset's) to the 4 int32 lanes its products
   land in; for Q8_0 rows they stay in order, two blocks a 64-byte register, dx in 8 lanes each. */
#if defined(LML_AVX512)
static void quantize_act(const float *x, int64_t B, int64_t K, int order, qact *a) {
    const int64_t nb = K / 32, nq = quads(K), np = pairs(K);
    for (int64_t b = 0; b < B; b++) {
        int8_t *q4 = a->q4 + b * nq * 128, *q8 = a->q8 + b * np * 64;
        float *dx4 = a->dx4 + b * nq * 16, *dx8 = a->dx8 + b * np * 16, *sx4 = a->sx4 + b * nq * 16;
        for (int64_t k = 0; k < nq * 4; k++) {
            __m128i lo = _mm_setzero_si128(), hi = lo;
            float dx = 0.0f, sum = 0.0f;
            int isum = 0;
            if (k < nb) {
                const __m512 v0 = _mm512_loadu_ps(x + b * K + k * 32), v1 = _mm512_loadu_ps(x + b * K + k * 32 + 16);
                const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
                const __m512 inv = _mm512_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
                const __m512i i0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, inv)), i1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, inv));
                lo = _mm512_cvtsepi32_epi8(i0), hi = _mm512_cvtsepi32_epi8(i1);
                dx = amax / 127.0f;
                /* the offset's sum of x, of the rounded x: the error is then sum (x - dx q) w over the
                   weights w themselves, not over q d, whose mean 7.5 d the rounding errors would not
                   cancel around (exact sums measured 1.5-2x the error on random blocks) */
                isum = _mm512_reduce_add_epi32(_mm512_add_epi32(i0, i1));
                sum = dx * (float)isum;
            }
            if (order & 2) {
                _mm_storeu_si128((__m128i *)(q4 + k / 4 * 128 + k % 4 * 16), lo);
                _mm_storeu_si128((__m128i *)(q4 + k / 4 * 128 + 64 + k % 4 * 16), hi);
                _mm_storeu_ps(dx4 + 4 * k, _mm_set1_ps(dx));
                _mm_storeu_ps(sx4 + 4 * k, _mm_set1_ps(sum / 4.0f));
            }
            if ((order & 32) && k < nb) {  /* rows_x16's record of this group's block k */
                uint8_t *rec = a->xi + k * X16_REC * B;
                _mm_storeu_si128((__m128i *)(rec + b * 32), lo);
                _mm_storeu_si128((__m128i *)(rec + b * 32 + 16), hi);
                ((float *)(rec + 32 * B))[b] = dx;
                ((float *)(rec + 36 * B))[b] = sum;
                ((int32_t *)(rec + 40 * B))[b] = 128 * isum;
            }
            if ((order & 4) && k < np * 2) {
                _mm_storeu_si128((__m128i *)(q8 + k * 32), lo);
                _mm_storeu_si128((__m128i *)(q8 + k * 32 + 16), hi);
                _mm256_storeu_ps(dx8 + 8 * k, _mm256_set1_ps(dx));
            }
        }
    }
}
#else
/* AVX2: every block in the Q8_0 order (its 32 int8 in order, dx in dx8's 8 lanes), and the sum of
   its rounded values in s (the 4-bit offset's; these builds' exact Q4 path is not used with it). */
static void quantize_act(const float *x, int64_t B, int64_t K, int order, qact *a) {
    (void)order;
    const int64_t nb = K / 32, np = pairs(K);
    for (int64_t b = 0; b < B; b++) {
        int8_t *q8 = a->q8 + b * np * 64;
        float *dx8 = a->dx8 + b * np * 16;
        for (int64_t k = 0; k < np * 2; k++) {
            float dx = 0.0f;
            int sum = 0;
            if (k < nb) {
                const float *xb = x + b * K + k * 32;
                float amax = 0.0f;
                for (int i = 0; i < 32; i++) amax = fmaxf(amax, fabsf(xb[i]));
                const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
                for (int i = 0; i < 32; i++) {
                    const int v = (int)nearbyintf(xb[i] * inv);  /* half to even, as vcvtps2dq */
                    q8[k * 32 + i] = (int8_t)(v > 127 ? 127 : v < -127 ? -127 : v);
                    sum += q8[k * 32 + i];
                }
                dx = amax / 127.0f;
                a->s[b * nb + k] = dx * (float)sum;
            } else {
                memset(q8 + k * 32, 0, 32);
            }
            for (int i = 0; i < 8; i++) dx8[k * 8 + i] = dx;
        }
    }
}
#endif
#endif

/* What a projection's matrices need of their input x: quant bit 1, its block sums (only the exact
   Q4 rows read them, and with LML_INT8 every Q4 row takes the int8 path); bits 2 and 4 (Q4 and
   Q8_0 matrices on the int8 path), its int8 blocks in the Q4 and the Q8_0 order; bit 32 (rows_x16's
   matrices), the rows' records (X16_REC), the B rows of the call one group. */
static void prepare_act(const float *x, int64_t B, int64_t K, int quant, qact *a) {
#if defined(LML_INT8)
    a->x = x;
    if (quant & 38) quantize_act(x, B, K, quant, a);
#else
    if (quant) block_sums(x, B, K, a);
#endif
}

#if defined(LML_AVX512)
/* One output lane's sum over inputs i..i+7, the same arithmetic in both kernels below (a row's
   result must not depend on how many rows share the step: a seeded request gives the same tokens
   alone or in a batch): two chains of four products, added, then added to the running sum. */
INLINE __m512 f32_eight(const float *xi, const __m512 *w, __m512 acc) {
    __m512 p = _mm512_mul_ps(_mm512_set1_ps(xi[0]), w[0]), q = _mm512_mul_ps(_mm512_set1_ps(xi[4]), w[4]);
    p = _mm512_fmadd_ps(_mm512_set1_ps(xi[1]), w[1], p);
    q = _mm512_fmadd_ps(_mm512_set1_ps(xi[5]), w[5], q);
    p = _mm512_fmadd_ps(_mm512_set1_ps(xi[2]), w[2], p);
    q = _mm512_fmadd_ps(_mm512_set1_ps(xi[6]), w[6], q);
    p = _mm512_fmadd_ps(_mm512_set1_ps(xi[3]), w[3], p);
    q = _mm512_fmadd_ps(_mm512_set1_ps(xi[7]), w[7], q);
    return _mm512_add_ps(acc, _mm512_add_ps(p, q));
}

INLINE __mmask16 lanes16(int64_t left) { return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1); }

/* Any rows, for a matrix beyond L2 (and one row always): eight weight rows per pass over the outputs,
   read in order (eight sequential streams: a large matrix streams from memory at decode), every row's
   sums waiting in acc between passes; with several rows, outputs in blocks of 256, so the eight weight
   rows' block stays in L1 while every row uses it (one row in such blocks: SmolLM2 float32 0.95x
   llama.cpp, against 1.06x over whole runs). */
static void gemv_f32_stream(const float *restrict x, int64_t B, const float *restrict W, int64_t K, int64_t ldw,
                            int64_t j0, int64_t n, float *restrict acc, int64_t ldr) {
    for (int64_t b = 0; b < B; b++)
        for (int64_t j = 0; j < n; j++) acc[b * ldr + j] = 0.0f;
    const int64_t span = B == 1 ? n : 256;  /* one row: each weight row's whole run at once, the longest streams */
    for (int64_t jb = 0; jb < n; jb += span) {
        const int64_t je = n - jb < span ? n : jb + span;
        int64_t i = 0;
        for (; i + 8 <= K; i += 8) {
            const float *w = W + i * ldw + j0;
            for (int64_t b = 0; b < B; b++) {
                float *ab = acc + b * ldr;
                for (int64_t j = jb; j < je; j += 16) {
                    const __mmask16 m = lanes16(je - j);
                    __m512 wv[8];
                    for (int u = 0; u < 8; u++) wv[u] = _mm512_maskz_loadu_ps(m, w + u * ldw + j);
                    _mm512_mask_storeu_ps(ab + j, m, f32_eight(x + b * K + i, wv, _mm512_maskz_loadu_ps(m, ab + j)));
                }
            }
        }
        for (; i < K; i++)
            for (int64_t b = 0; b < B; b++)
                for (int64_t j = jb; j < je; j += 16) {
                    const __mmask16 m = lanes16(je - j);
                    const __m512 wv = _mm512_maskz_loadu_ps(m, W + i * ldw + j0 + j);
                    _mm512_mask_storeu_ps(acc + b * ldr + j, m, _mm512_fmadd_ps(_mm512_set1_ps(x[b * K + i]), wv,
                                                                              _mm512_maskz_loadu_ps(m, acc + b * ldr + j)));
                }
    }
}

/* B > 1 rows of a matrix within L2: 16 outputs at a time, all K inputs, every row's sum in a register;
   each load of 8 weight vectors serves every row. (In the pass order above, with the few outputs a
   thread's chunk holds, 48 in the bundled model, the loop overhead per row and input group was most of
   an 8-row step: 1.21 -> 1.00 ms. Its loads walk down a column, though: on a matrix from memory, every
   input a new page, SmolLM2's float32 8-row decode fell from 188 to 127 tok/s.) Both kernels sum a row as
   f32_eight does, so their results are the same to the bit. */
INLINE void rows_f32(const float *restrict x, const int B, const float *restrict W, int64_t K, int64_t ldw,
                     int64_t j0, int64_t n, float *restrict r, int64_t ldr) {
    for (int64_t j = 0; j < n; j += 16) {
        const __mmask16 m = lanes16(n - j);
        const float *w = W + j0 + j;
        __m512 acc[MAX_ROWS];
        for (int b = 0; b < B; b++) acc[b] = _mm512_setzero_ps();
        int64_t i = 0;
        for (; i + 8 <= K; i += 8) {
            __m512 wv[8];
            for (int u = 0; u < 8; u++) wv[u] = _mm512_maskz_loadu_ps(m, w + (i + u) * ldw);
#pragma GCC unroll 8
            for (int b = 0; b < B; b++) acc[b] = f32_eight(x + b * K + i, wv, acc[b]);
        }
        for (; i < K; i++) {
            const __m512 wv = _mm512_maskz_loadu_ps(m, w + i * ldw);
#pragma GCC unroll 8
            for (int b = 0; b < B; b++) acc[b] = _mm512_fmadd_ps(_mm512_set1_ps(x[b * K + i]), wv, acc[b]);
        }
        for (int b = 0; b < B; b++) _mm512_mask_storeu_ps(r + b * ldr + j, m, acc[b]);
    }
}

#ifndef LML_F32_ROWS_BYTES
#define LML_F32_ROWS_BYTES (1 << 20)
#endif
static void gemv_f32(const float *restrict x, int64_t B, const float *restrict W, int64_t K, int64_t ldw,
                     int64_t j0, int64_t n, float *restrict acc, int64_t ldr) {
    if (B == 1 || K * ldw * 4 > LML_F32_ROWS_BYTES) {
        gemv_f32_stream(x, B, W, K, ldw, j0, n, acc, ldr);
        return;
    }
    switch (B) {
#define CASE(R) case R: rows_f32(x, R, W, K, ldw, j0, n, acc, ldr); break;
        CASE(2) CASE(3) CASE(4) CASE(5) CASE(6) CASE(7) CASE(8)
#undef CASE
    }
}
#else
/* acc[b][0:n] = x[b] @ W[0:K, j0:j0+n] (T_F32, row stride ldw) for every row b: eight weight rows
   per pass, so eight streams are in flight, and every row of the step uses them while in L1. */
static void gemv_f32(const float *restrict x, int64_t B, const float *restrict W, int64_t K, int64_t ldw,
                     int64_t j0, int64_t n, float *restrict acc, int64_t ldr) {
    for (int64_t b = 0; b < B; b++)
        for (int64_t j = 0; j < n; j++) acc[b * ldr + j] = 0.0f;
    int64_t i = 0;
    for (; i + 8 <= K; i += 8) {
        const float *w0 = W + i * ldw + j0, *w1 = w0 + ldw, *w2 = w1 + ldw, *w3 = w2 + ldw;
        const float *w4 = w3 + ldw, *w5 = w4 + ldw, *w6 = w5 + ldw, *w7 = w6 + ldw;
        for (int64_t b = 0; b < B; b++) {
            const float *xb = x + b * K;
            float *ab = acc + b * ldr;
            const float x0 = xb[i], x1 = xb[i + 1], x2 = xb[i + 2], x3 = xb[i + 3];
            const float x4 = xb[i + 4], x5 = xb[i + 5], x6 = xb[i + 6], x7 = xb[i + 7];
#pragma omp simd
            for (int64_t j = 0; j < n; j++)
                ab[j] += (x0 * w0[j] + x1 * w1[j] + x2 * w2[j] + x3 * w3[j]) +
                         (x4 * w4[j] + x5 * w5[j] + x6 * w6[j] + x7 * w7[j]);
        }
    }
    for (; i < K; i++) {
        const float *w0 = W + i * ldw + j0;
        for (int64_t b = 0; b < B; b++) {
            const float x0 = x[b * K + i];
            float *ab = acc + b * ldr;
#pragma omp simd
            for (int64_t j = 0; j < n; j++) ab[j] += x0 * w0[j];
        }
    }
}

#endif

#if defined(LML_AVX2)
static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#endif


/* Bytes ahead of the block being read that are asked for: the rows of a chunk are one
   sequential stream, and the hardware prefetcher alone left the loads waiting
   (Q4_0 one-row GEMV 576 -> 3072 in L3: 2x faster on the shared VM, Q8_0 1.4x; 2-4 KiB ahead best). */
#ifndef LML_PREFETCH
#define LML_PREFETCH 2048
#endif

/* One-row GEMVs (B = 1; block formats on AVX-512 and AVX2, bf16 on AVX-512) run this many output rows
   at once, each from its own part of the range: several sequential streams keep more of memory's
   latency covered than one (a plain read of 96 MB on the shared VM: 1 stream 5-11 GB/s, 4 streams
   6-17), and the rows share each load of x. SmolLM2's matrices, one thread, AVX-512: Q4_1/Q4_0/Q8_0
   1.25-1.3x, bf16 1.27x against one row at a time; 6 or 8 streams no better. */
#ifndef LML_STREAMS
#define LML_STREAMS 4
#endif
/* ... and exact AVX-512 block rows of a large matrix (LML_WIDE_BYTES or more, far beyond L2: a 1B
   model's, read from memory) this many: the random 1B Llama in Q8_0, 2 threads, 1.05x a step
   (30 pairs); SmolLM2's matrices, read from L3, were 0.97x with 6 streams everywhere. */
#ifndef LML_WIDE_STREAMS
#define LML_WIDE_STREAMS 6
#endif
#ifndef LML_WIDE_BYTES
#define LML_WIDE_BYTES (4 << 20)
#endif

#if defined(LML_AVX512)
/* x . rows first + t * stride (t < LML_STREAMS) of a bf16 [N, K] matrix into r[t * stride]. */
INLINE void bf16_streams(const uint16_t *W, int64_t K, const float *x, int64_t first, int64_t stride, float *r) {
    enum { S = LML_STREAMS };
    const uint16_t *w[S];
    __m512 acc[S];
    for (int t = 0; t < S; t++) {
        w[t] = W + (first + t * stride) * K;
        acc[t] = _mm512_setzero_ps();
    }
    int64_t i = 0;
    for (; i + 16 <= K; i += 16) {
        const __m512 xv = _mm512_loadu_ps(x + i);
        for (int t = 0; t < S; t++) {
            _mm_prefetch((const char *)(w[t] + i) + LML_PREFETCH, _MM_HINT_T0);
            const __m512 wf = _mm512_castsi512_ps(_mm512_slli_epi32(
                _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(w[t] + i))), 16));
            acc[t] = _mm512_fmadd_ps(wf, xv, acc[t]);
        }
    }
    for (int t = 0; t < S; t++) {
        float sum = _mm512_reduce_add_ps(acc[t]);
        for (int64_t k = i; k < K; k++) sum += bf16_to_f32(w[t][k]) * x[k];
        r[t * stride] = sum;
    }
}
#endif

/* r[b][j] = x[b] . row j0+j of a bf16 [N, K] matrix, j < n. */
INLINE void rows_bf16(const uint16_t *W, int64_t K, const float *x, const int B, int64_t j0, int64_t n, float *r,
                      int64_t ldr) {
    int64_t j = 0;
#if defined(LML_AVX512)
    if (B == 1 && LML_STREAMS > 1) {
        const int64_t q = n / LML_STREAMS;
        for (; j < q; j++) bf16_streams(W, K, x, j0 + j, q, r + j);
        j = q * LML_STREAMS;
    }
#endif
    for (; j < n; j++) {
        const uint16_t *w = W + (j0 + j) * K;
        int64_t i = 0;
#if defined(LML_AVX512)
        __m512 acc[MAX_ROWS];
        for (int b = 0; b < B; b++) acc[b] = _mm512_setzero_ps();
        for (; i + 16 <= K; i += 16) {
            _mm_prefetch((const char *)(w + i) + LML_PREFETCH, _MM_HINT_T0);
            const __m512 wf = _mm512_castsi512_ps(_mm512_slli_epi32(
                _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(w + i))), 16));
            for (int b = 0; b < B; b++) acc[b] = _mm512_fmadd_ps(wf, _mm512_loadu_ps(x + b * K + i), acc[b]);
        }
#define LML_HSUM(v) _mm512_reduce_add_ps(v)
#elif defined(LML_AVX2)
        __m256 acc[MAX_ROWS];
        for (int b = 0; b < B; b++) acc[b] = _mm256_setzero_ps();
        for (; i + 8 <= K; i += 8) {
            _mm_prefetch((const char *)(w + i) + LML_PREFETCH, _MM_HINT_T0);
            const __m256 wf = _mm256_castsi256_ps(_mm256_slli_epi32(
                _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(w + i))), 16));
            for (int b = 0; b < B; b++) acc[b] = _mm256_fmadd_ps(wf, _mm256_loadu_ps(x + b * K + i), acc[b]);
        }
#define LML_HSUM(v) hsum8(v)
#else
        float acc[MAX_ROWS] = {0};
#define LML_HSUM(v) (v)
#endif
        for (int b = 0; b < B; b++) {
            float s = LML_HSUM(acc[b]);
            for (int64_t k = i; k < K; k++) s += bf16_to_f32(w[k]) * x[b * K + k];
            r[b * ldr + j] = s;
        }
#undef LML_HSUM
    }
}

/* r[b][j] = x[b] . row j0+j of a GGUF block matrix, j < n, with the weights dequantized exactly
   in registers and float32 accumulation: per block d_w * sum(q_i x_i) (FMAs on the widened q),
   plus for the 4-bit formats an offset times the block's sum of x, as (q - 8) d and q d + m expand
   (AVX2 and plain C; AVX-512 looks the block's exact values up in a table, decode.c's header;
   at one row, d multiplies the block's sum of q x once, as AVX-512 Q8_0 does). */
#if defined(LML_AVX2)
/* 8 bytes (signed for q8_0, unsigned nibbles otherwise) widened to 8 floats. */
static inline __m256 widen_s8(const int8_t *q) { return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)q))); }
static inline __m256 widen_u8(__m128i v) { return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v)); }
#endif

#if defined(LML_AVX512)
/* The scales d (and Q4_1's minimums m) of up to 16 consecutive blocks, in float32. */
typedef struct {
    float d[16], m[16];
} scales16;

/* Blocks blk[0..g)'s scales (lanes g.. are 0: no block loads past g). A group's fp16 words come out of its bytes (already in L1: the
   blocks are read next) by word permutes, 64 words per vpermt2w, then one vcvtph2ps converts 16:
   converting and broadcasting each block's scalars had cost more port-5 work than the block's
   weights (perf: 7 of 13 vector ops of a Q4_1 block), and a vpgatherdd of the 16 scales stalled
   (43% of the kernel's cycles in a 2-thread SmolLM2 Q4_1 step). */
INLINE void load_scales(const int type, const uint8_t *blk, int64_t bytes, int g, scales16 *s) {
    /* word lane k < 16: block k's d (word bytes/2 * k); lane 16 + k: the word after it (q4_1's m) */
    const int step = (int)bytes / 2, words = g * step;
    /* dword i holds word lanes 2i and 2i + 1: lane j < 16 is k = j, lane j >= 16 is k = j - 16, plus 1 */
    const __m512i i32 = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i lo = _mm512_add_epi32(
        _mm512_mullo_epi32(_mm512_and_si512(_mm512_slli_epi32(i32, 1), _mm512_set1_epi32(15)), _mm512_set1_epi32(step)),
        _mm512_srli_epi32(i32, 3));
    const __m512i idx = _mm512_or_si512(lo, _mm512_slli_epi32(_mm512_add_epi32(lo, _mm512_set1_epi32(step)), 16));
    __m512i dm = _mm512_setzero_si512();
    for (int base = 0; base < words; base += 64) {
        const int left = words - base;  /* words of the group from here: load no further */
        const __mmask32 m0 = left >= 32 ? 0xffffffffu : (1u << left) - 1;
        const __mmask32 m1 = left >= 64 ? 0xffffffffu : left <= 32 ? 0 : (1u << (left - 32)) - 1;
        const __m512i a = _mm512_maskz_loadu_epi16(m0, blk + 2 * base);
        const __m512i b = _mm512_maskz_loadu_epi16(m1, blk + 2 * base + 64);
        const __m512i rel = _mm512_sub_epi16(idx, _mm512_set1_epi16((short)base));
        const __mmask32 here = _mm512_cmplt_epu16_mask(rel, _mm512_set1_epi16(64));
        dm = _mm512_mask_mov_epi16(dm, here, _mm512_permutex2var_epi16(a, rel, b));
    }
    _mm512_storeu_ps(s->d, _mm512_cvtph_ps(_mm512_castsi512_si256(dm)));
    if (type == T_Q4_1) _mm512_storeu_ps(s->m, _mm512_cvtph_ps(_mm512_extracti64x4_epi64(dm, 1)));
}

/* One block's 32 weights in element order, w0 (0..15) and w1 (16..31): Q4 exactly dequantized
   (see below), Q8_0 its int8 values as floats, still to be multiplied by d. */
INLINE void block_weights(const int type, const uint8_t *qs, float d, float m, __m512 *w0, __m512 *w1) {
    if (type == T_Q8_0) {
        *w0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)qs)));
        *w1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(qs + 16))));
        return;
    }
    /* A 16-entry table of the block's values (q - 8) d or q d + m, computed as the reference dequantizes
       them (q d + m with one rounding, as the reference's exact product then sum), looked up by nibble:
       vpermps reads only the low 4 bits of each index, so a byte's low nibble indexes as it is and its
       high one after a shift. */
    const __m512 vd = _mm512_set1_ps(d);
    const __m512 lut = type == T_Q4_0
        ? _mm512_mul_ps(_mm512_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7), vd)
        : _mm512_fmadd_ps(_mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), vd, _mm512_set1_ps(m));
    const __m512i idx = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)qs));
    *w0 = _mm512_permutexvar_ps(idx, lut);
    *w1 = _mm512_permutexvar_ps(_mm512_srli_epi32(idx, 4), lut);
}

/* One row's block into two accumulators: Q4 weights times x; Q8_0 d times the block's sum of q x
   (one multiply by d per block instead of two). */
/* A block's products with x's block xb (w0, w1: its 32 weights, Q8_0's not yet times d): Q8_0 sums
   the block before scaling it by d into a0; Q4 adds each half into its own chain. Every exact path
   (one row or many) takes this arithmetic, so a row's result does not depend on how many rows share
   the step (a seeded request gives the same tokens alone or in a batch). */
INLINE void block_products(const int type, __m512 w0, __m512 w1, float d, const float *xb, __m512 *a0, __m512 *a1) {
    if (type == T_Q8_0) {
        const __m512 part = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xb + 16), _mm512_mul_ps(w0, _mm512_loadu_ps(xb)));
        *a0 = _mm512_fmadd_ps(part, _mm512_set1_ps(d), *a0);
    } else {
        *a0 = _mm512_fmadd_ps(w0, _mm512_loadu_ps(xb), *a0);
        *a1 = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xb + 16), *a1);
    }
}

INLINE void block_one_row(const int type, const uint8_t *blk, float d, float m, const float *xb, __m512 *a0,
                          __m512 *a1) {
    __m512 w0, w1;
    block_weights(type, blk + (type == T_Q4_1 ? 4 : 2), d, m, &w0, &w1);
    block_products(type, w0, w1, d, xb, a0, a1);
}

/* x . rows first + t * stride (t < S) of a block matrix into r[t * stride] (B = 1). */
INLINE void streams_one_row(const int type, const int S, const uint8_t *W, int64_t row_bytes, int64_t nb,
                            const float *x, int64_t first, int64_t stride, float *r) {
    const int64_t bytes = block_bytes(type);
    const uint8_t *blk[LML_WIDE_STREAMS];
    __m512 acc[LML_WIDE_STREAMS][2];
    scales16 s[LML_WIDE_STREAMS];
    for (int t = 0; t < S; t++) {
        blk[t] = W + (first + t * stride) * row_bytes;
        acc[t][0] = acc[t][1] = _mm512_setzero_ps();
    }
    for (int64_t k0 = 0; k0 < nb; k0 += 16) {
        const int g = nb - k0 < 16 ? (int)(nb - k0) : 16;
        for (int t = 0; t < S; t++) load_scales(type, blk[t], bytes, g, &s[t]);
        for (int i = 0; i < g; i++) {
            const float *xb = x + (k0 + i) * 32;
            for (int t = 0; t < S; t++) {
                _mm_prefetch((const char *)blk[t] + LML_PREFETCH, _MM_HINT_T0);
                block_one_row(type, blk[t], s[t].d[i], s[t].m[i], xb, &acc[t][0], &acc[t][1]);
                blk[t] += bytes;
            }
        }
    }
    for (int t = 0; t < S; t++) r[t * stride] = _mm512_reduce_add_ps(_mm512_add_ps(acc[t][0], acc[t][1]));
}

#if defined(LML_INT8)
/* Q4_0/Q4_1 rows on int8 activations, as llama.cpp computes them. A quad of 4 blocks is two
   vpermt2b out of the same 80 bytes: its nibble bytes (scales left out), and its fp16 scales, d
   (and Q4_1's m) in the 4 word lanes of each block, which one vcvtph2ps widens to the int32 lanes
   that block's products land in: two masks split the nibbles into elements 0..15 and 16..31 of
   each block, and two vpdpbusd against x's int8 blocks (quantize_act's order) sum them. Then per
   lane d (dx q.x - 8 sx) for Q4_0, d dx q.x + m sx for Q4_1, sx being a quarter of the block's
   sum of the rounded x. So only x's rounding errs: |error| <= sum over blocks of (dx / 2)
   sum |w|, w the dequantized weights, the bound the tests check.
   Against the exact float path on SmolLM2's matrices at one thread: 1.3-1.45x per GEMV (16
   vector ops per 128 weights against 24 or more, fewer of them on port 5). */
typedef struct {
    __m512i perm, scales, low;
    __mmask64 tail;  /* the quad's bytes past its first 64 */
} quad_layout;

static quad_layout quad_layout_of(const int type) {
    const int bytes = (int)block_bytes(type), head = type == T_Q4_0 ? 2 : 4;
    uint8_t idx[64], sidx[64];
    for (int p = 0; p < 64; p++) {
        idx[p] = (uint8_t)(p / 16 * bytes + head + p % 16);
        sidx[p] = (uint8_t)(p % 32 / 8 * bytes + (p >= 32 ? 2 : 0) + p % 2);  /* d words, then m words */
    }
    return (quad_layout){_mm512_loadu_si512(idx), _mm512_loadu_si512(sidx), _mm512_set1_epi8(0x0F),
                         (1ULL << (4 * bytes - 64)) - 1};
}

/* The quad of blocks at blk (valid bytes of it: a row's last quad may hold fewer than 4, and
   nothing past the matrix is read): its nibble bytes, 16 a block, and its scales (see above). */
INLINE void quad_load(const quad_layout *ql, const uint8_t *blk, int64_t valid, int whole, __m512i *nib,
                      __m512i *scales) {
    __m512i lo, hi;
    if (whole) {
        lo = _mm512_loadu_si512(blk);
        hi = _mm512_maskz_loadu_epi8(ql->tail, blk + 64);
    } else {
        lo = _mm512_maskz_loadu_epi8(valid >= 64 ? ~0ULL : (1ULL << valid) - 1, blk);
        hi = _mm512_maskz_loadu_epi8(valid > 64 ? (1ULL << (valid - 64)) - 1 : 0, blk + 64);
    }
    *nib = _mm512_permutex2var_epi8(lo, ql->perm, hi);
    *scales = _mm512_permutex2var_epi8(lo, ql->scales, hi);
}

/* acc += one quad's products with x's quad q (its int8 blocks, then dx and sx per lane). */
INLINE __m512 quad_dot(const int type, const quad_layout *ql, __m512i nib, __m512i scales, const int8_t *xq,
                       const float *dx, const float *sx, __m512 acc) {
    const __m512i lo = _mm512_and_si512(nib, ql->low), hi = _mm512_and_si512(_mm512_srli_epi16(nib, 4), ql->low);
    __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, _mm512_loadu_si512(xq));
    dot = _mm512_dpbusd_epi32(dot, hi, _mm512_loadu_si512(xq + 64));
    const __m512 d = _mm512_cvtph_ps(_mm512_castsi512_si256(scales));
    __m512 t = _mm512_mul_ps(_mm512_cvtepi32_ps(dot), _mm512_loadu_ps(dx));
    if (type == T_Q4_0) return _mm512_fmadd_ps(_mm512_fnmadd_ps(_mm512_set1_ps(8.0f), _mm512_loadu_ps(sx), t), d, acc);
    acc = _mm512_fmadd_ps(t, d, acc);
    return _mm512_fmadd_ps(_mm512_cvtph_ps(_mm512_extracti64x4_epi64(scales, 1)), _mm512_loadu_ps(sx), acc);
}

/* T_Q8_0R rows, on int8 activations (see the Q4 quads above): a pair of blocks is two vpermt2b out of
   its 68 bytes, its 64 weights and its two fp16 scales (8 word lanes each, as the int32 lanes its
   products land in); vpdpbusd multiplies unsigned by signed bytes, so |w| times x with w's sign.
   |error| <= sum over blocks of (dx / 2) sum |w|. */
typedef struct {
    __m512i perm, scales;
} pair_layout;

static pair_layout pair_layout_of(void) {
    uint8_t idx[64], sidx[64];
    for (int p = 0; p < 64; p++) {
        idx[p] = (uint8_t)(p / 32 * 34 + 2 + p % 32);
        sidx[p] = (uint8_t)(p % 32 / 16 * 34 + p % 2);
    }
    return (pair_layout){_mm512_loadu_si512(idx), _mm512_loadu_si512(sidx)};
}

/* The pair of blocks at blk (both, or the row's last one alone): its 64 weights and scales. */
INLINE void pair_load(const pair_layout *pl, const uint8_t *blk, int both, __m512i *w, __m512 *d) {
    const __m512i lo = _mm512_maskz_loadu_epi8(both ? ~0ULL : (1ULL << 34) - 1, blk);
    const __m512i hi = _mm512_maskz_loadu_epi8(both ? 0xF : 0, blk + 64);
    *w = _mm512_permutex2var_epi8(lo, pl->perm, hi);
    *d = _mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_permutex2var_epi8(lo, pl->scales, hi)));
}

/* acc += a pair's products with x's pair xp (its int8 blocks, then dx per lane). */
INLINE __m512 pair_dot(__m512i w, __m512 d, const int8_t *xp, const float *dx, __m512 acc) {
    const __m512i x = _mm512_loadu_si512(xp);
    const __m512i sx = _mm512_mask_sub_epi8(x, _mm512_movepi8_mask(w), _mm512_setzero_si512(), x);
    const __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_abs_epi8(w), sx);
    return _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(dot), _mm512_loadu_ps(dx)), d, acc);
}

/* A unit of int8 work: a quad of 4 Q4 blocks or a pair of Q8_0 blocks, as one row's loaded weights. */
typedef struct {
    __m512i w, scales;
    __m512 d;
} unit;

/* The rows of a T_Q4_0, T_Q4_1 or T_Q8_0R matrix on int8 activations, unit by unit (a quad or a pair). */
INLINE void rows_int8(const int type, const uint8_t *W, int64_t K, const qact *a, const int B, int64_t j0, int64_t n,
                      float *r, int64_t ldr) {
    enum { S = LML_STREAMS };
    const int q8 = type == T_Q8_0R, per = q8 ? 2 : 4;
    const int64_t nb = K / 32, bytes = block_bytes(type), row_bytes = nb * bytes;
    const int64_t units = q8 ? pairs(K) : quads(K);
    const int8_t *xs = q8 ? a->q8 : a->q4;
    const float *dxs = q8 ? a->dx8 : a->dx4;
    const quad_layout ql = quad_layout_of(q8 ? T_Q4_0 : type);
    const pair_layout pl = pair_layout_of();
#define UNIT_LOAD(blk, valid, out) do { \
        if (q8) pair_load(&pl, (blk), (valid) == 2 * bytes, &(out).w, &(out).d); \
        else quad_load(&ql, (blk), (valid), (valid) == 4 * bytes, &(out).w, &(out).scales); \
    } while (0)
    /* row b's (at = b * units + u) products with unit u */
#define UNIT_DOT(un, at, acc) (q8 ? pair_dot((un).w, (un).d, xs + (at) * 64, dxs + (at) * 16, (acc)) \
    : quad_dot(type, &ql, (un).w, (un).scales, xs + (at) * 128, dxs + (at) * 16, a->sx4 + (at) * 16, (acc)))
    int64_t j = 0;
    if (B == 1 && S > 1) {  /* 4 rows at once, each from its own part of the range (see LML_STREAMS) */
        const int64_t q = n / S;
        for (; j < q; j++) {
            const uint8_t *blk[S];
            __m512 acc[S];
#pragma GCC unroll 8
            for (int t = 0; t < S; t++) {
                blk[t] = W + (j0 + j + t * q) * row_bytes;
                acc[t] = _mm512_setzero_ps();
            }
            for (int64_t u = 0; u < units; u++) {
                const int64_t valid = (nb - per * u < per ? nb - per * u : per) * bytes;
#pragma GCC unroll 8
                for (int t = 0; t < S; t++) {
                    _mm_prefetch((const char *)blk[t] + LML_PREFETCH, _MM_HINT_T0);
                    _mm_prefetch((const char *)blk[t] + LML_PREFETCH + 64, _MM_HINT_T0);
                    unit un;
                    UNIT_LOAD(blk[t], valid, un);
                    acc[t] = UNIT_DOT(un, u, acc[t]);
                    blk[t] += valid;
                }
            }
#pragma GCC unroll 8
            for (int t = 0; t < S; t++) r[j + t * q] = _mm512_reduce_add_ps(acc[t]);
        }
        j = q * S;
    }
    for (; j < n; j++) {
        const uint8_t *blk = W + (j0 + j) * row_bytes;
        __m512 acc[MAX_ROWS];
        for (int b = 0; b < B; b++) acc[b] = _mm512_setzero_ps();
        for (int64_t u = 0; u < units; u++) {
            const int64_t valid = (nb - per * u < per ? nb - per * u : per) * bytes;
            _mm_prefetch((const char *)blk + LML_PREFETCH, _MM_HINT_T0);
            _mm_prefetch((const char *)blk + LML_PREFETCH + 64, _MM_HINT_T0);
            unit un;
            UNIT_LOAD(blk, valid, un);
#pragma GCC unroll 8
            for (int b = 0; b < B; b++) acc[b] = UNIT_DOT(un, b * units + u, acc[b]);
            blk += valid;
        }
        for (int b = 0; b < B; b++) r[b * ldr + j] = _mm512_reduce_add_ps(acc[b]);
    }
#undef UNIT_LOAD
#undef UNIT_DOT
}
#endif

#if defined(LML_X16)
/* Q4_0/Q4_1 for many rows: 16 outputs side by side, so one vpdpbusd multiplies 4 inputs of 16
   outputs by 4 of a row's int8 inputs (a broadcast), and each of the 16 int32 lanes is one output's
   sum. A group of 16 outputs is nb group-blocks, one per block of 32 inputs: 4 x 64 bytes of nibbles
   (byte 4 o + e of vector j holds input 4 j + e of output o in its low nibble and input 4 (j + 4) + e
   in its high one), then the 16 fp16 d, then (Q4_1) the 16 fp16 m: 288 or 320 bytes, the same as the
   16 GGUF blocks. Per row and block 8 vpdpbusd and four float ops give 16 outputs, where
   rows_int8 spends about as many on 4 blocks of one output and reduces every output horizontally:
   one thread, 576 -> 3072 Q4_1 in L2, 8 rows 1.32 against 3.99 ns a block, one row 0.33 against 1.02.
   A row's sum per block: d (dx q.x) - 8 d sx (Q4_0) or d (dx q.x) + m sx (Q4_1), sx = dx times the
   block's sum of rounded x (quantize_act's s), as rows_int8 computes it.
   Q8_0 (T_Q8_0RX, a 4-bit model's head): 8 x 64 bytes of w + 128 as unsigned bytes (vpdpbusd's
   unsigned side), then the 16 d: 544 bytes; d dx (q.x - 128 sum x), the integer sum exact, as the
   pairs of rows_int8 give it. */
static inline int64_t x16_bytes(int type) { return 16 * block_bytes(type); }

/* One group-block of 16 outputs (blk) times rows b < B (their record of the same input block: rec),
   into acc[b]. */
INLINE void x16_block(const int type, const uint8_t *blk, const uint8_t *rec, const int B, __m512 *acc) {
    const __m512i low = _mm512_set1_epi8(0x0F);
    for (int64_t o = 0; o < x16_bytes(type); o += 64) _mm_prefetch((const char *)blk + LML_PREFETCH + o, _MM_HINT_T0);
    const int32_t *xq = (const int32_t *)rec;
    const float *dx = (const float *)(rec + 32 * B), *sx = (const float *)(rec + 36 * B);
    const int32_t *off8 = (const int32_t *)(rec + 40 * B);
    /* The rows' dot products side by side, each in two halves (inputs 4 i.. and 4 (i + 4).., the low
       and high nibbles of one load): 16 independent vpdpbusd chains of 4 in flight. Row by row, each
       row's one chain of 8 waited on its own latency (5 cycles a link). With X16_REC, on the Xeon
       at 2 threads (bench/kernel_ab.py --packed --formats q4_1 --rows R --threads 2, SmolLM2's
       matrices and head): 8 rows 118 -> 148 GMAC/s (1.25x), 64 rows 191 -> 268 (1.40x); a whole
       8-row SmolLM2 step at position 100 1.21-1.31x (--gguf). */
    __m512i lo[MAX_ROWS], hi[MAX_ROWS];
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) {
        __m512i w0, w1;
        if (type == T_Q8_0RX) {
            w0 = _mm512_loadu_si512(blk + 64 * i);
            w1 = _mm512_loadu_si512(blk + 64 * (i + 4));
        } else {
            const __m512i p = _mm512_loadu_si512(blk + 64 * i);
            w0 = _mm512_and_si512(p, low);
            w1 = _mm512_and_si512(_mm512_srli_epi16(p, 4), low);
        }
#pragma GCC unroll 8
        for (int b = 0; b < B; b++) {
            lo[b] = _mm512_dpbusd_epi32(i ? lo[b] : _mm512_setzero_si512(), w0, _mm512_set1_epi32(xq[b * 8 + i]));
            hi[b] = _mm512_dpbusd_epi32(i ? hi[b] : _mm512_setzero_si512(), w1, _mm512_set1_epi32(xq[b * 8 + i + 4]));
        }
    }
    __m512 d, m = _mm512_setzero_ps();
    if (type == T_Q8_0RX) {
        d = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(blk + 512)));
    } else {
        d = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(blk + 256)));
        m = type == T_Q4_1X ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(blk + 288)))
                            : _mm512_mul_ps(d, _mm512_set1_ps(-8.0f));
    }
#pragma GCC unroll 8
    for (int b = 0; b < B; b++) {
        __m512i dot = _mm512_add_epi32(lo[b], hi[b]);
        if (type == T_Q8_0RX) dot = _mm512_sub_epi32(dot, _mm512_set1_epi32(off8[b]));
        const __m512 t = _mm512_mul_ps(_mm512_cvtepi32_ps(dot), _mm512_set1_ps(dx[b]));
        acc[b] = _mm512_fmadd_ps(t, d, acc[b]);
        if (type != T_Q8_0RX) acc[b] = _mm512_fmadd_ps(m, _mm512_set1_ps(sx[b]), acc[b]);
    }
}

INLINE void x16_store(float *r, int64_t ldr, int64_t g, int64_t j0, int64_t n, const int B, const __m512 *acc) {
    const int64_t lo = g * 16 < j0 ? j0 - g * 16 : 0, hi = (g + 1) * 16 > j0 + n ? j0 + n - g * 16 : 16;
    const __mmask16 keep = (__mmask16)(((1u << hi) - 1) & ~((1u << lo) - 1));
    for (int b = 0; b < B; b++) _mm512_mask_storeu_ps(r + b * ldr + g * 16 - j0, keep, acc[b]);
}

INLINE void rows_x16(const int type, const uint8_t *W, int64_t K, const qact *a, const int B, int64_t j0, int64_t n,
                     float *r, int64_t ldr) {
    const int64_t nb = K / 32, gb = x16_bytes(type), rb = X16_REC * B;
    int64_t g = j0 / 16;
    const int64_t end = (j0 + n + 15) / 16;
    if (B == 1 && LML_STREAMS > 1) {
        /* one row reads from memory: LML_STREAMS groups at once, each from its own part of the range
           (one stream left the 1B Llama's Q4 steps at 82% of the bandwidth, 0.92x llama.cpp) */
        enum { S = LML_STREAMS };
        const int64_t q = (end - g) / S;
        for (int64_t i = 0; i < q; i++) {
            __m512 acc[S];
            for (int t = 0; t < S; t++) acc[t] = _mm512_setzero_ps();
            for (int64_t k = 0; k < nb; k++)
#pragma GCC unroll 8
                for (int t = 0; t < S; t++) x16_block(type, W + ((g + i + t * q) * nb + k) * gb, a->xi + k * rb, 1, &acc[t]);
            for (int t = 0; t < S; t++) x16_store(r, ldr, g + i + t * q, j0, n, 1, &acc[t]);
        }
        g += q * S;
    }
    for (; g < end; g++) {
        const uint8_t *blk = W + g * nb * gb;
        __m512 acc[MAX_ROWS];
        for (int b = 0; b < B; b++) acc[b] = _mm512_setzero_ps();
        for (int64_t k = 0; k < nb; k++, blk += gb) x16_block(type, blk, a->xi + k * rb, B, acc);
        x16_store(r, ldr, g, j0, n, B, acc);
    }
}
#endif

INLINE void rows_quant(const int type, const uint8_t *W, int64_t K, const qact *a, const int B, int64_t j0,
                       int64_t n, float *r, int64_t ldr, int wide) {
    const int64_t nb = K / 32, bytes = block_bytes(type), row_bytes = nb * bytes;
    scales16 s;
    int64_t j = 0;
#if defined(LML_INT8)
    if (type != T_Q8_0) {
        rows_int8(type, W, K, a, B, j0, n, r, ldr);
        return;
    }
#endif
    if (B == 1 && LML_STREAMS > 1) {
        const int S = wide ? LML_WIDE_STREAMS : LML_STREAMS;
        const int64_t q = n / S;
        if (S == LML_WIDE_STREAMS)
            for (; j < q; j++) streams_one_row(type, LML_WIDE_STREAMS, W, row_bytes, nb, a->x, j0 + j, q, r + j);
        else
            for (; j < q; j++) streams_one_row(type, LML_STREAMS, W, row_bytes, nb, a->x, j0 + j, q, r + j);
        j = q * S;
    }
    for (; j < n; j++) {
        const uint8_t *blk = W + (j0 + j) * row_bytes;
        /* every row as streams_one_row sums it (block_products), the block's weights made once for all rows */
        __m512 acc[MAX_ROWS][2];
        for (int b = 0; b < B; b++) acc[b][0] = acc[b][1] = _mm512_setzero_ps();
        for (int64_t k0 = 0; k0 < nb; k0 += 16) {
            const int g = nb - k0 < 16 ? (int)(nb - k0) : 16;
            load_scales(type, blk, bytes, g, &s);
            const float *x = a->x + k0 * 32;
            for (int i = 0; i < g; i++, blk += bytes) {
                _mm_prefetch((const char *)blk + LML_PREFETCH, _MM_HINT_T0);
                __m512 w0, w1;
                block_weights(type, blk + (type == T_Q4_1 ? 4 : 2), s.d[i], s.m[i], &w0, &w1);
                for (int b = 0; b < B; b++) block_products(type, w0, w1, s.d[i], x + b * K + i * 32, &acc[b][0], &acc[b][1]);
            }
        }
        for (int b = 0; b < B; b++) r[b * ldr + j] = _mm512_reduce_add_ps(_mm512_add_ps(acc[b][0], acc[b][1]));
    }
}
#else

#if defined(LML_AVX2)
/* AVX2, B = 1: x . rows first + t * stride (t < LML_STREAMS) into r[t * stride], each block d times
   its sum of q x (plus the 4-bit offset times the block's sum of x), as the one-row path below. */
INLINE void streams_one_row(const int type, const uint8_t *W, int64_t row_bytes, int64_t nb, const qact *a,
                            int64_t first, int64_t stride, float *r) {
    enum { S = LML_STREAMS };
    const int64_t bytes = block_bytes(type);
    const uint8_t *blk[S];
    __m256 acc[S];
    float off[S];
    for (int t = 0; t < S; t++) {
        blk[t] = W + (first + t * stride) * row_bytes;
        acc[t] = _mm256_setzero_ps();
        off[t] = 0.0f;
    }
    for (int64_t k = 0; k < nb; k++) {
        const float *xb = a->x + k * 32;
        const __m256 x0 = _mm256_loadu_ps(xb), x1 = _mm256_loadu_ps(xb + 8);
        const __m256 x2 = _mm256_loadu_ps(xb + 16), x3 = _mm256_loadu_ps(xb + 24);
        for (int t = 0; t < S; t++) {
            const uint8_t *b = blk[t];
            _mm_prefetch((const char *)b + LML_PREFETCH, _MM_HINT_T0);
            uint16_t h;
            memcpy(&h, b, 2);
            const float dw = fp16_to_f32(h);
            __m256 w[4];
            if (type == T_Q8_0) {
                for (int u = 0; u < 4; u++) w[u] = widen_s8((const int8_t *)b + 2 + 8 * u);
            } else {
                const __m128i raw = _mm_loadu_si128((const __m128i *)(b + (type == T_Q4_1 ? 4 : 2)));
                const __m128i mask = _mm_set1_epi8(0x0F);
                const __m128i lo = _mm_and_si128(raw, mask), hi = _mm_and_si128(_mm_srli_epi16(raw, 4), mask);
                w[0] = widen_u8(lo), w[1] = widen_u8(_mm_srli_si128(lo, 8));
                w[2] = widen_u8(hi), w[3] = widen_u8(_mm_srli_si128(hi, 8));
                float c = -8.0f * dw;
                if (type == T_Q4_1) {
                    memcpy(&h, b + 2, 2);
                    c = fp16_to_f32(h);
                }
                off[t] += c * a->s[k];
            }
            const __m256 part = _mm256_add_ps(_mm256_fmadd_ps(w[1], x1, _mm256_mul_ps(w[0], x0)),
                                              _mm256_fmadd_ps(w[3], x3, _mm256_mul_ps(w[2], x2)));
            acc[t] = _mm256_fmadd_ps(part, _mm256_set1_ps(dw), acc[t]);
            blk[t] += bytes;
        }
    }
    for (int t = 0; t < S; t++) r[t * stride] = hsum8(acc[t]) + off[t];
}
#endif

#if defined(LML_INT8)
/* AVX2: one block's 32 products with x's int8 block xq, summed into 8 int32 lanes: vpmaddubsw
   multiplies unsigned by signed bytes (nibbles by x; |w| by x with w's sign for Q8_0), vpmaddwd sums
   pairs (no saturation: 2 x 15 x 127 and 2 x 128 x 127 fit 16 bits); AVX-VNNI's vpdpbusd does both. */
INLINE __m256i block_isum(const int type, const uint8_t *blk, const int8_t *xq) {
    const __m256i x = _mm256_loadu_si256((const __m256i *)xq);
    __m256i u, v;
    if (type == T_Q8_0R) {
        const __m256i w = _mm256_loadu_si256((const __m256i *)(blk + 2));
        u = _mm256_sign_epi8(w, w);
        v = _mm256_sign_epi8(x, w);
    } else {
        const __m128i raw = _mm_loadu_si128((const __m128i *)(blk + (type == T_Q4_1 ? 4 : 2))), m = _mm_set1_epi8(0x0F);
        u = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(raw, 4), m), _mm_and_si128(raw, m));
        v = x;
    }
#if defined(__AVXVNNI__)
    return _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, v);
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, v), _mm256_set1_epi16(1));
#endif
}

/* acc += block k's products scaled by d dx; off += its 4-bit offset (-8 d or m) times the sum of x's
   rounded block. */
INLINE void block_int8(const int type, const uint8_t *blk, const qact *a, int64_t b, int64_t k, int64_t nb,
                       int64_t np, __m256 *acc, float *off) {
    uint16_t h;
    memcpy(&h, blk, 2);
    const float d = fp16_to_f32(h), dx = a->dx8[(b * np * 2 + k) * 8];
    const __m256i isum = block_isum(type, blk, a->q8 + (b * np * 2 + k) * 32);
    *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_set1_ps(d * dx), *acc);
    if (type != T_Q8_0R) {
        float c = -8.0f * d;
        if (type == T_Q4_1) {
            memcpy(&h, blk + 2, 2);
            c = fp16_to_f32(h);
        }
        *off += c * a->s[b * nb + k];
    }
}

/* The rows of a T_Q4_0, T_Q4_1 or T_Q8_0R matrix on int8 activations (AVX2), block by block. */
INLINE void rows_int8(const int type, const uint8_t *W, int64_t K, const qact *a, const int B, int64_t j0, int64_t n,
                      float *r, int64_t ldr) {
    enum { S = LML_STREAMS };
    const int64_t nb = K / 32, np = pairs(K), bytes = block_bytes(type);
    const int64_t row_bytes = nb * bytes;
    int64_t j = 0;
    if (B == 1 && S > 1) {  /* 4 rows at once, each from its own part of the range (see LML_STREAMS) */
        const int64_t q = n / S;
        for (; j < q; j++) {
            const uint8_t *blk[S];
            __m256 acc[S];
            float off[S];
#pragma GCC unroll 8
            for (int t = 0; t < S; t++) {
                blk[t] = W + (j0 + j + t * q) * row_bytes;
                acc[t] = _mm256_setzero_ps();
                off[t] = 0.0f;
            }
            for (int64_t k = 0; k < nb; k++) {
#pragma GCC unroll 8
                for (int t = 0; t < S; t++) {
                    _mm_prefetch((const char *)blk[t] + LML_PREFETCH, _MM_HINT_T0);
                    block_int8(type, blk[t], a, 0, k, nb, np, &acc[t], &off[t]);
                    blk[t] += bytes;
                }
            }
#pragma GCC unroll 8
            for (int t = 0; t < S; t++) r[j + t * q] = hsum8(acc[t]) + off[t];
        }
        j = q * S;
    }
    for (; j < n; j++) {
        const uint8_t *blk = W + (j0 + j) * row_bytes;
        __m256 acc[MAX_ROWS];
        float off[MAX_ROWS];
        for (int b = 0; b < B; b++) acc[b] = _mm256_setzero_ps(), off[b] = 0.0f;
        for (int64_t k = 0; k < nb; k++, blk += bytes) {
            _mm_prefetch((const char *)blk + LML_PREFETCH, _MM_HINT_T0);
            for (int b = 0; b < B; b++) block_int8(type, blk, a, b, k, nb, np, &acc[b], &off[b]);
        }
        for (int b = 0; b < B; b++) r[b * ldr + j] = hsum8(acc[b]) + off[b];
    }
}
#endif

INLINE void rows_quant(const int type, const uint8_t *W, int64_t K, const qact *a, const int B, int64_t j0,
                       int64_t n, float *r, int64_t ldr, int wide) {
    (void)wide;  /* AVX-512's exact rows only */
#if defined(LML_INT8)
    if (type != T_Q8_0) {
        rows_int8(type, W, K, a, B, j0, n, r, ldr);
        return;
    }
#endif
    const int64_t nb = K / 32, bytes = block_bytes(type), row_bytes = nb * bytes;
    int64_t j = 0;
#if defined(LML_AVX2)
    if (B == 1 && LML_STREAMS > 1) {
        const int64_t q = n / LML_STREAMS;
        for (; j < q; j++) streams_one_row(type, W, row_bytes, nb, a, j0 + j, q, r + j);
        j = q * LML_STREAMS;
    }
#endif
    for (; j < n; j++) {
        const uint8_t *blk = W + (j0 + j) * row_bytes;
        float off[MAX_ROWS];
#if defined(LML_AVX2)
        __m256 acc[MAX_ROWS];
        for (int b = 0; b < B; b++) acc[b] = _mm256_setzero_ps(), off[b] = 0.0f;
#else
        float acc[MAX_ROWS];
        for (int b = 0; b < B; b++) acc[b] = 0.0f, off[b] = 0.0f;
#endif
        for (int64_t k = 0; k < nb; k++, blk += bytes) {
#if defined(LML_AVX2)
            _mm_prefetch((const char *)blk + LML_PREFETCH, _MM_HINT_T0);
#endif
            uint16_t h;
            memcpy(&h, blk, 2);
            const float dw = fp16_to_f32(h);
            float c = 0.0f;
            const uint8_t *qs = blk + 2;
            if (type == T_Q4_0) c = -8.0f * dw;
            else if (type == T_Q4_1) {
                memcpy(&h, blk + 2, 2);
                c = fp16_to_f32(h);
                qs = blk + 4;
            }
#if defined(LML_AVX2)
            const float *xs = a->s + k;
            /* the block's 32 q in element order; every row sums d (q . x) as streams_one_row does, so a
               row's result does not depend on how many rows share the step */
            __m256 w[4];
            const __m256 vd = _mm256_set1_ps(dw);
            if (type == T_Q8_0)
                for (int u = 0; u < 4; u++) w[u] = widen_s8((const int8_t *)qs + 8 * u);
            else {
                const __m128i raw = _mm_loadu_si128((const __m128i *)qs), mask = _mm_set1_epi8(0x0F);
                const __m128i lo = _mm_and_si128(raw, mask), hi = _mm_and_si128(_mm_srli_epi16(raw, 4), mask);
                w[0] = widen_u8(lo), w[1] = widen_u8(_mm_srli_si128(lo, 8));
                w[2] = widen_u8(hi), w[3] = widen_u8(_mm_srli_si128(hi, 8));
            }
            for (int b = 0; b < B; b++) {
                const float *xb = a->x + b * K + k * 32;
                const __m256 part = _mm256_add_ps(
                    _mm256_fmadd_ps(w[1], _mm256_loadu_ps(xb + 8), _mm256_mul_ps(w[0], _mm256_loadu_ps(xb))),
                    _mm256_fmadd_ps(w[3], _mm256_loadu_ps(xb + 24), _mm256_mul_ps(w[2], _mm256_loadu_ps(xb + 16))));
                acc[b] = _mm256_fmadd_ps(part, vd, acc[b]);
                if (type != T_Q8_0) off[b] += c * xs[b * nb];
            }
#else
            const float *xs = a->s + k;
            float wq[32];
            if (type == T_Q8_0)
                for (int i = 0; i < 32; i++) wq[i] = (float)((const int8_t *)qs)[i];
            else
                for (int i = 0; i < 16; i++) {
                    wq[i] = (float)(qs[i] & 0x0F);
                    wq[i + 16] = (float)(qs[i] >> 4);
                }
            for (int b = 0; b < B; b++) {
                const float *xb = a->x + b * K + k * 32;
                float sum = 0.0f;
                for (int i = 0; i < 32; i++) sum += wq[i] * xb[i];
                acc[b] += sum * dw;
                if (type != T_Q8_0) off[b] += c * xs[b * nb];
            }
#endif
        }
        for (int b = 0; b < B; b++) {
#if defined(LML_AVX2)
            r[b * ldr + j] = hsum8(acc[b]) + off[b];
#else
            r[b * ldr + j] = acc[b] + off[b];
#endif
        }
    }
}

#endif

#define LML_ROWS_CASES(CALL) \
    CALL(1) CALL(2) CALL(3) CALL(4) CALL(5) CALL(6) CALL(7) CALL(8)

static void rows_bf16_any(const uint16_t *W, int64_t K, const float *x, int64_t B, int64_t j0, int64_t n, float *r,
                          int64_t ldr) {
    switch (B) {
#define CASE(R) case R: rows_bf16(W, K, x, R, j0, n, r, ldr); break;
        LML_ROWS_CASES(CASE)
#undef CASE
    }
}

static void rows_quant_any(int64_t type, const uint8_t *W, int64_t K, const qact *a, int64_t B, int64_t j0, int64_t n,
                           float *r, int64_t ldr, int wide) {
#if defined(LML_X16)
    if (type == T_Q4_0X || type == T_Q4_1X || type == T_Q8_0RX) {
        switch (B) {
#define CASE(R) case R: rows_x16((int)type, W, K, a, R, j0, n, r, ldr); break;
            LML_ROWS_CASES(CASE)
#undef CASE
        }
        return;
    }
#endif
#if defined(LML_INT8)
    if (type == T_Q8_0R) {
        switch (B) {
#define CASE(R) case R: rows_int8(T_Q8_0R, W, K, a, R, j0, n, r, ldr); break;
            LML_ROWS_CASES(CASE)
#undef CASE
        }
        return;
    }
#else
    if (type == T_Q8_0R) type = T_Q8_0;
#endif
    switch (type * 16 + B) {
#define CASE(R) case T_Q8_0 * 16 + R: rows_quant(T_Q8_0, W, K, a, R, j0, n, r, ldr, wide); break; \
                case T_Q4_0 * 16 + R: rows_quant(T_Q4_0, W, K, a, R, j0, n, r, ldr, wide); break; \
                case T_Q4_1 * 16 + R: rows_quant(T_Q4_1, W, K, a, R, j0, n, r, ldr, wide); break;
        LML_ROWS_CASES(CASE)
#undef CASE
    }
}

/* r[b * ldr + 0:n] = x[b] @ m's outputs j0..j0+n, every row b < B; qa holds x's block sums when m is quantized. */
static void matvec(const mat *m, const float *x, const qact *qa, int64_t B, int64_t j0, int64_t n, float *r,
                   int64_t ldr) {
    if (n <= 0) return;
    if (m->type == T_F32) gemv_f32(x, B, (const float *)m->w, m->K, m->N, j0, n, r, ldr);
    else if (m->type == T_BF16) rows_bf16_any((const uint16_t *)m->w, m->K, x, B, j0, n, r, ldr);
    else {
        const int64_t block = block_bytes(m->type);
        rows_quant_any(m->type, (const uint8_t *)m->w, m->K, qa, B, j0, n, r, ldr,
                       m->N * (m->K / 32) * block >= LML_WIDE_BYTES);
    }
}
