"""Engine and Stream: the public API of docs/DESIGN.md.

A stream is one dialogue. `append` only records tokens (validated at once, so a bad call changes
nothing); the next `generate` computes them together with the first decode step, so an appended
user turn and the start of the answer cost one forward. The token that ends a turn is itself
pending and is computed with the next turn.
"""
import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hpo_engine.cache.block_manager import BlockManager
from hpo_engine.cache.block_pool import BlockPool
from hpo_engine.cache.kv_cache import KVCache, num_blocks_for
from hpo_engine.models.loader import load_model, load_tokenizer
from hpo_engine.models.quantize import quantize_model
from hpo_engine.runtime.model_runner import ModelRunner
from hpo_engine.runtime.sampling import SamplingParams, sample
from hpo_engine.runtime.scheduler import Scheduler, SchedulerConfig
from hpo_engine.runtime.sequence import Sequence, TokenQueue, token_keys


class StreamClosedError(RuntimeError):
    pass


@dataclass
class GenerationOutput:
    token_ids: list[int]         # the stop token that ended the turn included
    logprobs: list[float]
    finish_reason: str           # "stop" | "length"
    text: str | None = None


@dataclass
class DialogueOutput:
    turns: list[GenerationOutput]

    @property
    def token_ids(self) -> list[int]:
        return [t for turn in self.turns for t in turn.token_ids]

    @property
    def logprobs(self) -> list[float]:
        return [lp for turn in self.turns for lp in turn.logprobs]

    @property
    def token_turns(self) -> list[int]:
        """The turn index of every generated token (its delay is the speech consumed by then)."""
        return [k for k, turn in enumerate(self.turns) for _ in turn.token_ids]


@dataclass
class _Job:
    stream: "Stream"
    later_turns: list
    params: SamplingParams
    generator: torch.Generator | None
    output: DialogueOutput = field(default_factory=lambda: DialogueOutput([GenerationOutput([], [], "length")]))
    turn_started: float = field(default_factory=time.perf_counter)


