/* Fused CPU kernel of epdo.nn.functional.adaptive_pdo, forward and backward.
 *
 * Compiled at first use by epdo.nn.native (once per scalar type: -DREAL=float or -DREAL=double) and cached.
 *
 * Layouts (C-contiguous):
 *   x, out, grad_x              (B, q, g, d, H, W)   q partitions of g fields of d channels
 *   coef, grad_coef             (B, g, d, n, H, W)   n operator coefficients per channel (generator output)
 *   stencil                     (n, k*k)             derivative stencils, already multiplied by the coefficient scale
 *
 *   taps[j, c, t](x) = sum_a coef[j, c, a](x) stencil[a, t]                       (composed per pixel, never stored)
 *   nu[j](x)         = rms: sqrt(sum_{c, t} taps^2 / d) + eps      l1: sum_{c, t} |taps| + eps
 *   out[p, j, c](x)  = sum_t taps[j, c, t](x) x[p, j, c](x + offset_t) / nu[j](x)      (zero padding)
 *
 * Work: one item is one (batch, field) pair; it owns the channels (all p, that field, all c) of out, grad_x and
 * grad_coef, so items never write the same memory.  An item walks its image in blocks of whole rows; the taps of a
 * block (d * k*k * block pixels) live in a per-thread scratch buffer.  Within a block every loop runs over the
 * block's pixels as one flat, contiguous range: tap (u, v) reads x at flat offset (u - r) W + (v - r), and the
 * pixels where that offset wraps around a row edge get a zero tap ("edge masking"), which is exactly zero padding
 * (a read above or below the image falls outside the flat range and is skipped).  The norm nu uses the unmasked
 * taps.  The backward recomputes the taps instead of storing them and reads the forward's output.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifndef REAL
#error "compile with -DREAL=float or -DREAL=double"
#endif
typedef REAL real;

#ifndef BLOCK_PIXELS
#define BLOCK_PIXELS 256 /* target pixels per block: the block's taps stay in L2 */
#endif

typedef struct {
    int64_t batch, parts, fields, dim, ops, size, height, width;
} shape_t;

/* The stencil's nonzero entries, grouped by tap: nonzeros of tap t are entries first[t] .. first[t + 1] - 1. */
typedef struct {
    int *first, *op;
    real *value;
} sparse_t;

static int sparse_init(sparse_t *s, const real *stencil, int64_t ops, int64_t taps) {
    s->first = malloc((size_t)(taps + 1) * sizeof(int));
    s->op = malloc((size_t)(ops * taps) * sizeof(int));
    s->value = malloc((size_t)(ops * taps) * sizeof(real));
    if (!s->first || !s->op || !s->value) return -1;
    int count = 0;
    for (int64_t t = 0; t < taps; t++) {
        s->first[t] = count;
        for (int64_t a = 0; a < ops; a++) {
            real v = stencil[a * taps + t];
            if (v != 0) {
                s->op[count] = (int)a;
                s->value[count] = v;
                count++;
            }
        }
    }
    s->first[taps] = count;
    return 0;
}

static void sparse_free(sparse_t *s) {
    free(s->first);
    free(s->op);
    free(s->value);
}

/* Inner loops: restrict parameters let the compiler vectorize them. */
static inline void add_scaled(int64_t m, real v, const real *restrict src, real *restrict dst) {
    for (int64_t i = 0; i < m; i++) dst[i] += v * src[i];
}

static inline void multiply_add(int64_t lo, int64_t hi, const real *restrict a, const real *restrict b,
                                real *restrict dst) {
    for (int64_t i = lo; i < hi; i++) dst[i] += a[i] * b[i];
}

/* The backward's per-tap work: the tap's gradient and (scattered) the input's gradient in one pass. */
static inline void tap_backward(int64_t lo, int64_t hi, const real *restrict tap, const real *restrict xs,
                                const real *restrict grad_raw, real *restrict grad_tap, real *restrict grad_xs) {
    for (int64_t i = lo; i < hi; i++) {
        grad_tap[i] += grad_raw[i] * xs[i];
        grad_xs[i] += grad_raw[i] * tap[i];
    }
}

/* A block: rows [h0, h0 + rows) of one item, pixels [begin, begin + count) of the flat image. */
typedef struct {
    int64_t h0, rows, begin, count;
} block_t;

static int64_t block_rows(const shape_t *sh) {
    int64_t rows = BLOCK_PIXELS / sh->width;
    return rows < 1 ? 1 : rows;
}

