// OmniSTEval SoftSegmenter word alignment (Papi/Polak et al. 2025, "Better Late Than Never"):
// a Needleman-Wunsch style DP that maximises summed similarity with free gaps.
#pragma once
#include <cstdint>
#include <vector>

namespace hpo {

// One side of the alignment: per unit a token id (equal ids = equal text), a punctuation flag,
// and the unit's character set as a bitmask of `words_per_mask` uint64 (char ids of both sides).
struct SoftUnits {
    std::vector<int32_t> token;
    std::vector<uint8_t> is_punct;
    std::vector<uint64_t> char_mask;  // size() == token.size() * words_per_mask
};

// Returns the alignment path in forward order as pairs (ref index or -1, hyp index or -1).
// char_level: similarity is exact token equality; otherwise Jaccard of character sets.
// Punctuation against non-punctuation scores -inf. Ties: match > deletion > insertion.
// max_simd = 0 forces the portable row-wise loop (to test the AVX-512 sweep against it).
std::vector<std::pair<int64_t, int64_t>> soft_align(const SoftUnits& ref, const SoftUnits& hyp,
                                                    int words_per_mask, bool char_level,
                                                    int max_simd = 2);

// The AVX-512 anti-diagonal sweep; false (path untouched) when the CPU lacks AVX-512 VPOPCNTDQ
// or the masks are wider than 2 words.
bool soft_align_avx512(const SoftUnits& ref, const SoftUnits& hyp, int words_per_mask,
                       bool char_level, std::vector<std::pair<int64_t, int64_t>>& path);

}  // namespace hpo
