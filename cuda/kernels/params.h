// Kernel parameter blocks: the one contract between the kernels and every host
// that launches them (the Rust driver-API launcher in cuda/src/params.rs and
// the device-check harness in cuda/device/tessera.py mirror these layouts).
//
// Each kernel takes exactly one of these structs by value. Fields are ordered
// by size (8-byte, then 4-byte) so that no host ABI can insert padding
// differently; every module exports `tessera_abi_<kind>` = sizeof(struct) and
// a host refuses to launch when its mirror disagrees.
//
// Every module also exports, per kernel family, `<family>_geom` = int[4]
// {threads per CTA, tile A, tile B, dynamic shared bytes}: the host derives
// the grid from it, so tile sizes live only in the kernels' traits.
//
// Conventions: strides are in elements; the innermost (dim) stride is 1;
// `kv_lens` and `mask` are optional device pointers (0 = absent); every size
// is validated by the host before launch.
#pragma once

typedef unsigned long long tessera_ptr;  // a device address

// Flash forward over dense Q/K/V with the structural mask (causal, window,
// chunk, global, per-batch key lengths) and an optional dense mask.
struct TesseraFlashParams {
    tessera_ptr q, k, v, y;      // (B,H,S,D) views with the strides below; y has Q's dtype
    tessera_ptr lse;             // f32 (B,Hq,Sq) contiguous, or 0
    tessera_ptr kv_lens;         // i64 (B) valid keys per batch, or 0
    tessera_ptr mask;            // dense mask broadcast to (B,Hq,Sq,Skv): f32 additive or u8 bool, or 0
    long long q_batch, q_head, q_seq;
    long long k_batch, k_head, k_seq;
    long long v_batch, v_head, v_seq;
    long long y_batch, y_head, y_seq;
    long long m_batch, m_head, m_q, m_k;
    long long q_offset;          // added to each query index to get its position
    long long left_window;       // -1 = unbounded
    long long right_window;      // -1 = unbounded
    long long global_tokens;
    long long chunk;             // 0 = off
    int batch, q_heads, kv_heads, q_len, kv_len;
    int causal;                  // 0/1
    int offset_from_kv_lens;     // 0/1: add kv_lens[b] - q_len to the offset
    int mask_is_bool;            // 0: f32 additive, 1: u8 (nonzero = attend)
    float scale, softcap;        // softcap 0 = off
};

// The FP8 lightning indexer: scores[b,t,s] = sum_j w[b,t,j] * relu(q[b,t,j,:] . k[b,s,:]),
// -inf where key s is not visible to query t. All tensors contiguous. q and k
// are E4M3 or E5M2 codes (the kernel's name says which); with scales, element
// d of a row is code * scale[row] (one f32 per row: Di <= 128 is one group of
// tessera_core's per-128 scaling), and every scale must be > 0 (the quantise
// kernel's are), so the scales factor out of the ReLU exactly.
struct TesseraIndexerParams {
    tessera_ptr q;               // fp8 (B,Sq,Hi,Di)
    tessera_ptr k;               // fp8 (B,Skv,Di)
    tessera_ptr w;               // f32 (B,Sq,Hi)
    tessera_ptr scores;          // f32 (B,Sq,Skv)
    tessera_ptr kv_lens;         // i64 (B) or 0
    tessera_ptr q_scale;         // f32 (B,Sq,Hi) > 0, or 0 = all 1
    tessera_ptr k_scale;         // f32 (B,Skv) > 0, or 0 = all 1
    tessera_ptr bad;             // i64, or 0: atomicMin'd with the flat index of a visible score that is not finite
    long long q_offset;
    int batch, q_len, kv_len, heads, dim;
    int causal, offset_from_kv_lens;
    int pad_;
};

// Quantise rows of f32/f16/bf16 to FP8 with one f32 scale per group of 128
// elements of a row (tessera_core::fp8::quantize, bit for bit): scale =
// amax / FP8_MAX (1 for an all-zero group), code = round_even_saturate(x / scale).
struct TesseraQuantizeParams {
    tessera_ptr src;             // (rows, row_len) contiguous, the kernel's source type
    tessera_ptr codes;           // u8 (rows, row_len)
    tessera_ptr scales;          // f32 (rows, ceil(row_len / 128))
    tessera_ptr bad;             // i64, or 0: atomicMin'd with the flat index of a non-finite source element
    long long rows;
    int row_len;
    int pad_;
};

// Radix top-k over rows of f32 scores: the k largest finite entries of each
// row, ties broken by the lower index, written in ascending index order and
// padded with -1.
struct TesseraTopkParams {
    tessera_ptr scores;          // f32 (rows, row_len) with row stride row_len
    tessera_ptr indices;         // i64 (rows, k)
    long long rows, row_len;
    int k;
    int pad_;
};

// Attention of each query over its own list of keys. The list of query t for
// KV head hk is indices[b * idx_batch + hk * idx_head + t * idx_seq + 0..topk]
// (idx_head = 0: one list shared by all heads, as the DSA indexer gives).
// Entries outside [0, kv_len) (the -1 padding) are skipped. Query t sits at
// position p = t + q_offset; with `causal` it sees only keys j <= p (listed or
// kept). Kept keys are attended whether listed or not: the sinks
// [0, global_tokens) and, when left_window >= 0 and p >= 0, the window
// [p - left_window, p]; a listed key that is also kept counts once. Lists
// must hold no key twice (tessera_index_check refuses them).
struct TesseraSparseParams {
    tessera_ptr q, k, v, y;      // as in TesseraFlashParams
    tessera_ptr lse;             // f32 (B,Hq,Sq) or 0
    tessera_ptr indices;         // i64 lists, strides below
    long long q_batch, q_head, q_seq;
    long long k_batch, k_head, k_seq;
    long long v_batch, v_head, v_seq;
    long long y_batch, y_head, y_seq;
    long long idx_batch, idx_head, idx_seq;
    long long q_offset;          // position of query 0 (TopKAttention: Skv - Sq)
    long long left_window;       // -1 = no window kept
    long long global_tokens;     // sinks kept
    int batch, q_heads, kv_heads, q_len, kv_len, head_dim, v_head_dim, topk;
    int causal;                  // 0/1
    float scale, softcap;
    int pad_;
};

// Validation of index lists and the `selected_indices` output of TopKAttention.
// Row r = (b, list head, t) of `indices` (rows of `topk` entries, contiguous;
// t = r % q_len) is bad when an entry is outside [0, kv_len) other than -1, or
// a key appears twice; `bad` is atomicMin'd with the lowest bad row. With
// `selected`, row r of it (`width` entries) gets the keys the sparse kernel
// attends for query t, ascending: the listed and kept keys it sees (the rules
// of TesseraSparseParams), then -1.
struct TesseraIndexCheckParams {
    tessera_ptr indices;         // i64 (rows, topk)
    tessera_ptr bad;             // i64 (one), required
    tessera_ptr selected;        // i64 (rows, width), or 0
    long long rows;
    long long q_offset, left_window, global_tokens;
    int q_len, kv_len, topk, width;
    int causal;
    int pad_;
};

// Exact merge of two partial results over disjoint key sets through their LSE.
struct TesseraMergeParams {
    tessera_ptr y_a, lse_a, y_b, lse_b, y, lse;  // y*: (rows, dv) contiguous; lse*: f32 (rows)
    long long rows;
    int dv;
    int pad_;
};
