"""Training through the ladder: the backward rung, its check, and a torch.autograd.Function.

    o, lse = workbench.attention(q, k, v, causal=True, return_lse=True)    # flash2 forward
    dq, dk, dv = workbench.api.training.backward(q, k, v, o, lse, do, causal=True)

    from workbench.api.training import flash_attention                           # torch autograd
    out = flash_attention(q, k, v, causal=True)   # q, k, v torch CUDA tensors; out.backward() works

The backward rung (kernels/flash2_bwd.py) is not a forward rung, so it is not in `workbench.LADDER`
(whose every member is launched as a forward kernel); `BACKWARD` lists the backward rungs. It goes
through the same harness: `runner.check_config` (with this module's planner) refuses an impossible
config before any launch, `runner.Launcher` counts the scratch it allocates.

Inputs are checked as `workbench.attention` checks them (same kinds of arrays, same messages), plus:
o and do shaped and typed like q, lse (B, H, Nq) float32.

Verification (`check_backward`) follows harness/verify.py: fresh inputs, O and LSE from the flash2
forward (as in training), dQ, dK, dV poisoned with NaN before each of two launches that must agree
bit for bit (the rung has no atomics), and every gradient against reference.attention_backward in
float64. Tolerances per gradient g, from its reference r: relative Frobenius ‖g − r‖/‖r‖ and
elementwise |g − r| <= atol·rms(r) + rtol·|r| (a gradient's scale is set by dO, not by 1):
float32 2e-5, 1e-4, 1e-3; float16 2e-3, 5e-3, 2e-2 (dO, O and the gradients are rounded to float16,
and D = rowsum(dO ∘ O) is taken from the float16 O, as FlashAttention does). The Frobenius bounds are
the forward's; on the H100 the six checked cases came to at most 9.8e-7 (float32) and 2.3e-4
(float16), SDPA's own gradients to 7.8e-7 and 3.8e-4 (figures/h100/training-inference-checks.json).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from workbench import reference
from workbench.api.forward import _contiguous, _kind, _problem_from
from workbench.harness import runner
from workbench.kernels import Rung
from workbench.kernels import flash2_bwd as _flash2_bwd
from workbench.problem import Problem

BACKWARD = (Rung(1, "flash2_bwd", _flash2_bwd.LESSON, _flash2_bwd),)


def get(name="flash2_bwd") -> Rung:
    if isinstance(name, Rung):
        return name
    for rung in BACKWARD:
        if rung.name == name:
            return rung
    raise ValueError(f"unknown backward kernel {name!r}; choose one of {[r.name for r in BACKWARD]}")


# --------------------------------------------------------------------------------------------------
# Planning and launching (the harness's runner, with the backward's arguments)
# --------------------------------------------------------------------------------------------------
def plan(rung, problem: Problem, config: dict):
    """Every launch the backward rung would make, with placeholders and nothing launched."""
    P = runner.Placeholder
    q, o, do, dq = (P(problem.q_shape, problem.dtype) for _ in range(4))
    k, v, dk, dv = (P(problem.kv_shape, problem.dtype) for _ in range(4))
    lse = P(problem.lse_shape, np.float32)
    gpu = runner.Launcher(live=False)
    rung.module.launch(problem, config, q, k, v, o, lse, do, dq, dk, dv, gpu)
    return gpu.launches


def check_config(rung, problem, config=None) -> dict:
    return runner.check_config(rung, problem, config, planner=plan)


def run(rung, problem, config, q, k, v, o, lse, do, dq, dk, dv, pool=None):
    """Launch on device arrays (config already checked); returns the launcher's accounts."""
    if pool is not None:
        pool.next = 0
    gpu = runner.Launcher(live=True, pool=pool)
    rung.module.launch(problem, config, q, k, v, o, lse, do, dq, dk, dv, gpu)
    return gpu


def _dtype_name(x) -> str:
    return str(x.dtype).split(".")[-1] if hasattr(x.dtype, "is_floating_point") else np.dtype(x.dtype).name


def backward(q, k, v, o, lse, do, *, causal=False, window=None, scale=None, config=None,
             kernel="flash2_bwd"):
    """dQ, dK, dV of attention for the upstream gradient `do`, from the forward's `o` and `lse`.

    q, o, do: (B, H, Nq, D); k, v: (B, Hkv, Nkv, D); lse: (B, H, Nq) float32 (the forward's
    `return_lse=True`). causal/window/scale must be the forward's. Returns (dq, dk, dv) of q's kind
    and dtype; under GQA dk, dv are summed over each key/value head's group of query heads.
    """
    rung = get(kernel)
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
    config = check_config(rung, problem, config)

    from numba import cuda

    if kind in ("numpy", "numba"):
        dev = {n: cuda.to_device(np.ascontiguousarray(x)) if kind == "numpy" else x
               for n, x in arrays.items()}
        grads = [cuda.device_array(problem.q_shape, problem.dtype),
                 cuda.device_array(problem.kv_shape, problem.dtype),
                 cuda.device_array(problem.kv_shape, problem.dtype)]
        user = grads
    else:
        if kind == "torch":
            import torch

            user = [torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)]
        else:
            import cupy

            user = [cupy.empty_like(q), cupy.empty_like(k), cupy.empty_like(v)]
        dev = {n: cuda.as_cuda_array(x) for n, x in arrays.items()}
        grads = [cuda.as_cuda_array(x) for x in user]
    run(rung, problem, config, dev["q"], dev["k"], dev["v"], dev["o"], dev["lse"], dev["do"], *grads)
    cuda.synchronize()
    if kind == "numpy":
        return tuple(g.copy_to_host() for g in grads)
    return tuple(user)


