// CPU paged attention and store_kv for the contract in DESIGN.md (Python wrapper and reference:
// hpo_engine/kernels/cpu_paged_attention.py, hpo_engine/kernels/reference.py).
//
// Layouts: q/out [T, Hq, D] (row strides given), k/v cache [num_blocks, block_size, Hkv, D] with the
// same (block, slot, head) strides for K and V, block_table [B, max_blocks] int32 (contiguous),
// seq_lens [B] int32, cu_seqlens_q [B+1] int32. Elements: float32 or bfloat16 (raw uint16 bits);
// D a multiple of 16. Accumulation in float32.
//
// Work item = (sequence, kv heads [h0, h0 + nh), tile of query tokens, kv slice); its rows are
// heads x tokens x the GQA group, so each K/V row is read from memory once per group. Online softmax
// (flash-attention style) over chunks of <= 32 keys that never cross a page.
//  * Decode-like tiles (few rows per head) take all kv heads in one item and walk keys key-major:
//    a slot's Hkv * D elements are contiguous, so memory is read sequentially. Per-head items would
//    read D of every Hkv * D elements (512 B per 4 KB for Qwen3-4B): measured ~3x less bandwidth.
//  * Chunk extension / prefill tiles (>= kTransposeRows rows per head) take one head; scores go
//    through a transposed K chunk (broadcast FMAs, no horizontal sums), V is packed, and each row's
//    accumulator stays in registers.
//  * Fewer items than the threads can balance (batch-1 decode): the KV range is split and the
//    partial (max, sum, unnormalised acc) merged afterwards, as flash-decoding does.
// The per-item code is compiled three times (AVX-512, AVX2, baseline x86-64) via target_clones: setup.py
// builds without -march.
#include "registry.h"
#include "simd.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <vector>

