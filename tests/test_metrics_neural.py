"""Optional neural scorers: MetricX from a tiny random local checkpoint; clear errors for missing
paths and packages (nothing is downloaded)."""
import pytest

from hpo_engine.metrics.neural import CometScorer, MetricXScorer

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny_metricx(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    path = tmp_path_factory.mktemp("metricx")
    words = "source: candidate: reference: the a house is green der das haus ist grün .".split()
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>",
                                                unk_token="<unk>")
    fast.save_pretrained(path)
    torch.manual_seed(0)
    config = transformers.MT5Config(vocab_size=32, d_model=16, d_kv=4, d_ff=32, num_layers=2,
                                    num_decoder_layers=1, num_heads=2, decoder_start_token_id=0,
                                    pad_token_id=0, eos_token_id=1)
    model = transformers.MT5ForConditionalGeneration(config)
    with torch.no_grad():  # spread logits so that the [0, 25] clamp is exercised both ways
        model.lm_head.weight.mul_(400.0)
    model.save_pretrained(path)
    return path, model.eval(), fast


def test_metricx_batches_like_single_examples(tiny_metricx):
    path, model, tokenizer = tiny_metricx
    scorer = MetricXScorer(str(path), batch_size=2, score_token_id=7)
    hyps = ["das haus ist grün .", "der", "grün grün grün das haus", "the house"]
    refs = ["das haus ist grün .", "das haus", "das haus ist grün", "der ."]
    srcs = ["the house is green .", "the house", "the house is green", "a ."]
    got = scorer.score(hyps, refs, srcs)
    expected = []
    for h, r, s in zip(hyps, refs, srcs):
        text = f"source: {s} candidate: {h} reference: {r}"
        ids = tokenizer(text)["input_ids"]
        assert ids[-1] == tokenizer.eos_token_id
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids[:-1]]),
                           decoder_input_ids=torch.zeros((1, 1), dtype=torch.long)).logits
        expected.append(float(logits[0, 0, 7].clamp(0, 25)))
    assert got == pytest.approx(expected, abs=1e-5)
    assert all(0.0 <= x <= 25.0 for x in got)
    assert MetricXScorer.format_input("h", None, "s") == "source: s candidate: h"
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        scorer.score(["a", "b"], ["a"])


def test_missing_checkpoints_name_the_path(tmp_path):
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        MetricXScorer(missing)
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        CometScorer(missing)


def test_comet_without_package_is_a_clear_error(tmp_path, monkeypatch):
    import sys
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"")
    monkeypatch.setitem(sys.modules, "comet", None)  # import comet -> ImportError
    with pytest.raises(RuntimeError, match="unbabel-comet"):
        CometScorer(str(ckpt))


def test_comet_plumbing_with_a_stand_in_package(tmp_path, monkeypatch):
    """The unbabel-comet API as CometScorer uses it: load_from_checkpoint(path) and
    model.predict(data, batch_size, gpus, progress_bar) -> .scores."""
    import sys
    import types

    calls = {}

    class Model:
        def predict(self, data, batch_size, gpus, progress_bar):
            calls.update(data=data, batch_size=batch_size, gpus=gpus)
            return types.SimpleNamespace(scores=[len(d["mt"]) / 10 for d in data])

    fake = types.ModuleType("comet")
    fake.load_from_checkpoint = lambda path: calls.setdefault("path", path) and Model()
    monkeypatch.setitem(sys.modules, "comet", fake)
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"")
    scorer = CometScorer(str(ckpt), batch_size=3)
    assert scorer.score(["abc", "abcdef"], ["x", "y"], ["s1", "s2"]) == [0.3, 0.6]
    assert calls["path"] == str(ckpt) and calls["batch_size"] == 3 and calls["gpus"] == 0
    assert calls["data"] == [{"src": "s1", "mt": "abc", "ref": "x"}, {"src": "s2", "mt": "abcdef", "ref": "y"}]
    assert scorer.score(["abc"], None, ["s"]) == [0.3]  # reference-free (QE) input has no "ref"
    assert calls["data"] == [{"src": "s", "mt": "abc"}]
    with pytest.raises(ValueError, match="same length"):
        scorer.score(["a", "b"], ["x"], ["s1", "s2"])
