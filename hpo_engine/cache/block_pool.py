"""Block pool of the paged KV cache: reference-counted fixed-size blocks and a prefix cache.

The pool only does bookkeeping (ids and counts); the tensors live in `KVCache`. Every operation is
O(1): the free list is an insertion-ordered dict, so a freed block that still holds a cached prefix
can be taken back out of the middle of the list on a prefix hit, and the least recently freed block
is reused first. Running out of blocks is an answer (`None`), never an exception: the caller decides.
"""
import hashlib
from collections import OrderedDict


def chain_hash(parent: bytes | None, token_keys: list[bytes]) -> bytes:
    """Hash of a full block given its parent's hash: equal hashes mean equal prefixes.

    A token's key is its id, plus a digest of its embedding row at placeholder positions (two
    placeholders carrying different speech are different content).
    """
    h = hashlib.blake2b(parent or b"", digest_size=16)
    for key in token_keys:
        h.update(key)
    return h.digest()


class BlockPool:
    def __init__(self, num_blocks: int, block_size: int):
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"need num_blocks >= 1 and block_size >= 1, got {num_blocks}, {block_size}")
        self.num_blocks, self.block_size = num_blocks, block_size
        self.ref_count = [0] * num_blocks
        self.free_blocks: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self.hash_to_block: dict[bytes, int] = {}
        self.block_hash: dict[int, bytes] = {}
        self.num_shared = 0           # blocks with ref_count > 1
        self.prefix_hits = 0

    # -- counters ---------------------------------------------------------------------------------
    @property
    def num_free(self) -> int:
        return len(self.free_blocks)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self.free_blocks)

    # -- allocation -------------------------------------------------------------------------------
    def allocate(self) -> int | None:
        """A fresh block with ref_count 1, or None when the pool is exhausted."""
        if not self.free_blocks:
            return None
        block, _ = self.free_blocks.popitem(last=False)
        self.forget(block)                         # its cached content is about to be overwritten
        self.ref_count[block] = 1
        return block

    def allocate_many(self, n: int) -> list[int] | None:
        """n blocks, or None (and nothing taken) when fewer than n are free."""
        if n > len(self.free_blocks):
            return None
        return [self.allocate() for _ in range(n)]

    def incref(self, block: int) -> None:
        if self.ref_count[block] == 0:
            del self.free_blocks[block]
        elif self.ref_count[block] == 1:
            self.num_shared += 1
        self.ref_count[block] += 1

    def free(self, block: int) -> None:
        count = self.ref_count[block]
        if count <= 0:
            raise RuntimeError(f"block {block} freed more often than allocated")
        if count == 2:
            self.num_shared -= 1
        self.ref_count[block] = count - 1
        if count == 1:
            self.free_blocks[block] = None        # keeps its hash: a later prefix hit may revive it

    def free_all(self, blocks) -> None:
        for block in reversed(blocks):            # tail blocks first, so prefix heads survive longest
            self.free(block)

    # -- prefix cache -------------------------------------------------------------------------------
    def lookup(self, block_hash: bytes) -> int | None:
        """The block holding this content, with a reference taken for the caller; else None."""
        block = self.hash_to_block.get(block_hash)
        if block is None:
            return None
        self.incref(block)
        self.prefix_hits += 1
        return block

    def register(self, block: int, block_hash: bytes) -> None:
        """Record that `block` (full) holds the content `block_hash`; the first holder wins."""
        if block_hash in self.hash_to_block or block in self.block_hash:
            return
        self.hash_to_block[block_hash] = block
        self.block_hash[block] = block_hash

    def forget(self, block: int) -> None:
        """The block's content is about to change: it no longer serves prefix hits."""
        old = self.block_hash.pop(block, None)
        if old is not None:
            del self.hash_to_block[old]

    def reset_prefix_cache(self) -> None:
        """Forget every cached prefix (needed after a weight update: old KV no longer matches)."""
        self.hash_to_block.clear()
        self.block_hash.clear()

    def is_writable(self, block: int) -> bool:
        """A block may be written in place only by its sole owner (else copy on write)."""
        return self.ref_count[block] == 1
