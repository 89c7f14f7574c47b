// Small-batch linear layer on CPU: y[M, N] = x[M, K] @ w[N, K]^T (+ bias[N]) for decode-sized M,
// float32 or bfloat16 (x, w, bias and y share the dtype; accumulation in float32). Python wrapper and
// the reference it is tested against (F.linear): hpo_engine/kernels/cpu_linear.py.
//
// Weight-only int8 variant: w int8 [N, K] with one float32 scale per output row (symmetric,
// w ~= scale[n] * w_q[n, :]); y[m, n] = scale[n] * (x[m, :] . w_q[n, :]) + bias[n]. The int8 values
// are widened to float in registers, so a decode step reads a quarter of the fp32 weight bytes and
// computes exactly what the fp32 kernel computes on the dequantized matrix, up to where the scale
// is applied (after the dot product instead of before).
//
// Why: at decode batch sizes a step is the weights streaming through (a SmolLM2-135M step reads
// 540 MB of fp32), and torch's CPU GEMM reads them at 9-16 GB/s on a 2-core Zen 4 whose plain sum
// runs at 40 GB/s (bench/RESULTS.md). Here every weight row is read from memory exactly once per call:
// threads split the N rows into contiguous ranges; a block of kRowBlock rows is dotted against all M
// rows of x (x stays in L1/L2) in tiles of up to kRowTile x rows, 16 lanes at a time, so one k-step
// issues kRowBlock weight loads + kRowTile x loads for kRowBlock * kRowTile FMAs.
//
// Batch invariance: y[m, n] is the same chain of lane FMAs over k, then the same horizontal sum, then
// the K % 16 tail in order, then the bias, whatever M, the tile, the row block or the thread: a row's
// output is bitwise the same alone or in any batch (on one machine: each ISA clone rounds its own way).
#include "registry.h"
#include "simd.h"

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace {

constexpr int kRowBlock = 4;                    // weight rows per block
constexpr int kRowTile = 4;                     // x rows per tile
constexpr int64_t kMinParallelBytes = 1 << 18;  // below this much weight one thread beats the fork

// Rows [m0, m0 + MT) of x against weight rows [n, n + R): y = hsum(lane FMAs) + tail (* scale) + bias.
// W is E (a float weight; scale is null) or int8_t (scale holds one float per weight row).
template <typename E, typename W, int MT, int R>
HPO_INLINE void tile(const E* x, int64_t x_stride, const W* w, const float* scale, const E* bias, E* y,
                     int64_t y_stride, int64_t K, int64_t n) {
    vf16 acc[MT][R] = {};
    const int64_t k16 = K & ~int64_t{15};
    const W* wr = w + n * K;
    for (int64_t k = 0; k < k16; k += 16) {
        vf16 wv[R];
        for (int r = 0; r < R; ++r) wv[r] = load16(wr + r * K + k);
        for (int m = 0; m < MT; ++m) {
            const vf16 xv = load16(x + m * x_stride + k);
            for (int r = 0; r < R; ++r) acc[m][r] += xv * wv[r];
        }
    }
    for (int m = 0; m < MT; ++m)
        for (int r = 0; r < R; ++r) {
            float s = hsum(acc[m][r]);
            for (int64_t k = k16; k < K; ++k) s += to_float(x[m * x_stride + k]) * to_float(wr[r * K + k]);
            if (scale) s *= scale[n + r];
            if (bias) s += to_float(bias[n + r]);
            store(y + m * y_stride + n + r, s);
        }
}

template <typename E, typename W, int R>
HPO_INLINE void block(const E* x, int64_t x_stride, const W* w, const float* scale, const E* bias, E* y,
                      int64_t y_stride, int64_t M, int64_t K, int64_t n) {
    int64_t m = 0;
    for (; m + kRowTile <= M; m += kRowTile)
        tile<E, W, kRowTile, R>(x + m * x_stride, x_stride, w, scale, bias, y + m * y_stride, y_stride, K, n);
    const E* xm = x + m * x_stride;
    E* ym = y + m * y_stride;
    switch (M - m) {
        case 1: tile<E, W, 1, R>(xm, x_stride, w, scale, bias, ym, y_stride, K, n); break;
        case 2: tile<E, W, 2, R>(xm, x_stride, w, scale, bias, ym, y_stride, K, n); break;
        case 3: tile<E, W, 3, R>(xm, x_stride, w, scale, bias, ym, y_stride, K, n); break;
        default: break;
    }
}

// Output columns [n0, n1): blocks of kRowBlock weight rows, then the leftover rows one by one.
template <typename E, typename W>
HPO_INLINE void columns(const E* x, int64_t x_stride, const W* w, const float* scale, const E* bias, E* y,
                        int64_t y_stride, int64_t M, int64_t K, int64_t n0, int64_t n1) {
    int64_t n = n0;
    for (; n + kRowBlock <= n1; n += kRowBlock)
        block<E, W, kRowBlock>(x, x_stride, w, scale, bias, y, y_stride, M, K, n);
    for (; n < n1; ++n) block<E, W, 1>(x, x_stride, w, scale, bias, y, y_stride, M, K, n);
}

HPO_CLONES
void columns_f32(const float* x, int64_t xs, const float* w, const float* b, float* y, int64_t ys,
                 int64_t M, int64_t K, int64_t n0, int64_t n1) {
    columns<float, float>(x, xs, w, nullptr, b, y, ys, M, K, n0, n1);
}

HPO_CLONES
void columns_bf16(const uint16_t* x, int64_t xs, const uint16_t* w, const uint16_t* b, uint16_t* y, int64_t ys,
                  int64_t M, int64_t K, int64_t n0, int64_t n1) {
    columns<uint16_t, uint16_t>(x, xs, w, nullptr, b, y, ys, M, K, n0, n1);
}

HPO_CLONES
void columns_f32_int8(const float* x, int64_t xs, const int8_t* w, const float* scale, const float* b, float* y,
                      int64_t ys, int64_t M, int64_t K, int64_t n0, int64_t n1) {
    columns<float, int8_t>(x, xs, w, scale, b, y, ys, M, K, n0, n1);
}

HPO_CLONES
void columns_bf16_int8(const uint16_t* x, int64_t xs, const int8_t* w, const float* scale, const uint16_t* b,
                       uint16_t* y, int64_t ys, int64_t M, int64_t K, int64_t n0, int64_t n1) {
    columns<uint16_t, int8_t>(x, xs, w, scale, b, y, ys, M, K, n0, n1);
}

// Runs run(n0, n1) over contiguous ranges of whole row blocks, one per thread (one thread when the
// matrix is too small to pay for the fork): each thread streams its own slice of the weights.
template <typename Run>
void over_columns(int64_t N, int64_t weight_bytes, int num_threads, Run run) {
    const int threads = weight_bytes < kMinParallelBytes ? 1
                      : static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(num_threads, N / kRowBlock)));
    if (threads <= 1) {
        run(0, N);
        return;
    }
    const int64_t blocks = N / kRowBlock;
    #pragma omp parallel for schedule(static, 1) num_threads(threads)
    for (int t = 0; t < threads; ++t) {
        const int64_t n0 = blocks * t / threads * kRowBlock;
        const int64_t n1 = t + 1 == threads ? N : blocks * (t + 1) / threads * kRowBlock;
        run(n0, n1);
    }
}

