"""The block manager: every decision about a sequence's blocks, in one place.

It gives a sequence slots for its next tokens (`reserve`: copy on write of a shared partial block,
new blocks), lets it skip pending full blocks already in the prefix cache (`adopt_cached_prefix`),
registers the prefix hash of blocks that fill up (`commit`), takes every block back (`preempt`:
recompute later, or, for a cache that turn eviction rewrote, swap the K/V to host memory;
`swap_in` restores them), evicts old turns of a windowed stream (cache/window.py), and frees a
closed stream's blocks. The scheduler owns it and decides *who*; this decides *how*.

A sequence is the runtime's `Sequence` (block_table, num_cached, next_position, pending queue,
history, prefix hashes); this module only reads and writes those fields, so `cache/` needs nothing
from `runtime/` or `models/`. Key re-rotation after eviction is the model's: `rotate_keys(k, shift)`
is passed in.
"""
from typing import Callable

import torch

from hpo_engine.cache.block_pool import BlockPool, chain_hash
from hpo_engine.cache.kv_cache import KVCache
from hpo_engine.cache.window import evict_old_turns
from hpo_engine.kernels import store_kv


def slot_mapping(block_table: list[int], block_size: int, start: int, stop: int) -> torch.Tensor:
    """Cache slots [stop - start] int64 of logical token positions start..stop-1 of a block table
    (the one place the slot arithmetic is written)."""
    logical = torch.arange(start, stop)
    return torch.tensor(block_table, dtype=torch.long)[logical // block_size] * block_size + logical % block_size


def blocks_for(tokens: int, block_size: int) -> int:
    return -(-tokens // block_size)


class BlockManager:
    def __init__(self, pool: BlockPool, kv: KVCache, rotate_keys: Callable[[torch.Tensor, int], torch.Tensor]):
        self.pool, self.kv, self.rotate_keys = pool, kv, rotate_keys
        self.block_size = pool.block_size
        # counters
        self.num_preemptions = 0            # of which swapped out:
        self.num_swaps = 0
        self.num_recomputed_tokens = 0      # cached tokens sent back to be computed again

    def slots(self, seq, start: int, stop: int) -> torch.Tensor:
        """Cache slots of the sequence's logical positions start..stop-1, on the cache's device."""
        return slot_mapping(seq.block_table, self.block_size, start, stop).to(self.kv.device)

    # -- prefix cache ------------------------------------------------------------------------------
    def _prefix_walk(self, seq, limit: int | None):
        """(hash, block or None) of each leading pending full block, as far as adoption may go: >= 1
        pending token stays to compute, and only blocks within the first `limit` pending tokens."""
        bs = self.block_size
        if not (seq.hash_chain_intact(bs) and seq.num_cached % bs == 0):
            return
        parent = seq.block_hashes[-1] if seq.block_hashes else None
        stop = len(seq.pending) - bs if limit is None else min(len(seq.pending) - bs, limit - bs + 1)
        keys = seq.pending.keys[:max(stop, 0) + bs]     # a copy: adoption takes tokens off the queue
        for i in range(0, stop, bs):                     # hashed lazily: the walk ends at the first miss
            parent = chain_hash(parent, keys[i:i + bs])
            yield parent, self.pool.hash_to_block.get(parent)

    def adopt_cached_prefix(self, seq, limit: int | None = None) -> None:
        """Skip computing pending full blocks whose content is already cached (keep >= 1 to compute);
        `limit`: only blocks within the first `limit` pending tokens."""
        bs = self.block_size
        for h, block in self._prefix_walk(seq, limit):
            if block is None:
                return
            seq.block_table.append(self.pool.lookup(h))
            seq.block_hashes.append(h)
            seq.num_cached += bs
            seq.next_position += bs
            seq.commit_front(bs)

    def blocks_to_admit(self, seq, limit: int | None = None) -> int:
        """Blocks a sequence without any would take to compute all its pending tokens (and restore a
        swapped cache), less the leading full blocks that are resident in the prefix cache (within
        the first `limit` pending tokens, as `adopt_cached_prefix`)."""
        need = blocks_for(seq.num_cached + len(seq.pending), self.block_size) - len(seq.block_table)
        if seq.swapped_kv is None:
            for _, block in self._prefix_walk(seq, limit):
                if block is None:
                    break
                need -= self.pool.ref_count[block] > 0             # held by someone: costs no free block
        return need

    # -- slots for the next tokens ----------------------------------------------------------------------
    def reserve(self, seq, n: int) -> bool:
        """Slots for the next n pending tokens of `seq`; False (nothing taken) when out of blocks."""
        bs = self.block_size
        cow = seq.num_cached % bs and seq.block_table and not self.pool.is_writable(seq.block_table[-1])
        need = blocks_for(seq.num_cached + n, bs) - len(seq.block_table)
        blocks = self.pool.allocate_many(max(need, 0) + int(bool(cow)))
        if blocks is None:
            return False
        if cow:                                   # the partial last block is shared: copy it first
            new, old = blocks.pop(), seq.block_table[-1]
            self.kv.copy_block(old, new)
            seq.block_table[-1] = new
            self.pool.free(old)
        seq.block_table += blocks
        return True

    def commit(self, seq, n: int) -> None:
        """n pending tokens became cached (their forward ran); newly full blocks get their prefix hash."""
        bs = self.block_size
        chain_ok = seq.hash_chain_intact(bs)
        seq.num_cached += n
        seq.next_position += n
        seq.partial_keys = seq.partial_keys + seq.pending.keys[:n] if chain_ok else []
        while chain_ok and len(seq.partial_keys) >= bs:
            h = chain_hash(seq.block_hashes[-1] if seq.block_hashes else None, seq.partial_keys[:bs])
            self.pool.register(seq.block_table[len(seq.block_hashes)], h)
            seq.block_hashes.append(h)
            del seq.partial_keys[:bs]
        seq.commit_front(n)

    # -- taking blocks back ---------------------------------------------------------------------------
    @torch.inference_mode()
    def preempt(self, seq) -> None:
        """Give back every block of `seq` (shared ones stay with their other holders). A sequence with
        its history is recomputed later; one whose cache eviction rewrote is swapped out to the host."""
        self.num_preemptions += 1
        if seq.recomputable:
            self.num_recomputed_tokens += seq.num_cached
            self.free(seq)
            seq.requeue_history()
        else:
            self.num_swaps += 1
            slots = self.slots(seq, 0, seq.num_cached)
            seq.swapped_kv = [(k.view(-1, *k.shape[2:])[slots].cpu(), v.view(-1, *v.shape[2:])[slots].cpu())
                              for k, v in self.kv.layers]
            self.free(seq)
            seq.block_hashes, seq.partial_keys = [], []
        seq.counters.num_preemptions += 1

    @torch.inference_mode()
    def swap_in(self, seq) -> bool:
        """Blocks for a swapped-out cache, filled with its K/V; False (nothing taken) when short."""
        blocks = self.pool.allocate_many(blocks_for(seq.num_cached, self.block_size))
        if blocks is None:
            return False
        seq.block_table = blocks
        slots = self.slots(seq, 0, seq.num_cached)
        for (k_cache, v_cache), (k, v) in zip(self.kv.layers, seq.swapped_kv):
            store_kv(k.to(self.kv.device), v.to(self.kv.device), k_cache, v_cache, slots)
        seq.swapped_kv = None
        return True

    def free(self, seq) -> None:
        """Give back the sequence's blocks (tail first, so prefix heads stay cached longest)."""
        self.pool.free_all(seq.block_table)
        seq.block_table = []

    def share(self, seq) -> None:
        """Another sequence (a fork) now holds the same blocks: one more reference on each."""
        for block in seq.block_table:
            self.pool.incref(block)

    def evict_old_turns(self, seq, incoming: int, max_cache_tokens: int) -> int | None:
        """Turn-aligned eviction of a windowed stream (cache/window.py); None: no block to copy into."""
        return evict_old_turns(seq, incoming, max_cache_tokens, self, self.rotate_keys)
