"""The CPU linear layers (hpo_engine/kernels/cpu_linear.py) against float64 F.linear: the C++ small-batch kernel,
oneDNN's float32 GEMM above it, and the weight-only int8 kernel (on its dequantized weight)."""
import itertools

import pytest
import torch
import torch.nn.functional as F

from hpo_engine.kernels import cpu_linear
from hpo_engine.kernels.cpu_linear import (dequantize_int8, linear, linear_int8, linear_int8_ref, quantize_int8,
                                           supports_linear, supports_linear_int8, supports_onednn)

MAX_ROWS = 16

pytestmark = pytest.mark.skipif(not cpu_linear.AVAILABLE, reason="hpo_engine._C not built")


def _inputs(m, n, k, dtype, bias, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g).to(dtype)
    w = (torch.randn(n, k, generator=g) / k ** 0.5).to(dtype)
    b = torch.randn(n, generator=g).to(dtype) if bias else None
    return x, w, b


def _check_close(y, x, w, b):
    """|y - exact| within fp32 accumulation error (|x| @ |w|^T scaled), plus one output rounding."""
    exact = F.linear(x.double(), w.double(), None if b is None else b.double())
    bound = F.linear(x.double().abs(), w.double().abs()) + (0 if b is None else b.double().abs())
    rounding = 2.0 ** -8 if y.dtype == torch.bfloat16 else 2.0 ** -23
    assert y.dtype == x.dtype and y.shape == exact.shape
    assert ((y.double() - exact).abs() <= 1e-6 * bound + rounding * exact.abs() + 1e-30).all()


ODD = list(itertools.product([1, 2, 3, 5, 8, 13, 16], [1, 3, 4, 7, 66], [1, 15, 16, 17, 50]))


