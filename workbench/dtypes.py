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
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

BITS = np.dtype(np.uint16)  # what a bfloat16 array is on the device
BFLOAT16 = np.dtype(ml_dtypes.bfloat16)  # ... and on the host


def name_of(x) -> str:
    """The dtype name of a NumPy / Numba / CuPy array or a torch tensor ("bfloat16" for both
    ml_dtypes.bfloat16 and torch.bfloat16)."""
    dt = x.dtype
    if hasattr(dt, "is_floating_point"):  # a torch.dtype
        return str(dt).split(".")[-1]
    return np.dtype(dt).name


def host_dtype(name: str) -> np.dtype:
    """The NumPy dtype of host arrays of I/O dtype `name`."""
    return BFLOAT16 if name == "bfloat16" else np.dtype(name)


def device_dtype(name: str) -> np.dtype:
    """The dtype of the device arrays a rung receives for I/O dtype `name` (uint16 for bfloat16)."""
    return BITS if name == "bfloat16" else np.dtype(name)


def to_bits(host):
    """A host array as it goes to the device: bfloat16 viewed as its uint16 bits, others as is."""
    return host.view(BITS) if host.dtype == BFLOAT16 else host


def from_bits(host, name: str):
    """A host copy of a device array, viewed back as I/O dtype `name`."""
    return host.view(BFLOAT16) if name == "bfloat16" else host


def device_view(x, kind: str):
    """The Numba device array a rung launches on, for a device object `x` of `kind` ("numba",
    "torch", "cupy"): bfloat16 viewed as uint16 (torch's __cuda_array_interface__ must never see a
    bfloat16 tensor: it either refuses it or, in some versions, describes it as float16)."""
    from numba import cuda

    bf16 = name_of(x) == "bfloat16"
    if kind == "torch":
        import torch

        return cuda.as_cuda_array(x.view(torch.int16)).view(BITS) if bf16 else cuda.as_cuda_array(x)
    if kind == "cupy":
        return cuda.as_cuda_array(x.view(BITS) if bf16 else x)
    return x.view(BITS) if bf16 else x
