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
 *     P = softmax_rows(scale * Q K^T + B)   [L, L], stored at probs + poff[g] + h L^2
 *     O = P V                               written to out[ptr[g] + i, h D .. h D + D)
 *
 * B is an optional additive bias (NULL: none) in the layout of probs: B_ij (query i, key j) at
 * bias + poff[g] + (h L + i) L + j.  Backward, with dO the gradient of O (same layout as out):
 *
 *     dV = P^T dO,  dP = dO V^T,  dS = P * (dP - rowsum(P * dP)),
 *     dQ = scale dS K,  dK = scale dS^T Q          written to grad_qkv ([N, 3C], every row)
 *     dB = dS                                      written to grad_bias (if not NULL)
 *
 * No padding between graphs: every (graph, head) block has its own size.  Each block is first
 * copied into small scratch matrices whose rows are padded with zeros to a multiple of one
 * 64-byte vector (GCC/Clang vector extensions), so every inner loop is whole vectors that
 * accumulate in registers.  The entry points take a graph range [g0, g1) and, when built with
 * -fopenmp, spread its (graph, head) blocks over the OpenMP threads (torch's own, see
 * gtpe._native.torch_uses_gnu_openmp).
 */
#include <math.h>
#include <stdint.h>
#ifdef _OPENMP
#include <omp.h>
#endif
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

#if defined(REAL_IS_DOUBLE)
typedef int64_t ivec __attribute__((vector_size(64)));
#else
typedef int32_t ivec __attribute__((vector_size(64)));
#endif

/* Horizontal reductions by halving the vector width (stays in registers). */
typedef real vec32 __attribute__((vector_size(32)));
typedef real vec16 __attribute__((vector_size(16)));
#define QLEN ((int64_t)(16 / sizeof(real)))

/* Lane-wise max at each width (C has no ?: on vectors: select through the comparison mask). */
#define DEFINE_VMAX(name, V)                                                                  \
    static inline V name(V a, V b) {                                                          \
        const __typeof__(a > b) a_larger = a > b;                                             \
        return (V)(((__typeof__(a_larger))a & a_larger) | ((__typeof__(a_larger))b & ~a_larger)); \
    }
DEFINE_VMAX(vmax, vec)
DEFINE_VMAX(vmax32, vec32)
DEFINE_VMAX(vmax16, vec16)

static inline real hsum(vec v) {
    const union { vec v; vec32 h[2]; } a = {v};
    const union { vec32 v; vec16 h[2]; } b = {a.h[0] + a.h[1]};
    const vec16 q = b.h[0] + b.h[1];
    real s = q[0];
    for (int64_t l = 1; l < QLEN; ++l) s += q[l];
    return s;
}

static inline real hmax(vec v) {
    const union { vec v; vec32 h[2]; } a = {v};
    const union { vec32 v; vec16 h[2]; } b = {vmax32(a.h[0], a.h[1])};
    const vec16 q = vmax16(b.h[0], b.h[1]);
    real m = q[0];
    for (int64_t l = 1; l < QLEN; ++l) m = q[l] > m ? q[l] : m;
    return m;
}

/* exp(x) on a vector of x <= 0 (scores after max subtraction).
 * float: range reduction by ln 2 and Cephes' degree-6 expf polynomial (relative error < 2e-7);
 * below -87 the result is 0 (exp(-87) ~ 1.6e-38).  double: libm's exp per lane (the float64
 * build is for tests). */
static inline vec vexp_nonpos(vec x) {
#if defined(REAL_IS_DOUBLE)
    for (int64_t l = 0; l < VLEN; ++l) x[l] = exp(x[l]);
    return x;
#else
    const ivec under = x < -87.0f;
    x = (vec)((ivec)x & ~under);               /* underflowing lanes: x = 0 for now */
    const vec t = x * 1.44269504088896341f - 0.5f; /* x / ln 2, rounded below by truncation */
    const ivec n = __builtin_convertvector(t, ivec);
    const vec fn = __builtin_convertvector(n, vec);
    const vec r = x - fn * 0.693359375f + fn * 2.12194440e-4f; /* x - n ln 2, ln 2 in two parts */
    vec p = 1.9875691500e-4f * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    return (vec)((ivec)(p * (vec)((n + 127) << 23)) & ~under); /* times 2^n; 0 below -87 */
#endif
}

/* Copy the D columns at src (rows src + j * stride, j < L) into dst [rows, Dp] (row-major);
 * the padding columns and the rows L .. rows are zero. */
