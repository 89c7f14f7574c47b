"""Decode CUDA graphs' padded static-buffer path (runtime/cuda_graphs.py). On CPU the graphs' forward
runs eagerly over the same persistent buffers and padding; it must give what the plain forward gives,
and padding rows must leave the KV cache alone. The capture and replay themselves are checked on a
GPU by bench/gpu_check.py."""
import pytest
import torch

from hpo_engine import Engine, SamplingParams
from hpo_engine.models.lora import LoRA
from hpo_engine.runtime.cuda_graphs import DecodeGraphs, graph_batch_sizes, hook_signature
from tests.conftest import make_tiny_model

PH = 299


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("graphs"), "qwen3", num_heads=6, num_kv_heads=2)[0]


def test_batch_size_ladder():
    assert graph_batch_sizes(1) == [1]
    assert graph_batch_sizes(6) == [1, 2, 4, 6]
    assert graph_batch_sizes(20) == [1, 2, 4, 8, 16, 20]
    assert graph_batch_sizes(128)[-3:] == [112, 120, 128]


def run_turns(folder, graphs, seed, num_streams, params):
    """Streams of different lengths (one with speech rows) for 3 turns each, all in one engine."""
    engine = Engine.from_pretrained(folder, block_size=8, num_blocks=200, placeholder_token_id=PH,
                                    cuda_graphs=graphs, max_num_seqs=8)
    assert (engine.runner.graphs is not None) == graphs
    g = torch.Generator().manual_seed(seed)
    streams = [engine.open_stream() for _ in range(num_streams)]
    outs = []
    for turn in range(3):
        for i, s in enumerate(streams):
            ids = torch.randint(2, 290, (int(torch.randint(3, 40, (1,), generator=g)),), generator=g).tolist()
            if i == 0:
                s.append(ids[:2] + [PH] * 3 + ids[2:], torch.randn(3, engine.config.hidden_size, generator=g))
            else:
                s.append(ids)
        outs.append(engine.generate_many([(s, p) for s, p in zip(streams, params)]))
    caches = [(k.clone(), v.clone()) for k, v in engine.kv.layers]
    return outs, caches


@pytest.mark.parametrize("num_streams", [1, 3, 8, 11])   # exact sizes, padding to 4 and 8, past the graphs
def test_graph_path_equals_plain_forward(tiny, num_streams, monkeypatch):
    replays = []
    plain_run = DecodeGraphs.run
    monkeypatch.setattr(DecodeGraphs, "run", lambda self, ids, *a: replays.append(len(ids)) or plain_run(self, ids, *a))
    params = [SamplingParams(max_new_tokens=int(5 + 3 * i % 11), stop_token_ids=[]) if i % 2 else
              SamplingParams(max_new_tokens=9, temperature=0.9, top_p=0.95, seed=i, stop_token_ids=[])
              for i in range(num_streams)]
    got, got_cache = run_turns(tiny, True, num_streams, num_streams, params)
    assert replays and set(replays) <= set(range(1, 9))      # decode steps of <= 8 rows took the graphs
    assert (num_streams in replays) == (num_streams <= 8)
    ref, ref_cache = run_turns(tiny, False, num_streams, num_streams, params)
    for turn_got, turn_ref in zip(got, ref):
        for a, b in zip(turn_got, turn_ref):
            assert a.token_ids == b.token_ids and a.finish_reason == b.finish_reason
            assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)
    for (k, v), (rk, rv) in zip(got_cache, ref_cache):      # padding rows stored nothing
        assert torch.allclose(k, rk, atol=1e-5) and torch.allclose(v, rv, atol=1e-5)


def test_padding_rows_do_not_touch_real_rows(tiny):
    """One static-buffer step: logits of n real rows are the same padded to any captured size."""
    from hpo_engine.models.loader import load_model
    model = load_model(tiny)
    kv = [(torch.randn(6, 8, 2, model.config.head_dim), torch.randn(6, 8, 2, model.config.head_dim))
          for _ in range(model.config.num_layers)]
    graphs = DecodeGraphs(model, kv, max_batch=8, max_blocks_per_seq=4, capture=False)
    ids, pos = torch.tensor([5, 7, 11]), torch.tensor([9, 3, 20])
    table = torch.tensor([[1, 2, 0], [3, 0, 0], [4, 5, 0]], dtype=torch.int32)
    lens = torch.tensor([10, 4, 17], dtype=torch.int32)
    slots = torch.tensor([1 * 8 + 1, 3 * 8 + 3, 5 * 8 + 0])
    with torch.inference_mode():
        three = graphs.run(ids, pos, slots, table, lens).clone()
        graphs.sizes = [8]                                   # now padded to 8 rows
        eight = graphs.run(ids, pos, slots, table, lens)
        one = graphs.run(ids[1:2], pos[1:2], slots[1:2], table[1:2, :1], lens[1:2])
    assert torch.allclose(three, eight, atol=1e-6) and torch.allclose(one[0], three[1], atol=1e-6)
    with pytest.raises(ValueError, match="1..8 sequences of <= 4 blocks"):
        graphs.run(ids, pos, slots, torch.zeros(3, 5, dtype=torch.int32), lens)


def test_failed_capture_warns_and_decodes_eagerly(tiny):
    """Capturing on a machine without CUDA fails: the step warns once, then runs the eager path."""
    from hpo_engine.models.loader import load_model
    model = load_model(tiny)
    kv = [(torch.randn(3, 8, 2, model.config.head_dim), torch.randn(3, 8, 2, model.config.head_dim))
          for _ in range(model.config.num_layers)]
    args = (torch.tensor([5]), torch.tensor([4]), torch.tensor([8 + 4]), torch.tensor([[1]], dtype=torch.int32),
            torch.tensor([5], dtype=torch.int32))
    eager = DecodeGraphs(model, kv, max_batch=2, max_blocks_per_seq=2, capture=False).run(*args).clone()
    graphs = DecodeGraphs(model, kv, max_batch=2, max_blocks_per_seq=2, capture=True)
    with pytest.warns(UserWarning, match="CUDA graph capture failed"):
        first = graphs.run(*args).clone()
    assert not graphs.capture and not graphs.graphs
    assert torch.equal(first, eager) and torch.equal(graphs.run(*args), eager)


def test_hook_signature_sees_a_lora(tiny):
    """A LoRA attached after capture changes the signature, which makes `run` capture again."""
    from hpo_engine.models.loader import load_model
    model = load_model(tiny)
    graphs = DecodeGraphs(model, [(torch.zeros(1, 8, 2, 64), torch.zeros(1, 8, 2, 64))], 1, 1, capture=False)
    before = hook_signature(graphs.modules)
    lora = LoRA(model, rank=2)
    assert hook_signature(graphs.modules) == before + len(lora.handles) > before
    lora.detach()
    assert hook_signature(graphs.modules) == before
