/* Exact multi-head softmax attention within each graph of a mini-batch, on the CPU.
 *
 * Used by gtpe.nn.attention.FullAttention (strategy 'kernel'); compiled on first use by
 * gtpe._native (cc -O3 -march=native), once per machine, into a cached shared library.
 * Built twice: -DREAL=float (suffix _f32) and -DREAL=double -DREAL_IS_DOUBLE (suffix _f64).
 *
 * Layout (as torch.nn.MultiheadAttention's in-projection output): qkv is [N, 3C] row-major
 * with C = H * D; row n holds q_0 .. q_{H-1} | k_0 .. k_{H-1} | v_0 .. v_{H-1} (D each).
 * Graph g owns the rows [ptr[g], ptr[g+1]).  For every graph g and head h, with
 * L = ptr[g+1] - ptr[g]:
 *
 *     P = softmax_rows(scale * Q K^T)   [L, L], stored at probs + poff[g] + h L^2
 *     O = P V                           written to out[ptr[g] + i, h D .. h D + D)
 *
 * Backward, with dO the gradient of O (same layout as out):
 *
 *     dV = P^T dO,  dP = dO V^T,  dS = P * (dP - rowsum(P * dP)),
 *     dQ = scale dS K,  dK = scale dS^T Q          written to grad_qkv ([N, 3C], every row)
 *
 * No padding between graphs: every (graph, head) block has its own size.  Each block is first
 * copied into small scratch matrices whose rows are padded with zeros to a multiple of one
 * 64-byte vector (GCC/Clang vector extensions), so every inner loop is whole vectors that
 * accumulate in registers.  The functions take a graph range [g0, g1) so that callers can split
 * a batch over threads.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifndef REAL
#define REAL float
#endif
#ifndef SUFFIX
#define SUFFIX _f32
#endif
#define CAT2(a, b) a##b
#define CAT(a, b) CAT2(a, b)
#define FN(name) CAT(name, SUFFIX)

typedef REAL real;
#define VLEN ((int64_t)(64 / sizeof(real)))
typedef real vec __attribute__((vector_size(64)));
typedef real vec_u __attribute__((vector_size(64), aligned(sizeof(real)), may_alias));

static inline vec vload(const real *p) { return *(const vec_u *)p; }
static inline void vstore(real *p, vec v) { *(vec_u *)p = v; }
static inline vec vzero(void) { return (vec){0}; }
static inline int64_t round_up(int64_t n) { return (n + VLEN - 1) / VLEN * VLEN; }

/* exp(x - m) for the whole vectors of row[0 .. Lp), in place; returns their sum.  Entries
 * are <= 0 after max subtraction; -inf (padding) gives 0.  float: range reduction by ln 2 and
 * Cephes' degree-6 expf polynomial (relative error < 2e-7) on whole vectors; below -87 the
 * result is 0 (exp(-87) ~ 1.6e-38).  double: libm's exp (the float64 build is for tests). */
static inline real exp_shifted_sum(real *row, int64_t Lp, real m) {
#if defined(REAL_IS_DOUBLE)
    real sum = 0;
    for (int64_t j = 0; j < Lp; ++j) sum += row[j] = exp(row[j] - m);
    return sum;
#else
    typedef int32_t ivec __attribute__((vector_size(64)));
    vec sum = vzero();
    for (int64_t j0 = 0; j0 < Lp; j0 += VLEN) {
        vec x = vload(row + j0) - m;
        const ivec under = x < -87.0f;
        x = (vec)((ivec)x & ~under);               /* underflowing lanes: x = 0 for now */
        vec t = x * 1.44269504088896341f - 0.5f; /* x / ln 2, rounded below by truncation */
        const ivec n = __builtin_convertvector(t, ivec);
        const vec fn = __builtin_convertvector(n, vec);
        vec r = x - fn * 0.693359375f + fn * 2.12194440e-4f; /* x - n ln 2, ln 2 in two parts */
        vec p = 1.9875691500e-4f * r + 1.3981999507e-3f;
        p = p * r + 8.3334519073e-3f;
        p = p * r + 4.1665795894e-2f;
        p = p * r + 1.6666665459e-1f;
        p = p * r + 5.0000001201e-1f;
        p = p * r * r + r + 1.0f;
        const vec e = (vec)((ivec)(p * (vec)((n + 127) << 23)) & ~under); /* times 2^n; 0 below */
        vstore(row + j0, e);
        sum += e;
    }
    real total = 0;
    for (int64_t l = 0; l < VLEN; ++l) total += sum[l];
    return total;
#endif
}

