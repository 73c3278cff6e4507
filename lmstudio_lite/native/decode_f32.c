/* One float32 decode step (batch 1) through every transformer block, in one call.

   Why C: at batch 1 a block is four weight-streaming GEMVs and some thirty tiny
   ops (norms, RoPE, cache writes, attention over the cache, the activation).
   Through PyTorch each tiny op costs a few microseconds of dispatch; on the
   30-layer SmolLM2 shape that was a third of a step on the CI CPUs. Here the
   tiny ops are plain loops, and the GEMVs split their columns over the threads
   of one OpenMP team (the process already holds torch's libgomp, so this is the
   same thread pool torch uses).

   Shapes: C d_model, H query heads, KV key/value heads, D head_dim, F d_ff,
   Q = (H + 2 KV) D the fused q|k|v width. Weights are stored [in, out] and
   contiguous (model/layers.py); the gated MLP's weight is gate|up side by side
   [C, 2F]. The KV cache of a layer is [KV, max_len, D] (row 0 of the batch).

   The arithmetic follows the PyTorch reference term by term; only the order of
   float32 summation differs (the parity tests hold it to transformers at 1e-4). */
#include <math.h>
#include <omp.h>
#include <stdint.h>

enum { P_NORM1_W, P_NORM1_B, P_QKV_W, P_QKV_B, P_O_W, P_O_B,
       P_NORM2_W, P_NORM2_B, P_UP_W, P_UP_B, P_DOWN_W, P_DOWN_B, P_SLOTS };
enum { D_LAYERS, D_C, D_H, D_KV, D_HEAD, D_FF, D_GATED, D_ROPE, D_LAYERNORM, D_ACT, D_COUNT };
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

/* acc[0:n] = x[0:K] @ W[0:K, j0:j0+n] for W with row stride ldw: eight rows per pass,
   so eight weight streams are in flight and acc stays in L1. */
static void gemv(const float *restrict x, const float *restrict W, int64_t K, int64_t ldw, int64_t j0, int64_t n,
                 float *restrict acc) {
    for (int64_t j = 0; j < n; j++) acc[j] = 0.0f;
    int64_t i = 0;
    for (; i + 8 <= K; i += 8) {
        const float *w0 = W + i * ldw + j0, *w1 = w0 + ldw, *w2 = w1 + ldw, *w3 = w2 + ldw;
        const float *w4 = w3 + ldw, *w5 = w4 + ldw, *w6 = w5 + ldw, *w7 = w6 + ldw;
        const float x0 = x[i], x1 = x[i + 1], x2 = x[i + 2], x3 = x[i + 3];
        const float x4 = x[i + 4], x5 = x[i + 5], x6 = x[i + 6], x7 = x[i + 7];
#pragma omp simd
        for (int64_t j = 0; j < n; j++)
            acc[j] += (x0 * w0[j] + x1 * w1[j] + x2 * w2[j] + x3 * w3[j]) + (x4 * w4[j] + x5 * w5[j] + x6 * w6[j] + x7 * w7[j]);
    }
    for (; i + 4 <= K; i += 4) {
        const float *w0 = W + i * ldw + j0, *w1 = w0 + ldw, *w2 = w1 + ldw, *w3 = w2 + ldw;
        const float x0 = x[i], x1 = x[i + 1], x2 = x[i + 2], x3 = x[i + 3];
#pragma omp simd
        for (int64_t j = 0; j < n; j++) acc[j] += x0 * w0[j] + x1 * w1[j] + x2 * w2[j] + x3 * w3[j];
    }
    for (; i < K; i++) {
        const float *w0 = W + i * ldw + j0;
        const float x0 = x[i];
#pragma omp simd
        for (int64_t j = 0; j < n; j++) acc[j] += x0 * w0[j];
    }
}

/* This thread's share [*j0, *j0 + *n) of N columns, cut on 16-float (cache line) boundaries. */
static void share(int64_t N, int t, int nt, int64_t *j0, int64_t *n) {
    int64_t lines = (N + 15) / 16, a = lines * t / nt * 16, b = lines * (t + 1) / nt * 16;
    if (b > N) b = N;
    if (a > N) a = N;
    *j0 = a;
    *n = b - a;
}

/* v rotated: out[d] = v[d] cos[d] + v[(d + D/2) % D] sin[d] (sin's first half negated). */
static void rope(const float *v, const float *cos, const float *sin, int64_t D, float *out) {
    int64_t half = D / 2;
    for (int64_t d = 0; d < D; d++) out[d] = v[d] * cos[d] + v[(d + half) % D] * sin[d];
}