static block_t block_at(const shape_t *sh, int64_t h0) {
    const int64_t rows = block_rows(sh) < sh->height - h0 ? block_rows(sh) : sh->height - h0;
    block_t bl = {h0, rows, h0 * sh->width, rows * sh->width};
    return bl;
}

/* taps (d, k*k, count) of a block; coef points at the item's (d, n, H, W) coefficients. */
static void compose(const shape_t *sh, const sparse_t *st, const real *coef, block_t bl, real *taps) {
    const int64_t plane = sh->height * sh->width, kk = sh->size * sh->size, m = bl.count;
    for (int64_t c = 0; c < sh->dim; c++) {
        const real *a_c = coef + c * sh->ops * plane + bl.begin;
        for (int64_t t = 0; t < kk; t++) {
            real *dst = taps + (c * kk + t) * m;
            memset(dst, 0, (size_t)m * sizeof(real));
            for (int e = st->first[t]; e < st->first[t + 1]; e++) add_scaled(m, st->value[e], a_c + st->op[e] * plane, dst);
        }
    }
}

/* norm[i] = nu(i) - eps and inv[i] = 1 / nu(i) of a block's (unmasked) taps. */
static void normalize(const shape_t *sh, int l1, real eps, block_t bl, real *taps, real *restrict norm,
                      real *restrict inv) {
    const int64_t n = sh->dim * sh->size * sh->size, m = bl.count;
    memset(norm, 0, (size_t)m * sizeof(real));
    for (int64_t e = 0; e < n; e++) {
        const real *restrict tp = taps + e * m;
        if (l1)
            for (int64_t i = 0; i < m; i++) norm[i] += fabs(tp[i]);
        else
            for (int64_t i = 0; i < m; i++) norm[i] += tp[i] * tp[i];
    }
    for (int64_t i = 0; i < m; i++) {
        if (!l1) norm[i] = sqrt(norm[i] / (real)sh->dim);
        inv[i] = 1 / (norm[i] + eps);
    }
}

/* Columns [lo, hi) of a row whose tap column v reads outside the row (none for v = r). */
static inline void masked_columns(const shape_t *sh, int64_t v, int64_t *lo, int64_t *hi) {
    const int64_t W = sh->width, r = sh->size / 2;
    *lo = v <= r ? 0 : W - (v - r);
    *hi = v <= r ? r - v : W;
    *lo = *lo < 0 ? 0 : *lo;
    *hi = *hi > W ? W : *hi;
}

/* Zeroes the masked columns of tap column v in one block row of values (count entries). */
static void mask_columns(const shape_t *sh, block_t bl, real *values, int64_t v) {
    int64_t lo, hi;
    masked_columns(sh, v, &lo, &hi);
    for (int64_t row = 0; row < bl.rows; row++)
        for (int64_t w = lo; w < hi; w++) values[row * sh->width + w] = 0;
}

/* Edge masking of channel c's taps (k*k rows) in a block: the entries whose column offset leaves the row.
 * mode 0: move them into saved (and zero them); 1: zero them; 2: move them back from saved. */
static void mask_edges(const shape_t *sh, block_t bl, real *taps, int64_t c, real *restrict saved, int mode) {
    const int64_t k = sh->size, kk = k * k;
    int64_t n = 0;
    for (int64_t t = 0; t < kk; t++) {
        real *tp = taps + (c * kk + t) * bl.count;
        int64_t lo, hi;
        masked_columns(sh, t % k, &lo, &hi);
        if (mode == 1) {
            mask_columns(sh, bl, tp, t % k);
            continue;
        }
        for (int64_t row = 0; row < bl.rows; row++)
            for (int64_t w = lo; w < hi; w++, n++) {
                real *entry = tp + row * sh->width + w;
                if (mode == 0) saved[n] = *entry;
                *entry = mode == 2 ? saved[n] : 0;
            }
    }
}

/* Flat range [lo, hi) of block pixels i whose tap offset `offset` reads inside the image. */
static inline void tap_range(const shape_t *sh, block_t bl, int64_t offset, int64_t *lo, int64_t *hi) {
    const int64_t plane = sh->height * sh->width;
    *lo = -offset - bl.begin > 0 ? -offset - bl.begin : 0;
    *hi = plane - offset - bl.begin < bl.count ? plane - offset - bl.begin : bl.count;
}

static inline int64_t tap_offset(const shape_t *sh, int64_t t) {
    const int64_t k = sh->size, r = k / 2;
    return (t / k - r) * sh->width + (t % k - r);
}

