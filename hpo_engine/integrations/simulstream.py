"""hpo-engine's SST stream as a speech processor of FBK's simulstream 1.0.0 (the IWSLT 2026 simultaneous
track's runner, SimulEval's successor).

    simulstream_inference --speech-processor-config hpo.yaml --wav-list-file wavs.txt --tgt-lang de \\
        --metrics-log-file metrics.jsonl

hpo.yaml is simulstream's own YAML (the same file serves as the --eval-config of its scorers):

    type: hpo_engine.integrations.simulstream.HpoSpeechProcessor
    model: runs/de/sst          # an SST checkpoint folder; absent: the embedded default model, as `translate`
    speech_chunk_size: 1.12     # seconds of audio simulstream hands over per call; absent: the model's chunk
    chunk_multiplier: 1         # as `translate -m`: speech per turn = m x the checkpoint's chunk
    max_new_tokens: 40          # per assistant turn; absent: the checkpoint's (x m)
    tgt_lang: de                # target while no client names one (--tgt-lang); absent: the checkpoint's
    latency_unit: word          # word | char; absent: char for zh/ja, else word
    detokenizer_type: simuleval # how simulstream's scorers rebuild the text from the tokens below
    device: cpu
    threads: 1                  # torch threads; absent: torch's default

Every call feeds its audio to one SSTStream (hpo_engine/sst/stream.py); each chunk of the model that the
audio completes becomes a turn, and the turns' new text is returned as IncrementalOutput tokens = its
latency units (words, or characters for char), never deleted (the SST stream does not retranslate).
With speech_chunk_size equal to the model's chunk (1.12 s x m, the default), the text and the delays of
simulstream's log are those of `hpo-engine translate -m m` on the same file. Another speech_chunk_size
gives the same text, each turn returned at the end of the call that completes its chunk.

The model is loaded once per (model, device) and shared by every processor of simulstream's pool (its
server runs them in threads): a lock serialises their turns, one stream at a time.

simulstream resamples audio that is not 16 kHz with librosa.resample, which needs librosa's numba / soxr /
scikit-learn stack; with the light install (librosa --no-deps) give it 16 kHz WAVs.

`python -m hpo_engine.integrations.simulstream instances METRICS_LOG -o instances.log` turns
simulstream's metrics log into a SimulEval-style log that `hpo-engine score longform` reads.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import numbers
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import List, Optional

import numpy as np

try:
    from simulstream.server.speech_processors import SAMPLE_RATE, SpeechProcessor
    from simulstream.server.speech_processors.incremental_output import IncrementalOutput
except ImportError as e:     # pragma: no cover - depends on the environment
    raise ImportError(
        "hpo_engine.integrations.simulstream needs simulstream: pip install --no-deps simulstream==1.0.0 "
        "librosa==0.11.0 && pip install -e '.[simulstream]' (`make install` does both)") from e

from hpo_engine.sst.config import LANGUAGE_NAMES

LOGGER = logging.getLogger(__name__)
LATENCY_UNITS = ("word", "char")
SOURCE_NAMES = {"en": "English", **LANGUAGE_NAMES}

_MODELS: dict = {}                 # (resolved model path or None, device) -> (SSTModel, its lock)
_MODELS_LOCK = threading.Lock()


def _int_option(config, name: str, minimum: int) -> Optional[int]:
    value = getattr(config, name, None)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"HpoSpeechProcessor config: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


@dataclasses.dataclass(frozen=True)
class Options:
    """The processor's keys of simulstream's YAML, checked."""
    model: Optional[str] = None
    speech_chunk_size: Optional[float] = None
    chunk_multiplier: int = 1
    max_new_tokens: Optional[int] = None
    tgt_lang: Optional[str] = None
    latency_unit: Optional[str] = None
    device: str = "cpu"
    threads: Optional[int] = None

    @classmethod
    def parse(cls, config: SimpleNamespace) -> "Options":
        model = getattr(config, "model", None)
        if model is not None:
            path = Path(str(model)).expanduser()
            if not path.is_dir():
                raise FileNotFoundError(f"HpoSpeechProcessor config: model {str(model)!r} is not a folder "
                                        "(an SST checkpoint; leave `model` out for the embedded default)")
            model = str(path.resolve())
        size = getattr(config, "speech_chunk_size", None)
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, numbers.Real) or not size > 0 \
                    or int(SAMPLE_RATE * size) < 1:
                raise ValueError("HpoSpeechProcessor config: speech_chunk_size must be a number of seconds > 0 "
                                 f"(at least one sample), got {size!r}")
            size = float(size)
        unit = getattr(config, "latency_unit", None)
        if unit is not None and unit not in LATENCY_UNITS:
            raise ValueError(f"HpoSpeechProcessor config: latency_unit must be one of {LATENCY_UNITS}, got {unit!r}")
        detokenizer = getattr(config, "detokenizer_type", None)
        if detokenizer is not None and detokenizer != "simuleval":
            raise ValueError("HpoSpeechProcessor config: its tokens are latency units (words or characters), "
                             f"which simulstream's scorers join with detokenizer_type: simuleval, not {detokenizer!r}")
        tgt = getattr(config, "tgt_lang", None)
        return cls(model=model, speech_chunk_size=size,
                   chunk_multiplier=_int_option(config, "chunk_multiplier", 1) or 1,
                   max_new_tokens=_int_option(config, "max_new_tokens", 1),
                   tgt_lang=None if tgt is None else str(tgt), latency_unit=unit,
                   device=str(getattr(config, "device", None) or "cpu"),
                   threads=_int_option(config, "threads", 1))


def shared_model(options: Options):
    """(SSTModel, lock) for options.model on options.device, opened on first use (as `translate` opens it)."""
    if options.threads:
        import torch
        torch.set_num_threads(options.threads)
    key = (options.model, options.device)
    with _MODELS_LOCK:
        if key not in _MODELS:
            from hpo_engine.sst.checkpoint import open_sst
            model = open_sst(options.model, device=options.device)
            if not model.config.trained:
                LOGGER.warning("note: %s", model.config.description or "the model is untrained")
            LOGGER.info("hpo-engine SST model %s on %s (chunks of %d ms)", model.path, options.device,
                        model.config.chunk_ms)
            _MODELS[key] = (model, threading.Lock())
        return _MODELS[key]


def latency_units(text: str, unit: str) -> List[str]:
    """The tokens of a piece of text: its whitespace words, or every character (spaces included)."""
    return text.split() if unit == "word" else list(text)


class HpoSpeechProcessor(SpeechProcessor):
    """simulstream SpeechProcessor over hpo-engine's SST stream (see the module's docstring)."""

    def __init__(self, config: SimpleNamespace):
        super().__init__(config)
        self.options = Options.parse(config)
        shared, self._lock = shared_model(self.options)
        sst_config = shared.config.with_chunk_multiplier(self.options.chunk_multiplier)
        self.model = dataclasses.replace(shared, config=sst_config)   # same engine and encoder
        self.default_target_lang = self.options.tgt_lang or sst_config.default_target_lang
        sst_config.instruction(self.default_target_lang)              # an unknown language fails here
        self._chunk_s = self.options.speech_chunk_size or sst_config.chunk_ms / 1000
        model_samples = sst_config.chunk_ms * SAMPLE_RATE // 1000
        if round(self._chunk_s * SAMPLE_RATE) % model_samples:
            LOGGER.info("speech_chunk_size %.3f s is not a multiple of the model's %d ms chunk: each turn "
                        "is returned at the end of the call that completes its chunk", self._chunk_s,
                        sst_config.chunk_ms)
        self._stream = None
        self._emitted = False
        self.target_lang = self.default_target_lang

    @property
    def speech_chunk_size(self) -> float:
        return self._chunk_s

    @property
    def latency_unit(self) -> str:
        from hpo_engine.sst.simulate import latency_unit
        return self.options.latency_unit or latency_unit(self.target_lang)

    @classmethod
    def load_model(cls, config: SimpleNamespace):
        shared_model(Options.parse(config))

    def set_target_language(self, language: str) -> None:
        language = str(language)
        self.model.config.instruction(language)     # SSTConfigError (a ValueError) naming the supported ones
        if language == self.target_lang:
            return
        if self._stream is not None and (self._stream.samples_fed or self._stream.turns_done):
            raise RuntimeError(f"the target language cannot change inside a stream ({self.target_lang} -> "
                               f"{language}); it is set before the audio")
        self._close()
        self.target_lang = language

    def set_source_language(self, language: str) -> None:
        name = SOURCE_NAMES.get(str(language).lower().split("-")[0].split("_")[0])
        instruction = self.model.config.instruction(self.target_lang)
        if name is not None and f"from {name}" not in instruction:
            LOGGER.warning("source language %s: this checkpoint's instruction is %r", language, instruction)

    def process_chunk(self, waveform: np.ndarray) -> IncrementalOutput:
        stream = self._open()
        with self._lock:
            deltas = stream.push(np.asarray(waveform, dtype=np.float32))
        return self._output(deltas)

    def end_of_stream(self) -> IncrementalOutput:
        if self._stream is None:          # no audio came
            return IncrementalOutput([], "", [], "")
        with self._lock:
            deltas = self._stream.finish()
        return self._output(deltas)

    def tokens_to_string(self, tokens: List[str]) -> str:
        return (" " if self.latency_unit == "word" else "").join(tokens)

    def clear(self) -> None:
        self._close()
        self._emitted = False
        self.target_lang = self.default_target_lang

    def _open(self):
        if self._stream is None:
            from hpo_engine.sst.stream import SSTStream
            with self._lock:
                self._stream = SSTStream(self.model, self.target_lang, self.options.max_new_tokens)
        return self._stream

    def _close(self) -> None:
        if self._stream is not None:
            with self._lock:
                self._stream.close()      # frees its KV blocks
            self._stream = None

    def _output(self, deltas) -> IncrementalOutput:
        tokens = latency_units("".join(d.text for d in deltas), self.latency_unit)
        text = self.tokens_to_string(tokens)
        if tokens and self._emitted and self.latency_unit == "word":
            text = " " + text             # what a client appends to what it has
        self._emitted = self._emitted or bool(tokens)
        return IncrementalOutput(new_tokens=tokens, new_string=text, deleted_tokens=[], deleted_string="")


def _elapsed(delays: List[float], ca_delays: List[float]) -> List[float]:
    """SimulEval-style elapsed times (compute accumulating over a recording) from which the StreamLAAL
    repair of `hpo-engine score` (e_i - e_{i-1} + d_{i-1}, FBK's stream_laal.py) gives back simulstream's
    computation-aware delays (audio processed + the compute time of the call that wrote the unit)."""
    out: List[float] = []
    for i, (d, ca) in enumerate(zip(delays, ca_delays)):
        if i == 0:
            out.append(ca)
        elif (d, ca) == (delays[i - 1], ca_delays[i - 1]):      # written by the same call
            out.append(out[-1])
        else:
            out.append(out[-1] + ca - delays[i - 1])
    return out


def metrics_log_to_instances(metrics_log, latency_unit: str = "word") -> List[dict]:
    """simulstream's metrics log -> one SimulEval-style row per recording (`hpo-engine score longform`):
    the text and delays as simulstream's own LogReader rebuilds them, in ms; source = the wav's name."""
    from simulstream.metrics.readers import LogReader

    if latency_unit not in LATENCY_UNITS:
        raise ValueError(f"latency_unit must be one of {LATENCY_UNITS}, got {latency_unit!r}")
    wav_of_id, wav_of_stem, audio_s = {}, {}, {}
    with open(metrics_log, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{metrics_log} line {number}: invalid JSON ({e.msg})") from None
            if "metadata" in row:
                wav = row["metadata"]["wav_name"]
                wav_of_id[row["id"]] = wav
                wav_of_stem.setdefault(Path(wav).stem, wav)
            elif "total_audio_processed" in row:
                stem = Path(wav_of_id[row["id"]]).stem
                audio_s[stem] = max(audio_s.get(stem, 0.0), row["total_audio_processed"])
    reader = LogReader(SimpleNamespace(detokenizer_type="simuleval", latency_unit=latency_unit),
                       str(metrics_log), latency_unit=latency_unit)
    rows = []
    for index, (stem, out) in enumerate(reader.final_outputs_and_latencies().items()):
        delays = [d * 1000 for d in out.ideal_delays]
        rows.append({"index": index, "source": [wav_of_stem[stem]], "prediction": out.final_text,
                     "delays": delays,
                     "elapsed": _elapsed(delays, [d * 1000 for d in out.computational_aware_delays]),
                     "source_length": audio_s[stem] * 1000})
    return rows


def _cli():
    import click

    @click.group()
    def main():
        """hpo-engine and simulstream."""

    @main.command()
    @click.argument("metrics_log", type=click.Path(exists=True, dir_okay=False))
    @click.option("--output", "-o", required=True, type=click.Path(dir_okay=False),
                  help="SimulEval-style JSONL for `hpo-engine score longform`.")
    @click.option("--latency-unit", type=click.Choice(LATENCY_UNITS), default="word", show_default=True)
    def instances(metrics_log, output, latency_unit):
        """simulstream's METRICS_LOG (simulstream_inference --metrics-log-file) -> a SimulEval-style log."""
        from hpo_engine.sst.cli import atomic_output

        try:
            rows = metrics_log_to_instances(metrics_log, latency_unit)
        except (ValueError, KeyError, AssertionError) as e:
            raise click.ClickException(f"{metrics_log}: {e!r}") from None
        with atomic_output(output) as out:
            for row in rows:
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
        click.echo(f"{len(rows)} recording(s) -> {output}", err=True)

    return main


if __name__ == "__main__":
    _cli()()
