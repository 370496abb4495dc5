// Sparse gather attention: query t of batch b, head h attends only to the keys
// listed for it (one list per KV head, or one shared by all heads as the DSA
// indexer gives) plus the keys TopKAttention always keeps (sinks and a local
// window), restricted by the bottom-right causal rule, with the same scale,
// softcap and online softmax as the dense kernel, and an LSE output. Entries
// outside [0, kv_len) -- the -1 padding of a short row -- are skipped; a row
// with no visible key outputs 0 and lse = -inf. See TesseraSparseParams for
// the rules, which are tessera-ort's CPU TopKAttention's (index mode).
//
// One CTA per (query, batch); each warp takes one head at a time. The keys of
// a query form one virtual list: its `topk` listed entries (those the query
// sees and that are not kept anyway), then the kept keys, ascending. For 32
// entries at a time, lane i computes the score of entry i (one row read from
// K, dot product against the query held in shared memory), the warp updates
// max and sum, then the 32 weighted V rows are accumulated with the head dim
// spread over the lanes (coalesced row reads).
//
// Also here: tessera_index_check, which refuses bad lists (the CPU op's
// errors) and writes `selected_indices`.
//
// Cost: O(B * Sq * Hq * (topk + kept) * (D + Dv)) -- proportional to the keys
// visited, independent of the key length.
#include "common.cuh"

constexpr int SPARSE_WARPS = 4;
constexpr int SPARSE_MAX_DIM = 256;
constexpr int SPARSE_PER_LANE = SPARSE_MAX_DIM / 32;

// The keys query position `pos` keeps and may see: the visible sinks
// [0, sinks) and the window part [wlo, whi] past them (empty when whi < wlo);
// `cap` is the last key it sees (kv_len - 1, or pos when causal).
struct KeptKeys {
    int sinks, wlo, whi, cap;  // all within [-1, kv_len]: ints

    TESSERA_DEVICE static KeptKeys of(long long pos, int kv_len, int causal, long long left, long long globals) {
        const long long cap = causal ? min((long long)kv_len - 1, pos) : (long long)kv_len - 1;
        KeptKeys k;
        k.cap = int(max(cap, -1LL));
        k.sinks = int(max(0LL, min(min(globals, (long long)kv_len), cap + 1)));
        k.wlo = 0;
        k.whi = -1;
        if (left >= 0 && pos >= 0) {
            k.wlo = int(max(max(pos - left, 0LL), (long long)k.sinks));
            k.whi = int(min(min(pos, (long long)kv_len - 1), cap));
        }
        return k;
    }
    TESSERA_DEVICE int count() const { return sinks + max(0, whi - wlo + 1); }
    TESSERA_DEVICE bool kept(long long j) const { return j < sinks || (j >= wlo && j <= whi); }
    // The e-th kept key, ascending.
    TESSERA_DEVICE int at(int e) const { return e < sinks ? e : wlo + (e - sinks); }
};

// q[0] * x.lo + q[1] * x.hi for two packed 16-bit elements.
template <class T> TESSERA_DEVICE float dot2(const float* q, u32 x) {
    return q[0] * T::to_f32(u16(x & 0xffffu)) + q[1] * T::to_f32(u16(x >> 16));
}

