/* Softmax cross-entropy per row of a block of logits on the CPU, for class-index or
 * class-probability targets: the rows' statistics and, where asked, the gradient, in one
 * call.
 *
 * Per row i, in blocks of BLK logits (read in their own dtype, float32, bfloat16 or
 * float16, and widened to float32 in registers; float16 through a block-sized buffer):
 *
 *   pass 1: the row max m_i (NaN if any logit is NaN), the target logit z_{y_i}, and
 *           sum_v w_v z_v (label smoothing only; w = 1 without class weights), summed
 *           in float32 over 64 terms and in float64 across them;
 *   pass 2: e_v = exp(z_v - m_i) and s_i = sum_v e_v (float32 per block, float64 across
 *           blocks); e is kept for pass 3, in the gradient itself for float32 logits and
 *           in a row-sized buffer for half types;
 *   pass 3 (gradient): g_v = k_i e_v - sc_i w_v - tc_i [v == y_i], with
 *           k_i = (pc_i + zc_i lse_i) / s_i and lse_i = m_i + log s_i, written in the
 *           logits' dtype (rounded to nearest, ties to even, as torch converts).
 *
 * Class-probability targets t (rows (n, V) only, of the logits' dtype or float32) take
 * the same passes with q = w (keep t + add) in place of the one-hot: pass 1 also sums q
 * and q z (a class of q = 0 adds 0 whatever its logit), pass 3 subtracts scale q.
 *
 * Blocks (n, V, S) with class indices (an image's V classes at each of its S pixels, S
 * apart in memory) go the same way, each position a row of its own, in tiles of COLS
 * positions vectorised across the positions (ce_positions); there pass 3 takes the
 * exponentials again for half types.
 *
 * A row of 1000 float32 logits is 4 KB and stays in the first-level cache between its
 * passes; each pass is one vectorised loop (the exponential from glibc's libmvec where it
 * is declared below). Rows are split evenly over the OpenMP threads. The gradient may be
 * written over the logits themselves (grad == z): each pass reads a logit before it
 * writes there. Compiled with -ffp-contract=off, so that every copy of a loop (one per
 * dtype) rounds alike.
 *
 * Semantics (the loss from these statistics, and the coefficients pc, zc, tc, sc) are
 * those of crossentropy.losses._kernel; the torch operations there are the reference.
 */
#include <float.h>
#include <math.h>
#include <omp.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __F16C__
#include <immintrin.h>
#endif

#ifdef CE_LIBMVEC
#pragma omp declare simd notinbranch
extern float expf(float);
#endif

#define BLK 1024
#define F32 0
#define BF16 1
#define F16 2

typedef struct {
    int64_t n, V, S;       /* n rows of V classes, each at S positions (S = 1: plain rows) */
    int64_t dtype;         /* F32, BF16 or F16: of the logits and of the gradient */
    const void *z;         /* (n, V, S) logits, row-major */
    const int64_t *y;      /* (n, S) class indices in [0, V) */
    const float *wclass;   /* (V) class weights, or NULL */
    /* per-row results (n, S): a position of a row is a row of its own below */
    float *row_max;        /* m_i */
    float *log_sum;        /* log s_i */
    float *z_target;       /* z_{y_i} */
    float *w_dot_z;        /* sum_v w_v z_v, or NULL (not formed) */
    /* the gradient: per-row coefficients (n, S), each NULL for the number beside it */
    void *grad;            /* (n, V, S) in the logits' dtype, or NULL for no gradient */
    const float *pcoef, *zcoef, *tcoef, *scoef;
    float pcoef_all, zcoef_all, tcoef_all, scoef_all;
    /* class-probability targets, in place of y (rows only, S = 1): t (n, V) of tdtype (the
       logits' dtype or F32), smoothed to t' = keep * t + add and weighted q = w t'; the
       results q_sum = sum_v q_v and q_dot_z = sum_v q_v z_v (a class of q_v = 0 adds 0
       whatever its logit); the gradient's factor is pcoef (the row's scale) and zl2 is
       2 * z_loss. NULL for index targets. */
    const void *t;
    int64_t tdtype;
    float keep, add, zl2;
    float *q_sum, *q_dot_z;
    /* the entropy of the prediction per row, in nats, or NULL (rows only, S = 1) */
    float *entropy;
} ce_rows_args;

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* Logit j of src, widened to float32 (bfloat16 is the upper half of a float32). Inlined
   into each loop with the dtype a constant, so that every loop vectorises. */
