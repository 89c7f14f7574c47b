"""`hpo-engine serve` (register with main.add_command(serve))."""
from __future__ import annotations

import asyncio
import logging
import os
import stat
from pathlib import Path

import click

from hpo_engine.models.quantize import QUANTIZE_CHOICES

from hpo_engine.sst.default_model import default_model_help


def read_token(path: str | None, allow_world_readable: bool = False) -> str | None:
    if path is None:
        return None
    mode = os.stat(path).st_mode
    if mode & (stat.S_IRGRP | stat.S_IROTH) and not allow_world_readable:
        raise click.BadParameter(f"{path} is readable by other users (mode {stat.filemode(mode)}): anyone on this "
                                 f"machine could use the token. Run `chmod 600 {path}`, or pass "
                                 "--allow-world-readable-token", param_hint="--token-file")
    token = Path(path).read_text().strip()
    if not token:
        raise click.BadParameter(f"{path} is empty", param_hint="--token-file")
    return token


@click.command()
@click.option("--model", "model_path", type=click.Path(exists=True, file_okay=False),
              help=f"SST checkpoint folder (default: {default_model_help()}).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8765, show_default=True, help="0 picks a free port (printed in the log).")
@click.option("--token-file", type=click.Path(exists=True, dir_okay=False),
              help="File holding the bearer token clients must send (Authorization: Bearer TOKEN).")
@click.option("--allow-world-readable-token", is_flag=True,
              help="Accept a --token-file that group or others can read.")
@click.option("--allow-origin", "allow_origins", multiple=True, metavar="ORIGIN",
              help="Browser origin (scheme://host:port) allowed to open streams besides the server's own page; "
                   "repeatable; * allows any. Clients that send no Origin (not browsers) are always allowed.")
@click.option("--max-streams", type=click.IntRange(min=1), default=None,
              help="Concurrent streams at most (default: what this machine sustains in real time, measured at start).")
@click.option("--max-load", type=click.FloatRange(min=0), default=0.8, show_default=True,
              help="Refuse new streams (server_busy, HTTP 503) when the engine's measured compute per chunk for one "
                   "more stream would exceed this fraction of the chunk's audio; 0: no load check.")
@click.option("--max-connections-per-address", type=click.IntRange(min=1), default=8, show_default=True,
              help="Open connections from one client address (more get HTTP 429).")
@click.option("--max-message-bytes", default=1 << 20, show_default=True)
@click.option("--max-connection-buffer-bytes", default=8 << 20, show_default=True,
              help="Received bytes one connection may hold while the server reads it (frames queued or being read).")
@click.option("--max-duration-s", default=3600.0, show_default=True, help="Audio per stream.")
@click.option("--max-stream-s", default=7200.0, show_default=True, help="Wall-clock time per stream.")
@click.option("--min-audio-rate", type=click.FloatRange(min=0), default=0.5, show_default=True,
              help="Audio seconds per second a stream must send over --audio-rate-window-s (else audio_too_slow).")
@click.option("--audio-rate-window-s", default=30.0, show_default=True)
@click.option("--idle-timeout-s", default=30.0, show_default=True)
@click.option("--max-buffered-ms", default=4000.0, show_default=True,
              help="Audio per stream accepted but not yet translated before reading pauses (backpressure).")
@click.option("--max-new-tokens", type=int, default=None, help="Per turn (default: the checkpoint's).")
@click.option("--cache-memory", type=int, default=None, help="KV cache bytes (default: the engine's).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch threads (default: torch's); on a shared, loaded machine 1 often runs faster.")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16"]), default="float32", show_default=True,
              help="The LLM's weights and activations.")
@click.option("--quantize", type=click.Choice(QUANTIZE_CHOICES), default=None,
              help="int8 LLM projections and LM head (CPU). int8: weight-only, activations stay --dtype; "
                   "w8a8: decode steps also round activations to int8 per 64 values (AVX512-VNNI, fastest).")
def serve(model_path, host, port, token_file, allow_world_readable_token, allow_origins, max_streams, max_load,
          max_connections_per_address, max_message_bytes, max_connection_buffer_bytes, max_duration_s, max_stream_s,
          min_audio_rate, audio_rate_window_s, idle_timeout_s, max_buffered_ms, max_new_tokens, cache_memory, threads,
          dtype, quantize):
    """Serve streaming speech translation over WebSocket (/v1/stream), with /healthz, /metrics and /."""
    from hpo_engine.sst.checkpoint import open_sst
    from hpo_engine.sst.config import SSTConfigError

    from .app import TranslationServer
    from .config import ServerConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("websockets").setLevel(logging.WARNING)   # one line per stream is ours
    try:
        config = ServerConfig(host=host, port=port, token=read_token(token_file, allow_world_readable_token),
                              allow_origins=tuple(o.rstrip("/").lower() for o in allow_origins),
                              max_streams=max_streams, max_load=max_load,
                              max_connections_per_address=max_connections_per_address,
                              max_message_bytes=max_message_bytes,
                              max_connection_buffer_bytes=max_connection_buffer_bytes,
                              max_duration_s=max_duration_s, max_stream_s=max_stream_s, min_audio_rate=min_audio_rate,
                              audio_rate_window_s=audio_rate_window_s, idle_timeout_s=idle_timeout_s,
                              max_buffered_ms=max_buffered_ms, max_new_tokens=max_new_tokens)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    import torch
    if threads:
        torch.set_num_threads(threads)
    options = {"cache_memory": cache_memory} if cache_memory else {}
    options.update(dtype=getattr(torch, dtype), quantize=quantize)
    try:
        model = open_sst(model_path, **options)
    except (SSTConfigError, FileNotFoundError) as e:
        raise click.ClickException(str(e)) from None
    if not model.config.trained:
        logging.getLogger("hpo_engine.server").warning("%s", model.config.description or "untrained model")
    asyncio.run(TranslationServer(model, config).run())