namespace {

constexpr int kLanes = 16;
constexpr int kChunk = 32;              // keys per softmax chunk
constexpr int kMaxRowsPerItem = 64;     // query tokens x group heads in one item
constexpr int kTransposeRows = 8;       // from this many rows on, scores go through K^T
constexpr int64_t kMinParallelCost = 16384;  // item cost units (rows x keys); ~50 us on one Zen 4 core
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kNoMax = -1.0e30f;      // finite start of the running max: masked rows stay NaN-free

struct PagedArgs {
    const void* q;
    const void* k_cache;
    const void* v_cache;
    void* out;
    const int32_t* block_table;
    const int32_t* seq_lens;
    const int32_t* cu_seqlens_q;
    int64_t num_seqs, num_q_heads, num_kv_heads, head_dim, block_size, max_blocks;
    int64_t q_stride_t, q_stride_h, o_stride_t, o_stride_h;
    int64_t kv_stride_block, kv_stride_slot, kv_stride_head;
    float scale;
};

struct WorkItem {
    int32_t seq, kv_head, num_heads;         // kv heads [kv_head, kv_head + num_heads)
    int32_t q_first, q_count;                // query tokens [q_first, q_first + q_count) of the sequence
    int32_t kv_begin, kv_end;                // keys of this slice
    int32_t partial;                         // -1: write `out`; else index of its partial record
    int64_t cost;
};

#ifndef HPO_PF
#define HPO_PF 2
#endif
#ifndef HPO_PFD
#define HPO_PFD 6
#endif
#ifndef HPO_PFH
#define HPO_PFH 3
#endif
constexpr int kPrefetchKeys = HPO_PFD;  // K rows fetched this many keys ahead

// While the scores walk the keys: V of the same key (used after the softmax) and K a few keys ahead,
// into the next chunk (another page) near the end of this one.
struct KeyPrefetch {
    const void* v;
    const void* next_k;
    int64_t stride;
    int n, next_n;
    int row_elems;           // elements per key to fetch: D, or all heads of the item
    template <typename E, int D>
    HPO_INLINE void at(const E* k, int jj) const {
#if HPO_PF == 2
        constexpr int kLineElems = 64 / sizeof(E);
        const E* vr = static_cast<const E*>(v) + jj * stride;
        const int ahead = jj + kPrefetchKeys;
        const E* kr = ahead < n ? k + ahead * stride
                    : (ahead - n < next_n ? static_cast<const E*>(next_k) + (ahead - n) * stride : nullptr);
        for (int i = 0; i < row_elems; i += kLineElems) {
            __builtin_prefetch(vr + i, 0, HPO_PFH);
            if (kr) __builtin_prefetch(kr + i, 0, HPO_PFH);
        }
        if (jj == 0)   // the first keys of the chunk: their K rows were not covered by the previous chunk
            for (int j = 1; j < std::min(kPrefetchKeys, n); ++j)
                for (int i = 0; i < row_elems; i += kLineElems) __builtin_prefetch(k + j * stride + i, 0, HPO_PFH);
#endif
    }
};

template <typename E, int D>
HPO_INLINE void prefetch_rows(const E* p, int64_t stride, int n) {
    constexpr int kLineElems = 64 / sizeof(E);
    for (int j = 0; j < n; ++j)
        for (int i = 0; i < D; i += kLineElems) __builtin_prefetch(p + j * stride + i, 0, 3);
}
// 2^x for x <= 0 (degree-7 Taylor of 2^f on [-0.5, 0.5], relative error < 1e-8 before rounding);
// entries at -inf (masked keys) come out as exactly 0.
HPO_INLINE vf16 exp2_nonpositive(vf16 x) {
    const vf16 masked = x;
    x = x < -126.f ? (vf16){} - 126.f : x;
    const vf16 magic = (vf16){} + 12582912.f;    // 1.5 * 2^23: adds and subtracts to round to nearest
    vf16 n = (x + magic) - magic;
    vf16 f = (x - n) * 0.6931471805599453f;
    vf16 p = (vf16){} + 1.f / 5040.f;
    p = p * f + 1.f / 720.f;
    p = p * f + 1.f / 120.f;
    p = p * f + 1.f / 24.f;
    p = p * f + 1.f / 6.f;
    p = p * f + 0.5f;
    p = p * f + 1.f;
    p = p * f + 1.f;
    vi16 bits = (__builtin_convertvector(n, vi16) + 127) << 23;
    vf16 r = p * (vf16)bits;
    return masked < -1.0e37f ? (vf16){} : r;
}

struct RowState {            // per-thread scratch, sized for kMaxRowsPerItem rows
    float* q;                // [rows, D] query * scale * log2(e)
    float* acc;              // [rows, D] unnormalised output
    float* m;                // [rows] running max (log2 domain)
    float* l;                // [rows] running sum
    float* p;                // [rows, kChunk] scores, then probabilities
    float* kt;               // [D, kChunk] transposed key chunk
    float* vbuf;             // [kChunk, D] packed value chunk
};

// Scores of a key chunk, one dot product per (row, key): cheapest for the few rows of decode.
template <typename E, int D>
HPO_INLINE void scores_rowwise(const RowState& st, const E* kp, int64_t slot_stride, int64_t head_stride, int n,
                               int num_heads, int rows_per_head, const KeyPrefetch& pf) {
    // Key-major, heads in address order: each slot's K elements are read once, sequentially.
    constexpr int NV = D / kLanes;
    for (int jj = 0; jj < n; ++jj) {
        pf.at<E, D>(kp, jj);
        for (int h = 0; h < num_heads; ++h) {
            const E* kr = kp + jj * slot_stride + h * head_stride;
            vf16 k[NV];
            for (int i = 0; i < NV; ++i) k[i] = load16(kr + i * kLanes);
            for (int r = h * rows_per_head; r < (h + 1) * rows_per_head; ++r) {
                const float* q = st.q + r * D;
                vf16 dot = load16(q) * k[0];
                for (int i = 1; i < NV; ++i) dot += load16(q + i * kLanes) * k[i];
                st.p[r * kChunk + jj] = hsum(dot);
            }
        }
    }
}

// Scores via K^T: the chunk is transposed once to [D, kChunk], then every row is 2 x D broadcast
// FMAs with no horizontal sums, 4 rows at a time (chunk extension and prefill).
template <typename E, int D>
HPO_INLINE void scores_transposed(const RowState& st, const E* kp, int64_t slot_stride, int n, int rows,
                                  const KeyPrefetch& pf) {
    constexpr int NV = D / kLanes;
    static_assert(kChunk == 2 * kLanes, "two score vectors per row");
    float* kt = st.kt;
    for (int jj = 0; jj < n; ++jj)
        for (int i = 0; i < NV; ++i) {
            if (i == 0) pf.at<E, D>(kp, jj);
            const vf16 kv = load16(kp + jj * slot_stride + i * kLanes);
            for (int lane = 0; lane < kLanes; ++lane) kt[(i * kLanes + lane) * kChunk + jj] = kv[lane];
        }
    for (int jj = n; jj < kChunk; ++jj)
        for (int d = 0; d < D; ++d) kt[d * kChunk + jj] = 0.f;
    int r = 0;
    for (; r + 4 <= rows; r += 4) {
        vf16 lo[4] = {}, hi[4] = {};
        const float* q0 = st.q + r * D;
        for (int d = 0; d < D; ++d) {
            const vf16 k_lo = load16(kt + d * kChunk), k_hi = load16(kt + d * kChunk + kLanes);
            for (int u = 0; u < 4; ++u) {
                const float qd = q0[u * D + d];
                lo[u] += qd * k_lo;
                hi[u] += qd * k_hi;
            }
        }
        for (int u = 0; u < 4; ++u) {
            store16(st.p + (r + u) * kChunk, lo[u]);
            store16(st.p + (r + u) * kChunk + kLanes, hi[u]);
        }
    }
    for (; r < rows; ++r) {
        vf16 lo = {}, hi = {};
        for (int d = 0; d < D; ++d) {
            const float qd = st.q[r * D + d];
            lo += qd * load16(kt + d * kChunk);
            hi += qd * load16(kt + d * kChunk + kLanes);
        }
        store16(st.p + r * kChunk, lo);
        store16(st.p + r * kChunk + kLanes, hi);
    }
}

// Row r of an item: kv head kv_head + r / rows_per_head, token q_first + (r % rows_per_head) / group,
// query head (that kv head) * group + r % group.
struct RowMap {
    int group, rows_per_head;
    int64_t q_first;
    int32_t kv_head;
    HPO_INLINE int64_t token(int r) const { return q_first + (r % rows_per_head) / group; }
    HPO_INLINE int64_t head(int r) const { return static_cast<int64_t>(kv_head + r / rows_per_head) * group + r % group; }
};

template <typename E, int D>
HPO_INLINE void attend_item_impl(const PagedArgs& a, const WorkItem& w, const RowState& st, float* partial) {
    constexpr int NV = D / kLanes;
    const int group = static_cast<int>(a.num_q_heads / a.num_kv_heads);
    const RowMap map{group, w.q_count * group, w.q_first, w.kv_head};
    const int rows = w.num_heads * map.rows_per_head;
    const int64_t q_begin = a.cu_seqlens_q[w.seq];
    const int64_t q_len = a.cu_seqlens_q[w.seq + 1] - q_begin;
    const int64_t context = a.seq_lens[w.seq] - q_len;
    const E* q = static_cast<const E*>(a.q);
    const float qscale = a.scale * kLog2e;

    for (int r = 0; r < rows; ++r) {
        const E* src = q + (q_begin + map.token(r)) * a.q_stride_t + map.head(r) * a.q_stride_h;
        for (int i = 0; i < NV; ++i) store16(st.q + r * D + i * kLanes, load16(src + i * kLanes) * qscale);
        for (int i = 0; i < NV; ++i) store16(st.acc + r * D + i * kLanes, (vf16){});
        st.m[r] = kNoMax;
        st.l[r] = 0.f;
    }

    const E* k_cache = static_cast<const E*>(a.k_cache);
    const E* v_cache = static_cast<const E*>(a.v_cache);
    const int32_t* pages = a.block_table + w.seq * a.max_blocks;
    const bool transposed = w.num_heads == 1 && rows >= kTransposeRows;
    const int row_elems = static_cast<int>((w.num_heads - 1) * a.kv_stride_head + D);
    for (int64_t j0 = w.kv_begin; j0 < w.kv_end;) {
        const int64_t in_page = j0 % a.block_size;
        const int n = static_cast<int>(std::min<int64_t>({w.kv_end - j0, a.block_size - in_page, kChunk}));
        const int64_t base = pages[j0 / a.block_size] * a.kv_stride_block + in_page * a.kv_stride_slot
                             + w.kv_head * a.kv_stride_head;
        const E* kp = k_cache + base;
        const E* vp = v_cache + base;
        // Pages of the cache are scattered and, for per-head items, every key row of a head sits on its
        // own 4 KB page, so hardware prefetchers do not help: prefetch by hand, a few keys ahead.
        const E* next_kp = nullptr;
        int next_n = 0;
        if (j0 + n < w.kv_end) {
            const int64_t nj = j0 + n;
            next_kp = k_cache + pages[nj / a.block_size] * a.kv_stride_block
                      + (nj % a.block_size) * a.kv_stride_slot + w.kv_head * a.kv_stride_head;
            next_n = static_cast<int>(std::min<int64_t>({w.kv_end - nj, a.block_size - nj % a.block_size, kChunk}));
        }
        const KeyPrefetch pf{vp, next_kp, a.kv_stride_slot, n, next_n, row_elems};

        if (transposed) {
            scores_transposed<E, D>(st, kp, a.kv_stride_slot, n, rows, pf);
        } else {
            scores_rowwise<E, D>(st, kp, a.kv_stride_slot, a.kv_stride_head, n, w.num_heads, map.rows_per_head, pf);
        }
        // mask (causal) to -inf, then online-softmax update of each row
        for (int r = 0; r < rows; ++r) {
            float* s = st.p + r * kChunk;
            const int64_t visible = context + map.token(r) + 1 - j0;  // keys j0 + jj < limit
            const int nv = static_cast<int>(std::max<int64_t>(0, std::min<int64_t>(n, visible)));
            float row_max = kNoMax;
            for (int jj = 0; jj < nv; ++jj) row_max = std::max(row_max, s[jj]);
            for (int jj = nv; jj < kChunk; ++jj) s[jj] = -INFINITY;
            const float m_new = std::max(st.m[r], row_max);
            const float alpha = std::exp2(st.m[r] - m_new);
            vf16 sum = (vf16){};
            for (int c = 0; c < kChunk; c += kLanes) {
                vf16 e = exp2_nonpositive(load16(s + c) - m_new);
                store16(s + c, e);
                sum += e;
            }
            st.l[r] = st.l[r] * alpha + hsum(sum);
            st.m[r] = m_new;
            if (alpha != 1.f)
                for (int i = 0; i < NV; ++i)
                    store16(st.acc + r * D + i * kLanes, load16(st.acc + r * D + i * kLanes) * alpha);
        }
        if (!transposed) {
            // acc += P V per head, a block of rows at a time with accumulators in registers; the V rows
            // of the chunk were prefetched with the scores (masked keys have p == 0)
            constexpr int RB = NV <= 4 ? 4 : 2;   // rows per block: RB * NV accumulators + NV values
            for (int h = 0; h < w.num_heads; ++h) {
                const E* vh = vp + h * a.kv_stride_head;
                for (int r0 = h * map.rows_per_head; r0 < (h + 1) * map.rows_per_head; r0 += RB) {
                    const int cnt = std::min(RB, (h + 1) * map.rows_per_head - r0);
                    vf16 acc[RB][NV];
                    for (int u = 0; u < RB; ++u)
                        if (u < cnt)
                            for (int i = 0; i < NV; ++i) acc[u][i] = load16(st.acc + (r0 + u) * D + i * kLanes);
                    for (int jj = 0; jj < n; ++jj) {
                        const E* vr = vh + jj * a.kv_stride_slot;
                        vf16 v[NV];
                        for (int i = 0; i < NV; ++i) v[i] = load16(vr + i * kLanes);
                        for (int u = 0; u < RB; ++u)
                            if (u < cnt) {
                                const float pj = st.p[(r0 + u) * kChunk + jj];
                                for (int i = 0; i < NV; ++i) acc[u][i] += pj * v[i];
                            }
                    }
                    for (int u = 0; u < RB; ++u)
                        if (u < cnt)
                            for (int i = 0; i < NV; ++i) store16(st.acc + (r0 + u) * D + i * kLanes, acc[u][i]);
                }
            }
        } else {
            // many rows, one head: one row at a time with its accumulator in registers. At a slot stride
            // of >= 2 KB the chunk's V rows share few L1 sets and would be re-fetched from L2 for every
            // row, so pack them contiguously first (measured 1.6x on Qwen3-4B, a loss at 768 B)
            const E* vsrc = vp;
            int64_t vstride = a.kv_stride_slot;
            bool packed = a.kv_stride_slot * static_cast<int64_t>(sizeof(E)) >= 2048;
            if (packed)
                for (int jj = 0; jj < n; ++jj)
                    for (int i = 0; i < NV; ++i)
                        store16(st.vbuf + jj * D + i * kLanes, load16(vp + jj * a.kv_stride_slot + i * kLanes));
            for (int r = 0; r < rows; ++r) {
                const float* p = st.p + r * kChunk;
                const int64_t visible = context + map.token(r) + 1 - j0;
                const int nv = static_cast<int>(std::max<int64_t>(0, std::min<int64_t>(n, visible)));
                vf16 acc[NV];
                for (int i = 0; i < NV; ++i) acc[i] = load16(st.acc + r * D + i * kLanes);
                if (packed) {
                    for (int jj = 0; jj < nv; ++jj)
                        for (int i = 0; i < NV; ++i) acc[i] += p[jj] * load16(st.vbuf + jj * D + i * kLanes);
                } else {
                    for (int jj = 0; jj < nv; ++jj)
                        for (int i = 0; i < NV; ++i) acc[i] += p[jj] * load16(vsrc + jj * vstride + i * kLanes);
                }
                for (int i = 0; i < NV; ++i) store16(st.acc + r * D + i * kLanes, acc[i]);
            }
        }
        j0 += n;
    }

    if (partial != nullptr) {  // record [rows] x (m, l, acc[D]) for the merge
        for (int r = 0; r < rows; ++r) {
            float* rec = partial + r * (D + 2);
            rec[0] = st.m[r];
            rec[1] = st.l[r];
            std::memcpy(rec + 2, st.acc + r * D, D * sizeof(float));
        }
        return;
    }
    E* out = static_cast<E*>(a.out);
    for (int r = 0; r < rows; ++r) {
        const float inv = st.l[r] > 0.f ? 1.f / st.l[r] : 0.f;
        E* dst = out + (q_begin + map.token(r)) * a.o_stride_t + map.head(r) * a.o_stride_h;
        for (int i = 0; i < NV; ++i) store16(dst + i * kLanes, load16(st.acc + r * D + i * kLanes) * inv);
    }
}

template <typename E>
HPO_INLINE void attend_item_dispatch(const PagedArgs& a, const WorkItem& w, const RowState& st, float* partial) {
    switch (a.head_dim) {
        case 64: attend_item_impl<E, 64>(a, w, st, partial); break;
        case 80: attend_item_impl<E, 80>(a, w, st, partial); break;
        case 96: attend_item_impl<E, 96>(a, w, st, partial); break;
        case 128: attend_item_impl<E, 128>(a, w, st, partial); break;
        case 256: attend_item_impl<E, 256>(a, w, st, partial); break;
        default: break;  // rejected before any work starts
    }
}

HPO_CLONES
void attend_item_f32(const PagedArgs& a, const WorkItem& w, const RowState& st, float* partial) {
    attend_item_dispatch<float>(a, w, st, partial);
}

HPO_CLONES
void attend_item_bf16(const PagedArgs& a, const WorkItem& w, const RowState& st, float* partial) {
    attend_item_dispatch<uint16_t>(a, w, st, partial);
}

// Combine the partial records of the splits of one (tile, kv head): exact softmax merge.
template <typename E>
void merge_partials(const PagedArgs& a, const WorkItem& w, const float* records, int num_splits) {
    const int64_t D = a.head_dim;
    const int group = static_cast<int>(a.num_q_heads / a.num_kv_heads);
    const RowMap map{group, w.q_count * group, w.q_first, w.kv_head};
    const int rows = w.num_heads * map.rows_per_head;
    const int64_t rec_size = static_cast<int64_t>(rows) * (D + 2);
    const int64_t q_begin = a.cu_seqlens_q[w.seq];
    std::vector<float> acc(D);
    for (int r = 0; r < rows; ++r) {
        float m = kNoMax;
        for (int s = 0; s < num_splits; ++s) m = std::max(m, records[s * rec_size + r * (D + 2)]);
        float l = 0.f;
        std::fill(acc.begin(), acc.end(), 0.f);
        for (int s = 0; s < num_splits; ++s) {
            const float* rec = records + s * rec_size + r * (D + 2);
            if (rec[1] == 0.f) continue;
            const float wgt = std::exp2(rec[0] - m);
            l += rec[1] * wgt;
            for (int64_t d = 0; d < D; ++d) acc[d] += rec[2 + d] * wgt;
        }
        const float inv = l > 0.f ? 1.f / l : 0.f;
        E* dst = static_cast<E*>(a.out) + (q_begin + map.token(r)) * a.o_stride_t + map.head(r) * a.o_stride_h;
        for (int64_t d = 0; d < D; d += kLanes) store16(dst + d, load16(acc.data() + d) * inv);
    }
}

// Items (and split slices) for the whole batch, longest first for the dynamic schedule.
struct Plan {
    std::vector<WorkItem> items;
    std::vector<WorkItem> merges;   // one per split tile: the tile and its first partial index
    std::vector<int> merge_splits;
    int64_t partial_records = 0;
};

Plan make_plan(const PagedArgs& a, int num_threads) {
    Plan plan;
    const int group = static_cast<int>(a.num_q_heads / a.num_kv_heads);
    const int tile_tokens = std::max(1, kMaxRowsPerItem / group);
    int64_t total_keys = 0;
    for (int64_t b = 0; b < a.num_seqs; ++b) {
        const int32_t q_len = a.cu_seqlens_q[b + 1] - a.cu_seqlens_q[b];
        const int32_t context = a.seq_lens[b] - q_len;
        // decode-like: all heads in one item (sequential reads); else one item per kv head
        const bool all_heads = q_len * group < kTransposeRows && q_len * a.num_q_heads <= kMaxRowsPerItem;
        const int32_t tile = all_heads ? q_len : tile_tokens;
        const int32_t heads_per_item = all_heads ? static_cast<int32_t>(a.num_kv_heads) : 1;
        for (int32_t t = 0; t < q_len; t += tile) {
            const int32_t count = std::min(tile, q_len - t);
            const int32_t kv_end = context + t + count;  // last query of the tile sees keys < kv_end
            for (int32_t h = 0; h < a.num_kv_heads; h += heads_per_item) {
                const int64_t rows = static_cast<int64_t>(count) * group * heads_per_item;
                plan.items.push_back({static_cast<int32_t>(b), h, heads_per_item, t, count, 0, kv_end, -1,
                                      (rows + 4) * (kv_end + 16)});
                total_keys += static_cast<int64_t>(kv_end) * heads_per_item;
            }
        }
    }
    // Too few items to keep every thread busy: cut long KV ranges into slices of >= 256 keys.
    const int64_t want = 4 * static_cast<int64_t>(num_threads);
    int64_t total_cost = 0;
    for (const WorkItem& w : plan.items) total_cost += w.cost;
    if (num_threads > 1 && total_cost >= kMinParallelCost && static_cast<int64_t>(plan.items.size()) < want) {
        const int64_t slice = std::max<int64_t>(256, (total_keys + want - 1) / want);
        std::vector<WorkItem> split_items;
        for (const WorkItem& w : plan.items) {
            const int64_t n = std::max<int64_t>(1, (w.kv_end * w.num_heads) / slice);
            if (n <= 1) { split_items.push_back(w); continue; }
            const int64_t rows = static_cast<int64_t>(w.q_count) * group * w.num_heads;
            const int64_t len = (w.kv_end + n - 1) / n;
            plan.merges.push_back(w);
            plan.merges.back().partial = static_cast<int32_t>(plan.partial_records);
            plan.merge_splits.push_back(static_cast<int>(n));
            for (int64_t s = 0; s < n; ++s) {
                WorkItem piece = w;
                piece.kv_begin = static_cast<int32_t>(std::min<int64_t>(w.kv_end, s * len));
                piece.kv_end = static_cast<int32_t>(std::min<int64_t>(w.kv_end, (s + 1) * len));
                piece.partial = static_cast<int32_t>(plan.partial_records + s * rows);
                piece.cost = (rows + 4) * (piece.kv_end - piece.kv_begin + 16);
                split_items.push_back(piece);
            }
            plan.partial_records += n * rows;
        }
        plan.items.swap(split_items);
    }
    std::stable_sort(plan.items.begin(), plan.items.end(),
                     [](const WorkItem& x, const WorkItem& y) { return x.cost > y.cost; });
    return plan;
}

void paged_attention_cpu(const PagedArgs& a, bool bf16, int num_threads) {
    if (a.head_dim % kLanes != 0 || a.head_dim > 256 || !(a.head_dim == 64 || a.head_dim == 80 ||
                                                          a.head_dim == 96 || a.head_dim == 128 || a.head_dim == 256))
        throw std::invalid_argument("paged_attention_cpu: head_dim must be 64, 80, 96, 128 or 256");
    if (a.num_kv_heads <= 0 || a.num_q_heads % a.num_kv_heads != 0 || a.num_q_heads / a.num_kv_heads > kMaxRowsPerItem)
        throw std::invalid_argument("paged_attention_cpu: Hq must be a multiple of Hkv (ratio <= 64)");
    num_threads = std::max(1, num_threads);
    const Plan plan = make_plan(a, num_threads);
    const int64_t D = a.head_dim;
    std::vector<float> partials(static_cast<size_t>(plan.partial_records * (D + 2)));
    const int64_t n_items = static_cast<int64_t>(plan.items.size());
    int64_t total_cost = 0;
    for (const WorkItem& w : plan.items) total_cost += w.cost;
    // Small calls stay on the calling thread: a parallel region costs microseconds, and a whole
    // scheduler time slice when a team thread's core is busy elsewhere (seen: 16 ms on a loaded VM).
    const int threads = total_cost < kMinParallelCost ? 1 : static_cast<int>(std::min<int64_t>(num_threads, n_items));

    auto run = [&](int64_t begin, int64_t step) {
        // per-thread scratch, reused across calls (sized for the largest head_dim)
        thread_local std::vector<float> scratch;
        const size_t need = kMaxRowsPerItem * (2 * 256 + 2 + kChunk) + 2 * 256 * kChunk + 16;
        if (scratch.size() < need) scratch.resize(need);
        float* base = scratch.data();
        RowState st{base, base + kMaxRowsPerItem * 256, base + kMaxRowsPerItem * 512, base + kMaxRowsPerItem * 513,
                    base + kMaxRowsPerItem * 514, base + kMaxRowsPerItem * (514 + kChunk),
                    base + kMaxRowsPerItem * (514 + kChunk) + 256 * kChunk};
        for (int64_t i = begin; i < n_items; i += step) {
            const WorkItem& w = plan.items[i];
            float* partial = w.partial < 0 ? nullptr : partials.data() + static_cast<int64_t>(w.partial) * (D + 2);
            if (bf16) attend_item_bf16(a, w, st, partial);
            else attend_item_f32(a, w, st, partial);
        }
    };
    if (threads <= 1) {
        run(0, 1);
    } else {
        #pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
        for (int64_t i = 0; i < n_items; ++i) run(i, n_items);  // one item per iteration
    }
    for (size_t g = 0; g < plan.merges.size(); ++g) {
        const float* records = partials.data() + static_cast<int64_t>(plan.merges[g].partial) * (D + 2);
        if (bf16) merge_partials<uint16_t>(a, plan.merges[g], records, plan.merge_splits[g]);
        else merge_partials<float>(a, plan.merges[g], records, plan.merge_splits[g]);
    }
}

// store_kv: rows of `row_bytes` bytes (Hkv * D elements, same dtype as the cache) into their slots.
void store_kv_cpu(uintptr_t key, uintptr_t value, uintptr_t k_cache, uintptr_t v_cache, uintptr_t slot_mapping,
                  int64_t num_tokens, int64_t key_stride_t, int64_t value_stride_t, int64_t slot_stride,
                  int64_t row_bytes, int64_t elem_bytes, int64_t num_slots) {
    const int64_t* slots = reinterpret_cast<const int64_t*>(slot_mapping);
    const char* k = reinterpret_cast<const char*>(key);
    const char* v = reinterpret_cast<const char*>(value);
    char* kc = reinterpret_cast<char*>(k_cache);
    char* vc = reinterpret_cast<char*>(v_cache);
    for (int64_t t = 0; t < num_tokens; ++t) {
        const int64_t slot = slots[t];
        if (slot < 0) continue;
        if (slot >= num_slots) throw std::out_of_range("store_kv_cpu: slot beyond the cache");
        std::memcpy(kc + slot * slot_stride, k + t * key_stride_t * elem_bytes, row_bytes);
        std::memcpy(vc + slot * slot_stride, v + t * value_stride_t * elem_bytes, row_bytes);
    }
}

}  // namespace