class Engine:
    def __init__(self, model, tokenizer=None, *, block_size: int = 16, num_blocks: int | None = None,
                 cache_memory: int | float | None = None, placeholder_token_id: int | None = None,
                 max_cache_tokens: int | None = None, max_num_batched_tokens: int = 2048,
                 max_num_seqs: int = 256, cuda_graphs: bool | None = None):
        config = model.config
        param = next(model.parameters())
        if num_blocks is None:
            num_blocks = num_blocks_for(config, block_size, param.dtype, param.device, cache_memory)
        self.model, self.config, self.tokenizer = model, config, tokenizer
        self.placeholder_token_id = placeholder_token_id
        self.pool = BlockPool(num_blocks, block_size)
        self.kv = KVCache(config, num_blocks, block_size, param.dtype, param.device)
        self.blocks = BlockManager(self.pool, self.kv, model.rotate_keys)
        self.runner = ModelRunner(model, self.kv, block_size, cuda_graphs, graph_max_batch=min(max_num_seqs, 128))
        if max_cache_tokens is not None and not 0 < max_cache_tokens < config.max_position_embeddings:
            raise ValueError(f"max_cache_tokens must be in (0, {config.max_position_embeddings}), got {max_cache_tokens}")
        self.scheduler = Scheduler(self.blocks, SchedulerConfig(max_num_batched_tokens, max_num_seqs,
                                                                max_cache_tokens),
                                   config.max_position_embeddings)
        self.streams: dict[int, "Stream"] = {}
        self.running: list[_Job] = []
        self._ids = itertools.count()

    @classmethod
    def from_pretrained(cls, path, device="cpu", dtype=torch.float32, quantize: str | None = None,
                        **options) -> "Engine":
        """Open a Hugging Face model folder (config.json + safetensors [+ tokenizer files]).
        `quantize="int8"`: weight-only int8 projections and LM head (models/quantize.py; CPU serving).
        `options`: block_size, num_blocks or cache_memory, placeholder_token_id, max_cache_tokens,
        max_num_batched_tokens, max_num_seqs, cuda_graphs (None: decode steps replay CUDA graphs on a
        CUDA device; False: eager)."""
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"model folder {path} does not exist")
        model = load_model(path, device=device, dtype=dtype)
        if quantize is not None:
            quantize_model(model, quantize)
        return cls(model, load_tokenizer(path), **options)

    def open_stream(self) -> "Stream":
        stream = Stream(self, Sequence(next(self._ids)))
        self.streams[stream.seq.seq_id] = stream
        return stream

    def generate_many(self, requests: list[tuple["Stream", SamplingParams]]) -> list[GenerationOutput]:
        """One assistant turn for each listed stream, batched together; outputs in request order."""
        return [d.turns[0] for d in self.generate_dialogues([(s, [], p) for s, p in requests])]

    def generate_dialogues(self, jobs: list[tuple["Stream", list, SamplingParams]]) -> list["DialogueOutput"]:
        """Several turns for each stream, all streams batched together and asynchronous.

        A job is (stream, later_turns, params): the stream answers what is already appended, then each
        (token_ids, embeds) of `later_turns` is appended the moment its previous answer ends and
        answered in turn, with no barrier across streams (a group rollout's samples run freely).
        One random generator per job lasts across its turns.
        """
        if len({id(s) for s, _, _ in jobs}) != len(jobs):
            raise ValueError("a stream may appear only once in one call")
        mine = []
        try:
            for stream, turns, params in jobs:
                mine.append(self.submit(stream, params, turns))
            while any(job in self.running for job in mine):
                self.step()
        except BaseException:
            self.running = [job for job in self.running if job not in mine]   # no orphaned jobs
            raise
        return [job.output for job in mine]

    def submit(self, stream: "Stream", params: SamplingParams, later_turns=()) -> "_Job":
        """Start answering `stream` (then its `later_turns`) from the next `step` on: streams join
        and leave the running batch at any step. Returns the job; `job.output` fills as it runs."""
        stream._check_open()
        if stream.seq.num_new == 0:
            raise ValueError(f"stream {stream.seq.seq_id} has nothing to answer: append a turn first")
        if any(job.stream is stream for job in self.running):
            raise ValueError(f"stream {stream.seq.seq_id} is already being answered")
        job = _Job(stream, list(later_turns), params, self._generator(params))
        self.running.append(job)
        return job

    def step(self) -> list["_Job"]:
        """One forward for every running job: schedule, run, postprocess. Returns the jobs that ended."""
        if not self.running:
            return []
        by_seq = {id(job.stream.seq): job for job in self.running}
        seqs = [job.stream.seq for job in self.running]
        batch = self.scheduler.schedule(seqs, self._idle_seqs(seqs))
        logits = self.runner.run(batch)
        finished = self._postprocess(batch, logits, by_seq)
        self.running = [job for job in self.running if job not in finished]
        return finished

    def _postprocess(self, batch, logits, by_seq) -> list["_Job"]:
        """Sample for the sequences whose pending tokens are all computed; end turns; start the next
        turn of a job at once. Returns the jobs with no turn left."""
        self.scheduler.commit(batch)
        ready = [(row, by_seq[id(seq)]) for row, (seq, _) in enumerate(batch) if seq.num_pending == 0]
        if not ready:
            return []
        rows = torch.tensor([row for row, _ in ready], device=logits.device)
        tokens, logprobs = sample(logits[rows], [job.params for _, job in ready],
                                  [job.generator for _, job in ready])
        finished = []
        for (_, job), tok, lp in zip(ready, tokens.tolist(), logprobs.tolist()):
            out, seq = job.output.turns[-1], job.stream.seq
            out.token_ids.append(tok)
            out.logprobs.append(lp)
            seq.pending.push([tok], token_keys([tok], None, None), [False])
            stops = self.config.eos_token_ids if job.params.stop_token_ids is None else job.params.stop_token_ids
            if tok in stops:
                out.finish_reason = "stop"
            elif len(out.token_ids) < job.params.max_new_tokens:
                continue
            self._end_turn(job)
            if job.later_turns:
                job.stream.append(*job.later_turns.pop(0))
                job.output.turns.append(GenerationOutput([], [], "length"))
                job.turn_started = time.perf_counter()
            else:
                finished.append(job)
        return finished

    def _idle_seqs(self, running: list[Sequence]) -> list[Sequence]:
        """Open streams' sequences holding blocks that are not running now (preempted first)."""
        busy = {id(seq) for seq in running}
        return [s.seq for s in self.streams.values() if s.seq.resident and id(s.seq) not in busy]

    def stats(self) -> dict:
        """Engine counters: pool occupancy, prefix hits, preemptions (of which swapped out)."""
        pool, blocks = self.pool, self.blocks
        return {"blocks_used": pool.num_used, "blocks_total": pool.num_blocks, "prefix_hits": pool.prefix_hits,
                "preemptions": blocks.num_preemptions, "swaps": blocks.num_swaps,
                "recomputed_tokens": blocks.num_recomputed_tokens}

    def _end_turn(self, job: "_Job") -> None:
        seq, out = job.stream.seq, job.output.turns[-1]
        seq.in_turn = False
        seq.num_turns += 1
        c = seq.counters
        c.num_generated += len(out.token_ids)
        c.turn_seconds = time.perf_counter() - job.turn_started
        c.total_turn_seconds += c.turn_seconds
        if self.tokenizer is not None:
            out.text = self.tokenizer.decode(out.token_ids, skip_special_tokens=True)

    def _generator(self, params: SamplingParams) -> torch.Generator | None:
        if params.temperature == 0:
            return None
        g = torch.Generator(device=self.kv.device)
        if params.seed is None:
            g.seed()
        else:
            g.manual_seed(params.seed)
        return g

    def reset_prefix_cache(self) -> None:
        """Forget cached prefixes (after a weight update the old K/V no longer match the model)."""
        self.pool.reset_prefix_cache()


