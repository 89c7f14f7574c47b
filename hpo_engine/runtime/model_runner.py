"""One forward over the pending tokens of several sequences: slots, packed inputs, logits.

`prepare` reserves cache slots (prefix-cache hits first, copy on write, new blocks) and either
reserves for every sequence or for none; `run` packs ids / embeddings / positions / slots into one
forward through the paged cache and returns the logits of each sequence's last new token.
"""
import torch

from hpo_engine.cache.block_pool import BlockPool, chain_hash
from hpo_engine.cache.kv_cache import KVCache
from hpo_engine.models.decoder import CausalLM, PagedBatch
from hpo_engine.runtime.sequence import Sequence


class OutOfBlocks(RuntimeError):
    pass


class ModelRunner:
    def __init__(self, model: CausalLM, pool: BlockPool, kv: KVCache, placeholder_token_id: int | None):
        self.model, self.pool, self.kv = model, pool, kv
        self.placeholder_token_id = placeholder_token_id
        self.device = model.inv_freq.device
        self.max_position = model.config.max_position_embeddings

    # -- cache slots ------------------------------------------------------------------------------
    def adopt_cached_prefix(self, seq: Sequence) -> None:
        """Skip computing pending full blocks whose content is already cached (keep >= 1 to compute)."""
        bs = self.pool.block_size
        while (seq.num_cached % bs == 0 and len(seq.block_hashes) == seq.num_cached // bs
               and seq.num_pending > bs):
            h = chain_hash(seq.block_hashes[-1] if seq.block_hashes else None, seq.pending_keys[:bs])
            block = self.pool.lookup(h)
            if block is None:
                return
            n_embeds = sum(t == self.placeholder_token_id for t in seq.pending_ids[:bs])
            seq.block_table.append(block)
            seq.block_hashes.append(h)
            seq.num_cached += bs
            seq.next_position += bs
            del seq.pending_ids[:bs], seq.pending_keys[:bs]
            drop_embed_rows(seq, n_embeds)

    def reserve(self, seqs: list[Sequence]) -> None:
        """Blocks for every pending token of every sequence, or OutOfBlocks with nothing taken."""
        bs, taken, cow = self.pool.block_size, [], []
        for seq in seqs:
            self.adopt_cached_prefix(seq)
        try:
            for seq in seqs:
                if seq.num_cached % bs and not self.pool.is_writable(seq.block_table[-1]):
                    new = self.pool.allocate()
                    if new is None:
                        raise OutOfBlocks
                    taken.append(new)
                    cow.append((seq, new))
                need = -(-(seq.num_cached + seq.num_pending) // bs) - len(seq.block_table)
                blocks = self.pool.allocate_many(max(need, 0))
                if blocks is None:
                    raise OutOfBlocks
                taken += blocks
                seq.block_table += blocks
        except OutOfBlocks:
            for seq in seqs:     # undo: drop the blocks appended in this call
                keep = -(-seq.num_cached // bs)
                del seq.block_table[keep:]
            for block in taken:
                self.pool.free(block)
            raise OutOfBlocks(f"KV cache out of blocks ({self.pool.num_free} free of {self.pool.num_blocks}); "
                              "close streams or give the engine a larger cache_memory") from None
        for seq, new in cow:     # copy on write of a shared partial last block
            last = seq.num_cached // bs
            old = seq.block_table[last]
            self.kv.copy_block(old, new)
            seq.block_table[last] = new
            self.pool.free(old)

    # -- forward ----------------------------------------------------------------------------------
    @torch.inference_mode()
    def run(self, seqs: list[Sequence]) -> torch.Tensor:
        """Compute every pending token of `seqs` (all must have some) -> last-token logits [B, V]."""
        for seq in seqs:
            if seq.next_position + seq.num_pending > self.max_position:
                raise ValueError(f"stream {seq.seq_id} would pass max_position_embeddings={self.max_position}")
        self.reserve(seqs)
        bs, dev = self.pool.block_size, self.device
        ids, positions, slots, embeds = [], [], [], []
        for seq in seqs:
            n = seq.num_pending
            ids += seq.pending_ids
            positions.append(torch.arange(seq.next_position, seq.next_position + n))
            logical = torch.arange(seq.num_cached, seq.num_cached + n)
            table = torch.tensor(seq.block_table)
            slots.append(table[logical // bs] * bs + logical % bs)
            embeds += seq.pending_embeds
        max_blocks = max(len(s.block_table) for s in seqs)
        block_table = torch.zeros(len(seqs), max_blocks, dtype=torch.int32)
        for i, seq in enumerate(seqs):
            block_table[i, :len(seq.block_table)] = torch.tensor(seq.block_table, dtype=torch.int32)
        q_lens = torch.tensor([s.num_pending for s in seqs])
        cu = torch.zeros(len(seqs) + 1, dtype=torch.int32)
        cu[1:] = q_lens.cumsum(0)
        paged = PagedBatch(
            slot_mapping=torch.cat(slots).to(dev),
            block_table=block_table.to(dev),
            seq_lens=torch.tensor([s.num_cached + s.num_pending for s in seqs], dtype=torch.int32, device=dev),
            cu_seqlens_q=cu.to(dev),
            kv_caches=self.kv.layers,
        )
        input_ids = torch.tensor(ids, device=dev)
        mask = input_ids == self.placeholder_token_id if embeds else None
        x = self.model.embed(input_ids, torch.cat(embeds).to(dev) if embeds else None, mask)
        hidden = self.model(x, torch.cat(positions).to(dev), paged=paged)
        logits = self.model.logits(hidden[cu[1:].to(dev).long() - 1])
        for seq in seqs:
            self.commit(seq)
        return logits

    def commit(self, seq: Sequence) -> None:
        """After the forward: pending tokens are cached; full blocks get their prefix hash."""
        bs, n = self.pool.block_size, seq.num_pending
        chain_ok = len(seq.block_hashes) == seq.num_cached // bs
        seq.num_cached += n
        seq.next_position += n
        seq.partial_keys = seq.partial_keys + seq.pending_keys if chain_ok else []
        while chain_ok and len(seq.partial_keys) >= bs:
            h = chain_hash(seq.block_hashes[-1] if seq.block_hashes else None, seq.partial_keys[:bs])
            self.pool.register(seq.block_table[len(seq.block_hashes)], h)
            seq.block_hashes.append(h)
            del seq.partial_keys[:bs]
        seq.pending_ids, seq.pending_embeds, seq.pending_keys = [], [], []


def drop_embed_rows(seq: Sequence, n: int) -> None:
    """Remove the first n pending embedding rows (their placeholders were served from the cache)."""
    while n > 0:
        head = seq.pending_embeds[0]
        if head.shape[0] <= n:
            n -= head.shape[0]
            seq.pending_embeds.pop(0)
        else:
            seq.pending_embeds[0] = head[n:]
            n = 0
