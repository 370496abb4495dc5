// Flash forward on the tensor cores: one CTA per (query tile, query head,
// batch), WARPS warps of 16·MT query rows each, key/value tiles of BK keys
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
    // 4 warps of 32 query rows (two m16 tiles, MT): every K or V fragment a
    // warp reads from shared memory feeds MT mmas. With 16-row warps the
    // fragment reads alone (256 bytes per mma) would saturate shared memory
    // bandwidth at the sm_80 mma rate; 32-row warps halve that, as FA2 does.
    static constexpr int WARPS = 4;
    static constexpr int MT = 2;               // m16 tiles per warp
    static constexpr int BQ = 16 * MT * WARPS;  // query rows per CTA
    // Keys per tile; D=128 takes 32 so that S (MT x BK/8 x 4 f32) fits next to O.
    // Keys per tile; D=128 takes 32 so that S (MT x BK/8 x 4 f32) fits next to O
    // without spills (64 spills ~150 bytes).
    static constexpr int BK = D >= 128 ? 32 : 64;
    // D=64: Q fragments stay in registers (plain variant; the softcap and
    // dense-mask variants need those registers). D=128: registers go to O and
    // S, and Q fragments are re-read from shared memory for every key tile.
    static constexpr bool Q_IN_REGS = D <= 64;
    static constexpr int MIN_BLOCKS = 2;        // CTAs per SM the register budget must allow
    static constexpr int THREADS = 32 * WARPS;
    static constexpr int CHUNKS = D / 8;        // 16-byte chunks per row
    // Q tile + two K tiles + two V tiles, 16-bit elements.
    static constexpr int SMEM = (BQ * D + 4 * BK * D) * 2;
    static_assert(D % 64 == 0, "head dim must be a multiple of 64 (8 swizzle chunks)");
    static_assert(16 * MT <= 32, "a warp votes with one lane per row");
    static_assert((BK * CHUNKS) % THREADS == 0 && (BQ * CHUNKS) % THREADS == 0, "tile loads must split evenly");
};

template <int D> TESSERA_DEVICE int swizzle(int row, int chunk) {
    return row * FlashTraits<D>::CHUNKS + (chunk ^ (row & 7));
}

