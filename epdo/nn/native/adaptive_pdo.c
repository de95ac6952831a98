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

/* The stencil (n, k*k) as a sparse matrix whose rows are grouped: by tap (group t holds the entries of column t,
 * index = operator) for composing taps, or by operator (group a holds row a, index = tap) for the coefficients'
 * gradient.  Entries of group g: first[g] .. first[g + 1] - 1. */
typedef struct {
    int groups, *first, *index;
    real *value;
} sparse_t;

static int sparse_init(sparse_t *s, const real *stencil, int64_t ops, int64_t taps, int by_tap) {
    s->groups = (int)(by_tap ? taps : ops);
    s->first = malloc((size_t)(s->groups + 1) * sizeof(int));
    s->index = malloc((size_t)(ops * taps) * sizeof(int));
    s->value = malloc((size_t)(ops * taps) * sizeof(real));
    if (!s->first || !s->index || !s->value) return -1;
    const int64_t inner = by_tap ? ops : taps;
    int count = 0;
    for (int g = 0; g < s->groups; g++) {
        s->first[g] = count;
        for (int64_t e = 0; e < inner; e++) {
            const real v = by_tap ? stencil[e * taps + g] : stencil[g * taps + e];
            if (v != 0) {
                s->index[count] = (int)e;
                s->value[count++] = v;
            }
        }
    }
    s->first[s->groups] = count;
    return 0;
}

static void sparse_free(sparse_t *s) {
    free(s->first);
    free(s->index);
    free(s->value);
}

/* Inner loops: restrict parameters let the compiler vectorize them. */
static inline void multiply_add(int64_t lo, int64_t hi, const real *restrict a, const real *restrict b,
                                real *restrict dst) {
    for (int64_t i = lo; i < hi; i++) dst[i] += a[i] * b[i];
}

/* Register blocking with the compiler's vector extensions (GCC, Clang): one vector of pixels, up to PART_BLOCK
 * partitions' accumulators kept in registers across all taps, so that each tap is loaded once per vector. */
#if defined(__AVX512F__)
#define VECTOR_BYTES 64
#elif defined(__AVX__)
#define VECTOR_BYTES 32
#else
#define VECTOR_BYTES 16
#endif
#define LANES ((int64_t)(VECTOR_BYTES / sizeof(real)))
#define PART_BLOCK 4
typedef real vec_t __attribute__((vector_size(VECTOR_BYTES)));
typedef real unaligned_vec_t __attribute__((vector_size(VECTOR_BYTES), aligned(sizeof(real)), may_alias));

static inline vec_t load(const real *p) { return *(const unaligned_vec_t *)p; }
static inline void store(real *p, vec_t v) { *(unaligned_vec_t *)p = v; }

/* out[p][i] = inv[i] sum_t tap_t[i] x[p][i + offsets[t]] for p < parts (<= PART_BLOCK) and the whole vectors in
 * [lo, hi), where every tap reads inside the image; tap rows are `stride` apart. */
static void apply_vectors(int64_t lo, int64_t hi, int64_t kk, const real *taps, int64_t stride, const int64_t *offsets,
                          const real *const *x, int parts, const real *inv, real *const *out) {
    for (int64_t i = lo; i + LANES <= hi; i += LANES) {
        vec_t acc[PART_BLOCK];
        for (int p = 0; p < PART_BLOCK; p++) acc[p] = (vec_t){0};
        for (int64_t t = 0; t < kk; t++) {
            const vec_t tap = load(taps + t * stride + i);
            for (int p = 0; p < PART_BLOCK; p++)
                if (p < parts) acc[p] += tap * load(x[p] + offsets[t] + i);
        }
        const vec_t scale = load(inv + i);
        for (int p = 0; p < parts; p++) store(out[p] + i, acc[p] * scale);
    }
}

/* grad_taps[t][i] += sum_p grad_raw[p][i] x[p][i + offsets[t]] for p < parts (<= PART_BLOCK) and the whole vectors
 * in [lo, hi), where every tap reads inside the image; grad_taps rows have length m. */
static void tap_gradient_vectors(int64_t lo, int64_t hi, int64_t kk, real *grad_taps, int64_t m,
                                 const int64_t *offsets, const real *const *x, int parts, const real *const *grad_raw) {
    for (int64_t i = lo; i + LANES <= hi; i += LANES) {
        vec_t g[PART_BLOCK];
        for (int p = 0; p < parts; p++) g[p] = load(grad_raw[p] + i);
        for (int64_t t = 0; t < kk; t++) {
            vec_t sum = (vec_t){0};
            for (int p = 0; p < PART_BLOCK; p++)
                if (p < parts) sum += g[p] * load(x[p] + offsets[t] + i);
            store(grad_taps + t * m + i, load(grad_taps + t * m + i) + sum);
        }
    }
}

