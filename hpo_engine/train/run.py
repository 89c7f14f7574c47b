"""The wiring of a training run: the model, what trains, the engine on the same weights, the KL
reference, the optimizer, the data and the reward's scorers, built from a TrainConfig."""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from hpo_engine.models.loader import load_model, load_tokenizer
from hpo_engine.runtime.engine import Engine
from hpo_engine.sst.adapter import apply_adapter, read_adapter
from hpo_engine.sst.config import SSTConfig
from hpo_engine.train.config import ConfigError, TrainConfig
from hpo_engine.train.data import WindowLoader, load_window, read_manifest
from hpo_engine.train.distributed import World, init_world
from hpo_engine.train.master_weights import MasterWeights
from hpo_engine.train.reward import QualityScorer
from hpo_engine.train.rollout import DialogueFormat, TextCodec, banned_vocab_mask
from hpo_engine.train.trainable import Trainable, frozen_copy, select


@dataclass
class Run:
    cfg: TrainConfig
    model: torch.nn.Module
    trainable: Trainable                   # what the update changes (LLM weights, LoRA, projector)
    ref_model: torch.nn.Module | None      # frozen initial LLM (HPO's KL reference) when LLM weights train
    ref_projector: torch.nn.Module | None  # frozen initial projector (SST checkpoints)
    sst: SSTConfig | None                  # set when model.path is an SST checkpoint
    engine: Engine
    optimizer: torch.optim.Optimizer
    fmt: DialogueFormat
    codec: TextCodec
    banned: torch.Tensor                   # [V] bool, ids the sampler never draws
    loader: WindowLoader
    valid: list                            # validation windows (may be empty)
    out_dir: Path
    scorer: QualityScorer
    master: MasterWeights | None = None    # fp32 masters when the model is not float32
    embedder: object | None = None         # sentence embedder of the embedding segmenter (reward.segmenter)
    continued_lora: bool = False           # the LoRA continues the base checkpoint's (it replaces it on export)
    world: World = World()                 # this process's rank among the data-parallel replicas
    formats: dict = field(default_factory=dict)   # DialogueFormat per other target language (format_for)

    @property
    def rows_per_embedding(self) -> int:
        """Speech rows per placeholder: encoder frames per embedding with a projector, else 1."""
        return self.trainable.projector.cfg.stack if self.trainable.projector is not None else 1

    @property
    def embed_speech(self):
        return self.trainable.embed_speech if self.trainable.projector is not None else None

    def language_of(self, window) -> str:
        return window.target_lang or self.cfg.dialogue.target_lang

    def format_for(self, lang: str) -> DialogueFormat:
        """The dialogue in `lang` (its instruction in the system prompt); run.fmt is dialogue.target_lang's."""
        if lang == self.cfg.dialogue.target_lang:
            return self.fmt
        if lang not in self.formats:        # check_languages made sure an SST checkpoint names it
            self.formats[lang] = DialogueFormat.from_sst(self.sst, self.codec.tokenizer, lang)
        return self.formats[lang]


def step_seed(cfg: TrainConfig, step: int) -> int:
    """Rollout seed of a step (sample g of window b adds b * G + g): a resumed run samples the same."""
    return cfg.seed * 1_000_003 + step * 65_537


