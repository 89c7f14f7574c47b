"""Long-form scoring: OmniSTEval 0.1.10 longform (SoftSegmenter, LongYAAL, BLEU, chrF) and the
StreamLAAL composition (mweralign resegmentation + SimulEval's LAAL and BLEU scorers)."""
import json
import random

import pytest
import yaml

from hpo_engine.metrics.instances import MetricsInputError, read_instances_log, read_references, read_segmentation
from hpo_engine.metrics.scoring import score_longform
from hpo_engine.metrics.streamlaal import DelayRebaser, resegment_mwer

VOCAB_DE = ("wir haben das modell auf zwei datensätzen trainiert die ergebnisse zeigen dass methode "
            "funktioniert aber warum ist so weil daten sauber sind danke sehr gut").split()
VOCAB_ZH = list("我们在两个数据集上训练了模型结果表明这方法有效但是为什么因数据很干净谢")


def make_talks(tmp_path, seed, char_level=False, n_recordings=2, sentences=(3, 8), with_elapsed=True):
    """Write a synthetic long-form evaluation: refs.txt, segs.yaml, instances.log."""
    rng = random.Random(seed)
    vocab = VOCAB_ZH if char_level else VOCAB_DE
    punct = ["。", "，", "！"] if char_level else [".", ",", "!"]
    join = "" if char_level else " "
    refs, segs, log = [], [], []
    for r in range(n_recordings):
        wav = f"talks/rec{r}.wav"
        t = rng.uniform(0, 2)
        hyp_units, delays, elapsed, compute = [], [], [], 0.0
        for _ in range(rng.randint(*sentences)):
            words = [rng.choice(vocab) for _ in range(rng.randint(1, 14))] + [rng.choice(punct)]
            if rng.random() < 0.4 and not char_level:
                words[0] = words[0].capitalize()
            refs.append(join.join(words) if char_level else " ".join(words[:-1]) + words[-1])
            dur = round(rng.uniform(1.0, 8.0), 3)
            segs.append({"wav": wav, "offset": round(t, 3), "duration": dur})
            emit = t * 1000 + rng.uniform(0, 3000)
            for w in words:
                x = rng.random()
                if x < 0.1:
                    continue
                unit = rng.choice(vocab) if x < 0.3 else w
                emit += rng.choice([0.0, rng.uniform(0, 900)])
                for u in (list(unit) if char_level else [unit]):
                    hyp_units.append(u)
                    delays.append(round(emit, 1))
                    compute += rng.uniform(0, 200)
                    elapsed.append(round(emit + compute, 1))
            t += dur + rng.uniform(0.0, 1.5)
        line = {"index": r, "source": [wav], "prediction": join.join(hyp_units), "delays": delays,
                "source_length": t * 1000}
        if with_elapsed:
            line["elapsed"] = elapsed
        log.append(line)
    (tmp_path / "refs.txt").write_text("".join(x + "\n" for x in refs), encoding="utf-8")
    (tmp_path / "segs.yaml").write_text(yaml.safe_dump(segs, allow_unicode=True), encoding="utf-8")
    (tmp_path / "instances.log").write_text(
        "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in log), encoding="utf-8")
    return tmp_path / "instances.log", tmp_path / "refs.txt", tmp_path / "segs.yaml"


class _SerialPool:
    """Stands in for multiprocessing.Pool in OmniSTEval: no fork of the test process."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def map(self, fn, items):
        return list(map(fn, items))


def omnisteval_longform(hyp, refs, segs, char_level, lang, tokenizer, fix=False):
    import omnisteval.alignment
    from omnisteval.io import load_resegmentation_inputs
    from omnisteval.resegment import resegment
    from omnisteval.scoring import evaluate_instances

    ref_words, hyp_words, segmentation, ref_sentences = load_resegmentation_inputs(
        str(segs), None, str(refs), str(hyp), "jsonl", char_level, False, fix, "delays", "elapsed")
    pool = omnisteval.alignment.Pool
    omnisteval.alignment.Pool = _SerialPool
    try:
        instances, _ = resegment(ref_words, hyp_words, segmentation, ref_sentences,
                                 char_level=char_level, lang=lang)
    finally:
        omnisteval.alignment.Pool = pool
    scores, _, _ = evaluate_instances(instances, is_longform=True, bleu_tokenizer=tokenizer)
    return scores


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("char_level", [False, True])
def test_soft_longform_matches_omnisteval(tmp_path, seed, char_level):
    pytest.importorskip("omnisteval")
    hyp, refs, segs = make_talks(tmp_path, seed, char_level)
    lang, tok = ("zh", "zh") if char_level else ("de", "13a")
    theirs = omnisteval_longform(hyp, refs, segs, char_level, None, tok)
    ours = score_longform(str(hyp), str(refs), str(segs), lang, "soft",
                          "char" if char_level else "word", tok, moses=False)
    assert ours["BLEU"] == pytest.approx(theirs["bleu"], abs=1e-9)
    assert ours["chrF"] == pytest.approx(theirs["chrf"], abs=1e-9)
    assert ours["LongYAAL"] == pytest.approx(theirs["long_yaal"], abs=1e-9)
    assert ours["LongYAAL_CA"] == pytest.approx(theirs["ca_long_yaal"], abs=1e-9)


def test_soft_longform_with_moses_and_elapsed_repair_matches_omnisteval(tmp_path):
    pytest.importorskip("omnisteval")
    pytest.importorskip("mosestokenizer")
    hyp, refs, segs = make_talks(tmp_path, 11)
    theirs = omnisteval_longform(hyp, refs, segs, False, "de", "13a", fix=True)
    ours = score_longform(str(hyp), str(refs), str(segs), "de", "soft", "word", fix_elapsed=True)
    for key, their_key in (("BLEU", "bleu"), ("chrF", "chrf"), ("LongYAAL", "long_yaal"),
                           ("LongYAAL_CA", "ca_long_yaal")):
        assert ours[key] == pytest.approx(theirs[their_key], abs=1e-9), key


def streamlaal_composition(hyp, refs, segs, unit, tokenizer):
    """mweralign + SimulEval scorers, with StreamLAAL's re-basing written out for elapsed times
    that never repeat (each unit's own compute time: e_k - e_{k-1} + d_{k-1})."""
    import mweralign
    from mweralign.segmenter import CJSegmenter
    from simuleval.evaluator.instance import LogInstance
    from simuleval.evaluator.scorers.latency_scorer import LAALScorer
    from simuleval.evaluator.scorers.quality_scorer import SacreBLEUScorer

    log = [json.loads(x) for x in open(hyp, encoding="utf-8")]
    references = [x.strip() for x in open(refs, encoding="utf-8")]
    definitions = yaml.safe_load(open(segs, encoding="utf-8"))
    instances = {}
    for line in log:
        wav = line["source"][0]
        idx = [i for i, d in enumerate(definitions) if d["wav"] == wav]
        rrefs = [references[i] for i in idx]
        if unit == "char":
            cj = CJSegmenter()
            out = mweralign.align_texts("".join(" ".join(cj.encode(r)) + "\n" for r in rrefs),
                                        " ".join(cj.encode(line["prediction"].strip())))
            pieces = [cj.decode(p) for p in out.split("\n")]
        else:
            out = mweralign.align_texts("".join(r + "\n" for r in rrefs), line["prediction"])
            pieces = [p.strip() for p in out.split("\n")]
        d, e = line["delays"], line["elapsed"]
        own = [e[0]] + [e[k] - e[k - 1] + d[k - 1] for k in range(1, len(e))]
        pos = 0
        for i, piece in zip(idx, pieces):
            n = (len(piece.split(" ")) if unit == "word" else len(piece)) if piece else 0
            start = definitions[i]["offset"] * 1000
            instances[len(instances)] = LogInstance(json.dumps({
                "index": i, "prediction": piece, "reference": references[i],
                "source_length": definitions[i]["duration"] * 1000,
                "delays": [max(0.0, x - start) for x in d[pos:pos + n]],
                "elapsed": [max(0.0, x - start) for x in own[pos:pos + n]]}), unit)
            pos += n
    return (SacreBLEUScorer(tokenizer)(instances), LAALScorer()(instances),
            LAALScorer(computation_aware=True)(instances))


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("unit", ["word", "char"])
def test_streamlaal_matches_mweralign_plus_simuleval(tmp_path, seed, unit):
    pytest.importorskip("mweralign")
    pytest.importorskip("simuleval")
    hyp, refs, segs = make_talks(tmp_path, 100 + seed, char_level=unit == "char")
    # strictly increasing elapsed: the composition's simple repair formula applies
    log = [json.loads(x) for x in open(hyp, encoding="utf-8")]
    for line in log:
        line["elapsed"] = [x + 0.001 * k for k, x in enumerate(line["elapsed"])]
    hyp.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in log), encoding="utf-8")
    tok = "zh" if unit == "char" else "13a"
    bleu, laal, laal_ca = streamlaal_composition(hyp, refs, segs, unit, tok)
    ours = score_longform(str(hyp), str(refs), str(segs), "zh" if unit == "char" else "de",
                          "mwer", unit, tok)
    assert ours["BLEU"] == pytest.approx(bleu, abs=1e-9)
    assert ours["StreamLAAL"] == pytest.approx(laal, abs=1e-9)
    assert ours["StreamLAAL_CA"] == pytest.approx(laal_ca, abs=1e-9)


