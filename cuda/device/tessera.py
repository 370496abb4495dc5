"""Launch Tessera's CUDA kernels from Python, through the CUDA driver API
(ctypes on libcuda.so.1), on torch tensors: the device-check harness for
machines that have a GPU and torch but no Rust toolchain.

It mirrors cuda/src/module.rs: each fatbin is loaded once into the current
context, each kernel's geometry is read from its `<family>_geom` constant, the
parameter blocks are built from cuda/kernels/params.h itself (parsed, so the
layout is written once) and checked against the module's `tessera_abi_*`
sizes. Validation of user input is the Rust crate's job; this harness only
asserts what it needs.
"""
import ctypes
import os
import re

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
PARAMS_H = os.path.join(HERE, "..", "kernels", "params.h")

_C_TYPES = {"tessera_ptr": ctypes.c_uint64, "long long": ctypes.c_int64, "int": ctypes.c_int32, "float": ctypes.c_float}


def parse_params(path=PARAMS_H):
    """{struct name: ctypes.Structure subclass} from params.h."""
    text = open(path).read()
    out = {}
    for name, body in re.findall(r"struct (\w+) \{(.*?)\};", text, re.S):
        fields = []
        for line in body.splitlines():
            code = line.split("//")[0].strip()
            if not code.endswith(";"):
                continue
            decl = code[:-1]
            ctype = next(t for t in _C_TYPES if decl.startswith(t + " "))
            for f in decl[len(ctype):].split(","):
                fields.append((f.strip(), _C_TYPES[ctype]))
        out[name] = type(name, (ctypes.Structure,), {"_fields_": fields})
    return out


PARAMS = parse_params()

# Kernel-name parts by torch dtype name (strings: the ABI test imports this file without torch).
FP8_NAMES = {"torch.float8_e4m3fn": "e4m3", "torch.float8_e5m2": "e5m2"}
SRC_NAMES = {"torch.float32": "f32", "torch.float16": "f16", "torch.bfloat16": "bf16"}
FLAG_CLEAR = 0x7F7F7F7F7F7F7F7F  # an error flag no kernel has lowered (cuda/src/dsa.rs)


class CudaError(RuntimeError):
    pass


class Driver:
    def __init__(self):
        self.lib = ctypes.CDLL("libcuda.so.1")
        L = self.lib
        vp, u, i = ctypes.c_void_p, ctypes.c_uint, ctypes.c_int
        L.cuLaunchKernel.argtypes = [vp, u, u, u, u, u, u, u, vp, ctypes.POINTER(vp), vp]
        L.cuModuleLoadData.argtypes = [ctypes.POINTER(vp), vp]
        L.cuModuleGetFunction.argtypes = [ctypes.POINTER(vp), vp, ctypes.c_char_p]
        L.cuModuleGetGlobal_v2.argtypes = [ctypes.POINTER(ctypes.c_uint64), ctypes.POINTER(ctypes.c_size_t), vp, ctypes.c_char_p]
        L.cuMemcpyDtoH_v2.argtypes = [vp, ctypes.c_uint64, ctypes.c_size_t]
        L.cuFuncSetAttribute.argtypes = [vp, i, i]
        L.cuCtxGetCurrent.argtypes = [ctypes.POINTER(vp)]

    def check(self, call, code):
        if code != 0:
            name = ctypes.c_char_p()
            self.lib.cuGetErrorName(code, ctypes.byref(name))
            raise CudaError(f"{call} failed: {name.value.decode() if name.value else code}")


