/* The matrix kernels of decode.c (included once, from there): one matrix times 1..8 rows, with the
   matrix in float32 [in, out], bf16 [out, in] or GGUF Q8_0/Q4_0/Q4_1 rows (layouts: decode.c's header).
   The instruction set is chosen here at compile time (-march=native on the user's machine):
   AVX512-VNNI, else AVX-512, else AVX2+FMA, else plain C; LML_PLAIN_C forces the plain path. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#if !defined(LML_PLAIN_C) && defined(__AVX2__) && defined(__FMA__)
#define LML_AVX2 1
#include <immintrin.h>
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define LML_VNNI 1
#endif
#if defined(__AVX512F__)
#define LML_AVX512 1
#endif
#endif

enum { T_F32, T_BF16, T_Q8_0, T_Q4_0, T_Q4_1, T_COUNT };

#define MAX_ROWS 8

/* Which SIMD path this build took: the tests print it and check the plain build says 0. */
int lml_simd_level(void) {
#if defined(LML_VNNI)
    return 3;
#elif defined(LML_AVX512)
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

/* A matrix of one layer: K inputs, N outputs, in format type (see the header). */
typedef struct {
    int64_t type, K, N;
    const void *w;
} mat;

/* x [B, K] quantized to int8 per block of 32: q [B, K], d [B, K/32], and s = d * sum(q) as
   [K/32, MAX_ROWS] (block-major, rows past B zero), so one vector FMA gives every row its offset. */
typedef struct {
    int8_t *q;
    float *d, *s;
} qact;

static void quantize_rows(const float *x, int64_t B, int64_t K, qact *a) {
    const int64_t nb = K / 32;
    for (int64_t r = 0; r < B * nb; r++) {
        const float *v = x + r * 32;
        float amax = 0.0f;
        for (int i = 0; i < 32; i++) amax = fmaxf(amax, fabsf(v[i]));
        const float d = amax / 127.0f, id = d > 0.0f ? 1.0f / d : 0.0f;
        int sum = 0;
        for (int i = 0; i < 32; i++) {
            const int q = (int)roundf(v[i] * id);
            a->q[r * 32 + i] = (int8_t)q;
            sum += q;
        }
        a->d[r] = d;
        a->s[(r % nb) * MAX_ROWS + r / nb] = d * (float)sum;
    }
    for (int64_t k = 0; k < nb; k++)
        for (int64_t b = B; b < MAX_ROWS; b++) a->s[k * MAX_ROWS + b] = 0.0f;
}

/* acc[b][0:n] = x[b] @ W[0:K, j0:j0+n] (T_F32, row stride ldw) for every row b: eight weight rows
   per pass, so eight streams are in flight, and every row of the step uses them while in L1. */
static void gemv_f32(const float *restrict x, int64_t B, const float *restrict W, int64_t K, int64_t ldw,
                     int64_t j0, int64_t n, float *restrict acc) {
    for (int64_t j = 0; j < B * n; j++) acc[j] = 0.0f;
    int64_t i = 0;
    for (; i + 8 <= K; i += 8) {
        const float *w0 = W + i * ldw + j0, *w1 = w0 + ldw, *w2 = w1 + ldw, *w3 = w2 + ldw;
        const float *w4 = w3 + ldw, *w5 = w4 + ldw, *w6 = w5 + ldw, *w7 = w6 + ldw;
        for (int64_t b = 0; b < B; b++) {
            const float *xb = x + b * K;
            float *ab = acc + b * n;
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
            float *ab = acc + b * n;
#pragma omp simd
            for (int64_t j = 0; j < n; j++) ab[j] += x0 * w0[j];
        }
    }
}

#if defined(LML_AVX2)
static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* sum over 32 lanes of u (unsigned bytes) times s (signed bytes), as 8 int32 lanes. */
static inline __m256i dot_us8(__m256i u, __m256i s) {
#if defined(LML_VNNI)
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
#else
    /* u <= 127 (q8 |w|) or 15 (nibbles), |s| <= 127: the int16 pair sums cannot saturate. */
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
#endif
}
#endif

/* The row kernels below are written for a compile-time format and row count (the switches in
   matvec instantiate each one): with B a constant the per-row accumulators live in registers;
   with B read at run time they lived in memory and a Q4 row ran at half the speed of a Q8 row. */
#define INLINE static inline __attribute__((always_inline))

/* r[b][j] = x[b] . row j0+j of a bf16 [N, K] matrix, j < n. */
INLINE void rows_bf16(const uint16_t *W, int64_t K, const float *x, const int B, int64_t j0, int64_t n, float *r) {
    for (int64_t j = 0; j < n; j++) {
        const uint16_t *w = W + (j0 + j) * K;
        int64_t i = 0;
#if defined(LML_AVX512)
        __m512 acc[MAX_ROWS];
        for (int b = 0; b < B; b++) acc[b] = _mm512_setzero_ps();
        for (; i + 16 <= K; i += 16) {
            const __m512 wf = _mm512_castsi512_ps(_mm512_slli_epi32(
                _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(w + i))), 16));
            for (int b = 0; b < B; b++) acc[b] = _mm512_fmadd_ps(wf, _mm512_loadu_ps(x + b * K + i), acc[b]);
        }
#define LML_HSUM(v) _mm512_reduce_add_ps(v)
#elif defined(LML_AVX2)
        __m256 acc[MAX_ROWS];
        for (int b = 0; b < B; b++) acc[b] = _mm256_setzero_ps();
        for (; i + 8 <= K; i += 8) {
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
            r[b * n + j] = s;
        }
#undef LML_HSUM
    }
}

