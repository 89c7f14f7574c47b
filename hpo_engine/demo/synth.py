"""English speech synthesis, offline: espeak-ng (22.05 kHz, resampled) and flite (16 kHz).

Every function returns float32 mono PCM [n] at 16 kHz in [-1, 1] (`hpo_engine.speech.audio`'s
convention), so the samples go straight into the streaming encoder.

Voices: TRAIN_VOICES are six espeak-ng voices/variants (drawn per talk with a random speed and pitch)
and flite's three male voices; TEST_VOICE is flite's `slt`, the only female flite voice, never used
in training. Whisper tiny.en word error rate (greedy, 25 test sentences, espeak-ng at speed 160 and
pitch 50; lower-cased, punctuation removed): flite awb 0.06, rms 0.07, slt 0.09, kal16 0.15;
espeak-ng en-us+m3 0.19, en 0.22, en-gb+m7 0.22, en-us 0.23, en-us+f2 0.23, en-gb-x-rp 0.25,
en-us+f3 0.27, en-029 0.42, en-gb-scotland 0.45 (the last two left out: barely intelligible to the
encoder). Flite voices are in training so that the test measures an unseen speaker, not only an
unseen synthesiser.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpo_engine.speech.audio import SAMPLE_RATE, load_audio


@dataclass(frozen=True)
class Voice:
    """A synthesiser voice with ranges to draw from (espeak-ng only; flite voices are fixed).

    engine: "espeak-ng" or "flite"; name: espeak-ng's `-v` (language[+variant]) or flite's `-voice`;
    speed: espeak-ng words per minute (lo, hi); pitch: espeak-ng pitch 0..99 (lo, hi).
    """
    engine: str
    name: str
    speed: tuple[int, int] = (0, 0)
    pitch: tuple[int, int] = (0, 0)

    def draw(self, rng: np.random.Generator) -> tuple[int, int]:
        """(speed, pitch), uniform in the voice's ranges (both 0 for flite)."""
        return int(rng.integers(self.speed[0], self.speed[1] + 1)), int(rng.integers(self.pitch[0], self.pitch[1] + 1))


TRAIN_VOICES = (
    Voice("espeak-ng", "en-us", (140, 180), (35, 65)),
    Voice("espeak-ng", "en", (140, 180), (35, 60)),
    Voice("espeak-ng", "en-gb-x-rp", (140, 180), (35, 60)),
    Voice("espeak-ng", "en-us+m3", (140, 180), (30, 55)),
    Voice("espeak-ng", "en-gb+m7", (140, 180), (30, 55)),
    Voice("espeak-ng", "en-us+f2", (140, 180), (45, 75)),
    Voice("flite", "rms"),
    Voice("flite", "awb"),
    Voice("flite", "kal16"),
)
TEST_VOICE = Voice("flite", "slt")


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise FileNotFoundError(f"speech synthesiser `{name}` not found on PATH: install it with "
                                f"`apt-get install -y {name}` (or `make apt`)")
    return path


def _run(cmd: list[str], text_in: str | None = None) -> bytes:
    done = subprocess.run(cmd, input=None if text_in is None else text_in.encode("utf-8"),
                          capture_output=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({done.returncode}): {done.stderr.decode(errors='replace').strip()}")
    return done.stdout


def espeak(text: str, voice: str = "en-us", speed: int = 160, pitch: int = 50) -> np.ndarray:
    """espeak-ng's rendering of `text` -> float32 [n] at 16 kHz (band-limited resampling from 22.05 kHz).

    The text goes in on stdin, so a sentence is never read as an option.
    """
    wav = _run([_binary("espeak-ng"), "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout"], text)
    return load_audio(wav, SAMPLE_RATE)


def flite(text: str, voice: str = "slt") -> np.ndarray:
    """flite's rendering of `text` -> float32 [n] at 16 kHz (flite's own rate for slt/rms/awb/kal16)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.wav"
        _run([_binary("flite"), "-voice", voice, "-t", text, "-o", str(out)])
        return load_audio(out, SAMPLE_RATE)


def synthesize(text: str, voice: Voice, speed: int = 0, pitch: int = 0) -> np.ndarray:
    """`text` spoken by `voice` -> float32 [n] at 16 kHz; speed/pitch are for espeak-ng voices."""
    text = text.replace("’", "'")            # the dictionary's typographic apostrophe
    if voice.engine == "espeak-ng":
        return espeak(text, voice.name, speed, pitch)
    if voice.engine == "flite":
        return flite(text, voice.name)
    raise ValueError(f"unknown speech engine {voice.engine!r} (espeak-ng or flite)")


def trim_silence(wave: np.ndarray, threshold: float = 0.01) -> np.ndarray:
    """`wave` [n] without its leading and trailing samples below `threshold` x its peak (40 dB down)."""
    loud = np.flatnonzero(np.abs(wave) > threshold * np.abs(wave).max(initial=0.0))
    return wave[loud[0]:loud[-1] + 1] if len(loud) else wave[:0]