class Stream:
    """One dialogue through the engine's paged cache."""

    def __init__(self, engine: Engine, seq: Sequence):
        self.engine, self.seq = engine, seq

    @property
    def num_cached_tokens(self) -> int:
        """Tokens of the dialogue held as context (a preempted stream computes them again first)."""
        return self.seq.num_cached + self.seq.num_recompute

    @property
    def next_position(self) -> int:
        return self.seq.next_position + self.seq.num_recompute

    @property
    def num_blocks(self) -> int:
        return len(self.seq.block_table)

    def _check_open(self):
        if self.seq.closed:
            raise StreamClosedError(f"stream {self.seq.seq_id} is closed")

    def append(self, token_ids, embeds: torch.Tensor | None = None, sink: bool = False) -> None:
        """Queue tokens; `embeds` [n, hidden] fill the n placeholder positions among them, in order.
        `sink=True` marks them as the attention sink (the system prompt): never evicted; only the
        dialogue's first tokens can be the sink."""
        self._check_open()
        seq = self.seq
        engine = self.engine
        token_ids = [int(t) for t in (token_ids.tolist() if torch.is_tensor(token_ids) else token_ids)]
        if not token_ids:
            raise ValueError("append needs at least one token id")
        bad = [t for t in token_ids if not 0 <= t < engine.config.vocab_size]
        if bad:
            raise ValueError(f"token id(s) {bad[:5]} outside the vocabulary [0, {engine.config.vocab_size})")
        ph = engine.placeholder_token_id
        n_ph = sum(t == ph for t in token_ids) if ph is not None else 0
        if embeds is not None:
            if ph is None:
                raise ValueError("embeds given but the engine has no placeholder_token_id")
            if embeds.ndim != 2 or embeds.shape[1] != engine.config.hidden_size:
                raise ValueError(f"embeds must be [n, {engine.config.hidden_size}], got {tuple(embeds.shape)}")
            if embeds.shape[0] != n_ph:
                raise ValueError(f"{embeds.shape[0]} embedding rows for {n_ph} placeholder tokens")
            if not torch.isfinite(embeds).all():
                raise ValueError("embeds contain NaN or infinity")
        elif n_ph:
            raise ValueError(f"{n_ph} placeholder tokens but no embeds")
        if sink and seq.num_sink != seq.num_cached + seq.num_pending:
            raise ValueError("sink tokens must come first in the dialogue")
        if not seq.in_turn:                      # the first append after a generate opens a turn
            seq.turn_starts.append(seq.num_cached + seq.num_pending)
            seq.in_turn = True
        seq.num_sink += len(token_ids) if sink else 0
        seq.pending.push(token_ids, token_keys(token_ids, ph, embeds),
                         [embeds is not None and t == ph for t in token_ids],
                         embeds.detach() if embeds is not None and n_ph else None)

    def generate(self, params: SamplingParams | None = None) -> GenerationOutput:
        return self.engine.generate_many([(self, params or SamplingParams())])[0]

    def prefill(self) -> None:
        """Compute the pending tokens now, all but the last (which the next generate needs for its
        logits), so that forks taken afterwards share them instead of computing them each."""
        self._check_open()
        while self.seq.num_pending > 1:
            batch = self.engine.scheduler.schedule([self.seq], self.engine._idle_seqs([self.seq]))
            batch = [(seq, min(n, seq.num_pending - 1)) for seq, n in batch]
            self.engine.runner.run(batch)
            self.engine.scheduler.commit(batch)

    def stats(self) -> dict:
        """Per-stream counters."""
        seq, c = self.seq, self.seq.counters
        return {"turns": seq.num_turns, "generated_tokens": c.num_generated,
                "cached_tokens": self.num_cached_tokens, "blocks": len(seq.block_table),
                "evicted_tokens": c.num_evicted, "preemptions": c.num_preemptions,
                "recomputed_tokens": c.num_recomputed, "last_turn_s": c.turn_seconds,
                "mean_turn_s": c.total_turn_seconds / max(seq.num_turns, 1)}

    def fork(self) -> "Stream":
        """A new stream with this one's dialogue, sharing its blocks (the partial last block is
        copied when either side writes into it)."""
        self._check_open()
        self.engine.blocks.share(self.seq)
        child = self.engine.open_stream()
        child.seq = self.seq.fork(child.seq.seq_id)
        if child.seq.resident:
            self.engine.scheduler.admit(child.seq)
        return child

    def close(self) -> None:
        """Free every block the stream holds; further use raises StreamClosedError."""
        if self.seq.closed:
            return
        self.engine.running = [job for job in self.engine.running if job.stream is not self]
        self.engine.blocks.free(self.seq)
        self.seq.pending = TokenQueue()
        self.seq.drop_history()
        self.seq.swapped_kv = None
        self.seq.closed = True
        self.engine.streams.pop(self.seq.seq_id, None)
