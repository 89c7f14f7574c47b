// mWER resegmentation DP (Matusov et al. 2005, the mwerSegmenter `-usecase 1` algorithm
// as implemented by MWERAlign / mweralign with unit costs and no tokenization penalty).
#pragma once
#include <cstdint>
#include <vector>

namespace hpo {

// ref_ids: concatenation of every reference sentence's token ids, each sentence followed by
// `marker`; token ids must be != 0 and != marker. hyp_ids: the hypothesis token ids.
// Returns, for each of the S sentences, the hypothesis position (exclusive) where it ends:
// sentence s holds hyp tokens [ends[s-1], ends[s]) with ends[-1] = 0 and ends[S-1] = J.
// max_simd caps the vector code used (0 portable, 1 AVX2, 2 AVX-512) and narrow = false forces
// 32-bit costs, to test the variants against each other.
std::vector<int64_t> mwer_segment_ends(const std::vector<int32_t>& ref_ids,
                                       const std::vector<int32_t>& hyp_ids, int32_t marker,
                                       int max_simd = 2, bool narrow = true);

}  // namespace hpo
