/* Fused CPU kernel of epdo.nn.functional.adaptive_pdo, forward and backward.
 *
 * Compiled at first use by epdo.nn.native once per scalar type and stencil set, and cached:
 *   -DREAL=float|double  -DOPS=n  -DSIZE=k  -DSTENCIL_VALUES={...}  (n x k*k, row-major, already multiplied by the
 *   coefficient scale)  -DTAPS_USED={...}  (k*k flags: some stencil is nonzero at that tap)
 * The stencil is a compile-time constant: the compiler unrolls tap composition and its transpose into straight-line
 * multiply-adds with the nonzero entries only, and the taps of a vector of pixels live in registers.
 *
 * Layouts (C-contiguous), H = ceil(H_in / s), W = ceil(W_in / s) for stride s:
 *   x, grad_x                   (B, q, g, d, H_in, W_in)   q partitions of g fields of d channels
 *   out                         (B, q, g, d, H, W)
 *   coef, grad_coef             (B, g, d, n, H, W)   n operator coefficients per channel (generator output)
 *   norm                        (B, g, H, W)         nu - eps per field and pixel (forward output, backward input)
 *
 *   taps[j, c, t](x) = sum_a coef[j, c, a](x) STENCIL[a, t]                       (per vector of pixels, in registers)
 *   nu[j](x)         = rms: sqrt(sum_{c, t} taps^2 / d) + eps      l1: sum_{c, t} |taps| + eps
 *   out[p, j, c](x)  = sum_t taps[j, c, t](x) x[p, j, c](s x + D offset_t) / nu[j](x)  (zero padding, dilation D)
 *
 * Work: one item is one (batch, field) pair; it owns the channels (all p, that field, all c) of out, grad_x and
 * grad_coef, so items never write the same memory.  An item walks its output in blocks of whole rows and, within a
 * block, channel by channel over the block's pixels as one flat range in vectors.  The input's block rows and those
 * around them are copied into s^2 "padded planes" (phase (a, b) holds input pixel (s i + a, s j + b) at (i, j),
 * zeros outside the image), so that tap t reads one phase at a fixed flat offset; reads that wrap around a row edge
 * are removed by multiplying the tap with a 0/1 column mask, which is exactly zero padding.  The norm uses the
 * unmasked taps.  The backward recomputes the taps instead of storing them, reads the forward's output and norm, and
 * forms the input gradient as a gather from the channel's masked taps and scaled output gradients (kept per block in
 * padded planes), phase by phase at stride s > 1.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if !defined(REAL) || !defined(OPS) || !defined(SIZE) || !defined(STENCIL_VALUES) || !defined(TAPS_USED)
#error "compile with -DREAL, -DOPS, -DSIZE, -DSTENCIL_VALUES and -DTAPS_USED (see epdo.nn.native)"
#endif
typedef REAL real;

#define KK (SIZE * SIZE)
#define R (SIZE / 2)
static const real STENCIL[OPS][KK] = STENCIL_VALUES;
static const int USED[KK] = TAPS_USED;

#ifndef BLOCK_PIXELS
#define BLOCK_PIXELS 1024 /* target pixels per block: a channel's padded planes stay in L2 */
#endif

/* Vectors of pixels (vectors.h); PART_BLOCK partitions' accumulators are kept in registers, so that each tap is
 * formed once per vector and channel. */
#include "vectors.h"
#define PART_BLOCK 4

static inline vec_t sign(vec_t v) {
    const vec_t zero = {0};
    return __builtin_convertvector((v < zero) - (v > zero), vec_t);
}

static inline int64_t round_up(int64_t v, int64_t to) { return (v + to - 1) / to * to; }

/* taps[t] = sum_a STENCIL[a, t] coef[a] over the nonzero entries (zero for unused taps), for the vector of pixels at
 * coef whose operators lie `stride` apart; each coefficient is read where it is used (no array of live registers). */
