// BLEU statistics: per sentence and order, the n-grams of both sides are packed into 128-bit keys
// (four 32-bit ids), sorted, and merged to count clipped matches. Exact integer counts.
#include "bleu_stats.h"

#include <algorithm>
#include <stdexcept>

namespace hpo {

namespace {

struct Key {
    uint64_t hi, lo;
    bool operator<(const Key& o) const { return hi != o.hi ? hi < o.hi : lo < o.lo; }
    bool operator==(const Key& o) const { return hi == o.hi && lo == o.lo; }
};

void ngram_keys(const int32_t* t, int64_t len, int n, std::vector<Key>& out) {
    out.clear();
    for (int64_t i = 0; i + n <= len; ++i) {
        uint64_t w[4] = {0, 0, 0, 0};
        for (int k = 0; k < n; ++k) w[k] = static_cast<uint32_t>(t[i + k]);
        out.push_back(Key{(w[0] << 32) | w[1], (w[2] << 32) | w[3]});
    }
    std::sort(out.begin(), out.end());
}

// sum over distinct n-grams g of min(count_hyp(g), count_ref(g)); both inputs sorted
int64_t clipped_matches(const std::vector<Key>& hyp, const std::vector<Key>& ref) {
    int64_t matches = 0;
    size_t a = 0, b = 0;
    while (a < hyp.size() && b < ref.size()) {
        if (hyp[a] < ref[b]) {
            ++a;
        } else if (ref[b] < hyp[a]) {
            ++b;
        } else {
            const Key g = hyp[a];
            int64_t ca = 0, cb = 0;
            while (a < hyp.size() && hyp[a] == g) ++a, ++ca;
            while (b < ref.size() && ref[b] == g) ++b, ++cb;
            matches += std::min(ca, cb);
        }
    }
    return matches;
}

}  // namespace

std::vector<int64_t> bleu_corpus_stats(const std::vector<int32_t>& hyp_tokens,
                                       const std::vector<int64_t>& hyp_offsets,
                                       const std::vector<int32_t>& ref_tokens,
                                       const std::vector<int64_t>& ref_offsets, int max_order) {
    if (max_order < 1 || max_order > 4) throw std::invalid_argument("max_order must be 1..4");
    if (hyp_offsets.size() != ref_offsets.size() || hyp_offsets.empty())
        throw std::invalid_argument("hypothesis and reference offsets must have the same size > 0");
    std::vector<int64_t> stats(2 + 2 * max_order, 0);
    std::vector<Key> hk, rk;
    for (size_t s = 0; s + 1 < hyp_offsets.size(); ++s) {
        const int32_t* h = hyp_tokens.data() + hyp_offsets[s];
        const int32_t* r = ref_tokens.data() + ref_offsets[s];
        const int64_t hl = hyp_offsets[s + 1] - hyp_offsets[s];
        const int64_t rl = ref_offsets[s + 1] - ref_offsets[s];
        stats[0] += hl;
        stats[1] += rl;
        for (int n = 1; n <= max_order; ++n) {
            stats[2 + max_order + n - 1] += std::max<int64_t>(0, hl - n + 1);
            if (hl < n || rl < n) continue;
            ngram_keys(h, hl, n, hk);
            ngram_keys(r, rl, n, rk);
            stats[2 + n - 1] += clipped_matches(hk, rk);
        }
    }
    return stats;
}

}  // namespace hpo
