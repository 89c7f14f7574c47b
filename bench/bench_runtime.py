"""Dialogue-turn runtime on CPU (fp32, 2 threads): hpo-engine vs transformers on the same work.

Run: .venv/bin/python -m pytest bench/bench_runtime.py --benchmark-only --benchmark-columns=median,rounds
A turn = a user turn of 14 speech positions + the ChatML template (here random token ids: the cost
is that of placeholders), then exactly N generated tokens (stop ids off, so both sides do equal work).
"""
import json
import time

import pytest
import torch

from hpo_engine import Engine, SamplingParams
from hpo_engine.train.rollout import group_rollouts

TURN_USER = 14 + 9          # 14 placeholders + "<|im_end|>\n<|im_start|>user\n ... assistant\n"
GEN = 40


def rand_ids(n, g=None):
    return torch.randint(100, 49000, (n,), generator=g).tolist()


@pytest.fixture(scope="module")
def engine(smollm2_path):
    return Engine.from_pretrained(smollm2_path, cache_memory=3 << 30)


@pytest.fixture(scope="module")
def hf(smollm2_path):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32).eval()


# -- KV reuse: one turn on top of a retained dialogue ---------------------------------------------
@pytest.mark.parametrize("retained", [1000, 4000, 8000])
@pytest.mark.benchmark(group="turn-on-retained-dialogue")
def test_turn_hpo_engine(benchmark, engine, retained):
    def setup():
        s = engine.open_stream()
        s.append(rand_ids(retained))
        s.generate(SamplingParams(max_new_tokens=1))
        s.append(rand_ids(TURN_USER))
        return (s,), {}

    def turn(s):
        assert len(s.generate(SamplingParams(max_new_tokens=GEN, stop_token_ids=[])).token_ids) == GEN
        s.close()
    benchmark.pedantic(turn, setup=setup, rounds=3, warmup_rounds=0)


@pytest.mark.parametrize("retained", [1000, 4000, 8000])
@pytest.mark.benchmark(group="turn-on-retained-dialogue")
def test_turn_transformers_dynamic_cache(benchmark, hf, retained):
    from transformers import DynamicCache

    def setup():
        ids = torch.tensor([rand_ids(retained + 1 + TURN_USER)])
        cache = DynamicCache(config=hf.config)
        with torch.inference_mode():
            hf(ids[:, :retained + 1], past_key_values=cache)
        return (ids, cache), {}

    def turn(ids, cache):
        with torch.inference_mode():
            hf.generate(ids, past_key_values=cache, max_new_tokens=GEN, min_new_tokens=GEN, do_sample=False)
    benchmark.pedantic(turn, setup=setup, rounds=3, warmup_rounds=0)


@pytest.mark.parametrize("retained", [1000, 4000, 8000])
@pytest.mark.benchmark(group="turn-on-retained-dialogue")
def test_turn_transformers_recompute(benchmark, hf, retained):
    def setup():
        return (torch.tensor([rand_ids(retained + 1 + TURN_USER)]),), {}

    def turn(ids):
        with torch.inference_mode():
            hf.generate(ids, max_new_tokens=GEN, min_new_tokens=GEN, do_sample=False)
    benchmark.pedantic(turn, setup=setup, rounds=2 if retained > 1000 else 3, warmup_rounds=0)


# -- 16 concurrent streams vs the same 16 one after another ---------------------------------------
STREAMS, TURNS, PROMPT = 16, 3, 120


def dialogues(seed):
    g = torch.Generator().manual_seed(seed)
    return [[rand_ids(PROMPT, g)] + [rand_ids(TURN_USER, g) for _ in range(TURNS - 1)] for _ in range(STREAMS)]


@pytest.mark.benchmark(group="16-streams")
def test_16_streams_concurrent(benchmark, engine):
    params = SamplingParams(max_new_tokens=GEN, stop_token_ids=[])

    def run(ds):
        streams = [engine.open_stream() for _ in ds]
        for turn in range(TURNS):
            for s, d in zip(streams, ds):
                s.append(d[turn])
            engine.generate_many([(s, params) for s in streams])
        for s in streams:
            s.close()
    benchmark.pedantic(run, setup=lambda: ((dialogues(1),), {}), rounds=2, warmup_rounds=0)
    benchmark.extra_info["generated_tokens"] = STREAMS * TURNS * GEN


