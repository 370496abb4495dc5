#!/usr/bin/env python3
"""Generate core/tests/data/fp8_vectors.bin: f32 inputs and the FP8 codes that
ml_dtypes gives for them, the ground truth of core/tests/fp8.rs.

Record layout (little endian, 6 bytes): u32 f32-bits, u8 float8_e4m3fn code,
u8 float8_e5m2 code. The codes are ml_dtypes' own (non-saturating) result;
the Rust test applies the one documented difference (Tessera saturates where
ml_dtypes overflows to NaN or inf).

The sweep covers, for every f32 exponent from 2^-20 to 2^17 (all FP8
subnormals, normals, the max and the overflow edge of both formats) and both
signs: every value of the top 7 mantissa bits (which holds the kept bits, the
round bit and the top sticky bits of both formats) combined with low bits
0 (exact ties), 1 (just above) and all-ones (just below the next pattern).
Then specials (zeros, f32 subnormals, f32 max, inf, NaNs) and 8192 random
f32 bit patterns with a fixed seed.

It also writes fp8_codes.bin next to it: for each of the 256 codes, the f32
bits of its value in float8_e4m3fn and in float8_e5m2 (u32 + u32).

Usage: python python/gen_fp8_vectors.py [out_path]
"""
import sys
from pathlib import Path

import ml_dtypes
import numpy as np

HIGH_BITS = 7
LOW_PATTERNS = (0, 1, (1 << (23 - HIGH_BITS)) - 1)


def sweep():
    out = []
    for e in range(-20, 18):
        exp_field = e + 127
        for hi in range(1 << HIGH_BITS):
            for lo in LOW_PATTERNS:
                mant = (hi << (23 - HIGH_BITS)) | lo
                for sign in (0, 1):
                    out.append((sign << 31) | (exp_field << 23) | mant)
    specials = [
        0x00000000, 0x80000000,  # zeros
        0x00000001, 0x807FFFFF, 0x00400000,  # f32 subnormals
        0x00800000, 0x7F7FFFFF, 0xFF7FFFFF,  # f32 min normal / max
        0x7F800000, 0xFF800000,  # infinities
        0x7FC00000, 0xFFC00000, 0x7F800001, 0xFFFFFFFF,  # NaNs
    ]
    out.extend(specials)
    rng = np.random.default_rng(20251129)
    out.extend(int(x) for x in rng.integers(0, 1 << 32, size=8192, dtype=np.uint64))
    return np.array(out, dtype=np.uint32)


def main():
    path = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "core/tests/data/fp8_vectors.bin")
    bits = sweep()
    x = bits.view(np.float32)
    with np.errstate(all="ignore"):
        e4 = x.astype(ml_dtypes.float8_e4m3fn).view(np.uint8)
        e5 = x.astype(ml_dtypes.float8_e5m2).view(np.uint8)
    rec = np.zeros(len(bits), dtype=[("bits", "<u4"), ("e4m3", "u1"), ("e5m2", "u1")])
    rec["bits"], rec["e4m3"], rec["e5m2"] = bits, e4, e5
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(rec.tobytes())
    codes = np.arange(256, dtype=np.uint8)
    dec = np.zeros(256, dtype=[("e4m3", "<u4"), ("e5m2", "<u4")])
    dec["e4m3"] = codes.view(ml_dtypes.float8_e4m3fn).astype(np.float32).view(np.uint32)
    dec["e5m2"] = codes.view(ml_dtypes.float8_e5m2).astype(np.float32).view(np.uint32)
    path.with_name("fp8_codes.bin").write_bytes(dec.tobytes())
    print(f"{path}: {len(bits)} vectors, ml_dtypes {ml_dtypes.__version__}, {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
