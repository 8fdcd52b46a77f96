/* One chunk of the fused linear cross-entropy on the CPU, for class-index targets.
 *
 * For c token rows h (c, D) of a head W (V, D) the chunk forms the logits, their
 * softmax statistics, the gradient of the loss with respect to the logits, and the
 * products of that gradient with W and h, without ever copying a block of logits:
 *
 *   sweep 1, per block of `block` vocabulary rows:
 *     zT[v, :] = W[v, :] . h^T (+ bias[v])          (one sgemm into the chunk's buffer)
 *     per row i: the target logit, sum_v w_v z_vi, the running max m_i, and the block
 *     overwritten by e = exp(z - m_i), added to the running sum (rescaled as m_i grows)
 *   sweep 2, per block:
 *     g = (a_i + zc_i lse_i) exp(m_i - lse_i) e - sc_i w_v - tc_i [v == y_i]  (in place,
 *     with the m_i that block's e were taken against: one exponential per logit in all)
 *     dW[block] (+)= g . h                            (sgemm, accumulated in place)
 *     dbias[block] += sum over rows of g
 *   then dh = g^T . W                                 (one sgemm)
 *
 * Sweep 1 is ce_stats, sweep 2 and the products after it ce_grads: a head split by
 * vocabulary across ranks combines the rows' statistics between the two calls.
 *
 * The logits are stored vocabulary-major, zT (V, c): each block's product is then a
 * plain row-major product whose output rows are contiguous, which runs at the product
 * engine's full rate, and the statistics of a block are taken while it is still in cache.
 * The products go to oneDNN's `dnnl_sgemm` (row-major BLAS-like interface), handed in
 * as a function pointer so that this file needs no oneDNN headers. The elementwise
 * sweeps split the rows (columns of zT) evenly over the OpenMP threads.
 *
 * Semantics (the loss and its gradient) are those of crossentropy.losses._kernel;
 * the per-row coefficients a_i, zc_i, tc_i, sc_i come from there, already scaled.
 */
#include <math.h>
#include <omp.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

typedef int (*sgemm_fn)(char transa, char transb, int64_t M, int64_t N, int64_t K, float alpha,
                        const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
                        float *C, int64_t ldc);

/* glibc's libmvec has vector versions of expf (16-wide on AVX-512): declaring them lets
   the loops below vectorise. Compiled without CE_LIBMVEC, the loops call expf per element. */
#ifdef CE_LIBMVEC
#pragma omp declare simd notinbranch
extern float expf(float);
#endif

typedef struct {
    sgemm_fn sgemm;
    int64_t c, D, V, block;
    const float *h;      /* (c, D) */
    const float *hT;     /* (D, c), the transpose of h */
    const float *W;      /* (V, D) */
    const float *bias;   /* (V) or NULL */
    const float *wclass; /* (V) class weights or NULL */
    const int64_t *y;    /* (c) class indices in [0, V) */
    float *zT;           /* (V, c) scratch: the logits, then their gradient */
    /* per-row results (c) */
    float *row_max;      /* m_i */
    float *log_sum;      /* log sum_v exp(z_vi - m_i) */
    float *z_target;     /* z_{y_i, i} */
    float *w_dot_z;      /* sum_v w_v z_vi (or sum_v z_vi without weights), or NULL */
    /* gradient coefficients (c), or pcoef NULL for no gradient */
    const float *pcoef;  /* a_i */
    const float *zcoef;  /* zc_i, or NULL for none */
    const float *tcoef;  /* tc_i */
    const float *scoef;  /* sc_i, or NULL for no smoothing term */
    float *dh;           /* (c, D) or NULL */
    float *dW;           /* (V, D) or NULL */
    int dW_first;        /* write dW instead of adding to it */
    float *dbias;        /* (V) or NULL: added to */
    float *ref;          /* (blocks, c) scratch: each block's max per row, from ce_stats */
    const float *lse;    /* (c) the rows' log-sum-exp, for ce_grads */
} ce_chunk_args;

#define TILE 64

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* The columns [*lo, *hi) of c that this OpenMP thread sweeps: an even split in multiples
   of 16 (one AVX-512 vector), so that both threads of a 158-column chunk get work. */
