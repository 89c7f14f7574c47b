// Decode-sized linear layer with int8 weights AND int8 activations (W8A8) on CPU, for M <= 64 rows:
//   x [M, K] float32 or bfloat16 is quantized per row in blocks of 64 (scale s = max|block| / 127,
//   q = round-half-even(x / s)), then y[m, n] = wscale[n] * sum_b s[m, b] * (xq[m, b, :] . w[n, b, :])
//   + bias[n], the block dots exact in int32. Python wrapper and reference: hpo_engine/kernels/cpu_linear.py
//   (`linear_w8a8`, `linear_w8a8_ref`).
//
// Why: the weight-only kernel (linear_cpu.cpp) widens every int8 weight to float (3 instructions per
// 16 weights) before its FMA and is compute-bound at about 9 G weights/s per core, below what memory
// delivers (bench/RESULTS.md). AVX512-VNNI's vpdpbusd multiplies 64 byte pairs and adds them into 16
// int32 lanes in one instruction. It takes unsigned x signed bytes, so the weights enter as w ^ 0x80 =
// w + 128 (unsigned) and each lane's accumulator starts at -128 * (its 4 activations' sum), which
// cancels the offset exactly. Per block and weight row that is xor, vpdpbusd, convert, FMA.
// This is the arithmetic of llama.cpp's Q8_0 x Q8_0 dot (activations quantized per block at run time).
//
// A K that is not a multiple of 64 ends in a partial block: its activations are padded with zeros and
// the weight bytes past the row are masked to zero on load, so they contribute nothing.
// Without VNNI (or when the caller asks, to test it) the same integer sums are computed by a plain loop;
// the two agree up to the order of the float additions.
#include "registry.h"
#include "simd.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <vector>

namespace {

constexpr int64_t kBlock = 64;
constexpr int kRows = 4;                        // weight rows per step (they share each activation load)
constexpr int64_t kMinParallelBytes = 1 << 18;  // below this much weight one thread beats the fork

struct Activations {            // x quantized: per row, nb blocks of 64 int8 (zero-padded)
    int64_t nb;
    std::vector<int8_t> q;      // [M, nb * 64]
    std::vector<float> scale;   // [M, nb]
    std::vector<int32_t> neg;   // [M, nb, 16]: -128 * (sum of lane j's 4 activations)
};

template <typename E>
void quantize_rows(const E* x, int64_t xs, int64_t M, int64_t K, Activations& a) {
    a.nb = (K + kBlock - 1) / kBlock;
    a.q.assign(M * a.nb * kBlock, 0);
    a.scale.assign(M * a.nb, 0.f);
    a.neg.assign(M * a.nb * 16, 0);
    for (int64_t m = 0; m < M; ++m)
        for (int64_t b = 0; b < a.nb; ++b) {
            const int64_t k0 = b * kBlock, k1 = std::min(K, k0 + kBlock);
            float amax = 0.f;
            for (int64_t k = k0; k < k1; ++k) amax = std::max(amax, std::fabs(to_float(x[m * xs + k])));
            const float s = amax > 0.f ? amax / 127.f : 1.f;
            a.scale[m * a.nb + b] = s;
            int8_t* q = a.q.data() + (m * a.nb + b) * kBlock;
            int32_t* neg = a.neg.data() + (m * a.nb + b) * 16;
            for (int64_t k = k0; k < k1; ++k) {
                const float v = std::nearbyint(to_float(x[m * xs + k]) / s);   // round half to even
                q[k - k0] = static_cast<int8_t>(std::max(-127.f, std::min(127.f, v)));
                neg[(k - k0) / 4] -= 128 * q[k - k0];
            }
        }
}

template <typename E>
HPO_INLINE void finish(float acc, const float* wscale, const E* bias, E* y, int64_t n) {
    float v = acc * wscale[n];
    if (bias) v += to_float(bias[n]);
    store(y + n, v);
}

// Weight rows n .. n + R against activation rows m .. m + MT: each block's R weight vectors are loaded
// (and offset) once for the MT rows; MT * R float accumulators of 16 lanes, summed at the end.
template <typename E, int MT, int R>
__attribute__((target("avx512f,avx512bw,avx512vnni"))) HPO_INLINE
void tile_vnni(const Activations& a, const int8_t* w, const float* wscale, const E* bias, E* y, int64_t ys,
               int64_t K, int64_t m, int64_t n) {
    const int64_t nb = a.nb, full = K / kBlock;          // full: blocks whose weight bytes all lie in the row
    const __mmask64 tail = K % kBlock ? (~0ULL >> (kBlock - K % kBlock)) : 0;
    const __m512i offset = _mm512_set1_epi8(static_cast<char>(0x80));
    __m512 acc[MT][R];
    for (int i = 0; i < MT; ++i)
        for (int r = 0; r < R; ++r) acc[i][r] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
        __m512i wv[R];
        for (int r = 0; r < R; ++r) {
            const int8_t* wr = w + (n + r) * K + b * kBlock;
            wv[r] = _mm512_xor_si512(b < full ? _mm512_loadu_si512(wr) : _mm512_maskz_loadu_epi8(tail, wr), offset);
        }
        for (int i = 0; i < MT; ++i) {
            const int64_t row = (m + i) * nb + b;
            const __m512i xv = _mm512_loadu_si512(a.q.data() + row * kBlock);
            const __m512i start = _mm512_loadu_si512(a.neg.data() + row * 16);
            const __m512 s = _mm512_set1_ps(a.scale[row]);
            for (int r = 0; r < R; ++r)
                acc[i][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(start, wv[r], xv)), s, acc[i][r]);
        }
    }
    for (int i = 0; i < MT; ++i)
        for (int r = 0; r < R; ++r) finish(_mm512_reduce_add_ps(acc[i][r]), wscale, bias, y + (m + i) * ys, n + r);
}

