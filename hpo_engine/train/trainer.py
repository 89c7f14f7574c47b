"""The training loop: SFT or HPO steps (train/hpo.py, train/sft.py) on a run wired by train/run.py,
with validation, logging (metrics.jsonl, tensorboard), checkpoints, resume, and the SST export."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from hpo_engine.metrics.quality import corpus_bleu, corpus_chrf, default_bleu_tokenizer
from hpo_engine.metrics.segment_latency import join_turns
from hpo_engine.train import checkpoint as ckpt
from hpo_engine.train.config import TrainConfig
from hpo_engine.train.export import export_sst
from hpo_engine.train.hpo import hpo_step
from hpo_engine.train.reward import aligned_groups, sentence_instances, window_stream_laal
from hpo_engine.train.rollout import rollout, turn_texts
from hpo_engine.train.run import Run, setup
from hpo_engine.train.sft import sft_step


def validate(run: Run) -> dict:
    """Greedy rollouts on the held-out windows: corpus BLEU / chrF of the window hypotheses,
    StreamLAAL (ms, over all sentences) and the mean HPO segment latency (s)."""
    if not run.valid:
        return {}
    d = run.cfg.dialogue
    run.engine.reset_prefix_cache()
    samples = rollout(run.engine, run.valid, run.fmt, run.cfg.rollout, seed=None,
                      group_size=1, greedy=True, embed_speech=run.embed_speech,
                      rows_per_embedding=run.rows_per_embedding)
    hyps, refs, latency, sentences = [], [], [], []
    for s in samples:
        w = run.valid[s.window]
        texts = turn_texts(s, run.codec)
        hyps.append(join_turns(texts, d.target_lang))
        refs.append(join_turns(w.references, d.target_lang))
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


def resume_latest(run: Run, ckpt_root: Path, metrics_path: Path) -> int:
    """Load the newest intact checkpoint (trained tensors, optimizer, fp32 masters, data order) into
    `run`; returns its step. Logged steps after it are dropped (they will be run again)."""
    found, tensors, state = ckpt.resume_checkpoint(ckpt_root, run.optimizer)
    run.trainable.load_state(tensors, str(found))
    if run.master is not None:
        run.master.load(ckpt.load_extra(found))
    run.loader.load_state(state["data"])
    start = state["step"]
    run.engine.reset_prefix_cache()
    if metrics_path.is_file():
        keep = [l for l in metrics_path.read_text().splitlines() if json.loads(l).get("step", 0) <= start]
        metrics_path.write_text("".join(l + "\n" for l in keep))
    return start


def train(cfg: TrainConfig, resume: bool = False) -> list[dict]:
    """Run `cfg.train.steps` steps (continuing from the latest checkpoint with `resume`); returns the
    metrics of the steps run here, also appended to OUTPUT_DIR/metrics.jsonl. From an SST checkpoint,
    the result is also written as one: OUTPUT_DIR/sst (serve it with `hpo-engine serve --model`)."""
    from tqdm.auto import tqdm

    run = setup(cfg)
    run.out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_root, metrics_path = run.out_dir / "checkpoints", run.out_dir / "metrics.jsonl"
    start = resume_latest(run, ckpt_root, metrics_path) if resume else 0
    if not resume and metrics_path.is_file():
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
