"""EN-DE sentence pairs from the Ding dictionary (Debian package `trans-de-en`, GPL-2+).

A dictionary line is `German :: English`; each side holds the same number of `|`-separated
sub-entries (headword, inflections, example phrases and example sentences), aligned by position:

    Absicht {f} | ... | Das war nicht meine Absicht. :: intention | ... | Such was not my intention.

Rules, applied in this order (a line or sub-entry failing one is dropped, never repaired):
  1. comment lines (`#`) and lines without exactly one ` :: ` are skipped;
  2. a line whose two sides have different numbers of `|` sub-entries is skipped (no alignment);
  3. usage labels `{...}` (gender, part of speech) and `[...]` (register, region, field) are deleted
     and whitespace collapsed: they are never spoken, so deleting them leaves the sentence intact;
  4. both sides must then look like one sentence: first character upper-case, last one `.`, `!` or `?`;
  5. both sides must hold none of: `(` `)` (optional words or glosses: deleting them can break the
     sentence), leftover brackets, `;` (alternative renderings), `/` (alternative words),
     `…` / `...` / `~` (gaps of templates), placeholders `sth.` `sb.` `etw.` `jdm.` `jdn.` `jds.` `jd.`;
  6. the English side has 3..20 words (whitespace-separated).
Pairs are deduplicated by the English side (the first in file order wins). Each English sentence
goes to a split by a hash of its text: about 3% test, 2% valid, the rest train; the split of a
sentence never depends on the rest of the dictionary, so it stays put across dictionary versions.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from pathlib import Path

DING_PATH = Path("/usr/share/trans/de-en")
SPLITS = ("train", "valid", "test")
TEST_PER_MILLE, VALID_PER_MILLE = 30, 20
MIN_WORDS, MAX_WORDS = 3, 20

_LABEL = re.compile(r"\s*(\{[^{}]*\}|\[[^\[\]]*\])")
_FORBIDDEN = re.compile(r"[(){}\[\];/…~]|\.\.\.|\b(sth|sb|etw|jdm|jdn|jds|jd)\.")


def strip_labels(text: str) -> str:
    """Delete `{...}` and `[...]` labels and collapse whitespace."""
    return " ".join(_LABEL.sub(" ", text).split())


def is_sentence(text: str) -> bool:
    """Rules 4 and 5 on one side (labels already stripped)."""
    return (text[:1].isupper() and text[-1:] in (".", "!", "?")
            and _FORBIDDEN.search(text) is None)


def line_pairs(line: str) -> list[tuple[str, str]]:
    """The (English, German) sentence pairs of one dictionary line (rules 1..6), in line order."""
    sides = line.rstrip("\n").split(" :: ")
    if line.startswith("#") or len(sides) != 2:
        return []
    german, english = (side.split("|") for side in sides)
    if len(german) != len(english):
        return []
    pairs = []
    for de, en in zip(german, english):
        de, en = strip_labels(de), strip_labels(en)
        if is_sentence(de) and is_sentence(en) and MIN_WORDS <= len(en.split()) <= MAX_WORDS:
            pairs.append((en, de))
    return pairs


def sentence_pairs(lines: Iterable[str]) -> list[tuple[str, str]]:
    """All (English, German) pairs of the dictionary lines, deduplicated by English, in file order."""
    seen: dict[str, str] = {}
    for line in lines:
        for en, de in line_pairs(line):
            seen.setdefault(en, de)
    return list(seen.items())


def split_of(english: str) -> str:
    """'test' (~3%), 'valid' (~2%) or 'train', from the SHA-256 of the English sentence."""
    bucket = int.from_bytes(hashlib.sha256(english.encode("utf-8")).digest()[:8], "big") % 1000
    if bucket < TEST_PER_MILLE:
        return "test"
    return "valid" if bucket < TEST_PER_MILLE + VALID_PER_MILLE else "train"


def find_dictionary(path: str | Path | None = None) -> Path:
    """The Ding dictionary file: `path`, or the Debian package's."""
    path = Path(path) if path is not None else DING_PATH
    if not path.is_file():
        raise FileNotFoundError(f"Ding dictionary not found at {path}: install it with "
                                f"`apt-get install -y trans-de-en` (or `make apt`)")
    return path


def load_pairs(path: str | Path | None = None) -> dict[str, list[tuple[str, str]]]:
    """{'train'|'valid'|'test': [(English, German), ...]}, each list in dictionary order."""
    with open(find_dictionary(path), encoding="utf-8") as f:
        pairs = sentence_pairs(f)
    splits: dict[str, list[tuple[str, str]]] = {name: [] for name in SPLITS}
    for en, de in pairs:
        splits[split_of(en)].append((en, de))
    return splits
