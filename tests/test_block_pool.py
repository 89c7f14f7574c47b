"""BlockPool bookkeeping: counts, sharing, prefix hits, reset, exhaustion."""
import random

import pytest

from hpo_engine.cache.block_pool import BlockPool, chain_hash


def test_allocate_free_counts_and_exhaustion():
    pool = BlockPool(5, 16)
    blocks = pool.allocate_many(5)
    assert sorted(blocks) == list(range(5)) and pool.num_free == 0 and pool.num_used == 5
    assert pool.allocate() is None and pool.allocate_many(1) is None    # an answer, not a crash
    pool.free(blocks[2])
    assert pool.num_free == 1 and pool.allocate() == blocks[2]
    pool.free_all(blocks)
    assert pool.num_free == 5
    with pytest.raises(RuntimeError, match="freed more often"):
        pool.free(blocks[0])
    assert pool.allocate_many(6) is None and pool.num_free == 5         # nothing taken


def test_sharing_counts_and_writability():
    pool = BlockPool(4, 16)
    a = pool.allocate()
    assert pool.is_writable(a)
    pool.incref(a)
    pool.incref(a)
    assert pool.num_shared == 1 and not pool.is_writable(a)
    pool.free(a)
    assert pool.num_shared == 1
    pool.free(a)
    assert pool.num_shared == 0 and pool.is_writable(a) and pool.num_used == 1
    pool.free(a)
    assert pool.num_used == 0


def test_prefix_hits_revive_freed_blocks_until_reused_or_reset():
    pool = BlockPool(3, 4)
    h1 = chain_hash(None, [b"1", b"2", b"3", b"4"])
    h2 = chain_hash(h1, [b"5", b"6", b"7", b"8"])
    assert h2 != chain_hash(None, [b"5", b"6", b"7", b"8"])    # the chain matters
    a, b = pool.allocate(), pool.allocate()
    pool.register(a, h1)
    pool.register(b, h2)
    assert pool.lookup(h1) == a and pool.num_shared == 1
    pool.free_all([a, b])
    pool.free(a)
    assert pool.num_used == 0
    assert pool.lookup(h2) == b and pool.num_used == 1           # revived from the free list
    pool.free(b)
    # allocation takes the least recently freed first and drops its content
    taken = pool.allocate_many(3)
    assert pool.lookup(h1) is None and pool.lookup(h2) is None
    pool.free_all(taken)
    c = pool.allocate()
    pool.register(c, h1)
    pool.reset_prefix_cache()
    assert pool.lookup(h1) is None
    assert pool.prefix_hits == 2


def test_random_operations_keep_invariants():
    rng = random.Random(0)
    pool = BlockPool(20, 16)
    held: list[int] = []
    for _ in range(5000):
        op = rng.random()
        if op < 0.4:
            b = pool.allocate()
            if b is None:
                assert pool.num_free == 0
            else:
                held.append(b)
        elif op < 0.6 and held:
            b = rng.choice(held)
            pool.incref(b)
            held.append(b)
        elif held:
            pool.free(held.pop(rng.randrange(len(held))))
        assert pool.num_used == len(set(held))
        assert pool.num_shared == sum(1 for b in set(held) if held.count(b) > 1)
        assert all(pool.ref_count[b] == held.count(b) for b in set(held))
