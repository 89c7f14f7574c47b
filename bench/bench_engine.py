"""Single-stream prefill and decode on SmolLM2-135M (fp32, CPU): hpo-engine vs transformers.

Run: .venv/bin/python -m pytest bench/bench_engine.py --benchmark-only
Both sides use the same weights, dtype and thread count; each round starts from fresh random ids.
"""
import copy

import pytest
import torch

from hpo_engine import Engine, SamplingParams

PROMPT = 1024
DECODE = 32


@pytest.fixture(scope="module")
def engine(smollm2_path):
    return Engine.from_pretrained(smollm2_path)


@pytest.fixture(scope="module")
def hf(smollm2_path):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32).eval()


def random_prompt():
    return torch.randint(100, 49000, (PROMPT,)).tolist()


@pytest.mark.benchmark(group="prefill-1k")
def test_prefill_hpo_engine(benchmark, engine):
    def setup():
        s = engine.open_stream()
        s.append(random_prompt())
        return (s,), {}

    def run(s):
        s.generate(SamplingParams(max_new_tokens=1))
        s.close()
    benchmark.pedantic(run, setup=setup, rounds=5, warmup_rounds=1)


@pytest.mark.benchmark(group="prefill-1k")
def test_prefill_transformers(benchmark, hf):
    def setup():
        return (torch.tensor([random_prompt()]),), {}

    def run(ids):
        with torch.inference_mode():
            hf.generate(ids, max_new_tokens=1, do_sample=False)
    benchmark.pedantic(run, setup=setup, rounds=5, warmup_rounds=1)


@pytest.mark.benchmark(group="decode-32-at-1k")
def test_decode_hpo_engine(benchmark, engine):
    def setup():
        s = engine.open_stream()
        s.append(random_prompt())
        s.generate(SamplingParams(max_new_tokens=1))
        return (s,), {}

    def run(s):
        out = s.generate(SamplingParams(max_new_tokens=DECODE, stop_token_ids=[]))
        assert len(out.token_ids) == DECODE
        s.close()
    benchmark.pedantic(run, setup=setup, rounds=5, warmup_rounds=1)


@pytest.mark.benchmark(group="decode-32-at-1k")
def test_decode_transformers(benchmark, hf):
    from transformers import DynamicCache

    def setup():
        ids = torch.tensor([random_prompt()])
        cache = DynamicCache(config=hf.config)
        with torch.inference_mode():
            hf(ids[:, :-1], past_key_values=cache)
        return (ids, cache), {}

    def run(ids, cache):
        with torch.inference_mode():
            out = hf.generate(ids, past_key_values=cache, max_new_tokens=DECODE, min_new_tokens=DECODE,
                              do_sample=False)
        assert out.shape[1] == PROMPT + DECODE
    benchmark.pedantic(run, setup=setup, rounds=5, warmup_rounds=1)


@pytest.fixture(scope="module")
def engine_bf16(smollm2_path):
    return Engine.from_pretrained(smollm2_path, dtype=torch.bfloat16)


def _decode_streams(engine, batch):
    """`batch` streams of 1k random tokens each, prefilled, ready to decode together."""
    streams = []
    for _ in range(batch):
        s = engine.open_stream()
        s.append(random_prompt())
        s.generate(SamplingParams(max_new_tokens=1))
        streams.append(s)
    return streams


def _decode_together(engine, streams):
    outs = engine.generate_many([(s, SamplingParams(max_new_tokens=DECODE, stop_token_ids=[])) for s in streams])
    assert all(len(o.token_ids) == DECODE for o in outs)
    for s in streams:
        s.close()


@pytest.mark.parametrize("batch", [1, 16])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_decode_dtype(benchmark, engine, engine_bf16, dtype, batch):
    """Weights and KV in bf16 vs fp32 (CPUs with avx512_bf16 / AMX run bf16 matmuls natively)."""
    benchmark.group = f"decode-32-at-1k-batch{batch}-dtype"
    e = engine if dtype == "float32" else engine_bf16
    benchmark.pedantic(_decode_together, setup=lambda: ((e, _decode_streams(e, batch)), {}), rounds=3, warmup_rounds=1)
