"""Fast reader for the usual shapes of MuST-C / IWSLT segmentation YAML (a list of flat mappings
of plain scalars, in flow style `- {duration: 3.2, offset: 1.5, wav: a.wav}` or block style), with
PyYAML's own typing of those scalars. Anything else returns None and the caller uses PyYAML.
"""
from __future__ import annotations

import re
from typing import Dict, List, Optional, Union

_INT = re.compile(r"[-+]?(0|[1-9][0-9]*)")  # no octal / hex / underscores: those fall back
_FLOAT = re.compile(r"[-+]?(0|[1-9][0-9]*)\.[0-9]*")
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SPECIAL_WORDS = {"null", "Null", "NULL", "~", "true", "True", "TRUE", "false", "False", "FALSE",
                  "yes", "Yes", "YES", "no", "No", "NO", "on", "On", "ON", "off", "Off", "OFF", ""}
_SPECIAL_START = set("\"'{}[]&*!|>%@`#,?:-=<")


def _scalar(text: str) -> Optional[Union[int, float, str]]:
    """PyYAML's value of a plain scalar, or None when this reader does not handle it."""
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    if (text in _SPECIAL_WORDS or text[0] in _SPECIAL_START or text != text.strip()
            or ": " in text or " #" in text or text[0].isdigit() or text[0] in "+."):
        return None
    return text


def _pair(text: str, entry: Dict) -> bool:
    key, sep, value = text.partition(": ")
    if not sep or not _KEY.fullmatch(key) or key in entry:
        return False
    parsed = _scalar(value.strip())
    if parsed is None:
        return False
    entry[key] = parsed
    return True


def parse_segmentation(text: str) -> Optional[List[Dict]]:
    """The list of mappings in `text`, or None if it is not in a shape handled here."""
    entries: List[Dict] = []
    current: Optional[Dict] = None
    for line in text.split("\n"):
        line = line.rstrip()
        if not line:
            continue
        if line.startswith("- {") and line.endswith("}"):
            current = None
            entry: Dict = {}
            body = line[3:-1].strip()
            if not body or not all(_pair(p.strip(), entry) for p in body.split(", ")):
                return None
            entries.append(entry)
        elif line.startswith("- "):
            current = {}
            if not _pair(line[2:], current):
                return None
            entries.append(current)
        elif line.startswith("  ") and current is not None and not line.startswith("   "):
            if not _pair(line[2:], current):
                return None
        else:
            return None
    return entries or None
