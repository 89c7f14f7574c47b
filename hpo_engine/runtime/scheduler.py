"""Continuous batching: which sequences compute how many pending tokens in the next forward.

Every step packs the pending work of all running sequences (a decode token, a user-turn extension,
or a chunk of a long prefill) under a token budget and a maximum batch. The starting point rotates
step by step so that no sequence starves.

When blocks run short, sequences are preempted (vLLM style) instead of failing: first idle ones
(open streams holding blocks but not running now, least recently computed first), then the most
recently admitted running one; a sequence that is itself the newest waits (gives its blocks back).
A preempted sequence gives back every block (shared ones stay with their other holders) and keeps
what its cache was made of: its cached tokens are computed again by chunked prefill when it is
readmitted, at the same positions, then it goes on exactly where it was (see `ModelRunner.preempt`;
a cache rewritten by turn eviction is swapped out to host memory instead, as no recompute gives it).
A sequence without blocks (new or preempted) is admitted only when its whole pending work fits in
the free blocks (idle streams give theirs if that makes it fit), and not in a step that preempted a
running one. OutOfBlocks means a single sequence alone does not fit the pool.
"""
import itertools
from collections import Counter
from dataclasses import dataclass

from hpo_engine.cache.window import evict_old_turns
from hpo_engine.runtime.model_runner import ModelRunner
from hpo_engine.runtime.sequence import Sequence


class OutOfBlocks(RuntimeError):
    """One stream alone does not fit the KV pool; `seq_id` names it (the step computed nothing, the
    others are intact: close or fail that stream and step again)."""

    def __init__(self, message: str, seq_id: int | None = None):
        super().__init__(message)
        self.seq_id = seq_id


@dataclass
class SchedulerConfig:
    max_num_batched_tokens: int = 2048
    max_num_seqs: int = 256
    max_cache_tokens: int | None = None     # per-stream window (turn-aligned eviction), None = unbounded


