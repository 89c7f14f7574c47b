"""Preemption when KV blocks run short: streams that together outgrow the pool (each alone fits) give
the same tokens and logprobs as with a pool that holds them all; a preempted stream computes its
cache again (speech rows included) or, once turn eviction rewrote it, has it swapped out and back."""
import pytest
import torch

from hpo_engine import Engine, OutOfBlocks, SamplingParams
from hpo_engine.train.rollout import group_rollouts
from tests.conftest import make_tiny_model

PH = 299
BS = 8


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("pre"), "qwen3", num_heads=6, num_kv_heads=2)


def dialogue_turns(seed, turns, hidden, lo=3, hi=30):
    """User turns of random ids with 3 speech placeholders each (filled by random rows)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(turns):
        ids = torch.randint(2, 290, (int(torch.randint(lo, hi, (1,), generator=g)),), generator=g).tolist()
        ids[1:1] = [PH] * 3
        out.append((ids, torch.randn(3, hidden, generator=g)))
    return out


def engine_of(folder, num_blocks, **kw):
    return Engine.from_pretrained(folder, block_size=BS, num_blocks=num_blocks, placeholder_token_id=PH, **kw)


def run_dialogues(folder, dialogues, params, num_blocks, sink=None, **kw):
    """All dialogues together through one engine; every block comes back after close."""
    engine = engine_of(folder, num_blocks, **kw)
    free0 = engine.pool.num_free
    streams = [engine.open_stream() for _ in dialogues]
    jobs = []
    for s, d, p in zip(streams, dialogues, params):
        if sink is not None:
            s.append(sink, sink=True)
        s.append(*d[0])
        jobs.append((s, d[1:], p))
    outs = engine.generate_dialogues(jobs)
    stats, per_stream = engine.stats(), [s.stats() for s in streams]
    for s in streams:
        s.close()
    assert engine.pool.num_free == free0 == num_blocks
    assert engine.pool.num_used == 0 and engine.pool.num_shared == 0 and not engine.streams
    return outs, stats, per_stream


def assert_same(outs, refs):
    for out, ref in zip(outs, refs):
        assert [t.token_ids for t in out.turns] == [t.token_ids for t in ref.turns]
        assert [t.finish_reason for t in out.turns] == [t.finish_reason for t in ref.turns]
        assert out.logprobs == pytest.approx(ref.logprobs, abs=1e-5)


def blocks_for(tokens):
    return -(-tokens // BS)


GREEDY = SamplingParams(max_new_tokens=8, stop_token_ids=[], banned_token_ids=[PH])
SAMPLED = SamplingParams(max_new_tokens=8, temperature=1.0, top_k=50, seed=5, stop_token_ids=[1],
                         banned_token_ids=[PH])


@pytest.mark.parametrize("budget", [2048, 13])
def test_streams_outgrowing_the_pool_match_a_big_pool(tiny, budget):
    """Five multi-turn speech dialogues (greedy and seeded sampling) in a pool about a third of what
    they need together: preemptions happen, outputs equal the big pool's, chunked recompute too."""
    folder, hf = tiny
    dialogues = [dialogue_turns(s, 4, hf.config.hidden_size) for s in range(5)]
    params = [GREEDY if i % 2 == 0 else SAMPLED for i in range(5)]
    need = [blocks_for(sum(len(ids) for ids, _ in d) + 4 * 8) for d in dialogues]
    small = max(need) + 1
    assert small * 2 < sum(need)
    refs, ref_stats, _ = run_dialogues(folder, dialogues, params, 512, max_num_batched_tokens=budget)
    assert ref_stats["preemptions"] == 0
    outs, stats, per_stream = run_dialogues(folder, dialogues, params, small, max_num_batched_tokens=budget)
    assert stats["preemptions"] > 0 and stats["swaps"] == 0
    assert sum(st["preemptions"] for st in per_stream) == stats["preemptions"]
    assert sum(st["recomputed_tokens"] for st in per_stream) == stats["recomputed_tokens"] > 0
    assert_same(outs, refs)



