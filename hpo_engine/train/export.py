"""A training run's result as an SST checkpoint folder that `serve` and `translate` open.

    OUT/  the base checkpoint's LLM files and encoder (hard links), the trained projector (or the base's
          projector, CTC bridge or transcriber),
          speech/llm_adapter.safetensors = the base's adapter combined with what this run trained,
          sst_config.json marked trained, with a description of the run.
Written into OUT.tmp with a manifest of checksums (hpo_engine/manifest.py; open_sst checks it), then
renamed: a half-written folder is never taken for a model, a damaged one is named when opened.
"""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from safetensors.torch import save_file

from hpo_engine.manifest import write_manifest
from hpo_engine.sst.adapter import combine, read_adapter, write_adapter
from hpo_engine.sst.checkpoint import (BRIDGE_FILE, ENCODER_FILE, PROJECTOR_FILE, TRANSCRIBER_FILE,
                                       WHISPER_TOKENIZER_FILE, link_llm_files, link_or_copy)


def export_sst(run, out, description: str) -> Path:
    base, out = Path(run.cfg.model.path), Path(out)
    if run.sst is None:
        raise ValueError(f"{base} is not an SST checkpoint: nothing to export a speech model from")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "speech").mkdir(parents=True)
    link_llm_files(base, tmp)
    link_or_copy(base / ENCODER_FILE, tmp / ENCODER_FILE)
    t = run.trainable
    if t.projector is not None and any(p.requires_grad for p in t.projector.parameters()):
        save_file({k: v.detach().float().contiguous() for k, v in t.projector.state_dict().items()},
                  str(tmp / PROJECTOR_FILE))
    elif run.sst.transcriber:     # frozen: the base's decoder and its tokenizer as they were
        for name in (TRANSCRIBER_FILE, WHISPER_TOKENIZER_FILE):
            link_or_copy(base / name, tmp / name)
    else:       # the base's adapter as it was (a CTC bridge is never trained through the LLM)
        adapter_file = BRIDGE_FILE if run.sst.bridge else PROJECTOR_FILE
        link_or_copy(base / adapter_file, tmp / adapter_file)
    new = {f"llm.{n}": p.detach() for n, p in t.named_llm().items()}
    if t.lora is not None:
        new.update({f"lora.{k}": v for k, v in t.lora.scaled_tensors().items()})
    base_adapter = read_adapter(base) or {}
    if run.continued_lora:      # the trained LoRA started as the base's: it replaces it
        base_adapter = {k: v for k, v in base_adapter.items() if not k.startswith("lora.")}
    adapter = combine(base_adapter, new)
    if adapter:
        write_adapter(tmp, adapter)
    config = dataclasses.replace(run.sst, trained=True, description=description)
    config.save(tmp)
    write_manifest(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
