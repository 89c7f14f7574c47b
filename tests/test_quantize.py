"""Weight-only int8 serving (models/quantize.py): the engine with int8 weights against transformers
running the same dequantized weights, over multi-turn dialogues; the SST checkpoint quantizes after its
adapter is merged."""
import pytest
import torch

from hpo_engine import Engine, SamplingParams
from hpo_engine.kernels.cpu_linear import dequantize_int8, quantize_int8
from hpo_engine.models.decoder import Linear
from hpo_engine.models.quantize import Int8Linear, quantize_model
from tests.conftest import make_tiny_model


def dequantized_copy(hf):
    """transformers' model with every projection and the LM head replaced by its int8 round trip."""
    with torch.no_grad():
        for name, module in hf.named_modules():
            if isinstance(module, torch.nn.Linear):
                weight = dequantize_int8(*quantize_int8(module.weight))
                if name == "lm_head" and hf.config.tie_word_embeddings:
                    module.weight = torch.nn.Parameter(weight)     # untie: the embedding stays float
                else:
                    module.weight.copy_(weight)
    return hf


@pytest.mark.parametrize("arch,tie", [("llama", True), ("qwen2", False)])
def test_int8_engine_matches_transformers_on_the_dequantized_weights(tmp_path, arch, tie):
    folder, hf = make_tiny_model(tmp_path, arch, num_heads=6, num_kv_heads=2, head_dim=40, tie=tie, seed=3)
    embed_before = hf.get_input_embeddings().weight.detach().clone()
    ref = dequantized_copy(hf)
    engine = Engine.from_pretrained(folder, quantize="int8")
    layers = [m for m in engine.model.modules() if isinstance(m, Int8Linear)]
    assert len(layers) == 2 * 7 + 1 and not any(isinstance(m, Linear) for m in engine.model.modules())
    assert torch.equal(engine.model.model.embed_tokens.weight, embed_before)   # tied: the table stays float
    g = torch.Generator().manual_seed(7)
    stream, ids = engine.open_stream(), []
    for turn in range(3):
        user = torch.randint(2, 299, (int(torch.randint(3, 70, (1,), generator=g)),), generator=g).tolist()
        stream.append(user)
        ids += user
        out = stream.generate(SamplingParams(max_new_tokens=6, stop_token_ids=[]))
        with torch.no_grad():
            for tok, lp in zip(out.token_ids, out.logprobs):
                logits = ref(torch.tensor([ids])).logits[0, -1].log_softmax(-1)
                assert tok == int(logits.argmax()), f"turn {turn}: token differs from the dequantized reference"
                assert abs(lp - float(logits[tok])) <= 1e-4 * max(1.0, abs(float(logits[tok])))
                ids.append(tok)
    stream.close()


def test_unknown_quantization_is_named():
    with pytest.raises(ValueError, match="unknown quantization 'int4': expected one of int8"):
        quantize_model(torch.nn.Linear(2, 2), "int4")


def test_sst_quantizes_the_merged_weights():
    """open_sst(quantize=...) quantizes after the trained LoRA is merged into the base weights."""
    from hpo_engine.models.loader import load_model
    from hpo_engine.sst.checkpoint import open_sst
    from hpo_engine.sst.default_model import default_sst_path
    merged = open_sst().engine.model
    served = open_sst(quantize="int8").engine.model
    proj = "model.layers.0.self_attn.q_proj"
    qweight, scale = quantize_int8(merged.get_submodule(proj).weight)
    assert torch.equal(served.get_submodule(proj).qweight, qweight)
    assert torch.equal(served.get_submodule(proj).scale, scale)
    base, _ = quantize_int8(load_model(default_sst_path()).get_submodule(proj).weight)
    assert not torch.equal(base, qweight)          # the adapter does change this layer: the order matters
