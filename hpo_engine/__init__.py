"""hpo-engine: serving and post-training for LLM-based simultaneous speech translation."""
from hpo_engine.runtime.engine import Engine, GenerationOutput, Stream, StreamClosedError
from hpo_engine.runtime.scheduler import OutOfBlocks
from hpo_engine.runtime.sampling import SamplingParams

__version__ = "0.1.0"
__all__ = ["Engine", "Stream", "SamplingParams", "GenerationOutput", "StreamClosedError", "OutOfBlocks"]
