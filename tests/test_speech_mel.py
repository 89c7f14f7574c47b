"""Log-mel features against transformers' WhisperFeatureExtractor (torch and numpy paths)."""
from pathlib import Path

import numpy as np
import pytest
import torch

from hpo_engine.speech.audio import load_audio
from hpo_engine.speech.mel import log10_mel, log_mel_spectrogram, mel_filters, whisper_normalize

transformers = pytest.importorskip("transformers")
SPEECH = Path(__file__).parent / "data" / "speech" / "librivox_0890.flac"


@pytest.fixture(scope="module")
def fe():
    return transformers.WhisperFeatureExtractor()  # Whisper's defaults: 80 bins, n_fft 400, hop 160


def test_mel_filters_match(fe):
    np.testing.assert_allclose(mel_filters().numpy(), fe.mel_filters.T, atol=1e-12)


@pytest.mark.parametrize("n", [400, 401, 16000, 12345, 33333])
def test_random_audio_matches_feature_extractor(fe, n):
    a = (np.random.default_rng(n).standard_normal(n) * 0.1).astype(np.float32)
    ours = log_mel_spectrogram(a).numpy()
    ref_t = fe(a, sampling_rate=16000, padding="longest", return_tensors="np").input_features[0]
    ref_np = fe._np_extract_fbank_features(a[None], "cpu")[0]
    assert ours.shape == ref_t.shape == (80, n // 160) and ours.dtype == np.float32
    assert np.abs(ours - ref_t).max() < 1e-4      # HF's torch path (float32 STFT)
    assert np.abs(ours - ref_np).max() < 1e-5     # HF's numpy path (float64)


def test_real_speech_padded_to_30s(fe):
    a = load_audio(SPEECH)
    ref = fe(a, sampling_rate=16000, return_tensors="np").input_features[0]  # default: pad to 30 s
    ours = log_mel_spectrogram(a, pad_to=480000).numpy()
    assert ours.shape == ref.shape == (80, 3000)
    assert np.abs(ours - ref).max() < 1e-4
    unpadded = log_mel_spectrogram(a).numpy()
    ref_u = fe(a, sampling_rate=16000, padding="longest", return_tensors="np").input_features[0]
    assert np.abs(unpadded - ref_u).max() < 1e-4


def test_batch_normalises_each_item_alone():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((3, 5000)) * np.array([[1.0], [1e-3], [10.0]])
    batched = log_mel_spectrogram(a)
    for i in range(3):
        torch.testing.assert_close(batched[i], log_mel_spectrogram(a[i]), atol=0, rtol=0)


def test_split_equals_whole_and_errors():
    a = torch.randn(7777, dtype=torch.float64)
    torch.testing.assert_close(whisper_normalize(log10_mel(a)), log_mel_spectrogram(a))
    for n in (0, 200):
        with pytest.raises(ValueError, match="needs more than 200"):
            log_mel_spectrogram(np.zeros(n, np.float32))
    assert log_mel_spectrogram(np.zeros(201, np.float32)).shape == (80, 1)
    with pytest.raises(ValueError, match="pad_to"):
        log_mel_spectrogram(np.zeros(10, np.float32), pad_to=5)