/* Copy the D columns at src (rows src + j * stride, j < L) into dst [Lp, Dp] (row-major) or,
 * transposed, into dst [Dp, Lp]; the padding is zero. */
static void pack_rows(real *dst, const real *src, int64_t stride, int64_t L, int64_t D, int64_t Dp) {
    for (int64_t j = 0; j < L; ++j) {
        memcpy(dst + j * Dp, src + j * stride, sizeof(real) * (size_t)D);
        memset(dst + j * Dp + D, 0, sizeof(real) * (size_t)(Dp - D));
    }
}

static void pack_cols(real *dst, const real *src, int64_t stride, int64_t L, int64_t Lp, int64_t D,
                      int64_t Dp) {
    memset(dst, 0, sizeof(real) * (size_t)(Dp * Lp));
    for (int64_t j = 0; j < L; ++j)
        for (int64_t d = 0; d < D; ++d) dst[d * Lp + j] = src[j * stride + d];
}

/* dst[0 .. n) = v[0 .. n), n <= VLEN */
static inline void store_first(real *dst, vec v, int64_t n) {
    if (n == VLEN) {
        vstore(dst, v);
    } else {
        real tmp[64 / sizeof(real)];
        vstore(tmp, v);
        memcpy(dst, tmp, sizeof(real) * (size_t)n);
    }
}

/* sum over t < n of c[t * cs] * x[t * xs .. t * xs + VLEN): four independent accumulators, so
 * that the loop is bound by FMA throughput rather than by the latency of one chain. */
static inline vec weighted_sum(const real *c, int64_t cs, const real *x, int64_t xs, int64_t n) {
    vec a0 = vzero(), a1 = vzero(), a2 = vzero(), a3 = vzero();
    int64_t t = 0;
    for (; t + 4 <= n; t += 4) {
        a0 += c[t * cs] * vload(x + t * xs);
        a1 += c[(t + 1) * cs] * vload(x + (t + 1) * xs);
        a2 += c[(t + 2) * cs] * vload(x + (t + 2) * xs);
        a3 += c[(t + 3) * cs] * vload(x + (t + 3) * xs);
    }
    for (; t < n; ++t) a0 += c[t * cs] * vload(x + t * xs);
    return (a0 + a1) + (a2 + a3);
}

/* row[0 .. Lp) = a[0 .. D) @ bt[D, Lp] (bt row-major with row length Lp) */
static inline void row_times(real *row, const real *a, const real *bt, int64_t D, int64_t Lp) {
    for (int64_t j0 = 0; j0 < Lp; j0 += VLEN) vstore(row + j0, weighted_sum(a, 1, bt + j0, Lp, D));
}

/* row[0 .. Lp) = softmax(row[0 .. L)), padded with zeros; Lp a multiple of VLEN.  Written as
 * whole-vector blocks (constant trip count) so that the compiler vectorises them completely. */
static inline void softmax_row(real *row, int64_t L, int64_t Lp) {
    for (int64_t j = L; j < Lp; ++j) row[j] = -INFINITY;
    real m = -INFINITY;
    for (int64_t j0 = 0; j0 < Lp; j0 += VLEN) {
#pragma omp simd reduction(max : m)
        for (int64_t j = j0; j < j0 + VLEN; ++j) m = row[j] > m ? row[j] : m;
    }
    const real sum = exp_shifted_sum(row, Lp, m);
    const real inv = (real)1 / sum;
    for (int64_t j0 = 0; j0 < Lp; j0 += VLEN)
        for (int64_t j = j0; j < j0 + VLEN; ++j) row[j] *= inv;
}

static int64_t max_len(const int64_t *ptr, int64_t g0, int64_t g1) {
    int64_t m = 0;
    for (int64_t g = g0; g < g1; ++g)
        if (ptr[g + 1] - ptr[g] > m) m = ptr[g + 1] - ptr[g];
    return m;
}

/* probs may be NULL (inference): P is then kept one row at a time.  Returns 0, or -1 when the
 * scratch buffer cannot be allocated. */