/* Attention of one query over positions 0..pos of one KV head: out[D]. */
static void attend(const float *q, const float *kc, const float *vc, int64_t pos, int64_t D, float *scores,
                   float *out) {
    const float scale = 1.0f / sqrtf((float)D);
    float best = -INFINITY;
    for (int64_t t = 0; t <= pos; t++) {
        const float *k = kc + t * D;
        float s = 0.0f;
#pragma omp simd reduction(+ : s)
        for (int64_t d = 0; d < D; d++) s += q[d] * k[d];
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
    for (int64_t t = 0; t <= pos; t++) {
        const float p = scores[t] / total, *v = vc + t * D;
#pragma omp simd
        for (int64_t d = 0; d < D; d++) out[d] += p * v[d];
    }
}

/* Token ``token`` at position ``pos``: x [C] gets its embedding (plus the position embedding
   when pos_emb is given) and leaves as the residual stream after the last block. ptrs: P_SLOTS
   addresses per layer (0 where absent); k_cache, v_cache: the whole [n_layer, cache_rows, KV,
   max_len, D] caches, of which row 0 is used; cos, sin: the RoPE tables [*, D] (unused without
   RoPE); scratch: lml_scratch_floats(dims, max_len, nthreads) floats. The caller checks token
   and pos against the vocabulary and max_len. */
void lml_decode_f32(const int64_t *ptrs, const int64_t *dims, float eps, int64_t token, const float *emb,
                    const float *pos_emb, int64_t pos, const float *cos, const float *sin, float *k_cache,
                    float *v_cache, int64_t cache_rows, int64_t max_len, float *x, float *scratch, int nthreads) {
    const int64_t L = dims[D_LAYERS], C = dims[D_C], H = dims[D_H], KV = dims[D_KV], D = dims[D_HEAD];
    const int64_t FF = dims[D_FF], gated = dims[D_GATED], use_rope = dims[D_ROPE];
    const int64_t layernorm = dims[D_LAYERNORM], act = dims[D_ACT];
    const int64_t Q = (H + 2 * KV) * D, up_w = gated ? 2 * FF : FF, group = H / KV;
    const int64_t layer_stride = cache_rows * KV * max_len * D;
    float *qkv = scratch, *y = qkv + Q, *a = y + H * D, *priv = a + FF;
    const int64_t widest = Q > up_w ? Q : up_w;
    const int64_t priv_size = C + D + (max_len + 16) + 2 * widest;
    for (int64_t i = 0; i < C; i++) x[i] = emb[token * C + i] + (pos_emb ? pos_emb[pos * C + i] : 0.0f);
    cos += pos * D;
    sin += pos * D;

#pragma omp parallel num_threads(nthreads)
    {
        const int t = omp_get_thread_num(), nt = omp_get_num_threads();
        float *h = priv + t * priv_size, *qr = h + C, *sc = qr + D, *acc = sc + max_len + 16;
        float *acc2 = acc + widest;
        int64_t j0, n;
        for (int64_t l = 0; l < L; l++) {
            const int64_t *p = ptrs + l * P_SLOTS;
            float *kc = k_cache + l * layer_stride, *vc = v_cache + l * layer_stride;
            norm(x, C, F(p[P_NORM1_W]), F(p[P_NORM1_B]), layernorm, eps, h);
            share(Q, t, nt, &j0, &n);
            gemv(h, F(p[P_QKV_W]), C, Q, j0, n, acc);
            for (int64_t j = 0; j < n; j++) qkv[j0 + j] = acc[j] + (p[P_QKV_B] ? F(p[P_QKV_B])[j0 + j] : 0.0f);
#pragma omp barrier
            for (int64_t g = t; g < KV; g += nt) {  /* a KV head and its queries: one thread */
                const float *k = qkv + (H + g) * D, *v = qkv + (H + KV + g) * D;
                float *kdst = kc + (g * max_len + pos) * D, *vdst = vc + (g * max_len + pos) * D;
                if (use_rope) rope(k, cos, sin, D, kdst);
                else for (int64_t d = 0; d < D; d++) kdst[d] = k[d];
                for (int64_t d = 0; d < D; d++) vdst[d] = v[d];
                for (int64_t hh = g * group; hh < (g + 1) * group; hh++) {
                    const float *q = qkv + hh * D;
                    if (use_rope) { rope(q, cos, sin, D, qr); q = qr; }
                    attend(q, kc + g * max_len * D, vc + g * max_len * D, pos, D, sc, y + hh * D);
                }
            }
#pragma omp barrier
            share(C, t, nt, &j0, &n);
            gemv(y, F(p[P_O_W]), H * D, C, j0, n, acc);
            for (int64_t j = 0; j < n; j++) x[j0 + j] += acc[j] + (p[P_O_B] ? F(p[P_O_B])[j0 + j] : 0.0f);
#pragma omp barrier
            norm(x, C, F(p[P_NORM2_W]), F(p[P_NORM2_B]), layernorm, eps, h);
            share(FF, t, nt, &j0, &n);
            const float *ub = p[P_UP_B] ? F(p[P_UP_B]) : 0;
            if (gated) {  /* gate is columns [0, F), up is [F, 2F) of the same rows */
                gemv(h, F(p[P_UP_W]), C, up_w, j0, n, acc);
                gemv(h, F(p[P_UP_W]), C, up_w, FF + j0, n, acc2);
                for (int64_t j = 0; j < n; j++) {
                    float gv = acc[j] + (ub ? ub[j0 + j] : 0.0f), uv = acc2[j] + (ub ? ub[FF + j0 + j] : 0.0f);
                    a[j0 + j] = activate(gv, act) * uv;
                }
            } else {
                gemv(h, F(p[P_UP_W]), C, up_w, j0, n, acc);
                for (int64_t j = 0; j < n; j++) a[j0 + j] = activate(acc[j] + (ub ? ub[j0 + j] : 0.0f), act);
            }
#pragma omp barrier
            share(C, t, nt, &j0, &n);
            gemv(a, F(p[P_DOWN_W]), FF, C, j0, n, acc);
            for (int64_t j = 0; j < n; j++) x[j0 + j] += acc[j] + (p[P_DOWN_B] ? F(p[P_DOWN_B])[j0 + j] : 0.0f);
#pragma omp barrier
        }
    }
}

/* Floats of scratch lml_decode_f32 needs. */
int64_t lml_scratch_floats(const int64_t *dims, int64_t max_len, int nthreads) {
    const int64_t C = dims[D_C], H = dims[D_H], KV = dims[D_KV], D = dims[D_HEAD], FF = dims[D_FF];
    const int64_t Q = (H + 2 * KV) * D, up_w = dims[D_GATED] ? 2 * FF : FF, widest = Q > up_w ? Q : up_w;
    return Q + H * D + FF + (int64_t)nthreads * (C + D + (max_len + 16) + 2 * widest);
}
