"""Demo SST data: synthesised English "talks" -> Whisper encoder frames + JSONL manifests.

Target languages: `de` (the Ding dictionary, pairs.py) or `zh` (hsk-sentences-audio, pairs_zh.py);
the speech is English either way. A talk is 1..4 consecutive dictionary pairs of one split, spoken by one voice (train/valid: a random
TRAIN_VOICES voice at a random speed and pitch; test: TEST_VOICE), each sentence trimmed of the
synthesiser's silence, after 0.2 s of leading silence and with 0.3..0.8 s pauses between sentences.
The talk is rounded to PCM16 (what a wav file holds) and encoded exactly as serving encodes a stream:
StreamingEncoder over Whisper tiny.en, chunks of 56 frames (1.12 s), 200 frames (4 s) of left context,
"window" positions, the whole talk pushed then flushed (`hpo_engine.speech.frontend.SpeechFrontEnd`'s
construction, without the projector).

Layout of OUT (paths in the manifests are relative to OUT):

    train.jsonl valid.jsonl test.jsonl       one line per talk (hpo_engine.train.data format)
    <split>/feats/<id>.npy                   encoder frames [frames, 384] float16, 20 ms each
    <split>/feats/<id>.json                  the talk's manifest line (written first; the .npy marks
                                             the talk done, so a rerun skips it)
    test/wav/<id>.wav                        16 kHz PCM16 mono
    <split>/wav/<id>.wav, <split>.audio.jsonl  with `audio=True` (--audio): every split's wavs and manifests
                                             naming them ('audio' lines: for a transcriber, which reads audio)
    test/audio.txt                           one wav path per line, relative to OUT/test
    test/references.<lang>                   one reference sentence per line, talk order then sentence order
    test/segmentation.yaml                   {wav, offset, duration} (s) per reference sentence

Evaluate (from OUT/test; `translate` writes each path as `source`, matched on its file name):

    hpo-engine translate $(cat audio.txt) -o instances.log [--model CKPT]
    hpo-engine score longform --hypothesis instances.log --references references.de \\
        --segmentation segmentation.yaml --lang de          (or references.zh, --lang zh)

Which talks exist depends only on the dictionary, the seed and the split; asking for more talks of a
split later adds talks and keeps the earlier ones.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hpo_engine.speech.audio import SAMPLE_RATE, float_to_pcm16, pcm16_to_float
from hpo_engine.speech.encoder import WhisperEncoder
from hpo_engine.speech.frontend import FRAME_MS, HPO_CHUNK_MS
from hpo_engine.speech.streaming import StreamingEncoder

from .pairs import SPLITS, load_pairs
from .pairs_zh import load_zh_pairs
from .synth import TEST_VOICE, TRAIN_VOICES, Voice, synthesize, trim_silence

LEFT_CONTEXT_MS = 4000
LEAD_S = 0.2
PAUSE_S = (0.3, 0.8)
MAX_SENTENCES = 4
# measured on the shared 2-core machine, 1 torch thread: 0.33..0.46 s per talk of ~7 s of audio (0.12 s
# synthesis, the rest encoding: ~50 ms per second of audio); the defaults took 6.2 min (2.2 h of audio)
DEFAULT_TALKS = {"train": 1000, "valid": 50, "test": 50}
LANGS = ("de", "zh")


@dataclass
class Talk:
    """What to synthesise: sentences, voice and pauses (seconds before each sentence)."""
    id: str
    split: str
    pairs: list[tuple[str, str]]     # (English, target language)
    voice: Voice
    speed: int
    pitch: int
    pauses: list[float]              # [LEAD_S, pause, ...], one per sentence


def plan_talks(pairs: list[tuple[str, str]], split: str, n: int, seed: int) -> list[Talk]:
    """The first `n` talks of a split: its pairs cut into consecutive runs of 1..4 (seeded), taken
    in a seeded random order, so the talks never overlap and a larger `n` extends a smaller one."""
    split_no = SPLITS.index(split)
    rng = np.random.default_rng([seed, split_no])
    runs, start = [], 0
    while start < len(pairs):
        size = int(rng.integers(1, MAX_SENTENCES + 1))
        runs.append(pairs[start:start + size])
        start += size
    if n > len(runs):
        raise ValueError(f"split {split!r} has {len(pairs)} pairs, enough for {len(runs)} talks; asked for {n}")
    order = rng.permutation(len(runs))[:n]
    return [_talk(runs[j], split, i, np.random.default_rng([seed, split_no, i])) for i, j in enumerate(order)]


def _talk(run: list[tuple[str, str]], split: str, index: int, rng: np.random.Generator) -> Talk:
    voice = TEST_VOICE if split == "test" else TRAIN_VOICES[int(rng.integers(len(TRAIN_VOICES)))]
    speed, pitch = voice.draw(rng)
    pauses = [LEAD_S] + [round(float(rng.uniform(*PAUSE_S)), 3) for _ in run[1:]]
    return Talk(f"{split}-{index:05d}", split, list(run), voice, speed, pitch, pauses)


def render(talk: Talk) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """The talk's audio, float32 [n] at 16 kHz rounded to PCM16 values, and each sentence's
    (start, end) of speech in seconds from the talk's start."""
    pieces, spans, n = [], [], 0
    for (english, _), pause in zip(talk.pairs, talk.pauses):
        speech = trim_silence(synthesize(english, talk.voice, talk.speed, talk.pitch))
        if not len(speech):
            raise RuntimeError(f"talk {talk.id}: {talk.voice.engine} {talk.voice.name} gave silence for {english!r}")
        silence = np.zeros(round(pause * SAMPLE_RATE), np.float32)
        pieces += [silence, speech]
        spans.append(((n + len(silence)) / SAMPLE_RATE, (n + len(silence) + len(speech)) / SAMPLE_RATE))
        n += len(silence) + len(speech)
    return pcm16_to_float(float_to_pcm16(np.concatenate(pieces))), spans


