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
