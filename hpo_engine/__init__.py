"""hpo-engine: serving and post-training for LLM-based simultaneous speech translation.

The public names load on first use (PEP 562), so `from hpo_engine import _C` or
`import hpo_engine.metrics` does not import the runtime and the models.
"""
import importlib

__version__ = "0.1.0"

_PUBLIC = {
    "Engine": "hpo_engine.runtime.engine",
    "Stream": "hpo_engine.runtime.engine",
    "GenerationOutput": "hpo_engine.runtime.engine",
    "StreamClosedError": "hpo_engine.runtime.engine",
    "OutOfBlocks": "hpo_engine.runtime.scheduler",
    "SamplingParams": "hpo_engine.runtime.sampling",
}
__all__ = list(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'hpo_engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value          # looked up once
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