static inline __attribute__((always_inline)) float load(const void *src, int64_t j, int dtype) {
    if (dtype == F32) return ((const float *)src)[j];
    if (dtype == BF16) {
        const uint32_t bits = (uint32_t)((const uint16_t *)src)[j] << 16;
        float f;
        memcpy(&f, &bits, sizeof f);
        return f;
    }
    return (float)((const _Float16 *)src)[j];
}

/* float32 to bfloat16, rounded to nearest with ties to even; NaN to torch's quiet NaN. */
static inline uint16_t to_bf16(float f) {
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    const uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
    return (bits & 0x7FFFFFFFu) > 0x7F800000u ? (uint16_t)0x7FC0u : (uint16_t)rounded;
}

/* float16 logits [0, len) of src widened into dst: eight at a time by the F16C
   instructions where the compiler targets them (the scalar conversion does not
   vectorise), else one at a time. */
static void widen_f16(const _Float16 *src, int64_t len, float *dst) {
    int64_t j = 0;
#ifdef __F16C__
    for (; j + 8 <= len; j += 8)
        _mm256_storeu_ps(dst + j, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + j))));
#endif
    for (; j < len; j++) dst[j] = (float)src[j];
}

/* The gradient block g (float32, len values) into dst in the logits' dtype. */
static void narrow(void *dst, int64_t len, const float *g, int dtype) {
    if (dtype == BF16) {
        uint16_t *out = dst;
        #pragma omp simd
        for (int64_t j = 0; j < len; j++) out[j] = to_bf16(g[j]);
        return;
    }
    _Float16 *out = dst;
    int64_t j = 0;
#ifdef __F16C__
    for (; j + 8 <= len; j += 8)
        _mm_storeu_si128((__m128i *)(out + j),
                         _mm256_cvtps_ph(_mm256_loadu_ps(g + j), _MM_FROUND_TO_NEAREST_INT));
#endif
    for (; j < len; j++) out[j] = (_Float16)g[j];
}

/* Block [off, off + len) of a row's logits as (src, base, kind): logit j is
   load(src, base + j, kind). float32 and bfloat16 are read in place; float16 is widened
   into buf first. */
#define BLOCK_SOURCE(row, off, len, buf, dtype, src, base, kind)                    \
    const void *src = (row);                                                        \
    int64_t base = (off);                                                           \
    int kind = (dtype);                                                             \
    if ((dtype) == F16) {                                                           \
        widen_f16((const _Float16 *)(row) + (off), (len), (buf));                   \
        src = (buf);                                                                \
        base = 0;                                                                   \
        kind = F32;                                                                 \
    }

static const int64_t ITEMSIZE[] = {4, 2, 2};

/* Raises *m to the largest of len logits (load(src, base + j, kind)) and sets *nan where
   one of them is NaN: pass 1's max, for both kinds of target. */
static inline __attribute__((always_inline)) void raise_max(const void *src, int64_t base,
                                                            int kind, int64_t len, float *m,
                                                            int *nan) {
    float top = -INFINITY;
    int bad = 0;
    #pragma omp simd reduction(max : top) reduction(| : bad)
    for (int64_t j = 0; j < len; j++) {
        const float x = load(src, base + j, kind);
        top = x > top ? x : top;
        bad |= x != x;
    }
    *m = top > *m ? top : *m;
    *nan |= bad;
}

/* Pass 2 of row i (logits at row, max m): e_v = exp(z_v - m), kept in e where it is not
   NULL (the gradient itself for float32, else a row buffer), and s = sum_v e_v, returned.
   Where the entropy of the prediction is asked for (a->entropy), entropy_pass does it. */
