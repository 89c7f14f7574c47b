"""`hpo-engine translate AUDIO... --output instances.log` (register with main.add_command(translate))."""
from __future__ import annotations

import json
from pathlib import Path

import click


@click.command()
@click.argument("audio", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False),
              help="SimulEval-style JSONL (index, prediction, delays, elapsed, source_length, reference).")
@click.option("--model", "model_path", type=click.Path(file_okay=False),
              help="SST checkpoint folder (default: the embedded UNTRAINED demo model).")
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
def translate(audio, output, model_path, target_lang, references, max_new_tokens, latency_unit, chunk_multiplier,
              threads):
    """Simulated streaming translation of AUDIO files (any rate; delays and elapsed in ms)."""
    from tqdm import tqdm

    from hpo_engine.speech.audio import AudioFormatError, load_audio

    from .checkpoint import open_sst
    from .config import SSTConfigError
    from .simulate import simulate

    if threads:
        import torch
        torch.set_num_threads(threads)
    refs = None
    if references:
        refs = [line.rstrip("\n").strip() for line in open(references, encoding="utf-8")]
        if len(refs) != len(audio):
            raise click.UsageError(f"{references} holds {len(refs)} lines for {len(audio)} audio file(s)")
    if max_new_tokens is not None and max_new_tokens < 1:
        raise click.BadParameter("must be >= 1", param_hint="--max-new-tokens")
    try:
        model = open_sst(model_path)
        model.config = model.config.with_chunk_multiplier(chunk_multiplier)
        if target_lang is not None:
            model.config.instruction(target_lang)     # an unknown language fails before any work
    except (SSTConfigError, FileNotFoundError) as e:
        raise click.ClickException(str(e)) from None
    if not model.config.trained:
        click.echo(f"note: {model.config.description or 'the model is untrained'}", err=True)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    with open(output, "w", encoding="utf-8") as out:
        for i, path in enumerate(tqdm(audio, desc="translate", unit="file")):
            try:
                wave = load_audio(path)
            except AudioFormatError as e:
                raise click.ClickException(str(e)) from None
            inst = simulate(model, wave, target_lang, max_new_tokens, latency_unit)
            row = inst.to_log(i, source=str(path), reference=refs[i] if refs else None)
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
            out.flush()
