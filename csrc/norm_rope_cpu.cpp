// RMSNorm and rotary embedding of CPU inference, each one call per layer instead of the ~8 and ~7 torch
// ops of their references (hpo_engine/kernels/cpu_norm_rope.py, which holds the references they are tested
// against). At decode sizes those ops cost more in dispatch than in arithmetic: a SmolLM2 decoded token
// issued about 2,300 aten calls with the references, 720 with these (bench/decode_ops.py).
//
// rms_norm: x [T, H] -> y [T, H], y = w * to_dtype(x * rsqrt(mean(x^2) + eps)) (float math, rounded to the
//           dtype where the reference rounds). Rows are independent: a row's result is bitwise the same
//           whatever T (the reduction order depends only on H).
// rope:     x [T, heads, D] in place, x = x * cos + rotate_half(x) * sin with cos/sin [T, D] (halves
//           repeated, Hugging Face's layout); bf16 rounds each product and the sum, as the reference.
// float32 or bfloat16 (x, w, cos, sin share the dtype).
#include "registry.h"
#include "simd.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace {

constexpr int64_t kMinParallelElems = 1 << 15;  // below this much work one thread beats the fork

// The value as stored in dtype E (float: itself; bf16: rounded), kept as a float.
template <typename E> HPO_INLINE float round_to(float v) { return v; }
template <> HPO_INLINE float round_to<uint16_t>(float v) { return to_float(bf16_bits(v)); }
template <typename E> HPO_INLINE vf16 round_to(vf16 v) { return v; }
template <> HPO_INLINE vf16 round_to<uint16_t>(vf16 v) { return (vf16)(bf16_bits(v) << 16); }

template <typename E>
HPO_INLINE void rms_norm_row(const E* x, const E* w, E* y, int64_t H, float eps) {
    const int64_t h16 = H & ~int64_t{15};
    vf16 acc = {};
    for (int64_t h = 0; h < h16; h += 16) {
        const vf16 v = load16(x + h);
        acc += v * v;
    }
    float ss = hsum(acc);
    for (int64_t h = h16; h < H; ++h) ss += to_float(x[h]) * to_float(x[h]);
    const float inv = 1.0f / std::sqrt(ss / static_cast<float>(H) + eps);
    for (int64_t h = 0; h < h16; h += 16) store16(y + h, load16(w + h) * round_to<E>(load16(x + h) * inv));
    for (int64_t h = h16; h < H; ++h) store(y + h, to_float(w[h]) * round_to<E>(to_float(x[h]) * inv));
}

// One head of one token: d < D/2 pairs with d + D/2. The two products are rounded to E before the sum.
template <typename E>
HPO_INLINE void rope_head(E* x, const E* c, const E* s, int64_t D) {
    const int64_t half = D / 2;
    const int64_t h16 = half & ~int64_t{15};
    for (int64_t d = 0; d < h16; d += 16) {
        const vf16 a = load16(x + d), b = load16(x + d + half);
        const vf16 lo = round_to<E>(a * load16(c + d)) - round_to<E>(b * load16(s + d));
        const vf16 hi = round_to<E>(b * load16(c + d + half)) + round_to<E>(a * load16(s + d + half));
        store16(x + d, lo);
        store16(x + d + half, hi);
    }
    for (int64_t d = h16; d < half; ++d) {
        const float a = to_float(x[d]), b = to_float(x[d + half]);
        const float lo = round_to<E>(a * to_float(c[d])) - round_to<E>(b * to_float(s[d]));
        const float hi = round_to<E>(b * to_float(c[d + half])) + round_to<E>(a * to_float(s[d + half]));
        store(x + d, lo);
        store(x + d + half, hi);
    }
}

template <typename E>
HPO_INLINE void rms_norm_rows(const E* x, int64_t x_stride, const E* w, E* y, int64_t t0, int64_t t1, int64_t H,
                              float eps) {
    for (int64_t t = t0; t < t1; ++t) rms_norm_row(x + t * x_stride, w, y + t * H, H, eps);
}

