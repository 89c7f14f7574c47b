"""One forward over pending tokens of several sequences: cache slots, packed inputs, logits.

`reserve` gives one sequence the slots for its next n pending tokens (prefix-cache hits first,
copy on write, new blocks), or answers False with nothing taken. `run` packs ids / embeddings /
positions / slots of a scheduled batch into one forward through the paged cache and returns the
logits of each sequence's last computed token.
"""
import torch

from hpo_engine.cache.block_pool import BlockPool, chain_hash
from hpo_engine.cache.kv_cache import KVCache
from hpo_engine.models.decoder import CausalLM, PagedBatch
from hpo_engine.runtime.sequence import Sequence


class ModelRunner:
    def __init__(self, model: CausalLM, pool: BlockPool, kv: KVCache):
        self.model, self.pool, self.kv = model, pool, kv
        self.device = model.inv_freq.device

    # -- cache slots ------------------------------------------------------------------------------
    def adopt_cached_prefix(self, seq: Sequence) -> None:
        """Skip computing pending full blocks whose content is already cached (keep >= 1 to compute)."""
        bs = self.pool.block_size
        while seq.hash_chain_intact(bs) and seq.num_cached % bs == 0 and seq.num_pending > bs:
            h = chain_hash(seq.block_hashes[-1] if seq.block_hashes else None, seq.pending_keys[:bs])
            block = self.pool.lookup(h)
            if block is None:
                return
            seq.block_table.append(block)
            seq.block_hashes.append(h)
            seq.num_cached += bs
            seq.next_position += bs
            seq.pop_front(bs)

    def reserve(self, seq: Sequence, n: int) -> bool:
        """Slots for the next n pending tokens of `seq`; False (nothing taken) when out of blocks."""
        bs = self.pool.block_size
        cow = seq.num_cached % bs and not self.pool.is_writable(seq.block_table[-1])
        need = -(-(seq.num_cached + n) // bs) - len(seq.block_table)
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

    # -- forward ----------------------------------------------------------------------------------
    @torch.inference_mode()
    def run(self, batch: list[tuple[Sequence, int]]) -> torch.Tensor:
        """Compute the first n pending tokens of each (seq, n), slots already reserved -> logits [B, V]."""
        bs, dev = self.pool.block_size, self.device
        ids, is_speech, positions, slots, embeds, tables = [], [], [], [], [], []
        for seq, n in batch:
            ids += seq.pending_ids[:n]
            is_speech += seq.pending_is_speech[:n]
            positions.append(torch.arange(seq.next_position, seq.next_position + n))
            logical = torch.arange(seq.num_cached, seq.num_cached + n)
            table = torch.tensor(seq.block_table, dtype=torch.int32)
            slots.append(table[logical // bs].long() * bs + logical % bs)
            tables.append(table)
        block_table = torch.nn.utils.rnn.pad_sequence(tables, batch_first=True)
        q_lens = torch.tensor([n for _, n in batch])
        cu = torch.zeros(len(batch) + 1, dtype=torch.int32)
        cu[1:] = q_lens.cumsum(0)
        paged = PagedBatch(
            slot_mapping=torch.cat(slots).to(dev),
            block_table=block_table.to(dev),
            seq_lens=torch.tensor([s.num_cached + n for s, n in batch], dtype=torch.int32).to(dev),
            cu_seqlens_q=cu.to(dev),
            kv_caches=self.kv.layers,
        )
        input_ids = torch.tensor(ids, device=dev)
        for seq, n in batch:
            embeds += self.commit(seq, n)
        mask = torch.tensor(is_speech, device=dev) if embeds else None
        x = self.model.embed(input_ids, torch.cat(embeds).to(dev) if embeds else None, mask)
        hidden = self.model(x, torch.cat(positions).to(dev), paged=paged)
        return self.model.logits(hidden[cu[1:].to(dev).long() - 1])

    def commit(self, seq: Sequence, n: int) -> list[torch.Tensor]:
        """n pending tokens become cached (their forward is under way); newly full blocks get their
        prefix hash. Returns the embedding rows of those tokens."""
        bs = self.pool.block_size
        chain_ok = seq.hash_chain_intact(bs)
        seq.num_cached += n
        seq.next_position += n
        seq.partial_keys = seq.partial_keys + seq.pending_keys[:n] if chain_ok else []
        while chain_ok and len(seq.partial_keys) >= bs:
            h = chain_hash(seq.block_hashes[-1] if seq.block_hashes else None, seq.partial_keys[:bs])
            self.pool.register(seq.block_table[len(seq.block_hashes)], h)
            seq.block_hashes.append(h)
            del seq.partial_keys[:bs]
        return seq.pop_front(n)
