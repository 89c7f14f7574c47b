"""Per-stream state: what is in the KV cache, what is waiting to be computed.

A sequence also keeps what its cached tokens were made of (ids, prefix keys, speech rows: the
history) so that a preempted sequence can give its blocks back and recompute them later: the history
goes back in front of the pending tokens. Speech rows cannot be rebuilt from ids, hence kept. A cache
rewritten by turn eviction cannot be recomputed (its kept K/V were computed with turns now gone), so
eviction drops the history and such a sequence is preempted by swapping its K/V out instead.
"""
import hashlib
from dataclasses import dataclass, field

import torch


@dataclass
class Sequence:
    seq_id: int
    block_table: list[int] = field(default_factory=list)
    num_cached: int = 0                 # tokens whose K/V are in the cache
    next_position: int = 0              # rope position of the next token
    pending_ids: list[int] = field(default_factory=list)        # appended, not yet computed
    pending_embeds: list[torch.Tensor] = field(default_factory=list)  # rows for pending placeholders
    pending_keys: list[bytes] = field(default_factory=list)      # prefix-cache key of each pending token
    pending_is_speech: list[bool] = field(default_factory=list)  # placeholder filled by an embeds row
    block_hashes: list[bytes] = field(default_factory=list)      # hash of each full block, in order
    partial_keys: list[bytes] = field(default_factory=list)      # keys of the tokens in the partial last block
    num_sink: int = 0                   # leading cached tokens never evicted (the system prompt)
    turn_starts: list[int] = field(default_factory=list)        # logical index where each turn starts
    in_turn: bool = False               # tokens appended since the last generate
    closed: bool = False
    # what the cached tokens are made of, for recompute after a preemption
    history_ids: list[int] = field(default_factory=list)
    history_keys: list[bytes] = field(default_factory=list)
    history_is_speech: list[bool] = field(default_factory=list)
    history_embeds: list[torch.Tensor] = field(default_factory=list)   # speech rows, pieces of [k, hidden]
    recomputable: bool = True           # history complete (false once eviction rewrote the cache)
    num_recompute: int = 0              # leading pending tokens that were cached before a preemption
    swapped_kv: list | None = None      # per layer (k, v) [num_cached, Hkv, D] on the host while swapped out
    admitted: int = -1                  # scheduler stamp of the latest admission (newest is preempted first)
    last_step: int = -1                 # scheduler step that last computed this sequence
    # counters
    num_turns: int = 0
    num_generated: int = 0
    num_evicted: int = 0
    num_preemptions: int = 0
    num_recomputed: int = 0             # cached tokens sent back to be computed again (prefix hits may spare some)
    turn_seconds: float = 0.0
    total_turn_seconds: float = 0.0

    @property
    def num_pending(self) -> int:
        return len(self.pending_ids)

    @property
    def num_new(self) -> int:
        """Pending tokens never computed (not counting those to recompute)."""
        return len(self.pending_ids) - self.num_recompute

    @property
    def resident(self) -> bool:
        """Holds blocks in the pool (a sequence with no cache yet, or preempted, holds none)."""
        return bool(self.block_table)

    def hash_chain_intact(self, block_size: int) -> bool:
        """Every full cached block has its prefix hash and the partial block's keys are known
        (false after an eviction or a swap rewrote the cache)."""
        return (len(self.block_hashes) == self.num_cached // block_size
                and len(self.partial_keys) == self.num_cached % block_size)

    def push(self, token_ids: list[int], keys: list[bytes], is_speech: list[bool]) -> None:
        self.pending_ids += token_ids
        self.pending_keys += keys
        self.pending_is_speech += is_speech

    def pop_front(self, n: int) -> list[torch.Tensor]:
        """Drop the first n pending tokens; return their embedding rows (pieces of [k, hidden])."""
        rows = sum(self.pending_is_speech[:n])
        del self.pending_ids[:n], self.pending_keys[:n], self.pending_is_speech[:n]
        return self.take_pending_embeds(rows)

    def commit_front(self, n: int) -> list[torch.Tensor]:
        """The first n pending tokens become cached (into the history while it is kept).
        Returns their embedding rows."""
        if self.recomputable:
            self.history_ids += self.pending_ids[:n]
            self.history_keys += self.pending_keys[:n]
            self.history_is_speech += self.pending_is_speech[:n]
        rows = self.pop_front(n)
        if self.recomputable:
            self.history_embeds += rows
        self.num_recompute -= min(n, self.num_recompute)
        return rows

    def drop_history(self) -> None:
        """The cache no longer equals a computation of the history (eviction rewrote it)."""
        self.recomputable = False
        self.history_ids, self.history_keys, self.history_is_speech, self.history_embeds = [], [], [], []

    def requeue_history(self) -> None:
        """Preempted for recompute (blocks already given back): the cached tokens go back in front of
        the pending ones, to be computed again at the same positions."""
        self.pending_ids[:0] = self.history_ids
        self.pending_keys[:0] = self.history_keys
        self.pending_is_speech[:0] = self.history_is_speech
        self.pending_embeds[:0] = self.history_embeds
        self.num_recompute += len(self.history_ids)
        self.num_recomputed += len(self.history_ids)
        self.next_position -= self.num_cached
        self.num_cached = 0
        self.block_hashes, self.partial_keys = [], []
        self.history_ids, self.history_keys, self.history_is_speech, self.history_embeds = [], [], [], []

    def fork(self, seq_id: int) -> "Sequence":
        """A sequence with this one's dialogue (cache and pending work), sharing nothing mutable;
        the caller takes references on the blocks. Counters start at zero."""
        child = Sequence(seq_id)
        for name in ("block_table", "pending_ids", "pending_embeds", "pending_keys", "pending_is_speech",
                     "block_hashes", "partial_keys", "turn_starts", "history_ids", "history_keys",
                     "history_is_speech", "history_embeds"):
            setattr(child, name, list(getattr(self, name)))
        for name in ("num_cached", "next_position", "num_sink", "in_turn", "num_turns", "recomputable",
                     "num_recompute", "swapped_kv"):
            setattr(child, name, getattr(self, name))
        return child

    def take_pending_embeds(self, n: int) -> list[torch.Tensor]:
        """Remove and return the first n pending embedding rows (as a list of [k, hidden] pieces)."""
        taken = []
        while n > 0:
            head = self.pending_embeds[0]
            if head.shape[0] <= n:
                taken.append(self.pending_embeds.pop(0))
                n -= head.shape[0]
            else:
                taken.append(head[:n])
                self.pending_embeds[0] = head[n:]
                n = 0
        return taken


def token_keys(token_ids: list[int], placeholder_id: int | None, embeds: torch.Tensor | None) -> list[bytes]:
    """Prefix-cache key per token: its id, plus a digest of its embedding row at placeholders."""
    keys, row = [], 0
    for t in token_ids:
        key = t.to_bytes(4, "little", signed=True)
        if embeds is not None and t == placeholder_id:
            key += hashlib.blake2b(embeds[row].detach().cpu().float().numpy().tobytes(), digest_size=8).digest()
            row += 1
        keys.append(key)
    return keys
