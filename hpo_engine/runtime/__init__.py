"""The engine: Engine / Stream (engine.py), the scheduler (scheduler.py), per-stream state
(sequence.py), the model runner (model_runner.py, cuda_graphs.py) and the sampler (sampling.py).
A step is schedule -> run -> postprocess; the block work is the cache's block manager."""
