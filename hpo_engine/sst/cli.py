"""`hpo-engine translate AUDIO... --output instances.log` (register with main.add_command(translate))."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import tempfile
from pathlib import Path

import click

from hpo_engine.models.quantize import QUANTIZE_CHOICES

from hpo_engine.sst.default_model import default_model_help


@click.command()
@click.argument("audio", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False),
              help="SimulEval-style JSONL (index, prediction, delays, elapsed, source_length, reference).")
@click.option("--model", "model_path", type=click.Path(file_okay=False),
              help=f"SST checkpoint folder (default: {default_model_help()}).")
@click.option("--target-lang", default=None, help="Target language code (default: the checkpoint's).")
@click.option("--references", type=click.Path(exists=True, dir_okay=False),
              help="One reference per line, in the order of AUDIO; written into each line's `reference`.")
@click.option("--max-new-tokens", type=int, default=None, help="Per assistant turn (default: the checkpoint's).")
@click.option("--latency-unit", type=click.Choice(["word", "char"]), default=None,
              help="Unit the delays are attached to (default: char for zh/ja, else word).")
@click.option("--chunk-multiplier", "-m", type=click.IntRange(min=1), default=1, show_default=True,
              help="Speech per turn = m x the checkpoint's chunk (HPO: m = 1..4 of 1.12 s); tokens per turn x m.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch threads (default: torch's); on a shared, loaded machine 1 often runs faster.")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16"]), default="float32", show_default=True,
              help="The LLM's weights and activations.")
@click.option("--quantize", type=click.Choice(QUANTIZE_CHOICES), default=None,
              help="int8 LLM projections and LM head (CPU). int8: weight-only, activations stay --dtype; "
                   "w8a8: decode steps also round activations to int8 per 64 values (AVX512-VNNI, fastest).")
@click.option("--closing-turns", type=click.IntRange(min=0), default=None,
              help="Turns without speech after the last chunk while the text stops mid-sentence "
                   "(default: the checkpoint's sst_config.json, 2 if it names none).")
def translate(audio, output, model_path, target_lang, references, max_new_tokens, latency_unit, chunk_multiplier,
              threads, dtype, quantize, closing_turns):
    """Simulated streaming translation of AUDIO files (any rate; delays and elapsed in ms)."""
    from tqdm import tqdm

    from hpo_engine.speech.audio import load_audio

    from .checkpoint import open_sst
    from .config import SSTConfigError
    from .simulate import simulate

    import torch
    if threads:
        torch.set_num_threads(threads)
    refs = None
    if references:
        refs = [line.rstrip("\n").strip() for line in open(references, encoding="utf-8")]
        if len(refs) != len(audio):
            raise click.UsageError(f"{references} holds {len(refs)} lines for {len(audio)} audio file(s)")
    if max_new_tokens is not None and max_new_tokens < 1:
        raise click.BadParameter("must be >= 1", param_hint="--max-new-tokens")
    # every input is checked before the model loads, so a bad one is named at once, not hours into a batch
    bad = {i: reason for i, path in enumerate(audio) if (reason := _unreadable(path))}   # index -> why
    for i, reason in bad.items():
        click.echo(f"skipping {audio[i]}: {reason}", err=True)
    if len(bad) == len(audio):
        raise click.ClickException(f"no readable audio among {len(audio)} file(s); {output} is left as it was")
    try:
        model = open_sst(model_path, dtype=getattr(torch, dtype), quantize=quantize)
        model.config = model.config.with_chunk_multiplier(chunk_multiplier)
        if closing_turns is not None:
            model.config = dataclasses.replace(model.config, closing_turns=closing_turns)
        if target_lang is not None:
            model.config.instruction(target_lang)     # an unknown language fails before any work
    except (SSTConfigError, FileNotFoundError) as e:
        raise click.ClickException(str(e)) from None
    if not model.config.trained:
        click.echo(f"note: {model.config.description or 'the model is untrained'}", err=True)
    todo = [(i, path) for i, path in enumerate(audio) if i not in bad]
    try:
        with atomic_output(output) as out:
            for i, path in tqdm(todo, desc="translate", unit="file"):
                try:
                    inst = simulate(model, load_audio(path), target_lang, max_new_tokens, latency_unit)
                except ValueError as e:       # AudioFormatError, or audio the front end refuses
                    bad[i] = str(e)
                    tqdm.write(f"skipping {path}: {e}", file=sys.stderr)
                    continue
                row = inst.to_log(i, source=str(path), reference=refs[i] if refs else None)
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
    except OSError as e:
        raise click.ClickException(f"cannot write {output}: {e}") from None
    if bad:
        raise click.ClickException(f"{len(bad)} of {len(audio)} file(s) skipped, each named above ("
                                   + ", ".join(audio[i] for i in bad) + f"); {output} holds the other "
                                   f"{len(audio) - len(bad)}")


def _unreadable(path: str) -> str | None:
    """Why `path` cannot be translated (decodes, holds samples, finite, not cut off), or None."""
    from hpo_engine.speech.audio import AudioFormatError, load_audio
    try:
        load_audio(path)
    except AudioFormatError as e:
        return str(e)
    return None


@contextlib.contextmanager
def atomic_output(path):
    """A text file that appears at `path` complete or not at all: written beside it (same file system,
    so the rename is atomic) and renamed on success; on any failure the old file stays as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)   # mkstemp's is 0600
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
