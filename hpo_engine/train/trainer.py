"""SFT and HPO training on the engine's own rollouts.

`hpo_step` is the whole RL algorithm, read top to bottom: rollout -> reward -> advantage -> update.
The engine holds the very model object being trained (no weight copy); after every update its
cached prefixes (K/V computed under the old weights) are dropped.
"""
from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hpo_engine.metrics.quality import corpus_bleu, corpus_chrf, default_bleu_tokenizer
from hpo_engine.models.loader import load_model, load_tokenizer
from hpo_engine.rl.loss import policy_loss
from hpo_engine.rl.reward import hierarchical_reward
from hpo_engine.runtime.engine import Engine
from hpo_engine.train import checkpoint as ckpt
from hpo_engine.sst.adapter import apply_adapter, read_adapter
from hpo_engine.sst.config import SSTConfig
from hpo_engine.train.config import ConfigError, TrainConfig
from hpo_engine.train.data import WindowLoader, load_window, read_manifest
from hpo_engine.train.policy import all_assistant_logprobs, assistant_logprobs, micro_batches, pad_rows
from hpo_engine.train.reward import (QualityScorer, aligned_groups, batch_scores, hypothesis_text,
                                     sentence_instances, window_stream_laal)
from hpo_engine.train.rollout import (DialogueFormat, TextCodec, banned_vocab_mask, pack_dialogue, rollout,
                                      turn_texts)
from hpo_engine.train.export import export_sst
from hpo_engine.train.sft import sft_answers
from hpo_engine.train.trainable import Trainable, frozen_copy, select

# Metrics of policy_loss that are token means over the global batch: they add up over micro-batches.
SUMMED = ("loss", "pg_loss", "kl_loss", "kl", "clip_frac_low", "clip_frac_high", "dual_clip_frac",
          "ratio_mean", "is_weight_mean", "logprob_error", "entropy")


class MasterWeights:
    """float32 master copies of a low-precision (bf16) model's trained parameters. AdamW steps the
    masters and the results are cast back into the model's own tensors in place (the engine keeps
    using them); without this, updates of lr 1e-6 are below bf16's resolution and vanish."""

    def __init__(self, params: list[torch.Tensor]):
        self.pairs = [(p, p.detach().float().clone()) for p in params]

    @property
    def params(self) -> list[torch.Tensor]:
        return [m for _, m in self.pairs]

    def grads_to_master(self) -> None:
        for p, m in self.pairs:
            m.grad = None if p.grad is None else p.grad.float()

    @torch.no_grad()
    def master_to_model(self) -> None:
        for p, m in self.pairs:
            p.copy_(m)

    def state(self) -> dict:
        return {f"master.{i}": m for i, (_, m) in enumerate(self.pairs)}

    @torch.no_grad()
    def load(self, tensors: dict) -> None:
        for i, (_, m) in enumerate(self.pairs):
            m.copy_(tensors[f"master.{i}"])
        self.master_to_model()


@dataclass
class Run:
    cfg: TrainConfig
    model: torch.nn.Module
    trainable: Trainable                   # what the update changes (LLM weights, LoRA, projector)
    ref_model: torch.nn.Module | None      # frozen initial LLM (HPO's KL reference) when LLM weights train
    ref_projector: torch.nn.Module | None  # frozen initial projector (SST checkpoints)
    sst: SSTConfig | None                  # set when model.path is an SST checkpoint
    engine: Engine
    optimizer: torch.optim.Optimizer
    fmt: DialogueFormat
    codec: TextCodec
    banned: torch.Tensor                   # [V] bool, ids the sampler never draws
    loader: WindowLoader
    valid: list                            # validation windows (may be empty)
    out_dir: Path
    scorer: QualityScorer
    master: MasterWeights | None = None    # fp32 masters when the model is not float32
    embedder: object | None = None         # sentence embedder of the embedding segmenter (reward.segmenter)
    continued_lora: bool = False           # the LoRA continues the base checkpoint's (it replaces it on export)

    @property
    def rows_per_embedding(self) -> int:
        """Speech rows per placeholder: encoder frames per embedding with a projector, else 1."""
        return self.trainable.projector.cfg.stack if self.trainable.projector is not None else 1

    @property
    def embed_speech(self):
        return self.trainable.embed_speech if self.trainable.projector is not None else None


