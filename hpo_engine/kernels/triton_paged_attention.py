"""Triton paged attention for packed variable-length queries (reference: `reference.paged_attention_ref`).

Shapes and layouts (docs/DESIGN.md):
    q                  [T, Hq, D]       packed new tokens of B sequences (decode, chunk extension, prefill mixed)
    k_cache, v_cache   [num_blocks, block_size, Hkv, D]   block_size any multiple of 16
    block_table        [B, max_blocks] int32
    seq_lens           [B] int32        KV length including the new tokens (already stored)
    cu_seqlens_q       [B+1] int32
    out                [T, Hq, D]       q's dtype; fp32 accumulation throughout

Work split (one program per (query tile, kv head[, kv split])):
  * A program owns BLOCK_M rows = BLOCK_Q query tokens x GROUP query heads sharing one kv head, so
    every K/V tile is loaded once per GQA group (decode rows are mostly padding: the kernel is
    bandwidth-bound there, the wasted MMA rows are free).
  * Query tiles never straddle sequences: sequence b owns tiles [cu_q[b] // BLOCK_Q + b, ...); the grid
    has T // BLOCK_Q + B tiles (an upper bound from shapes only) and surplus programs exit at once.
    Each program finds its sequence by binary search in cu_seqlens_q, so the host never reads device
    data and the launch can be captured in a CUDA graph.
  * Split-KV (flash-decoding): with few programs (few sequences, long contexts) the KV range of every
    tile is cut into NUM_SPLITS slices; each writes a normalised partial output and its log-sum-exp,
    and `_merge_splits_kernel` combines them. NUM_SPLITS comes from shapes (grid size, max_blocks).
  * KV tiles of TILE_N keys may span pages: the page of each key is looked up (block_table row is
    tiny and cached), so TILE_N is chosen for registers and bandwidth, independent of block_size.
  * On CPU (TRITON_INTERPRET=1) the dots run on fp32 operands: the interpreter's 16-bit tl.dot is wrong.
"""
import torch
import triton
import triton.language as tl

_LOG2E = 1.4426950408889634


@triton.jit
def _find_sequence(cu_seqlens_q_ptr, num_seqs, tile_id, BLOCK_Q: tl.constexpr):
    """Largest b with cu_q[b] // BLOCK_Q + b <= tile_id (the sequence owning this tile)."""
    lo = tl.full([], 0, tl.int32)        # int32 scalars from the start: loop-carried types must not change
    hi = tl.full([], 0, tl.int32) + num_seqs
    while lo < hi:
        mid = (lo + hi) // 2
        start = tl.load(cu_seqlens_q_ptr + mid) // BLOCK_Q + mid
        if start <= tile_id:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


