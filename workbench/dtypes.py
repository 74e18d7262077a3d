"""How each I/O dtype is held: on the host, on the device, and the views between them.

float32 and float16 are the same everywhere: NumPy, Numba, CuPy and torch all have them. bfloat16
(8 exponent bits, like float32, and 8 significant bits) is not a NumPy dtype: on the host it is
`ml_dtypes.bfloat16` (what JAX uses), in torch `torch.bfloat16`. A rung receives bfloat16 q, k, v
and o as **uint16 device arrays holding the bit patterns**, and `problem.dtype == "bfloat16"` tells
it so. Why bits:
- the simulator has no bfloat16, and Numba's array typing for launches knows none;
- numba-cuda 0.30.4 does type ml_dtypes arrays as `__nv_bfloat16` in its CUDA typeof, but converts
  them through out-of-line calls to C++ shims (a call and a stack frame per conversion);
- the conversions are cheap by hand: a bfloat16 is the top half of a float32, so bits << 16 is the
  float32 exactly, and float32 -> bfloat16 is a round to nearest even on the low 16 bits
  (kernels/common.py: `load_f32`, `bf16_bits`).
The views cost nothing: no copy and no conversion pass; a plain uint16 array from a user is not
taken for bfloat16 (TypeError), since nothing would say what its bits mean.

float8_e4m3fn (FP8, flash3 only) is held the same way: `ml_dtypes.float8_e4m3fn` on the host,
`torch.float8_e4m3fn` in torch, **uint8 codes** on the device. An FP8 tensor is its codes times a
float32 scale per tensor (`quantize_fp8`: scale = max|x| / 448, e4m3's largest finite number, as
workbench/demos/fp8.py and FP8 recipes do); the scales travel beside the codes as FA3's
q_descale, k_descale, v_descale. Its output is float16 (`out_dtype`), as FA3's is for FP8 inputs.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

BITS = np.dtype(np.uint16)  # what a bfloat16 array is on the device
BFLOAT16 = np.dtype(ml_dtypes.bfloat16)  # ... and on the host
FP8 = "float8_e4m3fn"
CODES = np.dtype(np.uint8)  # what an FP8 (e4m3) array is on the device
FLOAT8 = np.dtype(ml_dtypes.float8_e4m3fn)  # ... and on the host
E4M3_MAX = 448.0  # e4m3's largest finite number (no infinities; 0x7F / 0xFF are NaN)


def name_of(x) -> str:
    """The dtype name of a NumPy / Numba / CuPy array or a torch tensor ("bfloat16" for both
    ml_dtypes.bfloat16 and torch.bfloat16)."""
    dt = x.dtype
    if hasattr(dt, "is_floating_point"):  # a torch.dtype
        return str(dt).split(".")[-1]
    return np.dtype(dt).name


def host_dtype(name: str) -> np.dtype:
    """The NumPy dtype of host arrays of I/O dtype `name`."""
    return BFLOAT16 if name == "bfloat16" else FLOAT8 if name == FP8 else np.dtype(name)


def device_dtype(name: str) -> np.dtype:
    """The dtype of the device arrays a rung receives for I/O dtype `name` (uint16 for bfloat16,
    uint8 for float8_e4m3fn)."""
    return BITS if name == "bfloat16" else CODES if name == FP8 else np.dtype(name)


def out_dtype(name: str) -> str:
    """The output dtype for inputs of I/O dtype `name`: the same, except float16 for FP8 inputs
    (as FA3: e4m3 keeps 3 mantissa bits, too few for O)."""
    return "float16" if name == FP8 else name


def to_bits(host):
    """A host array as it goes to the device: bfloat16 viewed as its uint16 bits, float8_e4m3fn
    as its uint8 codes, others as is."""
    if host.dtype == BFLOAT16:
        return host.view(BITS)
    return host.view(CODES) if host.dtype == FLOAT8 else host


def from_bits(host, name: str):
    """A host copy of a device array, viewed back as I/O dtype `name`."""
    if name == "bfloat16":
        return host.view(BFLOAT16)
    return host.view(FLOAT8) if name == FP8 else host


def quantize_fp8(x):
    """(codes, scale): x ≈ codes × scale with one float32 scale per tensor, scale = max|x| / 448
    (1 for an all-zero x), each value rounded to the nearest e4m3 number (ties to even) and
    saturating at ±448. NumPy in: ml_dtypes.float8_e4m3fn codes and a NumPy float32 scale; a torch
    tensor in: torch.float8_e4m3fn codes on its device and a Python float (one host sync).
    The scale is what `workbench.attention(..., descale=...)` takes for that tensor."""
    if type(x).__module__.split(".")[0] == "torch":
        import torch

        amax = float(x.detach().abs().max()) if x.numel() else 0.0
        scale = amax / E4M3_MAX if amax > 0 else 1.0
        y = (x.detach().float() / scale).clamp(-E4M3_MAX, E4M3_MAX)
        return y.to(torch.float8_e4m3fn), float(np.float32(scale))
    x = np.asarray(x, dtype=np.float32)
    amax = float(np.abs(x).max()) if x.size else 0.0
    scale = np.float32(amax / E4M3_MAX if amax > 0 else 1.0)
    y = np.clip(x / scale, -E4M3_MAX, E4M3_MAX)  # ml_dtypes' cast turns > 448 into NaN: saturate first
    return y.astype(FLOAT8), scale


def dequantize_fp8(codes, scale) -> np.ndarray:
    """The float64 numbers FP8 codes hold: code value × scale (what the reference sees)."""
    return np.asarray(codes).view(FLOAT8).astype(np.float64) * float(scale)


def device_view(x, kind: str):
    """The Numba device array a rung launches on, for a device object `x` of `kind` ("numba",
    "torch", "cupy"): bfloat16 viewed as uint16 (torch's __cuda_array_interface__ must never see a
    bfloat16 tensor: it either refuses it or, in some versions, describes it as float16)."""
    from numba import cuda

    bf16 = name_of(x) == "bfloat16"
    if name_of(x) == FP8:  # (torch's array interface knows no float8 either)
        if kind == "torch":
            import torch

            return cuda.as_cuda_array(x.view(torch.uint8))
        return cuda.as_cuda_array(x.view(CODES)) if kind == "cupy" else x.view(CODES)
    if kind == "torch":
        import torch

        return cuda.as_cuda_array(x.view(torch.int16)).view(BITS) if bf16 else cuda.as_cuda_array(x)
    if kind == "cupy":
        return cuda.as_cuda_array(x.view(BITS) if bf16 else x)
    return x.view(BITS) if bf16 else x
