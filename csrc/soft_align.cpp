// SoftSegmenter alignment DP: two rows of scores (linear memory) plus a 2-bit operation per cell
// for the backtrace. Scores are summed in the same order as OmniSTEval so they are bit-identical.
#include "soft_align.h"

#include <algorithm>
#include <limits>
#include <stdexcept>

namespace hpo {

namespace {
enum Op : uint8_t { kMatch = 0, kDelete = 1, kInsert = 2 };

// 2 bits per cell, rows of (m) cells.
class OpTable {
  public:
    OpTable(size_t rows, size_t cols) : cols_(cols), bits_((rows * cols + 3) / 4, 0) {}
    void set(size_t i, size_t j, uint8_t op) {
        const size_t k = i * cols_ + j;
        bits_[k >> 2] |= static_cast<uint8_t>(op << ((k & 3) * 2));
    }
    uint8_t get(size_t i, size_t j) const {
        const size_t k = i * cols_ + j;
        return (bits_[k >> 2] >> ((k & 3) * 2)) & 3;
    }

  private:
    size_t cols_;
    std::vector<uint8_t> bits_;
};
}  // namespace

std::vector<std::pair<int64_t, int64_t>> soft_align(const SoftUnits& ref, const SoftUnits& hyp,
                                                    int words_per_mask, bool char_level,
                                                    int max_simd) {
    const size_t n = ref.token.size() + 1;
    const size_t m = hyp.token.size() + 1;
    const size_t W = static_cast<size_t>(words_per_mask);
    if (ref.is_punct.size() != n - 1 || hyp.is_punct.size() != m - 1 ||
        ref.char_mask.size() != (n - 1) * W || hyp.char_mask.size() != (m - 1) * W)
        throw std::invalid_argument("soft_align: inconsistent unit arrays");
    const double NEG_INF = -std::numeric_limits<double>::infinity();
    if (max_simd >= 2) {
        std::vector<std::pair<int64_t, int64_t>> path;
        if (soft_align_avx512(ref, hyp, words_per_mask, char_level, path)) return path;
    }

    std::vector<int32_t> ref_card(n - 1, 0), hyp_card(m - 1, 0);
    for (size_t i = 0; i + 1 < n; ++i)
        for (size_t w = 0; w < W; ++w) ref_card[i] += __builtin_popcountll(ref.char_mask[i * W + w]);
    for (size_t j = 0; j + 1 < m; ++j)
        for (size_t w = 0; w < W; ++w) hyp_card[j] += __builtin_popcountll(hyp.char_mask[j * W + w]);

    // Jaccard values inter / union for small unions, divided once (bit-identical to dividing
    // in the loop, which keeps the division off the per-cell path)
    const int32_t max_union = static_cast<int32_t>(64 * W);
    const bool use_table = !char_level && W <= 4;
    std::vector<double> jaccard;
    if (use_table) {
        jaccard.assign(static_cast<size_t>(max_union + 1) * (max_union + 1), 0.0);
        for (int32_t u = 1; u <= max_union; ++u)
            for (int32_t k = 0; k <= u; ++k)
                jaccard[static_cast<size_t>(k) * (max_union + 1) + u] =
                    static_cast<double>(k) / static_cast<double>(u);
    }

    OpTable ops(n, m);
    std::vector<double> prev(m, 0.0), cur(m, 0.0);
    for (size_t i = 1; i < n; ++i) {
        cur[0] = 0.0;
        const bool rp = ref.is_punct[i - 1];
        const int32_t rt = ref.token[i - 1];
        const uint64_t* rmask = ref.char_mask.data() + (i - 1) * W;
        for (size_t j = 1; j < m; ++j) {
            double sim;
            if (rp != static_cast<bool>(hyp.is_punct[j - 1])) {
                sim = NEG_INF;
            } else if (char_level) {
                sim = (rt == hyp.token[j - 1]) ? 1.0 : 0.0;
            } else {
                const uint64_t* hmask = hyp.char_mask.data() + (j - 1) * W;
                int32_t inter = 0;
                for (size_t w = 0; w < W; ++w) inter += __builtin_popcountll(rmask[w] & hmask[w]);
                const int32_t uni = ref_card[i - 1] + hyp_card[j - 1] - inter;
                if (use_table)
                    sim = jaccard[static_cast<size_t>(inter) * (max_union + 1) + uni];
                else
                    sim = uni ? static_cast<double>(inter) / static_cast<double>(uni) : 0.0;
            }
            const double match = prev[j - 1] + sim;
            const double del = prev[j];
            const double ins = cur[j - 1];
            if (match >= del && match >= ins) {
                cur[j] = match;  // kMatch == 0: nothing to store
            } else if (del >= ins) {
                cur[j] = del;
                ops.set(i, j, kDelete);
            } else {
                cur[j] = ins;
                ops.set(i, j, kInsert);
            }
        }
        std::swap(prev, cur);
    }

    std::vector<std::pair<int64_t, int64_t>> path;
    path.reserve(n + m);
    size_t i = n - 1, j = m - 1;
    while (i > 0 || j > 0) {
        const uint8_t op = (i == 0) ? kInsert : (j == 0) ? kDelete : ops.get(i, j);
        if (op == kMatch) {
            path.emplace_back(static_cast<int64_t>(i - 1), static_cast<int64_t>(j - 1));
            --i;
            --j;
        } else if (op == kDelete) {
            path.emplace_back(static_cast<int64_t>(i - 1), -1);
            --i;
        } else {
            path.emplace_back(-1, static_cast<int64_t>(j - 1));
            --j;
        }
    }
    std::reverse(path.begin(), path.end());
    return path;
}

}  // namespace hpo
