"""Turn-aligned eviction for unbounded streams: keep the sink (system prompt) and the newest turns.

Keys are cached after rotary embedding, so dropping d old tokens and sliding the kept ones down by d
positions means rotating their keys by -d (R(p - d) = R(-d) R(p)); values move unchanged. The kept
K/V are moved in the cache, never recomputed, and positions stay below the window for ever, while
the relative positions among kept non-sink tokens are exactly what they were.
"""
import torch

from hpo_engine.cache.block_pool import BlockPool
from hpo_engine.cache.kv_cache import KVCache
from hpo_engine.kernels import store_kv
from hpo_engine.models.decoder import apply_rope
from hpo_engine.runtime.sequence import Sequence


def rotate_keys(k: torch.Tensor, shift: int, inv_freq: torch.Tensor) -> torch.Tensor:
    """Keys [N, H, D] roped at positions p -> the same keys roped at p + shift."""
    angle = shift * inv_freq.double()
    emb = torch.cat((angle, angle))[None]
    return apply_rope(k.double(), emb.cos(), emb.sin()).to(k.dtype)


def slots_of(seq: Sequence, start: int, stop: int, block_size: int) -> torch.Tensor:
    logical = torch.arange(start, stop)
    return torch.tensor(seq.block_table)[logical // block_size] * block_size + logical % block_size


@torch.inference_mode()
def evict_old_turns(seq: Sequence, incoming: int, max_cache_tokens: int, pool: BlockPool, kv: KVCache,
                    inv_freq: torch.Tensor) -> int | None:
    """Drop the oldest whole cached turns after the sink so that the cache plus `incoming` tokens fits
    `max_cache_tokens` (or as close as whole turns allow). Returns the number of tokens dropped, or
    None (nothing changed) when a shared block to rewrite finds no free block to copy into."""
    if seq.num_cached + incoming <= max_cache_tokens:
        return 0
    cuts = [t for t in seq.turn_starts if seq.num_sink < t <= seq.num_cached]
    if not cuts:
        return 0
    cut = next((t for t in cuts if seq.num_sink + seq.num_cached - t + incoming <= max_cache_tokens), cuts[-1])
    bs, sink, kept = pool.block_size, seq.num_sink, seq.num_cached - cut
    shift = cut - sink
    old_slots = slots_of(seq, cut, seq.num_cached, bs).to(kv.device)
    moved = [(rotate_keys(k.view(-1, *k.shape[2:])[old_slots], -shift, inv_freq), v.view(-1, *v.shape[2:])[old_slots])
             for k, v in kv.layers]
    # The blocks we write into must be ours alone; the first may hold sink tokens to keep.
    first, last = sink // bs, -(-(sink + kept) // bs)
    shared = [i for i in range(first, last) if not pool.is_writable(seq.block_table[i])]
    fresh = pool.allocate_many(len(shared))
    if fresh is None:
        return None                           # no block to copy into: keep the stream as it is
    for i, block in zip(shared, fresh):
        if i == first and sink % bs:
            kv.copy_block(seq.block_table[i], block)
        pool.free(seq.block_table[i])
        seq.block_table[i] = block
    for i in range(first, last):
        pool.forget(seq.block_table[i])       # its content changes: no longer a cached prefix
    pool.free_all(seq.block_table[last:])
    del seq.block_table[last:]
    new_slots = slots_of(seq, sink, sink + kept, bs).to(kv.device)
    for (k_cache, v_cache), (k, v) in zip(kv.layers, moved):
        store_kv(k, v, k_cache, v_cache, new_slots)
    seq.num_cached -= shift
    seq.next_position -= shift
    seq.turn_starts = [t - shift for t in seq.turn_starts if t >= cut]
    del seq.block_hashes[sink // bs:]
    seq.partial_keys = []
    seq.drop_history()                    # kept K/V saw the dropped turns: no recompute can give them
    seq.num_evicted += shift
    return shift