# --------------------------------------------------------------------------------------------------
# Verification against float64
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GradTolerance:
    rel_fro: float
    atol: float  # times the reference's RMS
    rtol: float


GRAD_TOLERANCE = {"float32": GradTolerance(2e-5, 1e-4, 1e-3),
                  "float16": GradTolerance(2e-3, 5e-3, 2e-2)}


@dataclass
class GradReport:
    kernel: str
    problem: Problem
    seed: int
    errors: dict = field(default_factory=dict)  # name -> {"rel_fro", "max_abs"}
    deterministic: bool = True
    unwritten: int = 0
    failures: list = field(default_factory=list)
    workspace_bytes: int = 0

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def tolerance(self) -> GradTolerance:
        return GRAD_TOLERANCE[self.problem.dtype]

    def as_dict(self) -> dict:
        return {"kernel": self.kernel, "problem": self.problem.describe(), "seed": self.seed,
                "passed": self.passed, "errors": self.errors, "deterministic": self.deterministic,
                "unwritten": self.unwritten, "failures": list(self.failures),
                "tolerance": vars(self.tolerance)}

    def __str__(self) -> str:
        errs = " ".join(f"{n}:{e['rel_fro']:.1e}" for n, e in self.errors.items())
        verdict = "PASS" if self.passed else "FAIL: " + "; ".join(self.failures)
        return f"{self.kernel} [{self.problem.describe()}] rel_fro {errs} {verdict}"


def compare_gradients(report: GradReport, got: dict, ref: dict) -> GradReport:
    """Judge each gradient in `got` (name -> array) against float64 `ref` with the dtype's rule."""
    tol = report.tolerance
    for name, r in ref.items():
        g = np.asarray(got[name], dtype=np.float64)
        if g.shape != r.shape:
            report.failures.append(f"{name}: shape {g.shape} != expected {r.shape}")
            continue
        err = np.abs(g - r)
        err = np.where(np.isnan(err), np.inf, err)
        norm = float(np.linalg.norm(r))
        diff = float(np.linalg.norm(err)) if np.isfinite(err).all() else float("inf")
        rel = diff / norm if norm > 0 else diff
        report.errors[name] = {"rel_fro": rel, "max_abs": float(err.max())}
        if not rel <= tol.rel_fro:
            report.failures.append(f"{name}: relative Frobenius error {rel:.2e} > {tol.rel_fro:.0e}")
        rms = norm / np.sqrt(r.size)
        bad = err > tol.atol * rms + tol.rtol * np.abs(r)
        if bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            report.failures.append(f"{name}: {int(bad.sum())} elements off by more than "
                                   f"{tol.atol:.0e}·rms + {tol.rtol:.0e}·|ref| (first at {first}: "
                                   f"{g[first]!r} vs {r[first]!r})")
    return report


def sample_kv_heads(problem: Problem, heads: int | None, seed: int):
    """(batch, kv head) pairs to check against float64: all, or the first, the last and random
    ones between (a kv head's dK/dV needs every query head of its group)."""
    pairs = [(b, hk) for b in range(problem.batch) for hk in range(problem.kv_heads)]
    if heads is None or heads >= len(pairs):
        return pairs
    rng = np.random.default_rng(seed + 1)
    middle = rng.choice(np.arange(1, len(pairs) - 1), size=max(0, heads - 2), replace=False)
    return [pairs[0]] + [pairs[i] for i in sorted(middle)] + [pairs[-1]]


def make_grad_inputs(problem: Problem, seed: int):
    """q, k, v and a standard-normal upstream gradient dO, in the problem's dtype."""
    q, k, v = problem.make_inputs(seed)
    do = np.random.default_rng(seed + 7).standard_normal(problem.q_shape, dtype=np.float32)
    return q, k, v, do.astype(problem.dtype)


