"""CUDA graphs of the decode step: one graph per padded batch size, replayed on persistent buffers.

A decode step (every sequence computes one sampled token: no speech rows, no prefill) launches about
ten kernels per layer; at small batches on a GPU the launches, not the math, set the step time. Each
graph is captured once over static buffers (ids, positions, slot mapping, block table, KV lengths) and
replayed after the step's values are copied in. A batch is padded up to the next captured size; a
padding row stores no K/V (slot -1), attends to one key of block 0, and its logits are dropped.
The block table buffer is as wide as the longest sequence can be, so the kernels' launch grids never
change between replays.

The graphs bake in the model as it is at capture: weights may change in place (optimizer steps,
`load_state_dict`), but adding or removing forward hooks (a LoRA attached or merged) triggers a new
capture, and `LoRA.disabled()` is not seen by a replay (the trainer's KL reference runs its own
full-mode forward, not the engine).

`DecodeGraphs(..., capture=False)` runs the same padded static-buffer forward eagerly: CPU tests check
it against the unpadded forward; bench/gpu_check.py checks the replay on a GPU. A capture that fails
warns and leaves the steps eager.
"""
import warnings

import torch

from hpo_engine.models.decoder import CausalLM, PagedBatch


def graph_batch_sizes(max_batch: int) -> list[int]:
    """Captured sizes: 1, 2, 4, then every multiple of 8 up to max_batch (vLLM's ladder)."""
    sizes = [s for s in (1, 2, 4) if s < max_batch] + list(range(8, max_batch, 8))
    return sorted(set(sizes + [max_batch]))


def hook_signature(modules) -> int:
    """Forward hooks on `modules` (a LoRA adds one per adapted layer): a change means capture again."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in modules)


class DecodeGraphs:
    def __init__(self, model: CausalLM, kv_caches: list, max_batch: int, max_blocks_per_seq: int,
                 capture: bool = True, backends: tuple = (None, None)):
        self.model, self.kv_caches, self.backends = model, kv_caches, backends
        self.modules = list(model.modules())      # walked once: the signature is checked every step
        self.sizes = graph_batch_sizes(max_batch)
        self.max_batch = self.sizes[-1]
        self.capture = capture
        device = kv_caches[0][0].device
        B = self.max_batch
        self.input_ids = torch.zeros(B, dtype=torch.long, device=device)
        self.positions = torch.zeros(B, dtype=torch.long, device=device)
        self.slot_mapping = torch.full((B,), -1, dtype=torch.long, device=device)
        self.block_table = torch.zeros(B, max_blocks_per_seq, dtype=torch.int32, device=device)
        self.seq_lens = torch.ones(B, dtype=torch.int32, device=device)
        self.cu_seqlens_q = torch.arange(B + 1, dtype=torch.int32, device=device)
        self.logits: torch.Tensor | None = None
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.signature: int | None = None

    def forward(self, b: int) -> torch.Tensor:
        """The decode forward of the first b rows of the static buffers -> logits [b, V]."""
        paged = PagedBatch(self.slot_mapping[:b], self.block_table[:b], self.seq_lens[:b],
                           self.cu_seqlens_q[:b + 1], self.kv_caches, self.backends)
        x = self.model.embed(self.input_ids[:b])
        return self.model.logits(self.model(x, self.positions[:b], paged=paged))

    @torch.inference_mode()
    def capture_all(self) -> None:
        """Capture every size, largest first so the smaller graphs share its memory pool."""
        self.graphs.clear()
        self.signature = hook_signature(self.modules)
        self._set_padding(0, self.max_batch)
        V, dtype = self.model.config.vocab_size, self.model.lm_head.weight.dtype
        self.logits = torch.empty(self.max_batch, V, dtype=dtype, device=self.input_ids.device)
        pool = None
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        for b in reversed(self.sizes):
            with torch.cuda.stream(side):     # warm-up outside the capture: Triton compiles here
                self.forward(b)
            torch.cuda.current_stream().wait_stream(side)
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.logits[:b] = self.forward(b)
            pool = graph.pool()
            self.graphs[b] = graph

    def _set_padding(self, start: int, stop: int) -> None:
        self.input_ids[start:stop] = 0
        self.positions[start:stop] = 0
        self.slot_mapping[start:stop] = -1
        self.block_table[start:stop, 0] = 0
        self.seq_lens[start:stop] = 1

    @torch.inference_mode()
    def run(self, input_ids: torch.Tensor, positions: torch.Tensor, slot_mapping: torch.Tensor,
            block_table: torch.Tensor, seq_lens: torch.Tensor) -> torch.Tensor:
        """One decode step of n <= max_batch sequences (host or device tensors: ids [n], positions [n],
        slots [n], block table [n, w], KV lengths [n]) -> logits [n, V]."""
        n, w = block_table.shape
        if not 0 < n <= self.max_batch or w > self.block_table.shape[1]:
            raise ValueError(f"decode graphs take 1..{self.max_batch} sequences of <= {self.block_table.shape[1]} "
                             f"blocks, got {n} x {w}")
        b = next(s for s in self.sizes if s >= n)
        if self.capture and (not self.graphs or self.signature != hook_signature(self.modules)):
            try:
                self.capture_all()
            except Exception as e:  # noqa: BLE001 - a capture failure must not stop the stream: go eager
                warnings.warn(f"CUDA graph capture failed ({type(e).__name__}: {e}); decode steps run eagerly")
                self.capture, self.graphs = False, {}
        self.input_ids[:n].copy_(input_ids, non_blocking=True)
        self.positions[:n].copy_(positions, non_blocking=True)
        self.slot_mapping[:n].copy_(slot_mapping, non_blocking=True)
        self.block_table[:n, :w].copy_(block_table, non_blocking=True)
        self.seq_lens[:n].copy_(seq_lens, non_blocking=True)
        self._set_padding(n, b)
        if not self.capture:
            return self.forward(b)[:n]
        self.graphs[b].replay()
        return self.logits[:n]