def setup(cfg: TrainConfig) -> Run:
    world = init_world(cfg.model.device)
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    import random
    random.seed(cfg.seed)
    dtype, m, d = getattr(torch, cfg.model.dtype), cfg.model, cfg.dialogue
    model = load_model(m.path, device=m.device, dtype=dtype)
    tokenizer = load_tokenizer(m.path)
    speech = open_speech_parts(cfg)
    sst, projector, encode_audio = speech.sst, speech.projector, speech.encode_audio
    # an SST checkpoint trained before (SFT before HPO): start from its weights. Its LoRA update is
    # trained on (not stacked under a new one) when this run trains a LoRA of the same shape.
    base_adapter = read_adapter(m.path) if sst is not None else None
    continued = continued_lora(base_adapter, model, m)
    if base_adapter:
        apply_adapter(model, {k: v for k, v in base_adapter.items() if k not in continued})
    if sst is not None:
        fmt = DialogueFormat.from_sst(sst, tokenizer, d.target_lang)
    else:
        fmt = DialogueFormat.from_config(d, tokenizer, model.config.vocab_size)
    trainable = select(model, m.train_llm, projector, m.train_projector, m.lora_rank, m.lora_alpha,
                       m.lora_targets, cfg.seed)
    if continued:
        trainable.lora.load_scaled_tensors({k[5:]: v for k, v in continued.items()})
    engine = Engine(model, tokenizer, placeholder_token_id=fmt.placeholder_id, num_blocks=m.num_blocks,
                    block_size=m.block_size)
    ref_model = None
    if cfg.mode == "hpo" and (continued or any(p.requires_grad for p in model.parameters())):
        # reloaded from the base folder, so a resumed run has the same reference
        ref_model = load_model(m.path, device=m.device, dtype=dtype).requires_grad_(False)
        if base_adapter:
            apply_adapter(ref_model, base_adapter)
    params = trainable.parameters()
    world.broadcast_parameters(params)     # replicas start equal whatever the local init did
    master = MasterWeights(params) if dtype != torch.float32 else None
    optimizer = make_optimizer(master.params if master else params, cfg.optim, world)
    # speech rows per placeholder: encoder frames with a projector (it runs in the trainer), 1 otherwise
    stack = (projector or speech.bridge).cfg.stack if sst is not None else 1
    frames, chunks = d.frames_per_chunk * stack, d.chunks_per_window
    window_options = {"encode_audio": encode_audio,
                      "rows_per_placeholder": projector.cfg.stack if projector is not None else 1,
                      "chunk_rows": bridge_chunk_rows(speech.bridge, model, tokenizer) if speech.bridge is not None else None}
    records = read_manifest(cfg.data.train)
    valid_records = read_manifest(cfg.data.valid) if cfg.data.valid else []
    check_languages(cfg, sst, records, valid_records)
    loader = WindowLoader(records, frames, chunks, seed=cfg.seed, shuffle=cfg.data.shuffle, **window_options)
    valid = [load_window(r, frames, chunks, **window_options) for r in valid_records]
    scorer = QualityScorer(cfg.reward.quality, d.target_lang, cfg.reward.quality_model_path, m.device) \
        if cfg.mode == "hpo" else QualityScorer("chrf")
    embedder = None
    if cfg.reward.segmenter == "embedding":
        from hpo_engine.metrics.embed_align import MiniLMEmbedder
        embedder = MiniLMEmbedder(cfg.reward.embedder_path, device=m.device)
    return Run(cfg, model, trainable, ref_model, frozen_copy(projector), sst, engine, optimizer, fmt,
               TextCodec(tokenizer, fmt.stop_id), banned_vocab_mask(fmt, model.config.vocab_size), loader, valid,
               Path(cfg.output_dir), scorer, master, embedder, bool(continued), world)


def check_languages(cfg: TrainConfig, sst: SSTConfig | None, train: list, valid: list) -> None:
    """Windows may name their own target_lang in SFT training only; validation (and HPO's rollouts and
    rewards) run in dialogue.target_lang. Every language must be one the checkpoint has an instruction for."""
    d = cfg.dialogue
    for name, records in (("data.train", train), ("data.valid", valid)):
        other = sorted({r.target_lang for r in records if r.target_lang not in (None, d.target_lang)})
        if not other:
            continue
        if name == "data.valid" or cfg.mode != "sft":
            raise ConfigError(f"{name}: windows in {', '.join(other)}, but "
                              f"{'validation' if name == 'data.valid' else 'HPO'} runs in dialogue.target_lang "
                              f"{d.target_lang!r} only")
        if sst is None:
            raise ConfigError(f"{name}: windows in {', '.join(other)} need an SST checkpoint (its instructions "
                              f"name the languages)")
        for lang in other:
            try:
                sst.instruction(lang)
            except ValueError as e:
                raise ConfigError(f"{name}: {e}") from None


def make_optimizer(params: list[torch.Tensor], o, world: World) -> torch.optim.Optimizer:
    """AdamW; with optim.shard_optimizer_state under torchrun, torch's ZeroRedundancyOptimizer: each rank
    steps and keeps the state of its 1/N of the parameters, then the updated values are broadcast. Its
    state_dict, consolidated on rank 0 for a checkpoint, is a plain AdamW's (any process count resumes)."""
    kwargs = {"lr": o.lr, "weight_decay": o.weight_decay, "betas": tuple(o.betas)}
    if o.shard_optimizer_state and world.size > 1:
        from torch.distributed.optim import ZeroRedundancyOptimizer
        return ZeroRedundancyOptimizer(params, optimizer_class=torch.optim.AdamW, **kwargs)
    return torch.optim.AdamW(params, **kwargs)


