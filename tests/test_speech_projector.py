"""Projector, front end (encoder + projector per chunk) and precomputed features."""
import numpy as np
import pytest
import torch

from hpo_engine.speech.encoder import EncoderConfig, WhisperEncoder
from hpo_engine.speech.features import load_feature_row, split_chunks
from hpo_engine.speech.frontend import SpeechFrontEnd
from hpo_engine.speech.projector import Projector, ProjectorConfig, stack_frames
from hpo_engine.speech.streaming import StreamingEncoder


@pytest.mark.parametrize("T,k", [(8, 4), (9, 4), (1, 4), (7, 1), (10, 3)])
def test_stack_frames_is_concatenation(T, k):
    x = torch.randn(2, T, 5)
    y = stack_frames(x, k)
    assert y.shape == (2, -(-T // k), k * 5)
    for i in range(y.shape[1]):
        for j in range(k):
            want = x[:, i * k + j] if i * k + j < T else torch.zeros(2, 5)
            assert torch.equal(y[:, i, j * 5:(j + 1) * 5], want)


def test_projector_matches_explicit_mlp():
    torch.manual_seed(0)
    p = Projector(ProjectorConfig(d_encoder=6, d_llm=10, stack=4, d_hidden=7))
    x = torch.randn(3, 13, 6)
    y = p(x)
    assert y.shape == (3, 4, 10) and p.num_embeddings(13) == 4
    for b in range(3):
        for i in range(4):
            v = torch.cat([x[b, t] if t < 13 else torch.zeros(6) for t in range(4 * i, 4 * i + 4)])
            h = torch.nn.functional.gelu(p.fc1.weight @ v + p.fc1.bias)
            torch.testing.assert_close(y[b, i], p.fc2.weight @ h + p.fc2.bias)


@pytest.fixture(scope="module")
def parts():
    torch.manual_seed(1)
    enc = WhisperEncoder(EncoderConfig(d_model=32, n_heads=4, n_layers=2, d_ff=64, max_positions=300)).eval()
    proj = Projector(ProjectorConfig(d_encoder=32, d_llm=24, stack=4)).eval()
    return enc, proj


@pytest.mark.parametrize("m", [1, 2])
def test_front_end_gives_P_embeddings_per_chunk(parts, m):
    enc, proj = parts
    fe = SpeechFrontEnd(enc, proj, chunk_ms=1120 * m, left_context_ms=2000)
    assert fe.max_rows_per_chunk == 14 * m and fe.chunk_samples == 17920 * m
    rng = np.random.default_rng(m)
    audio = rng.standard_normal(int(16000 * 3.5 * m) + 77).astype(np.float32)
    chunks = fe.push(audio[:10000]) + fe.push(audio[10000:])
    assert len(chunks) == len(audio) // fe.chunk_samples and all(c.shape == (14 * m, 24) for c in chunks)
    tail = fe.flush()
    frames_left = -(-(len(audio) // 160) // 2) - len(chunks) * 56 * m
    assert len(tail) == 1 and tail[0].shape == (-(-frames_left // 4), 24)
    # the same as projecting the streaming encoder's frames all at once
    with torch.no_grad():
        ref = proj(StreamingEncoder(enc, 56 * m, 100).push(audio))
    torch.testing.assert_close(torch.cat(chunks), ref, atol=1e-5, rtol=1e-5)
    pcm = (audio[:17920 * m] * 32767).astype("<i2").tobytes()
    assert len(fe.push_pcm16(pcm)) == 1 and fe.flush() == []


def test_front_end_lookahead_flushes_everything(parts):
    enc, proj = parts
    fe = SpeechFrontEnd(enc, proj, chunk_ms=1120, left_context_ms=1000, right_context_ms=400)
    audio = np.random.default_rng(7).standard_normal(17920 * 2 + 3000).astype(np.float32)
    pushed = fe.push(audio)            # chunk 2 waits for its 400 ms of lookahead
    tail = fe.flush()
    assert [len(c) for c in pushed] == [14] and [len(c) for c in tail] == [14, 3]


def test_front_end_rejects_bad_geometry(parts):
    enc, proj = parts
    with pytest.raises(ValueError, match="multiple of 80 ms"):
        SpeechFrontEnd(enc, proj, chunk_ms=1100)
    with pytest.raises(ValueError, match="width"):
        SpeechFrontEnd(enc, Projector(ProjectorConfig(d_encoder=16, d_llm=8)))


def test_feature_rows_all_layouts(tmp_path):
    rng = np.random.default_rng(0)
    block = rng.standard_normal((3, 40, 8)).astype(np.float16)
    np.save(tmp_path / "block.npy", block)
    got = load_feature_row(tmp_path / "block.npy", 2, n_frames=31, d_model=8)
    assert got.dtype == torch.float32 and torch.equal(got, torch.from_numpy(block[2, :31].astype(np.float32)))
    single = rng.standard_normal((17, 8)).astype(np.float32)
    np.save(tmp_path / "single.npy", single)
    assert torch.equal(load_feature_row(tmp_path / "single.npy", 0), torch.from_numpy(single))
    ragged = np.empty(2, dtype=object)
    ragged[0], ragged[1] = single, single[:5]
    np.save(tmp_path / "ragged.npy", ragged, allow_pickle=True)
    with pytest.raises(ValueError, match="allow_pickle"):
        load_feature_row(tmp_path / "ragged.npy", 1)
    assert load_feature_row(tmp_path / "ragged.npy", 1, allow_pickle=True).shape == (5, 8)
    for bad, match in [(lambda: load_feature_row(tmp_path / "block.npy", 3), "out of range"),
                       (lambda: load_feature_row(tmp_path / "single.npy", 1), "row must be 0"),
                       (lambda: load_feature_row(tmp_path / "block.npy", 0, d_model=2560), "width"),
                       (lambda: load_feature_row(tmp_path / "block.npy", 0, n_frames=41), "frames")]:
        with pytest.raises((ValueError, IndexError), match=match):
            bad()
    chunks = split_chunks(got, 14)
    assert [len(c) for c in chunks] == [14, 14, 3] and torch.equal(torch.cat(chunks), got)