def test_forks_under_preemption(tiny):
    """A group rollout (forks sharing the first turn's blocks) in a pool too small for the group:
    victims give back only their own references; every sample equals the big pool's."""
    folder, hf = tiny
    turns = dialogue_turns(3, 4, hf.config.hidden_size)
    params = SamplingParams(max_new_tokens=8, temperature=1.0, top_k=50, seed=100, stop_token_ids=[],
                            banned_token_ids=[PH])
    one = blocks_for(sum(len(ids) for ids, _ in turns) + 4 * 8)
    results = {}
    for num_blocks in (512, one + 2):
        engine = engine_of(folder, num_blocks)
        results[num_blocks] = group_rollouts(engine, [(turns[0], turns[1:])], 4, params)
        assert engine.pool.num_used == 0 and engine.pool.num_free == num_blocks and engine.pool.num_shared == 0
        if num_blocks < 512:
            assert engine.stats()["preemptions"] > 0
            assert engine.pool.prefix_hits > 0          # a recomputed fork adopts the shared blocks again
    assert len({tuple(d.token_ids) for d in results[512]}) > 1
    assert_same(results[one + 2], results[512])


def test_idle_stream_with_speech_is_recomputed(tiny):
    """A stream between turns is preempted for another; its speech rows are kept and its cache is
    computed again, at the same positions, when its next turn comes."""
    folder, hf = tiny
    hidden = hf.config.hidden_size
    a_turns = dialogue_turns(11, 3, hidden, lo=3, hi=12)
    b_turn = dialogue_turns(12, 1, hidden, lo=40, hi=41)[0]
    a_first, a_all = len(a_turns[0][0]) + 8, sum(len(ids) for ids, _ in a_turns) + 3 * 8
    small = max(blocks_for(a_all), blocks_for(len(b_turn[0]) + 8))
    assert blocks_for(a_first) + blocks_for(len(b_turn[0]) + 8) > small
    results = []
    for num_blocks in (512, small):
        engine = engine_of(folder, num_blocks)
        a, b = engine.open_stream(), engine.open_stream()
        outs = []
        for k, turn in enumerate(a_turns):
            a.append(*turn)
            outs.append(a.generate(GREEDY))
            if k == 0:
                cached, position = a.num_cached_tokens, a.next_position
                b.append(*b_turn)
                outs.append(b.generate(GREEDY))
                if num_blocks == small:
                    assert a.num_blocks == 0 and a.stats()["preemptions"] == 1
                    assert sum(a.seq.pending.is_speech) == 3 and a.seq.num_recompute == cached
                assert (a.num_cached_tokens, a.next_position) == (cached, position)
        if num_blocks == small:
            assert a.stats()["recomputed_tokens"] >= cached and engine.stats()["swaps"] == 0
        results.append(outs)
        a.close(), b.close()
        assert engine.pool.num_free == num_blocks
    for out, ref in zip(results[1], results[0]):
        assert out.token_ids == ref.token_ids
        assert out.logprobs == pytest.approx(ref.logprobs, abs=1e-5)


@pytest.mark.parametrize("budget", [2048, 13])
def test_windowed_streams_under_preemption(tiny, budget):
    """Windowed streams (sink + turn eviction): one preempted before it ever evicted is recomputed,
    one whose cache eviction rewrote is swapped out and back (its kept K/V, rotated to their current
    positions, saw turns that are gone: no recompute gives them). Outputs equal the big pool's."""
    folder, hf = tiny
    sink = list(range(2, 14))
    dialogues = [dialogue_turns(40 + s, 6, hf.config.hidden_size) for s in range(3)]
    params = [GREEDY, SAMPLED, GREEDY]
    window = 90
    refs, _, ref_streams = run_dialogues(folder, dialogues, params, 512, sink=sink, max_cache_tokens=window,
                                         max_num_batched_tokens=budget)
    assert all(st["evicted_tokens"] > 0 for st in ref_streams)
    outs, stats, per_stream = run_dialogues(folder, dialogues, params, blocks_for(window) + 3, sink=sink,
                                            max_cache_tokens=window, max_num_batched_tokens=budget)
    assert stats["swaps"] > 0 and stats["preemptions"] > stats["swaps"]
    assert [st["evicted_tokens"] for st in per_stream] == [st["evicted_tokens"] for st in ref_streams]
    assert_same(outs, refs)



def test_oldest_running_stream_is_never_preempted(tiny):
    """Victims: idle streams first, then the most recently admitted running stream (or the stream
    itself when it is the newest); the first admitted one runs undisturbed."""
    folder, hf = tiny
    hidden = hf.config.hidden_size
    engine = engine_of(folder, 10)
    idle, a, b, c = (engine.open_stream() for _ in range(4))
    idle.append(*dialogue_turns(1, 1, hidden)[0])
    idle.generate(GREEDY)
    long = SamplingParams(max_new_tokens=30, stop_token_ids=[], banned_token_ids=[PH])
    jobs = []
    for s, seed in ((a, 2), (b, 3), (c, 4)):
        s.append(*dialogue_turns(seed, 1, hidden, lo=10, hi=11)[0])
        jobs.append(engine.submit(s, long))
    first_victims = []
    while engine.running:
        before = {s: s.stats()["preemptions"] for s in (idle, a, b, c)}
        engine.step()
        first_victims += [s for s in (idle, a, b, c) if s.stats()["preemptions"] > before[s]]
        assert a.stats()["preemptions"] == 0 or not any(job.stream is a for job in engine.running)
    assert first_victims[0] is idle and first_victims[1] is c
    assert all(len(job.output.turns[0].token_ids) == 30 for job in jobs)
    for s in (idle, a, b, c):
        s.close()
    assert engine.pool.num_free == 10


