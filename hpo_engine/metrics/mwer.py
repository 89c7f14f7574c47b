"""mWER resegmentation (Matusov et al. 2005): split a recording's hypothesis into exactly as many
pieces as it has reference sentences, minimising the total word edit distance.

Same results as mweralign (the MWERAlign C++ code, `-usecase 1` semantics, unit costs): tokens
are split on ASCII whitespace and compared after ASCII lower-casing; the DP runs in C++
(`hpo_engine._C.mwer_segment_ends`).
"""
from __future__ import annotations

import re
from typing import Dict, List, Sequence

from . import cjk_tokens

_ASCII_SPACE = re.compile(r"[ \t\n\v\f\r]+")
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_MARKER = 1  # id of the end-of-sentence marker; 0 is never used (MWERAlign's epsilon)
_MULTI_REF_SEPARATOR = "###"  # MWERAlign reads "a ### b" as two alternative references


# whitespace for Python's str.split() but not for C++ `istream >> string`
_UNICODE_ONLY_SPACE = re.compile("[\x1c-\x1f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]")


def _split(text: str) -> List[str]:
    """Whitespace tokens as C++ `istream >> string` finds them (ASCII whitespace only)."""
    if not _UNICODE_ONLY_SPACE.search(text):
        return text.split()
    return [t for t in _ASCII_SPACE.split(text) if t]


def _reference_tokens(line: str, number: int) -> List[str]:
    if "\n" in line:
        raise ValueError(f"reference {number} contains a line break")
    tokens = _split(line)
    if _MULTI_REF_SEPARATOR in tokens:
        parts, current = [], []
        for t in tokens:
            if t == _MULTI_REF_SEPARATOR:
                if current:
                    parts.append(current)
                current = []
            else:
                current.append(t)
        if current:
            parts.append(current)
        if len(parts) > 1:
            raise ValueError(
                f"reference {number} holds '###' (mwerSegmenter's multi-reference separator)"
            )
        tokens = parts[0] if parts else []
    if any(t.translate(_ASCII_LOWER) == "</s>" for t in tokens):
        raise ValueError(f"reference {number} holds '</s>' (mwerSegmenter's segment marker)")
    return tokens


def segment_tokens(hyp_tokens: Sequence[str], references: Sequence[Sequence[str]]) -> List[List[str]]:
    """Split `hyp_tokens` into len(references) consecutive pieces by the mWER DP.

    references: each sentence's tokens (may be empty). Returns one token list per sentence.
    """
    if not references:
        raise ValueError("mWER segmentation needs at least one reference sentence")
    from hpo_engine import _C

    # ids of ASCII-lower-cased tokens; 0 and _MARKER are reserved
    vocab: Dict[str, int] = {}
    ref_ids: List[int] = []
    for sentence in references:
        lowered = " ".join(sentence).translate(_ASCII_LOWER).split(" ") if sentence else []
        ref_ids += [vocab.setdefault(t, len(vocab) + _MARKER + 1) for t in lowered]
        ref_ids.append(_MARKER)
    lowered = " ".join(hyp_tokens).translate(_ASCII_LOWER).split(" ") if hyp_tokens else []
    hyp_ids = [vocab.setdefault(t, len(vocab) + _MARKER + 1) for t in lowered]
    ends = _C.mwer_segment_ends(ref_ids, hyp_ids, _MARKER)
    pieces, start = [], 0
    for end in ends:
        pieces.append(list(hyp_tokens[start:end]))
        start = end
    return pieces


def mwer_segment(hypothesis: str, references: Sequence[str], char_level: bool = False) -> List[str]:
    """Resegment one recording's `hypothesis` into one string per reference sentence.

    Word level: pieces are the hypothesis words joined by single spaces (as mwerSegmenter writes
    them, stripped). Character level (zh/ja): tokens as mweralign's `cj` segmenter makes them and
    pieces decoded back to text, so `"".join` of the pieces gives the hypothesis without spaces
    at piece boundaries.
    """
    if char_level:
        hyp_tokens = _split(" ".join(cjk_tokens.encode(hypothesis.strip())))
        refs = []
        for number, line in enumerate(references):
            _reference_tokens(line, number)  # same checks as word level
            refs.append(_reference_tokens(" ".join(cjk_tokens.encode(line.strip())), number))
        return [cjk_tokens.decode(" ".join(p)) for p in segment_tokens(hyp_tokens, refs)]
    refs = [_reference_tokens(line, number) for number, line in enumerate(references)]
    return [" ".join(p) for p in segment_tokens(_split(hypothesis), refs)]