static inline void compose(const real *coef, int64_t stride, vec_t taps[KK]) {
#pragma GCC unroll 64
    for (int t = 0; t < KK; t++) {
        vec_t acc = {0};
        int first = 1;
#pragma GCC unroll 64
        for (int a = 0; a < OPS; a++)
            if (STENCIL[a][t] != 0) {
                const vec_t term = STENCIL[a][t] * load(coef + a * stride);
                acc = first ? term : acc + term;
                first = 0;
            }
        taps[t] = acc;
    }
}

/* compose() for the vector of n lanes at coef (operators `plane` apart); fewer than LANES lanes through a copy with
 * zeros after them, so that nothing past the tensor is read. */
static inline void compose_vector(const real *coef, int64_t plane, int64_t n, vec_t taps[KK]) {
    if (n >= LANES) {
        compose(coef, plane, taps);
        return;
    }
    real tail[OPS * LANES] = {0};
    for (int a = 0; a < OPS; a++) memcpy(tail + a * LANES, coef + a * plane, (size_t)n * sizeof(real));
    compose(tail, LANES, taps);
}

/* grad_coef[a] = sum_t STENCIL[a, t] grad_taps[t] over the nonzero entries: compose()'s transpose.  Kept as its
 * own function: the compiler unrolls each of the two loops alone, not one with the direction as a parameter. */
static inline void compose_transposed(const vec_t grad_taps[KK], vec_t grad_coef[OPS]) {
#pragma GCC unroll 64
    for (int a = 0; a < OPS; a++) {
        vec_t acc = {0};
        int first = 1;
#pragma GCC unroll 64
        for (int t = 0; t < KK; t++)
            if (STENCIL[a][t] != 0) {
                acc = first ? STENCIL[a][t] * grad_taps[t] : acc + STENCIL[a][t] * grad_taps[t];
                first = 0;
            }
        grad_coef[a] = acc;
    }
}

/* height, width: the output's; in_height, in_width: the input's, ceil(in / stride) = out. */
typedef struct {
    int64_t batch, parts, fields, dim, ops, size, height, width, dilation, stride, in_height, in_width;
} shape_t;

static inline int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }
static inline int64_t floor_mod(int64_t a, int64_t b) { return a - b * floor_div(a, b); }

/* Rows (and columns) of output resolution between an output pixel and its outermost tap's phase position. */
static inline int64_t reach_rows(const shape_t *sh) { return (R * sh->dilation + sh->stride - 1) / sh->stride; }

/* Input rows s r + a (columns s c + b) that exist, for phase row (column) offset a (b): the phase's extent. */
static inline int64_t phase_extent(int64_t in, int64_t a, int64_t s) { return in > a ? (in - a + s - 1) / s : 0; }

/* Rows per block: about BLOCK_PIXELS pixels, at least one row. */
static int64_t block_rows(const shape_t *sh) {
    const int64_t rows = BLOCK_PIXELS / sh->width;
    return rows < 1 ? 1 : rows > sh->height ? sh->height : rows;
}

/* Padded planes: a block's flat pixels [0, m) at `origin`, zeros in front and behind; reads at flat offsets within
 * +-(2 e W + e + LANES) of [0, m) stay inside (e = ceil(D r / s), W the output's width).  `stride` reals per plane.
 * An input channel's block takes s^2 of them: phase (a, b) holds its pixels (s i + a, s j + b) at (i, j). */
typedef struct {
    int64_t origin, stride, vectors_max; /* vectors_max: pixels of the largest block rounded up to whole vectors */
} planes_t;

static planes_t planes_of(const shape_t *sh) {
    const int64_t reach = reach_rows(sh), pad = round_up(2 * reach * sh->width + reach, LANES) + LANES;
    const int64_t vectors_max = round_up(block_rows(sh) * sh->width, LANES);
    planes_t pl = {pad, 2 * pad + vectors_max, vectors_max};
    return pl;
}

/* A block: rows [h0, h0 + rows) of an item, flat pixels [begin, begin + count). */
typedef struct {
    int64_t h0, rows, begin, count;
} block_t;

