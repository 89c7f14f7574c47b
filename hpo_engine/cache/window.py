"""Turn-aligned eviction for unbounded streams: keep the sink (system prompt) and the newest turns.

Keys are cached after rotary embedding, so dropping d old tokens and sliding the kept ones down by d
positions means rotating their keys by -d (R(p - d) = R(-d) R(p)); values move unchanged. The kept
K/V are moved in the cache, never recomputed, and positions stay below the window for ever, while
the relative positions among kept non-sink tokens are exactly what they were.
"""
import torch

from hpo_engine.kernels import store_kv


@torch.inference_mode()
def evict_old_turns(seq, incoming: int, max_cache_tokens: int, blocks, rotate_keys) -> int | None:
    """Drop the oldest whole cached turns after the sink so that the cache plus `incoming` tokens fits
    `max_cache_tokens` (or as close as whole turns allow). Returns the number of tokens dropped, or
    None (nothing changed) when a shared block to rewrite finds no free block to copy into.
    `blocks`: the BlockManager (pool, tensors, slots); `rotate_keys(k [N, H, D], shift)`: the model's
    keys roped at p -> at p + shift."""
    if seq.num_cached + incoming <= max_cache_tokens:
        return 0
    cuts = [t for t in seq.turn_starts if seq.num_sink < t <= seq.num_cached]
    if not cuts:
        return 0
    cut = next((t for t in cuts if seq.num_sink + seq.num_cached - t + incoming <= max_cache_tokens), cuts[-1])
    pool, kv = blocks.pool, blocks.kv
    bs, sink, kept = pool.block_size, seq.num_sink, seq.num_cached - cut
    shift = cut - sink
    old_slots = blocks.slots(seq, cut, seq.num_cached)
    moved = [(rotate_keys(k.view(-1, *k.shape[2:])[old_slots], -shift), v.view(-1, *v.shape[2:])[old_slots])
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
    new_slots = blocks.slots(seq, sink, sink + kept)
    for (k_cache, v_cache), (k, v) in zip(kv.layers, moved):
        store_kv(k, v, k_cache, v_cache, new_slots)
    seq.num_cached -= shift
    seq.next_position -= shift
    seq.turn_starts = [t - shift for t in seq.turn_starts if t >= cut]
    del seq.block_hashes[sink // bs:]
    seq.partial_keys = []
    seq.drop_history()                    # kept K/V saw the dropped turns: no recompute can give them
    seq.counters.num_evicted += shift
    return shift
