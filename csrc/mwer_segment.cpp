// mWER segmentation DP. One Levenshtein column over the concatenated references (with a
// segment marker after each sentence) per hypothesis token, so the working memory is linear in
// the reference length; the backtrace needs one boundary pointer per (hyp token, sentence).
// Tie-breaking, the cost of the first column and the marker handling follow MWERAlign exactly,
// because the chosen boundaries (and hence every StreamLAAL number) depend on them.
#include "mwer_segment.h"

#include <stdexcept>

namespace hpo {

namespace {
struct Cell {
    uint32_t cost;
    uint32_t bp;  // hypothesis position at which the path last crossed a segment marker
};
}  // namespace

std::vector<int64_t> mwer_segment_ends(const std::vector<int32_t>& ref_ids,
                                       const std::vector<int32_t>& hyp_ids, int32_t marker) {
    const size_t I = ref_ids.size();
    const size_t J = hyp_ids.size();
    size_t S = 0;
    for (int32_t r : ref_ids) S += (r == marker);
    if (I == 0 || ref_ids.back() != marker)
        throw std::invalid_argument("reference ids must end with the segment marker");
    std::vector<int64_t> ends(S, 0);
    if (J == 0) return ends;

    // m[i]: column j-1 for rows >= i, column j for rows < i-1 (rolling single column).
    std::vector<Cell> m(I + 1);
    for (size_t i = 0; i <= I; ++i) m[i] = Cell{static_cast<uint32_t>(i), 0};
    // boundary pointers BP[j][s] (s = 1..S), row j = 0 stays 0 (MWERAlign pre-sizes it).
    std::vector<uint32_t> bp_table((J + 1) * S, 0);

    for (size_t j = 1; j <= J; ++j) {
        const int32_t h = hyp_ids[j - 1];
        m[0] = Cell{static_cast<uint32_t>(j - 1), 0};
        Cell cur{static_cast<uint32_t>(j), 0};
        uint32_t* bp_row = bp_table.data() + j * S;
        size_t s = 0;
        for (size_t i = 1; i <= I; ++i) {
            const int32_t r = ref_ids[i - 1];
            if (r == marker) {
                // segment end: the marker row copies the row above at no cost
                m[i - 1] = cur;
                bp_row[s++] = cur.bp;
                cur.bp = static_cast<uint32_t>(j);
                continue;
            }
            const uint32_t del = cur.cost + 1;
            const uint32_t ins = m[i].cost + 1;
            const uint32_t sub = m[i - 1].cost + (r != h ? 1u : 0u);
            Cell next;
            if (sub < del) {  // MWERAlign: a substitution must be strictly cheaper
                next = (sub < ins) ? Cell{sub, m[i - 1].bp} : Cell{ins, m[i].bp};
            } else if (del <= ins) {
                next = Cell{del, cur.bp};
            } else {
                next = Cell{ins, m[i].bp};
            }
            m[i - 1] = cur;
            cur = next;
        }
        m[I] = cur;
    }

    // Backtrace: boundary[s] = BP[k][s] is where sentence s-1 ends; k follows it.
    size_t k = J;
    ends[S - 1] = static_cast<int64_t>(J);
    for (size_t s = S; s >= 1; --s) {
        const uint32_t b = bp_table[k * S + (s - 1)];
        if (s >= 2) ends[s - 2] = b;
        k = b;
    }
    return ends;
}

}  // namespace hpo
