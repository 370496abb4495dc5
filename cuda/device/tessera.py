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
        abi = {"flash": "TesseraFlashParams", "indexer": "TesseraIndexerParams", "topk": "TesseraTopkParams",
               "sparse": "TesseraSparseParams", "merge": "TesseraMergeParams"}
        for mod, struct in abi.items():
            (size,) = self.global_ints(mod, "tessera_abi_" + mod, 1)
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

    def indexer(self, q8, k8, w, scores, *, causal=False, q_offset=0, kv_lens=None, align=False, run=True):
        """q8 (B,Sq,Hi,Di), k8 (B,Skv,Di) float8_e4m3fn; w (B,Sq,Hi) f32; scores (B,Sq,Skv) f32."""
        B, Sq, H, Di = q8.shape
        Skv = k8.shape[1]
        P = PARAMS["TesseraIndexerParams"]()
        P.q, P.k, P.w, P.scores = q8.data_ptr(), k8.data_ptr(), w.data_ptr(), scores.data_ptr()
        P.kv_lens = kv_lens.data_ptr() if kv_lens is not None else 0
        P.q_offset, P.batch, P.q_len, P.kv_len, P.heads, P.dim = q_offset, B, Sq, Skv, H, Di
        P.causal, P.offset_from_kv_lens = int(causal), int(align)
        return self.launch("indexer", f"tessera_indexer_e4m3_d{Di}", f"tessera_indexer_e4m3_d{Di}_geom", P,
                           lambda g: ((Skv + g[2] - 1) // g[2], (Sq + g[1] - 1) // g[1], B), run)

    def top_k(self, scores, indices, run=True):
        """scores (rows, n) f32 contiguous -> indices (rows, k) int64."""
        rows, n = scores.shape
        P = PARAMS["TesseraTopkParams"]()
        P.scores, P.indices, P.rows, P.row_len, P.k = scores.data_ptr(), indices.data_ptr(), rows, n, indices.shape[1]
        return self.launch("topk", "tessera_topk_f32", "tessera_topk_f32_geom", P, lambda g: (rows, 1, 1), run)

    def sparse(self, q, k, v, y, lists, lse=None, *, shared=True, scale=None, softcap=0.0, run=True):
        """lists: (B,Sq,K) int64 shared by all heads, or (B,Hkv,Sq,K) per KV head."""
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
        P.batch, P.q_heads, P.kv_heads, P.q_len, P.kv_len, P.head_dim, P.v_head_dim = B, Hq, Hkv, Sq, Skv, D, Dv
        P.topk = lists.shape[-1]
        P.scale = scale if scale is not None else D ** -0.5
        P.softcap = softcap
        return self.launch("sparse", f"tessera_sparse_{name}_sc{int(softcap > 0)}", "tessera_sparse_geom", P,
                           lambda g: (Sq, B, 1), run)

    def merge(self, y_a, lse_a, y_b, lse_b, y, lse, run=True):
        rows, dv = y.shape
        name = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}[y.dtype]
        P = PARAMS["TesseraMergeParams"]()
        P.y_a, P.lse_a, P.y_b, P.lse_b, P.y, P.lse = (t.data_ptr() for t in (y_a, lse_a, y_b, lse_b, y, lse))
        P.rows, P.dv = rows, dv
        return self.launch("merge", f"tessera_merge_{name}", "tessera_merge_geom", P,
                           lambda g: (max(1, min((rows + g[1] - 1) // g[1], 1 << 20)), 1, 1), run)
