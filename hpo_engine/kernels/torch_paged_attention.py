"""Torch-ops CPU path (reference: `reference.paged_attention_ref`): gather each sequence's pages,
then `scaled_dot_product_attention` with GQA; this is what vLLM's CPU backend and nano-vllm's SDPA
fallback do. Runs on any device and dtype; reads seq lengths on the host (not graph-safe on CUDA).

Shapes as in docs/DESIGN.md: q [T, Hq, D], caches [num_blocks, block_size, Hkv, D].
"""
import torch
import torch.nn.functional as F


def paged_attention_torch(q, k_cache, v_cache, block_table, seq_lens, cu_seqlens_q, scale=None, out=None):
    T, num_q_heads, head_dim = q.shape
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    if out is None:
        out = torch.empty_like(q)
    cu = cu_seqlens_q.tolist()
    lens = seq_lens.tolist()
    for b, kv_len in enumerate(lens):
        q0, q1 = cu[b], cu[b + 1]
        n = q1 - q0
        if n == 0:
            continue
        pages = block_table[b, : (kv_len + block_size - 1) // block_size].long()
        k = k_cache.index_select(0, pages).flatten(0, 1)[:kv_len]        # [kv_len, Hkv, D]
        v = v_cache.index_select(0, pages).flatten(0, 1)[:kv_len]
        mask = None
        if n > 1:  # bottom-right causal: query i sees keys < kv_len - n + i + 1
            rows = torch.arange(n, device=q.device)[:, None] + (kv_len - n)
            mask = torch.arange(kv_len, device=q.device)[None, :] <= rows
        o = F.scaled_dot_product_attention(
            q[q0:q1].transpose(0, 1).unsqueeze(0), k.transpose(0, 1).unsqueeze(0), v.transpose(0, 1).unsqueeze(0),
            attn_mask=mask, scale=scale, enable_gqa=num_q_heads != num_kv_heads)
        out[q0:q1] = o[0].transpose(0, 1)
    return out


def store_kv_torch(key, value, k_cache, v_cache, slot_mapping):
    """Scatter rows with index_copy_; -1 slots dropped first."""
    keep = slot_mapping >= 0
    slots = slot_mapping[keep].long()
    k_cache.view(-1, *k_cache.shape[2:]).index_copy_(0, slots, key[keep].to(k_cache.dtype))
    v_cache.view(-1, *v_cache.shape[2:]).index_copy_(0, slots, value[keep].to(v_cache.dtype))
