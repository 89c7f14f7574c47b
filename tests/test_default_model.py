"""The embedded default as users get it: the committed trained part (sst_config.json + LoRA) over Whisper
tiny.en as transcriber and Qwen2.5-Coder-0.5B-Instruct. Its folder says what it is, the LoRA is merged,
and what it writes depends on what is said (different talks, silence). No quality number is asserted:
a retrain could miss it by noise (bench/RESULTS.md holds the scores)."""
import json

import numpy as np
import pytest
import torch

from hpo_engine.sst.config import CONFIG_NAME
from hpo_engine.sst.default_model import TRAINED_DIR
from test_sst_helpers import default_is_trained, default_model, one_thread  # noqa: F401

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow,
              pytest.mark.skipif(not default_is_trained(), reason="no trained default committed")]

TALKS = ["The weather is nice today. I would like to read a good book.",
         "My brother works in a large hospital. He comes home late every night."]


def speak(text: str) -> np.ndarray:
    from hpo_engine.demo.synth import TEST_VOICE, synthesize, trim_silence
    pieces = [np.zeros(3200, np.float32)]
    for sentence in text.split(". "):
        pieces += [trim_silence(synthesize(sentence, TEST_VOICE)), np.zeros(8000, np.float32)]
    return np.concatenate(pieces)


def test_default_folder_is_the_committed_part_over_its_base():
    from hpo_engine.models.loader import load_model
    from hpo_engine.speech.transcriber import WhisperTranscriber

    model = default_model()
    cfg = model.config
    assert json.loads((model.path / CONFIG_NAME).read_text()) == json.loads((TRAINED_DIR / CONFIG_NAME).read_text())
    assert cfg.trained and cfg.description and "untrained" not in cfg.description
    if not cfg.transcriber:
        pytest.skip("the committed default is not a transcriber checkpoint")
    assert isinstance(model.adapter, WhisperTranscriber) and model.adapter.encoder is model.encoder
    tok = model.tokenizer
    assert tok.convert_ids_to_tokens(cfg.placeholder_token_id) == "<|video_pad|>"
    assert cfg.stop_token_ids == [tok.convert_tokens_to_ids("<|im_end|>")]
    assert {"de", "zh"} <= set(cfg.instructions)
    # the LoRA is merged: a projection differs from the base Qwen's
    from hpo_engine.assets.qwen25 import qwen25_path
    base = load_model(qwen25_path(build=False)).model.layers[0].self_attn.q_proj.weight
    assert not torch.allclose(model.engine.model.model.layers[0].self_attn.q_proj.weight, base)


def test_default_translation_depends_on_the_speech():
    from hpo_engine.sst.simulate import simulate

    model = default_model()
    waves = [speak(t) for t in TALKS]
    outs = [simulate(model, w, "de").prediction for w in waves]
    assert all(outs) and outs[0] != outs[1], outs
    silent = simulate(model, np.zeros_like(waves[0]), "de").prediction
    assert len(silent) < min(map(len, outs)), (silent, outs)
