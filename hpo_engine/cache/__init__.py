"""The paged KV cache: the tensors (kv_cache.py), ref-counted blocks and the prefix cache
(block_pool.py), the block manager that makes every block decision (block_manager.py) and turn
eviction (window.py). Below the runtime: nothing here imports runtime/ or models/
(tests/test_layering.py); the model's key re-rotation comes in as a callable."""
