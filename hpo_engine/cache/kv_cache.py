"""The KV cache tensors: per layer `k_cache`, `v_cache` of shape [num_blocks, block_size, Hkv, D]."""
import torch

from hpo_engine.config import ModelConfig

DEFAULT_CPU_CACHE_BYTES = 1 << 30     # 1 GiB
DEFAULT_GPU_CACHE_FRACTION = 0.5      # of the free device memory


def bytes_per_block(config: ModelConfig, block_size: int, dtype: torch.dtype) -> int:
    elem = torch.empty((), dtype=dtype).element_size()
    return 2 * config.num_layers * block_size * config.num_kv_heads * config.head_dim * elem


def num_blocks_for(config, block_size, dtype, device, cache_memory=None) -> int:
    """Blocks that fit `cache_memory`: bytes (int), a fraction of free device memory (float <= 1),
    or None for the default (1 GiB on CPU, half the free memory on CUDA)."""
    device = torch.device(device)
    if cache_memory is None:
        cache_memory = DEFAULT_GPU_CACHE_FRACTION if device.type == "cuda" else DEFAULT_CPU_CACHE_BYTES
    if isinstance(cache_memory, float) and 0 < cache_memory <= 1:
        if device.type != "cuda":
            raise ValueError("cache_memory as a fraction of free memory needs a CUDA device; give bytes")
        free, _ = torch.cuda.mem_get_info(device)
        cache_memory = int(free * cache_memory)
    n = int(cache_memory) // bytes_per_block(config, block_size, dtype)
    if n < 1:
        raise ValueError(f"cache_memory={cache_memory} bytes holds no block of {block_size} tokens")
    return n


class KVCache:
    def __init__(self, config: ModelConfig, num_blocks: int, block_size: int, dtype, device):
        shape = (num_blocks, block_size, config.num_kv_heads, config.head_dim)
        self.device = torch.device(device)
        self.layers = [(torch.zeros(shape, dtype=dtype, device=device),
                        torch.zeros(shape, dtype=dtype, device=device)) for _ in range(config.num_layers)]

    def copy_block(self, src: int, dst: int) -> None:
        """Copy on write: `dst` gets the content of `src` in every layer."""
        for k, v in self.layers:
            k[dst].copy_(k[src])
            v[dst].copy_(v[src])