/* Runs item(b, j) for every (batch, field) pair on `threads` threads; -1 when a scratch buffer cannot be had. */
static int run_items(const shape_t *sh, int threads, size_t scratch_reals,
                     void (*item)(const shape_t *, const void *, int64_t, int64_t, real *), const void *args) {
    const int64_t items = sh->batch * sh->fields;
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        real *scratch = malloc(scratch_reals * sizeof(real));
        failed = scratch == NULL;
#pragma omp for schedule(static)
        for (int64_t i = 0; i < items; i++)
            if (scratch) item(sh, args, i / sh->fields, i % sh->fields, scratch);
        free(scratch);
    }
    return failed ? -1 : 0;
}

typedef struct {
    const real *x, *coef, *grad_out;
    real *out, *grad_x, *grad_coef;
    const sparse_t *stencil;
    int l1;
    real eps;
} args_t;

static void forward_item(const shape_t *sh, const void *raw, int64_t b, int64_t j, real *scratch) {
    const args_t *args = raw;
    const int64_t W = sh->width, H = sh->height, plane = H * W, kk = sh->size * sh->size, d = sh->dim;
    const int64_t mmax = block_rows(sh) * W;
    real *taps = scratch, *norm = taps + d * kk * mmax, *inv = norm + mmax, *acc = inv + mmax;
    const real *coef = args->coef + (b * sh->fields + j) * d * sh->ops * plane;
    for (int64_t h0 = 0; h0 < H; h0 += block_rows(sh)) {
        const block_t bl = block_at(sh, h0);
        const int64_t m = bl.count;
        compose(sh, args->stencil, coef, bl, taps);
        normalize(sh, args->l1, args->eps, bl, taps, norm, inv);
        for (int64_t c = 0; c < d; c++) mask_edges(sh, bl, taps, c, NULL, 1);
        for (int64_t c = 0; c < d; c++) /* channel-major: the channel's taps stay in L1 across partitions */
            for (int64_t p = 0; p < sh->parts; p++) {
                const int64_t at = (((b * sh->parts + p) * sh->fields + j) * d + c) * plane + bl.begin;
                memset(acc, 0, (size_t)m * sizeof(real));
                for (int64_t t = 0; t < kk; t++) {
                    const int64_t offset = tap_offset(sh, t);
                    int64_t lo, hi;
                    tap_range(sh, bl, offset, &lo, &hi);
                    multiply_add(lo, hi, taps + (c * kk + t) * m, args->x + at + offset, acc);
                }
                real *restrict o = args->out + at;
                for (int64_t i = 0; i < m; i++) o[i] = acc[i] * inv[i];
            }
    }
}

