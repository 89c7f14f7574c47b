"""Character tokens for aligning text without word spaces (Chinese, Japanese), the way
mweralign's `cj` segmenter makes them: every non-Latin-1 character is a token, a run of
Latin-1 characters is one token, and spaces are kept inside tokens as U+2581 so they survive."""
from __future__ import annotations

from typing import List

SPACE_MARK = "\u2581"  # stands for a space inside a token
ESCAPED_MARK = "\x00"  # stands for a literal U+2581 of the input


def encode(text: str) -> List[str]:
    """Split `text` into alignment tokens (Latin-1 runs with their spaces, single other chars)."""
    text = text.replace(SPACE_MARK, ESCAPED_MARK).replace(" ", SPACE_MARK)
    tokens: List[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if ord(c) <= 0xFF or c == SPACE_MARK:
            start = i
            while i < n and (ord(text[i]) <= 0xFF or text[i] == SPACE_MARK):
                i += 1
            tokens.append(text[start:i])
        else:
            tokens.append(c)
            i += 1
    return tokens


def decode(joined_tokens: str) -> str:
    """Inverse of `encode` on tokens joined by spaces; the result is stripped."""
    return (
        joined_tokens.replace(" ", "")
        .replace(SPACE_MARK, " ")
        .replace(ESCAPED_MARK, SPACE_MARK)
        .strip()
    )
