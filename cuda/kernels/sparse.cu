// Sparse gather attention: query t of batch b, head h attends only to the keys
// listed for it (one list per KV head, or one shared by all heads as the DSA
// indexer gives),
// with the same scale, softcap and online softmax as the dense kernel, and an
// LSE output. Entries outside [0, kv_len) -- the -1 padding of a short row --
// are skipped; a row with no valid entry outputs 0 and lse = -inf.
//
// One CTA per (query, batch); each warp takes one head at a time. For 32
// listed keys at a time, lane i computes the score of key i (one row read
// from K, dot product against the query held in shared memory), the warp
// updates max and sum, then the 32 weighted V rows are accumulated with the
// head dim spread over the lanes (coalesced row reads).
//
// Cost: O(B * Sq * Hq * topk * (D + Dv)) -- proportional to the keys visited,
// independent of the key length.
#include "common.cuh"

constexpr int SPARSE_WARPS = 4;
constexpr int SPARSE_MAX_DIM = 256;
constexpr int SPARSE_PER_LANE = SPARSE_MAX_DIM / 32;

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

        for (int c0 = 0; c0 < p.topk; c0 += 32) {
            const long long listed = c0 + lane < p.topk ? idx[c0 + lane] : -1;
            const int key = listed >= 0 && listed < p.kv_len ? int(listed) : -1;
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
            for (int e = 0; e < SPARSE_PER_LANE; ++e) acc[e] *= alpha;
            for (int j = 0; j < 32; ++j) {
                const float pj = __shfl_sync(0xffffffffu, pe, j);
                const int kj = __shfl_sync(0xffffffffu, key, j);
                if (pj == 0.f) continue;  // invalid entry (uniform over the warp)
                const u16* vr = v + kj * p.v_seq;
#pragma unroll
                for (int e = 0; e < SPARSE_PER_LANE; ++e) {
                    const int d = lane + 32 * e;
                    if (d < p.v_head_dim) acc[e] += pj * T::to_f32(vr[d]);
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

#define TESSERA_SPARSE_INSTANCE(T, NAME)                                                            \
    extern "C" __global__ void __launch_bounds__(32 * SPARSE_WARPS)                                 \
        tessera_sparse_##NAME##_sc0(const TesseraSparseParams p) {                                  \
        sparse_attention<T, false>(p);                                                              \
    }                                                                                               \
    extern "C" __global__ void __launch_bounds__(32 * SPARSE_WARPS)                                 \
        tessera_sparse_##NAME##_sc1(const TesseraSparseParams p) {                                  \
        sparse_attention<T, true>(p);                                                               \
    }

TESSERA_SPARSE_TABLE(TESSERA_SPARSE_INSTANCE)

TESSERA_CONSTANT(int tessera_sparse_geom[4] = {32 * SPARSE_WARPS, 1, 1, 0})
TESSERA_CONSTANT(int tessera_sparse_max_dim = SPARSE_MAX_DIM)
TESSERA_CONSTANT(int tessera_abi_sparse = sizeof(TesseraSparseParams))
