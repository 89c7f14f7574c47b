"""`python -m hpo_engine.demo data OUT_DIR`: build the demo SST data (see hpo_engine/demo/data.py)."""
from __future__ import annotations

import click

from .data import DEFAULT_TALKS


@click.group()
def main():
    """Demo SST data (English speech -> German text), built offline."""


@main.command()
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--train", default=DEFAULT_TALKS["train"], show_default=True, type=click.IntRange(min=1),
              help="Training talks.")
@click.option("--valid", default=DEFAULT_TALKS["valid"], show_default=True, type=click.IntRange(min=1),
              help="Validation talks.")
@click.option("--test", default=DEFAULT_TALKS["test"], show_default=True, type=click.IntRange(min=1),
              help="Test talks (also written as wav files with references and segmentation).")
@click.option("--seed", default=0, show_default=True, help="Picks the talks, voices, speeds, pitches and pauses.")
@click.option("--dictionary", type=click.Path(dir_okay=False), default=None,
              help="Ding dictionary file (default: Debian trans-de-en's).")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(min=1),
              help="torch threads for the encoder (small windows: 1 is fastest on a shared machine).")
def data(out_dir, train, valid, test, seed, dictionary, threads):
    """Synthesise talks into OUT_DIR: encoder frames, {train,valid,test}.jsonl and test/ evaluation files.

    Resumable: talks whose .npy exists are kept.
    """
    import torch

    from .data import build

    torch.set_num_threads(threads)
    try:
        totals = build(out_dir, {"train": train, "valid": valid, "test": test}, seed, dictionary)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"{totals['talks']} talks, {totals['sentences']} sentences, {totals['hours']:.2f} h of audio "
               f"in {totals['seconds']:.0f} s wall -> {out_dir}")


if __name__ == "__main__":
    main()
