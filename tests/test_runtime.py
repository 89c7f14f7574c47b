"""Continuous batching, batch invariance, chunked prefill and unbounded streams."""
import pytest
import torch

from hpo_engine import Engine, SamplingParams
from hpo_engine.models.decoder import PagedBatch
from hpo_engine.train.rollout import group_rollouts
from tests.conftest import make_tiny_model

PH = 299


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("rt"), "qwen3", num_heads=6, num_kv_heads=2)


def dialogue_turns(seed, turns, hidden):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(turns):
        ids = torch.randint(2, 290, (int(torch.randint(3, 30, (1,), generator=g)),), generator=g).tolist()
        ids[1:1] = [PH] * 3
        out.append((ids, torch.randn(3, hidden, generator=g)))
    return out


def run_alone(folder, turns, params, **kw):
    engine = Engine.from_pretrained(folder, num_blocks=128, placeholder_token_id=PH, **kw)
    s = engine.open_stream()
    outs = []
    for ids, emb in turns:
        s.append(ids, emb)
        outs.append(s.generate(params))
    return outs


@pytest.mark.parametrize("budget", [2048, 7])
def test_batch_invariance_and_chunked_prefill(tiny, budget):
    """A stream's tokens and logprobs do not depend on its batch companions or on chunking."""
    folder, hf = tiny
    hidden = hf.config.hidden_size
    greedy = SamplingParams(max_new_tokens=6, stop_token_ids=[])
    sampled = SamplingParams(max_new_tokens=6, temperature=1.0, top_k=40, seed=11, stop_token_ids=[1])
    dialogues = [dialogue_turns(s, 4, hidden) for s in range(5)]
    alone = [run_alone(folder, d, greedy if i % 2 == 0 else sampled) for i, d in enumerate(dialogues)]
    engine = Engine.from_pretrained(folder, num_blocks=256, placeholder_token_id=PH,
                                    max_num_batched_tokens=budget)
    streams = [engine.open_stream() for _ in dialogues]
    for turn in range(4):
        # streams join at different turns: stream i starts at turn i % 2
        live = [i for i in range(len(streams)) if turn >= i % 2]
        for i in live:
            streams[i].append(*dialogues[i][turn - i % 2])
        outs = engine.generate_many([(streams[i], greedy if i % 2 == 0 else sampled) for i in live])
        for i, out in zip(live, outs):
            ref = alone[i][turn - i % 2]
            assert out.token_ids == ref.token_ids
            assert out.logprobs == pytest.approx(ref.logprobs, abs=1e-5)