static block_t block_at(const shape_t *sh, int64_t h0) {
    const int64_t most = block_rows(sh), rows = most < sh->height - h0 ? most : sh->height - h0;
    block_t bl = {h0, rows, h0 * sh->width, rows * sh->width};
    return bl;
}

/* Tap t reads the input at (s i + du, s j + dv) from output pixel (i, j), (du, dv) = D (u - r, v - r): phase
 * (du mod s, dv mod s), its index a s + b into *phase, at flat offset floor(du / s) W + floor(dv / s), into *flat. */
static void tap_place(const shape_t *sh, int t, int64_t *phase, int64_t *flat) {
    const int64_t du = (t / SIZE - R) * sh->dilation, dv = (t % SIZE - R) * sh->dilation, s = sh->stride;
    *phase = floor_mod(du, s) * s + floor_mod(dv, s);
    *flat = floor_div(du, s) * sh->width + floor_div(dv, s);
}

/* mask[v][i] = 1 where tap column v of block pixel i reads inside its phase's row, else 0, for i in [0, vectors):
 * the same for every block, since blocks begin at a row's start. */
static void column_masks(const shape_t *sh, real *mask, int64_t vectors) {
    for (int v = 0; v < SIZE; v++) {
        const int64_t dv = (v - R) * sh->dilation, s = sh->stride;
        const int64_t columns = phase_extent(sh->in_width, floor_mod(dv, s), s);
        for (int64_t i = 0; i < vectors; i++) {
            const int64_t column = i % sh->width + floor_div(dv, s);
            mask[v * vectors + i] = column >= 0 && column < columns;
        }
    }
}

/* Copies rows [h0 - e, h0 + rows + e) of the s^2 phases of input plane `src` (in_height, in_width) into the padded
 * planes at `dst`, `pl.stride` apart (zeros outside the image). */
static void copy_phases(const shape_t *sh, block_t bl, planes_t pl, const real *src, real *dst) {
    const int64_t s = sh->stride, W = sh->width, reach = reach_rows(sh);
    for (int64_t a = 0; a < s; a++)
        for (int64_t b = 0; b < s; b++) {
            real *plane = dst + (a * s + b) * pl.stride + pl.origin;
            const int64_t rows = phase_extent(sh->in_height, a, s), columns = phase_extent(sh->in_width, b, s);
            const int64_t first = bl.h0 - reach < 0 ? 0 : bl.h0 - reach;
            const int64_t last = bl.h0 + bl.rows + reach > rows ? rows : bl.h0 + bl.rows + reach;
            memset(plane - pl.origin, 0, (size_t)pl.stride * sizeof(real));
            for (int64_t r = first; r < last; r++) {
                const real *row = src + (s * r + a) * sh->in_width + b;
                real *to = plane + (r - bl.h0) * W;
                if (s == 1)
                    memcpy(to, row, (size_t)columns * sizeof(real));
                else
                    for (int64_t c = 0; c < columns; c++) to[c] = row[s * c];
            }
        }
}

/* Copies the block's rows of one channel's q partitions (x_c: partition 0's input plane, the others part_stride
 * apart) into q groups of s^2 padded planes at xs, s^2 pl.stride apart. */
static void copy_partitions(const shape_t *sh, block_t bl, planes_t pl, const real *x_c, int64_t part_stride,
                            real *xs) {
    const int64_t group = sh->stride * sh->stride * pl.stride;
    for (int64_t p = 0; p < sh->parts; p++) copy_phases(sh, bl, pl, x_c + p * part_stride, xs + p * group);
}

typedef struct {
    const real *x, *coef, *grad_out;
    real *out, *norm, *grad_x, *grad_coef;
    int l1;
    real eps;
} args_t;

/* Multiplies the taps that read across a row edge by their column mask (vector i of a block). */
static inline void mask_taps(vec_t taps[KK], const real *mask, int64_t vectors, int64_t i) {
#pragma GCC unroll 8
    for (int v = 0; v < SIZE; v++) {
        if (v == R) continue;
        const vec_t m = load(mask + v * vectors + i);
#pragma GCC unroll 8
        for (int u = 0; u < SIZE; u++)
            if (USED[u * SIZE + v]) taps[u * SIZE + v] *= m;
    }
}