@pytest.mark.benchmark(group="16-streams")
def test_16_streams_one_after_another(benchmark, engine):
    params = SamplingParams(max_new_tokens=GEN, stop_token_ids=[])

    def run(ds):
        for d in ds:
            s = engine.open_stream()
            for turn in range(TURNS):
                s.append(d[turn])
                s.generate(params)
            s.close()
    benchmark.pedantic(run, setup=lambda: ((dialogues(2),), {}), rounds=1, warmup_rounds=0)
    benchmark.extra_info["generated_tokens"] = STREAMS * TURNS * GEN


# -- unbounded stream: per-turn time and blocks over an hour of audio (small random model) ----------
def test_unbounded_stream_hour(tmp_path, benchmark):
    """3,215 turns of 1.12 s (one hour): turn time and resident blocks at 1, 10 and 60 minutes."""
    import transformers
    cfg = transformers.LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                                   num_hidden_layers=4, num_attention_heads=9, num_key_value_heads=3,
                                   max_position_embeddings=8192, tie_word_embeddings=True)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(tmp_path / "m")
    engine = Engine.from_pretrained(tmp_path / "m", max_cache_tokens=1000)
    params = SamplingParams(max_new_tokens=8, stop_token_ids=[])
    marks = {54: "1 min", 536: "10 min", 3215: "60 min"}
    figures = {}

    def hour():
        s = engine.open_stream()
        s.append(rand_ids(40), sink=True)
        times = []
        for turn in range(1, 3216):
            s.append(rand_ids(TURN_USER))
            t0 = time.perf_counter()
            s.generate(params)
            times.append(time.perf_counter() - t0)
            if turn in marks:
                window = times[-20:]
                figures[marks[turn]] = {"turn_ms_median_last20": 1000 * sorted(window)[len(window) // 2],
                                        "blocks": len(s.seq.block_table), "cached": s.num_cached_tokens,
                                        "position": s.next_position}
        s.close()
    benchmark.pedantic(hour, rounds=1, warmup_rounds=0)
    benchmark.extra_info.update(figures)
    print(json.dumps(figures, indent=1))


# -- group rollouts: G samples x T turns, each turn's speech fixed, answers sampled ---------------
# One window per round; the goal's "2 windows" are two independent such dialogues, twice both sides.
G = 8
ROLLOUT_SIZES = {"12turns-20tok": (12, 20), "30turns-40tok": (30, 40)}    # (turns, tokens per turn)


def rollout_window(seed, turns):
    g = torch.Generator().manual_seed(seed)
    return [rand_ids(60, g)] + [rand_ids(TURN_USER, g) for _ in range(turns - 1)]


@pytest.mark.parametrize("size", ROLLOUT_SIZES)
@pytest.mark.benchmark(group="rollouts")
def test_rollouts_hpo_engine(benchmark, engine, size):
    turns, gen = ROLLOUT_SIZES[size]
    params = SamplingParams(max_new_tokens=gen, temperature=1.0, top_p=0.999, top_k=10000, seed=0,
                            stop_token_ids=[])

    def run(window):
        outs = group_rollouts(engine, [((window[0], None), [(t, None) for t in window[1:]])], G, params)
        assert sum(len(o.token_ids) for o in outs) == G * turns * gen
    benchmark.pedantic(run, setup=lambda: ((rollout_window(3, turns),), {}), rounds=2, warmup_rounds=0)
    benchmark.extra_info["generated_tokens"] = G * turns * gen


@pytest.mark.parametrize("size", ROLLOUT_SIZES)
@pytest.mark.benchmark(group="rollouts")
def test_rollouts_transformers_resubmit(benchmark, hf, size):
    """HPO's pattern without a serving engine: every turn, the G dialogues so far, left-padded into
    one batch, are resubmitted whole to `generate`."""
    turns, gen = ROLLOUT_SIZES[size]

    def run(window):
        dialogues = [[] for _ in range(G)]
        for turn in window:
            for d in dialogues:
                d += turn
            width = max(len(d) for d in dialogues)
            ids = torch.tensor([[0] * (width - len(d)) + d for d in dialogues])
            mask = torch.tensor([[0] * (width - len(d)) + [1] * len(d) for d in dialogues])
            with torch.inference_mode():
                out = hf.generate(ids, attention_mask=mask, max_new_tokens=gen, min_new_tokens=gen,
                                  do_sample=True, temperature=1.0, top_p=0.999, top_k=10000, pad_token_id=0)
            for d, row in zip(dialogues, out[:, width:].tolist()):
                d += row
    benchmark.pedantic(run, setup=lambda: ((rollout_window(3, turns),), {}), rounds=1, warmup_rounds=0)
    benchmark.extra_info["generated_tokens"] = G * turns * gen