def streaming_encoder(encoder: WhisperEncoder) -> StreamingEncoder:
    """The serving geometry: 56-frame chunks, 200 frames of left context, window positions."""
    return StreamingEncoder(encoder, HPO_CHUNK_MS // FRAME_MS, LEFT_CONTEXT_MS // FRAME_MS, "window")


def encode(encoder: WhisperEncoder, wave: np.ndarray) -> np.ndarray:
    """float32 PCM [n] at 16 kHz -> encoder frames [ceil((n // 160) / 2), d] float16 (push all, then flush)."""
    stream = streaming_encoder(encoder)
    frames = torch.cat([stream.push(wave), stream.flush()])
    return frames.cpu().numpy().astype(np.float16)


def manifest_line(talk: Talk, features: str, seconds: float, spans: list[tuple[float, float]]) -> dict:
    """One line of hpo_engine.train.data's manifest (times in seconds, rounded to ms)."""
    return {"id": talk.id, "features": features, "window_start": 0.0, "window_end": round(seconds, 3),
            "segments": [{"start": round(s, 3), "end": round(e, 3)} for s, e in spans],
            "src_segments": [en for en, _ in talk.pairs], "tgt_segments": [de for _, de in talk.pairs]}


def write_wav(path: Path, wave: np.ndarray) -> None:
    """float [n] at 16 kHz -> 16-bit PCM mono wav."""
    import soundfile as sf

    sf.write(path, wave, SAMPLE_RATE, subtype="PCM_16")


def wav_path(out: Path, talk_id: str) -> Path:
    return out / talk_id.split("-")[0] / "wav" / f"{talk_id}.wav"


def save_wav(out: Path, talk: Talk, wave: np.ndarray) -> None:
    path = wav_path(out, talk.id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.wav")
    write_wav(tmp, wave)
    tmp.replace(path)


def build_talk(talk: Talk, out: Path, encoder: WhisperEncoder, audio: bool = False) -> dict:
    """Make one talk's files under `out` (skipped when its .npy exists; a wav asked for later is
    synthesised again: the same talk renders the same samples); returns its manifest line."""
    feats = out / talk.split / "feats" / f"{talk.id}.npy"
    meta = feats.with_suffix(".json")
    want_wav = audio or talk.split == "test"
    if feats.exists():
        line = json.loads(meta.read_text(encoding="utf-8"))
        if line["src_segments"] != [en for en, _ in talk.pairs]:
            raise RuntimeError(f"{meta} holds other sentences than this build plans (another --seed or "
                               f"dictionary?): use a fresh OUT_DIR")
        if want_wav and not wav_path(out, talk.id).exists():
            save_wav(out, talk, render(talk)[0])
        return line
    feats.parent.mkdir(parents=True, exist_ok=True)
    wave, spans = render(talk)
    line = manifest_line(talk, feats.relative_to(out).as_posix(), len(wave) / SAMPLE_RATE, spans)
    meta.write_text(json.dumps(line, ensure_ascii=False), encoding="utf-8")
    if want_wav:
        save_wav(out, talk, wave)
    tmp = feats.with_suffix(".tmp.npy")
    np.save(tmp, encode(encoder, wave))
    tmp.replace(feats)                       # last: the talk counts as done only when complete
    return line


def audio_line(line: dict) -> dict:
    """A manifest line naming the talk's wav instead of its encoder frames."""
    out = {k: v for k, v in line.items() if k != "features"}
    return {"id": line["id"], "audio": wav_path(Path(), line["id"]).as_posix(), **out}


def write_manifest(path: Path, lines: list[dict]) -> None:
    path.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8")


def write_test_files(out: Path, lines: list[dict], lang: str = "de") -> None:
    """audio.txt, references.<lang> and segmentation.yaml of the test talks (in manifest order)."""
    test = out / "test"
    test.mkdir(parents=True, exist_ok=True)
    (test / "audio.txt").write_text("".join(f"wav/{line['id']}.wav\n" for line in lines), encoding="utf-8")
    (test / f"references.{lang}").write_text(
        "".join(ref + "\n" for line in lines for ref in line["tgt_segments"]), encoding="utf-8")
    (test / "segmentation.yaml").write_text("".join(
        f"- {{wav: {line['id']}.wav, offset: {seg['start']:.3f}, duration: {seg['end'] - seg['start']:.3f}}}\n"
        for line in lines for seg in line["segments"]), encoding="utf-8")


def build(out: str | Path, talks: dict[str, int] | None = None, seed: int = 0,
          dictionary: str | Path | None = None, encoder: WhisperEncoder | None = None, progress: bool = True,
          lang: str = "de", audio: bool = False) -> dict:
    """Build every split's talks under `out`, English speech with `lang` references (`dictionary`: the
    Ding file for de, the hsk wheel for zh); returns totals {talks, sentences, hours, seconds (wall)}."""
    from tqdm import tqdm

    from hpo_engine.speech.encoder import load_tiny_en_encoder

    t0 = time.perf_counter()
    out = Path(out)
    talks = {**DEFAULT_TALKS, **(talks or {})}
    if lang not in LANGS:
        raise ValueError(f"target language {lang!r}: the demo data has {', '.join(LANGS)}")
    pairs = load_pairs(dictionary) if lang == "de" else load_zh_pairs(dictionary)
    plans = [t for split in SPLITS for t in plan_talks(pairs[split], split, talks[split], seed)]
    encoder = encoder or load_tiny_en_encoder()
    lines: dict[str, list[dict]] = {split: [] for split in SPLITS}
    for talk in tqdm(plans, desc="talks", unit="talk", disable=not progress):
        lines[talk.split].append(build_talk(talk, out, encoder, audio))
    for split in SPLITS:
        write_manifest(out / f"{split}.jsonl", lines[split])
        if audio:       # the same talks naming their wavs (relative to OUT, like the features)
            write_manifest(out / f"{split}.audio.jsonl", [audio_line(line) for line in lines[split]])
    write_test_files(out, lines["test"], lang)
    done = [line for split in SPLITS for line in lines[split]]
    return {"talks": len(done), "sentences": sum(len(line["segments"]) for line in done),
            "hours": sum(line["window_end"] for line in done) / 3600, "seconds": time.perf_counter() - t0}