class Scheduler:
    def __init__(self, runner: ModelRunner, config: SchedulerConfig, max_position: int):
        self.runner, self.config, self.max_position = runner, config, max_position
        self.step_count = 0
        self._stamps = itertools.count()
        # counters
        self.num_preemptions = 0            # of which swapped out:
        self.num_swaps = 0
        self.num_recomputed_tokens = 0      # cached tokens sent back to be computed again

    def admit(self, seq: Sequence) -> None:
        """Mark `seq` as the most recently admitted (the first running victim when blocks run short)."""
        seq.admitted = next(self._stamps)

    def schedule(self, seqs: list[Sequence], idle: list[Sequence] = ()) -> list[tuple[Sequence, int]]:
        """[(sequence, tokens to compute now)], slots reserved. `seqs` are the running sequences (with
        pending tokens); `idle` are other sequences that may hold blocks: they are preempted first."""
        step = self.step_count
        self.step_count += 1
        start = step % len(seqs)
        rotated = seqs[start:] + seqs[:start]
        self._running = rotated
        self._idle = sorted((s for s in idle if s.resident), key=lambda s: s.last_step)   # LRU first
        self._batch, self._budget, self._preempted_running = [], self.config.max_num_batched_tokens, False
        for seq in sorted((s for s in rotated if s.resident), key=lambda s: s.num_pending > 1):  # decodes first
            if seq.resident:                            # (not preempted meanwhile)
                self._place(seq, step)
        for seq in sorted((s for s in seqs if not s.resident), key=lambda s: (s.admitted < 0, s.admitted)):
            if self._preempted_running or not self._room():
                break
            if not self._admit(seq, step):
                break                                   # first come, first served
        if not self._batch:                              # everyone waits: the first one must go
            waiting = sorted(seqs, key=lambda s: (s.admitted < 0, s.admitted))
            self._admit(waiting[0], step, force=True)
        batch = self._batch
        self._running = self._idle = self._batch = None  # hold no sequence between steps
        return batch

    # -- helpers ----------------------------------------------------------------------------------
    def _room(self) -> bool:
        return self._budget > 0 and len(self._batch) < self.config.max_num_seqs

    def _prepare(self, seq: Sequence) -> int | None:
        """Evict (windowed streams), adopt cached prefix blocks; the number of tokens to compute now
        (None: eviction needs a free block first)."""
        cfg, runner = self.config, self.runner
        if cfg.max_cache_tokens is not None and seq.num_recompute == 0:
            if evict_old_turns(seq, seq.num_pending, cfg.max_cache_tokens, runner.pool, runner.kv,
                               runner.model.inv_freq) is None:
                return None
        runner.adopt_cached_prefix(seq, self._adopt_limit(seq))
        n = min(seq.num_pending, self._budget)
        if cfg.max_cache_tokens is not None and seq.num_recompute:
            n = min(n, seq.num_recompute)   # the window acts, as it did, once the old cache is back
        if seq.next_position + n > self.max_position:
            raise ValueError(f"stream {seq.seq_id} would pass max_position_embeddings={self.max_position}; "
                             "open the engine with max_cache_tokens to bound it")
        return n

    def _adopt_limit(self, seq: Sequence) -> int | None:
        """A windowed stream recomputing its cache adopts no block past it before the window acts."""
        return seq.num_recompute if self.config.max_cache_tokens is not None and seq.num_recompute else None

    def _place(self, seq: Sequence, step: int) -> None:
        """Reserve slots for a resident sequence's next tokens, preempting others (or itself) as needed."""
        if not self._room():
            return
        while True:
            n = self._prepare(seq)
            if n is not None and self.runner.reserve(seq, n):
                self._batch.append((seq, n))
                self._budget -= n
                seq.last_step = step
                return
            victim = self._victim(seq)
            if victim is None:
                self._out_of_blocks(seq, seq.num_cached + (n or 1))
            self._preempt(victim)
            if victim is seq:
                return

    def _victim(self, seq: Sequence) -> Sequence | None:
        if self._idle:
            return self._idle[0]
        others = [s for s in self._running if s is not seq and s.resident]
        if not others:
            return None                                 # it holds the pool alone
        newest = max(others, key=lambda s: s.admitted)
        return seq if seq.admitted > newest.admitted else newest

    def _preempt(self, victim: Sequence) -> None:
        if any(victim is s for s in self._idle):
            self._idle = [s for s in self._idle if s is not victim]
        else:
            self._preempted_running = True
            for i, (s, n) in enumerate(self._batch):
                if s is victim:                         # already placed this step: take it out
                    del self._batch[i]
                    self._budget += n
                    break
        self.num_swaps += not victim.recomputable
        self.num_recomputed_tokens += victim.num_cached if victim.recomputable else 0
        self.num_preemptions += 1
        self.runner.preempt(victim)

    def _admit(self, seq: Sequence, step: int, force: bool = False) -> bool:
        """Give blocks to a sequence without any when its whole pending work fits (idle streams give
        theirs if that makes it fit). `force`: it is the only one that can run; idle streams give all."""
        pool, runner = self.runner.pool, self.runner
        total = seq.num_cached + seq.num_pending
        if self.config.max_cache_tokens is None and -(-total // pool.block_size) > pool.num_blocks:
            self._out_of_blocks(seq, total)             # hopeless: take nobody's blocks for it
        if not force:
            need = runner.blocks_to_admit(seq, self._adopt_limit(seq))
            if pool.num_free < need:
                held = Counter(b for s in self._idle for b in s.block_table)
                freeable = sum(c == pool.ref_count[b] for b, c in held.items())
                if pool.num_free + freeable < need:
                    return False
                while pool.num_free < need and self._idle:
                    self._preempt(self._idle[0])
        self.admit(seq)
        while seq.swapped_kv is not None and not runner.swap_in(seq):
            if not self._idle:
                self._out_of_blocks(seq, seq.num_cached)
            self._preempt(self._idle[0])
        self._place(seq, step)
        return True

    def _out_of_blocks(self, seq: Sequence, tokens: int):
        pool, bs = self.runner.pool, self.runner.pool.block_size
        hint = ("lower max_cache_tokens" if self.config.max_cache_tokens is not None
                else "open the engine with max_cache_tokens")
        raise OutOfBlocks(f"KV cache out of blocks: stream {seq.seq_id} alone needs {-(-tokens // bs)} blocks "
                          f"of {bs} tokens for {tokens} tokens, but the pool has {pool.num_blocks} blocks "
                          f"({pool.num_free} free); give the engine a larger cache_memory / num_blocks or {hint}",
                          seq.seq_id)
