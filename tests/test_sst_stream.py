"""SSTStream: chunking, audio_ms, dialogue in the engine, batching, errors, freed blocks."""
import numpy as np
import pytest

from hpo_engine.speech.audio import AudioFormatError
from hpo_engine.sst import SSTStream, translate_ready
from hpo_engine.sst.stream import step_streams
from test_sst_helpers import stream_model, espeak_pcm16, espeak_wave, one_thread  # noqa: F401

MAX_NEW = 3
pytestmark = pytest.mark.usefixtures("one_thread")


def run(stream, pieces):
    deltas = []
    for p in pieces:
        deltas += stream.push(p)
    return deltas + stream.finish()


def test_turns_follow_chunks_and_split_does_not_matter():
    model = stream_model()
    pcm = espeak_pcm16("Please open the window.")        # ~1.4 s: one full chunk + a partial one
    n = len(pcm) // 2
    chunk = model.config.chunk_ms * 16
    assert chunk < n < 2 * chunk
    idle = model.engine.pool.num_used
    a = SSTStream(model, "de", MAX_NEW)
    whole = run(a, [pcm])
    b = SSTStream(model, "de", MAX_NEW)
    cuts = [0, 1002, 1004, 17778, 17780, 20000, len(pcm)]     # odd-sized sample counts, a chunk edge crossed
    split = run(b, [pcm[i:j] for i, j in zip(cuts, cuts[1:])])
    assert [d.audio_ms for d in whole] == [model.config.chunk_ms, n / 16]
    assert [(d.text, d.audio_ms, d.token_ids) for d in whole] == [(d.text, d.audio_ms, d.token_ids) for d in split]
    assert a.text == "".join(d.text for d in whole)
    # the engine stream holds the whole dialogue: system + 2 user turns + 2 answers (last stop still pending)
    P = model.config.frames_per_chunk
    partial = -(-(n - chunk) // 1280)
    toks = a.tokens
    expected = (len(toks.system) + len(toks.user_turn(0, P)) + len(toks.user_turn(1, partial))
                + sum(len(d.token_ids) for d in whole))
    assert a.stream.num_cached_tokens + a.stream.seq.num_pending == expected
    for d in whole:
        assert 1 <= len(d.token_ids) <= MAX_NEW
        assert not set(d.token_ids[:-1]) & set(model.config.banned_token_ids + model.config.stop_token_ids)
    a.close()
    b.close()
    assert model.engine.pool.num_used == idle


@pytest.mark.slow
def test_batched_streams_match_one_at_a_time():
    model = stream_model()
    texts = ["Hello, how are you today?", "Thank you very much."]
    alone = []
    for t in texts:
        s = SSTStream(model, "de", MAX_NEW)
        alone.append([d.token_ids for d in run(s, [espeak_pcm16(t)])])
        s.close()
    streams = [SSTStream(model, "de", MAX_NEW) for _ in texts]
    for s, t in zip(streams, texts):
        s.feed(espeak_pcm16(t))
        s.end()
    together = {id(s): [] for s in streams}
    batch_sizes = []
    while any(s.ready for s in streams):
        results = translate_ready(streams)
        batch_sizes.append(len(results))
        for s, d in results:
            together[id(s)].append(d.token_ids)
    assert batch_sizes[0] == len(texts)           # the first turns ran in one batch
    assert [together[id(s)] for s in streams] == alone
    for s in streams:
        s.close()

    # the same through engine steps, the second stream's audio arriving while the first is mid-turn
    streams = [SSTStream(model, "de", MAX_NEW) for _ in texts]
    streams[0].feed(espeak_pcm16(texts[0]))
    streams[0].end()
    stepped = {id(s): [] for s in streams}
    steps = 0
    while not all(s.finished for s in streams):
        if steps == 2:
            streams[1].feed(espeak_pcm16(texts[1]))
            streams[1].end()
        for s, d in step_streams(streams):
            stepped[id(s)].append(d.token_ids)
        steps += 1
    assert [stepped[id(s)] for s in streams] == alone
    for s in streams:
        s.close()
    assert not model.engine.running


def test_bad_input_changes_nothing_and_end_without_audio():
    model = stream_model()
    s = SSTStream(model, "de", MAX_NEW)
    with pytest.raises(AudioFormatError, match="even number of bytes"):
        s.feed(b"\x00\x01\x02")
    with pytest.raises(ValueError, match="NaN"):
        s.feed(np.array([0.0, np.nan], np.float32))
    assert s.samples_fed == 0 and not s.ready
    assert s.finish() == [] and s.finished and s.text == ""
    with pytest.raises(RuntimeError, match="after end"):
        s.feed(b"\x00\x00")
    s.close()
    with pytest.raises(Exception, match="unsupported|not supported"):
        SSTStream(model, "tlh")


def test_short_audio_gives_one_partial_turn():
    model = stream_model()
    wave = espeak_wave("Hi.")[:8000]                  # 0.5 s
    s = SSTStream(model, "fr", MAX_NEW)
    deltas = s.push(wave)
    assert deltas == []
    deltas = s.finish()
    assert [d.audio_ms for d in deltas] == [500.0]
    assert "French" in model.tokenizer.decode(s.tokens.system)
    s.close()
