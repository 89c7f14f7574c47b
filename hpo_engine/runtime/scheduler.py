"""Continuous batching: which sequences compute how many pending tokens in the next forward.

Every step packs the pending work of all running sequences (a decode token, a user-turn extension,
or a chunk of a long prefill) under a token budget and a maximum batch. The starting point rotates
step by step so that no sequence starves.

When blocks run short, sequences are preempted (vLLM style) instead of failing: first idle ones
(open streams holding blocks but not running now, least recently computed first), then the most
recently admitted running one; a sequence that is itself the newest waits (gives its blocks back).
A preempted sequence gives back every block (shared ones stay with their other holders) and keeps
what its cache was made of: its cached tokens are computed again by chunked prefill when it is
readmitted, at the same positions, then it goes on exactly where it was (see `BlockManager.preempt`;
a cache rewritten by turn eviction is swapped out to host memory instead, as no recompute gives it).
A sequence without blocks (new or preempted) is admitted only when its whole pending work fits in
the free blocks (idle streams give theirs if that makes it fit), and not in a step that preempted a
running one. OutOfBlocks means a single sequence alone does not fit the pool.

The scheduler decides who gets, keeps or gives back blocks; the block manager (cache/) it owns does
the block work. What one step is planning lives in a `StepPlan`, not on the scheduler.
"""
import itertools
from collections import Counter
from dataclasses import dataclass, field

from hpo_engine.cache.block_manager import BlockManager
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


@dataclass
class StepPlan:
    """One step being planned: who runs, who idles, what is placed so far, the token budget left."""
    step: int
    running: list[Sequence]
    idle: list[Sequence]                # resident, not running now: preempted first (LRU first)
    budget: int
    batch: list[tuple[Sequence, int]] = field(default_factory=list)
    preempted_running: bool = False


class Scheduler:
    def __init__(self, blocks: BlockManager, config: SchedulerConfig, max_position: int):
        self.blocks, self.config, self.max_position = blocks, config, max_position
        self.step_count = 0
        self._stamps = itertools.count()

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
        plan = StepPlan(step, rotated, sorted((s for s in idle if s.resident), key=lambda s: s.last_step),
                        self.config.max_num_batched_tokens)
        for seq in sorted((s for s in rotated if s.resident), key=lambda s: s.num_pending > 1):  # decodes first
            if seq.resident:                            # (not preempted meanwhile)
                self._place(plan, seq)
        for seq in sorted((s for s in seqs if not s.resident), key=lambda s: (s.admitted < 0, s.admitted)):
            if plan.preempted_running or not self._room(plan):
                break
            if not self._admit(plan, seq):
                break                                   # first come, first served
        if not plan.batch:                              # everyone waits: the first one must go
            waiting = sorted(seqs, key=lambda s: (s.admitted < 0, s.admitted))
            self._admit(plan, waiting[0], force=True)
        return plan.batch

    def commit(self, batch: list[tuple[Sequence, int]]) -> None:
        """The batch's forward ran: its tokens are cached now."""
        for seq, n in batch:
            self.blocks.commit(seq, n)

    # -- helpers ----------------------------------------------------------------------------------
    def _room(self, plan: StepPlan) -> bool:
        return plan.budget > 0 and len(plan.batch) < self.config.max_num_seqs

    def _windowed(self) -> bool:
        return self.config.max_cache_tokens is not None

    def _prepare(self, plan: StepPlan, seq: Sequence) -> int | None:
        """Evict (windowed streams), adopt cached prefix blocks; the number of tokens to compute now
        (None: eviction needs a free block first)."""
        if self._windowed() and seq.num_recompute == 0:
            if self.blocks.evict_old_turns(seq, seq.num_pending, self.config.max_cache_tokens) is None:
                return None
        self.blocks.adopt_cached_prefix(seq, self._adopt_limit(seq))
        n = min(seq.num_pending, plan.budget)
        if self._windowed() and seq.num_recompute:
            n = min(n, seq.num_recompute)   # the window acts, as it did, once the old cache is back
        if seq.next_position + n > self.max_position:
            raise ValueError(f"stream {seq.seq_id} would pass max_position_embeddings={self.max_position}; "
                             "open the engine with max_cache_tokens to bound it")
        return n

    def _adopt_limit(self, seq: Sequence) -> int | None:
        """A windowed stream recomputing its cache adopts no block past it before the window acts."""
        return seq.num_recompute if self._windowed() and seq.num_recompute else None

    def _place(self, plan: StepPlan, seq: Sequence) -> None:
        """Reserve slots for a resident sequence's next tokens, preempting others (or itself) as needed."""
        if not self._room(plan):
            return
        while True:
            n = self._prepare(plan, seq)
            if n is not None and self.blocks.reserve(seq, n):
                plan.batch.append((seq, n))
                plan.budget -= n
                seq.last_step = plan.step
                return
            victim = self._victim(plan, seq)
            if victim is None:
                self._out_of_blocks(seq, seq.num_cached + (n or 1))
            self._preempt(plan, victim)
            if victim is seq:
                return

    def _victim(self, plan: StepPlan, seq: Sequence) -> Sequence | None:
        if plan.idle:
            return plan.idle[0]
        others = [s for s in plan.running if s is not seq and s.resident]
        if not others:
            return None                                 # it holds the pool alone
        newest = max(others, key=lambda s: s.admitted)
        return seq if seq.admitted > newest.admitted else newest

    def _preempt(self, plan: StepPlan, victim: Sequence) -> None:
        if any(victim is s for s in plan.idle):
            plan.idle = [s for s in plan.idle if s is not victim]
        else:
            plan.preempted_running = True
            for i, (s, n) in enumerate(plan.batch):
                if s is victim:                         # already placed this step: take it out
                    del plan.batch[i]
                    plan.budget += n
                    break
        self.blocks.preempt(victim)

    def _admit(self, plan: StepPlan, seq: Sequence, force: bool = False) -> bool:
        """Give blocks to a sequence without any when its whole pending work fits (idle streams give
        theirs if that makes it fit). `force`: it is the only one that can run; idle streams give all."""
        pool, blocks = self.blocks.pool, self.blocks
        total = seq.num_cached + seq.num_pending
        if not self._windowed() and -(-total // pool.block_size) > pool.num_blocks:
            self._out_of_blocks(seq, total)             # hopeless: take nobody's blocks for it
        if not force:
            need = blocks.blocks_to_admit(seq, self._adopt_limit(seq))
            if pool.num_free < need:
                held = Counter(b for s in plan.idle for b in s.block_table)
                freeable = sum(c == pool.ref_count[b] for b, c in held.items())
                if pool.num_free + freeable < need:
                    return False
                while pool.num_free < need and plan.idle:
                    self._preempt(plan, plan.idle[0])
        self.admit(seq)
        while seq.swapped_kv is not None and not blocks.swap_in(seq):
            if not plan.idle:
                self._out_of_blocks(seq, seq.num_cached)
            self._preempt(plan, plan.idle[0])
        self._place(plan, seq)
        return True

    def _out_of_blocks(self, seq: Sequence, tokens: int):
        pool, bs = self.blocks.pool, self.blocks.block_size
        hint = "lower max_cache_tokens" if self._windowed() else "open the engine with max_cache_tokens"
        raise OutOfBlocks(f"KV cache out of blocks: stream {seq.seq_id} alone needs {-(-tokens // bs)} blocks "
                          f"of {bs} tokens for {tokens} tokens, but the pool has {pool.num_blocks} blocks "
                          f"({pool.num_free} free); give the engine a larger cache_memory / num_blocks or {hint}",
                          seq.seq_id)