static inline __attribute__((always_inline)) double exp_pass(const ce_rows_args *a,
                                                            const void *row, float m,
                                                            float *e, float *buf, int dtype) {
    const int64_t V = a->V;
    double s = 0.0;
    for (int64_t off = 0; off < V; off += BLK) {
        const int64_t len = min64(BLK, V - off);
        BLOCK_SOURCE(row, off, len, buf, dtype, src, base, kind)
        float acc = 0.0f;
        if (e) {
            float *eb = e + off;
            #pragma omp simd reduction(+ : acc)
            for (int64_t j = 0; j < len; j++) {
                const float v = expf(load(src, base + j, kind) - m);
                eb[j] = v;
                acc += v;
            }
        } else {
            #pragma omp simd reduction(+ : acc)
            for (int64_t j = 0; j < len; j++) acc += expf(load(src, base + j, kind) - m);
        }
        s += acc;
    }
    return s;
}

/* exp_pass with the entropy of the prediction too, written to a->entropy[i] in nats:
   H = log s - sum_v e_v (z_v - m) / s, each term about the max (a class of e_v = 0 adds
   0), so that a peaked row's small entropy keeps its digits. Two loops per block (a
   select beside the exponential's call keeps one loop from vectorising), the
   exponentials kept in vbuf between them (e may be the logits themselves, which the
   second loop still reads). Kept out of line: inlined beside exp_pass's loops, it made
   them run 5 times slower. */
static inline __attribute__((always_inline)) double entropy_pass_as(const ce_rows_args *a,
                                                                   int64_t i, const void *row,
                                                                   float m, float *e,
                                                                   float *buf, int dtype) {
    const int64_t V = a->V;
    double s = 0.0, ez = 0.0;
    float vbuf[BLK];
    for (int64_t off = 0; off < V; off += BLK) {
        const int64_t len = min64(BLK, V - off);
        BLOCK_SOURCE(row, off, len, buf, dtype, src, base, kind)
        float acc = 0.0f, dot = 0.0f;
        #pragma omp simd reduction(+ : acc)
        for (int64_t j = 0; j < len; j++) {
            const float v = expf(load(src, base + j, kind) - m);
            vbuf[j] = v;
            acc += v;
        }
        #pragma omp simd reduction(+ : dot)
        for (int64_t j = 0; j < len; j++) {
            const float d = load(src, base + j, kind) - m;
            dot += vbuf[j] * (d > -FLT_MAX ? d : -FLT_MAX); /* e = 0 at -inf adds 0 */
        }
        if (e) memcpy(e + off, vbuf, (size_t)len * sizeof(float));
        s += acc;
        ez += dot;
    }
    a->entropy[i] = (float)(log(s) - ez / s);
    return s;
}

#define ENTROPY_PASS(name, dtype)                                                          \
    static __attribute__((noinline)) double name(const ce_rows_args *a, int64_t i,         \
                                                 const void *row, float m, float *e,       \
                                                 float *buf) {                             \
        return entropy_pass_as(a, i, row, m, e, buf, dtype);                              \
    }
ENTROPY_PASS(entropy_pass_f32, F32)
ENTROPY_PASS(entropy_pass_bf16, BF16)
ENTROPY_PASS(entropy_pass_f16, F16)

/* Pass 2 of row i: exp_pass, or entropy_pass where the entropy is asked for. */
static inline __attribute__((always_inline)) double sum_pass(const ce_rows_args *a, int64_t i,
                                                            const void *row, float m,
                                                            float *e, float *buf, int dtype) {
    if (!a->entropy) return exp_pass(a, row, m, e, buf, dtype);
    if (dtype == F32) return entropy_pass_f32(a, i, row, m, e, buf);
    if (dtype == BF16) return entropy_pass_bf16(a, i, row, m, e, buf);
    return entropy_pass_f16(a, i, row, m, e, buf);
}

