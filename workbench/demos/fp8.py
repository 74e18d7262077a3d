"""FP8 (e4m3) storage, emulated: what keeping a KV cache in 8 bits costs in accuracy and saves in memory.

FlashAttention-3 runs its matmuls in FP8 on the H100's tensor cores. Numba has no tensor-core path at
all (numba#5899), let alone an FP8 one, so nothing here computes in FP8. What can be measured honestly
is FP8 *storage*: values encoded to 8-bit e4m3 codes with one float32 scale per tensor, decoded back
before use. Memory halves against float16 (1 byte an element plus 4 bytes a tensor); the error is
what the attention output loses when K and V go through e4m3.

e4m3 as in the OCP FP8 spec (NVIDIA's `__nv_fp8_e4m3`, torch.float8_e4m3fn): 1 sign bit, 4 exponent
bits (bias 7), 3 mantissa bits, subnormals, no infinities, largest finite 448, code 0x7F/0xFF = NaN.
`encode` scales the tensor so that its largest magnitude maps to 448 (per-tensor scaling, as FP8
training and inference recipes do) and rounds each value to the nearest e4m3 number (ties to even).
"""

from __future__ import annotations

import numpy as np

E4M3_MAX = 448.0


def _table() -> np.ndarray:
    """The float32 value of each of the 256 codes (NaN for 0x7F and 0xFF)."""
    codes = np.arange(256)
    sign = np.where(codes & 0x80, -1.0, 1.0)
    exp = (codes >> 3) & 0xF
    man = codes & 0x7
    normal = (1 + man / 8.0) * 2.0 ** (exp - 7)
    sub = (man / 8.0) * 2.0 ** -6
    vals = sign * np.where(exp == 0, sub, normal)
    vals[(codes & 0x7F) == 0x7F] = np.nan
    return vals.astype(np.float32)


DECODE_TABLE = _table()
_POS = DECODE_TABLE[:0x7F]  # codes 0x00..0x7E: the non-negative finite values, increasing


def encode(x, scale: float | None = None):
    """(uint8 codes, scale) with x ≈ decode(codes, scale); scale = max|x| / 448 unless given."""
    x = np.asarray(x, dtype=np.float32)
    if scale is None:
        amax = float(np.abs(x).max()) if x.size else 0.0
        scale = amax / E4M3_MAX if amax > 0 else 1.0
    y = np.clip(np.abs(x) / np.float32(scale), 0, E4M3_MAX)
    hi = np.clip(np.searchsorted(_POS, y), 1, len(_POS) - 1)
    lo = hi - 1
    d_lo, d_hi = y - _POS[lo], _POS[hi] - y
    pick_hi = (d_hi < d_lo) | ((d_hi == d_lo) & (hi % 2 == 0))  # nearest, ties to the even code
    code = np.where(pick_hi, hi, lo).astype(np.uint8)
    code |= np.where(np.signbit(x) & (code != 0), 0x80, 0).astype(np.uint8)
    return code, np.float32(scale)


def decode(codes, scale, dtype=np.float32):
    return (DECODE_TABLE[np.asarray(codes)] * np.float32(scale)).astype(dtype)


def storage_bytes(shape) -> int:
    """Bytes of an e4m3 tensor: one a value, plus its float32 scale."""
    return int(np.prod(shape)) + 4