int FN(gtpe_full_attention_forward)(const real *qkv, const int64_t *ptr, const int64_t *poff,
                                    int64_t g0, int64_t g1, int64_t H, int64_t D, real scale,
                                    real *out, real *probs) {
    const int64_t C = H * D, S = 3 * C, Dp = round_up(D);
    const int64_t Lmax = round_up(max_len(ptr, g0, g1));
    real *kt = malloc(sizeof(real) * (size_t)(2 * Dp * Lmax + Lmax + D));
    if (!kt) return -1;
    real *vb = kt + Dp * Lmax, *row = vb + Dp * Lmax, *qs = row + Lmax;
    for (int64_t g = g0; g < g1; ++g) {
        const int64_t L = ptr[g + 1] - ptr[g], Lp = round_up(L);
        if (L == 0) continue;
        const real *base = qkv + ptr[g] * S;
        for (int64_t h = 0; h < H; ++h) {
            pack_cols(kt, base + C + h * D, S, L, Lp, D, Dp);  /* K^T [Dp, Lp] */
            pack_rows(vb, base + 2 * C + h * D, S, L, D, Dp); /* V [L, Dp] */
            for (int64_t i = 0; i < L; ++i) {
                const real *qi = base + i * S + h * D;
                for (int64_t d = 0; d < D; ++d) qs[d] = qi[d] * scale;
                row_times(row, qs, kt, D, Lp); /* scores of query i, [Lp] */
                softmax_row(row, L, Lp);
                if (probs) memcpy(probs + poff[g] + (h * L + i) * L, row, sizeof(real) * (size_t)L);
                real *oi = out + (ptr[g] + i) * C + h * D;
                for (int64_t d0 = 0; d0 < Dp; d0 += VLEN) /* O_i = sum_j P_ij V_j */
                    store_first(oi + d0, weighted_sum(row, 1, vb + d0, Dp, L), D - d0 < VLEN ? D - d0 : VLEN);
            }
        }
    }
    free(kt);
    return 0;
}

int FN(gtpe_full_attention_backward)(const real *qkv, const int64_t *ptr, const int64_t *poff,
                                     int64_t g0, int64_t g1, int64_t H, int64_t D, real scale,
                                     const real *probs, const real *grad_out, real *grad_qkv) {
    const int64_t C = H * D, S = 3 * C, Dp = round_up(D);
    const int64_t Lmax = round_up(max_len(ptr, g0, g1));
    /* Q, K, dO [L, Dp];  V^T [Dp, Lp];  dS [L, Lp] */
    real *qb = malloc(sizeof(real) * (size_t)(4 * Dp * Lmax + Lmax * Lmax));
    if (!qb) return -1;
    real *kb = qb + Dp * Lmax, *dob = kb + Dp * Lmax, *vt = dob + Dp * Lmax, *ds = vt + Dp * Lmax;
    for (int64_t g = g0; g < g1; ++g) {
        const int64_t L = ptr[g + 1] - ptr[g], Lp = round_up(L);
        if (L == 0) continue;
        const real *base = qkv + ptr[g] * S;
        real *gbase = grad_qkv + ptr[g] * S;
        for (int64_t h = 0; h < H; ++h) {
            const real *P = probs + poff[g] + h * L * L;
            pack_rows(qb, base + h * D, S, L, D, Dp);
            pack_rows(kb, base + C + h * D, S, L, D, Dp);
            pack_cols(vt, base + 2 * C + h * D, S, L, Lp, D, Dp);
            pack_rows(dob, grad_out + ptr[g] * C + h * D, C, L, D, Dp);
            for (int64_t i = 0; i < L; ++i) {
                const real *pi = P + i * L;
                real *dsi = ds + i * Lp;
                row_times(dsi, dob + i * Dp, vt, D, Lp); /* dP_i = dO_i V^T */
                real delta = 0;
#pragma omp simd reduction(+ : delta)
                for (int64_t j = 0; j < L; ++j) delta += pi[j] * dsi[j];
                for (int64_t j = 0; j < L; ++j) dsi[j] = pi[j] * (dsi[j] - delta) * scale;
                real *dqi = gbase + i * S + h * D;
                for (int64_t d0 = 0; d0 < Dp; d0 += VLEN) /* dQ_i = sum_j dS_ij K_j */
                    store_first(dqi + d0, weighted_sum(dsi, 1, kb + d0, Dp, L), D - d0 < VLEN ? D - d0 : VLEN);
            }
            for (int64_t j = 0; j < L; ++j) { /* dK_j = sum_i dS_ij Q_i;  dV_j = sum_i P_ij dO_i */
                real *dkj = gbase + j * S + C + h * D, *dvj = gbase + j * S + 2 * C + h * D;
                for (int64_t d0 = 0; d0 < Dp; d0 += VLEN) {
                    const int64_t n = D - d0 < VLEN ? D - d0 : VLEN;
                    store_first(dkj + d0, weighted_sum(ds + j, Lp, qb + d0, Dp, L), n);
                    store_first(dvj + d0, weighted_sum(P + j, L, dob + d0, Dp, L), n);
                }
            }
        }
    }
    free(qb);
    return 0;
}
