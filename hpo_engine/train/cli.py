"""`hpo-engine train --config FILE.yaml [--resume]` (register with `main.add_command(train)`)."""
from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option("--config", "config_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="YAML training config (configs/tiny_cpu.yaml, configs/hpo_paper.yaml).")
@click.option("--resume", is_flag=True, help="Continue from the latest checkpoint in output_dir/checkpoints.")
def train(config_path, resume):
    """SFT or HPO (the config's `mode`) on the engine's own rollouts.

    Data-parallel under torchrun (gloo on CPU, NCCL on GPUs), e.g.
    `torchrun --standalone --nproc-per-node 2 -m hpo_engine train --config F`: each process rolls
    out its share of every step's windows; rank 0 writes the checkpoints and logs."""
    import logging
    import os

    from hpo_engine.train.config import ConfigError, load_config
    from hpo_engine.train.data import ManifestError
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("hpo_engine.train").setLevel(logging.INFO)
    from hpo_engine.train.trainer import RankFailure, train as run_training
    rank = int(os.environ.get("RANK", "0"))
    try:
        cfg = load_config(config_path)
        history = run_training(cfg, resume=resume)
    except (ConfigError, ManifestError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    except RankFailure as exc:
        raise click.ClickException(str(exc)) from None
    if rank != 0:
        return
    click.echo(done_message(Path(cfg.output_dir).resolve(), history))


def done_message(out: Path, history: list[dict]) -> str:
    """Where the run's outputs went (what exists of them) and its last validation."""
    from hpo_engine.train.checkpoint import list_checkpoints
    parts = []
    found = list_checkpoints(out / "checkpoints")
    if found:
        parts.append(f"checkpoints/ (newest {found[-1].name})")
    parts += [name for name in ("metrics.jsonl",) if (out / name).is_file()]
    if (out / "tensorboard").is_dir():
        parts.append(f"tensorboard/ (tensorboard --logdir {out / 'tensorboard'})")
    if (out / "sst").is_dir():
        parts.append(f"sst/ (hpo-engine serve --model {out / 'sst'})")
    last = next((h["validation"] for h in reversed(history) if h.get("validation")), None)
    text = f"done: {len(history)} steps run; outputs in {out}: " + ", ".join(parts)
    if last:
        text += "; last validation: " + ", ".join(f"{k} {v:.3g}" for k, v in last.items() if isinstance(v, float))
    return text