void linear_small_cpu(uintptr_t x, int64_t x_stride, uintptr_t w, uintptr_t bias, uintptr_t y, int64_t y_stride,
                      int64_t M, int64_t N, int64_t K, bool bf16, int num_threads) {
    over_columns(N, N * K * (bf16 ? 2 : 4), num_threads, [&](int64_t n0, int64_t n1) {
        if (bf16)
            columns_bf16(reinterpret_cast<const uint16_t*>(x), x_stride, reinterpret_cast<const uint16_t*>(w),
                         reinterpret_cast<const uint16_t*>(bias), reinterpret_cast<uint16_t*>(y), y_stride,
                         M, K, n0, n1);
        else
            columns_f32(reinterpret_cast<const float*>(x), x_stride, reinterpret_cast<const float*>(w),
                        reinterpret_cast<const float*>(bias), reinterpret_cast<float*>(y), y_stride, M, K, n0, n1);
    });
}

void linear_int8_cpu(uintptr_t x, int64_t x_stride, uintptr_t w, uintptr_t scale, uintptr_t bias, uintptr_t y,
                     int64_t y_stride, int64_t M, int64_t N, int64_t K, bool bf16, int num_threads) {
    const auto* wq = reinterpret_cast<const int8_t*>(w);
    const auto* s = reinterpret_cast<const float*>(scale);
    over_columns(N, N * K, num_threads, [&](int64_t n0, int64_t n1) {
        if (bf16)
            columns_bf16_int8(reinterpret_cast<const uint16_t*>(x), x_stride, wq, s,
                              reinterpret_cast<const uint16_t*>(bias), reinterpret_cast<uint16_t*>(y), y_stride,
                              M, K, n0, n1);
        else
            columns_f32_int8(reinterpret_cast<const float*>(x), x_stride, wq, s, reinterpret_cast<const float*>(bias),
                             reinterpret_cast<float*>(y), y_stride, M, K, n0, n1);
    });
}

}  // namespace

void register_linear_cpu(pybind11::module_& m) {
    m.def(
        "linear_small_cpu",
        [](uintptr_t x, int64_t x_stride, uintptr_t w, uintptr_t bias, uintptr_t y, int64_t y_stride, int64_t M,
           int64_t N, int64_t K, bool bf16, int num_threads) {
            pybind11::gil_scoped_release release;
            linear_small_cpu(x, x_stride, w, bias, y, y_stride, M, N, K, bf16, num_threads);
        },
        "y = x @ w.T + bias for small M on CPU (raw pointers; use hpo_engine.kernels.linear)");
    m.def(
        "linear_int8_cpu",
        [](uintptr_t x, int64_t x_stride, uintptr_t w, uintptr_t scale, uintptr_t bias, uintptr_t y,
           int64_t y_stride, int64_t M, int64_t N, int64_t K, bool bf16, int num_threads) {
            pybind11::gil_scoped_release release;
            linear_int8_cpu(x, x_stride, w, scale, bias, y, y_stride, M, N, K, bf16, num_threads);
        },
        "y = (x @ w_int8.T) * scale + bias on CPU (raw pointers; use hpo_engine.kernels.linear_int8)");
}