@pytest.fixture(autouse=True)
def all_sizes(monkeypatch):
    """Every case through the kernel, whatever the per-dtype crossover (tests below set their own)."""
    monkeypatch.setattr(cpu_linear, "MAX_ROWS", {torch.float32: 16, torch.bfloat16: 16})


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_odd_sizes_match_float64(dtype, bias):
    with torch.inference_mode():
        for i, (m, n, k) in enumerate(ODD):
            x, w, b = _inputs(m, n, k, dtype, bias, seed=i)
            assert supports_linear(x, w, b)
            _check_close(linear(x, w, b), x, w, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("m,n,k", [(1, 1536, 576), (7, 576, 1536), (16, 4099, 64), (4, 2049, 577)])
def test_model_sizes_two_threads_match_float64(dtype, m, n, k, monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)   # the split path even on one core
    with torch.inference_mode():
        x, w, b = _inputs(m, n, k, dtype, True, seed=m * n + k)
        _check_close(linear(x, w, b), x, w, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_rows_are_batch_and_thread_invariant_bitwise(dtype, monkeypatch):
    """A row's output is the same bits alone, in any batch, and on 1 or 3 threads (RL relies on it)."""
    x, w, b = _inputs(MAX_ROWS, 1031, 333, dtype, True, seed=7)
    with torch.inference_mode():
        monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
        batched = linear(x, w, b)
        monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
        assert torch.equal(linear(x, w, b), batched)
        for m in (1, 2, 3, 5, 11):
            for start in (0, MAX_ROWS - m):
                assert torch.equal(linear(x[start:start + m], w, b), batched[start:start + m])


def test_strided_rows_and_empty_batch():
    big = torch.randn(6, 100)
    x, w = big[:, 3:67], torch.randn(20, 64)       # row stride 100, last dim contiguous
    with torch.inference_mode():
        assert supports_linear(x, w)
        _check_close(linear(x, w), x, w, None)
        assert linear(x[:0], w).shape == (0, 20)


def test_other_inputs_take_f_linear():
    """Outside its contract the call is F.linear itself: same values, autograd intact."""
    x, w, b = _inputs(3, 10, 12, torch.float32, True, seed=3)
    w_t = torch.randn(12, 10).t()                                 # not contiguous
    x3 = torch.randn(2, 3, 12)                                    # not 2-D
    big = torch.randn(MAX_ROWS + 1, 12).bfloat16()                # too many bf16 rows
    with torch.inference_mode():
        assert not supports_linear(x, w_t) and not supports_linear(x3, w) and not supports_linear(big, w.bfloat16())
        assert not supports_linear(x.half(), w.half()) and not supports_linear(x, w.double())
        assert not supports_linear(x, w, b[:5])
        assert not supports_onednn(big, w.bfloat16()) and not supports_onednn(x3, w)
        for args in ((x, w_t), (x3, w, b), (big, w.bfloat16())):
            assert torch.equal(linear(*args), F.linear(*args))
    w.requires_grad_(True)
    assert not supports_linear(x, w, b)                           # autograd records: F.linear
    linear(x, w, b).sum().backward()
    assert torch.allclose(w.grad, x.sum(0).expand(10, 12))


def test_decoder_linear_layers_use_it_and_keep_hooks(monkeypatch):
    """The model's projections are kernels.linear at decode, and forward hooks (LoRA) still run."""
    from hpo_engine.models.decoder import Linear
    layer = Linear(12, 5, bias=True)
    seen, calls = [], []
    layer.register_forward_hook(lambda mod, inp, out: seen.append(out.shape))
    kernel = cpu_linear._LINEAR
    monkeypatch.setattr(cpu_linear, "_LINEAR", lambda *a: calls.append(a[6]) or kernel(*a))   # a[6]: M
    x = torch.randn(2, 12)
    with torch.inference_mode():
        y = layer(x)
    _check_close(y, x, layer.weight.detach(), layer.bias.detach())
    assert seen == [(2, 5)] and calls == [2]
    layer(x).sum().backward()                                     # training: F.linear, no kernel call
    assert calls == [2] and layer.weight.grad is not None


# -- oneDNN above the kernel's rows (float32 prefill) -------------------------------------------------
@pytest.mark.skipif(not cpu_linear.ONEDNN, reason="torch built without oneDNN")
@pytest.mark.parametrize("m,n,k", [(17, 3, 5), (65, 66, 17), (130, 1536, 576), (1031, 577, 129)])
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_large_float32_batches_take_onednn_and_match_float64(m, n, k, bias):
    x, w, b = _inputs(m, n, k, torch.float32, bias, seed=m + n + k)
    with torch.inference_mode():
        assert not supports_linear(x, w, b) and supports_onednn(x, w, b)
        _check_close(linear(x, w, b), x, w, b)
        strided = torch.randn(m, k + 9)[:, 4:4 + k]               # a row stride oneDNN does not take as is
        _check_close(linear(strided, w, b), strided, w, b)
    assert not supports_onednn(x, w.requires_grad_(True))          # training keeps F.linear (autograd)


# -- weight-only int8 ------------------------------------------------------------------------------
def _int8_inputs(m, n, k, dtype, bias, seed):
    x, w, b = _inputs(m, n, k, torch.float32, bias, seed)
    qweight, scale = quantize_int8(w)
    return x.to(dtype), qweight, scale, None if b is None else b.to(dtype)


def test_quantize_int8_rounds_each_row_to_its_scale():
    g = torch.Generator().manual_seed(11)
    w = torch.randn(37, 29, generator=g) * torch.rand(37, 1, generator=g) * 10
    w[5] = 0                                                       # a zero row
    qweight, scale = quantize_int8(w)
    assert qweight.dtype == torch.int8 and scale.dtype == torch.float32 and scale.shape == (37,)
    assert qweight.abs().max() <= 127 and (qweight.abs().amax(1)[torch.arange(37) != 5] == 127).all()
    assert (dequantize_int8(qweight, scale) - w).abs().le(scale[:, None] / 2 * (1 + 1e-6)).all()
    assert (qweight[5] == 0).all() and torch.isfinite(scale).all()


def _check_int8_close(y, x, qweight, scale, b):
    _check_close(y, x, dequantize_int8(qweight, scale, torch.float64), None if b is None else b.double())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_int8_odd_sizes_match_float64_on_the_dequantized_weight(dtype, bias):
    with torch.inference_mode():
        for i, (m, n, k) in enumerate(ODD):
            x, qweight, scale, b = _int8_inputs(m, n, k, dtype, bias, seed=100 + i)
            assert supports_linear_int8(x, qweight, scale, b)
            y = linear_int8(x, qweight, scale, b)
            assert y.dtype == dtype
            _check_int8_close(y, x, qweight, scale, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("m,n,k", [(1, 1536, 576), (7, 576, 1536), (16, 4099, 64), (64, 2049, 577)])
def test_int8_model_sizes_two_threads_match_float64(dtype, m, n, k, monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    with torch.inference_mode():
        x, qweight, scale, b = _int8_inputs(m, n, k, dtype, True, seed=m * n + k)
        _check_int8_close(linear_int8(x, qweight, scale, b), x, qweight, scale, b)
        torch.testing.assert_close(linear_int8(x, qweight, scale, b), linear_int8_ref(x, qweight, scale, b),
                                   rtol=1e-2 if dtype == torch.bfloat16 else 1e-5, atol=1e-2 if dtype == torch.bfloat16 else 1e-5)


def test_int8_rows_are_batch_and_thread_invariant_bitwise(monkeypatch):
    x, qweight, scale, b = _int8_inputs(MAX_ROWS, 1031, 333, torch.float32, True, seed=9)
    with torch.inference_mode():
        monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
        batched = linear_int8(x, qweight, scale, b)
        monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
        assert torch.equal(linear_int8(x, qweight, scale, b), batched)
        for m in (1, 2, 3, 5, 11):
            for start in (0, MAX_ROWS - m):
                assert torch.equal(linear_int8(x[start:start + m], qweight, scale, b), batched[start:start + m])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_int8_prefill_rows_take_the_dequantized_float_path(dtype, monkeypatch):
    monkeypatch.setattr(cpu_linear, "MAX_INT8_ROWS", 16)
    x, qweight, scale, b = _int8_inputs(40, 70, 33, dtype, True, seed=5)
    with torch.inference_mode():
        assert not supports_linear_int8(x, qweight, scale, b)
        used = dequantize_int8(qweight, scale, dtype)              # bf16: the weight rounds to bf16 here
        _check_close(linear_int8(x, qweight, scale, b), x, used, b)
        assert linear_int8(x[:0], qweight, scale, b).shape == (0, 70)