def step_seed(cfg: TrainConfig, step: int) -> int:
    """Rollout seed of a step (sample g of window b adds b * G + g): a resumed run samples the same."""
    return cfg.seed * 1_000_003 + step * 65_537


def setup(cfg: TrainConfig) -> Run:
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    import random
    random.seed(cfg.seed)
    dtype, m, d = getattr(torch, cfg.model.dtype), cfg.model, cfg.dialogue
    model = load_model(m.path, device=m.device, dtype=dtype)
    tokenizer = load_tokenizer(m.path)
    sst, projector, encode_audio = open_speech_parts(cfg)
    # an SST checkpoint trained before (SFT before HPO): start from its weights. Its LoRA update is
    # trained on (not stacked under a new one) when this run trains a LoRA of the same shape.
    base_adapter = read_adapter(m.path) if sst is not None else None
    continued = continued_lora(base_adapter, model, m)
    if base_adapter:
        apply_adapter(model, {k: v for k, v in base_adapter.items() if k not in continued})
    if sst is not None:
        fmt = DialogueFormat.from_sst(sst, tokenizer, d.target_lang)
    else:
        fmt = DialogueFormat.from_config(d, tokenizer, model.config.vocab_size)
    trainable = select(model, m.train_llm, projector, m.train_projector, m.lora_rank, m.lora_alpha,
                       m.lora_targets, cfg.seed)
    if continued:
        trainable.lora.load_scaled_tensors({k[5:]: v for k, v in continued.items()})
    engine = Engine(model, tokenizer, placeholder_token_id=fmt.placeholder_id, num_blocks=m.num_blocks,
                    block_size=m.block_size)
    ref_model = None
    if cfg.mode == "hpo" and (continued or any(p.requires_grad for p in model.parameters())):
        # reloaded from the base folder, so a resumed run has the same reference
        ref_model = load_model(m.path, device=m.device, dtype=dtype).requires_grad_(False)
        if base_adapter:
            apply_adapter(ref_model, base_adapter)
    params = trainable.parameters()
    master = MasterWeights(params) if dtype != torch.float32 else None
    optimizer = torch.optim.AdamW(master.params if master else params, lr=cfg.optim.lr,
                                  weight_decay=cfg.optim.weight_decay, betas=tuple(cfg.optim.betas))
    rows = d.frames_per_chunk * (projector.cfg.stack if projector is not None else 1)
    loader = WindowLoader(read_manifest(cfg.data.train), rows, d.chunks_per_window, seed=cfg.seed,
                          shuffle=cfg.data.shuffle, encode_audio=encode_audio)
    valid = [load_window(r, rows, d.chunks_per_window, encode_audio)
             for r in read_manifest(cfg.data.valid)] if cfg.data.valid else []
    scorer = QualityScorer(cfg.reward.quality, d.target_lang, cfg.reward.quality_model_path, m.device) \
        if cfg.mode == "hpo" else QualityScorer("chrf")
    embedder = None
    if cfg.reward.segmenter == "embedding":
        from hpo_engine.metrics.embed_align import MiniLMEmbedder
        embedder = MiniLMEmbedder(cfg.reward.embedder_path, device=m.device)
    return Run(cfg, model, trainable, ref_model, frozen_copy(projector), sst, engine, optimizer, fmt,
               TextCodec(tokenizer, fmt.stop_id), banned_vocab_mask(fmt, model.config.vocab_size), loader, valid,
               Path(cfg.output_dir), scorer, master, embedder, bool(continued))


def continued_lora(base_adapter, model, m) -> dict:
    """The base adapter's lora.* tensors when this run trains a LoRA of the same rank on the same
    layers (then it continues training them), else {} (a new LoRA goes on top of the merged base)."""
    if not base_adapter or m.train_llm != "lora":
        return {}
    lora = {k: v for k, v in base_adapter.items() if k.startswith("lora.")}
    wanted = {f"lora.{ab}.{n.replace('.', '__')}" for n, mod in model.named_modules()
              if isinstance(mod, torch.nn.Linear) and n.rsplit(".", 1)[-1] in m.lora_targets for ab in "AB"}
    same = set(lora) == wanted and all(v.shape[0 if k.startswith("lora.A.") else 1] == m.lora_rank
                                       for k, v in lora.items())
    return lora if same else {}