static void my_columns(int64_t c, int64_t *lo, int64_t *hi) {
    const int64_t threads = omp_get_num_threads(), me = omp_get_thread_num();
    const int64_t per = ((c + threads - 1) / threads + 15) / 16 * 16;
    *lo = min64(me * per, c);
    *hi = min64(*lo + per, c);
}

/* Sweep 1 on block k, the rows [v0, v0 + n) of zT, per column i:
   - adds the bias, reads the target logit and sum_v w_v z_vi;
   - raises the running max m_i to the block's, rescaling the running sum to it;
   - overwrites the block by e = exp(z - m_i) and adds it to the running sum.
   ref[i] keeps the m_i that block's e were taken against (sweep 2 needs it). A column
   whose max is still -inf (every logit so far masked) gets e = 0, not exp(-inf + inf). */
static void stats_block(const ce_chunk_args *a, int64_t v0, int64_t n, double *sum,
                        double *wz, float *ref) {
    const int64_t c = a->c;
    float *z = a->zT + v0 * c;
    #pragma omp parallel
    {
        int64_t lo, hi;
        my_columns(c, &lo, &hi);
        for (int64_t t0 = lo; t0 < hi; t0 += TILE) {
            const int64_t w = min64(TILE, hi - t0);
            float bmax[TILE], acc[TILE], m[TILE];
            double dot[TILE];
            for (int64_t i = 0; i < w; i++) {
                bmax[i] = -INFINITY;
                acc[i] = 0.0f;
                dot[i] = 0.0;
            }
            for (int64_t v = 0; v < n; v++) {
                float *row = z + v * c + t0;
                const float b = a->bias ? a->bias[v0 + v] : 0.0f;
                #pragma omp simd
                for (int64_t i = 0; i < w; i++) {
                    const float x = row[i] + b;
                    row[i] = x;
                    bmax[i] = x > bmax[i] ? x : bmax[i];
                }
                if (wz) {
                    const float wv = a->wclass ? a->wclass[v0 + v] : 1.0f;
                    for (int64_t i = 0; i < w; i++) dot[i] += wv * row[i];
                }
            }
            for (int64_t i = 0; i < w; i++) {
                const int64_t col = t0 + i, v = a->y[col] - v0;
                if (v >= 0 && v < n) a->z_target[col] = z[v * c + col];
                const float old = a->row_max[col];
                const float top = bmax[i] > old ? bmax[i] : old;
                /* rescale the sum so far to the new max (no terms yet while old is -inf) */
                if (old != top && old != -INFINITY) sum[col] *= exp((double)old - (double)top);
                a->row_max[col] = top;
                m[i] = top == -INFINITY ? INFINITY : top; /* z - m is then -inf, e = 0 */
                ref[col] = top;
                if (wz) wz[col] += dot[i];
            }
            for (int64_t v = 0; v < n; v++) {
                float *row = z + v * c + t0;
                #pragma omp simd
                for (int64_t i = 0; i < w; i++) {
                    const float e = expf(row[i] - m[i]);
                    row[i] = e;
                    acc[i] += e;
                }
            }
            for (int64_t i = 0; i < w; i++) sum[t0 + i] += acc[i];
        }
    }
}

/* Sweep 2 on block k: its e become the gradient, in place:
   g = coef_i * exp(ref_i - lse_i) * e - sc_i * w_v - tc_i [v == y_i]. */
