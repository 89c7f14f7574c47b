"""The ChatML dialogue template (docs/DESIGN.md "Dialogue format", Qwen's chat template), written once
for serving (sst/: an SST checkpoint's defaults), training (train/rollout.py) and the CLI's chat.

A dialogue is turn 0 = SYSTEM + USER_PREFIX + content + USER_SUFFIX, then NEXT_USER_PREFIX + content +
USER_SUFFIX for every later turn: ChatML writes "\n" after every <|im_end|>, the one closing the
previous answer included, so a later turn starts with it. The model ends its answer with STOP.
"""
SYSTEM = "<|im_start|>system\n{instruction}<|im_end|>\n"
USER_PREFIX = "<|im_start|>user\n"
NEXT_USER_PREFIX = "\n<|im_start|>user\n"
USER_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"
STOP = "<|im_end|>"
SPEECH_PLACEHOLDER = "<|video_pad|>"      # the Qwen-vocabulary token whose rows speech embeddings fill


def user_turn_text(content: str, system: str | None = None) -> str:
    """The text of one user turn and the assistant header: turn 0 when `system` is given (its
    instruction), a later turn otherwise."""
    head = SYSTEM.format(instruction=system) + USER_PREFIX if system else NEXT_USER_PREFIX
    return head + content + USER_SUFFIX