@triton.jit(do_not_specialize=["num_seqs", "num_tokens"])   # batch size changes must not recompile
def _paged_attention_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, out_ptr, partial_ptr, lse_ptr,
    block_table_ptr, seq_lens_ptr, cu_seqlens_q_ptr,
    scale_log2, num_seqs, num_tokens,
    stride_q_t, stride_q_h,
    stride_k_block, stride_k_slot, stride_k_head,
    stride_v_block, stride_v_slot, stride_v_head,
    stride_o_t, stride_o_h,
    stride_bt_seq,
    NUM_Q_HEADS: tl.constexpr, GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_Q: tl.constexpr, TILE_N: tl.constexpr,
    NUM_SPLITS: tl.constexpr, DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
):
    tile_id = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)

    seq = _find_sequence(cu_seqlens_q_ptr, num_seqs, tile_id, BLOCK_Q)
    q_begin = tl.load(cu_seqlens_q_ptr + seq)
    q_len = tl.load(cu_seqlens_q_ptr + seq + 1) - q_begin
    first_q = (tile_id - (q_begin // BLOCK_Q + seq)) * BLOCK_Q   # first query of this tile, within the sequence
    if first_q >= q_len:
        return  # surplus tile of the upper-bound grid
    seq_len = tl.load(seq_lens_ptr + seq)
    context_len = seq_len - q_len                               # keys before the new tokens

    rows = tl.arange(0, BLOCK_M)
    q_index = first_q + rows // GROUP                           # query token within the sequence
    head = kv_head * GROUP + rows % GROUP                       # query head
    row_valid = (rows < BLOCK_Q * GROUP) & (q_index < q_len)
    dims = tl.arange(0, HEAD_DIM_PAD)
    dim_valid = dims < HEAD_DIM
    token = (q_begin + q_index).to(tl.int64)

    q = tl.load(q_ptr + token[:, None] * stride_q_t + head[:, None] * stride_q_h + dims[None, :],
                mask=row_valid[:, None] & dim_valid[None, :], other=0.0)
    if UPCAST_DOT:
        q = q.to(tl.float32)
    key_limit = context_len + q_index + 1                       # causal, bottom-right aligned

    # Keys this tile needs at most (its last valid query), cut into NUM_SPLITS slices of whole tiles.
    last_q = tl.minimum(first_q + BLOCK_Q, q_len)
    kv_end = context_len + last_q
    num_kv_tiles = tl.cdiv(kv_end, TILE_N)
    tiles_per_split = tl.cdiv(num_kv_tiles, NUM_SPLITS)
    tile_begin = split * tiles_per_split
    tile_end = tl.minimum(tile_begin + tiles_per_split, num_kv_tiles)

    # Finite start for the running max: fully masked rows then give p = 0 instead of NaN.
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM_PAD], dtype=tl.float32)
    block_row = block_table_ptr + seq.to(tl.int64) * stride_bt_seq
    keys = tl.arange(0, TILE_N)

    for kv_tile in range(tile_begin, tile_end):
        key_pos = kv_tile * TILE_N + keys
        key_valid = key_pos < kv_end
        page = tl.load(block_row + key_pos // BLOCK_SIZE, mask=key_valid, other=0).to(tl.int64)
        in_page = key_pos % BLOCK_SIZE
        kv_mask = key_valid[None, :] & dim_valid[:, None]
        k = tl.load(k_cache_ptr + page[None, :] * stride_k_block + in_page[None, :] * stride_k_slot
                    + kv_head * stride_k_head + dims[:, None], mask=kv_mask, other=0.0)   # [D, TILE_N]
        v = tl.load(v_cache_ptr + page[:, None] * stride_v_block + in_page[:, None] * stride_v_slot
                    + kv_head * stride_v_head + dims[None, :], mask=kv_mask.T, other=0.0)  # [TILE_N, D]
        if UPCAST_DOT:  # Triton's CPU interpreter computes 16-bit tl.dot wrongly (3.9): use fp32 operands
            k = k.to(tl.float32)
            v = v.to(tl.float32)

        scores = tl.dot(q, k, input_precision=DOT_PRECISION) * scale_log2
        visible = key_pos[None, :] < key_limit[:, None]
        scores = tl.where(visible, scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(scores - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new

    has_keys = l_i > 0.0
    result = acc / tl.where(has_keys, l_i, 1.0)[:, None]
    out_mask = row_valid[:, None] & dim_valid[None, :]
    if NUM_SPLITS == 1:
        tl.store(out_ptr + token[:, None] * stride_o_t + head[:, None] * stride_o_h + dims[None, :],
                 result.to(out_ptr.dtype.element_ty), mask=out_mask)
    else:
        # partial [NUM_SPLITS, T, Hq, D] fp32 and lse [NUM_SPLITS, T, Hq] (log2 domain), both contiguous.
        row_id = (split * num_tokens + token) * NUM_Q_HEADS + head
        tl.store(partial_ptr + row_id[:, None] * HEAD_DIM + dims[None, :], result, mask=out_mask)
        lse = tl.where(has_keys, m_i + tl.log2(tl.where(has_keys, l_i, 1.0)), float("-inf"))
        tl.store(lse_ptr + row_id, lse, mask=row_valid)


@triton.jit(do_not_specialize=["num_tokens"])
def _merge_splits_kernel(
    partial_ptr, lse_ptr, out_ptr, num_tokens, stride_o_t, stride_o_h,
    NUM_Q_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
    NUM_SPLITS: tl.constexpr, SPLITS_PAD: tl.constexpr,
):
    """out[t, h] = sum_s w_s partial[s, t, h] with w_s = 2^(lse_s - max lse) / sum (exact softmax merge)."""
    token = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    splits = tl.arange(0, SPLITS_PAD)
    dims = tl.arange(0, HEAD_DIM_PAD)
    row_id = (splits * num_tokens + token) * NUM_Q_HEADS + head
    lse = tl.load(lse_ptr + row_id, mask=splits < NUM_SPLITS, other=float("-inf"))
    lse_max = tl.max(lse, axis=0)
    lse_max = tl.where(lse_max == float("-inf"), 0.0, lse_max)
    weight = tl.exp2(lse - lse_max)
    partial = tl.load(partial_ptr + row_id[:, None] * HEAD_DIM + dims[None, :],
                      mask=(splits[:, None] < NUM_SPLITS) & (dims[None, :] < HEAD_DIM) & (weight[:, None] > 0),
                      other=0.0)
    total = tl.sum(weight, axis=0)
    result = tl.sum(partial * weight[:, None], axis=0) / tl.where(total > 0, total, 1.0)
    tl.store(out_ptr + token * stride_o_t + head * stride_o_h + dims, result.to(out_ptr.dtype.element_ty),
             mask=dims < HEAD_DIM)


_SM_COUNT = {}


def _sm_count(device):
    if device.type != "cuda":
        return 8  # interpreter: any small number exercises both paths
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SM_COUNT:
        _SM_COUNT[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _SM_COUNT[index]


def choose_launch(num_tokens, num_seqs, num_q_heads, num_kv_heads, head_dim, dtype, max_blocks, block_size,
                  device, sm_count=None):
    """(BLOCK_M, BLOCK_Q, TILE_N, NUM_SPLITS, num_warps) from shapes only (no device reads: graph-safe).

    Tile sizes come from the sm_90 compile report (no spills; Triton 3.9, ptxas from its wheel):
    bf16 D<=128 BLOCK_M 16 / TILE_N 32 / 4 warps: 202 registers; BLOCK_M 64 / TILE_N 32 / 4 warps:
    254; TILE_N 64 spilled (232-1008 B of stack) at 4 warps. fp32 BLOCK_M 16 / TILE_N 16: 168
    registers; fp32 BLOCK_M 64 spilled 1.7 KB, so fp32 keeps the short tile.
    """
    group = num_q_heads // num_kv_heads
    # Decode-heavy batches (about one token per sequence) keep BLOCK_M minimal; prefill-heavy ones
    # take taller tiles so K/V are re-read fewer times.
    if num_tokens <= 2 * num_seqs or dtype == torch.float32:
        block_m = max(16, triton.next_power_of_2(group))
    else:
        block_m = max(64, triton.next_power_of_2(group))
    block_q = block_m // group
    tile_n = 16 if dtype == torch.float32 else 32
    num_warps = 4
    tiles = num_tokens // block_q + num_seqs
    programs = tiles * num_kv_heads
    sms = sm_count or _sm_count(device)
    splits = 1
    if programs < 8 * sms:
        # Aim at ~8 programs per SM so the last wave is a small part of the run (a few resident per SM);
        # each split keeps >= 256 keys so the merge stays cheap next to the KV read. To be tuned on a
        # device: bench/gpu_check.py times forced split counts beside this choice.
        max_ctx = max_blocks * block_size
        splits = max(1, min(triton.cdiv(8 * sms, programs), max_ctx // 256, 64))
    return block_m, block_q, tile_n, splits, num_warps


def paged_attention_triton(q, k_cache, v_cache, block_table, seq_lens, cu_seqlens_q, scale=None, out=None,
                           num_splits=None):
    """Triton paged attention (contract in docs/DESIGN.md). `num_splits` overrides the split-KV choice (tests)."""
    T, num_q_heads, head_dim = q.shape
    num_blocks, block_size, num_kv_heads, _ = k_cache.shape
    num_seqs = block_table.shape[0]
    _check_args(q, k_cache, v_cache, block_table, seq_lens, cu_seqlens_q)
    if out is None:
        out = torch.empty_like(q)
    if T == 0:
        return out
    scale = head_dim ** -0.5 if scale is None else scale
    group = num_q_heads // num_kv_heads
    block_m, block_q, tile_n, splits, num_warps = choose_launch(
        T, num_seqs, num_q_heads, num_kv_heads, head_dim, q.dtype, block_table.shape[1], block_size, q.device)
    if num_splits is not None:
        splits = num_splits
    head_dim_pad = max(16, triton.next_power_of_2(head_dim))
    if splits > 1:
        partial = torch.empty((splits, T, num_q_heads, head_dim), dtype=torch.float32, device=q.device)
        lse = torch.empty((splits, T, num_q_heads), dtype=torch.float32, device=q.device)
    else:
        partial = lse = out  # unused placeholders
    grid = (T // block_q + num_seqs, num_kv_heads, splits)
    _paged_attention_kernel[grid](
        q, k_cache, v_cache, out, partial, lse,
        block_table, seq_lens, cu_seqlens_q,
        scale * _LOG2E, num_seqs, T,
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        out.stride(0), out.stride(1),
        block_table.stride(0),
        NUM_Q_HEADS=num_q_heads, GROUP=group,
        HEAD_DIM=head_dim, HEAD_DIM_PAD=head_dim_pad, BLOCK_SIZE=block_size,
        BLOCK_M=block_m, BLOCK_Q=block_q, TILE_N=tile_n,
        NUM_SPLITS=splits, DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        UPCAST_DOT=q.device.type != "cuda",
        num_warps=num_warps, num_stages=2,
    )
    if splits > 1:
        _merge_splits_kernel[(T, num_q_heads)](
            partial, lse, out, T, out.stride(0), out.stride(1),
            NUM_Q_HEADS=num_q_heads, HEAD_DIM=head_dim, HEAD_DIM_PAD=head_dim_pad,
            NUM_SPLITS=splits, SPLITS_PAD=triton.next_power_of_2(splits),
        )
    return out


def _check_args(q, k_cache, v_cache, block_table, seq_lens, cu_seqlens_q):
    if q.dim() != 3 or k_cache.dim() != 4 or k_cache.shape != v_cache.shape:
        raise ValueError("q must be [T, Hq, D] and k_cache/v_cache [num_blocks, block_size, Hkv, D]")
    if q.shape[2] != k_cache.shape[3] or q.shape[1] % k_cache.shape[2] != 0:
        raise ValueError(f"q {tuple(q.shape)} does not fit cache {tuple(k_cache.shape)} (Hq % Hkv, D)")
    if k_cache.shape[1] % 16 != 0:
        raise ValueError("block_size must be a multiple of 16")
    for name, t in (("block_table", block_table), ("seq_lens", seq_lens), ("cu_seqlens_q", cu_seqlens_q)):
        if t.dtype != torch.int32:
            raise ValueError(f"{name} must be int32")
    if cu_seqlens_q.shape[0] != block_table.shape[0] + 1 or seq_lens.shape[0] != block_table.shape[0]:
        raise ValueError("cu_seqlens_q must be [B+1] and seq_lens [B] for block_table [B, max_blocks]")
    if block_table.stride(1) != 1 or seq_lens.stride(0) != 1 or cu_seqlens_q.stride(0) != 1:
        raise ValueError("block_table rows, seq_lens and cu_seqlens_q must be contiguous")
    for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must have a contiguous last dimension")