/* The norm's derivative with respect to each tap, times scale: l1 sign(taps), rms taps (the factor 1 / (d (nu - eps))
 * is in scale). */
static inline __attribute__((always_inline)) void norm_gradients(const vec_t taps[KK], int l1, vec_t scale,
                                                                 vec_t out[KK]) {
#pragma GCC unroll 64
    for (int t = 0; t < KK; t++) out[t] = (l1 ? sign(taps[t]) : taps[t]) * scale;
}

/* sum_t |taps[t]| (l1) or sum_t taps[t]^2 (rms) over the used taps, through the norm's derivative. */
static inline __attribute__((always_inline)) vec_t norm_terms(const vec_t taps[KK], int l1, vec_t one) {
    vec_t terms[KK], sum = {0};
    norm_gradients(taps, l1, one, terms);
#pragma GCC unroll 64
    for (int t = 0; t < KK; t++)
        if (USED[t]) sum += terms[t] * taps[t];
    return sum;
}

/* acc[p] = sum_t taps[t] x_p(offset_t) for p < parts (<= PART_BLOCK), x_p = x0 + p stride. */
static inline __attribute__((always_inline)) void apply_taps(const vec_t taps[KK], const real *x0, int64_t stride,
                                                             const int64_t *offset, int parts, vec_t acc[PART_BLOCK]) {
#pragma GCC unroll 8
    for (int p = 0; p < PART_BLOCK; p++) acc[p] = (vec_t){0};
#pragma GCC unroll 64
    for (int t = 0; t < KK; t++) {
        if (!USED[t]) continue;
#pragma GCC unroll 8
        for (int p = 0; p < PART_BLOCK; p++)
            if (p < parts) acc[p] += taps[t] * load(x0 + p * stride + offset[t]);
    }
}

/* grad_taps[t] += mask_t sum_p gr[p] x_p(offset_t) for p < parts (<= PART_BLOCK), x_p = x0 + p stride, mask_t the
 * column mask of tap t (mask_stride apart per column; none for the middle column). */
static inline __attribute__((always_inline)) void add_tap_gradients(const vec_t gr[PART_BLOCK], const real *x0,
                                                                    int64_t stride, const int64_t *offset,
                                                                    const real *mask, int64_t mask_stride, int parts,
                                                                    vec_t grad_taps[KK]) {
#pragma GCC unroll 64
    for (int t = 0; t < KK; t++) {
        if (!USED[t]) continue;
        vec_t sum = {0};
#pragma GCC unroll 8
        for (int p = 0; p < PART_BLOCK; p++)
            if (p < parts) sum += gr[p] * load(x0 + p * stride + offset[t]);
        if (t % SIZE != R) sum *= load(mask + (t % SIZE) * mask_stride);
        grad_taps[t] += sum;
    }
}

/* acc[p] = sum_t tap_t(-offset_t) gr_p(-offset_t) for p < parts (<= PART_BLOCK): tap_t = taps0 + t stride,
 * gr_p = gr0 + p stride (the input gradient as a gather). */
static inline __attribute__((always_inline)) void gather_products(const real *taps0, const real *gr0, int64_t stride,
                                                                  const int64_t *offset, int parts,
                                                                  vec_t acc[PART_BLOCK]) {
#pragma GCC unroll 8
    for (int p = 0; p < PART_BLOCK; p++) acc[p] = (vec_t){0};
#pragma GCC unroll 64
    for (int t = 0; t < KK; t++) {
        if (!USED[t]) continue;
        const vec_t tap = load(taps0 + t * stride - offset[t]);
#pragma GCC unroll 8
        for (int p = 0; p < PART_BLOCK; p++)
            if (p < parts) acc[p] += tap * load(gr0 + p * stride - offset[t]);
    }
}

