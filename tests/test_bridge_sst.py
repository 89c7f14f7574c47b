"""SST checkpoints whose speech adapter is a CTC bridge: a variable number of rows per chunk, served by
the stream, trained on by SFT (the bridge frozen), exported and reopened."""
import json

import numpy as np
import pytest
import torch

from hpo_engine.speech import EncoderConfig, StreamingEncoder, WhisperEncoder
from hpo_engine.speech.ctc_bridge import CTCBridge, CTCBridgeConfig
from hpo_engine.sst.checkpoint import BRIDGE_FILE, PROJECTOR_FILE, open_sst, save_sst
from hpo_engine.sst.config import SSTConfigError
from hpo_engine.sst.default_model import default_config
from hpo_engine.sst.stream import SSTStream
from hpo_engine.train.config import from_dict
from hpo_engine.train.data import read_manifest
from hpo_engine.train.export import export_sst
from hpo_engine.train.rollout import rollout
from hpo_engine.train.run import setup
from hpo_engine.train.sft import sft_step

from test_train_speech import HIDDEN, tiny_llm

D_ENC, CHUNK_MS, MAX_ROWS = 32, 160, 4       # 8 encoder frames per chunk, stacked by 2: at most 4 rows


def make_bridge(seed: int, vocab_ids, blank_bias: float = 0.0) -> CTCBridge:
    torch.manual_seed(seed)
    bridge = CTCBridge(CTCBridgeConfig(d_encoder=D_ENC, d_llm=HIDDEN, stack=2, d_hidden=48, num_layers=1,
                                       top_k=3, vocab_ids=tuple(vocab_ids)))
    with torch.no_grad():
        bridge.head.weight.mul_(20)          # confident, varied best classes (a fresh head is near uniform)
        bridge.head.bias[0] += blank_bias
    return bridge.eval()


