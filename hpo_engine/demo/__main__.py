"""`python -m hpo_engine.demo data|sft|hpo|eval|install OUT_DIR`: the demo SST model, end to end.

    python -m hpo_engine.demo data OUT      synthesised EN-DE talks -> encoder frames, manifests (data.py)
    python -m hpo_engine.demo bridge OUT    the CTC bridge on those frames -> OUT/bridge     (bridge.py)
    python -m hpo_engine.demo assemble OUT  bridge + Whisper + Qwen2.5-0.5B -> OUT/bridge/sst
    python -m hpo_engine.demo bridge-sft OUT   SFT (LoRA) of that checkpoint -> OUT/bridge_sft/sst
    python -m hpo_engine.demo assemble-transcriber OUT   Whisper tiny.en (encoder + decoder) + Qwen2.5-0.5B
                                            -> OUT/transcriber/sst (no training: Whisper's decoder is the bridge)
    python -m hpo_engine.demo transcriber-sft OUT   SFT (LoRA) of that checkpoint -> OUT/transcriber_sft/sst
    python -m hpo_engine.demo mix OUT OTHER      OUT's and OTHER's (another language's) talks -> OUT/train.mixed.audio.jsonl
    python -m hpo_engine.demo transcriber-mix OUT   more SFT of OUT/transcriber_sft/sst on both -> OUT/transcriber_mix/sst
    python -m hpo_engine.demo sft OUT       SFT from the untrained default -> OUT/sft/sst      (recipe.py)
    python -m hpo_engine.demo hpo OUT       HPO from OUT/sft/sst -> OUT/hpo/sst
    python -m hpo_engine.demo eval OUT      test talks at chunk multipliers 1..4 -> OUT/eval/table.md
    python -m hpo_engine.demo install OUT/hpo/sst   its trained part becomes the embedded default
Every step resumes where it stopped.
"""
from __future__ import annotations

import click

from .data import DEFAULT_TALKS, LANGS


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
@click.option("--lang", type=click.Choice(LANGS), default="de", show_default=True,
              help="Target language: de (Ding dictionary) or zh (hsk-sentences-audio). The speech is English.")
@click.option("--dictionary", type=click.Path(dir_okay=False), default=None,
              help="Pairs file: the Ding dictionary for de (default: Debian trans-de-en's), the "
                   "hsk-sentences-audio wheel for zh (default: downloaded once into the cache).")
@click.option("--audio", is_flag=True, help="Also write every split's wavs and <split>.audio.jsonl manifests "
              "naming them (a transcriber checkpoint trains on audio).")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(min=1),
              help="torch threads for the encoder (small windows: 1 is fastest on a shared machine).")
def data(out_dir, train, valid, test, seed, lang, dictionary, audio, threads):
    """Synthesise talks into OUT_DIR: encoder frames, {train,valid,test}.jsonl and test/ evaluation files.

    Resumable: talks whose .npy exists are kept.
    """
    import torch

    from .data import build

    torch.set_num_threads(threads)
    try:
        totals = build(out_dir, {"train": train, "valid": valid, "test": test}, seed, dictionary, lang=lang, audio=audio)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"{totals['talks']} talks, {totals['sentences']} sentences, {totals['hours']:.2f} h of audio "
               f"in {totals['seconds']:.0f} s wall -> {out_dir}")


def _stage(stage: str, config_file: str):
    @main.command(name=stage.replace("_", "-"), help=f"Train the {stage} stage (configs/{config_file}); resumes.")
    @click.argument("out_dir", type=click.Path(file_okay=False, exists=True))
    @click.option("--steps", type=click.IntRange(min=1), default=None, help="Override train.steps.")
    @click.option("--config", type=click.Path(dir_okay=False, exists=True), default=None,
                  help=f"Another config (default configs/demo_{stage}.yaml).")
    @click.option("--threads", type=click.IntRange(min=1), default=None, help="torch threads.")
    def command(out_dir, steps, config, threads):
        from pathlib import Path

        from hpo_engine.train.config import ConfigError
        from hpo_engine.train.data import ManifestError

        from .recipe import train_stage
        if threads:
            import torch
            torch.set_num_threads(threads)
        try:
            folder = train_stage(Path(out_dir), stage, steps, Path(config) if config else None)
        except (ConfigError, ManifestError, FileNotFoundError) as e:
            raise click.ClickException(str(e)) from None
        click.echo(f"{stage.upper()} model: {folder}")
    return command