def open_speech_parts(cfg: TrainConfig):
    """(SSTConfig, projector, encode_audio) of an SST checkpoint folder, or (None, None, None) for a plain
    LLM. The chunk geometry of the config must be the checkpoint's (what serving will use)."""
    from hpo_engine.sst.config import CONFIG_NAME
    folder = Path(cfg.model.path)
    if not (folder / CONFIG_NAME).is_file():
        return None, None, None
    from hpo_engine.sst.checkpoint import ENCODER_FILE, PROJECTOR_FILE, load_module
    from hpo_engine.speech import EncoderConfig, Projector, ProjectorConfig, WhisperEncoder

    sst = SSTConfig.load(folder)
    d = cfg.dialogue
    if d.frames_per_chunk != sst.frames_per_chunk:
        raise ConfigError(f"dialogue.frames_per_chunk: {d.frames_per_chunk}, but the SST checkpoint's is "
                          f"{sst.frames_per_chunk}")
    if abs(d.chunk_seconds * 1000 - sst.chunk_ms) > 1e-6:
        raise ConfigError(f"dialogue.frame_seconds: chunks of {d.chunk_seconds * 1000:g} ms, but the SST "
                          f"checkpoint's are {sst.chunk_ms} ms")
    sst.instruction(d.target_lang)      # an unsupported language fails here, naming it
    projector = load_module(Projector(ProjectorConfig(**sst.projector)), folder / PROJECTOR_FILE)
    projector = projector.to(cfg.model.device).float().train()
    @functools.cache
    def encoder() -> WhisperEncoder:      # loaded on the first `audio` window only
        return load_module(WhisperEncoder(EncoderConfig(**sst.encoder)), folder / ENCODER_FILE)

    def encode_audio(path, start_s: float, end_s: float) -> np.ndarray:
        """Encoder frames of [start_s, end_s] of an audio file, streamed as serving streams it."""
        from hpo_engine.speech.audio import SAMPLE_RATE, load_audio
        from hpo_engine.speech.frontend import FRAME_MS
        from hpo_engine.speech.streaming import StreamingEncoder
        wave = load_audio(path)[int(start_s * SAMPLE_RATE):int(end_s * SAMPLE_RATE)]
        stream = StreamingEncoder(encoder(), sst.chunk_ms // FRAME_MS, sst.left_context_ms // FRAME_MS)
        with torch.inference_mode():
            frames = torch.cat([stream.push(wave), stream.flush()])
        return frames.float().numpy()

    return sst, projector, encode_audio


def optimizer_step(run: Run) -> float:
    """Clip the gradient norm, step AdamW (on the fp32 masters for a bf16 model); returns the norm."""
    params = run.trainable.parameters()
    if run.master is not None:
        run.master.grads_to_master()
        params = run.master.params
    norm = float(torch.nn.utils.clip_grad_norm_(params, run.cfg.optim.grad_clip))
    run.optimizer.step()
    if run.master is not None:
        run.master.master_to_model()
    return norm


def hpo_step(run: Run, step: int) -> dict:
    """One HPO step: B x G rollouts, hierarchical reward, several clipped policy-gradient updates."""
    cfg, d = run.cfg, run.cfg.dialogue
    P, T = d.frames_per_chunk, cfg.rollout.temperature
    t0 = time.perf_counter()

    # 1. rollout: B windows x G samples through the runtime, on the live weights
    run.engine.reset_prefix_cache()     # no prefix computed in another batch (validation): exact resume
    windows = run.loader.next_batch(cfg.rollout.windows_per_step)
    samples = rollout(run.engine, windows, run.fmt, cfg.rollout, P, seed=step_seed(cfg, step),
                      embed_speech=run.embed_speech, rows_per_embedding=run.rows_per_embedding)
    t1 = time.perf_counter()

    # 2. reward: per-segment quality and latency -> hierarchical reward, z-scored within each window's group
    groups = [aligned_groups(turn_texts(s, run.codec), windows[s.window].references, windows[s.window].segments,
                             d.target_lang, d.chunk_seconds, cfg.reward.max_latency, run.embedder) for s in samples]
    quality = batch_scores(run.scorer, groups, [windows[s.window].sources for s in samples])
    latency = [[g.latency for g in gs] for gs in groups]
    rw = cfg.reward
    rewards, parts = hierarchical_reward(quality, latency, [s.window for s in samples], alpha=rw.alpha,
                                         beta=rw.beta, quality_threshold=rw.quality_threshold,
                                         max_latency=rw.max_latency, granularity=rw.granularity,
                                         return_parts=True)
    # 3. advantage: the reward itself (GRPO-style, already group-normalised), on every assistant token
    advantages = torch.tensor(rewards, dtype=torch.float32)
    t2 = time.perf_counter()

    # 4. logprobs the loss compares with: old = trainer at the rollout weights, ref = frozen initial
    #    model, gen = the sampler's own (their gap is the train / inference mismatch)
    mb_tokens = cfg.optim.max_tokens_per_microbatch
    old = all_assistant_logprobs(run.model, samples, run.banned, T, mb_tokens, run.embed_speech)
    ref = reference_logprobs(run, samples)
    gen = [s.gen_logprobs[s.assistant_mask].to(old[0].device) for s in samples]
    t_logprobs = time.perf_counter() - t2

    # 5. update: shuffled global batches; token-packed micro-batches; exact token mean over the global batch
    order = np.random.default_rng([cfg.seed, step]).permutation(len(samples))
    sums: dict[str, float] = {}
    grad_norms, update_tokens = [], 0
    for start in range(0, len(samples), cfg.optim.global_batch):
        batch = order[start:start + cfg.optim.global_batch]
        run.trainable.zero_grad()
        m = accumulate_policy_gradient(run, samples, batch, old, ref, gen, advantages)
        for k in SUMMED:
            sums[k] = sums.get(k, 0.0) + m.get(k, 0.0)
        update_tokens += sum(samples[i].num_tokens for i in batch)
        grad_norms.append(optimizer_step(run))
    run.engine.reset_prefix_cache()     # K/V cached under the old weights no longer match the model
    t3 = time.perf_counter()

    n_updates = len(grad_norms)
    gen_tokens = sum(len(g) for g in gen)
    return {"reward_mean": float(np.mean(rewards)), "reward_std": float(np.std(rewards)),
            "quality_mean": float(np.mean(parts["quality"])), "latency_mean": float(np.mean(parts["latency"])),
            "latency_term_mean": float(np.mean(parts["latency_term"])),
            **{k: v / n_updates for k, v in sums.items()},
            "grad_norm": float(np.mean(grad_norms)), "updates": n_updates, "samples": len(samples),
            "gen_tokens": gen_tokens, "rollout_s": t1 - t0, "reward_s": t2 - t1, "update_s": t3 - t2,
            "old_ref_logprobs_s": t_logprobs,
            "rollout_tokens_per_s": gen_tokens / max(t1 - t0, 1e-9),
            "update_tokens_per_s": update_tokens / max(t3 - t2, 1e-9)}


def reference_logprobs(run: Run, samples) -> list[torch.Tensor]:
    """Logprobs under the frozen initial policy, with the initial projector: a reloaded LLM when LLM
    weights train or a LoRA continues the base's, else the live LLM itself (a new LoRA switched off)."""
    cfg = run.cfg
    args = (samples, run.banned, cfg.rollout.temperature, cfg.optim.max_tokens_per_microbatch, run.ref_projector)
    if run.ref_model is not None:
        return all_assistant_logprobs(run.ref_model, *args)
    if run.trainable.lora is not None:
        with run.trainable.lora.disabled():
            return all_assistant_logprobs(run.model, *args)
    return all_assistant_logprobs(run.model, *args)


def accumulate_policy_gradient(run: Run, samples, batch, old, ref, gen, advantages) -> dict:
    """Backward of `policy_loss` over one global batch in token-packed micro-batches. Every
    micro-batch divides by the global batch's token count, so the summed gradient (and the summed
    token-mean metrics) are those of one call on the whole batch."""
    cfg, lc = run.cfg, run.cfg.loss
    num_global_tokens = sum(len(gen[i]) for i in batch)
    sums: dict[str, float] = {}
    for mb in micro_batches(samples, batch, cfg.optim.max_tokens_per_microbatch):
        cur, ent = assistant_logprobs(run.model, [samples[i] for i in mb], run.banned, cfg.rollout.temperature,
                                      entropy=True, checkpointing=cfg.optim.gradient_checkpointing,
                                      embed_speech=run.embed_speech)
        lp, mask = pad_rows(cur)
        W = lp.shape[1]
        loss, m = policy_loss(lp, pad_rows([old[i] for i in mb], W)[0], pad_rows([ref[i] for i in mb], W)[0],
                              pad_rows([gen[i] for i in mb], W)[0], advantages[list(mb)].to(lp.device), mask,
                              clip_eps_low=lc.clip_eps_low, clip_eps_high=lc.clip_eps_high,
                              dual_clip_c=lc.dual_clip_c, kl_coef=lc.kl_coef,
                              on_policy_kl_weight=lc.on_policy_kl_weight,
                              importance_sampling=lc.importance_sampling, is_cap=lc.is_cap,
                              num_global_tokens=num_global_tokens, entropy=pad_rows(ent, W)[0])
        loss.backward()
        for k in SUMMED:
            sums[k] = sums.get(k, 0.0) + m.get(k, 0.0)
    return sums


def sft_step(run: Run, step: int) -> dict:
    """One SFT update: cross-entropy (token mean) on the assistant tokens of rule-built trajectories."""
    cfg, d = run.cfg, run.cfg.dialogue
    t0 = time.perf_counter()
    windows = run.loader.next_batch(cfg.sft.batch_size)
    samples = [pack_dialogue(w, run.fmt, d.frames_per_chunk,
                             sft_answers(w, run.codec, d.chunk_seconds, cfg.sft.lag_chunks, d.target_lang,
                                         run.fmt.stop_id), index=b, rows_per_embedding=run.rows_per_embedding)
               for b, w in enumerate(windows)]
    num_global_tokens = sum(int(s.assistant_mask.sum()) for s in samples)
    run.trainable.zero_grad()
    total = 0.0
    for mb in micro_batches(samples, range(len(samples)), cfg.optim.max_tokens_per_microbatch):
        lps, _ = assistant_logprobs(run.model, [samples[i] for i in mb],   # full softmax, temperature 1
                                    checkpointing=cfg.optim.gradient_checkpointing, embed_speech=run.embed_speech)
        loss = -torch.cat(lps).sum() / num_global_tokens
        loss.backward()
        total += float(loss.detach())
    grad_norm = optimizer_step(run)
    run.engine.reset_prefix_cache()
    seconds = time.perf_counter() - t0
    tokens = sum(s.num_tokens for s in samples)
    return {"sft_loss": total, "grad_norm": grad_norm, "target_tokens": num_global_tokens, "update_s": seconds,
            "update_tokens_per_s": tokens / max(seconds, 1e-9)}


def validate(run: Run) -> dict:
    """Greedy rollouts on the held-out windows: corpus BLEU / chrF of the window hypotheses,
    StreamLAAL (ms, over all sentences) and the mean HPO segment latency (s)."""
    if not run.valid:
        return {}
    d = run.cfg.dialogue
    run.engine.reset_prefix_cache()
    samples = rollout(run.engine, run.valid, run.fmt, run.cfg.rollout, d.frames_per_chunk, seed=None,
                      group_size=1, greedy=True, embed_speech=run.embed_speech,
                      rows_per_embedding=run.rows_per_embedding)
    hyps, refs, latency, sentences = [], [], [], []
    for s in samples:
        w = run.valid[s.window]
        texts = turn_texts(s, run.codec)
        hyps.append(hypothesis_text(texts, d.target_lang))
        refs.append(hypothesis_text(w.references, d.target_lang))
        groups = aligned_groups(texts, w.references, w.segments, d.target_lang, d.chunk_seconds,
                                run.cfg.reward.max_latency, run.embedder)
        latency += [g.latency for g in groups]
        sentences += sentence_instances(groups, w.segments)
    return {"BLEU": corpus_bleu(hyps, refs, default_bleu_tokenizer(d.target_lang)), "chrF": corpus_chrf(hyps, refs),
            "StreamLAAL": window_stream_laal(sentences, d.target_lang), "latency": float(np.mean(latency))}


def _log(path: Path, record: dict, tensorboard=None) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
    if tensorboard is not None:
        flat = {**{k: v for k, v in record.items() if k != "validation"},
                **{f"validation/{k}": v for k, v in (record.get("validation") or {}).items()}}
        for k, v in flat.items():
            if isinstance(v, (int, float)) and k != "step":
                tensorboard.add_scalar(k, v, record["step"])


def _tensorboard(out_dir: Path):
    """A SummaryWriter under OUTPUT_DIR/tensorboard when the tensorboard package is installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out_dir / "tensorboard"))


def train(cfg: TrainConfig, resume: bool = False) -> list[dict]:
    """Run `cfg.train.steps` steps (continuing from the latest checkpoint with `resume`); returns the
    metrics of the steps run here, also appended to OUTPUT_DIR/metrics.jsonl. From an SST checkpoint,
    the result is also written as one: OUTPUT_DIR/sst (serve it with `hpo-engine serve --model`)."""
    from tqdm.auto import tqdm

    run = setup(cfg)
    run.out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_root, metrics_path = run.out_dir / "checkpoints", run.out_dir / "metrics.jsonl"
    start = 0
    if resume:
        found, tensors, state = ckpt.resume_checkpoint(ckpt_root, run.optimizer)   # the newest intact one
        run.trainable.load_state(tensors, str(found))
        if run.master is not None:
            run.master.load(ckpt.load_extra(found))
        run.loader.load_state(state["data"])
        start = state["step"]
        run.engine.reset_prefix_cache()
        if metrics_path.is_file():   # drop lines of steps after the checkpoint (they will be redone)
            keep = [l for l in metrics_path.read_text().splitlines() if json.loads(l).get("step", 0) <= start]
            metrics_path.write_text("".join(l + "\n" for l in keep))
    elif metrics_path.is_file():
        metrics_path.unlink()
    (run.out_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))

    t = cfg.train
    step_fn = hpo_step if cfg.mode == "hpo" else sft_step
    history = []
    tensorboard = _tensorboard(run.out_dir) if t.tensorboard else None
    bar = tqdm(range(start + 1, t.steps + 1), initial=start, total=t.steps, disable=not t.progress_bar,
               desc=cfg.mode)
    for step in bar:
        record = {"step": step, **step_fn(run, step)}
        validation = None
        if run.valid and (step % t.validate_every == 0 or step % t.checkpoint_every == 0 or step == t.steps):
            validation = validate(run)
            record["validation"] = validation
        _log(metrics_path, record, tensorboard)
        history.append(record)
        bar.set_postfix({k: f"{record[k]:.3g}" for k in ("quality_mean", "kl", "sft_loss") if k in record})
        if step % t.checkpoint_every == 0 or step == t.steps:
            ckpt.save_checkpoint(ckpt_root, step, run.trainable.state(), run.optimizer,
                                 {"data": run.loader.state(), "validation": validation}, Path(cfg.model.path),
                                 extra=run.master.state() if run.master is not None else None)
            ckpt.prune(ckpt_root, t.keep_best, t.validation_metric)
    if tensorboard is not None:
        tensorboard.close()
    if run.sst is not None:     # also after a resume with nothing left to run: the checkpoint's weights
        last = (history[-1].get("validation") if history else None) or {}
        export_sst(run, run.out_dir / "sst", f"{cfg.mode.upper()} from {Path(cfg.model.path).name}, "
                   f"{cfg.train.steps} steps (train_llm={cfg.model.train_llm}); last validation: "
                   + ", ".join(f"{k} {v:.3g}" for k, v in last.items() if isinstance(v, float)))
    return history