template <class T, bool SOFTCAP> TESSERA_DEVICE void sparse_attention(const TesseraSparseParams& p) {
    __shared__ float sq[SPARSE_WARPS][SPARSE_MAX_DIM];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int t = blockIdx.x, b = blockIdx.y;
    const int group = p.q_heads / p.kv_heads;
    const float inv_cap = SOFTCAP ? 1.f / p.softcap : 0.f;
    const KeptKeys kept = KeptKeys::of(t + p.q_offset, p.kv_len, p.causal, p.left_window, p.global_tokens);
    const long long entries = p.topk + kept.count();

    for (int h = warp; h < p.q_heads; h += SPARSE_WARPS) {
        const int hk = h / group;
        const long long* idx = (const long long*)p.indices + b * p.idx_batch + hk * p.idx_head + t * p.idx_seq;
        const u16* q = (const u16*)p.q + b * p.q_batch + h * p.q_head + t * p.q_seq;
        for (int d = lane; d < p.head_dim; d += 32) sq[warp][d] = T::to_f32(q[d]) * p.scale;
        __syncwarp();
        const u16* k = (const u16*)p.k + b * p.k_batch + hk * p.k_head;
        const u16* v = (const u16*)p.v + b * p.v_batch + hk * p.v_head;

        float m = neg_inf(), l = 0.f, acc[SPARSE_PER_LANE];
#pragma unroll
        for (int e = 0; e < SPARSE_PER_LANE; ++e) acc[e] = 0.f;

        for (long long c0 = 0; c0 < entries; c0 += 32) {
            const long long e = c0 + lane;
            int key = -1;
            if (e < p.topk) {
                const long long listed = idx[e];
                if (listed >= 0 && listed <= kept.cap && !kept.kept(listed)) key = int(listed);
            } else if (e < entries) {
                key = kept.at(int(e - p.topk));
            }
            float s = neg_inf();
            if (key >= 0) {
                const u16* kr = k + key * p.k_seq;
                float dot = 0.f;
                for (int d = 0; d < p.head_dim; d += 8) {  // head_dim % 8 == 0, rows 16-byte aligned
                    const uint4 raw = *(const uint4*)(kr + d);
                    dot += dot2<T>(&sq[warp][d], raw.x) + dot2<T>(&sq[warp][d + 2], raw.y) +
                           dot2<T>(&sq[warp][d + 4], raw.z) + dot2<T>(&sq[warp][d + 6], raw.w);
                }
                s = SOFTCAP ? p.softcap * fast_tanh(dot * inv_cap) : dot;
                s *= LOG2E;
            }
            const float mx = fmaxf(m, warp_max(s));
            const float m_use = mx == neg_inf() ? 0.f : mx;
            const float alpha = fast_exp2(m - m_use);
            const float pe = fast_exp2(s - m_use);
            l = alpha * l + warp_sum(pe);
            m = mx;
#pragma unroll
            for (int e2 = 0; e2 < SPARSE_PER_LANE; ++e2) acc[e2] *= alpha;
            for (int j = 0; j < 32; ++j) {
                const float pj = __shfl_sync(0xffffffffu, pe, j);
                const int kj = __shfl_sync(0xffffffffu, key, j);
                if (kj < 0) continue;  // no key in this slot (uniform over the warp)
                const u16* vr = v + kj * p.v_seq;
#pragma unroll
                for (int e2 = 0; e2 < SPARSE_PER_LANE; ++e2) {
                    const int d = lane + 32 * e2;
                    if (d < p.v_head_dim) acc[e2] += pj * T::to_f32(vr[d]);
                }
            }
        }

        const float inv = l > 0.f ? 1.f / l : 0.f;
        u16* y = (u16*)p.y + b * p.y_batch + h * p.y_head + t * p.y_seq;
#pragma unroll
        for (int e = 0; e < SPARSE_PER_LANE; ++e) {
            const int d = lane + 32 * e;
            if (d < p.v_head_dim) y[d] = T::from_f32(acc[e] * inv);
        }
        if (p.lse && lane == 0)
            ((float*)p.lse)[((long long)b * p.q_heads + h) * p.q_len + t] =
                l > 0.f ? (m + fast_log2(l)) * LN2 : neg_inf();
        __syncwarp();  // sq[warp] is rewritten for the next head
    }
}

#define TESSERA_SPARSE_TABLE(X) X(Half, f16) X(BFloat, bf16)

// At least SPARSE_MIN_CTAS CTAs (16 warps) per SM: ptxas then keeps the
// kernel in at most 128 registers without spills (ptxas -v: 111-124 registers,
// 0 bytes spilled on sm_80 and sm_90). Its own choice was 64-88 registers with
// 4-20 bytes of spills in the bf16 and softcap variants.
constexpr int SPARSE_MIN_CTAS = 4;

#define TESSERA_SPARSE_INSTANCE(T, NAME)                                                            \
    extern "C" __global__ void __launch_bounds__(32 * SPARSE_WARPS, SPARSE_MIN_CTAS)                \
        tessera_sparse_##NAME##_sc0(const TesseraSparseParams p) {                                  \
        sparse_attention<T, false>(p);                                                              \
    }                                                                                               \
    extern "C" __global__ void __launch_bounds__(32 * SPARSE_WARPS, SPARSE_MIN_CTAS)                \
        tessera_sparse_##NAME##_sc1(const TesseraSparseParams p) {                                  \
        sparse_attention<T, true>(p);                                                               \
    }

TESSERA_SPARSE_TABLE(TESSERA_SPARSE_INSTANCE)

// ---- index lists: validation and selected_indices ------------------------------

constexpr int CHECK_THREADS = 256;
constexpr int CHECK_MAX_CTAS = 4096;
constexpr int CHECK_WORDS = 11 * 1024;              // 44 KiB: with `counts`, under the 48 KiB static limit
constexpr int CHECK_MAX_KEYS = CHECK_WORDS * 32;    // 360448 keys