/* Row i, with the logits' dtype a constant (see one_row). */
static inline __attribute__((always_inline)) void row_as(const ce_rows_args *a, int64_t i,
                                                          float *buf, float *ebuf, int dtype) {
    const int64_t V = a->V, y = a->y[i];
    const float *w = a->wclass;
    const int smoothing = a->w_dot_z != NULL;
    const void *row = (const char *)a->z + i * V * ITEMSIZE[dtype];

    /* pass 1: max (NaN-propagating), target logit, sum_v w_v z_v */
    float m = -INFINITY, zy = 0.0f;
    int nan = 0;
    double wz = 0.0;
    for (int64_t off = 0; off < V; off += BLK) {
        const int64_t len = min64(BLK, V - off);
        BLOCK_SOURCE(row, off, len, buf, dtype, src, base, kind)
        raise_max(src, base, kind, len, &m, &nan);
        double dot = 0.0;
        if (smoothing) { /* float within 64 terms, then double (as in prob_row_as) */
            for (int64_t j0 = 0; j0 < len; j0 += 64) {
                const int64_t j1 = min64(j0 + 64, len);
                float part = 0.0f;
                if (w) {
                    #pragma omp simd reduction(+ : part)
                    for (int64_t j = j0; j < j1; j++) part += w[off + j] * load(src, base + j, kind);
                } else {
                    #pragma omp simd reduction(+ : part)
                    for (int64_t j = j0; j < j1; j++) part += load(src, base + j, kind);
                }
                dot += part;
            }
            wz += dot;
        }
        if (y >= off && y < off + len) zy = load(src, base + y - off, kind);
    }
    if (nan) m = NAN;

    /* pass 2 */
    float *e = !a->grad ? NULL : dtype == F32 ? (float *)a->grad + i * V : ebuf;
    const double s = sum_pass(a, i, row, m, e, buf, dtype);
    const float log_s = (float)log(s);
    a->row_max[i] = m;
    a->log_sum[i] = log_s;
    a->z_target[i] = zy;
    if (smoothing) a->w_dot_z[i] = (float)wz;
    if (!e) return;

    /* pass 3: the gradient, in place over e, then narrowed into the logits' dtype */
    const float pc = a->pcoef ? a->pcoef[i] : a->pcoef_all;
    const float zc = a->zcoef ? a->zcoef[i] : a->zcoef_all;
    const float tc = a->tcoef ? a->tcoef[i] : a->tcoef_all;
    const float sc = a->scoef ? a->scoef[i] : a->scoef_all;
    const float lse = m + log_s;
    const float k = (zc != 0.0f ? pc + zc * lse : pc) * (float)(1.0 / s);
    if (dtype == BF16) { /* one loop: the gradient rounded straight from e */
        uint16_t *out = (uint16_t *)a->grad + i * V;
        if (sc != 0.0f && w) {
            #pragma omp simd
            for (int64_t v = 0; v < V; v++) out[v] = to_bf16(k * e[v] - sc * w[v]);
        } else if (sc != 0.0f) {
            #pragma omp simd
            for (int64_t v = 0; v < V; v++) out[v] = to_bf16(k * e[v] - sc);
        } else {
            #pragma omp simd
            for (int64_t v = 0; v < V; v++) out[v] = to_bf16(k * e[v]);
        }
        out[y] = to_bf16(k * e[y] - (sc != 0.0f ? sc * (w ? w[y] : 1.0f) : 0.0f) - tc);
        return;
    }
    for (int64_t off = 0; off < V; off += BLK) {
        const int64_t len = min64(BLK, V - off);
        float *g = e + off;
        if (sc != 0.0f && w) {
            #pragma omp simd
            for (int64_t j = 0; j < len; j++) g[j] = k * g[j] - sc * w[off + j];
        } else if (sc != 0.0f) {
            #pragma omp simd
            for (int64_t j = 0; j < len; j++) g[j] = k * g[j] - sc;
        } else {
            #pragma omp simd
            for (int64_t j = 0; j < len; j++) g[j] *= k;
        }
        if (y >= off && y < off + len) g[y - off] -= tc;
        if (dtype != F32) narrow((char *)a->grad + (i * V + off) * ITEMSIZE[dtype], len, g, dtype);
    }
}

/* Row i with probability targets, the logits' and the targets' dtypes constants: the same
   passes, with q in place of the target's one-hot. */
