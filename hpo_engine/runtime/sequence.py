"""Per-stream state: what is in the KV cache, what is waiting to be computed."""
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
    # counters
    num_turns: int = 0
    num_generated: int = 0
    num_evicted: int = 0
    turn_seconds: float = 0.0
    total_turn_seconds: float = 0.0

    @property
    def num_pending(self) -> int:
        return len(self.pending_ids)

    def hash_chain_intact(self, block_size: int) -> bool:
        """Every full cached block has its prefix hash and the partial block's keys are known
        (false after an eviction rewrote the cache)."""
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
