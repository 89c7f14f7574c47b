"""The W8A8 linear kernel (csrc/linear_w8a8_cpu.cpp) against its reference `linear_w8a8_ref` (activations
quantized per 64-block, exact integer block dots, float64 sums), both of its paths (AVX512-VNNI and the
plain loop), odd sizes, strides, batch and thread invariance; and the engine quantized with it."""
import itertools

import pytest
import torch
import torch.nn.functional as F

from hpo_engine import Engine, SamplingParams
from hpo_engine.kernels import cpu_linear
from hpo_engine.kernels.cpu_linear import (linear_w8a8, linear_w8a8_ref, quantize_activations, quantize_int8,
                                           supports_linear_w8a8)
from hpo_engine.models import quantize
from hpo_engine.models.quantize import Int8Linear
from tests.conftest import make_tiny_model

pytestmark = pytest.mark.skipif(cpu_linear._LINEAR_W8A8 is None, reason="hpo_engine._C not built")
PATHS = [pytest.param(True, id="vnni", marks=pytest.mark.skipif(not cpu_linear.W8A8_VNNI, reason="no AVX512-VNNI")),
         pytest.param(False, id="plain")]
ODD = list(itertools.product([1, 2, 3, 4, 5, 9, 64], [1, 3, 4, 7, 66], [1, 17, 63, 64, 65, 130, 200]))


@pytest.fixture(params=PATHS)
def path(request, monkeypatch):
    monkeypatch.setattr(cpu_linear, "W8A8_VNNI", request.param)
    return request.param


def _inputs(m, n, k, dtype, bias, seed):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(m, k, generator=g) * torch.rand(m, k, generator=g).pow(4) * 8).to(dtype)   # uneven blocks
    qweight, scale = quantize_int8(torch.randn(n, k, generator=g))
    b = torch.randn(n, generator=g).to(dtype) if bias else None
    return x, qweight, scale, b


def _check(y, x, qweight, scale, b):
    """y within float32 accumulation error of the exact W8A8 result (plus one output rounding)."""
    xq, xscale = quantize_activations(x)
    x_used = (xq.double().view(x.shape[0], -1) * torch.repeat_interleave(xscale.double(), 64, dim=1)[:, :x.shape[1]])
    w_used = qweight.double() * scale.double()[:, None]
    exact = F.linear(x_used, w_used, None if b is None else b.double())
    bound = F.linear(x_used.abs(), w_used.abs()) + (0 if b is None else b.double().abs())
    rounding = 2.0 ** -8 if y.dtype == torch.bfloat16 else 2.0 ** -23
    assert y.dtype == x.dtype and y.shape == exact.shape
    assert ((y.double() - exact).abs() <= 1e-6 * bound + rounding * exact.abs() + 1e-30).all()
    ref = linear_w8a8_ref(x, qweight, scale, b)
    assert ((y.double() - ref.double()).abs() <= 1e-6 * bound + 2 * rounding * exact.abs() + 1e-30).all()


def test_activations_round_per_block_of_64():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 150, generator=g) * 5
    x[1, 64:128] = 0                                               # an all-zero block
    q, s = quantize_activations(x)
    assert q.shape == (3, 150) and q.dtype == torch.int8 and s.shape == (3, 3)
    assert q.abs().max() <= 127 and (q[1, 64:128] == 0).all() and s[1, 1] == 1
    for b in range(3):
        block = slice(64 * b, min(150, 64 * b + 64))
        err = (q[:, block].float() * s[:, b:b + 1] - x[:, block]).abs()
        assert (err <= s[:, b:b + 1] / 2 * (1 + 1e-6)).all()
    assert (q[[0, 2], :64].abs().amax(1) == 127).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_odd_sizes_match_the_reference(path, dtype, bias):
    with torch.inference_mode():
        for i, (m, n, k) in enumerate(ODD):
            x, qweight, scale, b = _inputs(m, n, k, dtype, bias, seed=200 + i)
            assert supports_linear_w8a8(x, qweight, scale, b)
            _check(linear_w8a8(x, qweight, scale, b), x, qweight, scale, b)


