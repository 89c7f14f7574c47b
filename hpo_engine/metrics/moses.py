"""Moses word tokenization (tokenizer.perl v1.1 with `-a -no-escape`, as OmniSTEval's
SoftSegmenter calls it through the `mosestokenizer` package), run once per batch of words.

Optional: needs the `mosestokenizer` package (it carries the Perl script) and `perl`."""
from __future__ import annotations

import os
import shutil
import subprocess
from typing import Dict, List, Sequence


def _script_path() -> str:
    try:
        import mosestokenizer
    except ImportError:
        raise RuntimeError(
            "Moses tokenization for the soft segmenter needs the 'mosestokenizer' package "
            "(pip install mosestokenizer) and perl; or pass --lang zh/ja/none to skip it"
        ) from None
    script = os.path.join(os.path.dirname(mosestokenizer.__file__), "tokenizer-v1.1.perl")
    if not os.path.exists(script):
        raise RuntimeError(f"Moses tokenizer script not found at {script}")
    if shutil.which("perl") is None:
        raise RuntimeError("Moses tokenization needs 'perl' on PATH")
    return script


def tokenize_words(words: Sequence[str], lang: str) -> Dict[str, List[str]]:
    """Tokens of each distinct word (each word tokenized on its own, as one line)."""
    distinct = sorted(set(words))
    if not distinct:
        return {}
    if any("\n" in w for w in distinct):
        raise ValueError("a word to tokenize contains a line break")
    argv = ["perl", _script_path(), "-q", "-l", lang, "-no-escape", "-b", "-a"]
    result = subprocess.run(
        argv, input="\n".join(distinct) + "\n", capture_output=True, text=True,
        encoding="utf-8", check=True,
    )
    lines = result.stdout.split("\n")
    if len(lines) < len(distinct):
        raise RuntimeError(f"Moses tokenizer returned {len(lines)} lines for {len(distinct)} words")
    return {w: line.split() for w, line in zip(distinct, lines)}