/* Scratch of one thread: geometry, masks, per-pixel rows, then padded planes. */
typedef struct {
    int64_t offset[KK], flat[KK], phase[KK]; /* offset: from a partition's phase planes, the phase included */
    real *mask, *rows, *planes;
} scratch_t;

static void forward_item(const shape_t *sh, const args_t *args, int64_t b, int64_t j, scratch_t *s) {
    const int64_t plane = sh->height * sh->width, d = sh->dim, q = sh->parts;
    const int64_t in_plane = sh->in_height * sh->in_width;
    const int64_t part_stride = sh->fields * d * plane, part_in = sh->fields * d * in_plane; /* partition p to p + 1 */
    const planes_t pl = planes_of(sh);
    const int64_t group = sh->stride * sh->stride * pl.stride; /* a partition's phase planes */
    real *nrm = s->rows, *xs = s->planes; /* q groups of padded planes of x */
    const real *coef = args->coef + (b * sh->fields + j) * d * OPS * plane;
    for (int64_t h0 = 0; h0 < sh->height; h0 += block_rows(sh)) {
        const block_t bl = block_at(sh, h0);
        const int64_t m = bl.count, vectors = round_up(m, LANES);
        memset(nrm, 0, (size_t)vectors * sizeof(real));
        for (int64_t c = 0; c < d; c++) {
            const int64_t at_c = ((b * q * sh->fields + j) * d + c) * plane + bl.begin;
            real *out_c = args->out + at_c;
            copy_partitions(sh, bl, pl, args->x + ((b * q * sh->fields + j) * d + c) * in_plane, part_in, xs);
            for (int64_t i = 0; i < m; i += LANES) {
                const int64_t n = m - i;
                vec_t taps[KK];
                compose_vector(coef + c * OPS * plane + bl.begin + i, plane, n, taps);
                if (args->l1) /* the same call with a constant: no per-tap choice */
                    store(nrm + i, load(nrm + i) + norm_terms(taps, 1, (vec_t){0} + 1));
                else
                    store(nrm + i, load(nrm + i) + norm_terms(taps, 0, (vec_t){0} + 1));
                mask_taps(taps, s->mask, pl.vectors_max, i);
                for (int64_t p0 = 0; p0 < q; p0 += PART_BLOCK) {
                    const int parts = q - p0 < PART_BLOCK ? (int)(q - p0) : PART_BLOCK;
                    const real *x0 = xs + p0 * group + pl.origin + i;
                    vec_t acc[PART_BLOCK];
                    if (parts == PART_BLOCK) /* the same call with a constant: no per-load partition checks */
                        apply_taps(taps, x0, group, s->offset, PART_BLOCK, acc);
                    else
                        apply_taps(taps, x0, group, s->offset, parts, acc);
                    for (int p = 0; p < parts; p++) store_n(out_c + (p0 + p) * part_stride + i, acc[p], n);
                }
            }
        }
        /* nu over all channels known: store nu - eps, divide the block's output by nu */
        real *norm = args->norm + (b * sh->fields + j) * plane + bl.begin, *inv = nrm;
        for (int64_t i = 0; i < m; i++) {
            norm[i] = args->l1 ? nrm[i] : sqrt(nrm[i] / (real)d);
            inv[i] = 1 / (norm[i] + args->eps);
        }
        for (int64_t p = 0; p < q; p++)
            for (int64_t c = 0; c < d; c++) {
                real *restrict o = args->out + (((b * q + p) * sh->fields + j) * d + c) * plane + bl.begin;
                for (int64_t i = 0; i < m; i++) o[i] *= inv[i];
            }
    }
}

/* Pass 2 at stride s > 1, for one channel's block: phase (a, b) of the input gradient at phase pixel y is
 * sum over the taps t of that phase of (taps_t grad_raw[p])(y - flat_t), for y in the block and e rows around; each
 * value is added where the phase pixel lies in the input, grad_x[p](s i + a, s j + b) (grad_c: partition 0's
 * input-gradient plane, the others part_in apart). */
