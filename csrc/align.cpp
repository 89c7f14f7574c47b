// Python bindings of the alignment / resegmentation DPs and BLEU statistics (hpo_engine._C).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bleu_stats.h"
#include "mwer_segment.h"
#include "registry.h"
#include "soft_align.h"

namespace py = pybind11;

void register_align(py::module_& m) {
    m.def(
        "mwer_segment_ends",
        [](const std::vector<int32_t>& ref_ids, const std::vector<int32_t>& hyp_ids, int32_t marker,
           int max_simd, bool narrow) {
            py::gil_scoped_release release;
            return hpo::mwer_segment_ends(ref_ids, hyp_ids, marker, max_simd, narrow);
        },
        py::arg("ref_ids"), py::arg("hyp_ids"), py::arg("marker"), py::arg("max_simd") = 2,
        py::arg("narrow") = true,
        "mWER resegmentation: end position (exclusive) of each reference sentence in the hypothesis.");
    m.def(
        "soft_align",
        [](const std::vector<int32_t>& ref_token, const std::vector<uint8_t>& ref_punct,
           const std::vector<uint64_t>& ref_mask, const std::vector<int32_t>& hyp_token,
           const std::vector<uint8_t>& hyp_punct, const std::vector<uint64_t>& hyp_mask,
           int words_per_mask, bool char_level, int max_simd) {
            hpo::SoftUnits ref{ref_token, ref_punct, ref_mask};
            hpo::SoftUnits hyp{hyp_token, hyp_punct, hyp_mask};
            py::gil_scoped_release release;
            return hpo::soft_align(ref, hyp, words_per_mask, char_level, max_simd);
        },
        py::arg("ref_token"), py::arg("ref_punct"), py::arg("ref_mask"), py::arg("hyp_token"),
        py::arg("hyp_punct"), py::arg("hyp_mask"), py::arg("words_per_mask"), py::arg("char_level"),
        py::arg("max_simd") = 2,
        "SoftSegmenter alignment path as (ref index or -1, hyp index or -1) pairs.");
    m.def(
        "bleu_corpus_stats",
        [](const std::vector<int32_t>& hyp_tokens, const std::vector<int64_t>& hyp_offsets,
           const std::vector<int32_t>& ref_tokens, const std::vector<int64_t>& ref_offsets,
           int max_order) {
            py::gil_scoped_release release;
            return hpo::bleu_corpus_stats(hyp_tokens, hyp_offsets, ref_tokens, ref_offsets, max_order);
        },
        py::arg("hyp_tokens"), py::arg("hyp_offsets"), py::arg("ref_tokens"), py::arg("ref_offsets"),
        py::arg("max_order") = 4,
        "[hyp_len, ref_len, correct_1..N, total_1..N] summed over sentences (token-id slices).");
}
