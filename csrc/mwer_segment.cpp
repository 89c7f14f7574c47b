// mWER segmentation DP over the concatenated references (a segment marker after each sentence)
// and the hypothesis. Each cell depends only on its up / left / diagonal neighbours, so the DP is
// swept by anti-diagonals: the cells of one anti-diagonal are independent and the loop vectorises
// (AVX-512 or AVX2 when the CPU has them). Working memory is three anti-diagonals (linear in the reference
// length); the backtrace needs one boundary pointer per (sentence, hypothesis token).
// Tie-breaking, the first row / column and the marker rows follow MWERAlign exactly, because the
// chosen boundaries (and hence every StreamLAAL number) depend on them.
#include "mwer_segment.h"

#include <algorithm>
#include <stdexcept>

namespace hpo {

namespace {

// Interior cells i = lo..hi of anti-diagonal d (column j = d - i). Arrays are indexed by the
// reference row i: *1 is diagonal d-1, *2 is d-2, *0 is written. hyp_rev[hyp_offset + i] is the
// hypothesis token of column j. Marker rows get a (wrong) ordinary value here; the caller
// overwrites them. MWERAlign's choice: a substitution must be strictly cheaper than a deletion,
// a deletion wins ties with an insertion.
#define HPO_MWER_DIAGONAL_BODY                                                          \
    for (size_t i = lo; i <= hi; ++i) {                                                 \
        const T del = static_cast<T>(c1[i - 1] + 1), ins = static_cast<T>(c1[i] + 1);   \
        const T sub = static_cast<T>(c2[i - 1] + (ref[i - 1] != hyp_rev[hyp_offset + i] ? 1 : 0)); \
        const bool s_lt_d = sub < del, s_lt_i = sub < ins, d_le_i = del <= ins;         \
        c0[i] = s_lt_d ? (s_lt_i ? sub : ins) : (d_le_i ? del : ins);                   \
        b0[i] = s_lt_d ? (s_lt_i ? b2[i - 1] : b1[i]) : (d_le_i ? b1[i - 1] : b1[i]);   \
    }

#define HPO_MWER_DIAGONAL_ARGS                                                            \
    T *__restrict c0, T *__restrict b0, const T *__restrict c1, const T *__restrict b1,  \
        const T *__restrict c2, const T *__restrict b2, const int32_t *__restrict ref,    \
        const int32_t *__restrict hyp_rev, size_t hyp_offset, size_t lo, size_t hi

template <typename T>
__attribute__((target("avx512f,avx512vl,avx512bw,prefer-vector-width=512")))
void diagonal_avx512(HPO_MWER_DIAGONAL_ARGS) { HPO_MWER_DIAGONAL_BODY }
template <typename T>
__attribute__((target("avx2"))) void diagonal_avx2(HPO_MWER_DIAGONAL_ARGS) { HPO_MWER_DIAGONAL_BODY }
template <typename T>
void diagonal_generic(HPO_MWER_DIAGONAL_ARGS) { HPO_MWER_DIAGONAL_BODY }

// The whole sweep with costs and boundary pointers of type T (uint16_t when every cost and
// hypothesis position fits, which halves the memory traffic; uint32_t otherwise).
template <typename T>
void sweep(const std::vector<int32_t>& ref_ids, const std::vector<int32_t>& hyp_rev,
           const std::vector<uint32_t>& marker_rows, int simd, std::vector<uint32_t>& boundary) {
    const size_t I = ref_ids.size(), J = hyp_rev.size();
    std::vector<T> cost_buf[3], bp_buf[3];
    for (int k = 0; k < 3; ++k) {
        cost_buf[k].assign(I + 1, 0);
        bp_buf[k].assign(I + 1, 0);
    }
    T *c0 = cost_buf[0].data(), *c1 = cost_buf[1].data(), *c2 = cost_buf[2].data();
    T *b0 = bp_buf[0].data(), *b1 = bp_buf[1].data(), *b2 = bp_buf[2].data();
    for (size_t d = 1; d <= I + J; ++d) {  // c1/b1 hold diagonal 0 (the cell (0,0) = 0) first
        if (d <= J) c0[0] = static_cast<T>(d), b0[0] = 0;  // row 0: cost j
        if (d <= I) c0[d] = static_cast<T>(d), b0[d] = 0;  // column 0: cost i (markers too)
        const size_t lo = d > J ? d - J : 1;
        const size_t hi = std::min(I, d - 1);
        if (lo <= hi) {
            const size_t offset = J - d;  // unsigned wrap-around is undone by i >= d - J
            if (simd == 2)
                diagonal_avx512<T>(c0, b0, c1, b1, c2, b2, ref_ids.data(), hyp_rev.data(), offset, lo, hi);
            else if (simd == 1)
                diagonal_avx2<T>(c0, b0, c1, b1, c2, b2, ref_ids.data(), hyp_rev.data(), offset, lo, hi);
            else
                diagonal_generic<T>(c0, b0, c1, b1, c2, b2, ref_ids.data(), hyp_rev.data(), offset, lo, hi);
            // marker rows: copy the cell above at no cost, record and restart the boundary pointer
            auto it = std::lower_bound(marker_rows.begin(), marker_rows.end(), static_cast<uint32_t>(lo));
            for (; it != marker_rows.end() && *it <= hi; ++it) {
                const size_t i = *it, j = d - i;
                const size_t s = static_cast<size_t>(it - marker_rows.begin());
                boundary[s * (J + 1) + j] = b1[i - 1];
                c0[i] = c1[i - 1];
                b0[i] = static_cast<T>(j);
            }
        }
        std::swap(c2, c1), std::swap(c1, c0);
        std::swap(b2, b1), std::swap(b1, b0);
    }
}

}  // namespace

std::vector<int64_t> mwer_segment_ends(const std::vector<int32_t>& ref_ids,
                                       const std::vector<int32_t>& hyp_ids, int32_t marker,
                                       int max_simd, bool narrow) {
    const size_t I = ref_ids.size();
    const size_t J = hyp_ids.size();
    if (I == 0 || ref_ids.back() != marker)
        throw std::invalid_argument("reference ids must end with the segment marker");
    std::vector<uint32_t> marker_rows;  // rows i (1-based) holding a marker, ascending
    for (size_t i = 1; i <= I; ++i)
        if (ref_ids[i - 1] == marker) marker_rows.push_back(static_cast<uint32_t>(i));
    const size_t S = marker_rows.size();
    std::vector<int64_t> ends(S, 0);
    if (J == 0) return ends;
    for (int32_t h : hyp_ids)
        if (h == marker) throw std::invalid_argument("hypothesis ids must not use the marker id");

    std::vector<int32_t> hyp_rev(J);
    for (size_t k = 0; k < J; ++k) hyp_rev[k] = hyp_ids[J - 1 - k];
    // boundary pointers BP[j][s] stored as [s][j]; j = 0 stays 0 (as MWERAlign pre-sizes it)
    std::vector<uint32_t> boundary((J + 1) * S, 0);
    int simd = 0;
    if (max_simd >= 2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl"))
        simd = 2;
    else if (max_simd >= 1 && __builtin_cpu_supports("avx2"))
        simd = 1;
    // costs never exceed I + J and positions never exceed J
    if (narrow && I + J + 1 < 0xFFFF)
        sweep<uint16_t>(ref_ids, hyp_rev, marker_rows, simd, boundary);
    else
        sweep<uint32_t>(ref_ids, hyp_rev, marker_rows, simd, boundary);

    // Backtrace: BP[k][s] is where sentence s-1 ends on the best path ending sentence s at k.
    size_t k = J;
    ends[S - 1] = static_cast<int64_t>(J);
    for (size_t s = S; s >= 1; --s) {
        const uint32_t b = boundary[(s - 1) * (J + 1) + k];
        if (s >= 2) ends[s - 2] = b;
        k = b;
    }
    return ends;
}

}  // namespace hpo
