"""Training through the ladder: the public backward function and a torch.autograd.Function.

    o, lse = workbench.attention(q, k, v, causal=True, return_lse=True)    # flash2 forward
    dq, dk, dv = workbench.api.training.backward(q, k, v, o, lse, do, causal=True)

    from workbench.api.training import flash_attention                           # torch autograd
    out = flash_attention(q, k, v, causal=True)   # q, k, v torch CUDA tensors; out.backward() works

The backward rungs (`workbench.kernels.BACKWARD`: flash2_bwd, flash2_mma_bwd) go through the
harness like every rung: `runner.check_config` refuses an impossible config before any launch,
`runner.run` launches them with the arrays their declaration lists (kernels/contract.py BACKWARD),
and `harness.verify.check` verifies them (`check_backward` below is that check by another name:
O and LSE from the flash2 forward, dQ, dK, dV poisoned, two bitwise-equal launches, every gradient
against float64 with the gradient rule stated in harness/verify.py).

Inputs are checked as `workbench.attention` checks them (same kinds of arrays, same messages), plus:
o and do shaped and typed like q, lse (B, H, Nq) float32.
"""

from __future__ import annotations

import functools

import numpy as np

from workbench import dtypes
from workbench.api.forward import _contiguous, _kind, caller_allocator, caller_stream, _problem_from
from workbench.harness import runner, verify
from workbench.kernels import get
from workbench.problem import Problem


def _dtype_name(x) -> str:
    return dtypes.name_of(x)


def backward(q, k, v, o, lse, do, *, causal=False, window=None, scale=None, config=None,
             kernel="flash2_bwd"):
    """dQ, dK, dV of attention for the upstream gradient `do`, from the forward's `o` and `lse`.

    q, o, do: (B, H, Nq, D); k, v: (B, Hkv, Nkv, D); lse: (B, H, Nq) float32 (the forward's
    `return_lse=True`). causal/window/scale must be the forward's. Returns (dq, dk, dv) of q's kind
    and dtype; under GQA dk, dv are summed over each key/value head's group of query heads.
    """
    rung = get(kernel, kind="backward")
    arrays = {"q": q, "k": k, "v": v, "o": o, "lse": lse, "do": do}
    kinds = {_kind(x) for x in arrays.values()}
    if len(kinds) > 1:
        raise TypeError(f"q, k, v, o, lse, do must all be the same kind of array; got {sorted(kinds)}")
    kind = kinds.pop()
    problem = _problem_from(q, k, v, causal, window, scale)
    for name in ("o", "do"):
        x = arrays[name]
        if tuple(x.shape) != problem.q_shape:
            raise ValueError(f"{name} must be shaped like q {problem.q_shape}, got {tuple(x.shape)}")
        if _dtype_name(x) != problem.dtype:
            raise TypeError(f"{name} has dtype {_dtype_name(x)} but q has {problem.dtype}: cast {name} "
                            f"to {problem.dtype}")
    if tuple(lse.shape) != problem.lse_shape:
        raise ValueError(f"lse must be (B, H, Nq) = {problem.lse_shape}, got {tuple(lse.shape)}: pass "
                         f"the forward's LSE (workbench.attention(..., return_lse=True))")
    if _dtype_name(lse) != "float32":
        raise TypeError(f"lse must be float32 (the forward's), got {_dtype_name(lse)}")
    for name, x in arrays.items():
        if not _contiguous(x, kind):
            raise ValueError(f"{name} is not C-contiguous on the device: pass {name}.contiguous() "
                             f"(torch) or a contiguous copy")
        if kind == "numpy":
            if name == "lse":
                bad = np.isnan(x).any() or np.isposinf(x).any()
            else:
                bad = not np.isfinite(x).all()
            if bad:
                raise ValueError(f"{name} contains NaN or inf (lse may hold -inf only, for rows that "
                                 f"see no key)")
    config = runner.check_config(rung, problem, config)

    from numba import cuda

    io = dtypes.device_dtype(problem.dtype)  # bfloat16 travels as its uint16 bits
    if kind == "numpy":
        dev = {n: cuda.to_device(dtypes.to_bits(np.ascontiguousarray(x))) for n, x in arrays.items()}
    else:
        dev = {n: dtypes.device_view(x, kind) for n, x in arrays.items()}
    if kind in ("numpy", "numba"):
        grads = [cuda.device_array(problem.q_shape, io), cuda.device_array(problem.kv_shape, io),
                 cuda.device_array(problem.kv_shape, io)]
        user = grads
    else:  # torch or cupy: allocate in the caller's library, launch through the CUDA array interface
        if kind == "torch":
            import torch

            user = [torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)]
        else:
            import cupy

            user = [cupy.empty_like(q), cupy.empty_like(k), cupy.empty_like(v)]
        grads = [dtypes.device_view(x, kind) for x in user]
    runner.run(rung, problem, config, dev["q"], dev["k"], dev["v"], dev["o"], dev["lse"], dev["do"], *grads, stream=caller_stream(kind, q),
               allocate=caller_allocator(kind, q), track_memory=False)
    if kind == "numpy":
        return tuple(dtypes.from_bits(g.copy_to_host(), problem.dtype) for g in grads)
    return tuple(user)


