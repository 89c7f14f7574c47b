"""CPU backends of `paged_attention` / `store_kv` (torch ops, C++) against the pure-PyTorch reference."""
import itertools

import pytest
import torch

import hpo_engine.kernels as K
from hpo_engine.kernels import cpu_paged_attention as cpu
from hpo_engine.kernels.reference import paged_attention_ref, store_kv_ref
from test_kernels_helpers import MIXED, paged_batch, rel_err, tolerance

BACKENDS = ["torch"] + (["cpp"] if cpu.AVAILABLE else [])
ATTN = {"torch": K.paged_attention_torch, "cpp": cpu.paged_attention_cpp}
GQA = [(4, 4), (6, 2), (8, 2), (5, 1)]  # 1:1, 3:1, 4:1, 5:1


def _check(backend, seqs, hq, hkv, d, bs, dtype, seed, scale=None):
    g = torch.Generator().manual_seed(seed)
    q, kc, vc, table, lens, cu = paged_batch(seqs, hq, hkv, d, bs, dtype, g)
    ref = paged_attention_ref(q, kc, vc, table, lens, cu, scale=scale)
    out = torch.full_like(q, float("nan"))   # poisoned: every element must be written
    got = ATTN[backend](q, kc, vc, table, lens, cu, scale=scale, out=out)
    assert got is out
    assert not out.isnan().any()
    assert rel_err(out, ref) < tolerance(dtype)


# head_dim x block x GQA covered pairwise with dtype; the mixed batch in every case
CASES = [(d, bs, gqa, dtype) for (d, bs), gqa, dtype in itertools.product(
    [(64, 16), (80, 32), (128, 16)], GQA, [torch.float32, torch.bfloat16])]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("d,bs,gqa,dtype", CASES, ids=lambda v: str(v).replace("torch.", ""))
def test_mixed_batch_matches_reference(backend, d, bs, gqa, dtype):
    _check(backend, MIXED, gqa[0], gqa[1], d, bs, dtype, seed=hash((d, bs, gqa)) % 1000)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("seqs", [[(1, 1328)], [(1, 3000), (1, 5)], [(14, 700)], [(0, 40), (3, 40), (1, 1)],
                                  [(1, 17)] * 9, [(33, 33), (2, 300)]],
                         ids=["decode1", "decode-uneven", "extend14", "empty-seq", "decode-b9", "prefill+decode"])
def test_shapes_and_threads(backend, threads, seqs):
    old = torch.get_num_threads()
    torch.set_num_threads(threads)   # the C++ path splits long KV ranges across threads
    try:
        _check(backend, seqs, 9, 3, 64, 32, torch.float32, seed=threads)
        _check(backend, seqs, 32, 8, 128, 16, torch.bfloat16, seed=threads + 10)
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("backend", BACKENDS)
def test_scale_and_strided_q(backend):
    g = torch.Generator().manual_seed(7)
    q, kc, vc, table, lens, cu = paged_batch([(3, 50), (1, 90)], 6, 2, 64, 16, torch.float32, g)
    qkv = torch.randn(q.shape[0], 10, 64, generator=g)
    q = qkv[:, 2:8]                        # a view into a fused projection: token stride != Hq * D
    ref = paged_attention_ref(q, kc, vc, table, lens, cu, scale=0.3)
    out = ATTN[backend](q, kc, vc, table, lens, cu, scale=0.3)
    assert rel_err(out, ref) < 1e-5


def test_dispatch_default_and_forced(monkeypatch):
    q = torch.randn(2, 4, 64)
    kc = torch.randn(3, 16, 2, 64)
    monkeypatch.delenv("HPO_ATTN_BACKEND", raising=False)
    assert K.attention_backend(q, kc) == ("cpp" if cpu.AVAILABLE else "torch")
    assert K.attention_backend(q.half(), kc.half()) == "torch"     # fp16 is not in the C++ path
    monkeypatch.setenv("HPO_ATTN_BACKEND", "torch")
    assert K.attention_backend(q, kc) == "torch"
    monkeypatch.setenv("HPO_ATTN_BACKEND", "triton")
    assert K.attention_backend(q, kc) == "triton"
    monkeypatch.setenv("HPO_ATTN_BACKEND", "bogus")
    with pytest.raises(ValueError):
        K.attention_backend(q, kc)


