// The FP8 (E4M3) lightning indexer of DeepSeek-V3.2 DSA:
//   scores[b,t,s] = sum_j w[b,t,j] * relu(q[b,t,j,:] . k[b,s,:])
// with f32 accumulation, and -inf where key s is not visible to query t
// (s >= kv_lens[b], or causal and s > t + offset).
//
// One CTA holds WARPS queries, one warp each, and walks TILES tiles of BS keys
// (double-buffered in shared memory with cp.async). A warp multiplies its
// query's heads (16 at a time, the m of the mma) by each key tile (8 keys per
// n) with the fp8 mma m16n8k32 on sm_89+; below sm_89 each fp8 operand is
// widened exactly to f16 and the same product runs as two m16n8k16 f16 mmas
// (see Fp8AMma, Fp8AWidened). With at most 16*G heads (G = 4, or 2 for the
// widened operand) the query's fragments are loaded once and stay in
// registers for all the CTA's key tiles; with more they are re-read per tile.
// The weighted ReLU sum over heads is a shuffle reduction over the 8 row
// groups of the accumulator.
//
// Cost: B*Sq*Skv*Hi*Di multiply-adds on the tensor cores; each key byte is
// read from global memory once per WARPS queries, each query byte once per
// BS*TILES keys. Key tiles past the last visible key of a query are written
// as -inf without any math.
#include "common.cuh"

template <int DI> struct IndexerTraits {
    static constexpr int WARPS = 8;          // queries per CTA
    static constexpr int THREADS = 32 * WARPS;
    static constexpr int BS = 64;            // keys per tile
    static constexpr int TILES = 8;          // key tiles per CTA
    static constexpr int ROW = DI + 16;      // shared row bytes, padded: conflict-free fragment loads
    static constexpr int SMEM = 2 * BS * ROW;
    static_assert(DI % 32 == 0, "index head dim must be a multiple of 32");
    static_assert((BS * DI / 16) % THREADS == 0, "key tile load must split evenly");
};

// One e4m3 byte widened exactly to f16 bits (every e4m3 value is an f16 value).
TESSERA_DEVICE u32 e4m3_to_f16_bits(u32 x) {
    u32 sign = (x & 0x80u) << 8, e = (x >> 3) & 15u, m = x & 7u;
    if (e == 15u && m == 7u) return sign | 0x7e00u;                                  // NaN stays NaN
    if (e == 0u) return sign | Half::from_f32(float(m) * 0.001953125f);              // m * 2^-9, exact
    return sign | ((e + 8u) << 10) | (m << 7);
}

// Two e4m3 bytes (the low 16 bits of x) -> f16x2, element order kept.
TESSERA_DEVICE u32 e4m3x2_to_f16x2(u32 x) {
    return e4m3_to_f16_bits(x & 0xffu) | (e4m3_to_f16_bits((x >> 8) & 0xffu) << 16);
}

// The A operand of a 16x8x32 e4m3 product, as the mma wants it. Fragments
// (PTX ISA, m16n8k32 8-bit): a[0] = row g, cols 4c..4c+3; a[1] = row g+8,
// same cols; a[2], a[3] = cols +16. b0 = k rows 4c..4c+3 of col g; b1 = +16.
// Below sm_89 there is no fp8 mma: the operand is widened once, exactly, to
// f16 and each product runs as two m16n8k16 f16 mmas. The f16 mma's k index
// kk then stands for fp8 column 4c + (kk & 1) + 2 (kk >= 8); A and B use the
// same permutation, so every dot product is unchanged. (The kernel relies only
// on A regs 0/2 and B regs 0/1 covering the same k sets for a lane, which also
// holds for the other published reading of this layout, 8c + 0..3 / 8c + 4..7.)
// Below sm_89: both operands widened to f16, two m16n8k16 mmas.
struct Fp8AWidened {
    u32 lo[4], hi[4];
    TESSERA_DEVICE void set(const u32 (&x)[4]) {
        lo[0] = e4m3x2_to_f16x2(x[0]);
        lo[1] = e4m3x2_to_f16x2(x[1]);
        lo[2] = e4m3x2_to_f16x2(x[0] >> 16);
        lo[3] = e4m3x2_to_f16x2(x[1] >> 16);
        hi[0] = e4m3x2_to_f16x2(x[2]);
        hi[1] = e4m3x2_to_f16x2(x[3]);
        hi[2] = e4m3x2_to_f16x2(x[2] >> 16);
        hi[3] = e4m3x2_to_f16x2(x[3] >> 16);
    }
    // d += A * b as two f16 mmas over the widened operands.
    TESSERA_DEVICE void mma(float (&d)[4], u32 b0, u32 b1) const {
        Half::mma(d, lo, e4m3x2_to_f16x2(b0), e4m3x2_to_f16x2(b0 >> 16));
        Half::mma(d, hi, e4m3x2_to_f16x2(b1), e4m3x2_to_f16x2(b1 >> 16));
    }
};

