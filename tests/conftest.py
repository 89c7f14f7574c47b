import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tests run tiny shapes: one thread avoids OpenMP overhead and oversubscription (a test that
    exercises a multi-threaded path sets its own count)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def smollm2_path():
    from hpo_engine.assets.smollm2 import smollm2_path as build
    return build()


def make_tiny_model(tmp_path, arch, *, num_heads=4, num_kv_heads=4, head_dim=64, tie=False,
                    rope_scaling=None, seed=0, vocab=300):
    """A random-weight Hugging Face model folder built by transformers itself (save_pretrained)."""
    import transformers
    common = dict(vocab_size=vocab, hidden_size=num_heads * 32,
                  intermediate_size=96, num_hidden_layers=2, num_attention_heads=num_heads,
                  num_key_value_heads=num_kv_heads, head_dim=head_dim, max_position_embeddings=512,
                  tie_word_embeddings=tie, eos_token_id=1, bos_token_id=0, rms_norm_eps=1e-6)
    if rope_scaling:
        common["rope_parameters"] = {"rope_type": "llama3", "rope_theta": 10000.0, **rope_scaling}
    cfg_cls, model_cls = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
    }[arch]
    torch.manual_seed(seed)
    model = model_cls(cfg_cls(**common)).eval()
    with torch.no_grad():       # random biases / norms, so that those code paths matter
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.normal_(1.0 if "norm" in name else 0.0, 0.2)
    folder = tmp_path / f"{arch}-{num_heads}-{num_kv_heads}-{head_dim}-{tie}"
    model.save_pretrained(folder)
    return folder, model


@pytest.fixture(scope="session")
def qwen25_path():
    from hpo_engine.assets.qwen25 import qwen25_path as build
    return build()