static void strided_input_gradient(const shape_t *sh, block_t bl, planes_t pl, const scratch_t *s, const real *mts,
                                   const real *grs, real *grad_c, int64_t part_in) {
    const int64_t st = sh->stride, W = sh->width, reach = reach_rows(sh), q = sh->parts;
    for (int64_t a = 0; a < st; a++)
        for (int64_t b = 0; b < st; b++) {
            const int64_t phase = a * st + b, rows = phase_extent(sh->in_height, a, st);
            const int64_t columns = phase_extent(sh->in_width, b, st);
            const int64_t first = bl.h0 - reach < 0 ? 0 : bl.h0 - reach;
            const int64_t last = bl.h0 + bl.rows + reach > rows ? rows : bl.h0 + bl.rows + reach;
            for (int64_t p0 = 0; p0 < q; p0 += PART_BLOCK) {
                const int parts = q - p0 < PART_BLOCK ? (int)(q - p0) : PART_BLOCK;
                for (int64_t r = first; r < last; r++)
                    for (int64_t c = 0; c < columns; c += LANES) {
                        const int64_t y = (r - bl.h0) * W + c, n = columns - c < LANES ? columns - c : LANES;
                        vec_t acc[PART_BLOCK] = {{0}};
                        for (int t = 0; t < KK; t++) {
                            if (!USED[t] || s->phase[t] != phase) continue;
                            const int64_t at = pl.origin + y - s->flat[t];
                            const vec_t tap = load(mts + t * pl.stride + at);
                            for (int p = 0; p < parts; p++) acc[p] += tap * load(grs + (p0 + p) * pl.stride + at);
                        }
                        for (int p = 0; p < parts; p++) {
                            real *grad = grad_c + (p0 + p) * part_in + (st * r + a) * sh->in_width + st * c + b;
                            for (int64_t k = 0; k < n; k++) grad[st * k] += acc[p][k];
                        }
                    }
            }
        }
}

