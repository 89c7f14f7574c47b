"""The training loop: SFT or HPO steps (train/hpo.py, train/sft.py) on a run wired by train/run.py,
with validation, logging (metrics.jsonl, tensorboard), checkpoints, resume, and the SST export."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from hpo_engine.metrics.quality import corpus_bleu, corpus_chrf, default_bleu_tokenizer
from hpo_engine.metrics.segment_latency import join_turns
from hpo_engine.train import checkpoint as ckpt
from hpo_engine.train.config import TrainConfig
from hpo_engine.train.distributed import close_world
from hpo_engine.train.export import export_sst
from hpo_engine.train.hpo import hpo_step
from hpo_engine.train.reward import aligned_groups, sentence_instances, window_stream_laal
from hpo_engine.train.rollout import rollout, turn_texts
from hpo_engine.train.run import Run, setup
from hpo_engine.train.sft import sft_step

log = logging.getLogger("hpo_engine.train")


def validate(run: Run) -> dict:
    """Greedy rollouts on the held-out windows (each rank its share): corpus BLEU / chrF of the window
    hypotheses, StreamLAAL (ms, over all sentences) and the mean HPO segment latency (s)."""
    if not run.valid:
        return {}
    d = run.cfg.dialogue
    run.engine.reset_prefix_cache()
    mine = run.world.share(len(run.valid))
    samples = rollout(run.engine, run.valid[mine.start:mine.stop], run.fmt, run.cfg.rollout, seed=None,
                      group_size=1, greedy=True, embed_speech=run.embed_speech,
                      rows_per_embedding=run.rows_per_embedding, first_window=mine.start)
    scored = []         # per window: hypothesis, reference, segment latencies, sentence instances
    for s in samples:
        w = run.valid[s.window]
        texts = turn_texts(s, run.codec)
        groups = aligned_groups(texts, w.references, w.segments, d.target_lang, d.chunk_seconds,
                                run.cfg.reward.max_latency, run.embedder)
        scored.append((join_turns(texts, d.target_lang), join_turns(w.references, d.target_lang),
                       [g.latency for g in groups], sentence_instances(groups, w.segments)))
    scored = run.world.concat(scored)
    hyps, refs = [x[0] for x in scored], [x[1] for x in scored]
    latency = [v for x in scored for v in x[2]]
    sentences = [v for x in scored for v in x[3]]
    return {"BLEU": corpus_bleu(hyps, refs, default_bleu_tokenizer(d.target_lang)), "chrF": corpus_chrf(hyps, refs),
            "StreamLAAL": window_stream_laal(sentences, d.target_lang), "latency": float(np.mean(latency))}


def progress_fields(record: dict) -> dict:
    """The progress bar's view of a step: the reward's parts (its mean is 0 by construction: group
    z-scores), the KL to the reference, the step's rollout speed; SFT's loss."""
    shown = {}
    if "quality_mean" in record:
        shown.update(quality=f"{record['quality_mean']:.3g}", latency_s=f"{record['latency_mean']:.3g}",
                     kl=f"{record['kl']:.3g}")
        shown["rollout_tok/s"] = f"{record['gen_tokens'] / max(record['rollout_s'], 1e-9):,.0f}"
    if "sft_loss" in record:
        shown.update(loss=f"{record['sft_loss']:.4g}", tok_s=f"{record['update_tokens_per_s']:,.0f}")
    return shown


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


def resume_latest(run: Run, ckpt_root: Path, metrics_path: Path) -> int:
    """Load the newest intact checkpoint (trained tensors, optimizer, fp32 masters, data order) into
    `run`; returns its step. Rank 0 reads it and sends it to the other ranks (no shared filesystem
    needed), so a run may resume with another number of processes. Logged steps after it are dropped
    (they will be run again)."""
    world = run.world
    if world.is_main:
        try:
            found, tensors, state = ckpt.resume_checkpoint(ckpt_root, run.optimizer)
            extra = ckpt.load_extra(found) if run.master is not None else None
            payload = (str(found), tensors, run.optimizer.state_dict(), extra, state)
        except FileNotFoundError as e:
            payload = e
    payload = world.broadcast(payload if world.is_main else None)
    if isinstance(payload, FileNotFoundError):
        raise payload
    found, tensors, optimizer_state, extra, state = payload
    if not world.is_main:
        run.optimizer.load_state_dict(optimizer_state)
    run.trainable.load_state(tensors, found)
    if run.master is not None:
        run.master.load(extra)
    run.loader.load_state(state["data"])
    start = state["step"]
    run.engine.reset_prefix_cache()
    if world.is_main and metrics_path.is_file():
        keep = [l for l in metrics_path.read_text().splitlines() if json.loads(l).get("step", 0) <= start]
        metrics_path.write_text("".join(l + "\n" for l in keep))
    return start


def elastic_restart() -> bool:
    """True in a worker that torchrun restarted after a failure (--max-restarts): it resumes."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