// Swizzled ldmatrix addressing without one register per address: a lane
// reads row R0 + rl, chunk C0 + cl, with R0 a multiple of 8 and C0 even known
// at compile time, and rl, cl its own. Since (C0 + cl) ^ (rl % 8) only mixes
// the low three bits, the element offset is R0*D + (C0 & ~7)*8 plus one of
// four per-lane values, picked by (C0 & 7) / 2.
template <int D> struct SwizzledLane {
    int base[4];
    TESSERA_DEVICE SwizzledLane(int rl, int cl) {
#pragma unroll
        for (int i = 0; i < 4; ++i) base[i] = rl * D + (((2 * i) ^ cl ^ (rl & 7)) * 8);
    }
    // Element offset of (R0 + rl, chunk C0 + cl) == swizzle<D>(R0 + rl, C0 + cl) * 8.
    TESSERA_DEVICE int at(int r0, int c0) const { return r0 * D + (c0 & ~7) * 8 + base[(c0 & 7) >> 1]; }
};

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
    constexpr int BQ = Tr::BQ, BK = Tr::BK, MT = Tr::MT, NB = BK / 8, ND = D / 8, KS = D / 16;
    constexpr int ROWS = 16 * MT;  // query rows per warp
    constexpr bool Q_REGS = Tr::Q_IN_REGS && !SOFTCAP && !DENSE;
    u16* sQ = dynamic_smem<u16>();
    u16* sK = sQ + BQ * D;  // [2][BK][D]
    u16* sV = sK + 2 * BK * D;
    __shared__ int s_lo, s_hi, s_ghi;
    // The dense-mask variants keep the row spans in shared memory instead of
    // 12 registers: at D=128 those registers were what ptxas spilled.
    __shared__ RowSpan s_span[DENSE ? BQ : 1];

    // Heaviest (causal) tiles first.
    const int qt = gridDim.x - 1 - blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    const int hk = h / (p.q_heads / p.kv_heads);
    const int q0 = qt * BQ;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int g = lane / 4, c4 = lane % 4;
    const int row0 = q0 + warp * ROWS;  // this warp's first query row

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
    for (int r = threadIdx.x; r < BQ; r += Tr::THREADS) {
        RowSpan s = span_of(q0 + r);
        if (DENSE) s_span[r] = s;
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

    // Lane l votes for warp row l % ROWS; each lane holds the scores of rows
    // g and g + 8 of every m16 tile, whose spans it fetches from the voters.
    const int vote_row = row0 + lane % ROWS;
    const bool vote_valid = vote_row < p.q_len;
    const RowSpan vote_span = span_of(vote_row);
    RowSpan spans[DENSE ? 1 : MT][2];
    if (!DENSE) {
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                const int src = mt * 16 + g + 8 * r;
                RowSpan& sp = spans[DENSE ? 0 : mt][r];
                sp.lo = __shfl_sync(0xffffffffu, vote_span.lo, src);
                sp.hi = __shfl_sync(0xffffffffu, vote_span.hi, src);
                sp.ghi = __shfl_sync(0xffffffffu, vote_span.ghi, src);
            }
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

    // ldmatrix lanes: Q (A operand) rows warp*ROWS + mt*16 + lane % 16, chunk
    // 2ks + lane / 16; K (B of Q Kt) key 16n2 + lane % 8 + 8 (lane / 16), chunk
    // 2ks + (lane / 8) % 2; V (B of P V, transposed) key 16ks + lane % 8 +
    // 8 ((lane / 8) % 2), chunk 2n2 + lane / 16.
    const SwizzledLane<D> q_lane(warp * ROWS + (lane & 15), lane / 16);
    const SwizzledLane<D> k_lane((lane & 7) + (lane / 16) * 8, (lane / 8) & 1);
    const SwizzledLane<D> v_lane((lane & 7) + ((lane / 8) & 1) * 8, lane / 16);
    // The A fragment of Q for m tile mt, k step ks.
    auto q_frag = [&](u32 (&a)[4], int mt, int ks) { ldmatrix_x4(a, sQ + q_lane.at(mt * 16, ks * 2)); };
    u32 qf[Q_REGS ? MT : 1][Q_REGS ? KS : 1][4];
    if (Q_REGS) {
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int ks = 0; ks < KS; ++ks) q_frag(qf[Q_REGS ? mt : 0][Q_REGS ? ks : 0], mt, ks);
    }

    float o[MT][ND][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int n = 0; n < ND; ++n) o[mt][n][0] = o[mt][n][1] = o[mt][n][2] = o[mt][n][3] = 0.f;
    float m[MT][2], l[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) m[mt][0] = m[mt][1] = neg_inf(), l[mt][0] = l[mt][1] = 0.f;
    const float scale_log2 = p.scale * LOG2E;
    const float cap_log2 = p.softcap * LOG2E, scale_cap = SOFTCAP ? p.scale / p.softcap : 0.f;

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

            // S = Q Kt: each K fragment feeds the MT m tiles.
            float s[MT][NB][4];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int n = 0; n < NB; ++n) s[mt][n][0] = s[mt][n][1] = s[mt][n][2] = s[mt][n][3] = 0.f;
#pragma unroll
            for (int ks = 0; ks < KS; ++ks) {
                u32 qa[MT][4];
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    if (Q_REGS) {
#pragma unroll
                        for (int i = 0; i < 4; ++i) qa[mt][i] = qf[Q_REGS ? mt : 0][Q_REGS ? ks : 0][i];
                    } else {
                        q_frag(qa[mt], mt, ks);
                    }
                }
