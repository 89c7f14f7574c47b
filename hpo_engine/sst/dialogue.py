"""Token ids of the SST dialogue (docs/DESIGN.md "Dialogue format"), with the checkpoint's chat template."""
from __future__ import annotations

from dataclasses import dataclass

from .config import SSTConfig


@dataclass
class DialogueTokens:
    system: list[int]          # turn 0 only: the attention sink
    first_user_prefix: list[int]
    next_user_prefix: list[int]
    user_suffix: list[int]     # closes the user turn and opens the assistant's
    placeholder: int

    @classmethod
    def build(cls, tokenizer, config: SSTConfig, target_lang: str) -> "DialogueTokens":
        def enc(text: str) -> list[int]:
            return tokenizer.encode(text, add_special_tokens=False)
        system = enc(config.system_template.format(instruction=config.instruction(target_lang)))
        return cls(system, enc(config.user_prefix), enc(config.next_user_prefix), enc(config.user_suffix),
                   config.placeholder_token_id)

    def user_turn(self, turn_index: int, num_embeddings: int) -> list[int]:
        """Ids of user turn k (without the system part) holding `num_embeddings` placeholders."""
        prefix = self.first_user_prefix if turn_index == 0 else self.next_user_prefix
        return prefix + [self.placeholder] * num_embeddings + self.user_suffix