@pytest.mark.parametrize("m,n,k", [(1, 4864, 896), (7, 896, 4864), (16, 4099, 64), (33, 2049, 577)])
def test_model_sizes_two_threads(path, m, n, k, monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    with torch.inference_mode():
        x, qweight, scale, b = _inputs(m, n, k, torch.bfloat16, True, seed=m + n + k)
        _check(linear_w8a8(x, qweight, scale, b), x, qweight, scale, b)


def test_vnni_and_plain_paths_agree(monkeypatch):
    if not cpu_linear.W8A8_VNNI:
        pytest.skip("no AVX512-VNNI")
    x, qweight, scale, b = _inputs(5, 300, 333, torch.float32, True, seed=3)
    with torch.inference_mode():
        vnni = linear_w8a8(x, qweight, scale, b)
        monkeypatch.setattr(cpu_linear, "W8A8_VNNI", False)
        torch.testing.assert_close(linear_w8a8(x, qweight, scale, b), vnni, rtol=1e-5, atol=1e-4)


def test_rows_are_batch_and_thread_invariant_bitwise(path, monkeypatch):
    x, qweight, scale, b = _inputs(16, 1031, 333, torch.float32, True, seed=9)
    with torch.inference_mode():
        monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
        batched = linear_w8a8(x, qweight, scale, b)
        monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
        assert torch.equal(linear_w8a8(x, qweight, scale, b), batched)
        for m in (1, 2, 3, 5, 11):
            for start in (0, 16 - m):
                assert torch.equal(linear_w8a8(x[start:start + m], qweight, scale, b), batched[start:start + m])


def test_strided_rows_empty_batch_and_prefill(path, monkeypatch):
    x, qweight, scale, b = _inputs(6, 70, 130, torch.float32, False, seed=4)
    wide = torch.zeros(6, 200)
    wide[:, 10:140] = x
    with torch.inference_mode():
        strided = wide[:, 10:140]
        assert strided.stride(0) == 200
        assert torch.equal(linear_w8a8(strided, qweight, scale), linear_w8a8(x, qweight, scale))
        assert linear_w8a8(x[:0], qweight, scale).shape == (0, 70)
        monkeypatch.setattr(cpu_linear, "MAX_INT8_ROWS", 4)          # prefill-sized: weight-only path
        assert not supports_linear_w8a8(x, qweight, scale)
        torch.testing.assert_close(linear_w8a8(x, qweight, scale), cpu_linear.linear_int8_ref(x, qweight, scale),
                                   rtol=1e-4, atol=1e-4)     # float32 GEMM vs float32 GEMM: summation order


def test_engine_w8a8_matches_the_reference_linear(tmp_path, monkeypatch):
    """The whole engine quantized w8a8 against the same engine whose W8A8 projections run the reference."""
    folder, _ = make_tiny_model(tmp_path, "qwen2", num_heads=6, num_kv_heads=2, head_dim=40, tie=False, seed=5)
    engine = Engine.from_pretrained(folder, quantize="w8a8")
    layers = [m for m in engine.model.modules() if isinstance(m, Int8Linear)]
    assert layers and all(m.int8_activations for m in layers)
    g = torch.Generator().manual_seed(8)
    turns = [torch.randint(2, 299, (n,), generator=g).tolist() for n in (37, 3, 1)]

    def dialogue():
        stream, out = engine.open_stream(), []
        for user in turns:
            stream.append(user)
            out.append(stream.generate(SamplingParams(max_new_tokens=5, stop_token_ids=[])))
        stream.close()
        return out

    fast = dialogue()
    monkeypatch.setattr(quantize, "linear_w8a8", linear_w8a8_ref)
    ref = dialogue()
    for a, r in zip(fast, ref):
        assert a.token_ids == r.token_ids
        assert max(abs(x - y) for x, y in zip(a.logprobs, r.logprobs)) <= 1e-4
