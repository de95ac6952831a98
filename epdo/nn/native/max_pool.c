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
 * last NaN).  The backward writes grad_out at each window's argmax and zeros elsewhere.
 */
#include <stdint.h>
#include <string.h>

#ifndef REAL
#error "compile with -DREAL=float or -DREAL=double (see epdo.nn.native)"
#endif
typedef REAL real;

void epdo_max_pool2x2_forward(const real *x, real *out, uint8_t *argmax, int64_t planes, int64_t height,
                              int64_t width, int threads) {
    const int64_t ho = height / 2, wo = width / 2;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t p = 0; p < planes; p++) {
        for (int64_t i = 0; i < ho; i++) {
            const real *row0 = x + (p * height + 2 * i) * width, *row1 = row0 + width;
            real *o = out + (p * ho + i) * wo;
            uint8_t *a = argmax + (p * ho + i) * wo;
            for (int64_t j = 0; j < wo; j++) {
                const real window[4] = {row0[2 * j], row0[2 * j + 1], row1[2 * j], row1[2 * j + 1]};
                real best = window[0];
                uint8_t at = 0;
                for (uint8_t k = 1; k < 4; k++)
                    if (window[k] > best || window[k] != window[k]) {
                        best = window[k];
                        at = k;
                    }
                o[j] = best;
                a[j] = at;
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
