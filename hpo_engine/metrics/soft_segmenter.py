"""OmniSTEval's SoftSegmenter (Polak et al. 2025): align the hypothesis words of a recording to
its reference words (Jaccard similarity of character sets, free gaps; exact match at character
level), then give every hypothesis word the reference sentence of the word it aligned to, or,
for unaligned words, of the more similar neighbouring aligned reference word.

Identical assignments to OmniSTEval 0.1.10; the DP runs in C++ (`hpo_engine._C.soft_align`).
"""
from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from . import moses

PUNCT = frozenset(".!?,;:-()") | frozenset("。！？，；：—（）") | frozenset("。！？，；：ー（）")
_NEG_INF = -math.inf


@dataclass
class Unit:
    """An alignment unit: `text` is the normalised token; `original` the unit as written (only on
    the first token of a unit, `main`); emissions in ms; seq_id: reference sentence index."""

    text: str
    seq_id: Optional[int] = None
    emission_cu: Optional[float] = None
    emission_ca: Optional[float] = None
    main: bool = True
    original: Optional[str] = None


def similarity(a: str, b: str, char_level: bool) -> float:
    """-inf for punctuation against non-punctuation; else exact match (char level) or the
    Jaccard index of the two character sets."""
    if (a in PUNCT) != (b in PUNCT):
        return _NEG_INF
    if char_level:
        return float(a == b)
    sa, sb = set(a), set(b)
    inter = len(sa & sb)
    union = len(sa) + len(sb) - inter
    return inter / union if union else 0.0


def tokenize_units(units: Sequence[Unit], lang: Optional[str]) -> List[Unit]:
    """NFKC + lower-case every unit, then Moses-tokenize it unless `lang` is None/zh/ja; the
    first token of a unit is its `main` token and carries the original text."""
    normalised = [unicodedata.normalize("NFKC", u.text).lower() for u in units]
    if lang is None or lang in ("zh", "ja"):
        return [Unit(text, u.seq_id, u.emission_cu, u.emission_ca, True, u.text)
                for u, text in zip(units, normalised)]
    pieces = moses.tokenize_words(normalised, lang)
    out: List[Unit] = []
    for unit, text in zip(units, normalised):
        for k, token in enumerate(pieces[text]):
            out.append(Unit(token, unit.seq_id, unit.emission_cu, unit.emission_ca, k == 0,
                            unit.text if k == 0 else None))
    return out


def _features(texts: Sequence[str], token_ids: Dict[str, int], char_ids: Dict[str, int],
              words_per_mask: int, char_level: bool):
    """Token ids, punctuation flags and character-set bit masks (uint64 words) of the units."""
    tokens = [token_ids[t] for t in texts]
    punct = [1 if t in PUNCT else 0 for t in texts]
    masks: List[int] = []
    if not char_level:
        mask_of: Dict[str, List[int]] = {}
        for text in texts:
            mask = mask_of.get(text)
            if mask is None:
                bits = 0
                for c in set(text):
                    bits |= 1 << char_ids[c]
                mask = [(bits >> (64 * w)) & 0xFFFFFFFFFFFFFFFF for w in range(words_per_mask)]
                mask_of[text] = mask
            masks.extend(mask)
    return tokens, punct, masks


def align(ref: Sequence[Unit], hyp: Sequence[Unit], char_level: bool):
    """Optimal alignment path as (ref index or None, hyp index or None) pairs (OmniSTEval's
    `align_sequences`: maximise summed similarity; ties prefer match, then deletion)."""
    from hpo_engine import _C

    ref_texts = [u.text for u in ref]
    hyp_texts = [u.text for u in hyp]
    token_ids: Dict[str, int] = {}  # shared by both sides: equal ids = equal texts
    char_ids: Dict[str, int] = {}
    for text in ref_texts + hyp_texts:
        token_ids.setdefault(text, len(token_ids))
        if not char_level:
            for c in text:
                char_ids.setdefault(c, len(char_ids))
    words_per_mask = 0 if char_level else max(1, (len(char_ids) + 63) // 64)
    r_tok, r_punct, r_mask = _features(ref_texts, token_ids, char_ids, words_per_mask, char_level)
    h_tok, h_punct, h_mask = _features(hyp_texts, token_ids, char_ids, words_per_mask, char_level)
    path = _C.soft_align(r_tok, r_punct, r_mask, h_tok, h_punct, h_mask, words_per_mask, char_level)
    return [(None if i < 0 else i, None if j < 0 else j) for i, j in path]


def assign_sentences(ref: Sequence[Unit], hyp: Sequence[Unit], path, char_level: bool) -> List[Unit]:
    """Give each hypothesis unit the seq_id of its aligned reference unit; an unaligned unit takes
    the more similar of the previous and the next aligned reference unit (OmniSTEval's
    `process_alignment`, including its look-ahead zone). Returns the assigned units in order."""
    refs = [None if i is None else ref[i] for i, _ in path]
    hyps = [None if j is None else hyp[j] for _, j in path]
    n = len(refs)
    out: List[Unit] = []
    last_ref: Optional[Unit] = None
    lookahead_ref: Optional[Unit] = None
    nexti = 0
    for i in range(n):
        r, h = refs[i], hyps[i]
        if r is None and i >= nexti:
            if h is not None:
                k = i
                while k < n and refs[k] is None:
                    k += 1
                nexti, next_ref = k, (refs[k] if k < n else None)
                if next_ref is None and last_ref is None:
                    raise ValueError("no reference word to align a hypothesis word to")
                next_score = similarity(h.text, next_ref.text, char_level) if next_ref else _NEG_INF
                prev_score = similarity(h.text, last_ref.text, char_level) if last_ref else _NEG_INF
                if next_score > prev_score:
                    r = lookahead_ref = next_ref
                else:
                    r, nexti, lookahead_ref = last_ref, i, None
        elif r is None and h is not None:
            r = lookahead_ref  # inside a look-ahead zone: same reference as its start
        if r is not None and i >= nexti:
            last_ref = r
        if h is not None and r is not None:
            h.seq_id = r.seq_id
            out.append(h)
    return out


def soft_segment(ref: Sequence[Unit], hyp: Sequence[Unit], char_level: bool) -> List[Unit]:
    """Tokenized units of one recording in, assigned main hypothesis units out."""
    if not hyp:
        return []
    if not ref:
        raise ValueError("a recording with hypothesis words has no reference words")
    assigned = assign_sentences(ref, hyp, align(ref, hyp, char_level), char_level)
    return [u for u in assigned if u.main]
