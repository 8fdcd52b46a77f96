/* The Kullback-Leibler and Jensen-Shannon terms of a block of rows, summed per row, for
 * the blocked path of crossentropy.info (``_native.py`` loads it; ``_blocked.py`` calls it
 * one task's rows at a time, from its thread pool).
 *
 * The terms are those of crossentropy.info._measures, formed in float64 whatever the
 * inputs' dtype (float64 or float32, each row of p and q read in place; a row stride of 0
 * repeats one row against many):
 *
 *   KL:  p log(p / q), 0 where p = 0; where q / 2 <= p <= 2 q the log is
 *        log1p((p - q) / q), whose p - q is exact (Sterbenz), so that a small divergence
 *        keeps its digits; where p / q overflows (q subnormal) it is log p - log q;
 *   JS:  p log1p(d) + q log1p(-d) with d = (p - q) / (p + q), each 0 where its p (or q)
 *        is 0, and the log of the ratio 2p / (p + q) (or 2q / (p + q)) where d < -1/2
 *        (or d > 1/2), whose log1p would lose digits to the rounding of d; in nats,
 *        twice the divergence (the caller scales).
 *
 * Each row is one vectorised loop (log, log2 and log1p from glibc's libmvec where
 * declared below), summed in float64 across the lanes. A row where p / q overflows is
 * formed again by the scalar loop that takes log p - log q there. Compiled with
 * -ffp-contract=off: no product is fused into a sum, as NumPy's own loops round.
 *
 * Every function returns 0, or 1 where an entry of p or q is negative or NaN (the caller
 * then raises the detailed error); the row sums for the check that rows add to 1 are the
 * caller's, in the inputs' own dtype as its full check takes them.
 */
#include <math.h>
#include <stdint.h>

#ifdef CE_LIBMVEC
#pragma omp declare simd notinbranch
extern double log(double);
#pragma omp declare simd notinbranch
extern double log2(double);
#pragma omp declare simd notinbranch
extern double log1p(double);
#endif

/* Entries per block of a row: the block's ratios and logs stay in the first-level cache. */
#define BLK 512

/* Each row goes in blocks of BLK entries, in three loops a block: one forms the
   arguments of the logs (ratios and steps, with the checks), one takes the logs (calls
   alone: a select beside a call keeps GCC from vectorising a loop), one selects and sums
   the terms. */

/* One KL row: the sum of its terms into *out; 1 if an entry is negative or NaN, 2 if
   p / q overflowed somewhere (the row is then formed again by kl_row_overflow). */
#define KL_ROW(NAME, T, FAR_LOG)                                                               \
    static int NAME(const T *p, const T *q, int64_t n, double scale, double *out) {             \
        double ratio[BLK], step[BLK], acc = 0.0;                                               \
        int bad = 0, over = 0;                                                                 \
        for (int64_t off = 0; off < n; off += BLK) {                                           \
            const int64_t len = n - off < BLK ? n - off : BLK;                                 \
            const T *pb = p + off, *qb = q + off;                                              \
            _Pragma("omp simd reduction(| : bad, over)")                                       \
            for (int64_t j = 0; j < len; j++) {                                                \
                const double pj = pb[j], qj = qb[j];                                           \
                bad |= !(pj >= 0.0) | !(qj >= 0.0);                                            \
                const int present = pj > 0.0;                                                  \
                const double ps = present ? pj : 1.0, qs = present ? qj : 1.0;                 \
                ratio[j] = ps / qs;                                                            \
                step[j] = (ps - qs) / qs; /* used where q / 2 <= p <= 2 q only */              \
                over |= (ratio[j] == INFINITY) & (qs > 0.0);                                   \
            }                                                                                  \
            _Pragma("omp simd")                                                                \
            for (int64_t j = 0; j < len; j++) {                                                \
                ratio[j] = FAR_LOG(ratio[j]);                                                  \
                step[j] = log1p(step[j]) * scale;                                              \
            }                                                                                  \
            _Pragma("omp simd reduction(+ : acc)")                                             \
            for (int64_t j = 0; j < len; j++) {                                                \
                const double pj = pb[j], qj = qb[j];                                           \
                const int near = (qj <= pj * 2.0) & (pj <= qj * 2.0);                          \
                const double term = pj * (near ? step[j] : ratio[j]);                          \
                acc += pj > 0.0 ? term : 0.0;                                                  \
            }                                                                                  \
        }                                                                                      \
        *out = acc;                                                                            \
        return bad ? 1 : (over ? 2 : 0);                                                       \
    }

/* log_b of a ratio on the far branch: log2 for bits, else log times 1 / ln b. */
#define LOG2(x) log2(x)
#define LOG_SCALED(x) (log(x) * scale)
static inline double far_log(double x, int bits, double scale) {
    return bits ? log2(x) : log(x) * scale;
}

