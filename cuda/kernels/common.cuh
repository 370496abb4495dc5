// Device helpers shared by every Tessera kernel: element types, the warp-level
// tensor-core instructions (inline PTX, so no CUDA header beyond what nvcc
// itself ships is needed), cp.async copies and the structural mask.
//
// Fragment layouts follow the PTX ISA, "Matrix Fragments for mma.m16n8k16"
// and "mma.m16n8k32": with g = lane / 4 and c = lane % 4, an f32 accumulator
// tile 16x8 holds (row g, cols 2c, 2c+1) in regs 0-1 and (row g+8, same cols)
// in regs 2-3.
#pragma once
#include "params.h"
#ifdef TESSERA_EMULATE
#include "../emu/emu.h"  // host C++ build for tests without a GPU
#endif

typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned char u8;

#define TESSERA_DEVICE __device__ __forceinline__
// A named __constant__ the host reads (geometry, ABI sizes), with C linkage.
#define TESSERA_CONSTANT(...) \
    extern "C" {              \
    __constant__ __VA_ARGS__; \
    }

constexpr float LOG2E = 1.4426950408889634f;
constexpr float LN2 = 0.6931471805599453f;

TESSERA_DEVICE float neg_inf() { return __int_as_float(0xff800000u); }

// ---- element types --------------------------------------------------------
// Storage is always 16 bits; each type knows its conversions and its mma.

struct Half {
    static constexpr const char* name = "f16";
#ifdef TESSERA_EMULATE
    static float to_f32(u16 b) { return emu::half_to_f32(b); }
    static u16 from_f32(float f) { return emu::f32_to_half(f); }
    static u32 pack2(float lo, float hi) { return from_f32(lo) | u32(from_f32(hi)) << 16; }
    static void mma(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) { emu::mma_m16n8k16(d, a, b0, b1, false); }
#else
    TESSERA_DEVICE static float to_f32(u16 b) {
        float f;
        asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(b));
        return f;
    }
    TESSERA_DEVICE static u16 from_f32(float f) {
        u16 h;
        asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
        return h;
    }
    // Low half = lo, high half = hi (cvt puts its first source in the high half).
    TESSERA_DEVICE static u32 pack2(float lo, float hi) {
        u32 r;
        asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
        return r;
    }
    // d += a * b on a 16x8x16 tile.
    TESSERA_DEVICE static void mma(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
            "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
#endif
};

struct BFloat {
    static constexpr const char* name = "bf16";
    TESSERA_DEVICE static float to_f32(u16 b) { return __int_as_float(u32(b) << 16); }
#ifdef TESSERA_EMULATE
    static u16 from_f32(float f) { return emu::f32_to_bf16(f); }
    static u32 pack2(float lo, float hi) { return from_f32(lo) | u32(from_f32(hi)) << 16; }
    static void mma(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) { emu::mma_m16n8k16(d, a, b0, b1, true); }
#else
    TESSERA_DEVICE static u16 from_f32(float f) {
        u16 h;
        asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(f));
        return h;
    }
    TESSERA_DEVICE static u32 pack2(float lo, float hi) {
        u32 r;
        asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
        return r;
    }
    TESSERA_DEVICE static void mma(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
            "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
#endif
};

// f32 storage, used only by the merge kernel (no mma).
struct Float {
    static constexpr const char* name = "f32";
};

// Generic scalar load/store in f32 for the SIMT kernels.
template <class T> struct Scalar {
    typedef u16 storage;
    TESSERA_DEVICE static float load(const storage* p) { return T::to_f32(*p); }
    TESSERA_DEVICE static void store(storage* p, float x) { *p = T::from_f32(x); }
};
template <> struct Scalar<Float> {
    typedef float storage;
    TESSERA_DEVICE static float load(const storage* p) { return *p; }
    TESSERA_DEVICE static void store(storage* p, float x) { *p = x; }
};

// ---- math -------------------------------------------------------------------