static void grad_block(const ce_chunk_args *a, int64_t v0, int64_t n, const float *lse,
                       const float *coef, const float *ref) {
    const int64_t c = a->c;
    float *z = a->zT + v0 * c;
    #pragma omp parallel
    {
        int64_t lo, hi;
        my_columns(c, &lo, &hi);
        for (int64_t t0 = lo; t0 < hi; t0 += TILE) {
            const int64_t w = min64(TILE, hi - t0);
            float k[TILE];
            for (int64_t i = 0; i < w; i++) {
                const float r = ref[t0 + i];
                k[i] = r == -INFINITY ? 0.0f : coef[t0 + i] * (float)exp((double)r - lse[t0 + i]);
            }
            const float *s = a->scoef ? a->scoef + t0 : NULL;
            for (int64_t v = 0; v < n; v++) {
                float *row = z + v * c + t0;
                if (s) {
                    const float wv = a->wclass ? a->wclass[v0 + v] : 1.0f;
                    #pragma omp simd
                    for (int64_t i = 0; i < w; i++) row[i] = k[i] * row[i] - s[i] * wv;
                } else {
                    #pragma omp simd
                    for (int64_t i = 0; i < w; i++) row[i] = k[i] * row[i];
                }
            }
        }
    }
    for (int64_t i = 0; i < c; i++) {
        const int64_t v = a->y[i] - v0;
        if (v >= 0 && v < n) z[v * c + i] -= a->tcoef[i];
    }
    if (a->dbias) {
        #pragma omp parallel for schedule(static)
        for (int64_t v = 0; v < n; v++) {
            const float *row = z + v * c;
            double total = 0.0;
            for (int64_t i = 0; i < c; i++) total += row[i];
            a->dbias[v0 + v] += (float)total;
        }
    }
}

/* Sweep 1 over the chunk's V rows: the logits and the rows' statistics against this
   call's own max (row_max, log_sum = log sum_v exp(z - row_max), z_target, which stays 0
   for a row whose target is not among the V rows, and w_dot_z). A vocabulary-parallel
   caller combines them across ranks before ce_grads. Returns 0, a nonzero oneDNN status,
   or -1 when out of memory. */
int ce_stats(const ce_chunk_args *a) {
    const int64_t c = a->c, D = a->D, V = a->V;
    int status = 0;
    double *sum = calloc((size_t)c, sizeof(double));
    double *wz = a->w_dot_z ? calloc((size_t)c, sizeof(double)) : NULL;
    if (!sum || (a->w_dot_z && !wz)) {
        status = -1;
        goto done;
    }
    for (int64_t i = 0; i < c; i++) {
        a->row_max[i] = -INFINITY;
        a->z_target[i] = 0.0f;
    }
    for (int64_t v0 = 0, k = 0; v0 < V; v0 += a->block, k++) {
        const int64_t n = min64(a->block, V - v0);
        status = a->sgemm('N', 'N', n, c, D, 1.0f, a->W + v0 * D, D, a->hT, c, 0.0f,
                          a->zT + v0 * c, c);
        if (status) goto done;
        stats_block(a, v0, n, sum, wz, a->ref + k * c);
    }
    for (int64_t i = 0; i < c; i++) {
        a->log_sum[i] = (float)log(sum[i]);
        if (wz) a->w_dot_z[i] = (float)wz[i];
    }
done:
    free(sum);
    free(wz);
    return status;
}

/* Sweep 2, after ce_stats on the same chunk: the gradient in place against the rows'
   log-sum-exp lse (over the whole vocabulary), then the weight, bias and hidden
   gradients of the chunk's V rows. Returns as ce_stats. */
int ce_grads(const ce_chunk_args *a) {
    const int64_t c = a->c, D = a->D, V = a->V;
    int status = 0;
    float *coef = malloc((size_t)c * sizeof(float));
    if (!coef) return -1;
    for (int64_t i = 0; i < c; i++)
        coef[i] = a->pcoef[i] + (a->zcoef ? a->zcoef[i] * a->lse[i] : 0.0f);
    for (int64_t v0 = 0, k = 0; v0 < V; v0 += a->block, k++) {
        const int64_t n = min64(a->block, V - v0);
        grad_block(a, v0, n, a->lse, coef, a->ref + k * c);
        if (a->dW) {
            status = a->sgemm('N', 'N', n, D, c, 1.0f, a->zT + v0 * c, c, a->h, D,
                              a->dW_first ? 0.0f : 1.0f, a->dW + v0 * D, D);
            if (status) goto done;
        }
    }
    if (a->dh) status = a->sgemm('T', 'N', c, D, V, 1.0f, a->zT, c, a->W, D, 0.0f, a->dh, D);
done:
    free(coef);
    return status;
}
