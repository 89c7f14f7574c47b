"""Checksums of a folder's files (training checkpoints, SST exports): written with the folder, checked
when it is opened, so that a truncated file, a broken JSON or one flipped bit is found and named before
any of it is used (safetensors and torch.load read flipped bits in tensor data as valid numbers).

    FOLDER/manifest.json   {"format": 1, "files": {"relative/path": {"bytes": N, "sha256": HEX}, ...}}
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

MANIFEST = "manifest.json"


class IntegrityError(ValueError):
    """A file of the folder differs from what its manifest recorded; the message names it and how."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def write_manifest(folder) -> Path:
    """Record every file under `folder` (the manifest itself excepted), then fsync the manifest."""
    folder = Path(folder)
    files = {p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": sha256(p)}
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST}
    path = folder / MANIFEST
    with open(path, "w") as f:
        json.dump({"format": 1, "files": files}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    return path


def has_manifest(folder) -> bool:
    return (Path(folder) / MANIFEST).is_file()


def check_manifest(folder) -> None:
    """Raise IntegrityError naming the first file that is missing, truncated or changed."""
    folder = Path(folder)
    try:
        files = json.loads((folder / MANIFEST).read_text())["files"]
        entries = [(name, int(e["bytes"]), str(e["sha256"])) for name, e in files.items()]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise IntegrityError(f"{folder / MANIFEST} is unreadable ({type(e).__name__}: {e})") from None
    for name, size, digest in entries:
        path = folder / name
        if not path.is_file():
            raise IntegrityError(f"{path} is missing")
        actual = path.stat().st_size
        if actual != size:
            raise IntegrityError(f"{path} is truncated: {actual} of its {size} bytes" if actual < size else
                                 f"{path} holds {actual} bytes, {size} were written")
        if sha256(path) != digest:
            raise IntegrityError(f"{path} changed after it was written (sha256 mismatch: a flipped bit or an "
                                 "overwrite)")