void register_attention_cpu(pybind11::module_& m) {
    m.def(
        "paged_attention_cpu",
        [](uintptr_t q, uintptr_t k_cache, uintptr_t v_cache, uintptr_t out, uintptr_t block_table,
           uintptr_t seq_lens, uintptr_t cu_seqlens_q, int64_t num_seqs, int64_t num_q_heads,
           int64_t num_kv_heads, int64_t head_dim, int64_t block_size, int64_t max_blocks, int64_t q_stride_t,
           int64_t q_stride_h, int64_t o_stride_t, int64_t o_stride_h, int64_t kv_stride_block,
           int64_t kv_stride_slot, int64_t kv_stride_head, double scale, bool bf16, int num_threads) {
            PagedArgs a{reinterpret_cast<const void*>(q), reinterpret_cast<const void*>(k_cache),
                        reinterpret_cast<const void*>(v_cache), reinterpret_cast<void*>(out),
                        reinterpret_cast<const int32_t*>(block_table), reinterpret_cast<const int32_t*>(seq_lens),
                        reinterpret_cast<const int32_t*>(cu_seqlens_q), num_seqs, num_q_heads, num_kv_heads,
                        head_dim, block_size, max_blocks, q_stride_t, q_stride_h, o_stride_t, o_stride_h,
                        kv_stride_block, kv_stride_slot, kv_stride_head, static_cast<float>(scale)};
            pybind11::gil_scoped_release release;
            paged_attention_cpu(a, bf16, num_threads);
        },
        "Paged attention on CPU (raw pointers; use hpo_engine.kernels.paged_attention)");
    m.def("store_kv_cpu", &store_kv_cpu, "store_kv on CPU (raw pointers; use hpo_engine.kernels.store_kv)");
}
