"""Shared helpers of the SST / server tests (no tests here): the default model, espeak-ng speech."""
import functools
import shutil
import subprocess

import numpy as np
import pytest

SENTENCES = ["Hello, how are you today?", "The weather is nice.", "Please open the window.",
             "I would like a cup of coffee.", "Where is the train station?", "We meet again tomorrow.",
             "This is a short test.", "Thank you very much."]


@pytest.fixture
def one_thread():
    """torch on one thread for the test, restored after: on a shared, oversubscribed 2-core machine two
    OpenMP threads made these tests about 6x slower (measured), one thread does not fight the other jobs."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def default_is_trained() -> bool:
    """Whether the package carries a trained default (hpo_engine/sst/default/), or the untrained one serves."""
    from hpo_engine.sst.config import CONFIG_NAME
    from hpo_engine.sst.default_model import TRAINED_DIR
    return (TRAINED_DIR / CONFIG_NAME).is_file()


@functools.lru_cache(maxsize=1)
def default_model():
    """The embedded default (the committed trained part over its base; built on first use)."""
    from hpo_engine.sst import open_sst
    return open_sst()


def stream_model_path():
    """The untrained SmolLM2 projector checkpoint (the demo's projector SFT start): the stream, server and
    CLI mechanics tests run on it because it is small and has a fixed number of rows per chunk."""
    from hpo_engine.sst.default_model import default_sst_path
    return default_sst_path(trained=False)


@functools.lru_cache(maxsize=1)
def stream_model():
    from hpo_engine.sst import open_sst
    return open_sst(stream_model_path())


@functools.lru_cache(maxsize=None)
def espeak_wave(text: str) -> np.ndarray:
    """float32 16 kHz speech of `text` by espeak-ng (Debian package espeak-ng)."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    from hpo_engine.speech.audio import load_audio
    wav = subprocess.run(["espeak-ng", "-v", "en-us", "-s", "170", "--stdout", text],
                         check=True, capture_output=True).stdout
    return load_audio(wav)


def espeak_pcm16(text: str) -> bytes:
    from hpo_engine.speech.audio import float_to_pcm16
    return float_to_pcm16(espeak_wave(text))