class Module:
    """All kernels of a directory of fatbins (flash.fatbin, ...), loaded into
    torch's current CUDA context."""

    def __init__(self, fatbin_dir):
        torch.cuda.init()
        torch.empty(1, device="cuda")  # makes the primary context current
        self.d = Driver()
        ctx = ctypes.c_void_p()
        self.d.check("cuCtxGetCurrent", self.d.lib.cuCtxGetCurrent(ctypes.byref(ctx)))
        if not ctx.value:
            raise CudaError("no current CUDA context")
        self.modules, self.funcs, self._keep = {}, {}, []
        for f in sorted(os.listdir(fatbin_dir)):
            if not f.endswith(".fatbin"):
                continue
            data = open(os.path.join(fatbin_dir, f), "rb").read()
            buf = ctypes.create_string_buffer(data, len(data))
            self._keep.append(buf)
            m = ctypes.c_void_p()
            self.d.check("cuModuleLoadData " + f, self.d.lib.cuModuleLoadData(ctypes.byref(m), ctypes.cast(buf, ctypes.c_void_p)))
            self.modules[f[: -len(".fatbin")]] = m
        abi = [("flash", "TesseraFlashParams", "flash"), ("indexer", "TesseraIndexerParams", "indexer"),
               ("indexer", "TesseraQuantizeParams", "quantize"), ("topk", "TesseraTopkParams", "topk"),
               ("sparse", "TesseraSparseParams", "sparse"), ("sparse", "TesseraIndexCheckParams", "index_check"),
               ("merge", "TesseraMergeParams", "merge")]
        for mod, struct, symbol in abi:
            (size,) = self.global_ints(mod, "tessera_abi_" + symbol, 1)
            if size != ctypes.sizeof(PARAMS[struct]):
                raise CudaError(f"{struct}: {ctypes.sizeof(PARAMS[struct])} bytes here, {size} in the module")

    def global_ints(self, mod, symbol, n):
        ptr, size = ctypes.c_uint64(), ctypes.c_size_t()
        self.d.check("cuModuleGetGlobal " + symbol,
                     self.d.lib.cuModuleGetGlobal_v2(ctypes.byref(ptr), ctypes.byref(size), self.modules[mod], symbol.encode()))
        assert size.value == 4 * n, (symbol, size.value)
        out = (ctypes.c_int * n)()
        self.d.check("cuMemcpyDtoH", self.d.lib.cuMemcpyDtoH_v2(ctypes.cast(out, ctypes.c_void_p), ptr.value, size.value))
        return list(out)

    def kernel(self, mod, name, geom_symbol):
        key = (mod, name)
        if key not in self.funcs:
            f = ctypes.c_void_p()
            self.d.check("cuModuleGetFunction " + name, self.d.lib.cuModuleGetFunction(ctypes.byref(f), self.modules[mod], name.encode()))
            geom = self.global_ints(mod, geom_symbol, 4)
            if geom[3] > 48 * 1024:
                self.d.check("cuFuncSetAttribute", self.d.lib.cuFuncSetAttribute(f, 8, geom[3]))
            self.funcs[key] = (f, geom)
        return self.funcs[key]

    def launch(self, mod, name, geom_symbol, params, grid_of, run=True):
        """Launch on torch's current stream (unless run=False) and return a
        callable that relaunches the same block with no Python work but the
        driver call, for timing."""
        f, geom = self.kernel(mod, name, geom_symbol)
        grid = grid_of(geom)
        arg = (ctypes.c_void_p * 1)(ctypes.cast(ctypes.pointer(params), ctypes.c_void_p))
        stream = ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)
        go = self.d.lib.cuLaunchKernel

        def again():
            if 0 in grid:
                return
            code = go(f, grid[0], grid[1], grid[2], geom[0], 1, 1, geom[3], stream, arg, None)
            if code:
                self.d.check("cuLaunchKernel " + name, code)

        again.keep = (params, arg)
        if run:
            again()
        return again

    # ---- the ops (mirrors of cuda/src/plan.rs) --------------------------------

    def attention(self, q, k, v, y, lse=None, *, causal=False, q_offset=0, left=-1, right=-1, globals_=0, chunk=0,
                  kv_lens=None, align=False, mask=None, scale=None, softcap=0.0, run=True):
        """q (B,Hq,Sq,D), k/v (B,Hkv,Skv,D), y like q: any strided views whose
        last dim is contiguous. mask: bool or f32 tensor broadcastable to
        (B,Hq,Sq,Skv) (expanded views with 0 strides are fine)."""
        B, Hq, Sq, D = q.shape
        Hkv, Skv = k.shape[1], k.shape[2]
        name = {torch.float16: "f16", torch.bfloat16: "bf16"}[q.dtype]
        P = PARAMS["TesseraFlashParams"]()
        P.q, P.k, P.v, P.y = q.data_ptr(), k.data_ptr(), v.data_ptr(), y.data_ptr()
        P.lse = lse.data_ptr() if lse is not None else 0
        P.kv_lens = kv_lens.data_ptr() if kv_lens is not None else 0
        for t, pre in ((q, "q"), (k, "k"), (v, "v"), (y, "y")):
            assert t.stride(3) == 1
            setattr(P, pre + "_batch", t.stride(0)); setattr(P, pre + "_head", t.stride(1)); setattr(P, pre + "_seq", t.stride(2))
        if mask is not None:
            m = mask.expand(B, Hq, Sq, Skv)
            P.mask = m.data_ptr()
            P.m_batch, P.m_head, P.m_q, P.m_k = m.stride()
            P.mask_is_bool = 1 if mask.dtype == torch.bool else 0
        P.q_offset, P.left_window, P.right_window, P.global_tokens, P.chunk = q_offset, left, right, globals_, chunk
        P.batch, P.q_heads, P.kv_heads, P.q_len, P.kv_len = B, Hq, Hkv, Sq, Skv
        P.causal, P.offset_from_kv_lens = int(causal), int(align)
        P.scale = scale if scale is not None else D ** -0.5
        P.softcap = softcap
        kernel = f"tessera_flash_{name}_d{D}_sc{int(softcap > 0)}_dm{int(mask is not None)}"
        return self.launch("flash", kernel, f"tessera_flash_{name}_d{D}_geom", P,
                           lambda g: ((Sq + g[1] - 1) // g[1], Hq, B), run)

    def indexer(self, q8, k8, w, scores, *, causal=False, q_offset=0, kv_lens=None, align=False, q_scale=None,
                k_scale=None, bad=None, run=True):
        """q8 (B,Sq,Hi,Di), k8 (B,Skv,Di) float8_e4m3fn or float8_e5m2 (or uint8 codes with fmt=);
        w (B,Sq,Hi) f32; scores (B,Sq,Skv) f32; q_scale (B,Sq,Hi) / k_scale (B,Skv) f32 > 0;
        bad: int64 (1) lowered to the flat index of a visible non-finite score."""
        B, Sq, H, Di = q8.shape
        Skv = k8.shape[1]
        fmt = FP8_NAMES[str(q8.dtype)]
        P = PARAMS["TesseraIndexerParams"]()
        P.q, P.k, P.w, P.scores = q8.data_ptr(), k8.data_ptr(), w.data_ptr(), scores.data_ptr()
        P.kv_lens = kv_lens.data_ptr() if kv_lens is not None else 0
        P.q_scale = q_scale.data_ptr() if q_scale is not None else 0
        P.k_scale = k_scale.data_ptr() if k_scale is not None else 0
        P.bad = bad.data_ptr() if bad is not None else 0
        P.q_offset, P.batch, P.q_len, P.kv_len, P.heads, P.dim = q_offset, B, Sq, Skv, H, Di
        P.causal, P.offset_from_kv_lens = int(causal), int(align)
        return self.launch("indexer", f"tessera_indexer_{fmt}_d{Di}", f"tessera_indexer_{fmt}_d{Di}_geom", P,
                           lambda g: ((Skv + g[2] - 1) // g[2], (Sq + g[1] - 1) // g[1], B), run)

    def quantize(self, src, codes, scales, bad, run=True):
        """src (rows, row_len) f32/f16/bf16 contiguous -> codes (rows, row_len) float8_e4m3fn/e5m2,
        scales (rows, ceil(row_len/128)) f32; bad int64 (1) lowered to a non-finite element's index."""
        rows, row_len = src.shape
        P = PARAMS["TesseraQuantizeParams"]()
        P.src, P.codes, P.scales, P.bad = src.data_ptr(), codes.data_ptr(), scales.data_ptr(), bad.data_ptr()
        P.rows, P.row_len = rows, row_len
        name = f"tessera_quantize_{FP8_NAMES[str(codes.dtype)]}_{SRC_NAMES[str(src.dtype)]}"
        return self.launch("indexer", name, "tessera_quantize_geom", P,
                           lambda g: ((rows * ((row_len + g[2] - 1) // g[2]) + g[1] - 1) // g[1], 1, 1), run)

    def widen(self, src, dst, bad, run=True):
        """src (n) f32/f16/bf16 -> dst (n) f32; bad int64 (1)."""
        n = src.numel()
        P = PARAMS["TesseraQuantizeParams"]()
        P.src, P.codes, P.scales, P.bad, P.rows, P.row_len = src.data_ptr(), dst.data_ptr(), 0, bad.data_ptr(), n, 1
        return self.launch("indexer", f"tessera_widen_{SRC_NAMES[str(src.dtype)]}", "tessera_widen_geom", P,
                           lambda g: (max(1, min((n + g[0] - 1) // g[0], g[2])), 1, 1), run)

    def lightning_indexer(self, q, k, w, top_k, *, causal=False, fp8=None, chunk=None):
        """The CUDA-EP LightningIndexer's launches (cuda/src/dsa.rs): quantise q and k with
        per-128 scales, widen w, then per (batch, chunk of queries) the indexer and the top-k.
        Returns (indices (B,Sq,top_k) int64, flags [q, k, w, scores] int64)."""
        fp8 = fp8 or torch.float8_e4m3fn
        B, Sq, H, Di = q.shape
        Skv = k.shape[1]
        dev = q.device
        flags = torch.full((4,), FLAG_CLEAR, dtype=torch.int64, device=dev)
        q8 = torch.empty(B, Sq, H, Di, dtype=fp8, device=dev)
        k8 = torch.empty(B, Skv, Di, dtype=fp8, device=dev)
        qs = torch.empty(B, Sq, H, dtype=torch.float32, device=dev)
        ks = torch.empty(B, Skv, dtype=torch.float32, device=dev)
        wf = torch.empty(B, Sq, H, dtype=torch.float32, device=dev)
        self.quantize(q.reshape(-1, Di), q8.view(-1, Di), qs.view(-1, 1), flags[0:1])
        if Skv:
            self.quantize(k.reshape(-1, Di), k8.view(-1, Di), ks.view(-1, 1), flags[1:2])
        self.widen(w.reshape(-1), wf.view(-1), flags[2:3])
        out = torch.full((B, Sq, top_k), -1, dtype=torch.int64, device=dev)
        if Skv == 0:
            return out, flags
        chunk = chunk or max(1, min(Sq, (256 << 20) // (4 * Skv)))
        scores = torch.empty(chunk, Skv, dtype=torch.float32, device=dev)
        for b in range(B):
            for t0 in range(0, Sq, chunk):
                n = min(chunk, Sq - t0)
                sc = scores[:n].view(1, n, Skv)
                self.indexer(q8[b:b + 1, t0:t0 + n], k8[b:b + 1], wf[b:b + 1, t0:t0 + n], sc, causal=causal,
                             q_offset=Skv - Sq + t0, q_scale=qs[b:b + 1, t0:t0 + n], k_scale=ks[b:b + 1],
                             bad=flags[3:4])
                self.top_k(scores[:n], out[b, t0:t0 + n])
        return out, flags

    def top_k(self, scores, indices, run=True):
        """scores (rows, n) f32 contiguous -> indices (rows, k) int64."""
        rows, n = scores.shape
        P = PARAMS["TesseraTopkParams"]()
        P.scores, P.indices, P.rows, P.row_len, P.k = scores.data_ptr(), indices.data_ptr(), rows, n, indices.shape[1]
        return self.launch("topk", "tessera_topk_f32", "tessera_topk_f32_geom", P, lambda g: (rows, 1, 1), run)

    def sparse(self, q, k, v, y, lists, lse=None, *, shared=True, scale=None, softcap=0.0, causal=False, q_offset=0,
               left=-1, globals_=0, run=True):
        """lists: (B,Sq,K) int64 shared by all heads, or (B,Hkv,Sq,K) per KV head. Query t sits at
        t + q_offset; causal hides keys after it; the sinks [0, globals_) and, with left >= 0, the
        window [p - left, p] are attended whether listed or not (TopKAttention's rules)."""
        B, Hq, Sq, D = q.shape
        Hkv, Skv, Dv = k.shape[1], k.shape[2], v.shape[3]
        name = {torch.float16: "f16", torch.bfloat16: "bf16"}[q.dtype]
        P = PARAMS["TesseraSparseParams"]()
        P.q, P.k, P.v, P.y, P.indices = q.data_ptr(), k.data_ptr(), v.data_ptr(), y.data_ptr(), lists.data_ptr()
        P.lse = lse.data_ptr() if lse is not None else 0
        for t, pre in ((q, "q"), (k, "k"), (v, "v"), (y, "y")):
            setattr(P, pre + "_batch", t.stride(0)); setattr(P, pre + "_head", t.stride(1)); setattr(P, pre + "_seq", t.stride(2))
        if shared:
            P.idx_batch, P.idx_head, P.idx_seq = lists.stride(0), 0, lists.stride(1)
        else:
            P.idx_batch, P.idx_head, P.idx_seq = lists.stride(0), lists.stride(1), lists.stride(2)
        P.q_offset, P.left_window, P.global_tokens, P.causal = q_offset, left, globals_, int(causal)
        P.batch, P.q_heads, P.kv_heads, P.q_len, P.kv_len, P.head_dim, P.v_head_dim = B, Hq, Hkv, Sq, Skv, D, Dv
        P.topk = lists.shape[-1]
        P.scale = scale if scale is not None else D ** -0.5
        P.softcap = softcap
        return self.launch("sparse", f"tessera_sparse_{name}_sc{int(softcap > 0)}", "tessera_sparse_geom", P,
                           lambda g: (Sq, B, 1), run)

    def index_check(self, lists, bad, q_len, kv_len, selected=None, *, causal=False, q_offset=0, left=-1, globals_=0,
                    run=True):
        """lists (rows, K) int64 contiguous (row r is query r % q_len); bad int64 (1) lowered to the
        lowest bad row; selected (rows, W) int64 gets the attended keys, ascending, -1 padded."""
        rows, K = lists.shape
        P = PARAMS["TesseraIndexCheckParams"]()
        P.indices, P.bad = lists.data_ptr(), bad.data_ptr()
        P.selected = selected.data_ptr() if selected is not None else 0
        P.width = selected.shape[1] if selected is not None else 0
        P.rows, P.q_offset, P.left_window, P.global_tokens = rows, q_offset, left, globals_
        P.q_len, P.kv_len, P.topk, P.causal = q_len, kv_len, K, int(causal)
        return self.launch("sparse", "tessera_index_check", "tessera_index_check_geom", P,
                           lambda g: (max(1, min(rows, g[1])), 1, 1), run)

    def merge(self, y_a, lse_a, y_b, lse_b, y, lse, run=True):
        rows, dv = y.shape
        name = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}[y.dtype]
        P = PARAMS["TesseraMergeParams"]()
        P.y_a, P.lse_a, P.y_b, P.lse_b, P.y, P.lse = (t.data_ptr() for t in (y_a, lse_a, y_b, lse_b, y, lse))
        P.rows, P.dv = rows, dv
        return self.launch("merge", f"tessera_merge_{name}", "tessera_merge_geom", P,
                           lambda g: (max(1, min((rows + g[1] - 1) // g[1], 1 << 20)), 1, 1), run)