def test_elapsed_repair_by_hand():
    # delays 1000, 1000, 3000 ms; SimulEval elapsed accumulate compute: 1100, 1100, 3500
    rebase = DelayRebaser([1000.0, 1000.0, 3000.0], [1100.0, 1100.0, 3500.0], "word")
    # sentence 1 starts at 500 ms and gets two words
    d, e = rebase("a b", 500.0)
    assert d == [500.0, 500.0]
    # first unit keeps its elapsed; second repeats it: previous compute (600 - 500) + own delay
    assert e == [600.0, 600.0]
    # sentence 2 starts at 2000 ms: own compute 3500 - 1100 = 2400 -> 2400 + 1000 - 2000
    d, e = rebase("c", 2000.0)
    assert d == [1000.0] and e == [1400.0]
    # delays before the sentence start clip to 0
    rebase = DelayRebaser([100.0], [150.0], "word")
    assert rebase("x", 1000.0) == ([0.0], [0.0])


def test_mwer_resegmentation_keeps_every_word_once(tmp_path):
    hyp, refs, segs = make_talks(tmp_path, 5)
    log, references = read_instances_log(hyp), read_references(refs)
    sentences = resegment_mwer(log, references, read_segmentation(segs), "word", str(hyp))
    assert len(sentences) == len(references)
    assert " ".join(s.prediction for s in sentences if s.prediction).split() == \
        " ".join(x.prediction for x in log).split()
    assert sum(len(s.delays) for s in sentences) == sum(len(x.delays) for x in log)