def continued_lora(base_adapter, model, m) -> dict:
    """The base adapter's lora.* tensors when this run trains a LoRA of the same rank on the same
    layers (then it continues training them), else {} (a new LoRA goes on top of the merged base)."""
    if not base_adapter or m.train_llm != "lora":
        return {}
    lora = {k: v for k, v in base_adapter.items() if k.startswith("lora.")}
    wanted = {f"lora.{ab}.{n.replace('.', '__')}" for n, mod in model.named_modules()
              if isinstance(mod, torch.nn.Linear) and n.rsplit(".", 1)[-1] in m.lora_targets for ab in "AB"}
    same = set(lora) == wanted and all(v.shape[0 if k.startswith("lora.A.") else 1] == m.lora_rank
                                       for k, v in lora.items())
    return lora if same else {}


@dataclass
class SpeechParts:
    """An SST checkpoint's speech side as training uses it."""
    sst: SSTConfig | None = None
    projector: torch.nn.Module | None = None     # trainable (a projector checkpoint)
    encode_audio: object = None                   # (path, start_s, end_s) -> encoder frames, for `audio` lines
    bridge: torch.nn.Module | None = None        # frozen (a CTC-bridge or transcriber checkpoint)


def open_speech_parts(cfg: TrainConfig) -> SpeechParts:
    """The speech side of an SST checkpoint folder (all None for a plain LLM). The chunk geometry of the
    config must be the checkpoint's (what serving will use)."""
    from hpo_engine.sst.config import CONFIG_NAME
    folder = Path(cfg.model.path)
    if not (folder / CONFIG_NAME).is_file():
        return SpeechParts()
    from hpo_engine.sst.checkpoint import load_adapter, load_encoder
    from hpo_engine.speech import WhisperEncoder

    sst = SSTConfig.load(folder)
    d = cfg.dialogue
    if d.frames_per_chunk != sst.frames_per_chunk:
        raise ConfigError(f"dialogue.frames_per_chunk: {d.frames_per_chunk}, but the SST checkpoint's is "
                          f"{sst.frames_per_chunk}")
    if abs(d.chunk_seconds * 1000 - sst.chunk_ms) > 1e-6:
        raise ConfigError(f"dialogue.frame_seconds: chunks of {d.chunk_seconds * 1000:g} ms, but the SST "
                          f"checkpoint's are {sst.chunk_ms} ms")
    sst.instruction(d.target_lang)      # an unsupported language fails here, naming it
    adapter = load_adapter(sst, folder).to(cfg.model.device).float()
    @functools.cache
    def encoder() -> WhisperEncoder:      # loaded on the first `audio` window only
        return load_encoder(sst, folder)

    def encode_audio(path, start_s: float, end_s: float) -> np.ndarray:
        """[start_s, end_s] of an audio file as the adapter reads it when served: encoder frames,
        streamed as serving streams them, or 20 ms PCM frames [n, 320] for an adapter that reads audio."""
        from hpo_engine.speech.audio import SAMPLE_RATE, load_audio
        from hpo_engine.speech.frontend import FRAME_MS, AudioFrames
        from hpo_engine.speech.streaming import StreamingEncoder
        wave = load_audio(path)[int(start_s * SAMPLE_RATE):int(end_s * SAMPLE_RATE)]
        if getattr(adapter, "reads_audio", False):
            frames = AudioFrames(sst.chunk_ms // FRAME_MS)
            return torch.cat([frames.push(wave), frames.flush()]).numpy()
        stream = StreamingEncoder(encoder(), sst.chunk_ms // FRAME_MS, sst.left_context_ms // FRAME_MS)
        with torch.inference_mode():
            frames = torch.cat([stream.push(wave), stream.flush()])
        return frames.float().numpy()

    if sst.bridge or sst.transcriber:
        return SpeechParts(sst, None, encode_audio, adapter)
    return SpeechParts(sst, adapter.train(), encode_audio)


def bridge_chunk_rows(bridge, model, tokenizer):
    """A frozen bridge (CTC or transcriber) as load_window's `chunk_rows`: a window's chunks of encoder
    frames -> each chunk's rows of the LLM's embedding table (the bridge's state carried from chunk to
    chunk and the last chunk final when the talk ends there, as served). The table is taken once, at
    start: right for LoRA and frozen embeddings, stale if they train."""
    bridge.attach_llm(model.model.embed_tokens.weight.float(), tokenizer)

    def chunk_rows(chunks: list[np.ndarray], ends_talk: bool = False) -> list[np.ndarray]:
        state = bridge.new_state()
        with torch.inference_mode():
            return [bridge.chunk_rows(torch.from_numpy(np.ascontiguousarray(c)).float(), state,
                                      final=ends_talk and k == len(chunks) - 1).numpy()
                    for k, c in enumerate(chunks)]
    return chunk_rows
