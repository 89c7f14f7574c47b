"""Engine / Stream behaviour: block accounting, forks, prefix sharing, sampling, clear errors."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from hpo_engine import Engine, OutOfBlocks, SamplingParams, StreamClosedError
from hpo_engine.config import UnsupportedModelError
from hpo_engine.models.loader import CheckpointError
from tests.conftest import make_tiny_model

PH = 299


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder, hf = make_tiny_model(tmp_path_factory.mktemp("tiny"), "qwen2", num_heads=6, num_kv_heads=2)
    return folder, hf


def engine_of(folder, **kw):
    kw.setdefault("num_blocks", 64)
    return Engine.from_pretrained(folder, block_size=16, placeholder_token_id=PH, **kw)


@pytest.mark.slow
def test_close_returns_every_block_over_1000_cycles(tiny):
    engine = engine_of(tiny[0])
    free0 = engine.pool.num_free
    g = torch.Generator().manual_seed(0)
    for i in range(1000):
        s = engine.open_stream()
        s.append(torch.randint(2, 290, (int(torch.randint(1, 40, (1,), generator=g)),), generator=g).tolist())
        s.generate(SamplingParams(max_new_tokens=2, temperature=1.0 if i % 2 else 0.0, seed=i))
        s.close()
    assert engine.pool.num_free == free0 and engine.pool.num_used == 0 and engine.pool.num_shared == 0
    assert not engine.streams


def test_bad_input_raises_and_engine_stays_usable(tiny, tmp_path):
    engine = engine_of(tiny[0])
    s = engine.open_stream()
    with pytest.raises(ValueError, match="outside the vocabulary"):
        s.append([5, 300])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        s.append([-1])
    with pytest.raises(ValueError, match="2 embedding rows for 3 placeholder"):
        s.append([5, PH, PH, PH], torch.randn(2, engine.config.hidden_size))
    with pytest.raises(ValueError, match="placeholder tokens but no embeds"):
        s.append([PH])
    with pytest.raises(ValueError, match=r"embeds must be \[n, 192\]"):
        s.append([PH], torch.randn(1, 7))
    with pytest.raises(ValueError, match="nothing to answer"):
        s.generate()
    assert s.seq.num_pending == 0          # rejected calls left nothing behind
    s.append([5, PH, 7], torch.randn(1, engine.config.hidden_size))
    assert len(s.generate(SamplingParams(max_new_tokens=3)).token_ids) >= 1
    s.close()
    with pytest.raises(StreamClosedError):
        s.append([5])
    with pytest.raises(StreamClosedError):
        s.generate()
    s2 = engine.open_stream()
    s2.append([3, 4])
    assert s2.generate(SamplingParams(max_new_tokens=2)).token_ids


def test_unknown_architecture_missing_and_misshapen_tensors(tiny, tmp_path):
    import shutil
    folder = tmp_path / "m"
    shutil.copytree(tiny[0], folder)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(UnsupportedModelError, match="GPT2LMHeadModel"):
        Engine.from_pretrained(folder)
    (folder / "config.json").write_text(json.dumps(cfg))
    weights = load_file(folder / "model.safetensors")
    name = "model.layers.1.mlp.up_proj.weight"
    save_file({k: v for k, v in weights.items() if k != name}, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match=f"missing tensor.*{name}"):
        Engine.from_pretrained(folder)
    save_file({**weights, name: weights[name][:, :5].contiguous()}, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match=f"{name} has shape"):
        Engine.from_pretrained(folder)
    with pytest.raises(FileNotFoundError):
        Engine.from_pretrained(tmp_path / "nowhere")


def test_sharded_checkpoint_and_bfloat16(tiny, tmp_path):
    _, hf = tiny
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    ref = engine_of(tiny[0])
    sharded = engine_of(tmp_path / "sharded")
    for a, b in zip(ref.model.state_dict().values(), sharded.model.state_dict().values()):
        assert torch.equal(a, b)
    bf16 = Engine.from_pretrained(tmp_path / "sharded", dtype=torch.bfloat16, num_blocks=8)
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    s = bf16.open_stream()
    s.append([3, 4, 5])
    assert len(s.generate(SamplingParams(max_new_tokens=4, stop_token_ids=[])).token_ids) == 4


def test_fork_shares_blocks_and_copies_on_write(tiny):
    engine = engine_of(tiny[0])
    s = engine.open_stream()
    s.append(list(range(2, 2 + 37)))                 # 2 full blocks + a partial one after generate
    first = s.generate(SamplingParams(max_new_tokens=3, stop_token_ids=[]))
    used = engine.pool.num_used
    forks = [s.fork() for _ in range(3)]
    assert engine.pool.num_used == used and engine.pool.num_shared == used
    greedy = SamplingParams(max_new_tokens=5, stop_token_ids=[])
    outs = engine.generate_many([(f, greedy) for f in [s] + forks])
    assert all(o.token_ids == outs[0].token_ids for o in outs)
    # full blocks still shared by all four; each partial last block now private
    assert engine.pool.num_shared == 2
    for f in forks + [s]:
        f.close()
    assert engine.pool.num_used == 0 and engine.pool.num_shared == 0
    assert first.token_ids


def test_prefix_cache_reuses_identical_prompts_and_resets(tiny):
    engine = engine_of(tiny[0])
    plain = engine_of(tiny[0])
    prompt = torch.randint(2, 290, (50,)).tolist()
    emb = torch.randn(2, engine.config.hidden_size)
    prompt_ph = prompt[:20] + [PH, PH] + prompt[20:]
    params = SamplingParams(max_new_tokens=4, stop_token_ids=[])
    a = engine.open_stream()
    a.append(prompt_ph, emb)
    out_a = a.generate(params)
    b = engine.open_stream()
    b.append(prompt_ph, emb)
    out_b = b.generate(params)
    assert engine.pool.prefix_hits == 3 and b.seq.block_table[:3] == a.seq.block_table[:3]
    ref = plain.open_stream()
    ref.append(prompt_ph, emb)
    out_ref = ref.generate(params)
    assert out_b.token_ids == out_ref.token_ids == out_a.token_ids
    assert out_b.logprobs == pytest.approx(out_ref.logprobs, abs=1e-5)
    c = engine.open_stream()                        # same ids, different speech: no hit past it
    c.append(prompt_ph, torch.randn(2, engine.config.hidden_size))
    c.generate(params)
    assert engine.pool.prefix_hits == 4             # only the block before the placeholders
    engine.reset_prefix_cache()
    d = engine.open_stream()
    d.append(prompt_ph, emb)
    d.generate(params)
    assert engine.pool.prefix_hits == 4


def test_out_of_blocks_only_when_one_stream_outgrows_the_pool(tiny):
    """An idle stream's blocks go to a stream that needs them (the idle one is preempted and computes
    its cache again when it next runs); OutOfBlocks, naming the sizes, when one stream alone does not
    fit the pool - and then nobody's blocks are taken."""
    engine = engine_of(tiny[0], num_blocks=4)
    a = engine.open_stream()
    a.append(list(range(2, 50)))
    a.generate(SamplingParams(max_new_tokens=2))
    b = engine.open_stream()
    b.append(list(range(2, 40)))
    assert b.generate(SamplingParams(max_new_tokens=2)).token_ids
    assert a.stats()["preemptions"] == 1 and a.num_blocks == 0 and a.num_cached_tokens == 49
    c = engine.open_stream()
    c.append(list(range(2, 70)))
    used = engine.pool.num_used
    with pytest.raises(OutOfBlocks, match="needs 5 blocks of 16 tokens for 68 tokens, but the pool has 4 blocks"):
        c.generate(SamplingParams(max_new_tokens=2))
    assert engine.pool.num_used == used and b.stats()["preemptions"] == 0
    c.close()
    a.append([3, 4])
    assert a.generate(SamplingParams(max_new_tokens=2)).token_ids
    assert engine.stats()["preemptions"] == 2 and b.stats()["preemptions"] == 1
    a.close(), b.close()
    assert engine.pool.num_used == 0 and engine.pool.num_free == 4


def test_sampling_seeded_reproducible_and_respects_bans(tiny):
    engine = engine_of(tiny[0])
    params = SamplingParams(max_new_tokens=6, temperature=1.3, top_p=0.9, top_k=50, seed=7,
                            stop_token_ids=[], banned_token_ids=list(range(100, 300)))
    outs = []
    for _ in range(2):
        s = engine.open_stream()
        s.append([3, 4, 5])
        outs.append(s.generate(params))
        s.close()
    assert outs[0].token_ids == outs[1].token_ids and outs[0].logprobs == outs[1].logprobs
    assert all(t < 100 for t in outs[0].token_ids)