static void backward_item(const shape_t *sh, const args_t *args, int64_t b, int64_t j, scratch_t *s) {
    const int64_t W = sh->width, H = sh->height, plane = H * W, d = sh->dim, q = sh->parts;
    const int64_t in_plane = sh->in_height * sh->in_width;
    const int64_t part_stride = sh->fields * d * plane, part_in = sh->fields * d * in_plane;
    const planes_t pl = planes_of(sh);
    const int64_t group = sh->stride * sh->stride * pl.stride;
    real *inv = s->rows, *grad_nu = inv + pl.vectors_max;
    real *xs = s->planes, *grs = xs + q * group, *mts = grs + q * pl.stride; /* padded planes: x, grad_raw, taps */
    const real *coef = args->coef + (b * sh->fields + j) * d * OPS * plane;
    real *grad_coef = args->grad_coef + (b * sh->fields + j) * d * OPS * plane;
    for (int64_t p = 0; p < q; p++)
        memset(args->grad_x + ((b * q + p) * sh->fields + j) * d * in_plane, 0, (size_t)(d * in_plane) * sizeof(real));
    for (int64_t h0 = 0; h0 < H; h0 += block_rows(sh)) {
        const block_t bl = block_at(sh, h0);
        const int64_t m = bl.count, vectors = round_up(m, LANES);
        /* d loss / d nu = -sum_{p, c} G out / nu, times d nu / d taps (rms: taps / (d (nu - eps)), l1: sign(taps)) */
        const real *norm = args->norm + (b * sh->fields + j) * plane + bl.begin;
        for (int64_t i = 0; i < m; i += LANES) { /* the sum over all q d channels in a register */
            vec_t sum = {0};
            for (int64_t p = 0; p < q; p++) {
                const int64_t at = ((b * q + p) * sh->fields + j) * d * plane + bl.begin + i;
                for (int64_t c = 0; c < d; c++)
                    sum += load_n(args->grad_out + at + c * plane, m - i) * load_n(args->out + at + c * plane, m - i);
            }
            store(grad_nu + i, sum);
        }
        for (int64_t i = 0; i < vectors; i++) {
            const real nu = i < m ? norm[i] : 0;
            inv[i] = 1 / (nu + args->eps);
            grad_nu[i] *= -inv[i];
            if (!args->l1) grad_nu[i] /= (real)d * (nu > (real)1e-30 ? nu : (real)1e-30);
        }
        for (int64_t c = 0; c < d; c++) {
            const int64_t at_c = ((b * q * sh->fields + j) * d + c) * plane + bl.begin;
            const int64_t in_c = ((b * q * sh->fields + j) * d + c) * in_plane;
            copy_partitions(sh, bl, pl, args->x + in_c, part_in, xs);
            /* pass 1, per vector: taps (masked copies kept for pass 2), grad_raw = G / nu (kept), tap gradients,
             * coefficient gradients */
            for (int64_t i = 0; i < m; i += LANES) {
                const int64_t n = m - i;
                vec_t taps[KK], grad_taps[KK], gr[PART_BLOCK];
                compose_vector(coef + c * OPS * plane + bl.begin + i, plane, n, taps);
                const vec_t gnu = load(grad_nu + i), scale = load(inv + i);
                if (args->l1) /* as in the forward */
                    norm_gradients(taps, 1, gnu, grad_taps);
                else
                    norm_gradients(taps, 0, gnu, grad_taps);
                mask_taps(taps, s->mask, pl.vectors_max, i);
#pragma GCC unroll 64
                for (int t = 0; t < KK; t++)
                    if (USED[t]) store(mts + t * pl.stride + pl.origin + i, taps[t]);
                for (int64_t p0 = 0; p0 < q; p0 += PART_BLOCK) {
                    const int parts = q - p0 < PART_BLOCK ? (int)(q - p0) : PART_BLOCK;
                    for (int p = 0; p < parts; p++) {
                        gr[p] = load_n(args->grad_out + at_c + (p0 + p) * part_stride + i, n) * scale;
                        store(grs + (p0 + p) * pl.stride + pl.origin + i, gr[p]);
                    }
                    const real *x0 = xs + p0 * group + pl.origin + i, *mask = s->mask + i;
                    if (parts == PART_BLOCK) /* the same call with a constant: no per-load partition checks */
                        add_tap_gradients(gr, x0, group, s->offset, mask, pl.vectors_max, PART_BLOCK, grad_taps);
                    else
                        add_tap_gradients(gr, x0, group, s->offset, mask, pl.vectors_max, parts, grad_taps);
                }
                vec_t grad_a[OPS];
                compose_transposed(grad_taps, grad_a);
#pragma GCC unroll 64
                for (int e = 0; e < OPS; e++) store_n(grad_coef + (c * OPS + e) * plane + bl.begin + i, grad_a[e], n);
            }
            /* zeros behind the block in the kept planes (a longer earlier block left data there) */
            for (int t = 0; t < KK; t++)
                if (USED[t]) memset(mts + t * pl.stride + pl.origin + vectors, 0, (size_t)pl.origin * sizeof(real));
            for (int64_t p = 0; p < q; p++)
                memset(grs + p * pl.stride + pl.origin + vectors, 0, (size_t)pl.origin * sizeof(real));
            if (sh->stride > 1) {
                strided_input_gradient(sh, bl, pl, s, mts, grs, args->grad_x + in_c, part_in);
                continue;
            }
            /* pass 2: grad_x[p](y) += sum_t (taps_t grad_raw[p])(y - offset_t) for y in the block and D r rows
             * around */
            const int64_t reach = R * sh->dilation, y_lo = -(h0 < reach ? h0 : reach) * W;
            const int64_t below = H - h0 - bl.rows, y_hi = m + (below < reach ? below : reach) * W;
            for (int64_t p0 = 0; p0 < q; p0 += PART_BLOCK)
                for (int64_t y = y_lo; y < y_hi; y += LANES) {
                    const int64_t n = y_hi - y;
                    const int parts = q - p0 < PART_BLOCK ? (int)(q - p0) : PART_BLOCK;
                    const real *taps0 = mts + pl.origin + y, *gr0 = grs + p0 * pl.stride + pl.origin + y;
                    vec_t acc[PART_BLOCK];
                    if (parts == PART_BLOCK) /* as above */
                        gather_products(taps0, gr0, pl.stride, s->offset, PART_BLOCK, acc);
                    else
                        gather_products(taps0, gr0, pl.stride, s->offset, parts, acc);
                    for (int p = 0; p < parts; p++) {
                        real *dst = args->grad_x + at_c + (p0 + p) * part_stride + y;
                        store_n(dst, load_n(dst, n) + acc[p], n);
                    }
                }
        }
    }
}

