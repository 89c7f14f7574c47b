"""The SST stream: PCM in, translation deltas out (docs/DESIGN.md data flow).

    feed(pcm)  -> the front end encodes every chunk the audio completes; each waits in `pending`
    the next turn: its embeddings become a user turn (placeholders) appended to the engine stream,
      the assistant turn is generated (batched with other streams by `translate_ready`)
    end()      -> the partial last chunk is flushed into `pending` as a shorter user turn
    closing turns: after the last chunk's turn, while the text stops mid-sentence, up to
      `closing_turns` more turns with an empty user turn (the silence after a talk) let the model finish

A stream never generates ahead of its audio: one assistant turn per chunk, in order.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch

from hpo_engine.runtime.sampling import SamplingParams
from hpo_engine.speech.audio import SAMPLE_RATE, pcm16_to_float

from .checkpoint import SSTModel
from .config import UNSPACED_LANGUAGES
from .dialogue import DialogueTokens

SENTENCE_END = (".", "?", "!", "…", "。", "？", "！")     # of the target text (closing turns stop there)
CLOSING_QUOTES = "\"'”’»」』"


@dataclass
class TranslationDelta:
    text: str                 # new text (may be empty: the model waits)
    audio_ms: float           # source audio consumed when this turn was generated
    elapsed_ms: float         # wall ms from the stream's start to this delta
    processing_ms: float      # wall ms from the chunk's completion (its last sample fed) to this delta
    turn: int
    token_ids: list[int] = field(default_factory=list)


@dataclass
class PendingChunk:
    embeds: torch.Tensor      # [<= P, d_llm]
    audio_ms: float
    completed_at: float       # clock() when its last sample arrived (or its end() was called)


class SSTStream:
    def __init__(self, model: SSTModel, target_lang: str | None = None, max_new_tokens: int | None = None,
                 clock=time.perf_counter, closing_turns: int | None = None):
        cfg = model.config
        self.model, self.clock = model, clock
        self.target_lang = target_lang or cfg.default_target_lang
        self.tokens = DialogueTokens.build(model.tokenizer, cfg, self.target_lang)   # raises on unknown lang
        self.params = SamplingParams(max_new_tokens=max_new_tokens or cfg.max_new_tokens, temperature=0.0,
                                     stop_token_ids=list(cfg.stop_token_ids),
                                     banned_token_ids=list(cfg.banned_token_ids))
        self.frontend = model.new_frontend()
        self.stream = model.engine.open_stream()
        self.pending: deque[PendingChunk] = deque()
        self.samples_fed = 0
        self.chunks_made = 0
        self.turns_done = 0
        self.text = ""
        self.ended = False
        self.started_at = clock()
        self.encode_seconds = 0.0
        self.in_flight = None       # (PendingChunk, engine job) while a turn runs under step_streams
        self.closing_turns = cfg.closing_turns if closing_turns is None else closing_turns
        self.closing_left = self.closing_turns
        self.last_chunk: PendingChunk | None = None     # the last turn's chunk (closing turns copy its times)

    @property
    def audio_ms(self) -> float:
        return self.samples_fed * 1000 / SAMPLE_RATE

    @property
    def ready(self) -> bool:
        return bool(self.pending)

    @property
    def finished(self) -> bool:
        return self.ended and not self.pending and self.in_flight is None

    def feed(self, pcm, arrived_at: float | None = None) -> int:
        """PCM s16le bytes or float32 samples (16 kHz mono), any length. Returns the chunks completed.
        `arrived_at` (clock time the audio reached the system, default now) starts the chunk's clock,
        so time spent queued before this call counts in `processing_ms`."""
        if self.ended:
            raise RuntimeError("feed after end()")
        wave = pcm16_to_float(pcm, allow_empty=True) if isinstance(pcm, (bytes, bytearray, memoryview)) \
            else np.asarray(pcm, dtype=np.float32)
        start = self.clock()
        embeds = self.frontend.push(wave)      # validates (mono, finite) before changing any state
        self.samples_fed += len(wave)
        self._queue(embeds, start, start if arrived_at is None else min(arrived_at, start))
        return len(embeds)

    def end(self, arrived_at: float | None = None) -> None:
        """No more audio: the partial last chunk (if any) becomes the last user turn."""
        if self.ended:
            return
        start = self.clock()
        self._queue(self.frontend.flush(), start, start if arrived_at is None else min(arrived_at, start))
        self.ended = True
        if not self.pending and self.in_flight is None and self.last_chunk is not None:
            self._close_sentence(self.last_chunk, waited=False)     # the audio ended on a chunk's edge

    def _queue(self, embeds: list[torch.Tensor], start: float, arrived_at: float) -> None:
        self.encode_seconds += self.clock() - start
        chunk_samples = self.frontend.chunk_samples
        for e in embeds:
            self.chunks_made += 1
            ms = min(self.chunks_made * chunk_samples, self.samples_fed) * 1000 / SAMPLE_RATE
            self.pending.append(PendingChunk(e, ms, arrived_at))

    def append_next_turn(self) -> PendingChunk:
        """Append the oldest pending chunk as the next user turn of the engine stream."""
        chunk = self.pending.popleft()
        ids = self.tokens.user_turn(self.turns_done, len(chunk.embeds))
        if self.turns_done == 0:
            self.stream.append(self.tokens.system, sink=True)   # the system prompt never leaves the window
        self.stream.append(ids, embeds=chunk.embeds)
        return chunk

    def accept(self, chunk: PendingChunk, output) -> TranslationDelta:
        """Turn the generated assistant turn into a text delta."""
        piece = (output.text or "").replace("\n", " ")
        if piece.strip() and self.text and not self.text[-1].isspace() and not piece[0].isspace() \
                and self.target_lang not in UNSPACED_LANGUAGES:
            piece = " " + piece      # turns are pieces of one running text
        if not self.text:
            piece = piece.lstrip()
        if not piece.strip():
            piece = ""
        self.text += piece
        now = self.clock()
        delta = TranslationDelta(piece, chunk.audio_ms, (now - self.started_at) * 1000,
                                 (now - chunk.completed_at) * 1000, self.turns_done, list(output.token_ids))
        self.turns_done += 1
        self.last_chunk = chunk
        if self.ended and not self.pending:
            self._close_sentence(chunk, waited=not piece)
        return delta

    def _close_sentence(self, last: PendingChunk, waited: bool) -> None:
        """After the last chunk's turn: one more turn on no speech while the text stops mid-sentence
        (not after a closing turn in which the model chose to wait)."""
        closing = self.closing_left < self.closing_turns
        if self.closing_left <= 0 or (closing and waited) or not self.text.strip() \
                or self.text.rstrip().rstrip(CLOSING_QUOTES).endswith(SENTENCE_END):
            return
        self.closing_left -= 1
        self.pending.append(PendingChunk(last.embeds[:0], last.audio_ms, last.completed_at))

    def push(self, pcm) -> list[TranslationDelta]:
        """Single-stream convenience: feed, then translate every completed chunk."""
        self.feed(pcm)
        return self.drain()

    def finish(self) -> list[TranslationDelta]:
        self.end()
        return self.drain()

    def drain(self) -> list[TranslationDelta]:
        out = []
        while self.ready:
            out += [d for _, d in translate_ready([self])]
        return out

    def close(self) -> None:
        """Free the stream's KV blocks (idempotent)."""
        self.stream.close()

    def stats(self) -> dict:
        return {**self.stream.stats(), "audio_ms": self.audio_ms, "encode_s": self.encode_seconds,
                "chunks": self.chunks_made}


