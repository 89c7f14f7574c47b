"""Pure-PyTorch references for the paged KV-cache kernels (obviously correct, slow).

Layout (docs/DESIGN.md): per layer `k_cache`, `v_cache` are [num_blocks, block_size, Hkv, D].
A token's slot is block_id * block_size + offset; slot -1 means "do not store".
"""
import torch


def store_kv_ref(key, value, k_cache, v_cache, slot_mapping):
    """key/value [T, Hkv, D] -> write row t into slot slot_mapping[t] (skip -1)."""
    block_size = k_cache.shape[1]
    for t, slot in enumerate(slot_mapping.tolist()):
        if slot < 0:
            continue
        k_cache[slot // block_size, slot % block_size] = key[t]
        v_cache[slot // block_size, slot % block_size] = value[t]


def paged_attention_ref(q, k_cache, v_cache, block_table, seq_lens, cu_seqlens_q, scale=None, out=None):
    """q [T, Hq, D] packed queries of B sequences -> [T, Hq, D].

    Sequence b has n_b = cu_seqlens_q[b+1] - cu_seqlens_q[b] new tokens and seq_lens[b] KV tokens
    (its new tokens included, already stored). New token i sees KV positions
    < seq_lens[b] - n_b + i + 1 (causal, bottom-right aligned). Computed in float32.
    """
    T, Hq, D = q.shape
    block_size, Hkv = k_cache.shape[1], k_cache.shape[2]
    scale = D ** -0.5 if scale is None else scale
    result = torch.empty_like(q) if out is None else out
    for b in range(block_table.shape[0]):
        q0, q1 = int(cu_seqlens_q[b]), int(cu_seqlens_q[b + 1])
        n, kv_len = q1 - q0, int(seq_lens[b])
        if n == 0:
            continue
        slots = torch.arange(kv_len, device=q.device)
        blocks = block_table[b].long()[slots // block_size]
        k = k_cache[blocks, slots % block_size].float()        # [kv_len, Hkv, D]
        v = v_cache[blocks, slots % block_size].float()
        k = k.repeat_interleave(Hq // Hkv, dim=1)
        v = v.repeat_interleave(Hq // Hkv, dim=1)
        scores = torch.einsum("qhd,khd->hqk", q[q0:q1].float(), k) * scale
        limit = kv_len - n + torch.arange(n, device=q.device)[:, None] + 1
        scores.masked_fill_(slots[None, :] >= limit, float("-inf"))
        result[q0:q1] = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).to(q.dtype)
    return result