def sampled_reference(problem: Problem, q, k, v, do, pairs):
    """Float64 (dQ of the group's heads, dK, dV) for each (batch, kv head) pair, stacked."""
    g = problem.group
    out = {"dq": [], "dk": [], "dv": []}
    for b, hk in pairs:
        hs = slice(hk * g, (hk + 1) * g)
        dq, dk, dv = reference.attention_backward(
            q[b:b + 1, hs], k[b:b + 1, hk:hk + 1], v[b:b + 1, hk:hk + 1], do[b:b + 1, hs],
            causal=problem.causal, window=problem.window, scale=problem.scale)
        out["dq"].append(dq[0])
        out["dk"].append(dk[0])
        out["dv"].append(dv[0])
    return {n: np.stack(x) for n, x in out.items()}


def pick(problem: Problem, grads: dict, pairs) -> dict:
    """The sampled pairs' slices of full (dq, dk, dv), shaped like `sampled_reference`'s."""
    g = problem.group
    return {"dq": np.stack([grads["dq"][b, hk * g:(hk + 1) * g] for b, hk in pairs]),
            "dk": np.stack([grads["dk"][b, hk:hk + 1] for b, hk in pairs]),
            "dv": np.stack([grads["dv"][b, hk:hk + 1] for b, hk in pairs])}


def check_backward(problem: Problem, seed: int = 0, config=None, heads: int | None = None,
                   kernel="flash2_bwd") -> GradReport:
    """Run the backward rung twice on fresh inputs (O, LSE from the flash2 forward) and judge
    dQ, dK, dV against float64. heads: check only this many (batch, kv head) pairs."""
    from numba import cuda

    from workbench.api.forward import attention

    rung = get(kernel)
    cfg = check_config(rung, problem, config)
    q, k, v, do = make_grad_inputs(problem, seed)
    dev = [cuda.to_device(x) for x in (q, k, v, do)]
    o, lse = attention(*dev[:3], kernel="flash2", causal=problem.causal, window=problem.window,
                       scale=problem.scale, return_lse=True)
    report = GradReport(rung.name, problem, seed)
    runs = []
    for _ in range(2):
        grads = [cuda.to_device(np.full(s, np.nan, problem.dtype))
                 for s in (problem.q_shape, problem.kv_shape, problem.kv_shape)]
        ran = run(rung, problem, cfg, dev[0], dev[1], dev[2], o, lse, dev[3], *grads)
        cuda.synchronize()
        report.workspace_bytes = ran.workspace_bytes
        runs.append(dict(zip(("dq", "dk", "dv"), (g.copy_to_host() for g in grads))))
        del grads, ran
        runner.release_memory()
    first, second = runs
    report.deterministic = all(first[n].tobytes() == second[n].tobytes() for n in first)
    if not report.deterministic:
        report.failures.append("two launches on the same inputs differ bitwise (a race?)")
    report.unwritten = int(sum(np.isnan(x).sum() for x in first.values()))
    if report.unwritten:
        report.failures.append(f"{report.unwritten} gradient elements are NaN (never written?)")
    pairs = sample_kv_heads(problem, heads, seed)
    ref = sampled_reference(problem, q, k, v, do, pairs)
    return compare_gradients(report, pick(problem, first, pairs), ref)


# --------------------------------------------------------------------------------------------------
# torch.autograd
# --------------------------------------------------------------------------------------------------
@functools.cache
def _function():
    import torch

    from workbench.api.forward import attention

    class FlashAttention(torch.autograd.Function):
        """Forward: the flash2 rung (O and LSE saved). Backward: the flash2_bwd rung."""

        @staticmethod
        def forward(ctx, q, k, v, causal, window, scale):
            # Detached: torch refuses __cuda_array_interface__ on tensors that require grad.
            q, k, v = (x.detach().contiguous() for x in (q, k, v))
            o, lse = attention(q, k, v, kernel="flash2", causal=causal, window=window, scale=scale,
                               return_lse=True)
            ctx.save_for_backward(q, k, v, o, lse)
            ctx.mask = (causal, window, scale)
            return o

        @staticmethod
        def backward(ctx, do):
            # o is this Function's output, so torch hands it back requiring grad: detach all.
            q, k, v, o, lse = (x.detach() for x in ctx.saved_tensors)
            causal, window, scale = ctx.mask
            dq, dk, dv = backward(q, k, v, o, lse, do.detach().contiguous(), causal=causal,
                                  window=window, scale=scale)
            return dq, dk, dv, None, None, None

    return FlashAttention


def flash_attention(q, k, v, *, causal=False, window=None, scale=None):
    """Attention of torch CUDA tensors through the flash2 rung, differentiable (q (B, H, Nq, D),
    k/v (B, Hkv, Nkv, D), float32 or float16): a drop-in for SDPA in a model that trains."""
    if str(q.dtype) == "torch.bfloat16":  # refused before the forward runs, not after it
        raise ValueError("flash_attention's backward (flash2_bwd) takes float32 and float16, not "
                         "bfloat16: cast q, k, v (.half() or .float())")
    return _function().apply(q, k, v, causal, window, scale)
