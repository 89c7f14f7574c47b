"""`hpo-engine` command line."""
import sys
import time

import click
import torch

from hpo_engine.models.quantize import QUANTIZE_CHOICES


def resolve_model(path):
    """--model, or the embedded default (SmolLM2-135M-Instruct built offline from its package)."""
    if path:
        return path
    from hpo_engine.assets.smollm2 import smollm2_path
    return smollm2_path()


def chatml_turn(tokenizer, text, system=None):
    """Token ids of one ChatML user turn (the system turn first when given) and the assistant header."""
    from hpo_engine.chat_template import user_turn_text
    return tokenizer.encode(user_turn_text(text, system), add_special_tokens=False)


@click.group()
def main():
    """hpo-engine: serve and post-train LLM-based simultaneous speech translation."""


@main.command()
@click.argument("prompt", required=False)
@click.option("--model", "model_path", type=click.Path(), help="Hugging Face model folder (default: SmolLM2-135M-Instruct).")
@click.option("--system", default="You are a helpful assistant.", show_default=True)
@click.option("--max-new-tokens", default=128, show_default=True)
@click.option("--temperature", default=0.0, show_default=True)
@click.option("--top-p", default=1.0, show_default=True)
@click.option("--top-k", default=0, show_default=True)
@click.option("--seed", type=int, default=None)
@click.option("--interactive", "-i", is_flag=True, help="Chat turn after turn on one stream (its KV cache is reused).")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32", show_default=True)
@click.option("--quantize", type=click.Choice(QUANTIZE_CHOICES), default=None,
              help="int8 LLM projections and LM head (CPU). int8: weight-only, activations stay --dtype; "
                   "w8a8: decode steps also round activations to int8 per 64 values (AVX512-VNNI, fastest).")
def generate(prompt, model_path, system, max_new_tokens, temperature, top_p, top_k, seed, interactive, dtype,
             quantize):
    """Generate a reply to PROMPT (or chat with --interactive)."""
    from hpo_engine import Engine, SamplingParams
    if not prompt and not interactive:
        raise click.UsageError("give a PROMPT or --interactive")
    path = resolve_model(model_path)
    engine = Engine.from_pretrained(path, dtype=getattr(torch, dtype), quantize=quantize)
    if engine.tokenizer is None:
        raise click.ClickException(f"{path} has no tokenizer files; the text CLI needs one")
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                            top_k=top_k, seed=seed)
    stream = engine.open_stream()
    first = True
    while True:
        if interactive:
            try:
                prompt = input("> ").strip()
            except EOFError:
                break
            if not prompt:
                continue
        stream.append(chatml_turn(engine.tokenizer, prompt, system if first else None))
        first = False
        start = time.perf_counter()
        out = stream.generate(params)
        seconds = time.perf_counter() - start
        click.echo(out.text)
        click.echo(f"[{len(out.token_ids)} tokens in {seconds:.2f} s, {stream.num_cached_tokens} cached]", err=True)
        if not interactive:
            break
    stream.close()


# Each part owns its commands.
from hpo_engine.metrics.cli import score  # noqa: E402
from hpo_engine.server.cli import serve  # noqa: E402
from hpo_engine.server.client import stream  # noqa: E402
from hpo_engine.sst.cli import translate  # noqa: E402
from hpo_engine.train.cli import train  # noqa: E402

for command in (serve, stream, translate, score, train):
    main.add_command(command)

if __name__ == "__main__":
    sys.exit(main())