def train(cfg: TrainConfig, resume: bool = False) -> list[dict]:
    """Run `cfg.train.steps` steps (continuing from the latest checkpoint with `resume`); returns the
    metrics of the steps run here, also appended to OUTPUT_DIR/metrics.jsonl. From an SST checkpoint,
    the result is also written as one: OUTPUT_DIR/sst (serve it with `hpo-engine serve --model`).
    Under torchrun every rank runs this; rank 0 alone writes files and shows progress."""
    run = setup(cfg)
    # rank 0 decides (only it reads output_dir): every rank must take the same resume path
    if not resume and elastic_restart() and run.world.broadcast(
            bool(ckpt.list_checkpoints(run.out_dir / "checkpoints")) if run.world.is_main else None):
        resume = True
        log.info("resuming from the last checkpoint after a restart by torchrun (restart %s)",
                 os.environ["TORCHELASTIC_RESTART_COUNT"])
    try:
        return _train(run, resume)
    finally:
        close_world(run.world)


def _train(run: Run, resume: bool) -> list[dict]:
    from tqdm.auto import tqdm

    cfg, world, main = run.cfg, run.world, run.world.is_main
    ckpt_root, metrics_path = run.out_dir / "checkpoints", run.out_dir / "metrics.jsonl"
    if main:
        run.out_dir.mkdir(parents=True, exist_ok=True)
    start = resume_latest(run, ckpt_root, metrics_path) if resume else 0
    if main:
        if not resume and metrics_path.is_file():
            metrics_path.unlink()
        (run.out_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
    if world.size > 1:
        per_step = cfg.rollout.windows_per_step if cfg.mode == "hpo" else cfg.sft.batch_size
        log.info("data-parallel over %d processes: each rolls out %d or %d of the %d windows of a step",
                 world.size, per_step // world.size, -(-per_step // world.size), per_step)
        if per_step < world.size:
            log.warning("%d windows per step for %d processes: %d of them stay idle (raise %s)", per_step,
                        world.size, world.size - per_step,
                        "rollout.windows_per_step" if cfg.mode == "hpo" else "sft.batch_size")

    t = cfg.train
    step_fn = hpo_step if cfg.mode == "hpo" else sft_step
    history = []
    tensorboard = _tensorboard(run.out_dir) if t.tensorboard and main else None
    bar = tqdm(range(start + 1, t.steps + 1), initial=start, total=t.steps, disable=not (t.progress_bar and main),
               desc=cfg.mode)
    step = start
    if world.size > 1:
        stop_on_sigterm(world, lambda: step)
    try:
        for step in bar:
            sent = world.sent["bytes"]
            record = {"step": step, **step_fn(run, step)}
            validation = None
            if run.valid and (step % t.validate_every == 0 or step % t.checkpoint_every == 0 or step == t.steps):
                validation = validate(run)
                record["validation"] = validation
            if world.size > 1:      # what this rank put into collectives in this step (rank 0's is logged)
                record["collective_bytes"] = world.sent["bytes"] - sent
            history.append(record)
            bar.set_postfix(progress_fields(record), refresh=False)
            checkpoint = step % t.checkpoint_every == 0 or step == t.steps
            if checkpoint and hasattr(run.optimizer, "consolidate_state_dict"):
                run.optimizer.consolidate_state_dict(to=0)      # sharded state: every rank sends its part
            if not main:
                continue
            _log(metrics_path, record, tensorboard)
            if checkpoint:
                ckpt.save_checkpoint(ckpt_root, step, run.trainable.state(), run.optimizer,
                                     {"data": run.loader.state(), "validation": validation}, Path(cfg.model.path),
                                     extra=run.master.state() if run.master is not None else None)
                ckpt.prune(ckpt_root, t.keep_best, t.validation_metric)
    except RankFailure:
        raise
    except RuntimeError as e:       # gloo / NCCL errors (dist.DistError) are RuntimeErrors
        if world.size == 1:
            raise
        raise RankFailure(f"rank {world.rank} of {world.size}: step {step} stopped: {e} "
                          "(a collective failed: another rank has probably died; torchrun's summary names it)") from e
    finally:
        if tensorboard is not None:
            tensorboard.close()
    if run.sst is not None and main:     # also after a resume with nothing left to run: the checkpoint's weights
        last = (history[-1].get("validation") if history else None) or {}
        export_sst(run, run.out_dir / "sst", f"{cfg.mode.upper()} from {Path(cfg.model.path).name}, "
                   f"{cfg.train.steps} steps (train_llm={cfg.model.train_llm}); last validation: "
                   + ", ".join(f"{k} {v:.3g}" for k, v in last.items() if isinstance(v, float)))
    world.barrier()      # the others wait for rank 0's export: the job ends with everything written
    return history


class RankFailure(RuntimeError):
    """A data-parallel step could not complete on this rank: a collective failed, or torchrun
    stopped it because another rank failed."""


def stop_on_sigterm(world, current_step) -> None:
    """torchrun SIGTERMs the surviving ranks when one fails: say which rank stopped at which step
    instead of dying silently (the checkpoint on disk is the last complete one)."""
    import signal
    import threading
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum, frame):
        raise RankFailure(f"rank {world.rank} of {world.size}: step {current_step()} stopped by SIGTERM "
                          "(torchrun stops every rank when one fails: its summary names that rank)")
    signal.signal(signal.SIGTERM, handler)