template <typename E, int R>
__attribute__((target("avx512f,avx512bw,avx512vnni"))) HPO_INLINE
void rows_vnni(const Activations& a, const int8_t* w, const float* wscale, const E* bias, E* y, int64_t ys,
               int64_t M, int64_t K, int64_t n) {
    int64_t m = 0;
    for (; m + 4 <= M; m += 4) tile_vnni<E, 4, R>(a, w, wscale, bias, y, ys, K, m, n);
    switch (M - m) {
        case 1: tile_vnni<E, 1, R>(a, w, wscale, bias, y, ys, K, m, n); break;
        case 2: tile_vnni<E, 2, R>(a, w, wscale, bias, y, ys, K, m, n); break;
        case 3: tile_vnni<E, 3, R>(a, w, wscale, bias, y, ys, K, m, n); break;
        default: break;
    }
}

template <typename E>
__attribute__((target("avx512f,avx512bw,avx512vnni")))
void columns_vnni(const Activations& a, const int8_t* w, const float* wscale, const E* bias, E* y, int64_t ys,
                  int64_t M, int64_t K, int64_t n0, int64_t n1) {
    int64_t n = n0;
    for (; n + kRows <= n1; n += kRows) rows_vnni<E, kRows>(a, w, wscale, bias, y, ys, M, K, n);
    for (; n < n1; ++n) rows_vnni<E, 1>(a, w, wscale, bias, y, ys, M, K, n);
}

// The same sums without VNNI: exact int32 block dots, then the float block sum in block order.
template <typename E>
HPO_CLONES void columns_plain(const Activations& a, const int8_t* w, const float* wscale, const E* bias, E* y,
                              int64_t ys, int64_t M, int64_t K, int64_t n0, int64_t n1) {
    for (int64_t m = 0; m < M; ++m) {
        const int8_t* xq = a.q.data() + m * a.nb * kBlock;
        for (int64_t n = n0; n < n1; ++n) {
            float acc = 0.f;
            for (int64_t b = 0; b < a.nb; ++b) {
                const int64_t k0 = b * kBlock, len = std::min(kBlock, K - k0);
                int32_t dot = 0;
                for (int64_t k = 0; k < len; ++k) dot += int32_t{xq[b * kBlock + k]} * int32_t{w[n * K + k0 + k]};
                acc += static_cast<float>(dot) * a.scale[m * a.nb + b];
            }
            finish(acc, wscale, bias, y + m * ys, n);
        }
    }
}

template <typename E>
void run(const E* x, int64_t xs, const int8_t* w, const float* wscale, const E* bias, E* y, int64_t ys, int64_t M,
         int64_t N, int64_t K, bool vnni, int num_threads) {
    Activations a;
    quantize_rows(x, xs, M, K, a);
    auto columns = [&](int64_t n0, int64_t n1) {
        if (vnni)
            columns_vnni(a, w, wscale, bias, y, ys, M, K, n0, n1);
        else
            columns_plain(a, w, wscale, bias, y, ys, M, K, n0, n1);
    };
    const int threads = N * K < kMinParallelBytes ? 1
                      : static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(num_threads, N / kRows)));
    if (threads <= 1) {
        columns(0, N);
        return;
    }
    const int64_t groups = N / kRows;
    #pragma omp parallel for schedule(static, 1) num_threads(threads)
    for (int t = 0; t < threads; ++t) {
        const int64_t n0 = groups * t / threads * kRows;
        const int64_t n1 = t + 1 == threads ? N : groups * (t + 1) / threads * kRows;
        columns(n0, n1);
    }
}

bool has_vnni() {
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vnni");
}

}  // namespace

void register_linear_w8a8_cpu(pybind11::module_& m) {
    m.def(
        "linear_w8a8_cpu",
        [](uintptr_t x, int64_t x_stride, uintptr_t w, uintptr_t scale, uintptr_t bias, uintptr_t y,
           int64_t y_stride, int64_t M, int64_t N, int64_t K, bool bf16, bool vnni, int num_threads) {
            if (vnni && !has_vnni()) throw std::invalid_argument("linear_w8a8_cpu: this CPU has no AVX512-VNNI");
            pybind11::gil_scoped_release release;
            const auto* wq = reinterpret_cast<const int8_t*>(w);
            const auto* s = reinterpret_cast<const float*>(scale);
            if (bf16)
                run(reinterpret_cast<const uint16_t*>(x), x_stride, wq, s, reinterpret_cast<const uint16_t*>(bias),
                    reinterpret_cast<uint16_t*>(y), y_stride, M, N, K, vnni, num_threads);
            else
                run(reinterpret_cast<const float*>(x), x_stride, wq, s, reinterpret_cast<const float*>(bias),
                    reinterpret_cast<float*>(y), y_stride, M, N, K, vnni, num_threads);
        },
        "y = W8A8(x, w_int8) * scale + bias on CPU, x quantized per 64-block (raw pointers; use "
        "hpo_engine.kernels.linear_w8a8)");
    m.def("linear_w8a8_has_vnni", has_vnni, "whether linear_w8a8_cpu may take its AVX512-VNNI path");
}
