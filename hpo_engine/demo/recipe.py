"""The demo model's recipe after the data: SFT, then HPO, then the paper-style evaluation.

    OUT/sft/      `hpo-engine train` with configs/demo_sft.yaml from the untrained default checkpoint;
                  OUT/sft/sst is the SFT model (an SST checkpoint: base files linked + small trained part)
    OUT/hpo/      configs/demo_hpo.yaml from OUT/sft/sst; OUT/hpo/sst is the HPO model
    OUT/bridge_sft/   configs/bridge_sft.yaml from OUT/bridge/sst (CTC bridge + Qwen2.5-0.5B, `assemble`)
    OUT/transcriber_sft/   configs/transcriber_sft.yaml from OUT/transcriber/sst (`assemble-transcriber`)
    OUT/transcriber_mix/   configs/transcriber_mix.yaml from OUT/transcriber_sft/sst on OUT/train.mixed.audio.jsonl
                  (`mix`: OUT's talks and another language's, each line naming its target_lang)
    OUT/eval/     per model and chunk multiplier m: instances (SimulEval JSONL) and scores (JSON);
                  table.md: BLEU, chrF, StreamLAAL, StreamLAAL_CA per model and m

Every stage resumes: training from its last checkpoint, evaluation skips finished score files.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

REPO_CONFIGS = Path(__file__).resolve().parents[2] / "configs"
STAGES = ("sft", "hpo")
# each stage's starting checkpoint, relative to OUT (None: the untrained embedded default)
START = {"sft": None, "hpo": "sft/sst", "bridge_sft": "bridge/sst", "transcriber_sft": "transcriber/sst",
         "transcriber_mix": "transcriber_sft/sst"}
VALID_TALKS = 16      # validation decodes every talk greedily: a subset keeps it to a minute on CPU
BRIDGE_VALID_TALKS = 4   # Qwen2.5-0.5B decodes ~5x slower than SmolLM2 here: 4 talks take ~1.5 min
QWEN_STAGES = ("bridge_sft", "transcriber_sft", "transcriber_mix")    # configs/<stage>.yaml, over Qwen2.5-0.5B


# a transcriber reads audio: these train on manifests naming wavs (data --audio; mix)
TRAIN_MANIFEST = {"transcriber_sft": "train.audio.jsonl", "transcriber_mix": "train.mixed.audio.jsonl"}


def valid_subset(out: Path, n: int = VALID_TALKS, manifest: str = "valid.jsonl") -> Path:
    """OUT/<manifest stem>_<n>.jsonl: the first n validation talks."""
    path = out / f"{manifest.removesuffix('.jsonl').replace('.', '_')}_{n}.jsonl"
    if not path.is_file():
        if not (out / manifest).is_file():
            raise FileNotFoundError(f"{out / manifest} is missing: run `python -m hpo_engine.demo data {out}"
                                    f"{' --audio' if 'audio' in manifest else ''}` first")
        lines = (out / manifest).read_text().splitlines()[:n]
        path.write_text("".join(line + "\n" for line in lines))
    return path


def stage_config(out: Path, stage: str, steps: int | None = None, config: Path | None = None):
    """The stage's training config with this build's paths filled in."""
    from hpo_engine.sst.default_model import default_sst_path
    from hpo_engine.train.config import load_config

    out = Path(out).resolve()       # the config's relative paths would resolve against configs/
    start = default_sst_path(trained=False) if START[stage] is None else out / START[stage]
    if not (start / "sst_config.json").is_file():
        raise FileNotFoundError(f"{start} is missing: run the stage that makes it first")
    train_manifest = TRAIN_MANIFEST.get(stage, "train.jsonl")
    if not (out / train_manifest).is_file():
        how = {"transcriber_sft": "data OUT --audio", "transcriber_mix": "mix OUT OTHER"}.get(stage, "data OUT")
        raise FileNotFoundError(f"{out / train_manifest} is missing: run `python -m hpo_engine.demo {how}` first")
    valid_manifest = "valid.audio.jsonl" if stage in TRAIN_MANIFEST else "valid.jsonl"
    overrides = {"model": {"path": str(start)}, "output_dir": str(out / stage),
                 "data": {"train": str(out / train_manifest),
                          "valid": str(valid_subset(out, BRIDGE_VALID_TALKS if stage in QWEN_STAGES else VALID_TALKS,
                                                    valid_manifest))}}
    if steps is not None:
        overrides["train"] = {"steps": steps}
    default = REPO_CONFIGS / (f"{stage}.yaml" if stage in QWEN_STAGES else f"demo_{stage}.yaml")
    return load_config(config or default, overrides)


def data_language(folder: Path) -> str:
    """The target language of a `data` folder (its test/references.<lang>)."""
    found = sorted(p.suffix[1:] for p in (Path(folder) / "test").glob("references.*"))
    if len(found) != 1:
        raise FileNotFoundError(f"{folder}/test has {len(found)} references.<lang> files: not a `data` folder?")
    return found[0]


def mix_manifests(out, others) -> Path:
    """OUT/train.mixed.audio.jsonl: OUT's training talks and those of each `others` folder (another target
    language), interleaved line by line, each naming its target_lang, their wavs relative to OUT."""
    import os

    out = Path(out).resolve()
    sources = []
    for folder in [out, *map(Path, others)]:
        folder = folder.resolve()
        manifest = folder / "train.audio.jsonl"
        if not manifest.is_file():
            raise FileNotFoundError(f"{manifest} is missing: run `python -m hpo_engine.demo data {folder} --audio`")
        lang = data_language(folder)
        lines = []
        for line in map(json.loads, manifest.read_text(encoding="utf-8").splitlines()):
            audio = os.path.relpath(folder / line["audio"], out)
            lines.append({**line, "id": f"{lang}-{line['id']}", "audio": audio, "target_lang": lang})
        sources.append(lines)
    mixed = [line for group in zip(*sources) for line in group]        # as many of each language
    path = out / "train.mixed.audio.jsonl"
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in mixed), encoding="utf-8")
    tmp.replace(path)
    return path


def train_stage(out, stage: str, steps: int | None = None, config: Path | None = None) -> Path:
    """Train (or resume) one stage; returns its exported SST checkpoint folder."""
    from hpo_engine.train import checkpoint as ckpt
    from hpo_engine.train.trainer import train

    out = Path(out)
    cfg = stage_config(out, stage, steps, config)
    done = ckpt.list_checkpoints(Path(cfg.output_dir) / "checkpoints")
    try:        # a damaged newest checkpoint: train() resumes from the newest intact one
        last = json.loads((done[-1] / "state.json").read_text())["step"] if done else 0
    except (OSError, ValueError, KeyError):
        last = 0
    if last < cfg.train.steps or not (Path(cfg.output_dir) / "sst").is_dir():
        train(cfg, resume=bool(done))       # nothing left to run: resumes only to export the checkpoint
    return Path(cfg.output_dir) / "sst"


def evaluate(out, stages=STAGES, multipliers=(1, 2, 3, 4), threads: int | None = None) -> Path:
    """Translate the test talks with each stage's model at each chunk multiplier, score them
    (long-form: mWER resegmentation, BLEU, chrF, StreamLAAL, StreamLAAL_CA) and write table.md."""
    from tqdm.auto import tqdm

    from hpo_engine.metrics.scoring import score_longform
    from hpo_engine.speech.audio import load_audio
    from hpo_engine.sst.checkpoint import open_sst
    from hpo_engine.sst.simulate import simulate

    out = Path(out)
    test, eval_dir = out / "test", out / "eval"
    eval_dir.mkdir(exist_ok=True)
    wavs = [test / line.strip() for line in (test / "audio.txt").read_text().splitlines() if line.strip()]
    if threads:
        import torch
        torch.set_num_threads(threads)
    for stage in stages:
        model = open_sst(out / stage / "sst")
        base_config = model.config
        for m in multipliers:
            scores = eval_dir / f"{stage}_m{m}.json"
            if scores.is_file():
                continue
            model.config = base_config.with_chunk_multiplier(m)
            log = eval_dir / f"{stage}_m{m}.log"
            with open(log, "w", encoding="utf-8") as f:
                for i, wav in enumerate(tqdm(wavs, desc=f"{stage} m={m}", unit="talk")):
                    inst = simulate(model, load_audio(wav), "de")
                    f.write(json.dumps(inst.to_log(i, source=str(wav)), ensure_ascii=False) + "\n")
            result = score_longform(str(log), str(test / "references.de"), str(test / "segmentation.yaml"), "de")
            scores.write_text(json.dumps(result, indent=1))
        model.config = base_config
    table = eval_dir / "table.md"
    table.write_text(render_table(eval_dir, stages, multipliers))
    return table


def render_table(eval_dir: Path, stages, multipliers) -> str:
    cols = ("BLEU", "chrF", "StreamLAAL", "StreamLAAL_CA")
    lines = ["| model | m (chunk) | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for stage in stages:
        for m in multipliers:
            f = eval_dir / f"{stage}_m{m}.json"
            if not f.is_file():
                continue
            r = json.loads(f.read_text())
            cells = [f"{r[c]:.1f}" if c in ("BLEU", "chrF") else f"{r[c]:.0f}" for c in cols]
            lines.append(f"| {stage.upper()} | {m} ({1.12 * m:.2f} s) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def install_default(checkpoint, package_dir: Path | None = None, description: str | None = None) -> Path:
    """Copy the trained part of an exported checkpoint (sst_config.json, the projector if it has one, the
    LLM adapter; bf16 tensors) into the package as the embedded default (with `description` if given).
    A transcriber checkpoint's Whisper parts are not trained: the default rebuilds them from the assets."""
    import torch
    from safetensors.torch import load_file, save_file

    from hpo_engine.sst.adapter import ADAPTER_FILE
    from hpo_engine.sst.checkpoint import PROJECTOR_FILE
    from hpo_engine.sst.default_model import TRAINED_DIR

    checkpoint, target = Path(checkpoint), Path(package_dir or TRAINED_DIR)
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    config = json.loads((checkpoint / "sst_config.json").read_text())
    if description:
        config["description"] = description
    (target / "sst_config.json").write_text(json.dumps(config, indent=1, ensure_ascii=False))
    for name in (PROJECTOR_FILE, ADAPTER_FILE):
        if name == PROJECTOR_FILE and not config.get("projector"):
            continue
        tensors = load_file(str(checkpoint / name))
        save_file({k: v.to(torch.bfloat16).contiguous() for k, v in tensors.items()}, str(target / Path(name).name))
    return target
