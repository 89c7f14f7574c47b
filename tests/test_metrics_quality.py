"""BLEU / chrF / TER through sacrebleu, with the tokenizers that matter."""
import random

import pytest
import sacrebleu

from hpo_engine.metrics.quality import (corpus_bleu, corpus_chrf, corpus_quality, corpus_ter,
                                        default_bleu_tokenizer, sentence_bleu, sentence_chrf,
                                        sentence_ter)

EN = ["The house is green.", "It's 3.5 km away, isn't it?", "Hello -- world!", "",
      "Numbers like 1,000.50 stay."]
HYP_EN = ["the house is green", "It is 3.5 km away, isn't it ?", "Hello world!", "extra", "Numbers stay."]
ZH = ["我们在两个数据集上训练了模型。", "结果表明，这个方法有效！", "谢谢。"]
HYP_ZH = ["我们在两个数据集训练了模型。", "结果表明这个方法很有效！", "谢谢"]
JA = ["今日は良い天気ですね。", "私は学生です。", "ありがとうございました。"]
HYP_JA = ["今日はいい天気です。", "私は学生だ。", "ありがとう。"]


@pytest.mark.parametrize("hyps, refs, tok", [
    (HYP_EN, EN, "13a"), (HYP_ZH, ZH, "zh"), (HYP_ZH, ZH, "char"), (HYP_JA, JA, "ja-mecab"),
])
def test_corpus_scores_equal_sacrebleu(hyps, refs, tok):
    if tok == "ja-mecab":
        pytest.importorskip("MeCab")
        pytest.importorskip("ipadic")
    assert corpus_bleu(hyps, refs, tok) == sacrebleu.BLEU(tokenize=tok).corpus_score(hyps, [refs]).score
    assert corpus_chrf(hyps, refs) == sacrebleu.CHRF().corpus_score(hyps, [refs]).score
    assert corpus_ter(hyps, refs) == sacrebleu.TER().corpus_score(hyps, [refs]).score
    assert 0 < corpus_bleu(hyps, refs, tok) < 100


def test_random_sentences_and_sentence_level():
    rng = random.Random(0)
    vocab = "a b c d e f . , ! the of and".split()
    refs = [" ".join(rng.choice(vocab) for _ in range(rng.randint(1, 20))) for _ in range(50)]
    hyps = [" ".join(rng.choice(vocab) for _ in range(rng.randint(0, 20))) for _ in range(50)]
    assert corpus_bleu(hyps, refs) == sacrebleu.corpus_bleu(hyps, [refs]).score
    expected = [sacrebleu.BLEU(effective_order=True).sentence_score(h, [r]).score for h, r in zip(hyps, refs)]
    assert sentence_bleu(hyps, refs) == expected
    assert sentence_chrf(hyps, refs) == [sacrebleu.CHRF().sentence_score(h, [r]).score
                                         for h, r in zip(hyps, refs)]
    assert sentence_ter(hyps, refs) == [sacrebleu.TER().sentence_score(h, [r]).score
                                        for h, r in zip(hyps, refs)]
    assert corpus_bleu(refs, refs) == pytest.approx(100.0)


def test_tokenizer_choice_and_count_check():
    assert default_bleu_tokenizer("zh") == "zh"
    assert default_bleu_tokenizer("ja") == "ja-mecab"
    assert default_bleu_tokenizer("de") == "13a"
    assert default_bleu_tokenizer(None) == "13a"
    assert set(corpus_quality(HYP_EN, EN)) == {"BLEU", "chrF", "TER"}
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        corpus_bleu(["a", "b"], ["a"])


@pytest.mark.parametrize("tok", ["13a", "zh", "char", "intl", "none", "ja-mecab"])
def test_fast_bleu_equals_sacrebleu_on_random_corpora(tok):
    from hpo_engine.metrics.fast_bleu import fast_corpus_bleu
    if tok == "ja-mecab":
        pytest.importorskip("MeCab")
    rng = random.Random(hash(tok) % 1000)
    pieces = "a b c the of 3.5 1,000 x-ray U.S. , . ! ? ( ) & &amp; - 猫 我们 数据 。 ， 今日 は".split()
    for _ in range(25):
        n = rng.randint(1, 30)
        refs = [" ".join(rng.choice(pieces) for _ in range(rng.randint(0, 25))) for _ in range(n)]
        hyps = [" ".join(rng.choice(pieces) for _ in range(rng.randint(0, 25))) + rng.choice(["", " ", "\n"])
                for _ in range(n)]
        if rng.random() < 0.3:  # a near copy gives high-order matches
            hyps = [r.replace("a", "b", 1) for r in refs]
        assert fast_corpus_bleu(hyps, refs, tok) == \
            sacrebleu.BLEU(tokenize=tok).corpus_score(hyps, [refs]).score


def test_fast_13a_tokenizer_equals_sacrebleu():
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a
    from hpo_engine.metrics.fast_bleu import tokenize_13a
    rng = random.Random(5)
    alphabet = list("abX09 .,-&;:!?'\"()[]{}<>/\\@#$%^*+=_|~`\n\t") + [
        "&quot;", "&amp;", "&lt;", "&gt;", "<skipped>", "-\n", "ä", "\u00a0", "\u3000", "猫", "。"]
    reference = Tokenizer13a()
    for _ in range(3000):
        line = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        assert tokenize_13a(line) == reference(line)
