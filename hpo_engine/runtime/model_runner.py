"""One forward over pending tokens of several sequences: packed inputs -> logits.

`run` packs ids / embeddings / positions / slots of a scheduled batch (slots already reserved by the
block manager) into one forward through the paged cache and returns the logits of each sequence's
last computed token; a step of decodes only replays a CUDA graph (runtime/cuda_graphs.py) when the
runner has them. It reads the sequences and changes nothing: the block manager commits the
computed tokens afterwards.
"""
import torch

from hpo_engine import kernels
from hpo_engine.cache.block_manager import slot_mapping
from hpo_engine.cache.kv_cache import KVCache
from hpo_engine.models.decoder import CausalLM, PagedBatch
from hpo_engine.runtime.cuda_graphs import DecodeGraphs
from hpo_engine.runtime.sequence import Sequence


def kernel_backends(model: CausalLM, kv: KVCache) -> tuple[str, str]:
    """(attention, store_kv) backends for this model's queries and this cache, chosen once (the
    environment's HPO_ATTN_BACKEND is read here, not at every layer call)."""
    c = model.config
    k_cache, v_cache = kv.layers[0]
    q = torch.empty(1, c.num_heads, c.head_dim, dtype=k_cache.dtype, device=k_cache.device)
    key = torch.empty(1, c.num_kv_heads, c.head_dim, dtype=k_cache.dtype, device=k_cache.device)
    return kernels.attention_backend(q, k_cache), kernels.store_backend(key, k_cache, v_cache)


class ModelRunner:
    def __init__(self, model: CausalLM, kv: KVCache, block_size: int, cuda_graphs: bool | None = None,
                 graph_max_batch: int = 128):
        """`cuda_graphs`: None = on for a CUDA model; True on CPU runs the graphs' padded static-buffer
        forward eagerly (tests)."""
        self.model, self.kv, self.block_size = model, kv, block_size
        self.device = model.inv_freq.device
        if cuda_graphs is None:
            cuda_graphs = self.device.type == "cuda"
        num_blocks = kv.layers[0][0].shape[0]
        self.backends = kernel_backends(model, kv)
        max_blocks = min(num_blocks, -(-model.config.max_position_embeddings // block_size))
        self.graphs = DecodeGraphs(model, kv.layers, graph_max_batch, max_blocks, capture=self.device.type == "cuda",
                                   backends=self.backends) if cuda_graphs else None

    # -- forward ----------------------------------------------------------------------------------
    @torch.inference_mode()
    def run(self, batch: list[tuple[Sequence, int]]) -> torch.Tensor:
        """Compute the first n pending tokens of each (seq, n), slots already reserved -> logits [B, V]."""
        dev = self.device
        ids, is_speech, positions, slots, embeds, tables = [], [], [], [], [], []
        for seq, n in batch:
            ids += seq.pending.ids[:n]
            is_speech += seq.pending.is_speech[:n]
            embeds += seq.pending.rows(n)
            positions.append(torch.arange(seq.next_position, seq.next_position + n))
            slots.append(slot_mapping(seq.block_table, self.block_size, seq.num_cached, seq.num_cached + n))
            tables.append(torch.tensor(seq.block_table, dtype=torch.int32))
        block_table = torch.nn.utils.rnn.pad_sequence(tables, batch_first=True)
        seq_lens = torch.tensor([s.num_cached + n for s, n in batch], dtype=torch.int32)
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
            backends=self.backends,
        )
        input_ids = torch.tensor(ids, device=dev)
        mask = torch.tensor(is_speech, device=dev) if embeds else None
        x = self.model.embed(input_ids, torch.cat(embeds).to(dev) if embeds else None, mask)
        hidden = self.model(x, torch.cat(positions).to(dev), paged=paged)
        return self.model.logits(hidden[cu[1:].to(dev).long() - 1])