static inline __attribute__((always_inline)) void prob_row_as(const ce_rows_args *a,
                                                               int64_t i, float *buf,
                                                               float *tbuf, float *ebuf,
                                                               int dtype, int tdtype) {
    const int64_t V = a->V;
    const float *w = a->wclass;
    const float keep = a->keep, add = a->add;
    const void *row = (const char *)a->z + i * V * ITEMSIZE[dtype];
    const void *trow = (const char *)a->t + i * V * ITEMSIZE[tdtype];
    float qbuf[BLK];

    /* pass 1: max (NaN-propagating), sum_v q_v, sum_v q_v z_v */
    float m = -INFINITY;
    int nan = 0;
    double qs = 0.0, qz = 0.0;
    for (int64_t off = 0; off < V; off += BLK) {
        const int64_t len = min64(BLK, V - off);
        BLOCK_SOURCE(row, off, len, buf, dtype, src, base, kind)
        BLOCK_SOURCE(trow, off, len, tbuf, tdtype, tsrc, tbase, tkind)
        raise_max(src, base, kind, len, &m, &nan);
        double sum_q = 0.0, dot = 0.0; /* long float sums of like terms drift (each rounds alike) */
        /* q first, into qbuf: formed inside the sums' loop it keeps them from vectorising */
        if (w) {
            #pragma omp simd
            for (int64_t j = 0; j < len; j++)
                qbuf[j] = (load(tsrc, tbase + j, tkind) * keep + add) * w[off + j];
        } else {
            #pragma omp simd
            for (int64_t j = 0; j < len; j++) qbuf[j] = load(tsrc, tbase + j, tkind) * keep + add;
        }
        for (int64_t j0 = 0; j0 < len; j0 += 64) { /* float within 64 terms, then double */
            const int64_t j1 = min64(j0 + 64, len);
            float part_q = 0.0f, part_dot = 0.0f;
            #pragma omp simd reduction(+ : part_q, part_dot)
            for (int64_t j = j0; j < j1; j++) {
                const float qz = qbuf[j] * load(src, base + j, kind);
                part_q += qbuf[j];
                part_dot += qbuf[j] != 0.0f ? qz : 0.0f;
            }
            sum_q += part_q;
            dot += part_dot;
        }
        qs += sum_q;
        qz += dot;
    }
    if (nan) m = NAN;

    /* pass 2 */
    float *e = !a->grad ? NULL : dtype == F32 ? (float *)a->grad + i * V : ebuf;
    const double s = sum_pass(a, i, row, m, e, buf, dtype);
    const float log_s = (float)log(s);
    a->row_max[i] = m;
    a->log_sum[i] = log_s;
    a->q_sum[i] = (float)qs;
    a->q_dot_z[i] = (float)qz;
    if (!e) return;

    /* pass 3: g = scale ((q_sum + 2 z_loss lse) p - q) */
    const float sc = a->pcoef ? a->pcoef[i] : a->pcoef_all;
    const float lse = m + log_s;
    const float coef = a->zl2 != 0.0f ? (float)qs + a->zl2 * lse : (float)qs;
    const float k = coef * sc * (float)(1.0 / s);
    for (int64_t off = 0; off < V; off += BLK) {
        const int64_t len = min64(BLK, V - off);
        BLOCK_SOURCE(trow, off, len, tbuf, tdtype, tsrc, tbase, tkind)
        float *g = e + off;
        if (w) {
            #pragma omp simd
            for (int64_t j = 0; j < len; j++)
                g[j] = k * g[j] - sc * ((load(tsrc, tbase + j, tkind) * keep + add) * w[off + j]);
        } else {
            #pragma omp simd
            for (int64_t j = 0; j < len; j++)
                g[j] = k * g[j] - sc * (load(tsrc, tbase + j, tkind) * keep + add);
        }
        if (dtype != F32) narrow((char *)a->grad + (i * V + off) * ITEMSIZE[dtype], len, g, dtype);
    }
}

