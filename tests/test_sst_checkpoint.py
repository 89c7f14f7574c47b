"""SST checkpoint folder and sst_config.json."""
import json

import pytest

from hpo_engine.sst.config import CONFIG_NAME, SSTConfig, SSTConfigError
from hpo_engine.sst.dialogue import DialogueTokens
from test_sst_helpers import one_thread, stream_model  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def test_projector_folder_layout_and_honest_config():
    """The untrained SmolLM2 projector checkpoint (the demo's projector SFT start) says what it is."""
    model = stream_model()
    folder = model.path
    for name in ("config.json", CONFIG_NAME, "speech/encoder.safetensors", "speech/projector.safetensors"):
        assert (folder / name).is_file(), name
    assert not list(folder.glob("encoder*.safetensors"))     # speech tensors stay out of the LLM glob
    cfg = model.config
    tok = model.tokenizer
    assert cfg.trained is False and "untrained" in cfg.description          # says what it is
    assert tok.convert_ids_to_tokens(cfg.placeholder_token_id) == "<empty_output>"
    assert cfg.stop_token_ids == [tok.convert_tokens_to_ids("<|im_end|>")]
    banned = set(cfg.banned_token_ids)
    assert set(tok.all_special_ids) - set(cfg.stop_token_ids) <= banned
    assert cfg.placeholder_token_id in banned
    assert tok.encode("\n", add_special_tokens=False)[0] in banned
    assert not banned & set(cfg.stop_token_ids)
    assert cfg.frames_per_chunk * 80 == cfg.chunk_ms == model.new_frontend().max_rows_per_chunk * 80


def test_dialogue_tokens_follow_the_chat_template():
    model = stream_model()
    tok = model.tokenizer
    d = DialogueTokens.build(tok, model.config, "de")
    P = model.config.frames_per_chunk
    first = tok.decode(d.system + d.user_turn(0, P))
    assert first == ("<|im_start|>system\nTranslate the following speech from English to German.<|im_end|>\n"
                     "<|im_start|>user\n" + "<empty_output>" * P + "<|im_end|>\n<|im_start|>assistant\n")
    later = "\n<|im_start|>user\n" + "<empty_output>" * 5 + "<|im_end|>\n<|im_start|>assistant\n"
    assert tok.decode(d.user_turn(3, 5)) == later
    with pytest.raises(SSTConfigError, match="'xx'"):
        DialogueTokens.build(tok, model.config, "xx")


def test_config_errors_name_the_problem(tmp_path):
    with pytest.raises(SSTConfigError, match="sst_config.json is missing"):
        SSTConfig.load(tmp_path)
    good = SSTConfig(placeholder_token_id=16, stop_token_ids=[2], banned_token_ids=[0])
    good.save(tmp_path)
    assert SSTConfig.load(tmp_path) == good
    raw = json.loads((tmp_path / CONFIG_NAME).read_text())
    (tmp_path / CONFIG_NAME).write_text(json.dumps({**raw, "chunk_sec": 1}))
    with pytest.raises(SSTConfigError, match="unknown field"):
        SSTConfig.load(tmp_path)
    (tmp_path / CONFIG_NAME).write_text(json.dumps({**raw, "stop_token_ids": []}))
    with pytest.raises(SSTConfigError, match="stop_token_ids"):
        SSTConfig.load(tmp_path)
    del raw["placeholder_token_id"]
    (tmp_path / CONFIG_NAME).write_text(json.dumps(raw))
    with pytest.raises(SSTConfigError, match="placeholder_token_id"):
        SSTConfig.load(tmp_path)


def test_open_sst_reports_missing_speech_weights(tmp_path):
    from hpo_engine.sst import open_sst
    SSTConfig(placeholder_token_id=16, stop_token_ids=[2], banned_token_ids=[0],
              encoder={"d_model": 8, "n_heads": 2, "n_layers": 1, "d_ff": 16},
              projector={"d_encoder": 8, "d_llm": 16}).save(tmp_path)
    with pytest.raises(SSTConfigError, match="encoder.safetensors"):
        open_sst(tmp_path)