/* out[g][i] = sum_{e in group g} value[e] in[index[e]][i] for i in [0, m): rows of `in` are in_stride apart, rows of
 * `out` out_stride apart.  Vectorized over pixels: one load per term, one store per output row. */
static void sparse_rows(const sparse_t *s, int64_t m, const real *in, int64_t in_stride, real *out, int64_t out_stride) {
    int64_t i = 0;
    for (; i + LANES <= m; i += LANES)
        for (int g = 0; g < s->groups; g++) {
            vec_t acc = (vec_t){0};
            for (int e = s->first[g]; e < s->first[g + 1]; e++) acc += s->value[e] * load(in + s->index[e] * in_stride + i);
            store(out + g * out_stride + i, acc);
        }
    for (; i < m; i++)
        for (int g = 0; g < s->groups; g++) {
            real acc = 0;
            for (int e = s->first[g]; e < s->first[g + 1]; e++) acc += s->value[e] * in[s->index[e] * in_stride + i];
            out[g * out_stride + i] = acc;
        }
}

/* A block: `rows` whole rows of one item, pixels [begin, begin + count) of the flat image.  Scratch rows of block
 * pixels that are read shifted (taps, grad_raw) are `stride` apart, with `pad` = 2r zeros before and after the data. */
typedef struct {
    int64_t rows, begin, count, stride, pad;
} block_t;

/* About BLOCK_PIXELS pixels, a whole number of vectors where some row count allows it. */
static int64_t block_rows(const shape_t *sh) {
    const int64_t most = BLOCK_PIXELS / sh->width < 1 ? 1 : BLOCK_PIXELS / sh->width;
    for (int64_t rows = most; rows > 0; rows--)
        if (rows * sh->width % LANES == 0) return rows;
    return most;
}

static block_t block_at(const shape_t *sh, int64_t h0) {
    const int64_t rows = block_rows(sh) < sh->height - h0 ? block_rows(sh) : sh->height - h0;
    const int64_t pad = 2 * (sh->size / 2);
    block_t bl = {rows, h0 * sh->width, rows * sh->width, block_rows(sh) * sh->width + 2 * pad, pad};
    return bl;
}

/* taps (d, k*k, count) of a block, padded rows; coef points at the item's (d, n, H, W) coefficients.  Zeroes the
 * pad after each row too (a shorter last block leaves older data there). */
static void compose(const shape_t *sh, const sparse_t *by_tap, const real *coef, block_t bl, real *taps) {
    const int64_t plane = sh->height * sh->width, kk = sh->size * sh->size;
    for (int64_t c = 0; c < sh->dim; c++)
        sparse_rows(by_tap, bl.count, coef + c * sh->ops * plane + bl.begin, plane, taps + c * kk * bl.stride, bl.stride);
    for (int64_t e = 0; e < sh->dim * kk; e++) memset(taps + e * bl.stride + bl.count, 0, (size_t)bl.pad * sizeof(real));
}

