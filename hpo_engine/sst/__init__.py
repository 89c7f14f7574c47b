"""Simultaneous speech translation on the engine: checkpoint folder, dialogue, streams, `translate`.

    config.py         sst_config.json (SSTConfig)
    checkpoint.py     the folder layout, save_sst / open_sst -> SSTModel
    default_model.py  the embedded default (the committed trained part over its base), built on first use
    dialogue.py       token ids of the user turns
    stream.py         SSTStream (PCM in, deltas out); translate_ready (one batched turn each),
                      step_streams (one engine step, turns joining the running batch)
    simulate.py       simulated streaming over files -> SimulEval-style instances
    cli.py            `hpo-engine translate`
"""
from .checkpoint import SSTModel, open_sst, save_sst
from .config import SSTConfig, SSTConfigError
from .stream import SSTStream, TranslationDelta, translate_ready

__all__ = ["SSTModel", "open_sst", "save_sst", "SSTConfig", "SSTConfigError", "SSTStream", "TranslationDelta",
           "translate_ready"]