/* A KL row with an overflowing ratio, one entry at a time (rare: q subnormal beside p). */
#define KL_ROW_OVERFLOW(NAME, T)                                                               \
    static double NAME(const T *p, const T *q, int64_t n, int bits, double scale) {            \
        double acc = 0.0;                                                                      \
        for (int64_t j = 0; j < n; j++) {                                                      \
            double pj = p[j], qj = q[j];                                                       \
            if (!(pj > 0.0))                                                                   \
                continue;                                                                      \
            double ratio = pj / qj, lr;                                                        \
            if ((qj <= pj * 2.0) && (pj <= qj * 2.0))                                          \
                lr = log1p((pj - qj) / qj) * scale;                                            \
            else if (ratio == INFINITY && qj > 0.0)                                            \
                lr = far_log(pj, bits, scale) - far_log(qj, bits, scale);                      \
            else                                                                               \
                lr = far_log(ratio, bits, scale);                                              \
            acc += pj * lr;                                                                    \
        }                                                                                      \
        return acc;                                                                            \
    }

/* One JS row: the sum of p log(2p / (p + q)) + q log(2q / (p + q)) in nats into *out. */
#define JS_ROW(NAME, T)                                                                        \
    static int NAME(const T *p, const T *q, int64_t n, double *out) {                          \
        double ratio[BLK], d_p[BLK], d_q[BLK], log_p[BLK], log_q[BLK], acc = 0.0;              \
        int bad = 0;                                                                           \
        for (int64_t off = 0; off < n; off += BLK) {                                           \
            const int64_t len = n - off < BLK ? n - off : BLK;                                 \
            const T *pb = p + off, *qb = q + off;                                              \
            _Pragma("omp simd reduction(| : bad)")                                             \
            for (int64_t j = 0; j < len; j++) {                                                \
                const double pj = pb[j], qj = qb[j];                                           \
                bad |= !(pj >= 0.0) | !(qj >= 0.0);                                            \
                const int has_p = pj > 0.0, has_q = qj > 0.0;                                  \
                const double total = (has_p | has_q) ? pj + qj : 1.0;                          \
                const double d = (pj - qj) / total;                                            \
                const double dp = has_p ? d : 0.0, dq = has_q ? 0.0 - d : 0.0;                 \
                /* 2x / (p + q) for the far one of p and q (never both), else 1 */            \
                const double x = dp < -0.5 ? pj : (dq < -0.5 ? qj : 0.5 * total);              \
                ratio[j] = (x * 2.0) / total;                                                  \
                d_p[j] = dp;                                                                   \
                d_q[j] = dq;                                                                   \
            }                                                                                  \
            _Pragma("omp simd")                                                                \
            for (int64_t j = 0; j < len; j++) {                                                \
                ratio[j] = log(ratio[j]);                                                      \
                log_p[j] = log1p(d_p[j]);                                                      \
                log_q[j] = log1p(d_q[j]);                                                      \
            }                                                                                  \
            _Pragma("omp simd reduction(+ : acc)")                                             \
            for (int64_t j = 0; j < len; j++) {                                                \
                const double pj = pb[j], qj = qb[j];                                           \
                const double lp = d_p[j] < -0.5 ? ratio[j] : log_p[j];                         \
                const double lq = d_q[j] < -0.5 ? ratio[j] : log_q[j];                         \
                acc += (pj > 0.0 ? pj * lp : 0.0) + (qj > 0.0 ? qj * lq : 0.0);                \
            }                                                                                  \
        }                                                                                      \
        *out = acc;                                                                            \
        return bad;                                                                            \
    }

KL_ROW(kl_row_f64_bits, double, LOG2)
KL_ROW(kl_row_f64, double, LOG_SCALED)
KL_ROW(kl_row_f32_bits, float, LOG2)
KL_ROW(kl_row_f32, float, LOG_SCALED)
KL_ROW_OVERFLOW(kl_row_overflow_f64, double)
KL_ROW_OVERFLOW(kl_row_overflow_f32, float)
JS_ROW(js_row_f64, double)
JS_ROW(js_row_f32, float)

/* Row i of one dtype's arrays: the kernel of kind (and base), then the scalar loop where
   p / q overflowed. Sets status. */
#define ROW(T, SUFFIX)                                                                         \
    do {                                                                                       \
        const T *pi = (const T *)p + i * p_step, *qi = (const T *)q + i * q_step;              \
        if (kind == 1)                                                                         \
            status = js_row_##SUFFIX(pi, qi, n, out + i);                                      \
        else                                                                                   \
            status = bits ? kl_row_##SUFFIX##_bits(pi, qi, n, scale, out + i)                  \
                          : kl_row_##SUFFIX(pi, qi, n, scale, out + i);                        \
        if (status == 2)                                                                       \
            out[i] = kl_row_overflow_##SUFFIX(pi, qi, n, bits, scale);                         \
    } while (0)

/* rows rows of n entries: p's row i at p + i * p_step (p_step 0: one row against many),
   q's likewise; the sums into out[0 .. rows). kind 0 is KL (in units of the base: bits
   when bits is set, else natural logs times scale), kind 1 is JS (in nats, twice the
   divergence). f32 selects float32 inputs, else float64. */
int ce_divergence_rows(int kind, int f32, const void *p, int64_t p_step, const void *q,
                       int64_t q_step, int64_t rows, int64_t n, int bits, double scale,
                       double *out) {
    for (int64_t i = 0; i < rows; i++) {
        int status;
        if (f32)
            ROW(float, f32);
        else
            ROW(double, f64);
        if (status == 1)
            return 1;
    }
    return 0;
}
