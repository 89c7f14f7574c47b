"""Training configuration: nested dataclasses read from YAML, every field checked by name.

A bad value raises ConfigError naming the dotted field (`rollout.group_size: ...`); unknown keys
are errors too (a typo must not silently fall back to a default).
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from hpo_engine.models.lora import TARGETS as LORA_TARGETS
from hpo_engine.rl.reward import DEFAULT_QUALITY_THRESHOLD


class ConfigError(ValueError):
    pass


@dataclass
class ModelSection:
    # A Hugging Face model folder, or an SST checkpoint folder (with sst_config.json: its projector maps
    # encoder frames to embeddings, and its template, ids and chunk geometry define the dialogue)
    path: str = ""                       # the policy's start and the KL reference
    dtype: str = "float32"               # float32 | bfloat16
    device: str = "cpu"
    num_blocks: int | None = None        # engine KV pool (None: sized by the engine)
    block_size: int = 16
    train_llm: str = "all"               # which LLM weights change: all | none | lora | last:N (last N layers + norm)
    lora_rank: int = 16
    lora_alpha: float = 32.0
    lora_targets: list[str] = field(default_factory=lambda: list(LORA_TARGETS))
    train_projector: bool = True         # SST checkpoints: train the speech projector too


@dataclass
class DialogueSection:
    instruction: str = "Translate the following speech from English to German."
    target_lang: str = "de"
    frames_per_chunk: int = 14           # P placeholders per user turn (14 x 80 ms = 1.12 s)
    frame_seconds: float = 0.08
    chunks_per_window: int = 60
    # Template ids for tokenizer-less models (tests); None: built from the tokenizer's ChatML tokens.
    first_prefix_ids: list[int] | None = None   # system turn + "<|im_start|>user\n"
    turn_prefix_ids: list[int] | None = None    # "\n<|im_start|>user\n" (after the previous <|im_end|>)
    turn_suffix_ids: list[int] | None = None    # "<|im_end|>\n<|im_start|>assistant\n"
    placeholder_token_id: int | None = None     # None: <|video_pad|> of the tokenizer
    stop_token_id: int | None = None            # None: <|im_end|> of the tokenizer
    banned_token_ids: list[int] | None = None   # None: every id above the stop token and "\n" tokens

    @property
    def chunk_seconds(self) -> float:
        return self.frames_per_chunk * self.frame_seconds


@dataclass
class DataSection:
    train: str = ""
    valid: str | None = None
    shuffle: bool = True


@dataclass
class RolloutSection:
    windows_per_step: int = 32           # B
    group_size: int = 16                 # G
    temperature: float = 1.0
    top_p: float = 0.999
    top_k: int = 10000
    max_new_tokens_per_turn: int = 40
    windows_together: int | None = None  # windows whose groups decode in one batch (None: all; bounds KV memory)


@dataclass
class RewardSection:
    quality: str = "chrf"                # chrf | bleu (sentence level, 0..100) | metricx (negated) | comet
    quality_model_path: str | None = None   # local MetricX-24 folder / COMET .ckpt (never downloaded)
    segmenter: str = "mwer"              # mwer (edit distance to the references) | embedding (vecalign-style)
    embedder_path: str | None = None     # embedding segmenter: a sentence-embedding model folder (default MiniLM)
    alpha: float = 1.0
    beta: float = 0.5
    quality_threshold: float = DEFAULT_QUALITY_THRESHOLD   # the gate q*, in the quality metric's units: the
                                         # paper's -5 is for negated MetricX; a chrF / BLEU run sets its own
    max_latency: float = 10.0
    granularity: str = "sentence"        # sentence | document | none | seqpo


@dataclass
class LossSection:
    clip_eps_low: float = 0.2
    clip_eps_high: float = 0.2
    dual_clip_c: float | None = None
    kl_coef: float = 0.01
    on_policy_kl_weight: bool = True
    importance_sampling: bool = True
    is_cap: float | None = None


@dataclass
class OptimSection:
    lr: float = 1e-6
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    grad_clip: float = 1.0
    global_batch: int = 128              # samples per optimizer update (HPO: 512 rollouts -> 4 updates)
    max_tokens_per_microbatch: int = 4096
    gradient_checkpointing: bool = False     # recompute each layer in backward (less activation memory)
    shard_optimizer_state: bool = False      # under torchrun: each rank keeps 1/N of AdamW's state (ZeRO-1)


@dataclass
class SFTSection:
    lag_chunks: int = 2                  # k: a sentence's words start k chunks after its source span starts
    batch_size: int = 8                  # windows per optimizer update


@dataclass
class TrainSection:
    steps: int = 100
    checkpoint_every: int = 10
    keep_best: int = 3
    validate_every: int = 10
    validation_metric: str = "chrF"      # chrF | BLEU (higher is better)
    progress_bar: bool = True
    tensorboard: bool = True             # also write TensorBoard scalars when the package is installed
    num_threads: int | None = None       # torch CPU threads (1 is far faster on a loaded small machine)


@dataclass
class TrainConfig:
    mode: str = "hpo"                    # hpo | sft
    seed: int = 0
    output_dir: str = "runs/hpo"
    model: ModelSection = field(default_factory=ModelSection)
    dialogue: DialogueSection = field(default_factory=DialogueSection)
    data: DataSection = field(default_factory=DataSection)
    rollout: RolloutSection = field(default_factory=RolloutSection)
    reward: RewardSection = field(default_factory=RewardSection)
    loss: LossSection = field(default_factory=LossSection)
    optim: OptimSection = field(default_factory=OptimSection)
    sft: SFTSection = field(default_factory=SFTSection)
    train: TrainSection = field(default_factory=TrainSection)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# -- reading -----------------------------------------------------------------------------------------

def _convert(value, hint, name: str):
    """`value` as the annotated type `hint`, or ConfigError naming the field."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)][0]
        return _convert(value, inner, name)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        return [_convert(v, args[0], f"{name}[{i}]") for i, v in enumerate(value)]
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name}: expected a string, got {value!r}")
        return value
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, name)
    raise ConfigError(f"{name}: unsupported type {hint}")


