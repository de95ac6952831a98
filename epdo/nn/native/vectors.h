/* Vectors of `real` with the compiler's vector extensions (GCC, Clang), as wide as the target allows, and their
 * unaligned loads and stores, whole or the first n lanes.  Included by the kernels after `typedef ... real;`. */
#ifndef EPDO_VECTORS_H
#define EPDO_VECTORS_H
#include <stdint.h>
#include <string.h>

#if defined(__AVX512F__)
#define VECTOR_BYTES 64
#elif defined(__AVX__)
#define VECTOR_BYTES 32
#else
#define VECTOR_BYTES 16
#endif
#define LANES ((int64_t)(VECTOR_BYTES / sizeof(real)))
typedef real vec_t __attribute__((vector_size(VECTOR_BYTES)));
typedef real unaligned_vec_t __attribute__((vector_size(VECTOR_BYTES), aligned(sizeof(real)), may_alias));

static inline vec_t load(const real *p) { return *(const unaligned_vec_t *)p; }
static inline void store(real *p, vec_t v) { *(unaligned_vec_t *)p = v; }

/* The first n lanes (0 <= n; n >= LANES: all) of p, zeros after; and the converse store. */
static inline vec_t load_n(const real *p, int64_t n) {
    if (n >= LANES) return load(p);
    vec_t v = {0};
    memcpy(&v, p, (size_t)n * sizeof(real));
    return v;
}

static inline void store_n(real *p, vec_t v, int64_t n) {
    if (n >= LANES)
        store(p, v);
    else
        memcpy(p, &v, (size_t)n * sizeof(real));
}
#endif