@pytest.mark.slow
def test_ten_thousand_turns_stay_bounded(tiny):
    folder, hf = tiny
    engine = Engine.from_pretrained(folder, num_blocks=64, placeholder_token_id=PH, max_cache_tokens=200)
    s = engine.open_stream()
    s.append([5, 6, 7, 8, 9], sink=True)
    params = SamplingParams(max_new_tokens=1, stop_token_ids=[], banned_token_ids=[PH])
    emb = torch.randn(3, hf.config.hidden_size)
    max_blocks = max_pos = 0
    for turn in range(10_000):
        s.append([11, PH, PH, PH, 12], emb)
        s.generate(params)
        max_blocks = max(max_blocks, engine.pool.num_used)
        max_pos = max(max_pos, s.next_position)
    assert s.stats()["evicted_tokens"] > 50_000
    assert max_pos <= 200 and s.num_cached_tokens <= 200
    assert max_blocks <= -(-200 // 16) + 1
    s.close()
    assert engine.pool.num_used == 0


def first_step_logits(engine, stream, ids, emb):
    stream.append(ids, emb)
    return engine.runner.run(engine.scheduler.schedule([stream.seq]))[0]


def test_eviction_matches_attending_to_the_kept_tokens(tiny):
    """Empty sink. The windowed stream evicts for the first time at the last turn; its logits then
    equal those of an unbounded engine's query attending to exactly the kept cached tokens at their
    original positions (same relative positions, no rotation, no move)."""
    from hpo_engine.cache.block_manager import slot_mapping
    from hpo_engine.kernels import store_kv
    from hpo_engine.runtime.sequence import Sequence
    folder, hf = tiny
    turns = dialogue_turns(7, 8, hf.config.hidden_size)
    params = SamplingParams(max_new_tokens=4, stop_token_ids=[], banned_token_ids=[PH])
    full = Engine.from_pretrained(folder, num_blocks=64, placeholder_token_id=PH)
    a = full.open_stream()
    for ids, emb in turns[:-1]:
        a.append(ids, emb)
        a.generate(params)
    n = a.num_cached_tokens + 1                     # + the pending last token
    window = n + len(turns[-1][0]) - 1               # the last turn overflows it by one token
    windowed = Engine.from_pretrained(folder, num_blocks=64, placeholder_token_id=PH, max_cache_tokens=window)
    b = windowed.open_stream()
    for ids, emb in turns[:-1]:
        b.append(ids, emb)
        b.generate(params)
    assert b.stats()["evicted_tokens"] == 0
    got = first_step_logits(windowed, b, *turns[-1])
    cut = b.stats()["evicted_tokens"]
    assert cut > 0 and cut in a.seq.turn_starts

    # reference: a fresh sequence in the unbounded engine holding a copy of a's K/V for [cut, n)
    bs = full.pool.block_size
    a.append(*turns[-1])
    assert full.blocks.reserve(a.seq, a.seq.num_pending)
    ref_seq = Sequence(seq_id=999)
    ref_seq.block_table = full.pool.allocate_many(-(-(n - cut) // bs))
    src = slot_mapping(a.seq.block_table, bs, cut, n - 1)
    dst = slot_mapping(ref_seq.block_table, bs, 0, n - 1 - cut)
    for k_cache, v_cache in full.kv.layers:
        store_kv(k_cache.view(-1, *k_cache.shape[2:])[src], v_cache.view(-1, *v_cache.shape[2:])[src],
                 k_cache, v_cache, dst)
    ref_seq.num_cached, ref_seq.next_position = n - 1 - cut, n - 1
    ref_seq.pending = a.seq.pending.copy()
    assert full.blocks.reserve(ref_seq, ref_seq.num_pending)
    want = full.runner.run([(ref_seq, ref_seq.num_pending)])[0]
    unwindowed = full.runner.run([(a.seq, a.seq.num_pending)])[0]
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(unwindowed, want, atol=1e-3)     # the evicted tokens did matter


def test_group_rollout_is_asynchronous_and_matches_single_dialogues(tiny):
    """G forks share the first turn's blocks; each sample's multi-turn output equals the same
    dialogue run alone with the same seed; tokens carry their turn index."""
    folder, hf = tiny
    turns = dialogue_turns(3, 5, hf.config.hidden_size)
    params = SamplingParams(max_new_tokens=5, temperature=1.0, top_k=50, seed=100, stop_token_ids=[1])
    engine = Engine.from_pretrained(folder, num_blocks=128, placeholder_token_id=PH)
    group = group_rollouts(engine, [(turns[0], turns[1:])], 4, params)
    assert engine.pool.num_used == 0 and not engine.streams
    assert len({tuple(d.token_ids) for d in group}) > 1          # different seeds, different samples
    for g, dialogue in enumerate(group):
        assert len(dialogue.turns) == 5
        alone = run_alone(folder, turns, SamplingParams(**{**params.__dict__, "seed": 100 + g}))
        # one generator across turns in the group vs one per generate() call alone: compare turn 0
        assert dialogue.turns[0].token_ids == alone[0].token_ids
        assert dialogue.turns[0].logprobs == pytest.approx(alone[0].logprobs, abs=1e-5)
        assert dialogue.token_turns == [k for k, t in enumerate(dialogue.turns) for _ in t.token_ids]


def test_greedy_group_rollout_equals_sequential_dialogue(tiny):
    folder, hf = tiny
    turns = dialogue_turns(4, 4, hf.config.hidden_size)
    greedy = SamplingParams(max_new_tokens=4, stop_token_ids=[1])
    engine = Engine.from_pretrained(folder, num_blocks=128, placeholder_token_id=PH)
    group = group_rollouts(engine, [(turns[0], turns[1:])], 3, greedy)
    alone = run_alone(folder, turns, greedy)
    for dialogue in group:
        assert [t.token_ids for t in dialogue.turns] == [o.token_ids for o in alone]
        assert dialogue.logprobs == pytest.approx([lp for o in alone for lp in o.logprobs], abs=1e-5)


def test_stream_counters(tiny):
    folder, hf = tiny
    engine = Engine.from_pretrained(folder, num_blocks=64, placeholder_token_id=PH)
    s = engine.open_stream()
    for ids, emb in dialogue_turns(5, 3, hf.config.hidden_size):
        s.append(ids, emb)
        s.generate(SamplingParams(max_new_tokens=3, stop_token_ids=[]))
    st = s.stats()
    assert st["turns"] == 3 and st["generated_tokens"] == 9
    assert st["cached_tokens"] == s.num_cached_tokens and st["blocks"] == len(s.seq.block_table)
    assert st["mean_turn_s"] > 0


def test_streams_join_and_leave_at_any_step(tiny):
    """A stream submitted while another is mid-turn joins the running batch at the next step; both
    give what they give alone; a stream closed mid-turn leaves without a trace."""
    folder, hf = tiny
    hidden = hf.config.hidden_size
    greedy = SamplingParams(max_new_tokens=8, stop_token_ids=[])
    d0, d1, d2 = (dialogue_turns(s, 2, hidden) for s in (20, 21, 22))
    alone0, alone1 = run_alone(folder, d0, greedy), run_alone(folder, d1, greedy)
    engine = Engine.from_pretrained(folder, num_blocks=128, placeholder_token_id=PH)
    a, b, c = engine.open_stream(), engine.open_stream(), engine.open_stream()
    a.append(*d0[0])
    job_a = engine.submit(a, greedy, [d0[1]])
    for _ in range(3):
        engine.step()
    b.append(*d1[0])
    job_b = engine.submit(b, greedy, [d1[1]])
    c.append(*d2[0])
    engine.submit(c, greedy)
    engine.step()
    assert len(engine.running) == 3
    c.close()                                   # leaves mid-turn
    assert len(engine.running) == 2
    while engine.running:
        engine.step()
    assert [t.token_ids for t in job_a.output.turns] == [o.token_ids for o in alone0]
    assert [t.token_ids for t in job_b.output.turns] == [o.token_ids for o in alone1]
    engine.submit(a, greedy)
    with pytest.raises(ValueError, match="already being answered"):
        engine.submit(a, greedy)
    a.close()
    assert not engine.running


def test_eviction_leaves_no_false_prefix_hash(tiny):
    """After an eviction that keeps less than a block, the partial block's keys are gone: the block
    must not be registered under a hash of the tokens that follow (another stream would adopt K/V
    that are not its own)."""
    folder, _ = tiny
    one = SamplingParams(max_new_tokens=1, stop_token_ids=[])
    engine = Engine.from_pretrained(folder, block_size=16, num_blocks=64, max_cache_tokens=30)
    a = engine.open_stream()
    a.append(list(range(10, 30)))
    a.generate(one)
    a.append(list(range(40, 45)))
    g2 = a.generate(one).token_ids
    turn3 = list(range(50, 70))
    a.append(turn3)
    a.generate(one)
    assert a.stats()["evicted_tokens"] == 21 and a.num_cached_tokens < 16 + 21
    prompt = g2 + turn3[:15] + [3, 4, 5, 6, 7]        # the tokens after the kept ones, as a new dialogue
    params = SamplingParams(max_new_tokens=4, stop_token_ids=[])
    b = engine.open_stream()
    b.append(prompt)
    out = b.generate(params)
    fresh = Engine.from_pretrained(folder, block_size=16, num_blocks=64).open_stream()
    fresh.append(prompt)
    ref = fresh.generate(params)
    assert engine.pool.prefix_hits == 0
    assert out.token_ids == ref.token_ids and out.logprobs == pytest.approx(ref.logprobs, abs=1e-5)
