// Radix top-k select: for each row of f32 scores, the indices of its k
// largest finite entries (NaN and -inf are never selected), ties broken by the
// lower index, written in ascending index order; a row with fewer than k
// finite entries is padded with -1.
//
// One CTA per row. Four passes build 256-bin histograms of one byte of the
// order-preserving key (f32 bits mapped so that larger floats give larger
// u32), each pass restricted to the keys that match the bytes already fixed;
// after the fourth the key of the k-th largest entry is known exactly, with
// `need` = how many entries equal to it to take. A last pass compacts the
// selected indices in order with two ballot scans per chunk.
//
// Cost: O(row_len) per row -- five reads of the row (the first pass also
// counts the finite entries and stops early when there are at most k), no
// sort. Histograms are per warp, so equal keys do not serialise on one
// shared-memory atomic.
#include "common.cuh"

constexpr int TOPK_WARPS = 16;
constexpr int TOPK_THREADS = 32 * TOPK_WARPS;

// Exclusive prefix count of `flag` over the CTA in thread order; `total` gets
// the CTA-wide count. Every thread must call it.
TESSERA_DEVICE u32 cta_exclusive_count(bool flag, u32& total, u32* warp_counts) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const u32 ballot = __ballot_sync(0xffffffffu, flag);
    if (lane == 0) warp_counts[warp] = __popc(ballot);
    __syncthreads();
    u32 before = 0, all = 0;
#pragma unroll
    for (int w = 0; w < TOPK_WARPS; ++w) {
        const u32 c = warp_counts[w];
        before += w < warp ? c : 0u;
        all += c;
    }
    __syncthreads();  // warp_counts is reused by the next call
    total = all;
    return before + __popc(ballot & ((1u << lane) - 1u));
}

extern "C" __global__ void __launch_bounds__(TOPK_THREADS) tessera_topk_f32(const TesseraTopkParams p) {
    __shared__ u32 hist[TOPK_WARPS][256];
    __shared__ u32 warp_counts[TOPK_WARPS];
    __shared__ u32 s_prefix, s_mask, s_need;
    __shared__ int s_take_all;
    const long long row = blockIdx.x;
    if (row >= p.rows) return;
    const int warp = threadIdx.x / 32;
    const float* x = (const float*)p.scores + row * p.row_len;
    long long* out = (long long*)p.indices + row * p.k;

    if (threadIdx.x == 0) {
        s_prefix = 0;
        s_mask = 0;
        s_need = p.k;
        s_take_all = 0;
    }
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int i = threadIdx.x; i < TOPK_WARPS * 256; i += TOPK_THREADS) (&hist[0][0])[i] = 0;
        __syncthreads();
        const u32 prefix = s_prefix, mask = s_mask;
        for (long long i = threadIdx.x; i < p.row_len; i += TOPK_THREADS) {
            const float v = x[i];
            const u32 key = order_key(v);
            if (v > neg_inf() && (key & mask) == prefix) atomicAdd(&hist[warp][(key >> shift) & 255u], 1u);
        }
        __syncthreads();
        if (threadIdx.x < 256) {
            u32 sum = 0;
#pragma unroll
            for (int w = 0; w < TOPK_WARPS; ++w) sum += hist[w][threadIdx.x];
            hist[0][threadIdx.x] = sum;
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            u32 need = s_need;
            if (shift == 24) {
                u32 finite = 0;
                for (int d = 0; d < 256; ++d) finite += hist[0][d];
                if (finite <= need) s_take_all = 1;
            }
            if (!s_take_all) {
                for (int d = 255; d >= 0; --d) {
                    const u32 c = hist[0][d];
                    if (c >= need) {
                        s_prefix |= u32(d) << shift;
                        s_mask |= 0xffu << shift;
                        break;
                    }
                    need -= c;
                }
                s_need = need;
            }
        }
        __syncthreads();
        if (s_take_all) break;
    }

    // Compaction in index order: keys above the threshold, then the first
    // `need` keys equal to it.
    const bool take_all = s_take_all;
    const u32 threshold = s_prefix, need = s_need;
    u32 written = 0, equal_seen = 0;
    for (long long c0 = 0; c0 < p.row_len && written < (u32)p.k; c0 += TOPK_THREADS) {
        const long long i = c0 + threadIdx.x;
        const float v = i < p.row_len ? x[i] : neg_inf();
        const bool finite = v > neg_inf();
        const u32 key = order_key(v);
        const bool equal = !take_all && finite && key == threshold;
        u32 equal_total, sel_total;
        const u32 equal_before = equal_seen + cta_exclusive_count(equal, equal_total, warp_counts);
        const bool sel = finite && (take_all || key > threshold || (equal && equal_before < need));
        const u32 at = written + cta_exclusive_count(sel, sel_total, warp_counts);
        if (sel && at < (u32)p.k) out[at] = i;
        written += sel_total;
        equal_seen += equal_total;
    }
    for (long long j = (long long)written + threadIdx.x; j < p.k; j += TOPK_THREADS) out[j] = -1;
}

TESSERA_CONSTANT(int tessera_topk_f32_geom[4] = {TOPK_THREADS, 1, 1, 0})
TESSERA_CONSTANT(int tessera_abi_topk = sizeof(TesseraTopkParams))