/* One block k of a GGUF row (at blk) against every row b of the quantized activations: acc[b * LML_U]
   += the integer dot product times d_w d_x, off[b * LML_U] += the 4-bit formats' offset times
   d_x sum(q_x) (q4_0: -8 d_w; q4_1: m), as (q - 8) d and q d + m expand. */
#define LML_U 4
#if defined(LML_AVX2)
typedef __m256 lml_acc;
#else
typedef float lml_acc;
#endif
INLINE void quant_block(const int type, const uint8_t *blk, const qact *a, const int64_t nb, const int64_t k,
                        const int B, lml_acc *acc, float *off, lml_acc *offv) {
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
    const int8_t *xq = a->q + k * 32;
    const float *xd = a->d + k, *xs = a->s + k * MAX_ROWS;
#if defined(LML_AVX2)
    /* two rows or more: every row's offset in one FMA (xs holds the rows side by side) */
    if (type != T_Q8_0 && B > 1) *offv = _mm256_fmadd_ps(_mm256_set1_ps(c), _mm256_loadu_ps(xs), *offv);
    __m256i u, sgn = _mm256_setzero_si256();
    if (type == T_Q8_0) {
        sgn = _mm256_loadu_si256((const __m256i *)qs);
        u = _mm256_sign_epi8(sgn, sgn);  /* |w|; x takes w's sign below */
    } else {
        const __m128i raw = _mm_loadu_si128((const __m128i *)qs);
        u = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), _mm256_set1_epi8(0x0F));
    }
    for (int b = 0; b < B; b++) {
        __m256i v = _mm256_loadu_si256((const __m256i *)(xq + b * nb * 32));
        if (type == T_Q8_0) v = _mm256_sign_epi8(v, sgn);
        const __m256 dot = _mm256_cvtepi32_ps(dot_us8(u, v));
        acc[b * LML_U] = _mm256_fmadd_ps(dot, _mm256_set1_ps(dw * xd[b * nb]), acc[b * LML_U]);
        if (type != T_Q8_0 && B == 1) off[b * LML_U] += c * xs[b];
    }
#else
    int8_t wq[32];
    if (type == T_Q8_0) memcpy(wq, qs, 32);
    else
        for (int i = 0; i < 16; i++) {
            wq[i] = (int8_t)(qs[i] & 0x0F);
            wq[i + 16] = (int8_t)(qs[i] >> 4);
        }
    for (int b = 0; b < B; b++) {
        const int8_t *v = xq + b * nb * 32;
        int32_t sum = 0;
        for (int i = 0; i < 32; i++) sum += (int32_t)wq[i] * (int32_t)v[i];
        acc[b * LML_U] += (float)sum * (dw * xd[b * nb]);
        if (type != T_Q8_0) off[b * LML_U] += c * xs[b];
        (void)offv;
    }
#endif
}

/* r[b][j] = qx[b] . row j0+j of a GGUF block matrix, j < n. With few rows, U blocks go through
   per iteration into U separate accumulators: one accumulator per row made every block wait
   for the previous block's FMA (4 cycles), which capped a Q4_0 row near 16 GB/s per core. */
