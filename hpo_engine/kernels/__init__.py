"""Paged KV-cache kernels: `store_kv` and `paged_attention` (contract in docs/DESIGN.md); `linear` /
`linear_int8`, the CPU linear layers of inference (cpu_linear.py); `rms_norm` and `rope`, one C++ call
each at CPU inference (cpu_norm_rope.py).

Nothing here imports the runtime or the models. The folder lives inside the package, not at the
top of the repository: a top-level `kernels/` shadows Hugging Face's `kernels`, which transformers
(>= 5.25) imports, whenever the repository root is on sys.path (`python -m pytest`, `python -m ...`).

Dispatch: CUDA tensors -> Triton; CPU tensors -> the C++ path (csrc/attention_cpu.cpp) where it
supports the dtype / head_dim and a call has at most CPP_MAX_QUERIES_PER_SEQ query rows per sequence
(decode), else torch ops (gather + SDPA). `HPO_ATTN_BACKEND=triton|torch|cpp`
forces one; triton on CPU needs `TRITON_INTERPRET=1` set before this package first launches a Triton
kernel. A forced `cpp` falls back to torch when the extension lacks it. A caller that knows its
shapes for good (the engine: one model, one cache) chooses once with `attention_backend` /
`store_backend` and passes `backend=`; without it, each call reads the environment and decides.
"""
import os

from . import cpu_paged_attention as _cpu
from .cpu_linear import linear, linear_int8
from .cpu_norm_rope import rms_norm, rope
from .reference import paged_attention_ref, store_kv_ref
from .torch_paged_attention import paged_attention_torch, store_kv_torch

BACKENDS = ("triton", "torch", "cpp")
# Unless forced, the C++ path takes calls of at most this many query rows per sequence (decode) and the
# torch path (gather + SDPA) the rest (prefill, user turns): on an AVX2-only EPYC (no AVX-512) the C++
# kernel's multi-row path measured 7-20x slower than SDPA at 4..32 rows per sequence, level at 1-2
# (bench/RESULTS.md "Attention dispatch on AVX2").
CPP_MAX_QUERIES_PER_SEQ = 2


def _forced_backend():
    name = os.environ.get("HPO_ATTN_BACKEND", "").strip().lower()
    if name and name not in BACKENDS:
        raise ValueError(f"HPO_ATTN_BACKEND={name!r}: expected one of {BACKENDS}")
    return name


def _triton_kernels():
    """Imported on first use: triton decides interpreter vs compiler when the kernels are defined."""
    from .triton_paged_attention import paged_attention_triton
    from .triton_store_kv import store_kv_triton
    return paged_attention_triton, store_kv_triton


def attention_backend(q, k_cache):
    """The backend `paged_attention` would use for these tensors."""
    name = _forced_backend()
    if name == "triton" or (not name and q.is_cuda):
        return "triton"
    if name in ("", "cpp") and _cpu.supports_attention(q, k_cache):
        return "cpp"
    return "torch"


def paged_attention(q, k_cache, v_cache, block_table, seq_lens, cu_seqlens_q, scale=None, out=None,
                    backend=None):
    """q [T, Hq, D] packed new tokens -> [T, Hq, D] (see docs/DESIGN.md for the full contract).
    `backend`: what `attention_backend` chose for these shapes (None: decide now)."""
    if backend == "cpp" or (backend is None and not os.environ.get("HPO_ATTN_BACKEND") and not q.is_cuda
                            and _cpu.supports_attention(q, k_cache)):
        if q.shape[0] <= CPP_MAX_QUERIES_PER_SEQ * block_table.shape[0] or _forced_backend() == "cpp":
            # the common CPU call (decode per layer) takes the shortest way
            return _cpu._paged_attention_supported(q, k_cache, v_cache, block_table, seq_lens, cu_seqlens_q,
                                                   scale, out)
        backend = "torch"
    backend = backend or attention_backend(q, k_cache)
    if backend == "cpp":
        return _cpu.paged_attention_cpp(q, k_cache, v_cache, block_table, seq_lens, cu_seqlens_q, scale, out)
    if backend == "triton":
        return _triton_kernels()[0](q, k_cache, v_cache, block_table, seq_lens, cu_seqlens_q, scale, out)
    return paged_attention_torch(q, k_cache, v_cache, block_table, seq_lens, cu_seqlens_q, scale, out)


def store_backend(key, k_cache, v_cache=None) -> str:
    """The backend `store_kv` would use for these tensors."""
    name = _forced_backend()
    v_cache = k_cache if v_cache is None else v_cache
    if name == "triton" or (not name and key.is_cuda):
        return "triton"
    if name in ("", "cpp") and _cpu.AVAILABLE and key.device.type == "cpu" and key.dtype == k_cache.dtype \
            and k_cache.is_contiguous() and v_cache.is_contiguous():
        return "cpp"
    return "torch"


def store_kv(key, value, k_cache, v_cache, slot_mapping, backend=None):
    """key/value [T, Hkv, D] -> k_cache/v_cache slots (slot -1 skipped). Returns None.
    `backend`: what `store_backend` chose for these shapes (None: decide now)."""
    backend = backend or store_backend(key, k_cache, v_cache)
    if backend == "triton":
        return _triton_kernels()[1](key, value, k_cache, v_cache, slot_mapping)
    if backend == "cpp":
        return _cpu.store_kv_cpp(key, value, k_cache, v_cache, slot_mapping)
    return store_kv_torch(key, value, k_cache, v_cache, slot_mapping)


__all__ = ["store_kv", "paged_attention", "linear", "linear_int8", "rms_norm", "rope", "store_kv_ref",
           "paged_attention_ref", "attention_backend", "store_backend", "paged_attention_torch", "store_kv_torch",
           "BACKENDS"]
