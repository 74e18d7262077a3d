"""`workbench.attention`: check the inputs, pick the rung, run it, return what was given.

Input kinds: NumPy arrays (copied to the device and back: returns NumPy), Numba device arrays
(returns Numba device arrays), and CuPy arrays or torch CUDA tensors through
`__cuda_array_interface__` (returns the same kind, no host copies). Everything is checked before any
launch; a problem gets a ValueError or TypeError that names the argument and the fix.

bfloat16: NumPy arrays of `ml_dtypes.bfloat16` (returns the same) and torch.bfloat16 CUDA tensors
(returns torch.bfloat16); the rung sees uint16 views of their bits (workbench/dtypes.py), and only
rungs that declare bfloat16 take it. A plain uint16 or int16 array is not bfloat16 (TypeError).

FP8 (e4m3, flash3 only): NumPy arrays of `ml_dtypes.float8_e4m3fn` or torch.float8_e4m3fn CUDA
tensors holding codes, with `descale=(q_descale, k_descale, v_descale)`, the per-tensor float32
scales (codes × scale is the tensor: `workbench.quantize_fp8`, FA3's q_descale, k_descale,
v_descale). O comes back in float16 (FA3 returns 16-bit O for FP8 inputs); LSE is the dequantised
problem's. A plain uint8 array is not FP8 (TypeError), as uint16 is not bfloat16.

NaN and inf: NumPy inputs are scanned and refused (ValueError). Device inputs are not scanned (that
would cost a pass over memory): a NaN there propagates into the rows that see it, as in PyTorch.

Streams: torch and CuPy inputs are launched on the caller's current stream, with scratch from the
caller's allocator, and the call returns without waiting for the GPU (as PyTorch's own ops do);
Numba device arrays go on Numba's default stream, also without a wait; NumPy inputs are copied back,
which waits.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from workbench import dtypes
from workbench.harness import runner
from workbench.kernels import get
from workbench.problem import DTYPES, FLOAT32_MAX, Problem


def _kind(x) -> str:
    if isinstance(x, np.ndarray):
        return "numpy"
    mod = type(x).__module__.split(".")[0]
    if mod == "torch" and getattr(x, "is_cuda", False):  # (no CAI probe: bfloat16 tensors lack one)
        return mod
    if mod == "cupy" and hasattr(x, "__cuda_array_interface__"):
        return mod
    if type(x).__name__ in ("DeviceNDArray", "FakeCUDAArray"):  # FakeCUDAArray: the simulator's
        return "numba"
    if mod == "torch":
        raise TypeError("q, k, v are torch CPU tensors: move them to the GPU (.cuda()) or pass .numpy()")
    raise TypeError(
        f"q, k, v must be NumPy arrays, Numba device arrays, or CUDA arrays (CuPy, torch); "
        f"got {type(x).__module__}.{type(x).__name__}"
    )


def _contiguous(x, kind) -> bool:
    if kind == "numpy":
        return True  # copied to the device contiguously anyway
    if kind == "numba":
        return x.is_c_contiguous()
    if kind == "torch":
        return x.is_contiguous()
    cai = x.__cuda_array_interface__
    if cai.get("strides") is None:
        return True
    itemsize = np.dtype(cai["typestr"]).itemsize
    expect, stride = [], itemsize
    for n in reversed(cai["shape"]):
        expect.append(stride)
        stride *= n
    return all(s == e or n == 1 for s, e, n in zip(cai["strides"], reversed(expect), cai["shape"]))


_STREAMS: dict = {}


def caller_stream(kind: str, x):
    """The stream to launch on: the caller's current torch or CuPy stream (so that the launch is
    ordered after the work that produced x, and nothing waits on the host), else Numba's default
    stream (0). NumPy inputs copy back on the default stream, which waits for the kernels."""
    if kind == "torch":
        import torch

        ptr = torch.cuda.current_stream(x.device).cuda_stream
    elif kind == "cupy":
        import cupy

        ptr = cupy.cuda.get_current_stream().ptr
    else:
        return 0
    if ptr == 0:
        return 0
    stream = _STREAMS.get(ptr)
    if stream is None:
        from numba import cuda

        stream = _STREAMS[ptr] = cuda.external_stream(ptr)
    return stream


def caller_allocator(kind: str, x):
    """Scratch memory from the caller's library (torch's or CuPy's caching allocator), else None
    (Numba allocates)."""
    if kind == "torch":
        import torch
        from numba import cuda

        def allocate(shape, dtype):
            t = torch.empty(tuple(shape), dtype=getattr(torch, np.dtype(dtype).name), device=x.device)
            return cuda.as_cuda_array(t)  # (the tensor lives as long as the view's owner)

        return allocate
    if kind == "cupy":
        import cupy
        from numba import cuda

        return lambda shape, dtype: cuda.as_cuda_array(cupy.empty(tuple(shape), dtype=dtype))
    return None


def _problem_from(q, k, v, causal, window, scale, descale=None) -> Problem:
    for name, x in (("q", q), ("k", k), ("v", v)):
        if len(x.shape) != 4:
            raise ValueError(f"{name} must be 4-D (batch, heads, seq, head_dim); got shape {tuple(x.shape)}")
    names = {dtypes.name_of(x) for x in (q, k, v)}
    if len(names) > 1:
        raise TypeError(f"q, k, v must share one dtype; got {sorted(names)}: cast them to one of {DTYPES}")
    dtype = names.pop()
    if dtype in ("uint8", "int8"):
        raise TypeError(f"q, k, v are {dtype}, which is not taken for FP8 codes: pass NumPy arrays of "
                        f"ml_dtypes.float8_e4m3fn (x.view(ml_dtypes.float8_e4m3fn) if they hold e4m3 "
                        f"codes; workbench.quantize_fp8 makes them) or torch.float8_e4m3fn tensors, "
                        f"with descale=")
    if dtype in ("uint16", "int16"):
        raise TypeError(f"q, k, v are {dtype}, which is not taken for bfloat16 bits: pass NumPy arrays "
                        f"of ml_dtypes.bfloat16 (x.view(ml_dtypes.bfloat16) if they hold its bits) or "
                        f"torch.bfloat16 tensors, or cast to one of {DTYPES}")
    if dtype not in DTYPES:
        raise TypeError(f"dtype {dtype} is not supported; cast q, k, v to one of {DTYPES}")
    (b, h, nq, d), (bk, hk, nkv, dk) = tuple(q.shape), tuple(k.shape)
    if tuple(k.shape) != tuple(v.shape):
        raise ValueError(f"k and v must have the same shape; got {tuple(k.shape)} and {tuple(v.shape)}")
    if bk != b:
        raise ValueError(f"q has batch {b} but k, v have batch {bk}: they must match")
    if dk != d:
        raise ValueError(f"q has head_dim {d} but k, v have head_dim {dk}: they must match")
    if nkv == 0:
        raise ValueError("k and v have sequence length 0 (Nkv = 0): there is nothing to attend to")
    if nq == 0 or b == 0 or h == 0 or hk == 0 or d == 0:
        raise ValueError(f"q shape {tuple(q.shape)}, k shape {tuple(k.shape)}: every dimension must be >= 1")
    if h % hk:
        raise ValueError(
            f"q has {h} heads, k/v have {hk}: the query heads must be a multiple of the key/value "
            f"heads (MHA: equal, GQA: a divisor, MQA: 1)"
        )
    check_flag("causal", causal)
    for name, x in (("q", q), ("k", k), ("v", v)):
        if isinstance(x, np.ndarray) and x.dtype.byteorder not in "=|" and x.dtype.itemsize > 1:
            raise ValueError(f"{name} is big-endian ({x.dtype.str}): the GPU reads native (little-endian) "
                             f"numbers; pass {name}.astype({name}.dtype.newbyteorder('='))")
    if dtype == dtypes.FP8 and descale is None:
        raise ValueError("FP8 (float8_e4m3fn) inputs need descale=(q_descale, k_descale, v_descale): "
                         "each tensor's float32 scale (codes × scale is the tensor; "
                         "workbench.quantize_fp8(x) returns (codes, scale)); pass (1.0, 1.0, 1.0) "
                         "for unscaled codes")
    if descale is not None and dtype != dtypes.FP8:
        raise ValueError(f"descale is for FP8 (float8_e4m3fn) inputs; q, k, v are {dtype}: drop "
                         f"descale, or quantise them with workbench.quantize_fp8")
    return Problem(b, h, hk, nq, nkv, d, dtype, bool(causal), window, scale, descale)


def check_flag(name: str, value) -> bool:
    """A True/False argument: a bool (or NumPy bool), never a truthy string or number."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_logits_fit(problem: Problem, q, k):
    """NumPy inputs: every logit scale·q·k (and its base-2 form) must stay finite in float32, or the
    softmax is NaN or a wrong 0. |scale|·max|q|·max|k|·D bounds them all; device inputs are not
    scanned (a pass over memory), as with NaN."""
    sq, sk, _ = problem.descale or (1.0, 1.0, 1.0)  # (FP8: the scores of the dequantised q, k)
    q_max, k_max = (float(np.abs(x.astype(np.float32)).max(initial=0)) for x in (q, k))
    bound = abs(problem.scale) * sq * q_max * sk * k_max * problem.head_dim * 1.4426950408889634
    if not bound < FLOAT32_MAX:
        raise ValueError(
            f"the logits scale·q·kᵀ may overflow float32 (|scale|·max|q|·max|k|·D·log2(e) = {bound:.3g} "
            f"> {FLOAT32_MAX:.3g}): scale q or k down (or pass a smaller scale)")


