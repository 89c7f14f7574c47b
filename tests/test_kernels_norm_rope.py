"""RMSNorm and rotary embedding (hpo_engine/kernels/cpu_norm_rope.py, csrc/norm_rope_cpu.cpp) against their
PyTorch references on fresh random inputs, odd sizes included."""
import pytest
import torch

from hpo_engine.kernels import cpu_norm_rope
from hpo_engine.kernels.cpu_norm_rope import rms_norm, rms_norm_ref, rope, rope_ref

pytestmark = pytest.mark.skipif(cpu_norm_rope._RMS_NORM is None, reason="hpo_engine._C not built")
DTYPES = [torch.float32, torch.bfloat16]
# float32: reduction order only; bf16: also one rounding step of the normalised value may fall the other way
TOL = {torch.float32: dict(rtol=2e-6, atol=2e-6), torch.bfloat16: dict(rtol=2 ** -7, atol=2 ** -7)}


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "bf16"])
@pytest.mark.parametrize("T,H", [(1, 1), (3, 15), (2, 16), (5, 17), (1, 576), (37, 897), (300, 64)])
def test_rms_norm_matches_reference(dtype, T, H, monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    g = torch.Generator().manual_seed(T * 1000 + H)
    x = (torch.randn(T, H, generator=g) * 3).to(dtype)
    w = (torch.randn(H, generator=g) + 1).to(dtype)
    with torch.inference_mode():
        y = rms_norm(x, w, 1e-6)
        assert y.dtype == dtype and y.shape == x.shape
        torch.testing.assert_close(y.float(), rms_norm_ref(x, w, 1e-6).float(), **TOL[dtype])
        strided = torch.randn(T, H + 7, generator=g).to(dtype)[:, 3:3 + H]
        torch.testing.assert_close(rms_norm(strided, w, 1e-5).float(), rms_norm_ref(strided, w, 1e-5).float(),
                                   **TOL[dtype])
        heads = x.view(T, 1, H).expand(T, 2, H).contiguous()          # [T, heads, D] as Qwen3's q_norm
        torch.testing.assert_close(rms_norm(heads, w, 1e-6).float(), rms_norm_ref(heads, w, 1e-6).float(),
                                   **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "bf16"])
def test_rms_norm_rows_are_batch_invariant_bitwise(dtype):
    x = torch.randn(20, 333).to(dtype)
    w = torch.randn(333).to(dtype)
    with torch.inference_mode():
        whole = rms_norm(x, w, 1e-6)
        for start, n in ((0, 1), (5, 3), (19, 1), (2, 17)):
            assert torch.equal(rms_norm(x[start:start + n], w, 1e-6), whole[start:start + n])


def _rope_inputs(T, heads, D, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, heads, D, generator=g).to(dtype)
    angle = torch.rand(T, D // 2, generator=g) * 100
    emb = torch.cat((angle, angle), dim=-1)
    return x, emb.cos().to(dtype), emb.sin().to(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "bf16"])
@pytest.mark.parametrize("T,heads,D", [(1, 1, 2), (3, 9, 64), (2, 2, 30), (7, 3, 80), (1, 14, 128), (257, 4, 34)])
def test_rope_matches_reference_in_place(dtype, T, heads, D, monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    x, cos, sin = _rope_inputs(T, heads, D, dtype, seed=T + heads + D)
    expected = rope_ref(x, cos, sin)
    with torch.inference_mode():
        y = rope(x, cos, sin)
    assert y.data_ptr() == x.data_ptr()                                  # rotated in place
    torch.testing.assert_close(y.float(), expected.float(), **TOL[dtype])


def test_training_takes_the_references_with_autograd():
    x, cos, sin = _rope_inputs(4, 2, 16, torch.float32, seed=1)
    x.requires_grad_(True)
    w = torch.randn(16, requires_grad=True)
    out = rms_norm(rope(x, cos, sin), w, 1e-6)
    assert out.grad_fn is not None
    out.sum().backward()
    assert x.grad is not None and w.grad is not None
    torch.testing.assert_close(out, rms_norm_ref(rope_ref(x, cos, sin), w, 1e-6))


def test_other_layouts_take_the_references():
    x, cos, sin = _rope_inputs(4, 2, 16, torch.float32, seed=2)
    with torch.inference_mode():
        broadcast = rope(x, cos[:1], sin[:1])                            # a [1, D] angle (rotate_keys)
        torch.testing.assert_close(broadcast, rope_ref(x, cos[:1], sin[:1]))
        assert torch.equal(rope(x.double(), cos.double(), sin.double()), rope_ref(x.double(), cos.double(),
                                                                                  sin.double()))