#ifdef TESSERA_EMULATE
inline float fast_exp2(float x) { return std::exp2(x); }
inline float fast_log2(float x) { return std::log2(x); }
inline float fast_tanh(float x) { return std::tanh(x); }
#else
TESSERA_DEVICE float fast_exp2(float x) {  // ex2.approx(-inf) = +0
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

TESSERA_DEVICE float fast_log2(float x) {
    float y;
    asm("lg2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

TESSERA_DEVICE float fast_tanh(float x) {  // sm_75+, max rel error ~2^-11
    float y;
    asm("tanh.approx.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}
#endif

TESSERA_DEVICE float warp_max(float x, unsigned width = 32) {
    for (unsigned o = width / 2; o > 0; o /= 2) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
    return x;
}

TESSERA_DEVICE float warp_sum(float x, unsigned width = 32) {
    for (unsigned o = width / 2; o > 0; o /= 2) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

// ---- shared memory and async copies ------------------------------------------

#ifdef TESSERA_EMULATE
template <class T> inline T* dynamic_smem() { return reinterpret_cast<T*>(emu::dynamic_smem()); }
inline void cp_async_16(void* dst, const void* src, bool valid) {
    if (valid) std::memcpy(dst, src, 16);
    else std::memset(dst, 0, 16);
}
inline void cp_async_commit() {}
template <int N> inline void cp_async_wait() {}
inline void ldmatrix_x4(u32 (&r)[4], const void* row) { emu::ldmatrix(r, row, false); }
inline void ldmatrix_x4_trans(u32 (&r)[4], const void* row) { emu::ldmatrix(r, row, true); }
#else
// The CTA's dynamic shared memory.
template <class T> TESSERA_DEVICE T* dynamic_smem() {
    extern __shared__ __align__(128) unsigned char tessera_smem[];
    return reinterpret_cast<T*>(tessera_smem);
}

TESSERA_DEVICE u32 smem_addr(const void* p) { return static_cast<u32>(__cvta_generic_to_shared(p)); }

// Copy 16 bytes global -> shared, or write 16 zero bytes when !valid (then
// `src` is not read, but must still be a mapped address).
TESSERA_DEVICE void cp_async_16(void* dst, const void* src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(smem_addr(dst)), "l"(src),
                 "r"(valid ? 16 : 0));
}
TESSERA_DEVICE void cp_async_commit() { asm volatile("cp.async.commit_group;"); }
template <int N> TESSERA_DEVICE void cp_async_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N)); }

// Four 8x8 b16 matrices; lanes 8i..8i+7 give the row addresses of matrix i.
TESSERA_DEVICE void ldmatrix_x4(u32 (&r)[4], const void* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(row)));
}
TESSERA_DEVICE void ldmatrix_x4_trans(u32 (&r)[4], const void* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(row)));
}
#endif

// ---- the structural mask (the rules of tessera_core::mask) -------------------

// Keys one query row sees: [lo, hi] U [0, ghi], inclusive; hi < lo = empty.
struct RowSpan {
    int lo, hi, ghi;

    TESSERA_DEVICE static RowSpan empty() { return RowSpan{0, -1, -1}; }
    TESSERA_DEVICE bool contains(int j) const { return (j >= lo && j <= hi) || j <= ghi; }
    TESSERA_DEVICE bool intersects(int a, int z) const {
        return (lo <= hi && lo <= z && hi >= a) || ghi >= a;
    }
    TESSERA_DEVICE bool covers(int a, int z) const {
        bool local = lo <= hi && lo <= a && hi >= z;
        bool merged = lo <= hi && lo <= ghi + 1 && max(hi, ghi) >= z;
        return local || ghi >= z || merged;
    }
};

TESSERA_DEVICE long long floor_div(long long a, long long b) {
    long long q = a / b;
    return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

// The span of the query at `pos` with `n` valid keys; mirrors
// MaskSpec::row_span in core/src/mask.rs.
TESSERA_DEVICE RowSpan row_span(long long pos, long long n, bool causal, long long left, long long right,
                                long long globals, long long chunk) {
    long long cap = n - 1;
    if (causal) cap = min(cap, pos);
    if (pos >= 0 && pos < globals) return RowSpan{0, int(max(cap, -1LL)), -1};
    long long lo = left >= 0 ? pos - left : 0;
    long long hi = right >= 0 ? pos + right : cap;
    if (chunk > 0) {
        long long start = floor_div(pos, chunk) * chunk;
        lo = max(lo, start);
        hi = min(hi, start + chunk - 1);
    }
    lo = max(lo, 0LL);
    hi = min(hi, cap);
    long long ghi = min(globals - 1, cap);
    if (hi < lo) {
        lo = 0;
        hi = -1;
    }
    return RowSpan{int(lo), int(hi), int(max(ghi, -1LL))};
}

// Valid keys of batch b (clamped to [0, kv_len] so a bad device value cannot
// make a kernel read out of bounds) and the position offset of its queries.
TESSERA_DEVICE void batch_geometry(const long long* kv_lens, int b, int kv_len, int q_len, long long q_offset,
                                   int offset_from_kv_lens, long long& n, long long& offset) {
    n = kv_len;
    if (kv_lens) n = min(max(kv_lens[b], 0LL), (long long)kv_len);
    offset = q_offset + ((kv_lens && offset_from_kv_lens) ? n - q_len : 0);
}

// Order-preserving map f32 -> u32 (larger float -> larger key; -0 ranks as
// +0, as in tessera_core::topk::order_key).
TESSERA_DEVICE u32 order_key(float x) {
    u32 u = __float_as_uint(x == 0.f ? 0.f : x);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