def attention(q, k, v, *, kernel="flash2", causal=False, window=None, scale=None,
              config=None, return_lse=False, descale=None):
    """Attention of q (B, H, Nq, D) over k, v (B, Hkv, Nkv, D) with the ladder rung `kernel`.

    causal: bottom-right aligned (query i sees key j when j <= i + Nkv - Nq).
    window: (left, right), FlashAttention's window_size; -1 is unbounded.
    scale:  defaults to 1/sqrt(D).  config: the rung's tile sizes, e.g. {"Br": 64, "Bc": 64}.
    descale: FP8 inputs only (kernel="flash3"): (q_descale, k_descale, v_descale), the per-tensor
            scales of the e4m3 codes (workbench.quantize_fp8); O is then float16.
    Returns O shaped like q (and LSE, (B, H, Nq) float32, with return_lse=True), of q's kind.
    """
    rung = get(kernel)
    kinds = {_kind(x) for x in (q, k, v)}
    if len(kinds) > 1:
        raise TypeError(f"q, k, v must all be the same kind of array; got {sorted(kinds)}")
    kind = kinds.pop()
    problem = _problem_from(q, k, v, causal, window, scale, descale)
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not _contiguous(x, kind):
            raise ValueError(f"{name} is not C-contiguous on the device: pass {name}.contiguous() "
                             f"(torch) or a contiguous copy")
        if kind == "numpy" and not np.isfinite(x.astype(np.float32) if x.dtype == dtypes.FLOAT8 else x).all():
            raise ValueError(f"{name} contains NaN or inf; attention of non-finite inputs is undefined here")
    check_flag("return_lse", return_lse)
    if kind == "numpy":
        check_logits_fit(problem, q, k)
    # (planned without the descale: a new set of scales each call must not plan again)
    config = runner.check_config(rung, dataclasses.replace(problem, descale=None), config)

    from numba import cuda

    io = dtypes.device_dtype(problem.out_dtype)  # O's: bfloat16 travels as its uint16 bits
    if kind == "numpy":
        dq, dk, dv = (cuda.to_device(dtypes.to_bits(np.ascontiguousarray(x))) for x in (q, k, v))
        do = cuda.device_array(problem.q_shape, io)
        dlse = cuda.device_array(problem.lse_shape, np.float32)
    elif kind == "numba":
        dq, dk, dv = (dtypes.device_view(x, kind) for x in (q, k, v))
        do = cuda.device_array(problem.q_shape, io)
        dlse = cuda.device_array(problem.lse_shape, np.float32)
    else:  # torch or cupy: allocate in the caller's library, launch through the CUDA array interface
        if kind == "torch":
            import torch

            o_user = torch.empty(tuple(q.shape), dtype=getattr(torch, problem.out_dtype), device=q.device)
            lse_user = torch.empty(problem.lse_shape, dtype=torch.float32, device=q.device)
        else:
            import cupy

            o_user = cupy.empty(tuple(q.shape), dtype=dtypes.host_dtype(problem.out_dtype))
            lse_user = cupy.empty(problem.lse_shape, dtype=cupy.float32)
        dq, dk, dv, do = (dtypes.device_view(x, kind) for x in (q, k, v, o_user))
        dlse = cuda.as_cuda_array(lse_user)

    runner.run(rung, problem, config, dq, dk, dv, do, dlse, stream=caller_stream(kind, q),
               allocate=caller_allocator(kind, q), track_memory=False)

    if kind == "numpy":
        out, lse = dtypes.from_bits(do.copy_to_host(), problem.out_dtype), dlse.copy_to_host()
    elif kind == "numba":
        out, lse = (do.view(q.dtype) if problem.out_dtype == "bfloat16" else do), dlse
    else:
        out, lse = o_user, lse_user
    return (out, lse) if return_lse else out