@main.command()
@click.argument("out_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--llm", type=click.Path(file_okay=False, exists=True), default=None,
              help="LLM folder whose tokenizer names the classes (default: the Qwen2.5-0.5B build).")
@click.option("--epochs", default=12, show_default=True, type=click.IntRange(min=1))
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch threads.")
def bridge(out_dir, llm, epochs, threads):
    """Train the CTC bridge on OUT's encoder frames -> OUT/bridge; resumes by epoch."""
    from transformers import AutoTokenizer

    from hpo_engine.assets.qwen25 import qwen25_path

    from .bridge import train_bridge
    if threads:
        import torch
        torch.set_num_threads(threads)
    record = train_bridge(out_dir, AutoTokenizer.from_pretrained(llm or qwen25_path()), epochs=epochs)
    click.echo(f"bridge: epoch {record.get('epoch')}, valid token error rate "
               f"{record.get('valid_token_error_rate', float('nan')):.3f}")


@main.command()
@click.argument("out_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--llm", type=click.Path(file_okay=False, exists=True), default=None,
              help="LLM folder (default: the Qwen2.5-0.5B build); the bridge's classes are its token ids.")
def assemble(out_dir, llm):
    """OUT/bridge (trained) + Whisper tiny.en + the LLM -> the SST checkpoint OUT/bridge/sst."""
    from pathlib import Path

    from hpo_engine.assets.qwen25 import qwen25_path

    from .bridge import assemble_sst
    if not (Path(out_dir) / "bridge" / "bridge.safetensors").is_file():
        raise click.ClickException(f"{out_dir}/bridge has no trained bridge: run `bridge {out_dir}` first")
    click.echo(f"SST checkpoint: {assemble_sst(Path(out_dir) / 'bridge', llm or qwen25_path(), Path(out_dir) / 'bridge' / 'sst')}")


@main.command(name="assemble-transcriber")
@click.argument("out_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--llm", type=click.Path(file_okay=False, exists=True), default=None,
              help="LLM folder (default: the Qwen2.5-0.5B build).")
def assemble_transcriber(out_dir, llm):
    """Whisper tiny.en's encoder and decoder (the transcriber) + the LLM -> OUT/transcriber/sst."""
    from pathlib import Path

    from hpo_engine.assets.qwen25 import qwen25_path

    from .bridge import assemble_sst
    dest = assemble_sst(None, llm or qwen25_path(), Path(out_dir) / "transcriber" / "sst")
    click.echo(f"SST checkpoint: {dest}")


sft = _stage("sft", "demo_sft.yaml")
hpo = _stage("hpo", "demo_hpo.yaml")
bridge_sft = _stage("bridge_sft", "bridge_sft.yaml")
transcriber_sft = _stage("transcriber_sft", "transcriber_sft.yaml")
transcriber_mix = _stage("transcriber_mix", "transcriber_mix.yaml")


@main.command()
@click.argument("out_dir", type=click.Path(file_okay=False, exists=True))
@click.argument("others", nargs=-1, required=True, type=click.Path(file_okay=False, exists=True))
def mix(out_dir, others):
    """OUT's training talks and OTHERS' (data folders of other target languages, built with --audio),
    interleaved -> OUT/train.mixed.audio.jsonl, each line naming its target_lang (one model, several
    languages)."""
    from .recipe import mix_manifests
    try:
        path = mix_manifests(out_dir, others)
    except FileNotFoundError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"{sum(1 for _ in open(path, encoding='utf-8'))} talks -> {path}")


@main.command(name="eval")
@click.argument("out_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--stages", default="sft,hpo", show_default=True, help="Models to evaluate (OUT/<stage>/sst).")
@click.option("--multipliers", default="1,2,3,4", show_default=True, help="Chunk multipliers m (m x 1.12 s).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch threads.")
def evaluate_command(out_dir, stages, multipliers, threads):
    """Translate OUT/test with each model at each m; score; write OUT/eval/table.md."""
    from .recipe import evaluate
    table = evaluate(out_dir, tuple(stages.split(",")), tuple(int(m) for m in multipliers.split(",")), threads)
    click.echo(table.read_text())


@main.command()
@click.argument("checkpoint", type=click.Path(file_okay=False, exists=True))
@click.option("--description", default=None, help="What the model is, shown by serve / translate "
              "(default: the checkpoint's own).")
def install(checkpoint, description):
    """Make CHECKPOINT's trained part (config, projector, LLM adapter) the embedded default."""
    from .recipe import install_default
    click.echo(f"installed into {install_default(checkpoint, description=description)}")


if __name__ == "__main__":
    main()
