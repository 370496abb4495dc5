// Flash forward on the tensor cores: one CTA per (query tile, query head,
// batch), WARPS warps of 16 query rows each, key/value tiles of BK keys
// double-buffered in shared memory with cp.async.
//
// Per visited key tile, in algorithm order (all in registers, f32):
//   S  = Q Kt                 mma m16n8k16, K fragments via ldmatrix
//   S  = softcap(scale S); mask   per element, Partial tiles only
//   m' = max(m, rowmax S);  P = 2^(S - m');  a = 2^(m - m');  l = a l + rowsum P
//   O  = a O + P V            mma m16n8k16, V fragments via ldmatrix.trans
// and at the end Y = O / l, lse = ln2 (m + log2 l). Scores are kept in log2
// units, so exp is one ex2 instruction.
//
// The mask is classified per tile: the CTA visits only the key tiles between
// the lowest and highest key any of its rows sees (plus the global tiles);
// inside them each warp votes Empty (skip the math), Full (no per-element
// test) or Partial. A window of w keys therefore costs O(S w), not O(S^2).
//
// Shared memory rows are D*2 bytes, split into 16-byte chunks; chunk c of row r
// lives at chunk c ^ (r % 8), so the 8 row addresses of every ldmatrix phase
// fall into 8 different bank groups.
#include "common.cuh"

// One traits struct per head dim: tile sizes and the launch geometry.
template <int D> struct FlashTraits {
    // D=128: 8 warps share each K/V tile (1 CTA/SM at ~220 registers).
    // D=64: 4 warps and 3 CTAs/SM (12 warps) at <= 170 registers, no spills.
    static constexpr int WARPS = D <= 64 ? 4 : 8;
    static constexpr int MIN_BLOCKS = D <= 64 ? 3 : 1;
    static constexpr int BQ = 16 * WARPS;  // query rows per CTA
    static constexpr int BK = 64;          // keys per tile
    static constexpr int THREADS = 32 * WARPS;
    static constexpr int CHUNKS = D / 8;   // 16-byte chunks per row
    // Q tile + two K tiles + two V tiles, 16-bit elements.
    static constexpr int SMEM = (BQ * D + 4 * BK * D) * 2;
    static_assert(D % 64 == 0, "head dim must be a multiple of 64 (8 swizzle chunks)");
    static_assert((BK * CHUNKS) % THREADS == 0 && (BQ * CHUNKS) % THREADS == 0, "tile loads must split evenly");
};

template <int D> TESSERA_DEVICE int swizzle(int row, int chunk) {
    return row * FlashTraits<D>::CHUNKS + (chunk ^ (row & 7));
}

// Copy `rows` rows of D elements starting at global `src` (row stride `stride`)
// into a swizzled shared tile; rows at or past `valid` are zero-filled.
template <int D, int ROWS>
TESSERA_DEVICE void load_tile(u16* tile, const u16* src, long long stride, int valid) {
    using Tr = FlashTraits<D>;
#pragma unroll
    for (int i = threadIdx.x; i < ROWS * Tr::CHUNKS; i += Tr::THREADS) {
        int r = i / Tr::CHUNKS, c = i % Tr::CHUNKS;
        bool ok = r < valid;
        const u16* g = ok ? src + r * stride + c * 8 : src;
        cp_async_16(tile + swizzle<D>(r, c) * 8, g, ok);
    }
}