/* Row i: one specialised copy of row_as (of prob_row_as) per dtype (pair of dtypes). */
static void one_row(const ce_rows_args *a, int64_t i, float *buf, float *tbuf, float *ebuf) {
    if (a->t) {
        const int same = a->tdtype == a->dtype;
        switch (a->dtype) {
        case F32: prob_row_as(a, i, buf, tbuf, ebuf, F32, F32); break;
        case BF16:
            if (same) prob_row_as(a, i, buf, tbuf, ebuf, BF16, BF16);
            else prob_row_as(a, i, buf, tbuf, ebuf, BF16, F32);
            break;
        default:
            if (same) prob_row_as(a, i, buf, tbuf, ebuf, F16, F16);
            else prob_row_as(a, i, buf, tbuf, ebuf, F16, F32);
            break;
        }
        return;
    }
    switch (a->dtype) {
    case F32: row_as(a, i, buf, ebuf, F32); break;
    case BF16: row_as(a, i, buf, ebuf, BF16); break;
    default: row_as(a, i, buf, ebuf, F16); break;
    }
}

/* Positions [s0, s0 + w) of row b of a block (n, V, S), w <= COLS, each a row of its own
   whose classes lie S apart (an image's classes at its pixels): the same three passes,
   vectorised across the positions, with per-position max, sum and target. float16 is
   widened through buf; the exponentials are kept in the gradient for float32 and taken
   again in pass 3 for half types. */
#define COLS 256

static inline __attribute__((always_inline)) void cols_as(const ce_rows_args *a, int64_t b,
                                                           int64_t s0, int64_t w, float *buf,
                                                           int dtype) {
    const int64_t V = a->V, S = a->S, r0 = b * S + s0, item = ITEMSIZE[dtype];
    const float *wc = a->wclass;
    const int smoothing = a->w_dot_z != NULL;
    const char *block = (const char *)a->z + b * V * S * item;
    float m[COLS], zy[COLS], k[COLS], sc[COLS], tc[COLS], g[COLS];
    double sum[COLS], wz[COLS];
    int64_t yy[COLS];
    int bad[COLS];
    for (int64_t i = 0; i < w; i++) {
        m[i] = -INFINITY;
        zy[i] = 0.0f;
        sum[i] = 0.0;
        wz[i] = 0.0;
        yy[i] = a->y[r0 + i];
        bad[i] = 0;
    }
    /* pass 1 */
    for (int64_t v = 0; v < V; v++) {
        BLOCK_SOURCE(block + v * S * item, s0, w, buf, dtype, src, base, kind)
        #pragma omp simd
        for (int64_t i = 0; i < w; i++) {
            const float x = load(src, base + i, kind);
            m[i] = x > m[i] ? x : m[i];
            bad[i] |= x != x;
            zy[i] = yy[i] == v ? x : zy[i];
        }
        if (smoothing) {
            const float wv = wc ? wc[v] : 1.0f;
            #pragma omp simd
            for (int64_t i = 0; i < w; i++) wz[i] += wv * load(src, base + i, kind);
        }
    }
    for (int64_t i = 0; i < w; i++)
        if (bad[i]) m[i] = NAN;
    /* pass 2 */
    float *e = a->grad && dtype == F32 ? (float *)a->grad + b * V * S + s0 : NULL;
    for (int64_t v = 0; v < V; v++) {
        BLOCK_SOURCE(block + v * S * item, s0, w, buf, dtype, src, base, kind)
        if (e) {
            float *ev = e + v * S;
            #pragma omp simd
            for (int64_t i = 0; i < w; i++) {
                const float x = expf(load(src, base + i, kind) - m[i]);
                ev[i] = x;
                sum[i] += x;
            }
        } else {
            #pragma omp simd
            for (int64_t i = 0; i < w; i++) sum[i] += expf(load(src, base + i, kind) - m[i]);
        }
    }
    for (int64_t i = 0; i < w; i++) {
        const int64_t r = r0 + i;
        const float log_s = (float)log(sum[i]);
        a->row_max[r] = m[i];
        a->log_sum[r] = log_s;
        a->z_target[r] = zy[i];
        if (smoothing) a->w_dot_z[r] = (float)wz[i];
        if (!a->grad) continue;
        const float pc = a->pcoef ? a->pcoef[r] : a->pcoef_all;
        const float zc = a->zcoef ? a->zcoef[r] : a->zcoef_all;
        const float lse = m[i] + log_s;
        k[i] = (zc != 0.0f ? pc + zc * lse : pc) * (float)(1.0 / sum[i]);
        tc[i] = a->tcoef ? a->tcoef[r] : a->tcoef_all;
        sc[i] = a->scoef ? a->scoef[r] : a->scoef_all;
    }
    if (!a->grad) return;
    /* pass 3 */
    for (int64_t v = 0; v < V; v++) {
        const float wv = wc ? wc[v] : 1.0f;
        if (e) {
            float *gv = e + v * S;
            #pragma omp simd
            for (int64_t i = 0; i < w; i++) {
                const float x = k[i] * gv[i] - sc[i] * wv;
                gv[i] = yy[i] == v ? x - tc[i] : x;
            }
            continue;
        }
        BLOCK_SOURCE(block + v * S * item, s0, w, buf, dtype, src, base, kind)
        #pragma omp simd
        for (int64_t i = 0; i < w; i++)
            g[i] = k[i] * expf(load(src, base + i, kind) - m[i]) - sc[i] * wv;
        #pragma omp simd /* apart: the call above vectorises only without the compare */
        for (int64_t i = 0; i < w; i++) g[i] = yy[i] == v ? g[i] - tc[i] : g[i];
        narrow((char *)a->grad + ((b * V + v) * S + s0) * item, w, g, dtype);
    }
}

