"""Dialogue turns of a window, group rollouts through the runtime, and packed training sequences.

Format: hpo_engine/chat_template.py (ChatML) with a chunk's placeholders as each user turn's content
(P = 14 m with a projector, a variable number with a CTC bridge), or an SST checkpoint's own template.
The k-th placeholder of the dialogue takes the k-th speech row. A sample's training sequence is exactly
what the engine saw:
turn 0, answer 0, turn 1, answer 1, ... with positions 0..T-1, so the trainer's forward recomputes
the sampler's logprobs.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from hpo_engine import chat_template
from hpo_engine.runtime.sampling import SamplingParams
from hpo_engine.train.data import Window


@dataclass
class DialogueFormat:
    first_prefix: list[int]
    turn_prefix: list[int]
    turn_suffix: list[int]
    placeholder_id: int
    stop_id: int
    banned_ids: list[int]

    @classmethod
    def from_config(cls, d, tokenizer, vocab_size: int) -> "DialogueFormat":
        """Template ids from the config when given (tokenizer-less models), else from the tokenizer."""
        def ids(text):
            if tokenizer is None:
                raise ValueError("dialogue template ids are required when the model has no tokenizer "
                                 "(dialogue.first_prefix_ids / turn_prefix_ids / turn_suffix_ids)")
            return tokenizer.encode(text, add_special_tokens=False)

        def special(name):
            if tokenizer is None:
                raise ValueError(f"dialogue: the model has no tokenizer; give the id of {name} in the config")
            tid = tokenizer.convert_tokens_to_ids(name)
            if tid is None or tid == tokenizer.unk_token_id:
                raise ValueError(f"dialogue: the tokenizer has no {name}; give its id in the config")
            return tid

        first = d.first_prefix_ids if d.first_prefix_ids is not None else \
            ids(chat_template.SYSTEM.format(instruction=d.instruction) + chat_template.USER_PREFIX)
        prefix = d.turn_prefix_ids if d.turn_prefix_ids is not None else ids(chat_template.NEXT_USER_PREFIX)
        suffix = d.turn_suffix_ids if d.turn_suffix_ids is not None else ids(chat_template.USER_SUFFIX)
        placeholder = d.placeholder_token_id if d.placeholder_token_id is not None else \
            special(chat_template.SPEECH_PLACEHOLDER)
        stop = d.stop_token_id if d.stop_token_id is not None else special(chat_template.STOP)
        if d.banned_token_ids is not None:
            banned = list(d.banned_token_ids)
        else:  # HPO: every id above <|im_end|> and the newline tokens
            banned = list(range(stop + 1, vocab_size))
            if tokenizer is not None:
                banned += [i for t, i in tokenizer.get_vocab().items() if "\n" in tokenizer.convert_tokens_to_string([t])
                           and i < stop]
        for name, v in (("placeholder", placeholder), ("stop", stop)):
            if not 0 <= v < vocab_size:
                raise ValueError(f"dialogue: {name} token id {v} outside the vocabulary [0, {vocab_size})")
        if stop in banned:
            raise ValueError("dialogue.banned_token_ids: must not contain the stop token")
        return cls(list(first), list(prefix), list(suffix), placeholder, stop, sorted(set(banned)))

    @classmethod
    def from_sst(cls, sst, tokenizer, target_lang: str) -> "DialogueFormat":
        """The template, placeholder, stop and banned ids an SST checkpoint is served with."""
        def ids(text):
            return tokenizer.encode(text, add_special_tokens=False)

        system = sst.system_template.format(instruction=sst.instruction(target_lang))
        return cls(ids(system + sst.user_prefix), ids(sst.next_user_prefix), ids(sst.user_suffix),
                   sst.placeholder_token_id, sst.stop_token_ids[0], sorted(set(sst.banned_token_ids)))

    def user_turn(self, k: int, P: int) -> list[int]:
        return (self.first_prefix if k == 0 else self.turn_prefix) + [self.placeholder_id] * P + self.turn_suffix


class TextCodec:
    """Token ids <-> text. Tokenizer-less models (tests) use one word per id: "t17"."""

    def __init__(self, tokenizer, stop_id: int):
        self.tokenizer, self.stop_id = tokenizer, stop_id

    def decode(self, ids) -> str:
        ids = [i for i in ids if i != self.stop_id]
        if self.tokenizer is None:
            return " ".join(f"t{i}" for i in ids)
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def encode(self, text: str) -> list[int]:
        if self.tokenizer is None:
            return [int(w[1:]) for w in text.split()]
        return self.tokenizer.encode(text, add_special_tokens=False)


@dataclass
class Sample:
    """One trajectory, as generated and as the trainer packs it."""
    window: int                        # index of its window in the step's batch (the reward group)
    answers: list[list[int]]           # token ids per assistant turn (each turn's stop token included)
    input_ids: torch.Tensor            # [T] the whole dialogue
    speech_mask: torch.Tensor          # [T] bool, placeholder positions
    embeds: torch.Tensor               # [n_placeholders * rows, dim]: speech rows (embeddings, or encoder
                                       # frames that the trainer's projector turns into embeddings)
    assistant_mask: torch.Tensor       # [T] bool, generated tokens (the trained ones)
    gen_logprobs: torch.Tensor         # [T] the sampler's logprobs at assistant positions, 0 elsewhere

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.numel())

    @property
    def token_turns(self) -> list[int]:
        return [k for k, a in enumerate(self.answers) for _ in a]


def window_turns(window: Window, fmt: DialogueFormat, dtype=torch.float32, device="cpu", embed_speech=None):
    """(first_turn, later_turns) for `group_rollouts`: one user turn per chunk, with its placeholders.
    `embed_speech(rows) -> [n, H]` maps the window's speech rows to embeddings (default: they are)."""
    embeds = torch.from_numpy(window.embeds).to(device=device)
    if embed_speech is not None:
        with torch.no_grad():
            embeds = embed_speech(embeds)
    embeds = embeds.to(dtype)
    at = window.chunk_starts()
    turns = [(fmt.user_turn(k, window.placeholders[k]), embeds[at[k]:at[k + 1]]) for k in range(window.num_chunks)]
    return turns[0], turns[1:]