def translate_ready(streams: list[SSTStream]) -> list[tuple[SSTStream, TranslationDelta]]:
    """One turn for every stream with a pending chunk, all batched in one engine.generate_many."""
    ready = [s for s in streams if s.ready]
    if not ready:
        return []
    engine = ready[0].model.engine
    if any(s.model.engine is not engine for s in ready):
        raise ValueError("streams of different engines cannot be batched together")
    chunks = [s.append_next_turn() for s in ready]
    outputs = engine.generate_many([(s.stream, s.params) for s in ready])
    return [(s, s.accept(c, o)) for s, c, o in zip(ready, chunks, outputs)]


def step_streams(streams: list[SSTStream]) -> list[tuple[SSTStream, TranslationDelta]]:
    """One engine step with continuous batching across turns: every stream with a ready chunk and no
    turn in flight starts its next turn (joining the running batch at once, not after the others'
    turns), then one forward for all; the turns that ended become deltas."""
    live = [s for s in streams if s.in_flight is not None or s.ready]
    if not live:
        return []
    engine = live[0].model.engine
    if any(s.model.engine is not engine for s in live):
        raise ValueError("streams of different engines cannot be batched together")
    for s in live:
        if s.in_flight is None:
            chunk = s.append_next_turn()
            s.in_flight = (chunk, engine.submit(s.stream, s.params))
    ended = engine.step()
    out = []
    for s in live:
        chunk, job = s.in_flight
        if job in ended:
            s.in_flight = None
            out.append((s, s.accept(chunk, job.output.turns[0])))
    return out
