// The FP8 (E4M3 or E5M2) lightning indexer of DeepSeek-V3.2 DSA:
//   scores[b,t,s] = sum_j w[b,t,j] * relu(q[b,t,j,:] . k[b,s,:])
// with f32 accumulation, and -inf where key s is not visible to query t
// (s >= kv_lens[b], or causal and s > t + offset). With per-row scales
// (qs of query head j, ks of key s, all > 0) the score is
//   sum_j w[b,t,j] * relu(qs_j * ks_s * dot_j) = ks_s * sum_j (w_j * qs_j) * relu(dot_j),
// so qs is folded into the head weights and ks applied once per score. A
// visible score that is not finite is reported through `bad` (the CPU op's
// rule), never returned as a ranking.
//
// Also here: the quantiser of the CUDA-EP LightningIndexer, f32/f16/bf16 rows
// to FP8 codes with per-128 scales, bit for bit tessera_core::fp8::quantize.
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

// ---- the two FP8 formats --------------------------------------------------
// Each knows its encoding (the constants of tessera_core::fp8), its exact
// widening to f16 bits (every E4M3 and E5M2 value is an f16 value) and its
// m16n8k32 mma on sm_89+.

struct E4m3 {
    static constexpr int MAN = 3, BIAS = 7;
    static constexpr u32 MAX_CODE = 0x7eu, NAN_CODE = 0x7fu;
    static constexpr u32 MAX_BITS = 0x43e00000u;  // 448.0f
    static constexpr float MAX = 448.f;
    TESSERA_DEVICE static u32 to_f16_bits(u32 x) {
        u32 sign = (x & 0x80u) << 8, e = (x >> 3) & 15u, m = x & 7u;
        if (e == 15u && m == 7u) return sign | 0x7e00u;                                  // NaN stays NaN
        if (e == 0u) return sign | Half::from_f32(float(m) * 0.001953125f);              // m * 2^-9, exact
        return sign | ((e + 8u) << 10) | (m << 7);
    }
#ifdef TESSERA_EMULATE
    static void mma(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) { emu::mma_m16n8k32_fp8(d, a, b0, b1, false); }
#elif __CUDA_ARCH__ >= 890
    TESSERA_DEVICE static void mma(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
        asm volatile(
            "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 "
            "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
#endif
};

struct E5m2 {
    static constexpr int MAN = 2, BIAS = 15;
    static constexpr u32 MAX_CODE = 0x7bu, NAN_CODE = 0x7eu;
    static constexpr u32 MAX_BITS = 0x47600000u;  // 57344.0f
    static constexpr float MAX = 57344.f;
    // E5M2 is the top byte of an f16: same exponent bias, two mantissa bits.
    TESSERA_DEVICE static u32 to_f16_bits(u32 x) { return (x & 0xffu) << 8; }
#ifdef TESSERA_EMULATE
    static void mma(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) { emu::mma_m16n8k32_fp8(d, a, b0, b1, true); }
#elif __CUDA_ARCH__ >= 890
    TESSERA_DEVICE static void mma(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
        asm volatile(
            "mma.sync.aligned.m16n8k32.row.col.f32.e5m2.e5m2.f32 "
            "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
#endif
};

// Two fp8 bytes (the low 16 bits of x) -> f16x2, element order kept.
template <class F> TESSERA_DEVICE u32 fp8x2_to_f16x2(u32 x) {
    return F::to_f16_bits(x & 0xffu) | (F::to_f16_bits((x >> 8) & 0xffu) << 16);
}

// f32 -> FP8 code, round to nearest even, saturating (+-inf too), NaN stays
// NaN, f32 subnormals to zero: tessera_core::fp8's `encode`, line for line.
template <class F> TESSERA_DEVICE u32 fp8_encode(float x) {
    const u32 bits = __float_as_uint(x);
    const u32 sign = (bits >> 24) & 0x80u, a = bits & 0x7fffffffu;
    if (a > 0x7f800000u) return sign | F::NAN_CODE;
    if (a >= F::MAX_BITS) return sign | F::MAX_CODE;
    if (a < 0x00800000u) return sign;
    const int e = int(a >> 23) - 127, emin = 1 - F::BIAS;
    const int e_eff = e < emin ? emin : e;
    const u32 significand = (a & 0x007fffffu) | 0x00800000u;
    const u32 shift = u32(23 - F::MAN) + u32(e_eff - e);
    u32 q = 0;
    if (shift <= 24) {
        const u32 kept = significand >> shift, rest = significand & ((1u << shift) - 1u), half = 1u << (shift - 1);
        q = kept + u32(rest > half || (rest == half && (kept & 1u)));
    }
    return (sign | ((u32(e_eff - emin) << F::MAN) + q)) & 0xffu;
}

// The A operand of a 16x8x32 fp8 product, as the mma wants it. Fragments
// (PTX ISA, m16n8k32 8-bit): a[0] = row g, cols 4c..4c+3; a[1] = row g+8,
// same cols; a[2], a[3] = cols +16. b0 = k rows 4c..4c+3 of col g; b1 = +16.
// Below sm_89 there is no fp8 mma: the operand is widened once, exactly, to
// f16 and each product runs as two m16n8k16 f16 mmas. The f16 mma's k index
// kk then stands for fp8 column 4c + (kk & 1) + 2 (kk >= 8); A and B use the
// same permutation, so every dot product is unchanged. (The kernel relies only
// on A regs 0/2 and B regs 0/1 covering the same k sets for a lane, which also
// holds for the other published reading of this layout, 8c + 0..3 / 8c + 4..7.)
// Below sm_89: both operands widened to f16, two m16n8k16 mmas.
template <class F> struct Fp8AWidened {
    u32 lo[4], hi[4];
    TESSERA_DEVICE void set(const u32 (&x)[4]) {
        lo[0] = fp8x2_to_f16x2<F>(x[0]);
        lo[1] = fp8x2_to_f16x2<F>(x[1]);
        lo[2] = fp8x2_to_f16x2<F>(x[0] >> 16);
        lo[3] = fp8x2_to_f16x2<F>(x[1] >> 16);
        hi[0] = fp8x2_to_f16x2<F>(x[2]);
        hi[1] = fp8x2_to_f16x2<F>(x[3]);
        hi[2] = fp8x2_to_f16x2<F>(x[2] >> 16);
        hi[3] = fp8x2_to_f16x2<F>(x[3] >> 16);
    }
    // d += A * b as two f16 mmas over the widened operands.
    TESSERA_DEVICE void mma(float (&d)[4], u32 b0, u32 b1) const {
        Half::mma(d, lo, fp8x2_to_f16x2<F>(b0), fp8x2_to_f16x2<F>(b0 >> 16));
        Half::mma(d, hi, fp8x2_to_f16x2<F>(b1), fp8x2_to_f16x2<F>(b1 >> 16));
    }
};

#if defined(TESSERA_EMULATE) || __CUDA_ARCH__ >= 890
// sm_89+: the fp8 mma itself.
template <class F> struct Fp8AMma {
    u32 a[4];
    TESSERA_DEVICE void set(const u32 (&x)[4]) {
        for (int i = 0; i < 4; ++i) a[i] = x[i];
    }
    // d += A * b on the fp8 tensor cores.
    TESSERA_DEVICE void mma(float (&d)[4], u32 b0, u32 b1) const { F::mma(d, a, b0, b1); }
};
template <class F> using Fp8A = Fp8AMma<F>;
#else
template <class F> using Fp8A = Fp8AWidened<F>;
#endif

TESSERA_DEVICE bool finite_f32(float x) { return (__float_as_uint(x) & 0x7f800000u) != 0x7f800000u; }

// Copy key tile `s0` (BS rows of DI bytes, zero past kv_len) into `tile`.
template <int DI> TESSERA_DEVICE void load_key_tile(u8* tile, const u8* k, long long s0, int kv_len) {
    using Tr = IndexerTraits<DI>;
    for (int i = threadIdx.x; i < Tr::BS * DI / 16; i += Tr::THREADS) {
        const int r = i / (DI / 16), c = i % (DI / 16);
        const bool ok = s0 + r < kv_len;
        cp_async_16(tile + r * Tr::ROW + c * 16, ok ? k + (s0 + r) * DI + c * 16 : k, ok);
    }
}

template <int DI, class F, class A = Fp8A<F>> TESSERA_DEVICE void lightning_indexer(const TesseraIndexerParams& p) {
    using Tr = IndexerTraits<DI>;
    static_assert(DI <= 128, "one scale per row: Di must fit one 128-element scale group");
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
    const long long row = (long long)b * p.q_len + t;
    float* out = (float*)p.scores + row * p.kv_len;
    const u8* q = (const u8*)p.q + row * p.heads * DI;
    const float* w = (const float*)p.w + row * p.heads;
    const float* qs = p.q_scale ? (const float*)p.q_scale + row * p.heads : nullptr;
    const float* ks = p.k_scale ? (const float*)p.k_scale + (long long)b * p.kv_len : nullptr;
    const u8* k = (const u8*)p.k + (long long)b * p.kv_len * DI;

    // The A fragments and weights (times the query scales) of head group
    // `gi` (heads h0 + 16 gi + g, + 8).
    A a[G][KS];
    float wa[G], wb[G];
    auto load_heads = [&](int h0) {
#pragma unroll
        for (int gi = 0; gi < G; ++gi) {
            const int ha = h0 + 16 * gi + g, hb = ha + 8;
            const bool va = active && ha < p.heads, vb = active && hb < p.heads;
            wa[gi] = va ? w[ha] * (qs ? qs[ha] : 1.f) : 0.f;
            wb[gi] = vb ? w[hb] * (qs ? qs[hb] : 1.f) : 0.f;
#pragma unroll
            for (int ks_ = 0; ks_ < KS; ++ks_) {
                const int col = ks_ * 32 + c4 * 4;
                const u32 x[4] = {va ? *(const u32*)(q + ha * DI + col) : 0u, vb ? *(const u32*)(q + hb * DI + col) : 0u,
                                  va ? *(const u32*)(q + ha * DI + col + 16) : 0u,
                                  vb ? *(const u32*)(q + hb * DI + col + 16) : 0u};
                a[gi][ks_].set(x);
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
                    for (int ks_ = 0; ks_ < KS; ++ks_) {
                        kb[ks_][0] = *(const u32*)(krow + ks_ * 32);
                        kb[ks_][1] = *(const u32*)(krow + ks_ * 32 + 16);
                    }
#pragma unroll
                    for (int gi = 0; gi < G; ++gi) {
                        if (gi < groups) {
                            float c[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
                            for (int ks_ = 0; ks_ < KS; ++ks_) a[gi][ks_].mma(c, kb[ks_][0], kb[ks_][1]);
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
                        if (s >= p.kv_len) continue;
                        if (s > last) {
                            out[s] = neg_inf();
                            continue;
                        }
                        const float score = ks ? acc[n][e] * ks[s] : acc[n][e];
                        out[s] = score;
                        if (!finite_f32(score) && p.bad)
                            atomicMin((long long*)p.bad, row * p.kv_len + s);
                    }
            }
        }
        __syncthreads();  // the next iteration's prefetch overwrites this buffer
    }
}

// ---- the quantiser ---------------------------------------------------------

constexpr int QUANT_WARPS = 8;      // (row, 128-group) units per CTA, one per warp
constexpr int QUANT_GROUP = 128;    // tessera_core::fp8::SCALE_GROUP
constexpr int QUANT_PER_LANE = QUANT_GROUP / 32;

// One warp per (row, group of 128): amax by a warp reduction, scale = amax /
// F::MAX (1 when amax = 0), codes = encode(x * (1 / scale)) -- the same f32
// operations in the same order as the CPU, so codes and scales are equal bit
// for bit. A non-finite element is reported through `bad` (flat index).
template <class F, class S> TESSERA_DEVICE void quantize_rows(const TesseraQuantizeParams& p) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const long long groups = (p.row_len + QUANT_GROUP - 1) / QUANT_GROUP;
    const long long unit = (long long)blockIdx.x * QUANT_WARPS + warp;
    if (unit >= p.rows * groups) return;  // whole warps leave together
    const long long row = unit / groups, g0 = (unit % groups) * QUANT_GROUP;
    const int n = int(min((long long)QUANT_GROUP, p.row_len - g0));
    const typename Scalar<S>::storage* src = (const typename Scalar<S>::storage*)p.src + row * p.row_len + g0;
    float x[QUANT_PER_LANE];
    float amax = 0.f;
#pragma unroll
    for (int e = 0; e < QUANT_PER_LANE; ++e) {
        const int c = lane + 32 * e;
        x[e] = c < n ? Scalar<S>::load(src + c) : 0.f;
        if (c < n && !finite_f32(x[e]) && p.bad) atomicMin((long long*)p.bad, row * p.row_len + g0 + c);
        amax = fmaxf(amax, fabsf(x[e]));
    }
    amax = warp_max(amax);
    const float scale = amax > 0.f ? amax / F::MAX : 1.f;
    const float inv = 1.f / scale;
    u8* codes = (u8*)p.codes + row * p.row_len + g0;
#pragma unroll
    for (int e = 0; e < QUANT_PER_LANE; ++e) {
        const int c = lane + 32 * e;
        if (c < n) codes[c] = u8(fp8_encode<F>(x[e] * inv));
    }
    if (lane == 0) ((float*)p.scales)[row * groups + (g0 / QUANT_GROUP)] = scale;
}

// Rows of f32/f16/bf16 widened to f32 (`codes` holds f32 here; `scales` is
// unused), with the same finiteness report: the indexer's head weights.
template <class S> TESSERA_DEVICE void widen_rows(const TesseraQuantizeParams& p) {
    const long long n = p.rows * p.row_len;
    const typename Scalar<S>::storage* src = (const typename Scalar<S>::storage*)p.src;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        const float x = Scalar<S>::load(src + i);
        ((float*)p.codes)[i] = x;
        if (!finite_f32(x) && p.bad) atomicMin((long long*)p.bad, i);
    }
}

#define TESSERA_INDEXER_TABLE(X) X(64, E4m3, e4m3) X(128, E4m3, e4m3) X(64, E5m2, e5m2) X(128, E5m2, e5m2)

// One CTA per SM at least (minBlocks 1): ptxas may then use more than 128
// registers, which the sm_80 (widened) E4M3 path needs to hold its
// fragments without spilling (with the default it spilled 52 bytes).
#define TESSERA_INDEXER_INSTANCE(DI, F, NAME)                                                       \
    TESSERA_CONSTANT(int tessera_indexer_##NAME##_d##DI##_geom[4] = {                               \
        IndexerTraits<DI>::THREADS, IndexerTraits<DI>::WARPS, IndexerTraits<DI>::BS * IndexerTraits<DI>::TILES, \
        IndexerTraits<DI>::SMEM})                                                                   \
    extern "C" __global__ void __launch_bounds__(IndexerTraits<DI>::THREADS, 1)                     \
        tessera_indexer_##NAME##_d##DI(const TesseraIndexerParams p) {                              \
        lightning_indexer<DI, F>(p);                                                                \
    }

TESSERA_INDEXER_TABLE(TESSERA_INDEXER_INSTANCE)

#define TESSERA_QUANTIZE_TABLE(X) \
    X(E4m3, e4m3, Float, f32) X(E4m3, e4m3, Half, f16) X(E4m3, e4m3, BFloat, bf16) \
    X(E5m2, e5m2, Float, f32) X(E5m2, e5m2, Half, f16) X(E5m2, e5m2, BFloat, bf16)

#define TESSERA_QUANTIZE_INSTANCE(F, FNAME, S, SNAME)                                                \
    extern "C" __global__ void __launch_bounds__(32 * QUANT_WARPS)                                   \
        tessera_quantize_##FNAME##_##SNAME(const TesseraQuantizeParams p) {                          \
        quantize_rows<F, S>(p);                                                                      \
    }

TESSERA_QUANTIZE_TABLE(TESSERA_QUANTIZE_INSTANCE)

#define TESSERA_WIDEN_TABLE(X) X(Float, f32) X(Half, f16) X(BFloat, bf16)
#define TESSERA_WIDEN_INSTANCE(S, SNAME)                                                         \
    extern "C" __global__ void __launch_bounds__(256) tessera_widen_##SNAME(const TesseraQuantizeParams p) { \
        widen_rows<S>(p);                                                                        \
    }
TESSERA_WIDEN_TABLE(TESSERA_WIDEN_INSTANCE)

// {threads, units (row groups) per CTA, elements per unit, smem}
TESSERA_CONSTANT(int tessera_quantize_geom[4] = {32 * QUANT_WARPS, QUANT_WARPS, QUANT_GROUP, 0})
// {threads, elements per thread per grid step, max CTAs, smem}
TESSERA_CONSTANT(int tessera_widen_geom[4] = {256, 1, 1024, 0})
TESSERA_CONSTANT(int tessera_abi_indexer = sizeof(TesseraIndexerParams))
TESSERA_CONSTANT(int tessera_abi_quantize = sizeof(TesseraQuantizeParams))
