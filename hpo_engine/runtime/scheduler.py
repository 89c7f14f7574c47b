"""Continuous batching: which sequences compute how many pending tokens in the next forward.

Every step packs the pending work of all active sequences (a decode token, a user-turn extension,
or a chunk of a long prefill) under a token budget and a maximum batch. The starting point rotates
step by step so that no sequence starves; one that finds no free block waits while the others run.
A step in which nobody can get a block is an answer (OutOfBlocks), not a hang.
"""
from dataclasses import dataclass

from hpo_engine.cache.window import evict_old_turns
from hpo_engine.runtime.model_runner import ModelRunner
from hpo_engine.runtime.sequence import Sequence


class OutOfBlocks(RuntimeError):
    pass


@dataclass
class SchedulerConfig:
    max_num_batched_tokens: int = 2048
    max_num_seqs: int = 256
    max_cache_tokens: int | None = None     # per-stream window (turn-aligned eviction), None = unbounded


class Scheduler:
    def __init__(self, runner: ModelRunner, config: SchedulerConfig, max_position: int):
        self.runner, self.config, self.max_position = runner, config, max_position
        self.step_count = 0

    def schedule(self, seqs: list[Sequence]) -> list[tuple[Sequence, int]]:
        """[(sequence, tokens to compute now)], slots reserved. Sequences must have pending tokens."""
        cfg, runner = self.config, self.runner
        start = self.step_count % len(seqs)
        self.step_count += 1
        order = sorted(seqs[start:] + seqs[:start], key=lambda s: s.num_pending > 1)   # decodes first
        budget, batch = cfg.max_num_batched_tokens, []
        for seq in order:
            if budget == 0 or len(batch) == cfg.max_num_seqs:
                break
            if cfg.max_cache_tokens is not None:
                evict_old_turns(seq, seq.num_pending, cfg.max_cache_tokens, runner.pool, runner.kv,
                                runner.model.inv_freq)
            runner.adopt_cached_prefix(seq)
            n = min(seq.num_pending, budget)
            if seq.next_position + n > self.max_position:
                raise ValueError(f"stream {seq.seq_id} would pass max_position_embeddings={self.max_position}; "
                                 "open the engine with max_cache_tokens to bound it")
            if runner.reserve(seq, n):
                batch.append((seq, n))
                budget -= n
        if not batch:
            pool = runner.pool
            raise OutOfBlocks(f"KV cache out of blocks ({pool.num_free} free of {pool.num_blocks}) for "
                              f"{len(seqs)} waiting stream(s); close streams, lower max_cache_tokens "
                              "or give the engine a larger cache_memory")
        return batch
