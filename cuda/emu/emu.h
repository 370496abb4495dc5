// A CPU emulator of the CUDA features Tessera's kernels use, so that the very
// same kernel sources compile as host C++ (with TESSERA_EMULATE) and run in
// tests on machines without a GPU.
//
// Every thread of a CTA is a fiber (ucontext) on one OS thread, scheduled
// round-robin; a fiber runs until it reaches a barrier. __syncthreads waits
// for the whole CTA, warp collectives (shuffles, votes, ldmatrix, mma) for the
// 32 lanes of the warp, each through an exchange buffer. The warp-level
// tensor-core instructions are computed from the fragment layouts of the PTX
// ISA (mma.m16n8k16 for f16/bf16, mma.m16n8k32 for e4m3; ldmatrix .x4 and
// .x4.trans), so the kernels' fragment addressing, swizzles, masks and online
// softmax are checked for real; the layout tables themselves are the one
// assumption shared with the kernels. cp.async copies synchronously. CTAs run
// one after another, so `__shared__` variables are plain statics.
#pragma once
#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#define __device__
#define __global__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __constant__
#define __align__(n) alignas(n)

struct dim3 {
    unsigned x = 0, y = 0, z = 0;
};
struct uint4 {
    unsigned x, y, z, w;
};

using std::max;
using std::min;

