/* 2x2 max pooling with stride 2 on CPU, forward and backward: torch.nn.functional.max_pool2d(x, 2) bit for bit.
 *
 * Compiled at first use by epdo.nn.native once per scalar type (-DREAL=float|double) and cached.
 *
 * Layouts (C-contiguous), P planes (batch x channels), Ho = H / 2, Wo = W / 2 (rounded down: a last odd row or
 * column is never read):
 *   x, grad_x          (P, H, W)
 *   out, grad_out      (P, Ho, Wo)
 *   argmax             (P, Ho, Wo)   uint8, the window position of the maximum, 2 * row + column (0..3)
 *
 *   out[p, i, j] = max(x[p, 2i, 2j], x[p, 2i, 2j+1], x[p, 2i+1, 2j], x[p, 2i+1, 2j+1])
 * scanned in that order, a later value winning when it is larger or NaN (PyTorch's rule: the first maximum, the
 * last NaN).  The forward takes a vector of windows at a time: the even and odd columns of the two input rows are
 * separated by shuffles, and the winner is chosen by masks, without branches.  The backward writes grad_out at each
 * window's argmax and zeros elsewhere.
 */
#include <stdint.h>
#include <string.h>

#ifndef REAL
#error "compile with -DREAL=float or -DREAL=double (see epdo.nn.native)"
#endif
typedef REAL real;

#include "vectors.h"
typedef __typeof__(__builtin_choose_expr(sizeof(real) == 8, (int64_t)0, (int32_t)0)) real_bits;
typedef real_bits mask_t __attribute__((vector_size(VECTOR_BYTES))); /* comparisons' results, selects */
typedef uint8_t codes_t __attribute__((vector_size(LANES)));

/* The even and odd entries of the n values at p (n <= 2 LANES). */
static inline void even_odd(const real *p, int64_t n, vec_t *even, vec_t *odd) {
    const vec_t low = load_n(p, n), high = load_n(p + LANES, n > LANES ? n - LANES : 0);
    mask_t evens, odds;
    for (int64_t k = 0; k < LANES; k++) {
        evens[k] = 2 * k;
        odds[k] = 2 * k + 1;
    }
    *even = __builtin_shuffle(low, high, evens);
    *odd = __builtin_shuffle(low, high, odds);
}

/* best, at = candidate, code where the candidate is larger than best or NaN. */
static inline void challenge(vec_t candidate, int code, vec_t *best, mask_t *at) {
    const mask_t wins = (candidate > *best) | (candidate != candidate);
    *best = (vec_t)(((mask_t)candidate & wins) | ((mask_t)*best & ~wins));
    *at = (wins & code) | (*at & ~wins);
}

void epdo_max_pool2x2_forward(const real *x, real *out, uint8_t *argmax, int64_t planes, int64_t height,
                              int64_t width, int threads) {
    const int64_t ho = height / 2, wo = width / 2;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t p = 0; p < planes; p++) {
        for (int64_t i = 0; i < ho; i++) {
            const real *row0 = x + (p * height + 2 * i) * width, *row1 = row0 + width;
            real *o = out + (p * ho + i) * wo;
            uint8_t *a = argmax + (p * ho + i) * wo;
            for (int64_t j = 0; j < wo; j += LANES) {
                const int64_t n = wo - j < LANES ? wo - j : LANES;
                vec_t top_left, top_right, bottom_left, bottom_right;
                even_odd(row0 + 2 * j, 2 * n, &top_left, &top_right);
                even_odd(row1 + 2 * j, 2 * n, &bottom_left, &bottom_right);
                vec_t best = top_left;
                mask_t at = {0};
                challenge(top_right, 1, &best, &at);
                challenge(bottom_left, 2, &best, &at);
                challenge(bottom_right, 3, &best, &at);
                const codes_t codes = __builtin_convertvector(at, codes_t);
                store_n(o + j, best, n);
                memcpy(a + j, &codes, (size_t)n);
            }
        }
    }
}

void epdo_max_pool2x2_backward(const real *grad_out, const uint8_t *argmax, real *grad_x, int64_t planes,
                               int64_t height, int64_t width, int threads) {
    const int64_t ho = height / 2, wo = width / 2;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t p = 0; p < planes; p++) {
        real *plane = grad_x + p * height * width;
        memset(plane, 0, (size_t)(height * width) * sizeof(real));
        for (int64_t i = 0; i < ho; i++) {
            const real *g = grad_out + (p * ho + i) * wo;
            const uint8_t *a = argmax + (p * ho + i) * wo;
            for (int64_t j = 0; j < wo; j++)
                plane[(2 * i + (a[j] >> 1)) * width + 2 * j + (a[j] & 1)] = g[j];
        }
    }
}