INLINE void rows_quant(const int type, const uint8_t *W, int64_t K, const qact *a, const int B, int64_t j0,
                       int64_t n, float *r) {
    const int64_t nb = K / 32, bytes = type == T_Q8_0 ? 34 : type == T_Q4_0 ? 18 : 20, row_bytes = nb * bytes;
    const int U = B == 1 ? 4 : B == 2 ? 2 : 1;  /* a compile-time constant once inlined */
    for (int64_t j = 0; j < n; j++) {
        const uint8_t *blk = W + (j0 + j) * row_bytes;
        lml_acc acc[MAX_ROWS * LML_U], offv[LML_U];
        float off[MAX_ROWS * LML_U];
        for (int i = 0; i < B * LML_U; i++) {
#if defined(LML_AVX2)
            acc[i] = _mm256_setzero_ps();
#else
            acc[i] = 0.0f;
#endif
            off[i] = 0.0f;
        }
        for (int u = 0; u < LML_U; u++) {
#if defined(LML_AVX2)
            offv[u] = _mm256_setzero_ps();
#else
            offv[u] = 0.0f;
#endif
        }
        int64_t k = 0;
        for (; k + U <= nb; k += U)
            for (int u = 0; u < U; u++) quant_block(type, blk + (k + u) * bytes, a, nb, k + u, B, acc + u, off + u, offv + u);
        for (; k < nb; k++) quant_block(type, blk + k * bytes, a, nb, k, B, acc, off, offv);
#if defined(LML_AVX2)
        if (type != T_Q8_0 && B > 1) {
            float ov[8];
            for (int u = 1; u < U; u++) offv[0] = _mm256_add_ps(offv[0], offv[u]);
            _mm256_storeu_ps(ov, offv[0]);
            for (int b = 0; b < B; b++) off[b * LML_U] = ov[b];
        }
#endif
        for (int b = 0; b < B; b++) {
            lml_acc s = acc[b * LML_U];
            float o = off[b * LML_U];
            for (int u = 1; u < U; u++) {
#if defined(LML_AVX2)
                s = _mm256_add_ps(s, acc[b * LML_U + u]);
#else
                s += acc[b * LML_U + u];
#endif
                o += off[b * LML_U + u];
            }
#if defined(LML_AVX2)
            r[b * n + j] = hsum8(s) + o;
#else
            r[b * n + j] = s + o;
#endif
        }
    }
}

#define LML_ROWS_CASES(CALL) \
    CALL(1) CALL(2) CALL(3) CALL(4) CALL(5) CALL(6) CALL(7) CALL(8)

static void rows_bf16_any(const uint16_t *W, int64_t K, const float *x, int64_t B, int64_t j0, int64_t n, float *r) {
    switch (B) {
#define CASE(R) case R: rows_bf16(W, K, x, R, j0, n, r); break;
        LML_ROWS_CASES(CASE)
#undef CASE
    }
}

static void rows_quant_any(int64_t type, const uint8_t *W, int64_t K, const qact *a, int64_t B, int64_t j0, int64_t n,
                           float *r) {
    switch (type * 16 + B) {
#define CASE(R) case T_Q8_0 * 16 + R: rows_quant(T_Q8_0, W, K, a, R, j0, n, r); break; \
                case T_Q4_0 * 16 + R: rows_quant(T_Q4_0, W, K, a, R, j0, n, r); break; \
                case T_Q4_1 * 16 + R: rows_quant(T_Q4_1, W, K, a, R, j0, n, r); break;
        LML_ROWS_CASES(CASE)
#undef CASE
    }
}

/* r[b][0:n] = x[b] @ m's outputs j0..j0+n, every row b < B; qa holds x quantized when m is. */
static void matvec(const mat *m, const float *x, const qact *qa, int64_t B, int64_t j0, int64_t n, float *r) {
    if (n <= 0) return;
    if (m->type == T_F32) gemv_f32(x, B, (const float *)m->w, m->K, m->N, j0, n, r);
    else if (m->type == T_BF16) rows_bf16_any((const uint16_t *)m->w, m->K, x, B, j0, n, r);
    else rows_quant_any(m->type, (const uint8_t *)m->w, m->K, qa, B, j0, n, r);
}