namespace emu {

struct Fiber {
    ucontext_t ctx;
    dim3 tid;
    int warp = 0, lane = 0;
    bool done = false;
};

struct Cta {
    dim3 block, grid, dim;
    int threads = 0;
    std::vector<Fiber> fibers;
    std::vector<std::vector<char>> stacks;
    ucontext_t sched;
    std::vector<unsigned char> smem;
    int cta_count = 0, cta_gen = 0;
    int warp_count[32] = {}, warp_gen[32] = {};
    uint64_t slot[32][32][8];  // [warp][lane][word]
    const void* addr[32][32];
    void (*body)(const void*) = nullptr;
    const void* params = nullptr;
};

inline Cta* cta = nullptr;
inline Fiber* cur = nullptr;
inline unsigned long progress = 0;  // barrier arrivals: a round without any is a deadlock

inline void yield() { swapcontext(&cur->ctx, &cta->sched); }

inline void sync_cta() {
    ++progress;
    int gen = cta->cta_gen;
    if (++cta->cta_count == cta->threads) {
        cta->cta_count = 0;
        ++cta->cta_gen;
    } else {
        while (gen == cta->cta_gen) yield();
    }
}

inline void sync_warp() {
    ++progress;
    int w = cur->warp, gen = cta->warp_gen[w];
    if (++cta->warp_count[w] == 32) {
        cta->warp_count[w] = 0;
        ++cta->warp_gen[w];
    } else {
        while (gen == cta->warp_gen[w]) yield();
    }
}

// Every lane publishes `words`, then reads what `f` needs.
template <class F> inline void exchange(const uint64_t* words, int n, F f) {
    std::memcpy(cta->slot[cur->warp][cur->lane], words, n * 8);
    sync_warp();
    f(cta->slot[cur->warp]);
    sync_warp();
}

template <class T> inline T shfl(T v, int src) {
    uint64_t w = 0;
    std::memcpy(&w, &v, sizeof(T));
    T out;
    exchange(&w, 1, [&](uint64_t (*s)[8]) { std::memcpy(&out, &s[src & 31][0], sizeof(T)); });
    return out;
}

inline unsigned ballot(bool pred) {
    uint64_t w = pred;
    unsigned out = 0;
    exchange(&w, 1, [&](uint64_t (*s)[8]) {
        for (int l = 0; l < 32; ++l) out |= unsigned(s[l][0] != 0) << l;
    });
    return out;
}

// ---- element conversions (round to nearest even, as cvt.rn) --------------------
inline float half_to_f32(uint16_t b) {
    _Float16 h;
    std::memcpy(&h, &b, 2);
    return float(h);
}
inline uint16_t f32_to_half(float f) {
    _Float16 h = (_Float16)f;
    uint16_t b;
    std::memcpy(&b, &h, 2);
    return b;
}
inline float bf16_to_f32(uint16_t b) {
    uint32_t u = uint32_t(b) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if (std::isnan(f)) return uint16_t((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return uint16_t(u >> 16);
}
inline float e4m3_to_f32(uint8_t x) {
    int s = x >> 7, e = (x >> 3) & 15, m = x & 7;
    if (e == 15 && m == 7) return NAN;
    float v = e ? std::ldexp(1.0f + m / 8.0f, e - 7) : std::ldexp(m / 8.0f, -6);
    return s ? -v : v;
}

// ---- tensor-core instructions ---------------------------------------------------
// d (16x8 f32) += A (16x16) * B (16x8). A regs: 0 = (g, 2c..2c+1), 1 = (g+8, 2c..),
// 2 = (g, 2c+8..), 3 = (g+8, 2c+8..); B regs: 0 = k 2c..2c+1 of col g, 1 = k 2c+8..;
// C: 0,1 = (g, 2c..2c+1), 2,3 = (g+8, 2c..).
inline void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1, bool bf16) {
    uint64_t words[3] = {uint64_t(a[0]) | uint64_t(a[1]) << 32, uint64_t(a[2]) | uint64_t(a[3]) << 32,
                         uint64_t(b0) | uint64_t(b1) << 32};
    auto cvt = [bf16](uint32_t w, int hi) {
        uint16_t h = uint16_t(hi ? w >> 16 : w & 0xffff);
        return bf16 ? bf16_to_f32(h) : half_to_f32(h);
    };
    exchange(words, 3, [&](uint64_t (*s)[8]) {
        float A[16][16], B[16][8];
        for (int l = 0; l < 32; ++l) {
            int g = l / 4, c = l % 4;
            uint32_t r[4] = {uint32_t(s[l][0]), uint32_t(s[l][0] >> 32), uint32_t(s[l][1]), uint32_t(s[l][1] >> 32)};
            for (int e = 0; e < 2; ++e) {
                A[g][2 * c + e] = cvt(r[0], e);
                A[g + 8][2 * c + e] = cvt(r[1], e);
                A[g][2 * c + 8 + e] = cvt(r[2], e);
                A[g + 8][2 * c + 8 + e] = cvt(r[3], e);
                B[2 * c + e][g] = cvt(uint32_t(s[l][2]), e);
                B[2 * c + 8 + e][g] = cvt(uint32_t(s[l][2] >> 32), e);
            }
        }
        int g = cur->lane / 4, c = cur->lane % 4;
        for (int e = 0; e < 4; ++e) {
            int row = g + 8 * (e / 2), col = 2 * c + (e & 1);
            float acc = 0;
            for (int k = 0; k < 16; ++k) acc += A[row][k] * B[k][col];
            d[e] += acc;
        }
    });
}

inline float e5m2_to_f32(uint8_t x) { return half_to_f32(uint16_t(uint16_t(x) << 8)); }

// d += A (16x32 fp8) * B (32x8 fp8), E4M3 or (e5m2) E5M2. A regs: 0 = (g, 4c..4c+3),
// 1 = (g+8, 4c..), 2 = (g, 16+4c..), 3 = (g+8, 16+4c..); B regs: 0 = k 4c..4c+3 of
// col g, 1 = k 16+4c...
inline void mma_m16n8k32_fp8(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1, bool e5m2) {
    auto e4m3_to_f32 = [e5m2](uint8_t x) { return e5m2 ? emu::e5m2_to_f32(x) : emu::e4m3_to_f32(x); };
    uint64_t words[3] = {uint64_t(a[0]) | uint64_t(a[1]) << 32, uint64_t(a[2]) | uint64_t(a[3]) << 32,
                         uint64_t(b0) | uint64_t(b1) << 32};
    exchange(words, 3, [&](uint64_t (*s)[8]) {
        float A[16][32], B[32][8];
        for (int l = 0; l < 32; ++l) {
            int g = l / 4, c = l % 4;
            uint32_t r[4] = {uint32_t(s[l][0]), uint32_t(s[l][0] >> 32), uint32_t(s[l][1]), uint32_t(s[l][1] >> 32)};
            uint32_t bb[2] = {uint32_t(s[l][2]), uint32_t(s[l][2] >> 32)};
            for (int e = 0; e < 4; ++e) {
                A[g][4 * c + e] = e4m3_to_f32(uint8_t(r[0] >> (8 * e)));
                A[g + 8][4 * c + e] = e4m3_to_f32(uint8_t(r[1] >> (8 * e)));
                A[g][16 + 4 * c + e] = e4m3_to_f32(uint8_t(r[2] >> (8 * e)));
                A[g + 8][16 + 4 * c + e] = e4m3_to_f32(uint8_t(r[3] >> (8 * e)));
                B[4 * c + e][g] = e4m3_to_f32(uint8_t(bb[0] >> (8 * e)));
                B[16 + 4 * c + e][g] = e4m3_to_f32(uint8_t(bb[1] >> (8 * e)));
            }
        }
        int g = cur->lane / 4, c = cur->lane % 4;
        for (int e = 0; e < 4; ++e) {
            int row = g + 8 * (e / 2), col = 2 * c + (e & 1);
            float acc = 0;
            for (int k = 0; k < 32; ++k) acc += A[row][k] * B[k][col];
            d[e] += acc;
        }
    });
}

// ldmatrix .x4: lanes 8i..8i+7 give the row addresses of 8x8 b16 matrix i;
// lane l gets in reg i row l/4, cols 2(l%4), +1 (with .trans: rows 2(l%4),
// 2(l%4)+1 of col l/4).
inline void ldmatrix(uint32_t (&r)[4], const void* row, bool trans) {
    cta->addr[cur->warp][cur->lane] = row;
    sync_warp();
    int l = cur->lane;
    for (int i = 0; i < 4; ++i) {
        uint16_t e[2];
        for (int j = 0; j < 2; ++j) {
            const uint16_t* p;
            if (!trans)
                p = (const uint16_t*)cta->addr[cur->warp][8 * i + l / 4] + 2 * (l % 4) + j;
            else
                p = (const uint16_t*)cta->addr[cur->warp][8 * i + 2 * (l % 4) + j] + l / 4;
            e[j] = *p;
        }
        r[i] = uint32_t(e[0]) | uint32_t(e[1]) << 16;
    }
    sync_warp();
}

inline unsigned char* dynamic_smem() { return cta->smem.data(); }

// Run `body(params)` on every CTA of `grid` with `threads` threads each.
inline void run(void (*body)(const void*), const void* params, dim3 grid, int threads, size_t smem_bytes) {
    Cta c;
    cta = &c;
    c.grid = grid;
    c.dim = dim3{unsigned(threads), 1, 1};
    c.threads = threads;
    c.body = body;
    c.params = params;
    c.smem.assign(smem_bytes + 128, 0xcd);
    c.fibers.resize(threads);
    c.stacks.assign(threads, std::vector<char>(256 * 1024));
    for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
            for (unsigned x = 0; x < grid.x; ++x) {
                c.block = dim3{x, y, z};
                std::fill(c.smem.begin(), c.smem.end(), 0xcd);  // shared memory starts as garbage
                for (int t = 0; t < threads; ++t) {
                    Fiber& f = c.fibers[t];
                    f = Fiber{};
                    f.tid = dim3{unsigned(t), 0, 0};
                    f.warp = t / 32;
                    f.lane = t % 32;
                    getcontext(&f.ctx);
                    f.ctx.uc_stack.ss_sp = c.stacks[t].data();
                    f.ctx.uc_stack.ss_size = c.stacks[t].size();
                    f.ctx.uc_link = &c.sched;
                    makecontext(&f.ctx, (void (*)())+[] {
                        cta->body(cta->params);
                        cur->done = true;
                    }, 0);
                }
                for (bool left = true; left;) {
                    left = false;
                    unsigned long before = progress;
                    int finished = 0;
                    for (auto& f : c.fibers) {
                        if (f.done) continue;
                        cur = &f;
                        swapcontext(&c.sched, &f.ctx);
                        left |= !f.done;
                        finished += f.done;
                    }
                    if (left && !finished && progress == before) {
                        std::fprintf(stderr, "emu: deadlock in CTA (%u,%u,%u): threads wait on a barrier others never reach\n", x, y, z);
                        std::abort();
                    }
                }
            }
    cta = nullptr;
}

}  // namespace emu

#define threadIdx (emu::cur->tid)
#define blockIdx (emu::cta->block)
#define gridDim (emu::cta->grid)
#define blockDim (emu::cta->dim)

inline void __syncthreads() { emu::sync_cta(); }
inline void __syncwarp() { emu::sync_warp(); }
template <class T> inline T __shfl_sync(unsigned, T v, int src) { return emu::shfl(v, src); }
template <class T> inline T __shfl_xor_sync(unsigned, T v, int mask) { return emu::shfl(v, emu::cur->lane ^ mask); }
inline bool __any_sync(unsigned, bool p) { return emu::ballot(p) != 0; }
inline bool __all_sync(unsigned, bool p) { return emu::ballot(p) == 0xffffffffu; }
inline unsigned __ballot_sync(unsigned, bool p) { return emu::ballot(p); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
template <class T> inline T atomicMin(T* p, T v) { T o = *p; *p = std::min(o, v); return o; }
template <class T> inline T atomicMax(T* p, T v) { T o = *p; *p = std::max(o, v); return o; }
template <class T> inline T atomicAdd(T* p, T v) { T o = *p; *p = o + v; return o; }
template <class T> inline T atomicOr(T* p, T v) { T o = *p; *p = o | v; return o; }
template <class T> inline T atomicAnd(T* p, T v) { T o = *p; *p = o & v; return o; }
inline float __int_as_float(int x) { float f; std::memcpy(&f, &x, 4); return f; }
inline float __uint_as_float(unsigned x) { float f; std::memcpy(&f, &x, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned x; std::memcpy(&x, &f, 4); return x; }
