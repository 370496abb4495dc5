// The emulated kernels' C entry points for the Rust tests (feature
// `emulate`): every kernel source compiled as host C++ in one unit, and a
// registry from entry-point name to kernel and geometry, built from the same
// instantiation tables as the CUDA build.
#define TESSERA_EMULATE 1
#include "../kernels/flash.cu"
#include "../kernels/indexer.cu"
#include "../kernels/merge.cu"
#include "../kernels/sparse.cu"
#include "../kernels/topk.cu"

#include <mutex>

namespace {
struct Entry {
    void (*body)(const void*);
    const int* geometry;
};

std::map<std::string, Entry>& registry() {
    static std::map<std::string, Entry> r;
    return r;
}

#define TESSERA_EMU_REG(FN, P, GEOM) \
    registry()[#FN] = Entry{[](const void* p) { FN(*static_cast<const P*>(p)); }, GEOM};

#define TESSERA_EMU_FLASH(T, NAME, D)                                                                              \
    TESSERA_EMU_REG(tessera_flash_##NAME##_d##D##_sc0_dm0, TesseraFlashParams, tessera_flash_##NAME##_d##D##_geom) \
    TESSERA_EMU_REG(tessera_flash_##NAME##_d##D##_sc0_dm1, TesseraFlashParams, tessera_flash_##NAME##_d##D##_geom) \
    TESSERA_EMU_REG(tessera_flash_##NAME##_d##D##_sc1_dm0, TesseraFlashParams, tessera_flash_##NAME##_d##D##_geom) \
    TESSERA_EMU_REG(tessera_flash_##NAME##_d##D##_sc1_dm1, TesseraFlashParams, tessera_flash_##NAME##_d##D##_geom)
// Plus the sm_80 path (fp8 widened to f16 mma) under its own name.
#define TESSERA_EMU_INDEXER(DI, F, NAME)                                                                          \
    TESSERA_EMU_REG(tessera_indexer_##NAME##_d##DI, TesseraIndexerParams, tessera_indexer_##NAME##_d##DI##_geom)   \
    registry()["tessera_indexer_" #NAME "_d" #DI "_widened"] = Entry{                                             \
        [](const void* p) { lightning_indexer<DI, F, Fp8AWidened<F>>(*static_cast<const TesseraIndexerParams*>(p)); }, \
        tessera_indexer_##NAME##_d##DI##_geom};
#define TESSERA_EMU_QUANTIZE(F, FNAME, S, SNAME) \
    TESSERA_EMU_REG(tessera_quantize_##FNAME##_##SNAME, TesseraQuantizeParams, tessera_quantize_geom)
#define TESSERA_EMU_WIDEN(S, SNAME) TESSERA_EMU_REG(tessera_widen_##SNAME, TesseraQuantizeParams, tessera_widen_geom)
#define TESSERA_EMU_SPARSE(T, NAME)                                                            \
    TESSERA_EMU_REG(tessera_sparse_##NAME##_sc0, TesseraSparseParams, tessera_sparse_geom) \
    TESSERA_EMU_REG(tessera_sparse_##NAME##_sc1, TesseraSparseParams, tessera_sparse_geom)
#define TESSERA_EMU_MERGE(T, NAME) TESSERA_EMU_REG(tessera_merge_##NAME, TesseraMergeParams, tessera_merge_geom)

void register_all() {
    if (!registry().empty()) return;
    TESSERA_FLASH_TABLE(TESSERA_EMU_FLASH)
    TESSERA_INDEXER_TABLE(TESSERA_EMU_INDEXER)
    TESSERA_QUANTIZE_TABLE(TESSERA_EMU_QUANTIZE)
    TESSERA_WIDEN_TABLE(TESSERA_EMU_WIDEN)
    TESSERA_EMU_REG(tessera_index_check, TesseraIndexCheckParams, tessera_index_check_geom)
    TESSERA_SPARSE_TABLE(TESSERA_EMU_SPARSE)
    TESSERA_MERGE_TABLE(TESSERA_EMU_MERGE)
    TESSERA_EMU_REG(tessera_topk_f32, TesseraTopkParams, tessera_topk_f32_geom)
}
}  // namespace

// The geometry {threads, tile A, tile B, smem} of `name`; -1 if unknown.
extern "C" int tessera_emu_geometry(const char* name, int* out) {
    static std::once_flag once;
    std::call_once(once, register_all);
    auto it = registry().find(name);
    if (it == registry().end()) return -1;
    std::memcpy(out, it->second.geometry, 4 * sizeof(int));
    return 0;
}

// sizeof a parameter block, by its ABI symbol ("tessera_abi_flash", ...), as the kernels see it.
extern "C" int tessera_emu_abi(const char* symbol) {
    static const std::map<std::string, int> abi = {
        {"tessera_abi_flash", tessera_abi_flash},       {"tessera_abi_indexer", tessera_abi_indexer},
        {"tessera_abi_quantize", tessera_abi_quantize}, {"tessera_abi_topk", tessera_abi_topk},
        {"tessera_abi_sparse", tessera_abi_sparse},     {"tessera_abi_index_check", tessera_abi_index_check},
        {"tessera_abi_merge", tessera_abi_merge},
    };
    auto it = abi.find(symbol);
    return it == abi.end() ? -1 : it->second;
}

// Run kernel `name` over the grid, synchronously; -1 if unknown.
extern "C" int tessera_emu_launch(const char* name, const void* params, unsigned gx, unsigned gy, unsigned gz) {
    int geometry[4];
    if (tessera_emu_geometry(name, geometry) != 0) return -1;  // also registers, once
    auto it = registry().find(name);
    if (it == registry().end()) return -1;
    const int* g = it->second.geometry;
    // One launch at a time: `__shared__` variables are process-wide statics.
    static std::mutex one_at_a_time;
    std::lock_guard<std::mutex> lock(one_at_a_time);
    emu::run(it->second.body, params, dim3{gx, gy, gz}, g[0], size_t(g[3]));
    return 0;
}