def pack_dialogue(window: Window, fmt: DialogueFormat, answers: list[list[int]],
                  logprobs: list[list[float]] | None = None, index: int = 0, dtype=torch.float32,
                  rows_per_embedding: int = 1) -> Sample:
    """The training sequence: user turn k followed by answer k, for every chunk."""
    ids, speech, assistant, lps = [], [], [], []
    for k, answer in enumerate(answers):
        user = fmt.user_turn(k, window.placeholders[k])
        ids += user
        speech += [t == fmt.placeholder_id for t in user]
        assistant += [False] * len(user)
        lps += [0.0] * len(user)
        ids += answer
        speech += [False] * len(answer)
        assistant += [True] * len(answer)
        lps += list(logprobs[k]) if logprobs is not None else [0.0] * len(answer)
    n_rows = window.chunk_starts()[len(answers)] * rows_per_embedding
    return Sample(index, [list(a) for a in answers], torch.tensor(ids, dtype=torch.long),
                  torch.tensor(speech, dtype=torch.bool),
                  torch.from_numpy(window.embeds[:n_rows]).to(dtype),
                  torch.tensor(assistant, dtype=torch.bool), torch.tensor(lps, dtype=torch.float32))


def sampling_params(r, fmt: DialogueFormat, seed: int | None, greedy: bool = False) -> SamplingParams:
    """HPO sampling: temperature 1, top-p 0.999, top-k 10000, banned ids, <= 40*m tokens per turn."""
    return SamplingParams(max_new_tokens=r.max_new_tokens_per_turn, temperature=0.0 if greedy else r.temperature,
                          top_p=1.0 if greedy else r.top_p, top_k=0 if greedy else r.top_k,
                          stop_token_ids=[fmt.stop_id], banned_token_ids=fmt.banned_ids, seed=seed)


