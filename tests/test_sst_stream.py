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
    a = SSTStream(model, "de", MAX_NEW, closing_turns=0)      # closing turns: their own test below
    whole = run(a, [pcm])
    b = SSTStream(model, "de", MAX_NEW, closing_turns=0)
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


class Answer:
    """An assistant turn as the engine returns it (text and token ids), written by the test."""
    def __init__(self, text):
        self.text, self.token_ids = text, [0]


def answer_all(stream, texts):
    """Answer each queued turn with the next of `texts` (no generation); the deltas."""
    deltas = []
    while stream.ready:
        deltas.append(stream.accept(stream.append_next_turn(), Answer(texts[len(deltas)])))
    return deltas


@pytest.mark.parametrize("answers, expected_closing", [
    (["Guten", "Morgen", "zusammen", "und", "danke"], 2),   # mid-sentence: both closing turns, then no more
    (["Guten", "Morgen", "zusammen."], 1),                 # the first closing turn ends the sentence
    (["Guten", "Morgen", ""], 1),                          # the model waits in a closing turn: done
    (["Guten", "Morgen."], 0),                             # the last chunk's turn ended the sentence
    (["", "", "", ""], 0),                                 # nothing written at all: nothing to finish
    (["Guten", "Tag, sagte er.\u201d"], 0),              # a closing quote after the full stop
])
def test_closing_turns_finish_the_last_sentence(answers, expected_closing):
    model = stream_model()
    pcm = espeak_pcm16("Please open the window.")        # one full chunk + a partial one
    s = SSTStream(model, "de", MAX_NEW, closing_turns=2)
    s.feed(pcm)
    s.end()
    deltas = answer_all(s, answers)
    assert len(deltas) == 2 + expected_closing and s.finished
    end_ms = len(pcm) / 2 / 16
    for d in deltas[2:]:                    # a closing turn hears nothing new and is timed at the end
        assert d.audio_ms == end_ms
    assert s.text == " ".join(a for a in answers[:len(deltas)] if a)
    s.close()


def test_closing_turn_when_the_audio_ends_on_a_chunk_edge():
    model = stream_model()
    wave = espeak_wave("Please open the window.")
    chunk = model.config.chunk_ms * 16
    s = SSTStream(model, "de", MAX_NEW, closing_turns=1)
    s.feed(wave[:chunk])
    assert [d.text for d in answer_all(s, ["Bitte"])] == ["Bitte"]
    s.end()                                  # nothing left to flush: the closing turn is queued at end()
    assert s.ready and not s.finished
    assert [d.audio_ms for d in answer_all(s, ["\u00f6ffnen"])] == [model.config.chunk_ms]
    assert s.finished and s.text == "Bitte \u00f6ffnen"
    s.close()


def test_closing_turns_through_the_engine_free_their_blocks():
    model = stream_model()
    idle = model.engine.pool.num_used
    pcm = espeak_pcm16("Please open the window.")
    s = SSTStream(model, "de", MAX_NEW, closing_turns=2)
    deltas = run(s, [pcm])
    chunk_turns = 2
    closing = deltas[chunk_turns:]
    assert len(closing) <= 2 and all(d.audio_ms == len(pcm) / 32 for d in closing)
    text_before = "".join(d.text for d in deltas[:chunk_turns])
    if not text_before.strip() or text_before.rstrip().endswith((".", "?", "!")):
        assert closing == []
    else:
        assert closing                                 # mid-sentence: at least one closing turn ran
    # the closing turns are user turns with no speech rows in the engine's dialogue
    toks = s.tokens
    P = model.config.frames_per_chunk
    partial = -(-(len(pcm) // 2 - model.config.chunk_ms * 16) // 1280)
    expected = (len(toks.system) + len(toks.user_turn(0, P)) + len(toks.user_turn(1, partial))
                + sum(len(toks.user_turn(2 + i, 0)) for i in range(len(closing)))
                + sum(len(d.token_ids) for d in deltas))
    assert s.stream.num_cached_tokens + s.stream.seq.num_pending == expected
    s.close()
    assert model.engine.pool.num_used == idle


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
    s = SSTStream(model, "fr", MAX_NEW, closing_turns=0)
    deltas = s.push(wave)
    assert deltas == []
    deltas = s.finish()
    assert [d.audio_ms for d in deltas] == [500.0]
    assert "French" in model.tokenizer.decode(s.tokens.system)
    s.close()