/* norm[i] = nu(i) - eps and inv[i] = 1 / nu(i) of a block's (unmasked) taps. */
static void normalize(const shape_t *sh, int l1, real eps, block_t bl, real *taps, real *restrict norm,
                      real *restrict inv) {
    const int64_t n = sh->dim * sh->size * sh->size, m = bl.count;
    memset(norm, 0, (size_t)m * sizeof(real));
    for (int64_t e = 0; e < n; e++) {
        const real *restrict tp = taps + e * bl.stride;
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
        real *tp = taps + (c * kk + t) * bl.stride;
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

/* A block's tap geometry: flat offsets and valid ranges [lo[t], hi[t]) of every tap, and [inner_lo, vectors_hi):
 * whole vectors where every tap reads inside the image.  The three arrays are the first 3 k*k int64 of scratch. */
typedef struct {
    int64_t *offset, *lo, *hi, inner_lo, vectors_hi;
} geometry_t;

static geometry_t block_geometry(const shape_t *sh, block_t bl, real *scratch) {
    const int64_t kk = sh->size * sh->size;
    geometry_t g = {(int64_t *)scratch, (int64_t *)scratch + kk, (int64_t *)scratch + 2 * kk, 0, bl.count};
    int64_t inner_hi = bl.count;
    for (int64_t t = 0; t < kk; t++) {
        g.offset[t] = tap_offset(sh, t);
        tap_range(sh, bl, g.offset[t], &g.lo[t], &g.hi[t]);
        g.inner_lo = g.lo[t] > g.inner_lo ? g.lo[t] : g.inner_lo;
        inner_hi = g.hi[t] < inner_hi ? g.hi[t] : inner_hi;
    }
    g.inner_lo = g.inner_lo < bl.count ? g.inner_lo : bl.count; /* images lower than the stencil */
    g.vectors_hi = inner_hi > g.inner_lo ? g.inner_lo + (inner_hi - g.inner_lo) / LANES * LANES : g.inner_lo;
    return g;
}

/* Reals of scratch that block_geometry's int64 arrays take. */
#define GEOMETRY_REALS(kk) (3 * (kk) * (int64_t)((sizeof(int64_t) + sizeof(real) - 1) / sizeof(real)))

/* The part of tap t's valid range inside [from, to), as [*lo, *hi) (empty when *lo >= *hi). */
static inline void clip_to_tap(const geometry_t *g, int64_t t, int64_t from, int64_t to, int64_t *lo, int64_t *hi) {
    *lo = g->lo[t] > from ? g->lo[t] : from;
    *hi = g->hi[t] < to ? g->hi[t] : to;
}

/* Runs item(b, j) for every (batch, field) pair on `threads` threads; -1 when a scratch buffer cannot be had. */
static int run_items(const shape_t *sh, int threads, size_t scratch_reals,
                     void (*item)(const shape_t *, const void *, int64_t, int64_t, real *), const void *args) {
    const int64_t items = sh->batch * sh->fields;
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        real *scratch = calloc(scratch_reals, sizeof(real)); /* zeros: the pads of padded rows */
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
    const sparse_t *by_tap, *by_op;
    int l1;
    real eps;
} args_t;

/* Starts the block at row h0 of an item: its geometry (into the head of scratch), its taps and their norms. */
static block_t begin_block(const shape_t *sh, const args_t *args, const real *coef, int64_t h0, real *scratch,
                           real *taps, real *norm, real *inv, geometry_t *geo) {
    const block_t bl = block_at(sh, h0);
    *geo = block_geometry(sh, bl, scratch);
    compose(sh, args->by_tap, coef, bl, taps);
    normalize(sh, args->l1, args->eps, bl, taps, norm, inv);
    return bl;
}

static void forward_item(const shape_t *sh, const void *raw, int64_t b, int64_t j, real *scratch) {
    const args_t *args = raw;
    const int64_t W = sh->width, H = sh->height, plane = H * W, kk = sh->size * sh->size, d = sh->dim;
    const int64_t mmax = block_rows(sh) * W;
    const int64_t stride = block_at(sh, 0).stride, pad = block_at(sh, 0).pad;
    real *taps = scratch + GEOMETRY_REALS(kk) + pad, *norm = taps - pad + d * kk * stride, *inv = norm + mmax;
    real *acc = inv + mmax;
    const real *coef = args->coef + (b * sh->fields + j) * d * sh->ops * plane;
    for (int64_t h0 = 0; h0 < H; h0 += block_rows(sh)) {
        geometry_t geo;
        const block_t bl = begin_block(sh, args, coef, h0, scratch, taps, norm, inv, &geo);
        const int64_t m = bl.count;
        for (int64_t c = 0; c < d; c++) mask_edges(sh, bl, taps, c, NULL, 1);
        for (int64_t c = 0; c < d; c++) { /* channel-major: the channel's taps stay in L1 across partitions */
            const real *tc = taps + c * kk * bl.stride;
            for (int64_t p0 = 0; p0 < sh->parts; p0 += PART_BLOCK) {
                const real *x[PART_BLOCK];
                real *out[PART_BLOCK];
                const int parts = (int)(sh->parts - p0 < PART_BLOCK ? sh->parts - p0 : PART_BLOCK);
                for (int p = 0; p < parts; p++) {
                    const int64_t at = (((b * sh->parts + p0 + p) * sh->fields + j) * d + c) * plane + bl.begin;
                    x[p] = args->x + at;
                    out[p] = args->out + at;
                }
                apply_vectors(geo.inner_lo, geo.vectors_hi, kk, tc, bl.stride, geo.offset, x, parts, inv, out);
                for (int p = 0; p < parts; p++) /* the pixels left: [0, inner_lo) and [vectors_hi, m) */
                    for (int side = 0; side < 2; side++) {
                        const int64_t from = side ? geo.vectors_hi : 0, to = side ? m : geo.inner_lo;
                        if (from >= to) continue;
                        memset(acc + from, 0, (size_t)(to - from) * sizeof(real));
                        for (int64_t t = 0; t < kk; t++) {
                            int64_t l, h;
                            clip_to_tap(&geo, t, from, to, &l, &h);
                            multiply_add(l, h, tc + t * bl.stride, x[p] + geo.offset[t], acc);
                        }
                        for (int64_t i = from; i < to; i++) out[p][i] = acc[i] * inv[i];
                    }
            }
        }
    }
}

/* The input gradient of one channel in a block, for p < parts (<= PART_BLOCK): every product grad_raw[p][i] tap_t[i]
 * goes to grad_x[p][i + offset_t].  Computed as a gather per row offset u: acc[j] = sum_v (grad_raw tap_(u, v))[j - (v - r)]
 * for j in [-r, m + r), then grad_x[p][j + (u - r) W] += acc[j] where that lies in the image, so that every
 * destination vector is loaded and stored once per u.  grad_raw and tap rows are padded (zeros outside the block). */
static void gather_input_gradient(const shape_t *sh, block_t bl, const real *taps, const real *const *grad_raw, int parts,
                                  real *const *grad_x) {
    const int64_t W = sh->width, k = sh->size, r = k / 2, plane = sh->height * W, m = bl.count;
    for (int64_t u = 0; u < k; u++) {
        const int64_t shift = (u - r) * W, lo = -r > -shift - bl.begin ? -r : -shift - bl.begin;
        const int64_t hi = m + r < plane - shift - bl.begin ? m + r : plane - shift - bl.begin;
        const real *row = taps + u * k * bl.stride; /* tap (u, 0) */
        int64_t j = lo;
        for (; j + LANES <= hi; j += LANES) {
            vec_t acc[PART_BLOCK];
            for (int p = 0; p < PART_BLOCK; p++) acc[p] = (vec_t){0};
            for (int64_t v = 0; v < k; v++) {
                const vec_t tap = load(row + v * bl.stride + j - (v - r));
                for (int p = 0; p < PART_BLOCK; p++)
                    if (p < parts) acc[p] += tap * load(grad_raw[p] + j - (v - r));
            }
            for (int p = 0; p < parts; p++) store(grad_x[p] + shift + j, load(grad_x[p] + shift + j) + acc[p]);
        }
        for (; j < hi; j++)
            for (int p = 0; p < parts; p++)
                for (int64_t v = 0; v < k; v++)
                    grad_x[p][shift + j] += row[v * bl.stride + j - (v - r)] * grad_raw[p][j - (v - r)];
    }
}

static void backward_item(const shape_t *sh, const void *raw, int64_t b, int64_t j, real *scratch) {
    const args_t *args = raw;
    const int64_t W = sh->width, H = sh->height, plane = H * W, k = sh->size, kk = k * k, d = sh->dim;
    const int64_t n = sh->ops, mmax = block_rows(sh) * W;
    const int64_t stride = block_at(sh, 0).stride, pad = block_at(sh, 0).pad;
    real *taps = scratch + GEOMETRY_REALS(kk) + pad, *grad_taps = taps - pad + d * kk * stride;
    real *norm = grad_taps + kk * mmax, *inv = norm + mmax, *grad_nu = inv + mmax, *grad_raw = grad_nu + mmax + pad;
    real *saved = grad_raw - pad + PART_BLOCK * stride;
    const real *coef = args->coef + (b * sh->fields + j) * d * n * plane;
    real *grad_coef = args->grad_coef + (b * sh->fields + j) * d * n * plane;
    for (int64_t p = 0; p < sh->parts; p++)
        memset(args->grad_x + ((b * sh->parts + p) * sh->fields + j) * d * plane, 0, (size_t)(d * plane) * sizeof(real));
    for (int64_t h0 = 0; h0 < H; h0 += block_rows(sh)) {
        geometry_t geo;
        const block_t bl = begin_block(sh, args, coef, h0, scratch, taps, norm, inv, &geo);
        const int64_t m = bl.count;
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
            const real *tc = taps + c * kk * bl.stride;
            mask_edges(sh, bl, taps, c, saved, 0);
            memset(grad_taps, 0, (size_t)(kk * m) * sizeof(real));
            for (int64_t p0 = 0; p0 < sh->parts; p0 += PART_BLOCK) {
                const real *x[PART_BLOCK], *gr[PART_BLOCK];
                real *gx[PART_BLOCK];
                const int parts = (int)(sh->parts - p0 < PART_BLOCK ? sh->parts - p0 : PART_BLOCK);
                for (int p = 0; p < parts; p++) {
                    const int64_t at = (((b * sh->parts + p0 + p) * sh->fields + j) * d + c) * plane + bl.begin;
                    real *g = grad_raw + p * stride;
                    const real *restrict go = args->grad_out + at;
                    for (int64_t i = 0; i < m; i++) g[i] = go[i] * inv[i];
                    memset(g + m, 0, (size_t)pad * sizeof(real));
                    x[p] = args->x + at;
                    gr[p] = g;
                    gx[p] = args->grad_x + at;
                }
                tap_gradient_vectors(geo.inner_lo, geo.vectors_hi, kk, grad_taps, m, geo.offset, x, parts, gr);
                for (int p = 0; p < parts; p++) {
                    for (int side = 0; side < 2; side++) { /* tap gradient, the pixels left */
                        const int64_t from = side ? geo.vectors_hi : 0, to = side ? m : geo.inner_lo;
                        for (int64_t t = 0; t < kk && from < to; t++) {
                            int64_t l, h;
                            clip_to_tap(&geo, t, from, to, &l, &h);
                            multiply_add(l, h, gr[p], x[p] + geo.offset[t], grad_taps + t * m);
                        }
                    }
                }
                gather_input_gradient(sh, bl, tc, gr, parts, gx);
            }
            for (int64_t t = 0; t < kk; t++) /* wrapped reads: no gradient through the data term */
                mask_columns(sh, bl, grad_taps + t * m, t % k);
            mask_edges(sh, bl, taps, c, saved, 2); /* the norm term uses the unmasked taps */
            for (int64_t t = 0; t < kk; t++) {
                const real *restrict tp = tc + t * bl.stride;
                real *restrict gt = grad_taps + t * m;
                if (args->l1)
                    for (int64_t i = 0; i < m; i++) gt[i] += (real)((tp[i] > 0) - (tp[i] < 0)) * grad_nu[i];
                else
                    for (int64_t i = 0; i < m; i++) gt[i] += tp[i] * grad_nu[i];
            }
            /* grad_coef[c, a] = sum_t stencil[a, t] grad_taps[t] */
            sparse_rows(args->by_op, m, grad_taps, m, grad_coef + c * n * plane + bl.begin, plane);
        }
    }
}

static shape_t make_shape(const int64_t *dims) {
    shape_t sh = {dims[0], dims[1], dims[2], dims[3], dims[4], dims[5], dims[6], dims[7]};
    return sh;
}

static int run(const int64_t *dims, const real *stencil, args_t *args, int threads, int backward) {
    shape_t sh = make_shape(dims);
    const int64_t kk = sh.size * sh.size, m = block_rows(&sh) * sh.width, stride = block_at(&sh, 0).stride;
    sparse_t by_tap = {0}, by_op = {0};
    int status = -1;
    if (!sparse_init(&by_tap, stencil, sh.ops, kk, 1) && !sparse_init(&by_op, stencil, sh.ops, kk, 0)) {
        args->by_tap = &by_tap;
        args->by_op = &by_op;
        const int64_t head = GEOMETRY_REALS(kk) + sh.dim * kk * stride; /* geometry, padded taps */
        if (backward) /* one channel's grad_taps, 3 pixel rows, PART_BLOCK padded grad_raw rows, saved edges */
            status = run_items(&sh, threads, (size_t)(head + kk * m + 3 * m + PART_BLOCK * stride + kk * m),
                               backward_item, args);
        else /* 3 pixel rows */
            status = run_items(&sh, threads, (size_t)(head + 3 * m), forward_item, args);
    }
    sparse_free(&by_tap);
    sparse_free(&by_op);
    return status;
}

/* dims: batch, parts, fields, dim, ops, size, height, width.  Both return 0, or -1 when out of memory. */
int epdo_adaptive_pdo_forward(const real *x, const real *coef, const real *stencil, real *out, const int64_t *dims,
                              int l1, double eps, int threads) {
    args_t args = {x, coef, NULL, out, NULL, NULL, NULL, NULL, l1, (real)eps};
    return run(dims, stencil, &args, threads, 0);
}

int epdo_adaptive_pdo_backward(const real *x, const real *coef, const real *stencil, const real *out,
                               const real *grad_out, real *grad_x, real *grad_coef, const int64_t *dims, int l1,
                               double eps, int threads) {
    args_t args = {x, coef, grad_out, (real *)out, grad_x, grad_coef, NULL, NULL, l1, (real)eps};
    return run(dims, stencil, &args, threads, 1);
}