/* Runs item(b, j) for every (batch, field) pair on `threads` threads; -1 when a scratch buffer cannot be had. */
static int run_items(const shape_t *sh, int threads, int64_t planes,
                     void (*item)(const shape_t *, const args_t *, int64_t, int64_t, scratch_t *), const args_t *args) {
    const int64_t items = sh->batch * sh->fields;
    const planes_t pl = planes_of(sh);
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        scratch_t s;
        for (int t = 0; t < KK; t++) {
            tap_place(sh, t, &s.phase[t], &s.flat[t]);
            s.offset[t] = s.phase[t] * pl.stride + s.flat[t];
        }
        /* SIZE masks, 2 pixel rows, the padded planes; zeros: the planes' pads */
        real *buffer = calloc((size_t)((SIZE + 2) * pl.vectors_max + planes * pl.stride), sizeof(real));
        failed = buffer == NULL;
        s.mask = buffer;
        s.rows = buffer + SIZE * pl.vectors_max;
        s.planes = s.rows + 2 * pl.vectors_max;
        if (buffer) column_masks(sh, s.mask, pl.vectors_max);
#pragma omp for schedule(static)
        for (int64_t i = 0; i < items; i++)
            if (buffer) item(sh, args, i / sh->fields, i % sh->fields, &s);
        free(buffer);
    }
    return failed ? -1 : 0;
}

static int run(const int64_t *dims, args_t *args, int threads, int backward) {
    const shape_t sh = {dims[0], dims[1], dims[2], dims[3], dims[4],  dims[5],
                        dims[6], dims[7], dims[8], dims[9], dims[10], dims[11]};
    const int64_t s = sh.stride;
    if (sh.ops != OPS || sh.size != SIZE || sh.dilation < 1 || s < 1 || (sh.in_height + s - 1) / s != sh.height ||
        (sh.in_width + s - 1) / s != sh.width)
        return -2;
    if (backward) /* padded planes: q s^2 of x, q of grad_raw, KK of taps */
        return run_items(&sh, threads, (s * s + 1) * sh.parts + KK, backward_item, args);
    return run_items(&sh, threads, s * s * sh.parts, forward_item, args);
}

/* dims: batch, parts, fields, dim, ops, size, height, width (the output's), dilation, stride, in_height, in_width
 * (the input's).  Both return 0, -1 when out of memory, or -2 when ops or size differ from the stencil this library
 * was compiled for, or the geometry is not one (dilation, stride >= 1, output = ceil(input / stride)). */
int epdo_adaptive_pdo_forward(const real *x, const real *coef, real *out, real *norm, const int64_t *dims, int l1,
                              double eps, int threads) {
    args_t args = {x, coef, NULL, out, norm, NULL, NULL, l1, (real)eps};
    return run(dims, &args, threads, 0);
}

int epdo_adaptive_pdo_backward(const real *x, const real *coef, const real *norm, const real *out,
                               const real *grad_out, real *grad_x, real *grad_coef, const int64_t *dims, int l1,
                               double eps, int threads) {
    args_t args = {x, coef, grad_out, (real *)out, (real *)norm, grad_x, grad_coef, l1, (real)eps};
    return run(dims, &args, threads, 1);
}
