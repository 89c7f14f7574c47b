"""Shared builders for the kernel tests (no tests here): fresh random paged batches, the error metric."""
import torch

MIXED = [(1, 1328), (5, 18), (129, 463), (14, 14)]   # (new tokens, KV length incl. them) per sequence


def paged_batch(seqs, num_q_heads, num_kv_heads, head_dim, block_size, dtype, generator=None, pool_factor=3):
    """q, k_cache, v_cache, block_table, seq_lens, cu_seqlens_q for `seqs`; pages drawn by randperm
    from a pool `pool_factor` times larger than needed; unused table entries hold random page ids."""
    g = generator
    pages_needed = [-(-kv_len // block_size) for _, kv_len in seqs]
    num_blocks = pool_factor * max(1, sum(pages_needed))
    max_blocks = max(pages_needed) + 1
    perm = torch.randperm(num_blocks, generator=g)
    table = torch.randint(0, num_blocks, (len(seqs), max_blocks), generator=g, dtype=torch.int32)
    used = 0
    for b, n_pages in enumerate(pages_needed):
        table[b, :n_pages] = perm[used:used + n_pages].to(torch.int32)
        used += n_pages
    k_cache = torch.randn(num_blocks, block_size, num_kv_heads, head_dim, generator=g).to(dtype)
    v_cache = torch.randn(num_blocks, block_size, num_kv_heads, head_dim, generator=g).to(dtype)
    num_tokens = sum(n for n, _ in seqs)
    q = torch.randn(num_tokens, num_q_heads, head_dim, generator=g).to(dtype)
    cu = torch.zeros(len(seqs) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor([n for n, _ in seqs]).cumsum(0)
    seq_lens = torch.tensor([kv for _, kv in seqs], dtype=torch.int32)
    return q, k_cache, v_cache, table, seq_lens, cu


def rel_err(out, ref):
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def tolerance(dtype):
    # fp32: accumulation order only; bf16: the output's own rounding (2^-9) dominates
    return 1e-5 if dtype == torch.float32 else 1e-2
