"""Per-stream state: what is in the KV cache, what is waiting to be computed.

A sequence also keeps what its cached tokens were made of (its `history`, a token queue like the
pending one) so that a preempted sequence can give its blocks back and recompute them later: the
history goes back in front of the pending tokens. Speech rows cannot be rebuilt from ids, hence kept.
A cache rewritten by turn eviction cannot be recomputed (its kept K/V were computed with turns now
gone), so eviction drops the history (`history = None`) and such a sequence is preempted by swapping
its K/V out instead.
"""
import hashlib
from dataclasses import dataclass, field, fields, replace

import torch


@dataclass
class TokenQueue:
    """Tokens in order, with what each is made of: its id, its prefix-cache key, whether an embeds
    row fills it (a speech placeholder), and those rows (pieces of [k, hidden], in order). The lists
    change only here, together."""
    ids: list[int] = field(default_factory=list)
    keys: list[bytes] = field(default_factory=list)
    is_speech: list[bool] = field(default_factory=list)
    embeds: list[torch.Tensor] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def push(self, ids: list[int], keys: list[bytes], is_speech: list[bool], embeds: torch.Tensor | None = None):
        self.ids += ids
        self.keys += keys
        self.is_speech += is_speech
        if embeds is not None:
            self.embeds.append(embeds)

    def extend(self, other: "TokenQueue") -> None:
        self.push(other.ids, other.keys, other.is_speech)
        self.embeds += other.embeds

    def prepend(self, other: "TokenQueue") -> None:
        self.ids[:0], self.keys[:0] = other.ids, other.keys
        self.is_speech[:0], self.embeds[:0] = other.is_speech, other.embeds

    def take(self, n: int) -> "TokenQueue":
        """Remove the first n tokens and return them (with their embedding rows)."""
        rows = sum(self.is_speech[:n])
        taken = TokenQueue(self.ids[:n], self.keys[:n], self.is_speech[:n], self._take_rows(rows))
        del self.ids[:n], self.keys[:n], self.is_speech[:n]
        return taken

    def rows(self, n: int) -> list[torch.Tensor]:
        """The embedding rows of the first n tokens (pieces of [k, hidden]), left in the queue."""
        need, out = sum(self.is_speech[:n]), []
        for piece in self.embeds:
            if need <= 0:
                break
            out.append(piece[:need] if piece.shape[0] > need else piece)
            need -= piece.shape[0]
        return out

    def _take_rows(self, n: int) -> list[torch.Tensor]:
        taken = []
        while n > 0:
            head = self.embeds[0]
            if head.shape[0] <= n:
                taken.append(self.embeds.pop(0))
                n -= head.shape[0]
            else:
                taken.append(head[:n])
                self.embeds[0] = head[n:]
                n = 0
        return taken

    def copy(self) -> "TokenQueue":
        return TokenQueue(list(self.ids), list(self.keys), list(self.is_speech), list(self.embeds))


@dataclass
class SequenceCounters:
    """What happened to one stream (its stats); a fork starts its own at zero."""
    num_generated: int = 0
    num_evicted: int = 0
    num_preemptions: int = 0
    num_recomputed: int = 0             # cached tokens sent back to be computed again (prefix hits may spare some)
    turn_seconds: float = 0.0
    total_turn_seconds: float = 0.0


@dataclass
class Sequence:
    seq_id: int
    block_table: list[int] = field(default_factory=list)
    num_cached: int = 0                 # tokens whose K/V are in the cache
    next_position: int = 0              # rope position of the next token
    pending: TokenQueue = field(default_factory=TokenQueue)     # appended, not yet computed
    history: TokenQueue | None = field(default_factory=TokenQueue)  # what the cache was computed from;
                                        # None once eviction rewrote the cache (then it is swapped, not recomputed)
    block_hashes: list[bytes] = field(default_factory=list)      # hash of each full block, in order
    partial_keys: list[bytes] = field(default_factory=list)      # keys of the tokens in the partial last block
    num_sink: int = 0                   # leading cached tokens never evicted (the system prompt)
    turn_starts: list[int] = field(default_factory=list)        # logical index where each turn starts
    in_turn: bool = False               # tokens appended since the last generate
    num_turns: int = 0
    closed: bool = False
    num_recompute: int = 0              # leading pending tokens that were cached before a preemption
    swapped_kv: list | None = None      # per layer (k, v) [num_cached, Hkv, D] on the host while swapped out
    admitted: int = -1                  # scheduler stamp of the latest admission (newest is preempted first)
    last_step: int = -1                 # scheduler step that last computed this sequence
    counters: SequenceCounters = field(default_factory=SequenceCounters)

    @property
    def num_pending(self) -> int:
        return len(self.pending)

    @property
    def num_new(self) -> int:
        """Pending tokens never computed (not counting those to recompute)."""
        return len(self.pending) - self.num_recompute

    @property
    def recomputable(self) -> bool:
        return self.history is not None

    @property
    def resident(self) -> bool:
        """Holds blocks in the pool (a sequence with no cache yet, or preempted, holds none)."""
        return bool(self.block_table)

    def hash_chain_intact(self, block_size: int) -> bool:
        """Every full cached block has its prefix hash and the partial block's keys are known
        (false after an eviction or a swap rewrote the cache)."""
        return (len(self.block_hashes) == self.num_cached // block_size
                and len(self.partial_keys) == self.num_cached % block_size)

    def commit_front(self, n: int) -> None:
        """The first n pending tokens became cached (into the history while it is kept)."""
        taken = self.pending.take(n)
        if self.history is not None:
            self.history.extend(taken)
        self.num_recompute -= min(n, self.num_recompute)

    def drop_history(self) -> None:
        """The cache no longer equals a computation of the history (eviction rewrote it)."""
        self.history = None

    def requeue_history(self) -> None:
        """Preempted for recompute (blocks already given back): the cached tokens go back in front of
        the pending ones, to be computed again at the same positions."""
        self.pending.prepend(self.history)
        self.num_recompute += len(self.history)
        self.counters.num_recomputed += len(self.history)
        self.next_position -= self.num_cached
        self.num_cached = 0
        self.block_hashes, self.partial_keys = [], []
        self.history = TokenQueue()

    def fork(self, seq_id: int) -> "Sequence":
        """A sequence with this one's dialogue (cache and pending work), sharing nothing mutable (every
        list and queue is copied; tensors are never written in place); the caller takes references
        on the blocks. Scheduling stamps and counters start afresh."""
        child = replace(self, seq_id=seq_id, admitted=-1, last_step=-1, counters=SequenceCounters())
        for f in fields(child):
            value = getattr(child, f.name)
            if isinstance(value, (list, TokenQueue)):
                setattr(child, f.name, value.copy())
        return child


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
