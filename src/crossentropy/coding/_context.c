/* The context model (crossentropy.coding._context), compiled: its decoder, and the
 * probabilities its encoder hands to the range coder.
 *
 * Decoding is sequential: each bit's probability depends on every bit decoded before it.
 * ctx_decode runs the same loop as the module's Python decoder, with the same arithmetic,
 * so that it yields the same bytes from the same payload:
 *
 *   - the model: per order j, the slot of (context, node) is base_j ^ spread_j[node];
 *     p = 1/2, then p = (ones + alpha_j p) / (seen + alpha_j) for each order, lowest
 *     first, in float64, with no fused multiply-add (compiled with -ffp-contract=off);
 *     after the bit, every order's slot counts it;
 *   - the range decoder: constriction's queue decoder with 32-bit words and a 64-bit
 *     state, and its Bernoulli model built with perfect=False: a 24-bit cumulative
 *     table [0, c1, 2^24] with c1 = trunc((1 - p) * ((2^24 - 2) / ((1 - p) + p))) + 1.
 *
 * ctx_probabilities runs the model alone over known bytes: the probabilities NumPy's
 * vectorised encoder forms, bit for bit, in one sequential pass.
 *
 * Python checks the payload's parameters, allocates the tables, and calls these on
 * stretches of bytes (for its progress reports); the state carries over between calls.
 * Before the first use a self-check compares both with NumPy's probabilities and
 * constriction's encoder, so that a range coder of another quantisation is never trusted.
 */
#include <stdint.h>

#define MAX_ORDERS 8
#define PRECISION 24

typedef struct {
    /* the compressed words and the range decoder's state */
    const uint32_t *words;
    int64_t num_words;
    int64_t next_word;
    uint64_t lower, range, point;
    /* the model */
    int64_t num_orders;
    int64_t exact[MAX_ORDERS];       /* 1 where (context, node) indexes the table as is */
    uint64_t context_mask[MAX_ORDERS];
    double alpha[MAX_ORDERS];
    const uint32_t *spread[MAX_ORDERS]; /* 256 entries each */
    uint32_t *counts[MAX_ORDERS];    /* per slot: times seen, then times a 1 */
    int64_t hash_shift;              /* 64 - (table bits - 3) */
    uint64_t history, history_mask;
} ctx_model;

static const uint64_t MULTIPLIER = 0x9E3779B97F4A7C15ULL;

/* Loads the first two words (fewer if the payload is shorter), as constriction does. */
void ctx_start(ctx_model *d) {
    uint64_t point = 0;
    int64_t read = 0;
    while (read < 2 && d->next_word < d->num_words) {
        point = (point << 32) | d->words[d->next_word++];
        read++;
    }
    if (read == 1) point <<= 32;
    d->point = point;
    d->lower = 0;
    d->range = UINT64_MAX;
}

/* One bit with probability p of a 1; returns 0 or 1, or -1 for data no encoder wrote. */
static inline int decode_bit(ctx_model *d, double p) {
    const double q = 1.0 - p;
    const double sum = q + p; /* 1, or 1 less an ulp */
    const double free_weight = (double)((1u << PRECISION) - 2);
    const double left = q * (sum == 1.0 ? free_weight : free_weight / sum);
    const uint64_t c1 = (left >= 4294967295.0 ? 4294967295u : (uint64_t)left) + 1;
    const uint64_t scale = d->range >> PRECISION;
    /* quantile = (point - lower) / scale, compared without dividing: quantile >= k
       exactly when point - lower >= k * scale */
    const uint64_t offset = d->point - d->lower;
    if (offset >= scale << PRECISION) return -1;
    int bit;
    if (offset >= scale * c1) {
        bit = 1;
        d->lower += scale * c1;
        d->range = scale * ((1ULL << PRECISION) - c1);
    } else {
        bit = 0;
        d->range = scale * c1;
    }
    if (d->range < (1ULL << 32)) {
        d->lower <<= 32;
        d->range <<= 32;
        d->point <<= 32;
        if (d->next_word < d->num_words) d->point |= d->words[d->next_word++];
    }
    return bit;
}

/* Decodes `count` bytes into out; returns 0, or -1 where the data are invalid. */
int ctx_decode(ctx_model *d, uint8_t *out, int64_t count) {
    const int64_t orders = d->num_orders;
    uint64_t base[MAX_ORDERS];
    for (int64_t i = 0; i < count; i++) {
        for (int64_t k = 0; k < orders; k++) {
            const uint64_t context = d->history & d->context_mask[k];
            base[k] = d->exact[k] ? context << 8
                                  : ((context * MULTIPLIER) >> d->hash_shift) << 3;
        }
        uint32_t node = 1;
        while (node < 256) {
            uint64_t slot[MAX_ORDERS];
            double p = 0.5;
            for (int64_t k = 0; k < orders; k++) {
                slot[k] = base[k] ^ d->spread[k][node];
                const double a = d->alpha[k];
                const uint32_t *c = d->counts[k] + 2 * slot[k];
                p = ((double)c[1] + a * p) / ((double)c[0] + a);
            }
            const int bit = decode_bit(d, p);
            if (bit < 0) return -1;
            for (int64_t k = 0; k < orders; k++) {
                uint32_t *c = d->counts[k] + 2 * slot[k];
                c[0] += 1;
                c[1] += (uint32_t)bit;
            }
            node = 2 * node + (uint32_t)bit;
        }
        const uint64_t byte = node - 256;
        out[i] = (uint8_t)byte;
        d->history = ((d->history << 8) | byte) & d->history_mask;
    }
    return 0;
}

/* The model's probability of a 1 for each of the 8 * count bits of data (most significant
   bit first), the counts kept as the decoder keeps them: what the encoder hands to the
   range coder. Each byte's slots are known before its first bit, so all are fetched at
   once. */
void ctx_probabilities(ctx_model *d, const uint8_t *data, int64_t count, double *p_out) {
    const int64_t orders = d->num_orders;
    for (int64_t i = 0; i < count; i++) {
        const uint32_t byte = data[i];
        uint64_t base[MAX_ORDERS];
        for (int64_t k = 0; k < orders; k++) {
            const uint64_t context = d->history & d->context_mask[k];
            base[k] = d->exact[k] ? context << 8
                                  : ((context * MULTIPLIER) >> d->hash_shift) << 3;
            for (int level = 0; level < 8; level++) {
                const uint32_t node = (byte >> (8 - level)) | (1u << level);
                __builtin_prefetch(&d->counts[k][2 * (base[k] ^ d->spread[k][node])], 1);
            }
        }
        for (int level = 0; level < 8; level++) {
            const uint32_t node = (byte >> (8 - level)) | (1u << level);
            const uint32_t bit = (byte >> (7 - level)) & 1u;
            double p = 0.5;
            for (int64_t k = 0; k < orders; k++) {
                uint32_t *c = d->counts[k] + 2 * (base[k] ^ d->spread[k][node]);
                const double a = d->alpha[k];
                p = ((double)c[1] + a * p) / ((double)c[0] + a);
                c[0] += 1;
                c[1] += bit;
            }
            p_out[8 * i + level] = p;
        }
        d->history = ((d->history << 8) | byte) & d->history_mask;
    }
}
