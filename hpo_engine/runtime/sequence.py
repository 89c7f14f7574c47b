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
    block_hashes: list[bytes] = field(default_factory=list)      # hash of each full block, in order
    partial_keys: list[bytes] = field(default_factory=list)      # keys of the tokens in the partial last block
    closed: bool = False
    # counters
    num_turns: int = 0
    num_generated: int = 0

    @property
    def num_pending(self) -> int:
        return len(self.pending_ids)


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
