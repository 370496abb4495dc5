// Exact merge of two attention results over disjoint key sets:
//   Y = (e^lse_a Y_a + e^lse_b Y_b) / (e^lse_a + e^lse_b),  lse = ln(e^lse_a + e^lse_b),
// computed relative to max(lse_a, lse_b) so nothing overflows; an empty side
// (lse = -inf) has weight 0 and two empty sides give Y = 0, lse = -inf
// (tessera_core::merge, in f32).
//
// One warp per row, grid-stride over rows. Each warp reads its row's two lse
// values before any lane writes, so the output may alias either input
// (in-place merge). Cost: O(rows * dv), one read of each input.
#include "common.cuh"

constexpr int MERGE_WARPS = 8;

template <class T> TESSERA_DEVICE void merge_rows(const TesseraMergeParams& p) {
    typedef typename Scalar<T>::storage S;
    const int lane = threadIdx.x % 32;
    const long long warps = (long long)gridDim.x * MERGE_WARPS;
    for (long long r = (long long)blockIdx.x * MERGE_WARPS + threadIdx.x / 32; r < p.rows; r += warps) {
        const float la = ((const float*)p.lse_a)[r], lb = ((const float*)p.lse_b)[r];
        __syncwarp();
        const float m = fmaxf(la, lb);
        float wa = 0.f, wb = 0.f, lse = neg_inf();
        if (m != neg_inf()) {
            const float ea = expf(la - m), eb = expf(lb - m), sum = ea + eb;
            wa = ea / sum;
            wb = eb / sum;
            lse = m + logf(sum);
        }
        const S* ya = (const S*)p.y_a + r * p.dv;
        const S* yb = (const S*)p.y_b + r * p.dv;
        S* y = (S*)p.y + r * p.dv;
        for (int d = lane; d < p.dv; d += 32) {
            const float va = wa == 0.f ? 0.f : wa * Scalar<T>::load(ya + d);
            const float vb = wb == 0.f ? 0.f : wb * Scalar<T>::load(yb + d);
            Scalar<T>::store(y + d, va + vb);
        }
        if (lane == 0) ((float*)p.lse)[r] = lse;
    }
}

#define TESSERA_MERGE_TABLE(X) X(Float, f32) X(Half, f16) X(BFloat, bf16)

#define TESSERA_MERGE_INSTANCE(T, NAME)                                                             \
    extern "C" __global__ void __launch_bounds__(32 * MERGE_WARPS)                                  \
        tessera_merge_##NAME(const TesseraMergeParams p) {                                          \
        merge_rows<T>(p);                                                                           \
    }

TESSERA_MERGE_TABLE(TESSERA_MERGE_INSTANCE)

TESSERA_CONSTANT(int tessera_merge_geom[4] = {32 * MERGE_WARPS, MERGE_WARPS, 1, 0})
TESSERA_CONSTANT(int tessera_abi_merge = sizeof(TesseraMergeParams))
