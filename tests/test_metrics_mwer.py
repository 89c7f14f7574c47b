"""mWER resegmentation against mweralign (the MWERAlign C++ code) on random and realistic text."""
import random

import pytest

from hpo_engine.metrics.mwer import mwer_segment

mweralign = pytest.importorskip("mweralign")
from mweralign.segmenter import CJSegmenter  # noqa: E402

VOCAB = ["the", "The", "a", "house", "HOUSE", "is", "green", "über", "Straße", ".", ",", "?", "!",
         "-", "(", ")", "don't", "U.S.", "3.5", "</S>x", "cat", "dog", "ran", "away"]
DE = ("Wir haben das Modell auf zwei Datensätzen trainiert . Die Ergebnisse zeigen , dass die "
      "Methode funktioniert ! Aber warum ist das so ? Weil die Daten sauber sind . Danke .").split(" . ")


def _reference_text(references):
    # one line per reference, as mwerSegmenter reads its -mref file (a bare "\n".join would lose
    # a trailing empty reference)
    return "".join(r + "\n" for r in references)


def reference_segmentation(hypothesis, references):
    out = mweralign.align_texts(_reference_text(references), hypothesis)
    return [line.strip() for line in out.split("\n")]


def reference_char_segmentation(hypothesis, references):
    seg = CJSegmenter()
    ref = _reference_text([" ".join(seg.encode(r.strip())) for r in references])
    hyp = " ".join(seg.encode(hypothesis.strip()))
    return [seg.decode(line) for line in mweralign.align_texts(ref, hyp).split("\n")]


def _noisy_copy(rng, words, vocab):
    out = []
    for w in words:
        x = rng.random()
        if x < 0.1:
            continue
        out.append(rng.choice(vocab) if x < 0.25 else (w.upper() if x < 0.3 else w))
        if rng.random() < 0.08:
            out.append(rng.choice(vocab))
    return out


@pytest.mark.parametrize("seed", range(30))
def test_random_word_level_matches_mweralign(seed):
    rng = random.Random(seed)
    refs = [" ".join(rng.choice(VOCAB) for _ in range(rng.choice([0, 1, rng.randint(2, 15)])))
            for _ in range(rng.randint(1, 12))]
    hyp_words = _noisy_copy(rng, " ".join(refs).split(), VOCAB)
    if seed % 5 == 0:
        hyp_words += [rng.choice(VOCAB) for _ in range(rng.randint(0, 20))]
    hyp = ("  " if seed % 3 == 0 else " ").join(hyp_words)
    got = mwer_segment(hyp, refs)
    assert got == reference_segmentation(hyp, refs)
    assert len(got) == len(refs)
    assert " ".join(p for p in got if p).split() == hyp.split()


def test_realistic_german_and_empty_hypothesis():
    refs = [s.strip() + " ." for s in DE]
    hyp = ("wir haben das modell auf 2 datensätzen trainiert. die ergebnisse zeigen, dass "
           "die methode funktioniert! aber warum? weil die daten sauber sind. danke.")
    assert mwer_segment(hyp, refs) == reference_segmentation(hyp, refs)
    assert mwer_segment("", refs) == [""] * len(refs)
    assert mwer_segment("", refs) == reference_segmentation("", refs)
    assert mwer_segment("nur ein satz", ["Nur ein Satz"]) == ["nur ein satz"]


ZH = "我们在两个数据集上训练了模型。结果表明，这个方法有效！但是为什么？因为数据很干净。谢谢 Matt 和 IBM。".split("。")


@pytest.mark.parametrize("seed", range(12))
def test_random_character_level_matches_mweralign(seed):
    rng = random.Random(100 + seed)
    chars = list("我们在两个数据集上训练了模型结果表明这方法有效，。！？") + ["Matt", "IBM", " ", "▁"]
    refs = ["".join(rng.choice(chars) for _ in range(rng.randint(0, 20))) for _ in range(rng.randint(1, 8))]
    hyp_chars = _noisy_copy(rng, list("".join(refs)), chars)
    hyp = "".join(hyp_chars)
    assert mwer_segment(hyp, refs, char_level=True) == reference_char_segmentation(hyp, refs)


def test_realistic_chinese():
    refs = [s + "。" for s in ZH if s]
    hyp = "我们在两个数据集训练了模型，结果表明这个方法很有效！为什么？因为数据干净。谢谢Matt和IBM"
    got = mwer_segment(hyp, refs, char_level=True)
    assert got == reference_char_segmentation(hyp, refs)
    assert "".join(got) == hyp


def test_long_talk_matches_mweralign():
    rng = random.Random(7)
    vocab = ["".join(rng.choice("abcdefgh") for _ in range(rng.randint(1, 4))) for _ in range(300)]
    refs = [" ".join(rng.choice(vocab) for _ in range(rng.randint(3, 20))) + " ." for _ in range(60)]
    hyp = " ".join(_noisy_copy(rng, " ".join(refs).split(), vocab))
    assert mwer_segment(hyp, refs) == reference_segmentation(hyp, refs)


def test_rejects_mwersegmenter_control_tokens():
    with pytest.raises(ValueError, match="multi-reference"):
        mwer_segment("a b", ["a ### b"])
    with pytest.raises(ValueError, match="segment marker"):
        mwer_segment("a b", ["a </s> b"])
    with pytest.raises(ValueError, match="at least one reference"):
        mwer_segment("a b", [])
    # a leading / trailing separator is dropped by mwerSegmenter: a single reference remains
    assert mwer_segment("a b", ["### a b"]) == reference_segmentation("a b", ["### a b"])


def test_portable_avx2_and_avx512_dp_agree():
    from hpo_engine import _C

    rng = random.Random(11)
    for _ in range(20):
        refs = []
        for _ in range(rng.randint(1, 30)):
            refs += [rng.randint(2, 12) for _ in range(rng.randint(0, 9))] + [1]
        hyp = [rng.randint(2, 12) for _ in range(rng.randint(0, 120))]
        portable = _C.mwer_segment_ends(refs, hyp, 1, max_simd=0)
        assert _C.mwer_segment_ends(refs, hyp, 1, max_simd=1) == portable  # AVX2 where available
        assert _C.mwer_segment_ends(refs, hyp, 1, max_simd=2) == portable  # AVX-512 where available
        for simd in (0, 1, 2):  # 32-bit costs (used for very long talks)
            assert _C.mwer_segment_ends(refs, hyp, 1, max_simd=simd, narrow=False) == portable


def test_only_ascii_whitespace_separates_tokens():
    # U+00A0 and U+3000 are whitespace for Python but not for mwerSegmenter
    hyp = "a\u00a0b c\u3000d e\tf"
    refs = ["a\u00a0b c", "d e f"]
    assert mwer_segment(hyp, refs) == reference_segmentation(hyp, refs)
    assert mwer_segment(hyp, refs)[0].split(" ")[0] == "a\u00a0b"