template <class T, int D, bool SOFTCAP, bool DENSE>
TESSERA_DEVICE void flash_forward(const TesseraFlashParams& p) {
    using Tr = FlashTraits<D>;
    constexpr int BQ = Tr::BQ, BK = Tr::BK, NB = BK / 8, ND = D / 8;
    u16* sQ = dynamic_smem<u16>();
    u16* sK = sQ + BQ * D;  // [2][BK][D]
    u16* sV = sK + 2 * BK * D;
    __shared__ int s_lo, s_hi, s_ghi;

    // Heaviest (causal) tiles first.
    const int qt = gridDim.x - 1 - blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    const int hk = h / (p.q_heads / p.kv_heads);
    const int q0 = qt * BQ;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int g = lane / 4, c4 = lane % 4;

    long long n_keys, offset;
    batch_geometry((const long long*)p.kv_lens, b, p.kv_len, p.q_len, p.q_offset, p.offset_from_kv_lens, n_keys,
                   offset);
    auto span_of = [&](int row) {
        if (row >= p.q_len) return RowSpan::empty();
        return row_span(row + offset, n_keys, p.causal, p.left_window, p.right_window, p.global_tokens, p.chunk);
    };

    // The key tiles this CTA visits: [0, g_tiles) and [l_first, l_last].
    if (threadIdx.x == 0) {
        s_lo = 0x7fffffff;
        s_hi = -1;
        s_ghi = -1;
    }
    __syncthreads();
    if (threadIdx.x < BQ) {
        RowSpan s = span_of(q0 + threadIdx.x);
        if (s.lo <= s.hi) {
            atomicMin(&s_lo, s.lo);
            atomicMax(&s_hi, s.hi);
        }
        atomicMax(&s_ghi, s.ghi);
    }
    __syncthreads();
    const int g_tiles = (s_ghi + BK) / BK;  // s_ghi = -1 -> 0 tiles
    const int l_first = max(g_tiles, s_lo / BK);
    const int l_last = s_hi >= 0 ? s_hi / BK : -1;
    const int n_tiles = g_tiles + max(0, l_last - l_first + 1);
    auto tile_at = [&](int i) { return i < g_tiles ? i : l_first + (i - g_tiles); };

    // This lane's row (warp row lane % 16) for the votes, and the spans of the
    // two rows (g, g+8) whose scores it holds.
    const int vote_row = q0 + warp * 16 + (lane & 15);
    const bool vote_valid = vote_row < p.q_len;
    const RowSpan vote_span = span_of(vote_row);
    RowSpan span[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        span[r].lo = __shfl_sync(0xffffffffu, vote_span.lo, g + 8 * r);
        span[r].hi = __shfl_sync(0xffffffffu, vote_span.hi, g + 8 * r);
        span[r].ghi = __shfl_sync(0xffffffffu, vote_span.ghi, g + 8 * r);
    }

    const u16* q = (const u16*)p.q + b * p.q_batch + h * p.q_head + (long long)q0 * p.q_seq;
    const u16* k = (const u16*)p.k + b * p.k_batch + hk * p.k_head;
    const u16* v = (const u16*)p.v + b * p.v_batch + hk * p.v_head;

    load_tile<D, BQ>(sQ, q, p.q_seq, p.q_len - q0);
    cp_async_commit();
    if (n_tiles > 0) {
        int j0 = tile_at(0) * BK;
        load_tile<D, BK>(sK, k + j0 * p.k_seq, p.k_seq, p.kv_len - j0);
        load_tile<D, BK>(sV, v + j0 * p.v_seq, p.v_seq, p.kv_len - j0);
    }
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();

    // Q fragments stay in registers for the whole loop.
    u32 qf[D / 16][4];
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks)
        ldmatrix_x4(qf[ks], sQ + swizzle<D>(warp * 16 + (lane & 15), ks * 2 + lane / 16) * 8);

    float o[ND][4];