def test_fork_of_a_preempted_stream(tiny):
    """Forking a stream whose cache is out (preempted) gives a child that recomputes it too."""
    folder, hf = tiny
    hidden = hf.config.hidden_size
    t0, t1 = dialogue_turns(21, 2, hidden)
    ref_engine = engine_of(folder, 512)
    r = ref_engine.open_stream()
    r.append(*t0)
    r.generate(GREEDY)
    r.append(*t1)
    want = r.generate(GREEDY)
    engine = engine_of(folder, 8)
    s, other = engine.open_stream(), engine.open_stream()
    s.append(*t0)
    s.generate(GREEDY)
    other.append(list(range(2, 40)))
    other.generate(GREEDY)
    assert s.num_blocks == 0
    other.close()
    child = s.fork()
    s.append(*t1)
    child.append(*t1)
    outs = engine.generate_many([(s, GREEDY), (child, GREEDY)])
    for out in outs:
        assert out.token_ids == want.token_ids
        assert out.logprobs == pytest.approx(want.logprobs, abs=1e-5)
    s.close(), child.close()
    assert engine.pool.num_free == 8


def test_one_stream_larger_than_the_pool_raises(tiny):
    """A stream that outgrows the pool while decoding (nobody left to preempt) gets OutOfBlocks naming
    the sizes; its blocks come back on close and the engine goes on."""
    folder, _ = tiny
    engine = engine_of(folder, 2)
    s = engine.open_stream()
    s.append(list(range(2, 12)))
    with pytest.raises(OutOfBlocks, match=r"alone needs 3 blocks of 8 tokens for 17 tokens, but the pool has 2 blocks") as err:
        s.generate(SamplingParams(max_new_tokens=20, stop_token_ids=[]))
    assert err.value.seq_id == s.seq.seq_id
    s.close()
    assert engine.pool.num_free == 2
    t = engine.open_stream()
    t.append(list(range(2, 12)))
    assert len(t.generate(SamplingParams(max_new_tokens=4, stop_token_ids=[])).token_ids) == 4
    big = engine.open_stream()
    big.append(list(range(2, 30)))
    with pytest.raises(OutOfBlocks, match=r"alone needs 4 blocks of 8 tokens for 28 tokens"):
        big.generate(GREEDY)
    assert t.num_blocks == 2 and t.stats()["preemptions"] == 0     # nobody's blocks taken for it
    t.close(), big.close()
    assert engine.pool.num_free == 2


@pytest.mark.parametrize("seed", range(8))
def test_random_mixes_match_a_big_pool(tiny, seed):
    """Random streams (turn counts, answer lengths, sampling, a window or none, a token budget) in a
    pool just above what the largest needs alone."""
    folder, hf = tiny
    g = torch.Generator().manual_seed(seed)
    rand = lambda lo, hi: int(torch.randint(lo, hi, (1,), generator=g))    # noqa: E731
    n_streams, window, budget = rand(3, 7), [None, 70][seed % 2], [2048, 11, 32][seed % 3]
    dialogues = [dialogue_turns(100 * seed + i, rand(1, 5), hf.config.hidden_size) for i in range(n_streams)]
    params = [SamplingParams(max_new_tokens=rand(1, 12), temperature=[0.0, 1.0][i % 2], top_k=40, seed=seed + i,
                             stop_token_ids=[1, 2], banned_token_ids=[PH]) for i in range(n_streams)]
    if window is None:
        alone = max(blocks_for(sum(len(ids) for ids, _ in d) + len(d) * p.max_new_tokens)
                    for d, p in zip(dialogues, params))
    else:
        alone = blocks_for(window + 33 + 12)
    refs, _, _ = run_dialogues(folder, dialogues, params, 512, max_cache_tokens=window, max_num_batched_tokens=budget)
    outs, stats, _ = run_dialogues(folder, dialogues, params, alone + rand(0, 3), max_cache_tokens=window,
                                   max_num_batched_tokens=budget)
    assert stats["preemptions"] > 0
    assert_same(outs, refs)