template <typename E>
HPO_INLINE void rope_rows(E* x, const E* c, const E* s, int64_t t0, int64_t t1, int64_t heads, int64_t D) {
    for (int64_t t = t0; t < t1; ++t)
        for (int64_t h = 0; h < heads; ++h) rope_head(x + (t * heads + h) * D, c + t * D, s + t * D, D);
}

HPO_CLONES void rms_norm_f32(const float* x, int64_t xs, const float* w, float* y, int64_t t0, int64_t t1,
                             int64_t H, float eps) {
    rms_norm_rows(x, xs, w, y, t0, t1, H, eps);
}
HPO_CLONES void rms_norm_bf16(const uint16_t* x, int64_t xs, const uint16_t* w, uint16_t* y, int64_t t0, int64_t t1,
                              int64_t H, float eps) {
    rms_norm_rows(x, xs, w, y, t0, t1, H, eps);
}
HPO_CLONES void rope_f32(float* x, const float* c, const float* s, int64_t t0, int64_t t1, int64_t heads, int64_t D) {
    rope_rows(x, c, s, t0, t1, heads, D);
}
HPO_CLONES void rope_bf16(uint16_t* x, const uint16_t* c, const uint16_t* s, int64_t t0, int64_t t1, int64_t heads,
                          int64_t D) {
    rope_rows(x, c, s, t0, t1, heads, D);
}

// run(t0, t1) over rows [0, T): split across threads only when the work pays for the fork.
template <typename Run>
void over_rows(int64_t T, int64_t elems_per_row, int num_threads, Run run) {
    const int threads = T * elems_per_row < kMinParallelElems ? 1
                      : static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(num_threads, T)));
    if (threads <= 1) {
        run(0, T);
        return;
    }
    #pragma omp parallel for schedule(static, 1) num_threads(threads)
    for (int i = 0; i < threads; ++i) run(T * i / threads, T * (i + 1) / threads);
}

}  // namespace

void register_norm_rope_cpu(pybind11::module_& m) {
    m.def(
        "rms_norm_cpu",
        [](uintptr_t x, int64_t x_stride, uintptr_t w, uintptr_t y, int64_t T, int64_t H, double eps, bool bf16,
           int num_threads) {
            pybind11::gil_scoped_release release;
            over_rows(T, H, num_threads, [&](int64_t t0, int64_t t1) {
                if (bf16)
                    rms_norm_bf16(reinterpret_cast<const uint16_t*>(x), x_stride, reinterpret_cast<const uint16_t*>(w),
                                  reinterpret_cast<uint16_t*>(y), t0, t1, H, static_cast<float>(eps));
                else
                    rms_norm_f32(reinterpret_cast<const float*>(x), x_stride, reinterpret_cast<const float*>(w),
                                 reinterpret_cast<float*>(y), t0, t1, H, static_cast<float>(eps));
            });
        },
        "RMSNorm of T rows on CPU (raw pointers; use hpo_engine.kernels.rms_norm)");
    m.def(
        "rope_cpu",
        [](uintptr_t x, uintptr_t c, uintptr_t s, int64_t T, int64_t heads, int64_t D, bool bf16, int num_threads) {
            pybind11::gil_scoped_release release;
            over_rows(T, heads * D, num_threads, [&](int64_t t0, int64_t t1) {
                if (bf16)
                    rope_bf16(reinterpret_cast<uint16_t*>(x), reinterpret_cast<const uint16_t*>(c),
                              reinterpret_cast<const uint16_t*>(s), t0, t1, heads, D);
                else
                    rope_f32(reinterpret_cast<float*>(x), reinterpret_cast<const float*>(c),
                             reinterpret_cast<const float*>(s), t0, t1, heads, D);
            });
        },
        "rotary embedding in place on CPU (raw pointers; use hpo_engine.kernels.rope)");
}