#pragma unroll
                for (int n2 = 0; n2 < NB / 2; ++n2) {
                    u32 kb[4];
                    ldmatrix_x4(kb, tK + k_lane.at(n2 * 16, ks * 2));
#pragma unroll
                    for (int mt = 0; mt < MT; ++mt) {
                        T::mma(s[mt][2 * n2], qa[mt], kb[0], kb[1]);
                        T::mma(s[mt][2 * n2 + 1], qa[mt], kb[2], kb[3]);
                    }
                }
            }

            // Scale, softcap and mask, into log2 units.
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int n = 0; n < NB; ++n)
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        float x = s[mt][n][e];
                        if (SOFTCAP) x = cap_log2 * fast_tanh(x * scale_cap);
                        else x *= scale_log2;
                        if (partial) {
                            const int r = e / 2, row = row0 + mt * 16 + g + 8 * r;
                            const int col = j0 + n * 8 + 2 * c4 + (e & 1);
                            const RowSpan sp = DENSE ? s_span[row - q0] : spans[DENSE ? 0 : mt][r];
                            if (!sp.contains(col)) {
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
                        s[mt][n][e] = x;
                    }

            // Online softmax over rows g (r = 0) and g + 8 (r = 1) of each m tile.
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int r = 0; r < 2; ++r) {
                    float mx = m[mt][r];
#pragma unroll
                    for (int n = 0; n < NB; ++n) mx = fmaxf(mx, fmaxf(s[mt][n][2 * r], s[mt][n][2 * r + 1]));
                    mx = warp_max(mx, 4);  // the four lanes of a quad share the row
                    const float m_use = mx == neg_inf() ? 0.f : mx;
                    const float alpha = fast_exp2(m[mt][r] - m_use);
                    m[mt][r] = mx;
                    float sum = 0.f;
#pragma unroll
                    for (int n = 0; n < NB; ++n) {
                        s[mt][n][2 * r] = fast_exp2(s[mt][n][2 * r] - m_use);
                        s[mt][n][2 * r + 1] = fast_exp2(s[mt][n][2 * r + 1] - m_use);
                        sum += s[mt][n][2 * r] + s[mt][n][2 * r + 1];
                    }
                    l[mt][r] = alpha * l[mt][r] + sum;  // per-lane partial, summed over the quad at the end
#pragma unroll
                    for (int n = 0; n < ND; ++n) {
                        o[mt][n][2 * r] *= alpha;
                        o[mt][n][2 * r + 1] *= alpha;
                    }
                }

            // O += P V: each V fragment feeds the MT m tiles.
#pragma unroll
            for (int ks = 0; ks < BK / 16; ++ks) {
                u32 a[MT][4];
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    a[mt][0] = T::pack2(s[mt][2 * ks][0], s[mt][2 * ks][1]);
                    a[mt][1] = T::pack2(s[mt][2 * ks][2], s[mt][2 * ks][3]);
                    a[mt][2] = T::pack2(s[mt][2 * ks + 1][0], s[mt][2 * ks + 1][1]);
                    a[mt][3] = T::pack2(s[mt][2 * ks + 1][2], s[mt][2 * ks + 1][3]);
                }
#pragma unroll
                for (int n2 = 0; n2 < ND / 2; ++n2) {
                    u32 vb[4];
                    ldmatrix_x4_trans(vb, tV + v_lane.at(ks * 16, n2 * 2));
#pragma unroll
                    for (int mt = 0; mt < MT; ++mt) {
                        T::mma(o[mt][2 * n2], a[mt], vb[0], vb[1]);
                        T::mma(o[mt][2 * n2 + 1], a[mt], vb[2], vb[3]);
                    }
                }
            }
        }
        __syncthreads();  // the next iteration's prefetch overwrites this buffer
    }

    // Y = O / l, lse = ln 2 (m + log2 l); a row that saw nothing gives 0, -inf.
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const float sum = warp_sum(l[mt][r], 4);
            const float inv = sum > 0.f ? 1.f / sum : 0.f;
            const int row = row0 + mt * 16 + g + 8 * r;
            if (row < p.q_len) {
                u16* y = (u16*)p.y + b * p.y_batch + h * p.y_head + row * p.y_seq;
#pragma unroll
                for (int n = 0; n < ND; ++n)
                    *(u32*)(y + n * 8 + 2 * c4) = T::pack2(o[mt][n][2 * r] * inv, o[mt][n][2 * r + 1] * inv);
                if (p.lse && c4 == 0)
                    ((float*)p.lse)[((long long)b * p.q_heads + h) * p.q_len + row] =
                        sum > 0.f ? (m[mt][r] + fast_log2(sum)) * LN2 : neg_inf();
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