static void some_cols(const ce_rows_args *a, int64_t b, int64_t s0, int64_t w, float *buf) {
    switch (a->dtype) {
    case F32: cols_as(a, b, s0, w, buf, F32); break;
    case BF16: cols_as(a, b, s0, w, buf, BF16); break;
    default: cols_as(a, b, s0, w, buf, F16); break;
    }
}

/* Every position of a block (n, V, S), S > 1, in tiles of COLS positions. Returns as
   ce_rows, the first bad target counted in (n, S) order. */
static int64_t ce_positions(const ce_rows_args *a) {
    const int64_t n = a->n, V = a->V, S = a->S, per_row = (S + COLS - 1) / COLS;
    int64_t first_bad = n * S;
    #pragma omp parallel if (n * V * S >= 16384)
    {
        float buf[COLS];
        #pragma omp for schedule(static) reduction(min : first_bad)
        for (int64_t t = 0; t < n * per_row; t++) {
            const int64_t b = t / per_row, s0 = (t % per_row) * COLS, w = min64(COLS, S - s0);
            int ok = 1;
            for (int64_t i = 0; i < w; i++) {
                const int64_t y = a->y[b * S + s0 + i];
                if (y < 0 || y >= V) {
                    first_bad = min64(first_bad, b * S + s0 + i);
                    ok = 0;
                }
            }
            if (ok) some_cols(a, b, s0, w, buf);
        }
    }
    return first_bad < n * S ? first_bad : -1;
}

/* Every row of the block (each position of each row where S > 1). Returns -1; or the
   first row whose target is not in [0, V)
   (that row's results are left unwritten; the caller raises); or -2 when out of memory. Rows go to the OpenMP
   threads in even shares, unless the block is small enough that waking them would cost
   more than its work. */
int64_t ce_rows(const ce_rows_args *a) {
    if (a->S != 1) return ce_positions(a);
    const int64_t n = a->n;
    int64_t first_bad = n;
    int failed = 0;
    #pragma omp parallel if (n > 1 && n * a->V >= 16384) reduction(| : failed)
    {
        float buf[BLK], tbuf[BLK];
        /* a half-precision row's exponentials, kept between passes 2 and 3 */
        float *ebuf = a->grad && a->dtype != F32 ? malloc((size_t)a->V * sizeof(float)) : NULL;
        failed = a->grad && a->dtype != F32 && !ebuf;
        #pragma omp for schedule(static) reduction(min : first_bad)
        for (int64_t i = 0; i < n; i++) {
            if (failed) continue;
            if (!a->t && (a->y[i] < 0 || a->y[i] >= a->V)) {
                first_bad = i < first_bad ? i : first_bad;
                continue;
            }
            one_row(a, i, buf, tbuf, ebuf);
        }
        free(ebuf);
    }
    if (failed) return -2;
    return first_bad < n ? first_bad : -1;
}