def group_rollouts(engine, groups, group_size: int, params: SamplingParams, first_group: int = 0) -> list:
    """GRPO-style groups through the engine in ONE asynchronous batch. Per group (first_turn,
    later_turns), each turn (token_ids, embeds): the first turn is prefilled once and `group_size`
    forks share its blocks; every sample then appends each later turn the moment its previous answer
    ends (no barrier across samples). Sample g of group b is seeded params.seed + (first_group + b) *
    group_size + g (when a seed is given). Returns the DialogueOutputs group by group, sample by sample;
    every stream is closed afterwards."""
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    streams, jobs = [], []
    try:
        for b, (first, later) in enumerate(groups):
            root = engine.open_stream()
            streams.append(root)
            root.append(*first)
            root.prefill()
            group = [root] + [root.fork() for _ in range(group_size - 1)]
            streams += group[1:]
            for g, stream in enumerate(group):
                seed = None if params.seed is None else params.seed + (first_group + b) * group_size + g
                jobs.append((stream, list(later), replace(params, seed=seed)))
        return engine.generate_dialogues(jobs)
    finally:
        for stream in streams:
            stream.close()


def rollout(engine, windows: list[Window], fmt: DialogueFormat, rollout_cfg, seed: int | None,
            group_size: int | None = None, greedy: bool = False, windows_together: int | None = None,
            embed_speech=None, rows_per_embedding: int = 1, first_window: int = 0) -> list[Sample]:
    """B windows x G samples through the runtime (`group_rollouts`): the groups of up to
    `windows_together` windows (default: all, `rollout.windows_together` when set) run in ONE
    asynchronous batch. Samples come window by window. `windows` may be one rank's share of a step's
    batch, starting at batch index `first_window`: window b of the share is the step's window
    first_window + b (its samples' `window`), and its sample g is seeded seed + (first_window + b) * G + g,
    so a sample draws the same tokens whichever rank rolls it out."""
    G = group_size or rollout_cfg.group_size
    together = windows_together or getattr(rollout_cfg, "windows_together", None) or max(len(windows), 1)
    param = next(engine.model.parameters())
    params = sampling_params(rollout_cfg, fmt, seed, greedy)
    samples = []
    for start in range(0, len(windows), together):
        chunk = range(start, min(start + together, len(windows)))
        groups = [window_turns(windows[b], fmt, param.dtype, param.device, embed_speech) for b in chunk]
        outputs = group_rollouts(engine, groups, G, params, first_group=first_window + start)
        for i, out in enumerate(outputs):
            b = start + i // G
            answers = [t.token_ids for t in out.turns]
            logprobs = [t.logprobs for t in out.turns]
            samples.append(pack_dialogue(windows[b], fmt, answers, logprobs, index=first_window + b,
                                         dtype=torch.float32 if embed_speech else param.dtype,
                                         rows_per_embedding=rows_per_embedding))
    return samples


def turn_texts(sample: Sample, codec: TextCodec) -> list[str]:
    return [codec.decode(a) for a in sample.answers]


def banned_vocab_mask(fmt: DialogueFormat, vocab_size: int, device="cpu") -> torch.Tensor:
    mask = torch.zeros(vocab_size, dtype=torch.bool, device=device)
    if fmt.banned_ids:
        mask[torch.tensor([i for i in fmt.banned_ids if 0 <= i < vocab_size], dtype=torch.long)] = True
    return mask


__all__ = ["DialogueFormat", "TextCodec", "Sample", "window_turns", "pack_dialogue", "group_rollouts", "rollout",
           "sampling_params", "turn_texts", "banned_vocab_mask"]