#pragma unroll
    for (int n = 0; n < ND; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
    float m[2] = {neg_inf(), neg_inf()}, l[2] = {0.f, 0.f};
    const float scale_log2 = p.scale * LOG2E;
    const float cap = p.softcap, inv_cap = SOFTCAP ? 1.f / p.softcap : 0.f;

    for (int it = 0; it < n_tiles; ++it) {
        const int buf = it & 1;
        if (it + 1 < n_tiles) {
            int j1 = tile_at(it + 1) * BK;
            load_tile<D, BK>(sK + (buf ^ 1) * BK * D, k + j1 * p.k_seq, p.k_seq, p.kv_len - j1);
            load_tile<D, BK>(sV + (buf ^ 1) * BK * D, v + j1 * p.v_seq, p.v_seq, p.kv_len - j1);
        }
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();

        const int j0 = tile_at(it) * BK;
        const bool any = __any_sync(0xffffffffu, vote_valid && vote_span.intersects(j0, j0 + BK - 1));
        const bool all = __all_sync(0xffffffffu, !vote_valid || vote_span.covers(j0, j0 + BK - 1));
        if (any) {
            const bool partial = DENSE || !all;
            const u16* tK = sK + buf * BK * D;
            const u16* tV = sV + buf * BK * D;

            // S = Q Kt
            float s[NB][4];
#pragma unroll
            for (int n = 0; n < NB; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
#pragma unroll
            for (int ks = 0; ks < D / 16; ++ks) {
#pragma unroll
                for (int n2 = 0; n2 < NB / 2; ++n2) {
                    u32 kb[4];
                    int key = n2 * 16 + (lane & 7) + (lane / 16) * 8;
                    ldmatrix_x4(kb, tK + swizzle<D>(key, ks * 2 + ((lane / 8) & 1)) * 8);
                    T::mma(s[2 * n2], qf[ks], kb[0], kb[1]);
                    T::mma(s[2 * n2 + 1], qf[ks], kb[2], kb[3]);
                }
            }

            // Scale, softcap and mask, into log2 units.
#pragma unroll
            for (int n = 0; n < NB; ++n) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    float x = s[n][e];
                    if (SOFTCAP) x = cap * fast_tanh(x * p.scale * inv_cap) * LOG2E;
                    else x *= scale_log2;
                    if (partial) {
                        const int r = e / 2, row = q0 + warp * 16 + g + 8 * r, col = j0 + n * 8 + 2 * c4 + (e & 1);
                        if (!span[r].contains(col)) {
                            x = neg_inf();
                        } else if (DENSE) {
                            long long at = b * p.m_batch + h * p.m_head + row * p.m_q + col * p.m_k;
                            if (p.mask_is_bool) {
                                if (((const u8*)p.mask)[at] == 0) x = neg_inf();
                            } else {
                                x += ((const float*)p.mask)[at] * LOG2E;
                            }
                        }
                    }
                    s[n][e] = x;
                }
            }

            // Online softmax over rows g (r = 0) and g + 8 (r = 1).
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                float mx = m[r];
#pragma unroll
                for (int n = 0; n < NB; ++n) mx = fmaxf(mx, fmaxf(s[n][2 * r], s[n][2 * r + 1]));
                mx = warp_max(mx, 4);  // the four lanes of a quad share the row
                const float m_use = mx == neg_inf() ? 0.f : mx;
                const float alpha = fast_exp2(m[r] - m_use);
                m[r] = mx;
                float sum = 0.f;
#pragma unroll
                for (int n = 0; n < NB; ++n) {
                    s[n][2 * r] = fast_exp2(s[n][2 * r] - m_use);
                    s[n][2 * r + 1] = fast_exp2(s[n][2 * r + 1] - m_use);
                    sum += s[n][2 * r] + s[n][2 * r + 1];
                }
                l[r] = alpha * l[r] + sum;  // per-lane partial, summed over the quad at the end
#pragma unroll
                for (int n = 0; n < ND; ++n) {
                    o[n][2 * r] *= alpha;
                    o[n][2 * r + 1] *= alpha;
                }
            }

            // O += P V
#pragma unroll
            for (int ks = 0; ks < BK / 16; ++ks) {
                u32 a[4] = {T::pack2(s[2 * ks][0], s[2 * ks][1]), T::pack2(s[2 * ks][2], s[2 * ks][3]),
                            T::pack2(s[2 * ks + 1][0], s[2 * ks + 1][1]),
                            T::pack2(s[2 * ks + 1][2], s[2 * ks + 1][3])};
#pragma unroll
                for (int n2 = 0; n2 < ND / 2; ++n2) {
                    u32 vb[4];
                    int key = ks * 16 + (lane & 7) + ((lane / 8) & 1) * 8;
                    ldmatrix_x4_trans(vb, tV + swizzle<D>(key, n2 * 2 + lane / 16) * 8);
                    T::mma(o[2 * n2], a, vb[0], vb[1]);
                    T::mma(o[2 * n2 + 1], a, vb[2], vb[3]);
                }
            }
        }
        __syncthreads();  // the next iteration's prefetch overwrites this buffer
    }

    // Y = O / l, lse = ln 2 (m + log2 l); a row that saw nothing gives 0, -inf.
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const float sum = warp_sum(l[r], 4);
        const float inv = sum > 0.f ? 1.f / sum : 0.f;
        const int row = q0 + warp * 16 + g + 8 * r;
        if (row < p.q_len) {
            u16* y = (u16*)p.y + b * p.y_batch + h * p.y_head + row * p.y_seq;
#pragma unroll
            for (int n = 0; n < ND; ++n)
                *(u32*)(y + n * 8 + 2 * c4) = T::pack2(o[n][2 * r] * inv, o[n][2 * r + 1] * inv);
            if (p.lse && c4 == 0)
                ((float*)p.lse)[((long long)b * p.q_heads + h) * p.q_len + row] =
                    sum > 0.f ? (m[r] + fast_log2(sum)) * LN2 : neg_inf();
        }
    }
}

// ---- instantiation table ---------------------------------------------------
// (dtype, head dim) pairs; each gets the four (softcap, dense mask) variants.
// Entry points are extern "C" so the host finds them by name:
//   tessera_flash_<dtype>_d<D>_sc<0|1>_dm<0|1>
// and each exports its launch geometry as tessera_flash_<dtype>_d<D>_geom =
// {threads, query rows per CTA, keys per tile, dynamic shared bytes}.
#define TESSERA_FLASH_TABLE(X) X(Half, f16, 64) X(Half, f16, 128) X(BFloat, bf16, 64) X(BFloat, bf16, 128)

#define TESSERA_FLASH_ENTRY(T, NAME, D, SC, DM)                                                     \
    extern "C" __global__ void __launch_bounds__(FlashTraits<D>::THREADS, FlashTraits<D>::MIN_BLOCKS)                           \
        tessera_flash_##NAME##_d##D##_sc##SC##_dm##DM(const TesseraFlashParams p) {                \
        flash_forward<T, D, SC, DM>(p);                                                             \
    }

#define TESSERA_FLASH_INSTANCE(T, NAME, D)                                                          \
    TESSERA_CONSTANT(int tessera_flash_##NAME##_d##D##_geom[4] = {                           \
        FlashTraits<D>::THREADS, FlashTraits<D>::BQ, FlashTraits<D>::BK, FlashTraits<D>::SMEM})     \
    TESSERA_FLASH_ENTRY(T, NAME, D, 0, 0)                                                           \
    TESSERA_FLASH_ENTRY(T, NAME, D, 0, 1)                                                           \
    TESSERA_FLASH_ENTRY(T, NAME, D, 1, 0)                                                           \
    TESSERA_FLASH_ENTRY(T, NAME, D, 1, 1)

TESSERA_FLASH_TABLE(TESSERA_FLASH_INSTANCE)

TESSERA_CONSTANT(int tessera_abi_flash = sizeof(TesseraFlashParams))
