// 16-lane float vectors (GCC vector extensions) shared by the CPU kernels: fp32 / bf16 / int8 loads and
// stores (and their one-element forms for tails), a horizontal sum, and the target_clones attribute that compiles a function for AVX-512,
// AVX2 and baseline x86-64 (setup.py builds without -march).
#pragma once
#include <cstdint>
#include <cstring>

namespace {

#define HPO_INLINE inline __attribute__((always_inline))
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define HPO_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))  // AVX-512, AVX2
#else
#define HPO_CLONES
#endif

typedef float vf16 __attribute__((vector_size(64)));
typedef int32_t vi16 __attribute__((vector_size(64)));
typedef uint32_t vu16 __attribute__((vector_size(64)));
typedef uint16_t vh16 __attribute__((vector_size(32)));
typedef int8_t vb16 __attribute__((vector_size(16)));
typedef int16_t vs16 __attribute__((vector_size(32)));
typedef float vf8 __attribute__((vector_size(32)));
typedef float vf4 __attribute__((vector_size(16)));

// ---- element loads / stores -------------------------------------------------------------------
HPO_INLINE vf16 load16(const float* p) { vf16 x; std::memcpy(&x, p, sizeof(x)); return x; }
HPO_INLINE vf16 load16(const uint16_t* p) {
    vh16 h;
    std::memcpy(&h, p, sizeof(h));
    vu16 u = __builtin_convertvector(h, vu16) << 16;  // bf16 is the top half of a float
    return (vf16)u;
}
HPO_INLINE vf16 load16(const int8_t* p) {   // int8 weights: sign-extend, convert (vpmovsxbd + vcvtdq2ps)
    vb16 b;
    std::memcpy(&b, p, sizeof(b));
    // widened in steps (int8 -> int16 -> int32 -> float): GCC 12 scalarizes a direct int8 -> float
    return __builtin_convertvector(__builtin_convertvector(__builtin_convertvector(b, vs16), vi16), vf16);
}
HPO_INLINE vu16 bf16_bits(vf16 x) {             // round to nearest even; the bits in the low half
    const vu16 u = (vu16)x;
    return (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
}
HPO_INLINE void store16(float* p, vf16 x) { std::memcpy(p, &x, sizeof(x)); }
HPO_INLINE void store16(uint16_t* p, vf16 x) {
    vh16 h = __builtin_convertvector(bf16_bits(x), vh16);
    std::memcpy(p, &h, sizeof(h));
}

// ---- the same one element at a time (tails) ----------------------------------------------------
HPO_INLINE float to_float(float v) { return v; }
HPO_INLINE float to_float(int8_t v) { return static_cast<float>(v); }
HPO_INLINE float to_float(uint16_t v) {
    uint32_t u = static_cast<uint32_t>(v) << 16;
    float f;
    std::memcpy(&f, &u, sizeof(f));
    return f;
}
HPO_INLINE uint16_t bf16_bits(float v) {        // round to nearest even
    uint32_t u;
    std::memcpy(&u, &v, sizeof(u));
    return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}
HPO_INLINE void store(float* p, float v) { *p = v; }
HPO_INLINE void store(uint16_t* p, float v) { *p = bf16_bits(v); }

// Horizontal sum as a tree of shuffles (4 vector adds); a plain lane loop keeps the source order and
// compiles to 15 dependent scalar adds.
HPO_INLINE float hsum(vf16 x) {
    vf8 a = __builtin_shufflevector(x, x, 0, 1, 2, 3, 4, 5, 6, 7) +
            __builtin_shufflevector(x, x, 8, 9, 10, 11, 12, 13, 14, 15);
    vf4 b = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
    b += __builtin_shufflevector(b, b, 2, 3, 0, 1);
    b += __builtin_shufflevector(b, b, 1, 0, 3, 2);
    return b[0];
}

}  // namespace
