// Corpus BLEU sufficient statistics (Papineni et al. 2002) from integer token ids, one reference
// per hypothesis: the same counts sacrebleu sums (clipped n-gram matches and n-gram totals).
#pragma once
#include <cstdint>
#include <vector>

namespace hpo {

// Sentences are slices tokens[offsets[k] : offsets[k+1]]. Returns
// [hyp_len, ref_len, correct_1..correct_N, total_1..total_N] summed over the corpus.
std::vector<int64_t> bleu_corpus_stats(const std::vector<int32_t>& hyp_tokens,
                                       const std::vector<int64_t>& hyp_offsets,
                                       const std::vector<int32_t>& ref_tokens,
                                       const std::vector<int64_t>& ref_offsets, int max_order);

}  // namespace hpo
