"""hpo-engine: serving and post-training for LLM-based simultaneous speech translation."""
__version__ = "0.1.0"