static void backward_item(const shape_t *sh, const void *raw, int64_t b, int64_t j, real *scratch) {
    const args_t *args = raw;
    const int64_t W = sh->width, H = sh->height, plane = H * W, k = sh->size, kk = k * k, d = sh->dim;
    const int64_t n = sh->ops, mmax = block_rows(sh) * W;
    real *taps = scratch, *grad_taps = taps + d * kk * mmax, *norm = grad_taps + kk * mmax, *inv = norm + mmax;
    real *grad_nu = inv + mmax, *grad_raw = grad_nu + mmax, *saved = grad_raw + mmax;
    const sparse_t *st = args->stencil;
    const real *coef = args->coef + (b * sh->fields + j) * d * n * plane;
    real *grad_coef = args->grad_coef + (b * sh->fields + j) * d * n * plane;
    for (int64_t p = 0; p < sh->parts; p++)
        memset(args->grad_x + ((b * sh->parts + p) * sh->fields + j) * d * plane, 0, (size_t)(d * plane) * sizeof(real));
    for (int64_t h0 = 0; h0 < H; h0 += block_rows(sh)) {
        const block_t bl = block_at(sh, h0);
        const int64_t m = bl.count;
        compose(sh, st, coef, bl, taps);
        normalize(sh, args->l1, args->eps, bl, taps, norm, inv);
        /* d loss / d nu = -sum_{p, c} G out / nu, times d nu / d taps: rms taps / (d (nu - eps)), l1 sign(taps) */
        memset(grad_nu, 0, (size_t)m * sizeof(real));
        for (int64_t p = 0; p < sh->parts; p++)
            for (int64_t c = 0; c < d; c++) {
                const int64_t at = (((b * sh->parts + p) * sh->fields + j) * d + c) * plane + bl.begin;
                multiply_add(0, m, args->grad_out + at, args->out + at, grad_nu);
            }
        for (int64_t i = 0; i < m; i++) {
            grad_nu[i] *= -inv[i];
            if (!args->l1) grad_nu[i] /= (real)d * (norm[i] > (real)1e-30 ? norm[i] : (real)1e-30);
        }
        for (int64_t c = 0; c < d; c++) { /* channel by channel: its taps and their gradient stay in L1 */
            mask_edges(sh, bl, taps, c, saved, 0);
            memset(grad_taps, 0, (size_t)(kk * m) * sizeof(real));
            for (int64_t p = 0; p < sh->parts; p++) {
                const int64_t at = (((b * sh->parts + p) * sh->fields + j) * d + c) * plane + bl.begin;
                const real *restrict go = args->grad_out + at;
                for (int64_t i = 0; i < m; i++) grad_raw[i] = go[i] * inv[i];
                for (int64_t t = 0; t < kk; t++) {
                    const int64_t offset = tap_offset(sh, t);
                    int64_t lo, hi;
                    tap_range(sh, bl, offset, &lo, &hi);
                    tap_backward(lo, hi, taps + (c * kk + t) * m, args->x + at + offset, grad_raw, grad_taps + t * m,
                                 args->grad_x + at + offset);
                }
            }
            for (int64_t t = 0; t < kk; t++) /* wrapped reads: no gradient through the data term */
                mask_columns(sh, bl, grad_taps + t * m, t % k);
            mask_edges(sh, bl, taps, c, saved, 2); /* the norm term uses the unmasked taps */
            for (int64_t t = 0; t < kk; t++) {
                const real *restrict tp = taps + (c * kk + t) * m;
                real *restrict gt = grad_taps + t * m;
                if (args->l1)
                    for (int64_t i = 0; i < m; i++) gt[i] += (real)((tp[i] > 0) - (tp[i] < 0)) * grad_nu[i];
                else
                    for (int64_t i = 0; i < m; i++) gt[i] += tp[i] * grad_nu[i];
            }
            /* grad_coef[c, a] = sum_t stencil[a, t] grad_taps[t] */
            real *gc = grad_coef + c * n * plane + bl.begin;
            for (int64_t a = 0; a < n; a++) memset(gc + a * plane, 0, (size_t)m * sizeof(real));
            for (int64_t t = 0; t < kk; t++)
                for (int e = st->first[t]; e < st->first[t + 1]; e++)
                    add_scaled(m, st->value[e], grad_taps + t * m, gc + st->op[e] * plane);
        }
    }
}

static shape_t make_shape(const int64_t *dims) {
    shape_t sh = {dims[0], dims[1], dims[2], dims[3], dims[4], dims[5], dims[6], dims[7]};
    return sh;
}

static int run(const int64_t *dims, const real *stencil, args_t *args, int threads, int backward) {
    shape_t sh = make_shape(dims);
    sparse_t st;
    int status = -1;
    if (!sparse_init(&st, stencil, sh.ops, sh.size * sh.size)) {
        const int64_t kk = sh.size * sh.size, m = block_rows(&sh) * sh.width, taps = sh.dim * kk * m;
        args->stencil = &st;
        if (backward) /* taps, one channel's grad_taps, 4 pixel rows, one channel's saved edges (< k*k a pixel) */
            status = run_items(&sh, threads, (size_t)(taps + kk * m + 4 * m + kk * m), backward_item, args);
        else /* taps, 3 pixel rows */
            status = run_items(&sh, threads, (size_t)(taps + 3 * m), forward_item, args);
    }
    sparse_free(&st);
    return status;
}

/* dims: batch, parts, fields, dim, ops, size, height, width.  Both return 0, or -1 when out of memory. */
int epdo_adaptive_pdo_forward(const real *x, const real *coef, const real *stencil, real *out, const int64_t *dims,
                              int l1, double eps, int threads) {
    args_t args = {x, coef, NULL, out, NULL, NULL, NULL, l1, (real)eps};
    return run(dims, stencil, &args, threads, 0);
}

int epdo_adaptive_pdo_backward(const real *x, const real *coef, const real *stencil, const real *out,
                               const real *grad_out, real *grad_x, real *grad_coef, const int64_t *dims, int l1,
                               double eps, int threads) {
    args_t args = {x, coef, grad_out, (real *)out, grad_x, grad_coef, NULL, l1, (real)eps};
    return run(dims, stencil, &args, threads, 1);
}