#if defined(TESSERA_EMULATE) || __CUDA_ARCH__ >= 890
// sm_89+: the fp8 mma itself.
struct Fp8AMma {
    u32 a[4];
    TESSERA_DEVICE void set(const u32 (&x)[4]) {
        for (int i = 0; i < 4; ++i) a[i] = x[i];
    }
    // d += A * b on the fp8 tensor cores.
    TESSERA_DEVICE void mma(float (&d)[4], u32 b0, u32 b1) const {
#ifdef TESSERA_EMULATE
        emu::mma_m16n8k32_e4m3(d, a, b0, b1);
#else
        asm volatile(
            "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 "
            "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
    }
};
using Fp8A = Fp8AMma;
#else
using Fp8A = Fp8AWidened;
#endif

// Copy key tile `s0` (BS rows of DI bytes, zero past kv_len) into `tile`.
template <int DI> TESSERA_DEVICE void load_key_tile(u8* tile, const u8* k, long long s0, int kv_len) {
    using Tr = IndexerTraits<DI>;
    for (int i = threadIdx.x; i < Tr::BS * DI / 16; i += Tr::THREADS) {
        const int r = i / (DI / 16), c = i % (DI / 16);
        const bool ok = s0 + r < kv_len;
        cp_async_16(tile + r * Tr::ROW + c * 16, ok ? k + (s0 + r) * DI + c * 16 : k, ok);
    }
}

template <int DI, class A = Fp8A> TESSERA_DEVICE void lightning_indexer(const TesseraIndexerParams& p) {
    using Tr = IndexerTraits<DI>;
    constexpr int BS = Tr::BS, NB = BS / 8, KS = DI / 32;
    constexpr int G = sizeof(A) <= 16 ? 4 : 2;  // head groups of 16 held in registers
    u8* sk = dynamic_smem<u8>();                // [2][BS][ROW]
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c4 = lane % 4;
    const int b = blockIdx.z, t = blockIdx.y * Tr::WARPS + warp;
    const long long first = (long long)blockIdx.x * BS * Tr::TILES;
    const int tiles = int(min((long long)Tr::TILES, ((long long)p.kv_len - first + BS - 1) / BS));

    long long n_keys, offset;
    batch_geometry((const long long*)p.kv_lens, b, p.kv_len, p.q_len, p.q_offset, p.offset_from_kv_lens, n_keys,
                   offset);
    const bool active = t < p.q_len;  // idle warps still take part in the CTA's barriers
    const long long last = p.causal ? min(n_keys - 1, t + offset) : n_keys - 1;  // last visible key
    float* out = (float*)p.scores + ((long long)b * p.q_len + t) * p.kv_len;
    const u8* q = (const u8*)p.q + ((long long)b * p.q_len + t) * p.heads * DI;
    const float* w = (const float*)p.w + ((long long)b * p.q_len + t) * p.heads;
    const u8* k = (const u8*)p.k + (long long)b * p.kv_len * DI;

    // The A fragments and weights of head group `gi` (heads h0 + 16 gi + g, + 8).
    A a[G][KS];
    float wa[G], wb[G];
    auto load_heads = [&](int h0) {
#pragma unroll
        for (int gi = 0; gi < G; ++gi) {
            const int ha = h0 + 16 * gi + g, hb = ha + 8;
            const bool va = active && ha < p.heads, vb = active && hb < p.heads;
            wa[gi] = va ? w[ha] : 0.f;
            wb[gi] = vb ? w[hb] : 0.f;
#pragma unroll
            for (int ks = 0; ks < KS; ++ks) {
                const int col = ks * 32 + c4 * 4;
                const u32 x[4] = {va ? *(const u32*)(q + ha * DI + col) : 0u, vb ? *(const u32*)(q + hb * DI + col) : 0u,
                                  va ? *(const u32*)(q + ha * DI + col + 16) : 0u,
                                  vb ? *(const u32*)(q + hb * DI + col + 16) : 0u};
                a[gi][ks].set(x);
            }
        }
    };
    const bool resident = p.heads <= 16 * G;
    if (resident) load_heads(0);

    if (tiles > 0) load_key_tile<DI>(sk, k, first, p.kv_len);
    cp_async_commit();
    for (int it = 0; it < tiles; ++it) {
        const int buf = it & 1;
        const long long s0 = first + (long long)it * BS;
        if (it + 1 < tiles) load_key_tile<DI>(sk + (buf ^ 1) * BS * Tr::ROW, k, s0 + BS, p.kv_len);
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();

        if (active && s0 > last) {
            for (long long s = s0 + lane; s < min(s0 + BS, (long long)p.kv_len); s += 32) out[s] = neg_inf();
        } else if (active) {
            const u8* tile = sk + buf * BS * Tr::ROW;
            float acc[NB][2];
#pragma unroll
            for (int n = 0; n < NB; ++n) acc[n][0] = acc[n][1] = 0.f;
            for (int h0 = 0; h0 < p.heads; h0 += 16 * G) {
                if (!resident) load_heads(h0);
                const int groups = min(G, (p.heads - h0 + 15) / 16);
#pragma unroll
                for (int n = 0; n < NB; ++n) {
                    // This lane's B fragments of keys 8n..8n+7, shared by every head group.
                    const u8* krow = tile + (n * 8 + g) * Tr::ROW + c4 * 4;
                    u32 kb[KS][2];
#pragma unroll
                    for (int ks = 0; ks < KS; ++ks) {
                        kb[ks][0] = *(const u32*)(krow + ks * 32);
                        kb[ks][1] = *(const u32*)(krow + ks * 32 + 16);
                    }
#pragma unroll
                    for (int gi = 0; gi < G; ++gi) {
                        if (gi < groups) {
                            float c[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
                            for (int ks = 0; ks < KS; ++ks) a[gi][ks].mma(c, kb[ks][0], kb[ks][1]);
                            acc[n][0] += wa[gi] * fmaxf(c[0], 0.f) + wb[gi] * fmaxf(c[2], 0.f);
                            acc[n][1] += wa[gi] * fmaxf(c[1], 0.f) + wb[gi] * fmaxf(c[3], 0.f);
                        }
                    }
                }
            }
            // Sum over the 8 row groups (lanes with equal c4), then lanes 0-3 write.
#pragma unroll
            for (int n = 0; n < NB; ++n)
#pragma unroll
                for (int e = 0; e < 2; ++e)
#pragma unroll
                    for (int o = 4; o < 32; o *= 2) acc[n][e] += __shfl_xor_sync(0xffffffffu, acc[n][e], o);
            if (g == 0) {
#pragma unroll
                for (int n = 0; n < NB; ++n)
#pragma unroll
                    for (int e = 0; e < 2; ++e) {
                        const long long s = s0 + n * 8 + 2 * c4 + e;
                        if (s < p.kv_len) out[s] = s <= last ? acc[n][e] : neg_inf();
                    }
            }
        }
        __syncthreads();  // the next iteration's prefetch overwrites this buffer
    }
}

#define TESSERA_INDEXER_TABLE(X) X(64) X(128)

#define TESSERA_INDEXER_INSTANCE(DI)                                                                \
    TESSERA_CONSTANT(int tessera_indexer_e4m3_d##DI##_geom[4] = {                                   \
        IndexerTraits<DI>::THREADS, IndexerTraits<DI>::WARPS, IndexerTraits<DI>::BS * IndexerTraits<DI>::TILES, \
        IndexerTraits<DI>::SMEM})                                                                   \
    extern "C" __global__ void __launch_bounds__(IndexerTraits<DI>::THREADS)                        \
        tessera_indexer_e4m3_d##DI(const TesseraIndexerParams p) {                                  \
        lightning_indexer<DI>(p);                                                                   \
    }

TESSERA_INDEXER_TABLE(TESSERA_INDEXER_INSTANCE)

TESSERA_CONSTANT(int tessera_abi_indexer = sizeof(TesseraIndexerParams))
