"""SST checkpoint folder: a Hugging Face LLM folder plus the speech parts.

    FOLDER/config.json, *.safetensors, tokenizer files   the LLM (Engine.from_pretrained opens FOLDER as is)
    FOLDER/speech/encoder.safetensors                    the Whisper-family encoder (hpo_engine.speech names)
    FOLDER/speech/projector.safetensors                  frame stacking + MLP to the LLM width, or
    FOLDER/speech/bridge.safetensors                     a CTC bridge (speech/ctc_bridge.py): rows of the
                                                         LLM's own embedding table, a variable number a chunk
    FOLDER/speech/transcriber.safetensors                or Whisper's text decoder (speech/transcriber.py):
    FOLDER/speech/whisper_tokenizer.json                 the LLM reads the words it commits, as text
    FOLDER/speech/llm_adapter.safetensors                optional: the trained LLM part (sst/adapter.py)
    FOLDER/sst_config.json                               SSTConfig

The speech tensors live in a subfolder so the LLM loader's `*.safetensors` glob never opens them.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from hpo_engine.manifest import IntegrityError, check_manifest, has_manifest
from hpo_engine.models.quantize import quantize_model
from hpo_engine.speech import EncoderConfig, Projector, ProjectorConfig, SpeechFrontEnd, WhisperEncoder
from hpo_engine.speech.ctc_bridge import CTCBridge, CTCBridgeConfig
from hpo_engine.speech.transcriber import TranscriberConfig, WhisperTranscriber

from .adapter import ADAPTER_FILE, apply_adapter, read_adapter
from .config import CONFIG_NAME, SSTConfig, SSTConfigError

ENCODER_FILE = "speech/encoder.safetensors"
PROJECTOR_FILE = "speech/projector.safetensors"
BRIDGE_FILE = "speech/bridge.safetensors"
TRANSCRIBER_FILE = "speech/transcriber.safetensors"
WHISPER_TOKENIZER_FILE = "speech/whisper_tokenizer.json"


@dataclass
class SSTModel:
    """An opened checkpoint: the engine (LLM + paged cache) and the shared speech modules."""
    path: Path
    config: SSTConfig
    engine: object            # hpo_engine Engine
    encoder: WhisperEncoder
    adapter: Projector | CTCBridge | WhisperTranscriber     # encoder frames -> LLM-width rows

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    def new_frontend(self) -> SpeechFrontEnd:
        """Per-stream encoder (and bridge) state over the shared weights."""
        return SpeechFrontEnd(self.encoder, self.adapter, chunk_ms=self.config.chunk_ms,
                              left_context_ms=self.config.left_context_ms)


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard link (the LLM weights are hundreds of MB) or, across file systems, copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def link_llm_files(src: Path, dst: Path) -> None:
    """Hard-link (or copy) the LLM files at the top of `src` (an LLM or SST folder) into `dst`: all but
    the SST config and the LLM's build record."""
    Path(dst).mkdir(parents=True, exist_ok=True)
    for f in Path(src).iterdir():
        if f.is_file() and f.name not in ("hpo_build.json", CONFIG_NAME):
            link_or_copy(f, Path(dst) / f.name)


# each speech adapter's sst_config.json field and tensor file
ADAPTER_SLOTS = {Projector: ("projector", PROJECTOR_FILE), CTCBridge: ("bridge", BRIDGE_FILE),
                 WhisperTranscriber: ("transcriber", TRANSCRIBER_FILE)}


def adapter_file(adapter) -> str:
    """Where a speech adapter's tensors live in the folder."""
    return ADAPTER_SLOTS[type(adapter)][1]


def save_sst(folder: Path, llm_folder: Path, encoder: WhisperEncoder,
             adapter: Projector | CTCBridge | WhisperTranscriber, config: SSTConfig) -> Path:
    folder, llm_folder = Path(folder), Path(llm_folder)
    config.encoder = asdict(encoder.cfg)
    config.projector, config.bridge, config.transcriber = {}, {}, {}
    setattr(config, ADAPTER_SLOTS[type(adapter)][0], adapter.cfg.to_dict())
    config.validate()
    link_llm_files(llm_folder, folder)
    (folder / "speech").mkdir(exist_ok=True)
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, folder / ENCODER_FILE)
    save_file({k: v.contiguous() for k, v in adapter.state_dict().items()}, folder / adapter_file(adapter))
    if isinstance(adapter, WhisperTranscriber):
        adapter.whisper_tokenizer.save(str(folder / WHISPER_TOKENIZER_FILE))
    config.save(folder)
    return folder