def _build(cls, data, prefix: str):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"{where}{unknown[0]}: unknown field (known: {', '.join(sorted(names))})")
    kwargs = {k: _convert(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    return cls(**kwargs)


def _require(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{name}: {message}")


def validate(cfg: TrainConfig) -> TrainConfig:
    """Range checks; each error names its field."""
    _require(cfg.mode in ("hpo", "sft"), "mode", f"must be 'hpo' or 'sft', got {cfg.mode!r}")
    _require(bool(cfg.model.path), "model.path", "is required (a Hugging Face model folder)")
    _require(cfg.model.dtype in ("float32", "bfloat16"), "model.dtype",
             f"must be float32 or bfloat16, got {cfg.model.dtype!r}")
    m = cfg.model
    _require(m.train_llm in ("all", "none", "lora") or (m.train_llm.startswith("last:") and m.train_llm[5:].isdigit()
                                                        and int(m.train_llm[5:]) >= 1),
             "model.train_llm", f"must be all, none, lora or last:N (N >= 1), got {m.train_llm!r}")
    _require(m.lora_rank >= 1, "model.lora_rank", f"must be >= 1, got {m.lora_rank}")
    _require(bool(m.lora_targets) and set(m.lora_targets) <= set(LORA_TARGETS), "model.lora_targets",
             f"must be a non-empty subset of {', '.join(LORA_TARGETS)}, got {m.lora_targets}")
    _require(bool(cfg.data.train), "data.train", "is required (a JSONL or parquet manifest)")
    d = cfg.dialogue
    for name in ("frames_per_chunk", "chunks_per_window"):
        _require(getattr(d, name) >= 1, f"dialogue.{name}", f"must be >= 1, got {getattr(d, name)}")
    _require(d.frame_seconds > 0, "dialogue.frame_seconds", f"must be > 0, got {d.frame_seconds}")
    r = cfg.rollout
    _require(r.windows_per_step >= 1, "rollout.windows_per_step", f"must be >= 1, got {r.windows_per_step}")
    _require(r.group_size >= 1, "rollout.group_size", f"must be >= 1, got {r.group_size}")
    _require(r.temperature > 0, "rollout.temperature", f"must be > 0 for RL sampling, got {r.temperature}")
    _require(0 < r.top_p <= 1, "rollout.top_p", f"must be in (0, 1], got {r.top_p}")
    _require(r.top_k >= 0, "rollout.top_k", f"must be >= 0, got {r.top_k}")
    _require(r.windows_together is None or r.windows_together >= 1, "rollout.windows_together",
             f"must be >= 1, got {r.windows_together}")
    _require(r.max_new_tokens_per_turn >= 1, "rollout.max_new_tokens_per_turn",
             f"must be >= 1, got {r.max_new_tokens_per_turn}")
    w = cfg.reward
    _require(w.quality in ("chrf", "bleu", "metricx", "comet"), "reward.quality",
             f"must be chrf, bleu, metricx or comet, got {w.quality!r}")
    if w.quality in ("metricx", "comet") and cfg.mode == "hpo":
        _require(bool(w.quality_model_path), "reward.quality_model_path",
                 f"is required for reward.quality = {w.quality} (a local checkpoint)")
    _require(w.segmenter in ("mwer", "embedding"), "reward.segmenter",
             f"must be mwer or embedding, got {w.segmenter!r}")
    _require(w.granularity in ("sentence", "document", "none", "seqpo"), "reward.granularity",
             f"must be sentence, document, none or seqpo, got {w.granularity!r}")
    _require(w.max_latency > 0, "reward.max_latency", f"must be > 0, got {w.max_latency}")
    o = cfg.optim
    _require(o.lr > 0, "optim.lr", f"must be > 0, got {o.lr}")
    _require(o.weight_decay >= 0, "optim.weight_decay", f"must be >= 0, got {o.weight_decay}")
    _require(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), "optim.betas",
             f"must be two numbers in [0, 1), got {o.betas}")
    _require(o.grad_clip > 0, "optim.grad_clip", f"must be > 0, got {o.grad_clip}")
    _require(o.global_batch >= 1, "optim.global_batch", f"must be >= 1, got {o.global_batch}")
    if cfg.mode == "hpo":
        n = r.windows_per_step * r.group_size
        _require(n % o.global_batch == 0, "optim.global_batch",
                 f"must divide the {n} samples of a step (rollout.windows_per_step x rollout.group_size)")
    _require(o.max_tokens_per_microbatch >= 1, "optim.max_tokens_per_microbatch",
             f"must be >= 1, got {o.max_tokens_per_microbatch}")
    _require(cfg.sft.lag_chunks >= 0, "sft.lag_chunks", f"must be >= 0, got {cfg.sft.lag_chunks}")
    _require(cfg.sft.batch_size >= 1, "sft.batch_size", f"must be >= 1, got {cfg.sft.batch_size}")
    t = cfg.train
    for name in ("steps", "checkpoint_every", "keep_best", "validate_every"):
        _require(getattr(t, name) >= 1, f"train.{name}", f"must be >= 1, got {getattr(t, name)}")
    _require(t.num_threads is None or t.num_threads >= 1, "train.num_threads", f"must be >= 1, got {t.num_threads}")
    _require(t.validation_metric in ("chrF", "BLEU"), "train.validation_metric",
             f"must be chrF or BLEU, got {t.validation_metric!r}")
    return cfg


def load_config(path: str | Path, overrides: dict | None = None) -> TrainConfig:
    """Read and check a YAML config. Relative paths inside it are taken from the YAML file's folder."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if overrides:
        data = _merge(data, overrides)
    cfg = from_dict(data)
    base = path.parent
    for section, key in (("model", "path"), ("data", "train"), ("data", "valid"), (None, "output_dir"),
                         ("reward", "quality_model_path"), ("reward", "embedder_path")):
        obj = getattr(cfg, section) if section else cfg
        value = getattr(obj, key)
        if value and not Path(value).is_absolute():
            setattr(obj, key, str(base / value))
    return cfg


def from_dict(data: dict) -> TrainConfig:
    return validate(_build(TrainConfig, data, ""))


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