@pytest.mark.parametrize("backend", [None, "cpp"])
def test_multi_row_calls_take_the_torch_path_unless_forced(monkeypatch, backend):
    """Decode-sized calls (<= CPP_MAX_QUERIES_PER_SEQ rows per sequence) go to C++, the rest to SDPA,
    also when the engine chose 'cpp' once; HPO_ATTN_BACKEND=cpp keeps every call in C++."""
    if not cpu.AVAILABLE:
        pytest.skip("hpo_engine._C has no paged_attention_cpu")
    calls = []
    real = cpu._paged_attention_supported
    monkeypatch.setattr(cpu, "_paged_attention_supported", lambda *a: calls.append(a[0].shape[0]) or real(*a))
    monkeypatch.delenv("HPO_ATTN_BACKEND", raising=False)
    g = torch.Generator().manual_seed(9)
    limit = K.CPP_MAX_QUERIES_PER_SEQ
    for seqs, in_cpp in (([(1, 70), (limit, 33)], True), ([(limit + 1, 40)], False), ([(1, 9), (7, 50)], False)):
        q, kc, vc, table, lens, cu = paged_batch(seqs, 6, 2, 64, 16, torch.float32, g)
        calls.clear()
        out = K.paged_attention(q, kc, vc, table, lens, cu, backend=backend)
        assert bool(calls) == in_cpp
        assert rel_err(out, paged_attention_ref(q, kc, vc, table, lens, cu)) < 1e-5
    monkeypatch.setenv("HPO_ATTN_BACKEND", "cpp")
    calls.clear()
    K.paged_attention(q, kc, vc, table, lens, cu, backend=backend)
    assert calls == [q.shape[0]]


def test_forced_cpp_falls_back_without_extension(monkeypatch):
    monkeypatch.setattr(cpu, "_ATTN", None)
    monkeypatch.setenv("HPO_ATTN_BACKEND", "cpp")
    g = torch.Generator().manual_seed(3)
    q, kc, vc, table, lens, cu = paged_batch([(2, 40)], 4, 2, 64, 16, torch.float32, g)
    assert K.attention_backend(q, kc) == "torch"
    assert rel_err(K.paged_attention(q, kc, vc, table, lens, cu), paged_attention_ref(q, kc, vc, table, lens, cu)) < 1e-5


def test_dispatched_fp16_uses_torch_path(monkeypatch):
    monkeypatch.delenv("HPO_ATTN_BACKEND", raising=False)
    g = torch.Generator().manual_seed(4)
    q, kc, vc, table, lens, cu = paged_batch([(5, 60), (1, 30)], 6, 3, 80, 32, torch.float16, g)
    out = K.paged_attention(q, kc, vc, table, lens, cu)
    assert rel_err(out, paged_attention_ref(q, kc, vc, table, lens, cu)) < 1e-2


def test_cpp_rejects_bad_input():
    if not cpu.AVAILABLE:
        pytest.skip("hpo_engine._C has no paged_attention_cpu")
    g = torch.Generator().manual_seed(5)
    q, kc, vc, table, lens, cu = paged_batch([(2, 40)], 4, 2, 64, 16, torch.float32, g)
    with pytest.raises(ValueError):
        cpu.paged_attention_cpp(q, kc, vc, table.long(), lens, cu)
    with pytest.raises(ValueError):
        cpu.paged_attention_cpp(q, kc, vc.transpose(1, 2).contiguous().transpose(1, 2), table, lens, cu)


STORE = {"torch": K.store_kv_torch, "cpp": cpu.store_kv_cpp, "dispatch": K.store_kv}


@pytest.mark.parametrize("backend", ["torch", "dispatch"] + (["cpp"] if cpu.AVAILABLE else []))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("slot_dtype", [torch.int64, torch.int32])
def test_store_kv_exact(backend, dtype, slot_dtype):
    g = torch.Generator().manual_seed(11)
    k_cache = torch.randn(12, 16, 3, 80, generator=g).to(dtype)
    v_cache = torch.randn(12, 16, 3, 80, generator=g).to(dtype)
    key = torch.randn(20, 3, 80, generator=g).to(dtype)
    value = torch.randn(20, 3, 80, generator=g).to(dtype)
    slots = torch.randperm(12 * 16, generator=g)[:20]
    slots[[0, 7, 19]] = -1
    slots = slots.to(slot_dtype)
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    store_kv_ref(key, value, k_ref, v_ref, slots)
    assert STORE[backend](key, value, k_cache, v_cache, slots) is None
    assert torch.equal(k_cache, k_ref) and torch.equal(v_cache, v_ref)


def test_store_kv_strided_key():
    g = torch.Generator().manual_seed(12)
    k_cache, v_cache = torch.zeros(4, 16, 2, 64), torch.zeros(4, 16, 2, 64)
    qkv = torch.randn(5, 8, 64, generator=g)
    key, value = qkv[:, 4:6], qkv[:, 6:8]
    slots = torch.tensor([3, -1, 40, 63, 0])
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    store_kv_ref(key, value, k_ref, v_ref, slots)
    K.store_kv(key, value, k_cache, v_cache, slots)
    assert torch.equal(k_cache, k_ref) and torch.equal(v_cache, v_ref)


def test_dispatch_odd_q_layout_falls_back(monkeypatch):
    monkeypatch.delenv("HPO_ATTN_BACKEND", raising=False)
    g = torch.Generator().manual_seed(13)
    q, kc, vc, table, lens, cu = paged_batch([(3, 40), (1, 20)], 6, 2, 64, 16, torch.float32, g)
    q_odd = q.transpose(1, 2).contiguous().transpose(1, 2)     # same values, last dim strided
    assert K.attention_backend(q_odd, kc) == "torch"
    out = K.paged_attention(q_odd, kc, vc, table, lens, cu)
    assert rel_err(out, paged_attention_ref(q, kc, vc, table, lens, cu)) < 1e-5
