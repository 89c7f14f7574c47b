"""C++ CPU path (csrc/attention_cpu.cpp, OpenMP + AVX-512) behind the kernels contract.

Reference: `reference.paged_attention_ref` / `reference.store_kv_ref`. Shapes as in docs/DESIGN.md;
the wrapper validates dtype / contiguity / device and hands raw pointers to `hpo_engine._C`.
Supported: float32 and bfloat16, head_dim in {64, 80, 96, 128, 256}; `supports_*` say when to
fall back to the torch path. Threads: torch.get_num_threads() (one OpenMP runtime: the extension
links libgomp.so.1, which torch has already loaded).
"""
import torch

try:
    from hpo_engine import _C
except Exception:  # noqa: BLE001 - extension not built, or the package half-importable: torch path
    _C = None

_ATTN = getattr(_C, "paged_attention_cpu", None)
_STORE = getattr(_C, "store_kv_cpu", None)
AVAILABLE = _ATTN is not None and _STORE is not None
_DTYPES = (torch.float32, torch.bfloat16)
_HEAD_DIMS = (64, 80, 96, 128, 256)


def supports_attention(q, k_cache):
    """Whether the C++ path takes these tensors (else dispatch uses the torch path)."""
    return (_ATTN is not None and q.is_cpu and q.dtype in _DTYPES and k_cache.dtype == q.dtype
            and q.shape[-1] in _HEAD_DIMS and q.shape[1] // k_cache.shape[2] <= 64 and q.stride(-1) == 1)


def paged_attention_cpp(q, k_cache, v_cache, block_table, seq_lens, cu_seqlens_q, scale=None, out=None):
    """C++ paged attention (contract in docs/DESIGN.md)."""
    if not supports_attention(q, k_cache):
        raise ValueError(f"cpp backend: unsupported q {q.dtype} {tuple(q.shape)} on {q.device} / cache {k_cache.dtype}")
    return _paged_attention_supported(q, k_cache, v_cache, block_table, seq_lens, cu_seqlens_q, scale, out)


def _paged_attention_supported(q, k_cache, v_cache, block_table, seq_lens, cu_seqlens_q, scale, out):
    """After `supports_attention`: layout checks, then the C++ call. Decode calls this once per layer,
    so the checks avoid slow tensor properties (`.device` costs ~0.2 us, `is_cpu` ~0.04)."""
    T, num_q_heads, head_dim = q.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    kv_strides = k_cache.stride()
    q_strides = q.stride()
    if (v_cache.dtype != q.dtype or v_cache.stride() != kv_strides or v_cache.shape != k_cache.shape
            or kv_strides[3] != 1 or q_strides[2] != 1 or num_q_heads % num_kv_heads or not v_cache.is_cpu):
        raise ValueError("cpp backend: k_cache/v_cache must share dtype, shape, strides and device with q's dtype; "
                         "last dims contiguous; Hq % Hkv == 0")
    num_seqs = block_table.shape[0]
    for t in (block_table, seq_lens, cu_seqlens_q):
        if t.dtype != torch.int32 or not t.is_cpu or not t.is_contiguous():
            raise ValueError("cpp backend: block_table, seq_lens, cu_seqlens_q must be contiguous int32 CPU tensors")
    if seq_lens.shape[0] != num_seqs or cu_seqlens_q.shape[0] != num_seqs + 1:
        raise ValueError("cpp backend: seq_lens must be [B] and cu_seqlens_q [B+1] for block_table [B, max_blocks]")
    if out is None:
        out = torch.empty_like(q)
        out_strides = out.stride()
    else:
        out_strides = out.stride()
        if out.shape != q.shape or out.dtype != q.dtype or out_strides[2] != 1 or not out.is_cpu:
            raise ValueError("cpp backend: out must match q (shape, dtype, contiguous last dim, CPU)")
    if T == 0:
        return out
    _ATTN(q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), out.data_ptr(), block_table.data_ptr(),
          seq_lens.data_ptr(), cu_seqlens_q.data_ptr(), num_seqs, num_q_heads, num_kv_heads, head_dim,
          block_size, block_table.shape[1], q_strides[0], q_strides[1], out_strides[0], out_strides[1],
          kv_strides[0], kv_strides[1], kv_strides[2],
          head_dim ** -0.5 if scale is None else float(scale), q.dtype == torch.bfloat16,
          torch.get_num_threads())
    return out


def store_kv_cpp(key, value, k_cache, v_cache, slot_mapping):
    """C++ store_kv (contract in docs/DESIGN.md): byte copies, so key and cache must share the dtype."""
    if (not key.is_cpu or key.dtype != k_cache.dtype or value.dtype != v_cache.dtype
            or k_cache.dtype != v_cache.dtype or not k_cache.is_contiguous() or not v_cache.is_contiguous()
            or key.shape != value.shape or key.shape[1:] != k_cache.shape[2:] or v_cache.shape != k_cache.shape
            or not value.is_cpu or not k_cache.is_cpu or not v_cache.is_cpu):
        raise ValueError("cpp store_kv: key/value [T, Hkv, D] of the cache's dtype, contiguous CPU caches")
    num_blocks, block_size, num_kv_heads, head_dim = k_cache.shape
    ks, vs = key.stride(), value.stride()
    if ks[2] != 1 or vs[2] != 1 or ks[1] != head_dim or vs[1] != head_dim:
        key, value = key.contiguous(), value.contiguous()  # each row must be Hkv * D contiguous elements
    slots = slot_mapping if slot_mapping.dtype == torch.int64 and slot_mapping.is_contiguous() \
        else slot_mapping.to(torch.int64).contiguous()
    if not slots.is_cpu or slots.shape[0] != key.shape[0]:
        raise ValueError("cpp store_kv: slot_mapping must be a [T] CPU tensor")
    elem = key.element_size()
    _STORE(key.data_ptr(), value.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), slots.data_ptr(),
           key.shape[0], key.stride(0), value.stride(0), k_cache.stride(1) * elem,
           num_kv_heads * head_dim * elem, elem, num_blocks * block_size)