// One CTA per list row at a time (grid-stride over rows): a bitmap of the
// row's keys in shared memory finds repeats (atomicOr returns the old bit) and,
// with the kept keys added and everything past the causal cap ignored, gives
// the sorted `selected` row by an ordered compaction of the bitmap.
// Cost per row: O(topk + kept + Skv / 32) shared-memory operations.
extern "C" __global__ void __launch_bounds__(CHECK_THREADS) tessera_index_check(const TesseraIndexCheckParams p) {
    __shared__ u32 bits[CHECK_WORDS];
    __shared__ u32 counts[CHECK_THREADS];
    const int tid = threadIdx.x;
    const long long words = ((long long)p.kv_len + 31) / 32;
    if (p.kv_len > CHECK_MAX_KEYS) {  // the host refuses such calls; never pass them silently
        if (tid == 0) atomicMin((long long*)p.bad, 0LL);
        return;
    }
    for (long long row = blockIdx.x; row < p.rows; row += gridDim.x) {
        for (long long i = tid; i < words; i += CHECK_THREADS) bits[i] = 0u;
        __syncthreads();
        const long long* list = (const long long*)p.indices + row * p.topk;
        bool bad = false;
        for (int e = tid; e < p.topk; e += CHECK_THREADS) {
            const long long j = list[e];
            if (j == -1) continue;
            if (j < 0 || j >= p.kv_len) {
                bad = true;
                continue;
            }
            const u32 bit = 1u << (j % 32);
            if (atomicOr(&bits[j / 32], bit) & bit) bad = true;
        }
        if (bad) atomicMin((long long*)p.bad, row);
        if (p.selected) {
            __syncthreads();
            const KeptKeys kept =
                KeptKeys::of(row % p.q_len + p.q_offset, p.kv_len, p.causal, p.left_window, p.global_tokens);
            for (int e = tid; e < kept.count(); e += CHECK_THREADS) {
                const int j = kept.at(e);
                atomicOr(&bits[j / 32], 1u << (j % 32));
            }
            __syncthreads();
            // Ordered compaction of bits [0, cap]: thread i owns a contiguous run of words.
            const long long seen = (long long)kept.cap + 1;  // keys 0..cap
            const long long used = seen > 0 ? (seen + 31) / 32 : 0;
            const long long per = (used + CHECK_THREADS - 1) / CHECK_THREADS;
            const long long w0 = min(used, tid * per), w1 = min(used, w0 + per);
            auto word = [&](long long w) {
                u32 x = bits[w];
                const long long top = seen - w * 32;  // keys of this word that are visible
                return top >= 32 ? x : (x & ((1u << top) - 1u));
            };
            u32 mine = 0;
            for (long long w = w0; w < w1; ++w) mine += __popc(word(w));
            counts[tid] = mine;
            __syncthreads();
            if (tid == 0) {
                u32 run = 0;
                for (int i = 0; i < CHECK_THREADS; ++i) {
                    const u32 c = counts[i];
                    counts[i] = run;
                    run += c;
                }
            }
            __syncthreads();
            long long at = counts[tid];
            long long* out = (long long*)p.selected + row * p.width;
            for (long long w = w0; w < w1; ++w) {
                u32 x = word(w);
                while (x) {
                    const int bitpos = __ffs(int(x)) - 1;
                    x &= x - 1u;
                    if (at < p.width) out[at] = w * 32 + bitpos;
                    ++at;
                }
            }
            // The last thread with words knows the total; every thread pads past it.
            __syncthreads();
            counts[tid] = u32(at);  // after this thread's run: its end
            __syncthreads();
            const long long total = counts[CHECK_THREADS - 1];
            for (long long i = total + tid; i < p.width; i += CHECK_THREADS) out[i] = -1;
        }
        __syncthreads();  // the next row clears the bitmap
    }
}

TESSERA_CONSTANT(int tessera_sparse_geom[4] = {32 * SPARSE_WARPS, 1, 1, 0})
TESSERA_CONSTANT(int tessera_sparse_max_dim = SPARSE_MAX_DIM)
TESSERA_CONSTANT(int tessera_abi_sparse = sizeof(TesseraSparseParams))
// {threads, max CTAs, max keys, smem (static)}
TESSERA_CONSTANT(int tessera_index_check_geom[4] = {CHECK_THREADS, CHECK_MAX_CTAS, CHECK_MAX_KEYS, 0})
TESSERA_CONSTANT(int tessera_abi_index_check = sizeof(TesseraIndexCheckParams))
