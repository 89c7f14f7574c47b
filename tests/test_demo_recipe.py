"""The demo recipe after the data: evaluation into the paper-style table, and installing a trained
part as the embedded default."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from hpo_engine.demo import recipe
from hpo_engine.demo.pairs import DING_PATH
from hpo_engine.sst import default_model
from hpo_engine.sst.adapter import ADAPTER_FILE
from hpo_engine.sst.checkpoint import PROJECTOR_FILE, open_sst
from test_sst_helpers import one_thread  # noqa: F401

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]   # slow: make test-fast leaves these out


@pytest.mark.skipif(not DING_PATH.is_file() or shutil.which("flite") is None,
                    reason="apt-get install -y trans-de-en flite espeak-ng")
def test_evaluate_writes_scores_and_the_table(tmp_path):
    from hpo_engine.demo.data import build
    build(tmp_path, {"train": 1, "valid": 1, "test": 2}, seed=5, progress=False)
    (tmp_path / "sft").mkdir()
    (tmp_path / "sft" / "sst").symlink_to(default_model.default_sst_path(trained=False))   # any checkpoint
    table = recipe.evaluate(tmp_path, stages=("sft",), multipliers=(1, 2))
    rows = table.read_text().splitlines()
    assert rows[0] == "| model | m (chunk) | BLEU | chrF | StreamLAAL | StreamLAAL_CA |"
    assert [r.split("|")[1:3] for r in rows[2:]] == [[" SFT ", " 1 (1.12 s) "], [" SFT ", " 2 (2.24 s) "]]
    for m in (1, 2):
        scores = json.loads((tmp_path / "eval" / f"sft_m{m}.json").read_text())
        assert {"BLEU", "chrF", "StreamLAAL", "StreamLAAL_CA"} <= set(scores)
        for line in (tmp_path / "eval" / f"sft_m{m}.log").read_text().splitlines():
            inst = json.loads(line)     # a unit is written when an m x 1.12 s chunk completes, or at the end
            assert all(d % (1120 * m) == 0 or d == pytest.approx(inst["source_length"], abs=1) for d in inst["delays"])
    before = (tmp_path / "eval" / "sft_m1.json").stat().st_mtime_ns
    recipe.evaluate(tmp_path, stages=("sft",), multipliers=(1, 2))          # finished scores are kept
    assert (tmp_path / "eval" / "sft_m1.json").stat().st_mtime_ns == before


def test_installed_trained_part_becomes_the_default(tmp_path, monkeypatch):
    base = default_model.default_sst_path(trained=False)
    ckpt = tmp_path / "exported"
    (ckpt / "speech").mkdir(parents=True)
    config = json.loads((base / "sst_config.json").read_text())
    config.update(trained=True, description="test adapter")
    (ckpt / "sst_config.json").write_text(json.dumps(config))
    gen = torch.Generator().manual_seed(0)
    projector = {k: v + 0.01 * torch.randn(v.shape, generator=gen) for k, v in load_file(base / PROJECTOR_FILE).items()}
    save_file(projector, ckpt / PROJECTOR_FILE)
    key = "model__layers__3__self_attn__q_proj"
    adapter = {f"lora.A.{key}": torch.randn(4, 576, generator=gen), f"lora.B.{key}": torch.randn(576, 4, generator=gen)}
    save_file(adapter, ckpt / ADAPTER_FILE)

    monkeypatch.setattr(default_model, "TRAINED_DIR", tmp_path / "package" / "default")
    installed = recipe.install_default(ckpt)
    assert sorted(f.name for f in installed.iterdir()) == ["llm_adapter.safetensors", "projector.safetensors",
                                                            "sst_config.json"]
    assert all(t.dtype == torch.bfloat16 for t in load_file(installed / "llm_adapter.safetensors").values())
    folder = default_model.default_sst_path()
    try:
        assert folder != base and folder.name.startswith("sst-default-")
        model = open_sst(folder)
        assert model.config.trained and model.config.description == "test adapter"
        plain = open_sst(base)
        w, w0 = model.engine.model.model.layers[3].self_attn.q_proj.weight, plain.engine.model.model.layers[3].self_attn.q_proj.weight
        bf = {k: v.to(torch.bfloat16).float() for k, v in adapter.items()}
        torch.testing.assert_close(w, w0 + bf[f"lora.B.{key}"] @ bf[f"lora.A.{key}"], atol=1e-4, rtol=1e-4)
        other = model.engine.model.model.layers[2].self_attn.q_proj.weight
        assert torch.equal(other, plain.engine.model.model.layers[2].self_attn.q_proj.weight)
        torch.testing.assert_close(model.adapter.fc1.weight, projector["fc1.weight"].to(torch.bfloat16).float())
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_mix_interleaves_languages_with_their_target_lang_and_paths_relative_to_out(tmp_path):
    from hpo_engine.train.data import read_manifest
    for lang, n in (("de", 3), ("zh", 2)):
        folder = tmp_path / lang
        (folder / "test").mkdir(parents=True)
        (folder / "test" / f"references.{lang}").write_text("x\n")
        (folder / "train" / "wav").mkdir(parents=True)
        lines = []
        for i in range(n):
            (folder / "train" / "wav" / f"train-{i}.wav").write_bytes(b"RIFF")
            lines.append({"id": f"train-{i}", "audio": f"train/wav/train-{i}.wav", "window_start": 0.0,
                          "window_end": 1.0, "segments": [{"start": 0.1, "end": 0.9}],
                          "src_segments": [f"Sentence {i}."], "tgt_segments": [f"{lang} {i}"]})
        (folder / "train.audio.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    path = recipe.mix_manifests(tmp_path / "de", [tmp_path / "zh"])
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [(x["id"], x["target_lang"]) for x in lines] == [("de-train-0", "de"), ("zh-train-0", "zh"),
                                                            ("de-train-1", "de"), ("zh-train-1", "zh")]
    assert lines[1]["audio"] == "../zh/train/wav/train-0.wav"
    records = read_manifest(path)           # every wav is found from the mixed manifest
    assert [r.target_lang for r in records] == ["de", "zh", "de", "zh"]
    with pytest.raises(FileNotFoundError, match="train.audio.jsonl is missing"):
        recipe.mix_manifests(tmp_path / "de", [tmp_path / "de" / "train"])
    (tmp_path / "xx").mkdir()
    (tmp_path / "xx" / "train.audio.jsonl").write_text((tmp_path / "zh" / "train.audio.jsonl").read_text())
    with pytest.raises(FileNotFoundError, match="references.<lang>"):
        recipe.mix_manifests(tmp_path / "de", [tmp_path / "xx"])