static void pack_rows(real *dst, const real *src, int64_t stride, int64_t L, int64_t rows, int64_t D,
                      int64_t Dp) {
    for (int64_t j = 0; j < L; ++j) {
        real *dj = dst + j * Dp;
        const real *sj = src + j * stride;
        int64_t d = 0;
        for (; d + VLEN <= D; d += VLEN) vstore(dj + d, vload(sj + d));
        for (; d < D; ++d) dj[d] = sj[d];
        for (; d < Dp; ++d) dj[d] = 0;
    }
    for (int64_t j = L; j < rows; ++j)
        for (int64_t d0 = 0; d0 < Dp; d0 += VLEN) vstore(dst + j * Dp + d0, vzero());
}

/* The same, transposed: dst [Dp, Lp] with dst[d * Lp + j] = src[j * stride + d], zero padding. */
static void pack_cols(real *dst, const real *src, int64_t stride, int64_t L, int64_t Lp, int64_t D,
                      int64_t Dp) {
    memset(dst, 0, sizeof(real) * (size_t)(Dp * Lp));
    for (int64_t d = 0; d < D; ++d) /* contiguous stores, strided loads */
        for (int64_t j = 0; j < L; ++j) dst[d * Lp + j] = src[j * stride + d];
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

/* The micro-kernel of every product here: for r < 4,
 *     acc[r] = sum over t < n of c[r * crs + t * cs] * x[t * xs .. t * xs + VLEN),
 * i.e. four rows (or columns) of coefficients times n vectors.  Each vector of x is loaded once
 * for four independent accumulator chains, so the loop runs at FMA throughput. */
static inline void weighted_sum4(vec acc[4], const real *c, int64_t cs, int64_t crs,
                                 const real *x, int64_t xs, int64_t n) {
    vec a0 = vzero(), a1 = vzero(), a2 = vzero(), a3 = vzero();
    for (int64_t t = 0; t < n; ++t) {
        const vec v = vload(x + t * xs);
        const real *ct = c + t * cs;
        a0 += ct[0] * v;
        a1 += ct[crs] * v;
        a2 += ct[2 * crs] * v;
        a3 += ct[3 * crs] * v;
    }
    acc[0] = a0, acc[1] = a1, acc[2] = a2, acc[3] = a3;
}

/* Lanes j0 + l < L of the vector that starts at j0 (all bits set where valid). */
static inline ivec valid_lanes(int64_t j0, int64_t L) {
    static const real lane[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
    return vload(lane) + (real)j0 < (real)L;
}

/* row[0 .. Lp) = softmax(row[0 .. L)), padded with zeros; Lp a multiple of VLEN.  Whole
 * vectors only: the padding lanes are masked, not written one by one. */
static inline void softmax_row(real *row, int64_t L, int64_t Lp) {
    const vec minus_inf = vzero() - INFINITY;
    vec mv = minus_inf;
    for (int64_t j0 = 0; j0 < Lp; j0 += VLEN) {
        const ivec valid = valid_lanes(j0, L);
        const vec x = (vec)(((ivec)vload(row + j0) & valid) | ((ivec)minus_inf & ~valid));
        mv = vmax(mv, x);
    }
    const real m = hmax(mv);
    vec sum = vzero();
    for (int64_t j0 = 0; j0 < Lp; j0 += VLEN) {
        const vec e = (vec)((ivec)vexp_nonpos(vload(row + j0) - m) & valid_lanes(j0, L));
        vstore(row + j0, e);
        sum += e;
    }
    const real inv = (real)1 / hsum(sum);
    for (int64_t j0 = 0; j0 < Lp; j0 += VLEN) vstore(row + j0, vload(row + j0) * inv);
}

static int64_t max_len(const int64_t *ptr, int64_t g0, int64_t g1) {
    int64_t m = 0;
    for (int64_t g = g0; g < g1; ++g)
        if (ptr[g + 1] - ptr[g] > m) m = ptr[g + 1] - ptr[g];
    return m;
}

#define MIN(a, b) ((a) < (b) ? (a) : (b))

/* Work below this many score entries (~80 us) stays on the calling thread. */
#define PARALLEL_MIN_ENTRIES 32768

/* Threads for a call: with OpenMP (built with -fopenmp; gtpe._native does so where torch itself
 * runs on GNU OpenMP, whose runtime and threads this library then shares) torch's thread count,
 * else one. */
static int threads_for(int64_t entries) {
#ifdef _OPENMP
    return entries >= PARALLEL_MIN_ENTRIES ? omp_get_max_threads() : 1;
#else
    (void)entries;
    return 1;
#endif
}

static int thread_id(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

int FN(gtpe_full_attention_openmp)(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

/* One (graph, head) block of the forward; scratch holds 2 Dp Lmax + 4 D + 4 Lmax reals. */
static void forward_block(const real *qkv, const int64_t *ptr, const int64_t *poff, int64_t g,
                          int64_t h, int64_t H, int64_t D, real scale, real *out, real *probs,
                          const real *bias, real *scratch, int64_t Lmax) {
    const int64_t C = H * D, S = 3 * C, Dp = round_up(D);
    const int64_t L = ptr[g + 1] - ptr[g], Lp = round_up(L);
    if (L == 0) return;
    /* K^T [Dp, Lp];  V [Lp, Dp];  4 scaled query rows [4, D];  4 score rows [4, Lp] */
    real *kt = scratch, *vb = kt + Dp * Lmax, *qs = vb + Dp * Lmax, *rows = qs + 4 * D;
    const real *base = qkv + ptr[g] * S;
    pack_cols(kt, base + C + h * D, S, L, Lp, D, Dp);
    const real *vrows = base + 2 * C + h * D; /* V [L, D] with row stride vs */
    int64_t vs = S;
    if (D != Dp) { /* not whole vectors: a zero-padded copy */
        pack_rows(vb, vrows, S, L, L, D, Dp);
        vrows = vb, vs = Dp;
    }
    for (int64_t i0 = 0; i0 < L; i0 += 4) { /* four query rows at a time */
        const int64_t nr = MIN(4, L - i0);
        vec acc[4];
        for (int64_t r = 0; r < 4; ++r)
            for (int64_t d = 0; d < D; ++d)
                qs[r * D + d] = r < nr ? base[(i0 + r) * S + h * D + d] * scale : 0;
        for (int64_t j0 = 0; j0 < Lp; j0 += VLEN) { /* scores S = scale Q K^T */
            weighted_sum4(acc, qs, 1, D, kt + j0, Lp, D);
            for (int64_t r = 0; r < 4; ++r) vstore(rows + r * Lp + j0, acc[r]);
        }
        for (int64_t r = 0; r < nr; ++r) {
            if (bias) { /* additive bias B_ij of query row i0 + r */
                const real *bi = bias + poff[g] + (h * L + i0 + r) * L;
                real *si = rows + r * Lp;
                for (int64_t j = 0; j < L; ++j) si[j] += bi[j];
            }
            softmax_row(rows + r * Lp, L, Lp);
            if (probs)
                memcpy(probs + poff[g] + (h * L + i0 + r) * L, rows + r * Lp, sizeof(real) * (size_t)L);
        }
        for (int64_t d0 = 0; d0 < Dp; d0 += VLEN) { /* O = P V */
            weighted_sum4(acc, rows, 1, Lp, vrows + d0, vs, L);
            for (int64_t r = 0; r < nr; ++r)
                store_first(out + (ptr[g] + i0 + r) * C + h * D + d0, acc[r], MIN(VLEN, D - d0));
        }
    }
}

/* One (graph, head) block of the backward; scratch holds 4 Dp Lmax + 2 Lmax^2 reals. */
static void backward_block(const real *qkv, const int64_t *ptr, const int64_t *poff, int64_t g,
                           int64_t h, int64_t H, int64_t D, real scale, const real *probs,
                           const real *grad_out, real *grad_qkv, real *grad_bias, real *scratch,
                           int64_t Lmax) {
    const int64_t C = H * D, S = 3 * C, Dp = round_up(D);
    const int64_t L = ptr[g + 1] - ptr[g], Lp = round_up(L), L4 = (L + 3) / 4 * 4;
    if (L == 0) return;
    /* Q, K, dO [Lp, Dp];  V^T [Dp, Lp];  P, dS [Lp, Lp] */
    real *qb = scratch, *kb = qb + Dp * Lmax, *dob = kb + Dp * Lmax, *vt = dob + Dp * Lmax;
    real *pb = vt + Dp * Lmax, *ds = pb + Lmax * Lmax;
    const real *base = qkv + ptr[g] * S;
    real *gbase = grad_qkv + ptr[g] * S;
    const real *qrows = base + h * D, *krows = base + C + h * D; /* row stride qs */
    int64_t qs = S;
    if (D != Dp) { /* not whole vectors: zero-padded copies */
        pack_rows(qb, qrows, S, L, L, D, Dp);
        pack_rows(kb, krows, S, L, L, D, Dp);
        qrows = qb, krows = kb, qs = Dp;
    }
    pack_rows(dob, grad_out + ptr[g] * C + h * D, C, L, L4, D, Dp);
    pack_cols(vt, base + 2 * C + h * D, S, L, Lp, D, Dp);
    pack_rows(pb, probs + poff[g] + h * L * L, L, L, L, L, Lp);
    for (int64_t i0 = 0; i0 < L; i0 += 4) { /* four query rows at a time */
        const int64_t nr = MIN(4, L - i0);
        vec acc[4];
        for (int64_t j0 = 0; j0 < Lp; j0 += VLEN) { /* dP = dO V^T */
            weighted_sum4(acc, dob + i0 * Dp, 1, Dp, vt + j0, Lp, D);
            for (int64_t r = 0; r < 4; ++r) vstore(ds + (i0 + r) * Lp + j0, acc[r]);
        }
        for (int64_t r = 0; r < nr; ++r) { /* dS = P (dP - rowsum(P dP)), scaled */
            const real *pi = pb + (i0 + r) * Lp;
            real *dsi = ds + (i0 + r) * Lp, delta = 0;
#pragma omp simd reduction(+ : delta)
            for (int64_t j = 0; j < L; ++j) delta += pi[j] * dsi[j];
            if (grad_bias) { /* dB = dS (unscaled), then dS scaled as below */
                real *gbi = grad_bias + poff[g] + (h * L + i0 + r) * L;
                for (int64_t j = 0; j < L; ++j) {
                    const real t = pi[j] * (dsi[j] - delta);
                    gbi[j] = t;
                    dsi[j] = t * scale;
                }
                for (int64_t j = L; j < Lp; ++j) dsi[j] = pi[j] * (dsi[j] - delta) * scale;
            } else {
                for (int64_t j = 0; j < Lp; ++j) dsi[j] = pi[j] * (dsi[j] - delta) * scale;
            }
        }
        for (int64_t d0 = 0; d0 < Dp; d0 += VLEN) { /* dQ = dS K */
            weighted_sum4(acc, ds + i0 * Lp, 1, Lp, krows + d0, qs, L);
            for (int64_t r = 0; r < nr; ++r)
                store_first(gbase + (i0 + r) * S + h * D + d0, acc[r], MIN(VLEN, D - d0));
        }
    }
    for (int64_t j0 = 0; j0 < L; j0 += 4) { /* four key rows at a time */
        const int64_t nc = MIN(4, L - j0);
        vec acck[4], accv[4];
        for (int64_t d0 = 0; d0 < Dp; d0 += VLEN) { /* dK = dS^T Q;  dV = P^T dO */
            weighted_sum4(acck, ds + j0, Lp, 1, qrows + d0, qs, L);
            weighted_sum4(accv, pb + j0, Lp, 1, dob + d0, Dp, L);
            for (int64_t c = 0; c < nc; ++c) {
                real *row = gbase + (j0 + c) * S + h * D + d0;
                store_first(row + C, acck[c], MIN(VLEN, D - d0));
                store_first(row + 2 * C, accv[c], MIN(VLEN, D - d0));
            }
        }
    }
}

/* The entry points: every (graph, head) block of the graphs [g0, g1), spread over threads.
 * probs may be NULL in the forward (inference); bias and grad_bias may be NULL (no bias, or no
 * gradient for it).  Return 0, or -1 when the scratch cannot be allocated. */
int FN(gtpe_full_attention_forward)(const real *qkv, const int64_t *ptr, const int64_t *poff,
                                    int64_t g0, int64_t g1, int64_t H, int64_t D, real scale,
                                    real *out, real *probs, const real *bias) {
    const int64_t Dp = round_up(D), Lmax = round_up(max_len(ptr, g0, g1));
    const int64_t per_thread = 2 * Dp * Lmax + 4 * D + 4 * Lmax, blocks = (g1 - g0) * H;
    const int nt = threads_for(poff[g1] - poff[g0]);
    real *scratch = calloc((size_t)(per_thread * nt), sizeof(real));
    if (!scratch) return -1;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) if (nt > 1)
    for (int64_t b = 0; b < blocks; ++b)
        forward_block(qkv, ptr, poff, g0 + b / H, b % H, H, D, scale, out, probs, bias,
                      scratch + per_thread * thread_id(), Lmax);
    free(scratch);
    return 0;
}

int FN(gtpe_full_attention_backward)(const real *qkv, const int64_t *ptr, const int64_t *poff,
                                     int64_t g0, int64_t g1, int64_t H, int64_t D, real scale,
                                     const real *probs, const real *grad_out, real *grad_qkv,
                                     real *grad_bias) {
    const int64_t Dp = round_up(D), Lmax = round_up(max_len(ptr, g0, g1));
    const int64_t per_thread = 4 * Dp * Lmax + 2 * Lmax * Lmax, blocks = (g1 - g0) * H;
    const int nt = threads_for(poff[g1] - poff[g0]);
    real *scratch = calloc((size_t)(per_thread * nt), sizeof(real));
    if (!scratch) return -1;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) if (nt > 1)
    for (int64_t b = 0; b < blocks; ++b)
        backward_block(qkv, ptr, poff, g0 + b / H, b % H, H, D, scale, probs, grad_out, grad_qkv,
                       grad_bias, scratch + per_thread * thread_id(), Lmax);
    free(scratch);
    return 0;
}
