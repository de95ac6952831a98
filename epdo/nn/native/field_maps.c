/* Small matrices applied to every field at every pixel: a linear map, and the ReLU of band-limited fields on their
 * group samples (forward and backward, fused: the samples are computed in registers, a vector of pixels at a time,
 * and never stored).
 *
 * Compiled at first use by epdo.nn.native once per scalar type (-DREAL=float|double) and cached.
 *
 * Layouts (C-contiguous), P planes (batch x fields), Q pixels (H x W, or any positions):
 *   x, grad_x          (P, d, Q)       a field's d channels at each pixel (Fourier coefficients for the ReLU)
 *   out, grad_out      (P, e, Q)
 *   matrix             (e, d)          the linear map
 *   sample             (S, d)          the field's values at S group elements: sample @ x
 *   unsample           (e, S)          coefficients of a function on the S elements
 *
 *   linear:        out[p, :, q] = matrix @ x[p, :, q]            (its gradient: the linear map by matrix^T)
 *   Fourier ReLU:  out[p, :, q] = unsample @ relu(sample @ x[p, :, q])
 *                  grad_x[p, :, q] = sample^T @ ((sample @ x[p, :, q] > 0) * (unsample^T @ grad_out[p, :, q]))
 * the ReLU as PyTorch's: NaN passes, and the gradient is zero where a sample is zero or NaN.
 */
#include <stdint.h>
#include <string.h>

#ifndef REAL
#error "compile with -DREAL=float or -DREAL=double (see epdo.nn.native)"
#endif
typedef REAL real;

#include "vectors.h"
typedef __typeof__(__builtin_choose_expr(sizeof(real) == 8, (int64_t)0, (int32_t)0)) real_bits;
typedef real_bits mask_t __attribute__((vector_size(VECTOR_BYTES)));

/* v where v > 0, else 0 (and NaN stays NaN: the comparison NaN < 0 is false). */
static inline vec_t relu(vec_t v) {
    const vec_t zero = {0};
    return (vec_t)((mask_t)v & ~(v < zero));
}

/* row @ xv: one output of a matrix row (d entries) applied to the d vectors xv. */
static inline vec_t row_times(const real *row, const vec_t *xv, int64_t d) {
    vec_t v = row[0] * xv[0];
    for (int64_t k = 1; k < d; k++) v += row[k] * xv[k];
    return v;
}

void epdo_field_linear(const real *x, const real *matrix, real *out, int64_t planes, int64_t d, int64_t e,
                       int64_t pixels, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t p = 0; p < planes; p++) {
        const real *xp = x + p * d * pixels;
        real *op = out + p * e * pixels;
        vec_t xv[d];
        for (int64_t q = 0; q < pixels; q += LANES) {
            const int64_t n = pixels - q < LANES ? pixels - q : LANES;
            for (int64_t k = 0; k < d; k++) xv[k] = load_n(xp + k * pixels + q, n);
            for (int64_t o = 0; o < e; o++) store_n(op + o * pixels + q, row_times(matrix + o * d, xv, d), n);
        }
    }
}

void epdo_fourier_relu_forward(const real *x, const real *sample, const real *unsample, real *out, int64_t planes,
                               int64_t d, int64_t samples, int64_t e, int64_t pixels, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t p = 0; p < planes; p++) {
        const real *xp = x + p * d * pixels;
        real *op = out + p * e * pixels;
        vec_t xv[d], acc[e];
        for (int64_t q = 0; q < pixels; q += LANES) {
            const int64_t n = pixels - q < LANES ? pixels - q : LANES;
            for (int64_t k = 0; k < d; k++) xv[k] = load_n(xp + k * pixels + q, n);
            for (int64_t o = 0; o < e; o++) acc[o] = (vec_t){0};
            for (int64_t s = 0; s < samples; s++) {
                const vec_t v = relu(row_times(sample + s * d, xv, d));
                for (int64_t o = 0; o < e; o++) acc[o] += unsample[o * samples + s] * v;
            }
            for (int64_t o = 0; o < e; o++) store_n(op + o * pixels + q, acc[o], n);
        }
    }
}

void epdo_fourier_relu_backward(const real *x, const real *sample, const real *unsample, const real *grad_out,
                                real *grad_x, int64_t planes, int64_t d, int64_t samples, int64_t e, int64_t pixels,
                                int threads) {
    const vec_t zero = {0};
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t p = 0; p < planes; p++) {
        const real *xp = x + p * d * pixels, *gp = grad_out + p * e * pixels;
        real *gxp = grad_x + p * d * pixels;
        vec_t xv[d], gv[e], acc[d];
        for (int64_t q = 0; q < pixels; q += LANES) {
            const int64_t n = pixels - q < LANES ? pixels - q : LANES;
            for (int64_t k = 0; k < d; k++) {
                xv[k] = load_n(xp + k * pixels + q, n);
                acc[k] = zero;
            }
            for (int64_t o = 0; o < e; o++) gv[o] = load_n(gp + o * pixels + q, n);
            for (int64_t s = 0; s < samples; s++) {
                const mask_t on = row_times(sample + s * d, xv, d) > zero;
                vec_t g = unsample[s] * gv[0];
                for (int64_t o = 1; o < e; o++) g += unsample[o * samples + s] * gv[o];
                g = (vec_t)((mask_t)g & on);
                for (int64_t k = 0; k < d; k++) acc[k] += sample[s * d + k] * g;
            }
            for (int64_t k = 0; k < d; k++) store_n(gxp + k * pixels + q, acc[k], n);
        }
    }
}
