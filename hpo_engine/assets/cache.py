"""Where offline-built model files live, and how their sources are checked."""
import hashlib
import os
from pathlib import Path


def cache_dir() -> Path:
    """`$HPO_ENGINE_CACHE`, else `~/.cache/hpo-engine`."""
    return Path(os.environ.get("HPO_ENGINE_CACHE") or Path.home() / ".cache" / "hpo-engine")


def sha256_of(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()
