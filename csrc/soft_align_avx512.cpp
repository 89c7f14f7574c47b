// SoftSegmenter DP swept by anti-diagonals with AVX-512 (8 cells per step): the cells of one
// anti-diagonal are independent, which removes the serial max-chain of the row-wise loop. Every
// cell computes exactly the row-wise loop's IEEE operations (popcounts, one division, one addition,
// the same comparisons), so scores and tie-breaks are bit-identical. The two operation bits of a
// cell go to two bit planes, stored diagonal by diagonal (2 bits per cell in all).
#include <immintrin.h>

#include <algorithm>
#include <limits>

#include "soft_align.h"

namespace hpo {

namespace {

struct Side {  // one side's unit features (hypothesis side reversed), widened to 64-bit lanes on load
    std::vector<int32_t> token;
    std::vector<uint8_t> punct, card;
    std::vector<uint64_t> mask0, mask1;
};

Side make_side(const SoftUnits& u, int W, bool reversed) {
    const size_t k = u.token.size();
    Side s;
    s.token.resize(k), s.punct.resize(k), s.card.resize(k), s.mask0.resize(k), s.mask1.resize(k);
    for (size_t a = 0; a < k; ++a) {
        const size_t b = reversed ? k - 1 - a : a;
        s.token[a] = u.token[b];
        s.punct[a] = u.is_punct[b] ? 1 : 0;
        s.mask0[a] = W >= 1 ? u.char_mask[b * W] : 0;
        s.mask1[a] = W >= 2 ? u.char_mask[b * W + 1] : 0;
        s.card[a] = static_cast<uint8_t>(__builtin_popcountll(s.mask0[a]) + __builtin_popcountll(s.mask1[a]));
    }
    return s;
}

template <int W>  // 0: character level (token equality), 1 or 2: mask words
__attribute__((target("avx512f,avx512dq,avx512vl,avx512bw,avx512vpopcntdq")))
void sweep(const Side& r, const Side& h, size_t n, size_t m,
           std::vector<uint8_t>& del_plane, std::vector<uint8_t>& ins_plane,
           std::vector<size_t>& diag_start) {
    std::vector<double> buf[3];
    for (auto& b : buf) b.assign(n + 8, 0.0);
    double *D0 = buf[0].data(), *D1 = buf[1].data(), *D2 = buf[2].data();
    const __m512d neg_inf = _mm512_set1_pd(-std::numeric_limits<double>::infinity());
    const __m512d zero = _mm512_setzero_pd(), one = _mm512_set1_pd(1.0);
    const size_t last = (n - 1) + (m - 1);
    diag_start.assign(last + 2, 0);
    size_t total = 0;
    for (size_t d = 2; d <= last; ++d) {  // interior sizes -> byte offsets of each diagonal
        const size_t lo = d > m - 1 ? d - (m - 1) : 1, hi = std::min(n - 1, d - 1);
        diag_start[d] = total;
        if (lo <= hi) total += (hi - lo + 8) / 8;
    }
    del_plane.assign(total + 1, 0), ins_plane.assign(total + 1, 0);
    for (size_t d = 1; d <= last; ++d) {
        D0[0] = 0.0;  // cell (0, d)
        if (d <= n - 1) D0[d] = 0.0;  // cell (d, 0)
        const size_t lo = d > m - 1 ? d - (m - 1) : 1, hi = std::min(n - 1, d - 1);
        if (lo <= hi) {
            const int64_t off = static_cast<int64_t>(m) - 1 - static_cast<int64_t>(d);  // hyp_rev index = off + i
            uint8_t* dp = del_plane.data() + diag_start[d];
            uint8_t* ip = ins_plane.data() + diag_start[d];
            for (size_t i = lo, chunk = 0; i <= hi; i += 8, ++chunk) {
                const size_t left = hi - i + 1;
                const __mmask8 lanes = left >= 8 ? 0xFF : static_cast<__mmask8>((1u << left) - 1);
                const size_t ri = i - 1;
                const size_t hj = static_cast<size_t>(off + static_cast<int64_t>(i));
                const __m512i rp = _mm512_cvtepu8_epi64(_mm_maskz_loadu_epi8(lanes, r.punct.data() + ri));
                const __m512i hp = _mm512_cvtepu8_epi64(_mm_maskz_loadu_epi8(lanes, h.punct.data() + hj));
                __m512d sim;
                if (W == 0) {
                    const __m512i rt = _mm512_cvtepi32_epi64(_mm256_maskz_loadu_epi32(lanes, r.token.data() + ri));
                    const __m512i ht = _mm512_cvtepi32_epi64(_mm256_maskz_loadu_epi32(lanes, h.token.data() + hj));
                    sim = _mm512_mask_blend_pd(_mm512_cmpeq_epi64_mask(rt, ht), zero, one);
                } else {
                    const __m512i rm0 = _mm512_maskz_loadu_epi64(lanes, r.mask0.data() + ri);
                    const __m512i hm0 = _mm512_maskz_loadu_epi64(lanes, h.mask0.data() + hj);
                    __m512i inter = _mm512_popcnt_epi64(_mm512_and_si512(rm0, hm0));
                    if (W == 2) {
                        const __m512i rm1 = _mm512_maskz_loadu_epi64(lanes, r.mask1.data() + ri);
                        const __m512i hm1 = _mm512_maskz_loadu_epi64(lanes, h.mask1.data() + hj);
                        inter = _mm512_add_epi64(inter, _mm512_popcnt_epi64(_mm512_and_si512(rm1, hm1)));
                    }
                    const __m512i rc = _mm512_cvtepu8_epi64(_mm_maskz_loadu_epi8(lanes, r.card.data() + ri));
                    const __m512i hc = _mm512_cvtepu8_epi64(_mm_maskz_loadu_epi8(lanes, h.card.data() + hj));
                    const __m512i uni = _mm512_sub_epi64(_mm512_add_epi64(rc, hc), inter);
                    const __mmask8 nonzero = _mm512_test_epi64_mask(uni, uni);
                    // masked-off lanes divide 0 by 1 (no spurious exceptions, result unused)
                    const __m512d num = _mm512_cvtepi64_pd(inter);
                    const __m512d den = _mm512_mask_blend_pd(nonzero, one, _mm512_cvtepi64_pd(uni));
                    sim = _mm512_maskz_div_pd(nonzero, num, den);
                }
                sim = _mm512_mask_blend_pd(_mm512_cmpneq_epi64_mask(rp, hp), sim, neg_inf);
                const __m512d diag = _mm512_maskz_loadu_pd(lanes, D2 + i - 1);
                const __m512d del = _mm512_maskz_loadu_pd(lanes, D1 + i - 1);
                const __m512d ins = _mm512_maskz_loadu_pd(lanes, D1 + i);
                const __m512d match = _mm512_add_pd(diag, sim);
                const __mmask8 take_match = _mm512_cmp_pd_mask(match, del, _CMP_GE_OQ) &
                                            _mm512_cmp_pd_mask(match, ins, _CMP_GE_OQ);
                const __mmask8 take_del = static_cast<__mmask8>(~take_match) & _mm512_cmp_pd_mask(del, ins, _CMP_GE_OQ);
                const __mmask8 take_ins = static_cast<__mmask8>(~(take_match | take_del));
                __m512d best = _mm512_mask_blend_pd(take_del, ins, del);
                best = _mm512_mask_blend_pd(take_match, best, match);
                _mm512_mask_storeu_pd(D0 + i, lanes, best);
                dp[chunk] = take_del & lanes;
                ip[chunk] = take_ins & lanes;
            }
        }
        std::swap(D2, D1), std::swap(D1, D0);
    }
}

}  // namespace

bool soft_align_avx512(const SoftUnits& ref, const SoftUnits& hyp, int words_per_mask, bool char_level,
                       std::vector<std::pair<int64_t, int64_t>>& path) {
    if (!(__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw") &&
          __builtin_cpu_supports("avx512vpopcntdq")))
        return false;
    if (!char_level && (words_per_mask < 1 || words_per_mask > 2)) return false;
    const size_t n = ref.token.size() + 1, m = hyp.token.size() + 1;
    const int W = char_level ? 0 : words_per_mask;
    const Side r = make_side(ref, W, false), h = make_side(hyp, W, true);
    std::vector<uint8_t> del_plane, ins_plane;
    std::vector<size_t> diag_start;
    if (n > 1 && m > 1) {
        if (W == 0)
            sweep<0>(r, h, n, m, del_plane, ins_plane, diag_start);
        else if (W == 1)
            sweep<1>(r, h, n, m, del_plane, ins_plane, diag_start);
        else
            sweep<2>(r, h, n, m, del_plane, ins_plane, diag_start);
    }

    path.clear();
    path.reserve(n + m);
    size_t i = n - 1, j = m - 1;
    while (i > 0 || j > 0) {
        int op;  // 0 match, 1 deletion, 2 insertion
        if (i == 0) {
            op = 2;
        } else if (j == 0) {
            op = 1;
        } else {
            const size_t d = i + j, lo = d > m - 1 ? d - (m - 1) : 1, k = i - lo;
            const size_t byte = diag_start[d] + k / 8, bit = k % 8;
            op = ((del_plane[byte] >> bit) & 1) ? 1 : ((ins_plane[byte] >> bit) & 1) ? 2 : 0;
        }
        if (op == 0) {
            path.emplace_back(static_cast<int64_t>(i - 1), static_cast<int64_t>(j - 1));
            --i, --j;
        } else if (op == 1) {
            path.emplace_back(static_cast<int64_t>(i - 1), -1);
            --i;
        } else {
            path.emplace_back(-1, static_cast<int64_t>(j - 1));
            --j;
        }
    }
    std::reverse(path.begin(), path.end());
    return true;
}

}  // namespace hpo