def load_encoder(config: SSTConfig, folder: Path) -> WhisperEncoder:
    return load_module(WhisperEncoder(EncoderConfig(**config.encoder)), Path(folder) / ENCODER_FILE)


def load_adapter(config: SSTConfig, folder: Path, encoder: WhisperEncoder | None = None
                 ) -> Projector | CTCBridge | WhisperTranscriber:
    """The checkpoint's speech adapter, as sst_config.json names it: a CTC bridge, a transcriber (given
    the checkpoint's `encoder`, loaded when None: it encodes its own segments) or a projector."""
    folder = Path(folder)
    if config.bridge:
        return load_module(CTCBridge(CTCBridgeConfig.from_dict(config.bridge)), folder / BRIDGE_FILE)
    if config.transcriber:
        from tokenizers import Tokenizer
        transcriber = load_module(WhisperTranscriber(TranscriberConfig.from_dict(config.transcriber)),
                                  folder / TRANSCRIBER_FILE)
        if not (folder / WHISPER_TOKENIZER_FILE).is_file():
            raise SSTConfigError(f"SST checkpoint is missing {folder / WHISPER_TOKENIZER_FILE}")
        transcriber.whisper_tokenizer = Tokenizer.from_file(str(folder / WHISPER_TOKENIZER_FILE))
        return transcriber.attach_encoder(encoder if encoder is not None else load_encoder(config, folder))
    return load_module(Projector(ProjectorConfig(**config.projector)), folder / PROJECTOR_FILE)


def load_module(module: torch.nn.Module, file: Path) -> torch.nn.Module:
    if not file.is_file():
        raise SSTConfigError(f"SST checkpoint is missing {file}")
    try:
        module.load_state_dict(load_file(file), strict=True)
    except RuntimeError as e:     # missing / unexpected / mis-shaped tensors
        raise SSTConfigError(f"{file} does not match its config in sst_config.json: {e}") from None
    return module.eval()


def open_sst(path=None, device="cpu", dtype=torch.float32, quantize: str | None = None,
             **engine_options) -> SSTModel:
    """Open an SST checkpoint folder (default: the embedded model, built on first use).
    `quantize="int8"` / `"w8a8"`: int8 LLM projections (models/quantize.py), made after the trained
    adapter is merged.
    `engine_options` go to Engine.from_pretrained (block_size, cache_memory, ...)."""
    from hpo_engine.runtime.engine import Engine

    if path is None:
        from .default_model import default_sst_path
        path = default_sst_path()
    path = Path(path)
    if has_manifest(path):      # an export (train/export.py): its files as they were written
        try:
            check_manifest(path)
        except IntegrityError as e:
            raise SSTConfigError(f"damaged SST checkpoint: {e}") from None
    config = SSTConfig.load(path)
    encoder = load_encoder(config, path).to(device)
    speech_adapter = load_adapter(config, path, encoder).to(device)
    options = {"placeholder_token_id": config.placeholder_token_id,
               "max_cache_tokens": config.max_cache_tokens, **engine_options}
    engine = Engine.from_pretrained(path, device=device, dtype=dtype, **options)
    adapter = read_adapter(path)
    if adapter is not None:     # a trained checkpoint: base LLM files + the small trained part
        try:
            apply_adapter(engine.model, adapter, str(path / ADAPTER_FILE))
        except ValueError as e:
            raise SSTConfigError(str(e)) from None
    if quantize is not None:
        quantize_model(engine.model, quantize)
    if engine.tokenizer is None:
        raise SSTConfigError(f"{path} has no tokenizer files; an SST checkpoint needs them")
    width, stack = speech_adapter.cfg.d_llm, speech_adapter.cfg.stack
    if width != engine.config.hidden_size:
        raise SSTConfigError(f"speech adapter width {width} != LLM hidden size {engine.config.hidden_size}")
    if config.frames_per_chunk * stack * 20 != config.chunk_ms:
        raise SSTConfigError(f"chunk_ms={config.chunk_ms} does not hold frames_per_chunk={config.frames_per_chunk} "
                             f"rows of {stack * 20} ms")
    if isinstance(speech_adapter, (CTCBridge, WhisperTranscriber)):
        try:
            speech_adapter.attach_llm(engine.model.model.embed_tokens.weight, engine.tokenizer)
        except ValueError as e:
            raise SSTConfigError(f"{path / adapter_file(speech_adapter)}: {e}") from None
    return SSTModel(path, config, engine, encoder, speech_adapter)