def test_clear_errors_for_mismatches(tmp_path):
    hyp, refs, segs = make_talks(tmp_path, 1)
    refs.write_text(refs.read_text() + "one more\n")
    with pytest.raises(MetricsInputError, match="reference sentences but"):
        score_longform(str(hyp), str(refs), str(segs), "de")
    hyp, refs, segs = make_talks(tmp_path, 1)
    lines = hyp.read_text().splitlines()
    bad = json.loads(lines[0])
    bad["delays"], bad["elapsed"] = bad["delays"][:-1], bad["elapsed"][:-1]
    hyp.write_text("\n".join([json.dumps(bad)] + lines[1:]) + "\n")
    for segmenter in ("soft", "mwer"):
        with pytest.raises(MetricsInputError, match="line 1: .* words in the prediction but .* delays"):
            score_longform(str(hyp), str(refs), str(segs), "de", segmenter, moses=False)
    hyp.write_text(lines[0] + "\n")
    with pytest.raises(MetricsInputError, match="1 log lines .* but 2 recordings"):
        score_longform(str(hyp), str(refs), str(segs), "de")
    hyp.write_text(lines[0] + "\n{not json\n")
    with pytest.raises(MetricsInputError, match="line 2: invalid JSON"):
        score_longform(str(hyp), str(refs), str(segs), "de")