def check_backward(problem: Problem, seed: int = 0, config=None, heads: int | None = None,
                   kernel="flash2_bwd") -> verify.Report:
    """`verify.check` of a backward rung: two launches on fresh inputs (O, LSE from the flash2
    forward), dQ, dK, dV against float64. heads: check only this many (batch, kv head) pairs."""
    return verify.check(get(kernel, kind="backward"), problem, seed=seed, config=config, heads=heads)


# --------------------------------------------------------------------------------------------------
# torch.autograd
# --------------------------------------------------------------------------------------------------
def training_kernels(dtype: str, head_dim: int) -> tuple[str, str]:
    """The (forward, backward) rungs training uses: the tensor-core pair (flash2_mma,
    flash2_mma_bwd) for float16/bfloat16 on a GPU where both take the head dim, else the SIMT pair
    (flash2, flash2_bwd)."""
    from workbench.harness import device, runner
    from workbench.kernels import get as get_rung

    if dtype in ("float16", "bfloat16") and not device.simulator():
        fwd, bwd = get_rung("flash2_mma"), get("flash2_mma_bwd", kind="backward")
        p = Problem(head_dim=head_dim, dtype=dtype)
        if all(p.head_dim in (r.module.needs(p, runner.default_config(r)).head_dims or (head_dim,))
               for r in (fwd, bwd)):
            return fwd.name, bwd.name
    return "flash2", "flash2_bwd"


@functools.cache
def _function():
    import torch

    from workbench.api.forward import attention

    class FlashAttention(torch.autograd.Function):
        """Forward and backward by training_kernels(): tensor cores for 16-bit inputs, SIMT for
        float32 (O and LSE saved between them)."""

        @staticmethod
        def forward(ctx, q, k, v, causal, window, scale):
            # Detached: torch refuses __cuda_array_interface__ on tensors that require grad.
            q, k, v = (x.detach().contiguous() for x in (q, k, v))
            fwd, bwd = training_kernels(str(q.dtype).split(".")[-1], q.shape[-1])
            o, lse = attention(q, k, v, kernel=fwd, causal=causal, window=window, scale=scale,
                               return_lse=True)
            ctx.save_for_backward(q, k, v, o, lse)
            ctx.mask = (causal, window, scale, bwd)
            return o

        @staticmethod
        def backward(ctx, do):
            # o is this Function's output, so torch hands it back requiring grad: detach all.
            q, k, v, o, lse = (x.detach() for x in ctx.saved_tensors)
            causal, window, scale, bwd = ctx.mask
            dq, dk, dv = backward(q, k, v, o, lse, do.detach().contiguous(), causal=causal,
                                  window=window, scale=scale, kernel=bwd)
            return dq, dk, dv, None, None, None

    return FlashAttention


def flash_attention(q, k, v, *, causal=False, window=None, scale=None):
    """Attention of torch CUDA tensors, differentiable (q (B, H, Nq, D), k/v (B, Hkv, Nkv, D)):
    the tensor-core rungs for float16/bfloat16, the SIMT rungs for float32 (training_kernels): a
    drop-in for SDPA in a model that trains."""
    return _function().apply(q, k, v, causal, window, scale)
