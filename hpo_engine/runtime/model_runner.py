"""One forward over pending tokens of several sequences: cache slots, packed inputs, logits.

`reserve` gives one sequence the slots for its next n pending tokens (prefix-cache hits first,
copy on write, new blocks), or answers False with nothing taken. `preempt` takes every block back from
a sequence: its cached tokens go back to pending (recompute), or, for a cache that eviction rewrote,
its K/V go to host memory (`swap_in` restores them). `run` packs ids / embeddings /
positions / slots of a scheduled batch into one forward through the paged cache and returns the
logits of each sequence's last computed token; a step of decodes only replays a CUDA graph
(runtime/cuda_graphs.py) when the runner has them.
"""
import torch

from hpo_engine.cache.block_pool import BlockPool, chain_hash
from hpo_engine.cache.kv_cache import KVCache
from hpo_engine.kernels import store_kv
from hpo_engine.models.decoder import CausalLM, PagedBatch
from hpo_engine.runtime.cuda_graphs import DecodeGraphs
from hpo_engine.runtime.sequence import Sequence


class ModelRunner:
    def __init__(self, model: CausalLM, pool: BlockPool, kv: KVCache, cuda_graphs: bool | None = None,
                 graph_max_batch: int = 128):
        """`cuda_graphs`: None = on for a CUDA model; True on CPU runs the graphs' padded static-buffer
        forward eagerly (tests)."""
        self.model, self.pool, self.kv = model, pool, kv
        self.device = model.inv_freq.device
        if cuda_graphs is None:
            cuda_graphs = self.device.type == "cuda"
        max_blocks = min(pool.num_blocks, -(-model.config.max_position_embeddings // pool.block_size))
        self.graphs = DecodeGraphs(model, kv.layers, graph_max_batch, max_blocks,
                                   capture=self.device.type == "cuda") if cuda_graphs else None

    # -- cache slots ------------------------------------------------------------------------------
    def adopt_cached_prefix(self, seq: Sequence, limit: int | None = None) -> None:
        """Skip computing pending full blocks whose content is already cached (keep >= 1 to compute);
        `limit`: only blocks within the first `limit` pending tokens."""
        bs = self.pool.block_size
        limit = seq.num_pending if limit is None else limit
        while (seq.hash_chain_intact(bs) and seq.num_cached % bs == 0 and seq.num_pending > bs
               and limit >= bs):
            limit -= bs
            h = chain_hash(seq.block_hashes[-1] if seq.block_hashes else None, seq.pending_keys[:bs])
            block = self.pool.lookup(h)
            if block is None:
                return
            seq.block_table.append(block)
            seq.block_hashes.append(h)
            seq.num_cached += bs
            seq.next_position += bs
            seq.commit_front(bs)

    def blocks_to_admit(self, seq: Sequence, limit: int | None = None) -> int:
        """Blocks a sequence without any would take to compute all its pending tokens (and restore a
        swapped cache), less the leading full blocks that are resident in the prefix cache (within
        the first `limit` pending tokens, as `adopt_cached_prefix`)."""
        bs = self.pool.block_size
        need = -(-(seq.num_cached + seq.num_pending) // bs) - len(seq.block_table)
        if seq.swapped_kv is None and seq.hash_chain_intact(bs) and seq.num_cached % bs == 0:
            parent = seq.block_hashes[-1] if seq.block_hashes else None
            stop = seq.num_pending - bs if limit is None else min(seq.num_pending - bs, limit - bs + 1)
            for i in range(0, stop, bs):                           # as adopt_cached_prefix walks
                parent = chain_hash(parent, seq.pending_keys[i:i + bs])
                block = self.pool.hash_to_block.get(parent)
                if block is None:
                    break
                need -= self.pool.ref_count[block] > 0             # held by someone: costs no free block
        return need

    @torch.inference_mode()
    def preempt(self, seq: Sequence) -> None:
        """Give back every block of `seq` (shared ones stay with their other holders). A sequence with
        its history is recomputed later; one whose cache eviction rewrote is swapped out to the host."""
        if seq.recomputable:
            self.pool.free_all(seq.block_table)
            seq.block_table = []
            seq.requeue_history()
        else:
            slots = self._slots(seq, 0, seq.num_cached)
            seq.swapped_kv = [(k.view(-1, *k.shape[2:])[slots].cpu(), v.view(-1, *v.shape[2:])[slots].cpu())
                              for k, v in self.kv.layers]
            self.pool.free_all(seq.block_table)
            seq.block_table = []
            seq.block_hashes, seq.partial_keys = [], []
        seq.num_preemptions += 1

    @torch.inference_mode()
    def swap_in(self, seq: Sequence) -> bool:
        """Blocks for a swapped-out cache, filled with its K/V; False (nothing taken) when short."""
        blocks = self.pool.allocate_many(-(-seq.num_cached // self.pool.block_size))
        if blocks is None:
            return False
        seq.block_table = blocks
        slots = self._slots(seq, 0, seq.num_cached)
        for (k_cache, v_cache), (k, v) in zip(self.kv.layers, seq.swapped_kv):
            store_kv(k.to(self.kv.device), v.to(self.kv.device), k_cache, v_cache, slots)
        seq.swapped_kv = None
        return True

    def _slots(self, seq: Sequence, start: int, stop: int) -> torch.Tensor:
        bs, logical = self.pool.block_size, torch.arange(start, stop)
        table = torch.tensor(seq.block_table, dtype=torch.long)
        return (table[logical // bs] * bs + logical % bs).to(self.kv.device)

    def reserve(self, seq: Sequence, n: int) -> bool:
        """Slots for the next n pending tokens of `seq`; False (nothing taken) when out of blocks."""
        bs = self.pool.block_size
        cow = seq.num_cached % bs and seq.block_table and not self.pool.is_writable(seq.block_table[-1])
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
        seq_lens = torch.tensor([s.num_cached + n for s, n in batch], dtype=torch.int32)
        for seq, n in batch:
            embeds += self.commit(seq, n)
        if self.graphs is not None and not embeds and len(ids) == len(batch) <= self.graphs.max_batch:
            return self.graphs.run(torch.tensor(ids), torch.cat(positions), torch.cat(slots), block_table, seq_lens)
        q_lens = torch.tensor([n for _, n in batch])
        cu = torch.zeros(len(batch) + 1, dtype=torch.int32)
        cu[1:] = q_lens.cumsum(0)
        paged = PagedBatch(
            slot_mapping=torch.cat(slots).to(dev),
            block_table=block_table.to(dev),
            seq_lens=seq_lens.to(dev),
            cu_seqlens_q=cu.to(dev),
            kv_caches=self.kv.layers,
        )
        input_ids = torch.tensor(ids, device=dev)
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
        return seq.commit_front(n)