@pytest.fixture(scope="module")
def bridge_sst(tmp_path_factory):
    root = tmp_path_factory.mktemp("bridge")
    tokenizer = tiny_llm(root / "llm")
    torch.manual_seed(1)
    encoder = WhisperEncoder(EncoderConfig(d_model=D_ENC, n_heads=2, n_layers=1, d_ff=64, max_positions=1500))
    vocab = sorted(set(tokenizer.encode(" one two three four five six seven eight nine ten", add_special_tokens=False)))
    config = default_config(tokenizer)
    config.chunk_ms, config.frames_per_chunk, config.left_context_ms = CHUNK_MS, MAX_ROWS, 320
    save_sst(root / "sst", root / "llm", encoder, make_bridge(2, vocab), config)
    rng = np.random.default_rng(3)
    lines = []
    for i in range(3):
        np.save(root / f"w{i}.npy", rng.standard_normal((3 * 8 + 3, D_ENC)).astype(np.float16))
        lines.append({"id": f"w{i}", "features": f"w{i}.npy", "window_start": 0.0, "window_end": 0.6,
                      "segments": [{"start": 0.0, "end": 0.3}, {"start": 0.3, "end": 0.55}],
                      "src_segments": ["one two", "three"], "tgt_segments": ["eins zwei", "drei"]})
    (root / "train.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return root


def test_bridge_checkpoint_saves_the_bridge_not_a_projector(bridge_sst):
    config = json.loads((bridge_sst / "sst" / "sst_config.json").read_text())
    assert config["bridge"]["stack"] == 2 and config["projector"] == {}
    assert (bridge_sst / "sst" / BRIDGE_FILE).is_file() and not (bridge_sst / "sst" / PROJECTOR_FILE).exists()


def test_frontend_rows_equal_the_bridge_over_the_whole_stream(bridge_sst):
    """Chunk by chunk (collapse carried across chunk boundaries) = the bridge's emitted rows computed
    over all of the streaming encoder's frames at once."""
    model = open_sst(bridge_sst / "sst")
    audio = np.random.default_rng(5).standard_normal(16000 + 1234).astype(np.float32) * 0.3
    fe = model.new_frontend()
    chunks = fe.push(audio[:7000]) + fe.push(audio[7000:]) + fe.flush()
    assert len(chunks) == -(-(len(audio) // 160) // 2 // 8) and all(len(c) <= MAX_ROWS for c in chunks)
    with torch.inference_mode():
        ref_stream = StreamingEncoder(model.encoder, 8, 16)
        frames = torch.cat([ref_stream.push(audio), ref_stream.flush()])
        whole = model.adapter.chunk_rows(frames, model.adapter.new_state())
        ids = model.adapter.greedy_ids(frames)
    assert len(whole) > 0
    torch.testing.assert_close(torch.cat(chunks), whole, atol=1e-5, rtol=1e-5)
    table = model.engine.model.model.embed_tokens.weight.detach()
    assert len(ids) == len(whole)
    # each row is a convex mix of top-k rows of the LLM's own table: its best token's row dominates
    nearest = torch.cdist(whole, table[list(model.adapter.cfg.vocab_ids)]).argmin(-1)
    assert [model.adapter.cfg.vocab_ids[i] for i in nearest.tolist()] == ids


def test_stream_turns_hold_the_chunk_rows_and_survive_silent_chunks(bridge_sst):
    model = open_sst(bridge_sst / "sst")
    audio = np.random.default_rng(6).standard_normal(3 * 2560).astype(np.float32) * 0.3
    stream = SSTStream(model, max_new_tokens=2)
    stream.feed(audio)
    rows = [len(c.embeds) for c in stream.pending]
    assert len(rows) == 3 and sum(rows) > 0
    assert len(stream.drain()) == 3
    stream.finish()
    stream.close()
    # a bridge that hears nothing: every user turn is empty, and the stream still answers each chunk
    model.adapter = make_bridge(2, model.adapter.cfg.vocab_ids, blank_bias=1e4).attach_embeddings(
        model.engine.model.model.embed_tokens.weight)
    stream = SSTStream(model, max_new_tokens=2)
    stream.feed(audio)
    assert [len(c.embeds) for c in stream.pending] == [0, 0, 0]
    assert len(stream.drain()) == 3
    stream.close()
    assert model.engine.pool.num_used == 0


def sft_config(root, out):
    return from_dict({
        "mode": "sft", "seed": 3, "output_dir": str(out),
        "model": {"path": str(root / "sst"), "train_llm": "lora", "lora_rank": 4},
        "dialogue": {"frames_per_chunk": MAX_ROWS, "frame_seconds": 0.04, "chunks_per_window": 4},
        "data": {"train": str(root / "train.jsonl"), "valid": None},
        "rollout": {"windows_per_step": 2, "group_size": 2, "top_p": 1.0, "top_k": 0, "max_new_tokens_per_turn": 3},
        "optim": {"lr": 0.01, "global_batch": 4, "max_tokens_per_microbatch": 400},
        "sft": {"lag_chunks": 0, "batch_size": 2},
        "train": {"steps": 1, "checkpoint_every": 1, "validate_every": 100, "progress_bar": False,
                  "tensorboard": False, "num_threads": 1}})


def test_training_windows_take_the_bridge_rows_and_export_keeps_the_bridge(bridge_sst, tmp_path):
    run = setup(sft_config(bridge_sst, tmp_path / "run"))
    assert run.trainable.projector is None and run.rows_per_embedding == 1
    served = open_sst(bridge_sst / "sst")
    for w in run.loader.next_batch(len(read_manifest(bridge_sst / "train.jsonl"))):
        frames = torch.from_numpy(np.load(bridge_sst / f"{w.id}.npy").astype(np.float32))
        state = served.adapter.new_state()      # the chunks as served: the last one short
        expect = [served.adapter.chunk_rows(c, state) for c in torch.split(frames, 8)]
        assert w.placeholders == [len(e) for e in expect]
        torch.testing.assert_close(torch.from_numpy(w.embeds), torch.cat(expect), atol=1e-5, rtol=1e-5)
    samples = rollout(run.engine, run.loader.next_batch(2), run.fmt, run.cfg.rollout, seed=1)
    for s in samples:
        w_rows = int(s.speech_mask.sum())
        assert w_rows == len(s.embeds) and w_rows > 0
    stats = sft_step(run, 1)
    assert np.isfinite(stats["sft_loss"]) and stats["target_tokens"] > 0
    out = export_sst(run, tmp_path / "exported", "test")
    assert (out / BRIDGE_FILE).is_file() and not (out / PROJECTOR_FILE).exists()
    reopened = open_sst(out)
    assert isinstance(reopened.adapter, CTCBridge)


def test_config_with_both_adapters_is_refused(bridge_sst, tmp_path):
    config = json.loads((bridge_sst / "sst" / "sst_config.json").read_text())
    config["projector"] = {"d_encoder": D_ENC, "d_llm": HIDDEN, "stack": 4}
    folder = tmp_path / "both"
    folder.mkdir()
    (folder / "sst_config.json").write_text(json.dumps(config))
    from hpo_engine.sst.config import SSTConfig
    with pytest.raises(SSTConfigError, match="exactly one speech adapter"):
        SSTConfig.load(folder)


def test_sft_windows_may_name_their_own_target_language(bridge_sst, tmp_path):
    """Mixed-language SFT: a window's `target_lang` picks its system prompt (the checkpoint's instruction
    for that language) and its answers' joining rule; HPO and validation refuse other languages."""
    from hpo_engine.train.config import ConfigError
    from hpo_engine.train.sft import sft_step

    lines = [json.loads(x) for x in (bridge_sst / "train.jsonl").read_text().splitlines()]
    lines[1] = {**lines[1], "target_lang": "zh", "tgt_segments": ["一二", "三"]}
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("".join(json.dumps({**x, "features": str(bridge_sst / x["features"])}) + "\n" for x in lines))
    cfg = sft_config(bridge_sst, tmp_path / "run")
    cfg.data.train = str(mixed)
    run = setup(cfg)
    zh, de = run.format_for("zh"), run.format_for("de")
    assert de is run.fmt and zh.first_prefix != de.first_prefix
    assert "Chinese" in run.codec.tokenizer.decode(zh.first_prefix) and "German" in run.codec.tokenizer.decode(de.first_prefix)
    windows = run.loader.next_batch(3)
    assert sorted(run.language_of(w) for w in windows) == ["de", "de", "zh"]
    assert np.isfinite(sft_step(run, 1)["sft_loss"])

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({**lines[1], "target_lang": "tlh", "features": str(bridge_sst / "w1.npy")}) + "\n")
    cfg = sft_config(bridge_sst, tmp_path / "run2")
    cfg.data.train = str(bad)
    with pytest.raises(ConfigError, match="'tlh' is not supported"):
        setup(cfg)
    cfg = sft_config(bridge_sst, tmp_path / "run3")
    cfg.data.train, cfg.data.valid = str(bridge_sst / "train.jsonl"), str(mixed)
    with pytest.raises(ConfigError, match="data.valid: windows in zh"):
        setup(cfg)
