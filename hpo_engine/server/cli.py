"""`hpo-engine serve` (register with main.add_command(serve))."""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import click


def read_token(path: str | None) -> str | None:
    if path is None:
        return None
    token = Path(path).read_text().strip()
    if not token:
        raise click.BadParameter(f"{path} is empty", param_hint="--token-file")
    return token


@click.command()
@click.option("--model", "model_path", type=click.Path(exists=True, file_okay=False),
              help="SST checkpoint folder (default: the embedded UNTRAINED demo model, built on first use).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8765, show_default=True, help="0 picks a free port (printed in the log).")
@click.option("--token-file", type=click.Path(exists=True, dir_okay=False),
              help="File holding the bearer token clients must send (Authorization: Bearer TOKEN).")
@click.option("--max-streams", default=64, show_default=True)
@click.option("--max-message-bytes", default=1 << 20, show_default=True)
@click.option("--max-duration-s", default=3600.0, show_default=True)
@click.option("--idle-timeout-s", default=30.0, show_default=True)
@click.option("--max-buffered-ms", default=4000.0, show_default=True,
              help="Audio per stream accepted but not yet translated before reading pauses (backpressure).")
@click.option("--max-new-tokens", type=int, default=None, help="Per turn (default: the checkpoint's).")
@click.option("--cache-memory", type=int, default=None, help="KV cache bytes (default: the engine's).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch threads (default: torch's); on a shared, loaded machine 1 often runs faster.")
def serve(model_path, host, port, token_file, max_streams, max_message_bytes, max_duration_s, idle_timeout_s,
          max_buffered_ms, max_new_tokens, cache_memory, threads):
    """Serve streaming speech translation over WebSocket (/v1/stream), with /healthz, /metrics and /."""
    from hpo_engine.sst.checkpoint import open_sst
    from hpo_engine.sst.config import SSTConfigError

    from .app import TranslationServer
    from .config import ServerConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("websockets").setLevel(logging.WARNING)   # one line per stream is ours
    try:
        config = ServerConfig(host=host, port=port, token=read_token(token_file), max_streams=max_streams,
                              max_message_bytes=max_message_bytes,
                              hard_message_bytes=max(8 << 20, 4 * max_message_bytes),
                              max_duration_s=max_duration_s, idle_timeout_s=idle_timeout_s,
                              max_buffered_ms=max_buffered_ms, max_new_tokens=max_new_tokens)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    if threads:
        import torch
        torch.set_num_threads(threads)
    options = {"cache_memory": cache_memory} if cache_memory else {}
    try:
        model = open_sst(model_path, **options)
    except (SSTConfigError, FileNotFoundError) as e:
        raise click.ClickException(str(e)) from None
    if not model.config.trained:
        logging.getLogger("hpo_engine.server").warning("%s", model.config.description or "untrained model")
    asyncio.run(TranslationServer(model, config).run())
