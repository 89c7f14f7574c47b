"""`sst_config.json`: everything an SST checkpoint folder needs beyond the LLM's own files."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from hpo_engine import chat_template

CONFIG_NAME = "sst_config.json"

LANGUAGE_NAMES = {"de": "German", "fr": "French", "es": "Spanish", "it": "Italian", "pt": "Portuguese",
                  "nl": "Dutch", "ru": "Russian", "zh": "Chinese", "ja": "Japanese", "ko": "Korean"}
UNSPACED_LANGUAGES = ("zh", "ja")   # turn pieces are joined without a space (and latency counts chars)


def default_instructions(source: str = "English") -> dict[str, str]:
    return {code: f"Translate the following speech from {source} to {name}."
            for code, name in LANGUAGE_NAMES.items()}


class SSTConfigError(ValueError):
    """A missing or inconsistent sst_config.json; the message names the field."""


@dataclass
class SSTConfig:
    placeholder_token_id: int
    stop_token_ids: list[int]                 # the token that ends an assistant turn (<|im_end|>)
    banned_token_ids: list[int]               # other special tokens and every id that decodes to a newline
    chunk_ms: int = 1120                      # speech per user turn (HPO: 14 frames of 80 ms)
    frames_per_chunk: int = 14                # placeholders per full user turn (a CTC bridge: at most)
    left_context_ms: int = 4000               # the streaming encoder's bounded left context
    max_new_tokens: int = 40                  # per assistant turn (40 * m in HPO)
    # after the last chunk, up to this many turns with no speech while the text stops mid-sentence: the
    # SFT schedule writes a sentence k chunks after it is heard, so the end of a talk needs k more turns
    closing_turns: int = 2
    max_cache_tokens: int | None = 2048       # per-stream KV window (turn-aligned eviction; system prompt kept)
    # the checkpoint's chat template, split at the speech: turn 0 = system + user_prefix, later turns =
    # next_user_prefix (ChatML writes "\n" after every <|im_end|>, the one closing the answer included)
    system_template: str = chat_template.SYSTEM
    user_prefix: str = chat_template.USER_PREFIX
    next_user_prefix: str = chat_template.NEXT_USER_PREFIX
    user_suffix: str = chat_template.USER_SUFFIX
    instructions: dict[str, str] = field(default_factory=default_instructions)
    default_target_lang: str = "de"
    encoder: dict = field(default_factory=dict)      # EncoderConfig fields
    projector: dict = field(default_factory=dict)    # ProjectorConfig fields (a projector checkpoint)
    bridge: dict = field(default_factory=dict)       # CTCBridgeConfig fields (a CTC-bridge checkpoint)
    transcriber: dict = field(default_factory=dict)  # TranscriberConfig fields (Whisper's decoder as bridge)
    trained: bool = False
    description: str = ""

    def instruction(self, target_lang: str) -> str:
        if target_lang not in self.instructions:
            raise SSTConfigError(f"target language {target_lang!r} is not supported by this checkpoint "
                                 f"(supported: {', '.join(sorted(self.instructions))})")
        return self.instructions[target_lang]

    def with_chunk_multiplier(self, m: int) -> "SSTConfig":
        """HPO's chunk multiplier: m times the speech per turn (and m times the tokens a turn may write)."""
        if m < 1:
            raise SSTConfigError(f"chunk multiplier must be >= 1, got {m}")
        from dataclasses import replace
        return replace(self, chunk_ms=self.chunk_ms * m, frames_per_chunk=self.frames_per_chunk * m,
                       max_new_tokens=self.max_new_tokens * m)

    def validate(self) -> "SSTConfig":
        if self.chunk_ms <= 0 or self.frames_per_chunk <= 0:
            raise SSTConfigError(f"chunk_ms ({self.chunk_ms}) and frames_per_chunk ({self.frames_per_chunk}) "
                                 "must be positive")
        if self.max_new_tokens < 1:
            raise SSTConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.closing_turns < 0:
            raise SSTConfigError(f"closing_turns must be >= 0, got {self.closing_turns}")
        if not self.stop_token_ids:
            raise SSTConfigError("stop_token_ids is empty: nothing would end an assistant turn")
        if self.placeholder_token_id in self.stop_token_ids:
            raise SSTConfigError("placeholder_token_id is also a stop token")
        if self.default_target_lang not in self.instructions:
            raise SSTConfigError(f"default_target_lang {self.default_target_lang!r} has no instruction")
        adapters = [name for name in ("projector", "bridge", "transcriber") if getattr(self, name)]
        if len(adapters) != 1 and (adapters or self.encoder):
            raise SSTConfigError("give exactly one speech adapter: 'projector', 'bridge' or 'transcriber'"
                                 + (f" (got {', '.join(adapters)})" if adapters else ""))
        if "{instruction}" not in self.system_template:
            raise SSTConfigError("system_template lacks the {instruction} field")
        return self

    def save(self, folder: Path) -> None:
        (Path(folder) / CONFIG_NAME).write_text(json.dumps(asdict(self), indent=1, ensure_ascii=False))

    @classmethod
    def load(cls, folder: Path) -> "SSTConfig":
        path = Path(folder) / CONFIG_NAME
        if not path.is_file():
            raise SSTConfigError(f"{folder} is not an SST checkpoint: {CONFIG_NAME} is missing")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise SSTConfigError(f"{path}: invalid JSON ({e.msg} at line {e.lineno})") from None
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise SSTConfigError(f"{path}: unknown field(s) {unknown}")
        try:
            return cls(**raw).validate()
        except TypeError as e:   # a required field missing
            raise SSTConfigError(f"{path}: {e}") from None
