"""verify.check: is a rung right on this problem? One verifier for every kind of rung, stated here.

The procedure (METHOD.md of the device tool), the same for forward, backward and decode rungs; the
rung's declaration (`rung.args`, kernels/contract.py) says which arrays are inputs and outputs:
1. fresh random inputs from `seed`, and the float64 NumPy reference on exactly those inputs
   (float16 and bfloat16 inputs are upcast exactly, so the reference sees what the kernel sees);
2. every output poisoned with NaN before each launch, so an element the kernel never writes fails
   (in every launch);
3. two launches on the same inputs must agree bit for bit (a difference is a race), and the inputs
   must be bit for bit what they were (a kernel never writes an input). A rung that declares
   `DETERMINISTIC = False` (float atomics) has the difference reported, not failed, and each of its
   launches is judged against the reference;
4. errors of each output against float64, with the kind's tolerance (below).

Inputs, per kind:
- forward: standard-normal q, k, v (`Problem.make_inputs`);
- backward: those q, k, v, a standard-normal upstream gradient dO, and O, LSE from the flash2
  forward on them (as in training);
- decode: standard-normal q and a paged cache (`DecodeProblem.make_inputs`: physical blocks
  shuffled, every slot no sequence owns NaN, table entries past each sequence's blocks invalid);
  the reference runs on the cache gathered back (reference.gather_paged).

Forward and decode tolerances (O and LSE), per I/O dtype; accumulation is always float32. Errors:
max-abs, relative Frobenius ‖out − ref‖/‖ref‖, elementwise |out − ref| <= atol + rtol·|ref|; for LSE,
rows that see no key must be exactly -inf.
- float32: rel-Frobenius <= 2e-5, |err| <= 1e-5 + 1e-4·|ref|, |LSE err| <= 1e-4.
  float32 arithmetic with sums of up to ~10⁴ terms lands near 1e-6; an all-zeros output scores 1.0.
- float16: rel-Frobenius <= 2e-3, |err| <= 1e-3 + 4e-3·|ref|, |LSE err| <= 1e-3.
  Rounding the output to float16 alone costs ~2.8e-4 relative (unit roundoff 2⁻¹¹ / √3).
- bfloat16: rel-Frobenius <= 1.6e-2, |err| <= 8e-3 + 3.2e-2·|ref|, |LSE err| <= 1e-3.
  bfloat16 keeps 8 significant bits, so its unit roundoff is u = 2⁻⁸ ≈ 3.9e-3, 8× float16's 2⁻¹¹:
  rounding O alone costs ~u/√3 ≈ 2.3e-3 relative and up to u per element. The float16 rule scaled
  by that 8× gives the O bounds (still ~7× the rounding of O, as float16's are); the inputs are
  exact in the reference, and LSE is float32 arithmetic on exact inputs, so its bound is float16's.

- float8_e4m3fn (flash3's FP8: e4m3 codes with per-tensor scales, O in float16): judged against
  float64 on the DEQUANTISED inputs (codes × scale, what the kernel was given), so the inputs'
  own rounding is not the kernel's error. Inputs: standard-normal draws quantised per tensor
  (dtypes.quantize_fp8), the scales passed as the problem's descale. What remains is the kernel's:
  P rounded to e4m3 for the second product (3 mantissa bits: unit roundoff 2⁻⁴, each weight off by
  up to 6%), the tensor core's FP8 accumulation (narrower than float32 on Hopper), O in float16.
  Rule: rel-Frobenius <= 5e-2, |err| <= 0.25·(rms of the row of ref + |ref|), |LSE err| <= 2e-3,
  RMSE reported beside the max error. Why: a NumPy model of the kernel's rounding (P as
  e4m3(2⁸·P) per Bc = 128 tile, float32 l, O in float16; tests/test_flash3.py) gives rel-Frobenius
  1.6–2.7e-2 over N = 97 … 16K and per-element errors up to 0.11·(row rms + |ref|): the bounds are
  ~2× that, for the accumulation the model cannot see. O is a convex combination of V's rows, so a
  row-relative bound is the natural one (an absolute atol would be loose for N = 1 rows and tight
  for long flat rows). LSE uses float32 sums of the unrounded P: only S's accumulation touches it.
  For scale: FA3 (Shah et al. 2024, §4.3) reports RMSE 2.4e-2 for per-tensor FP8 and 9.1e-3 with
  block quantisation + incoherent processing, on inputs with outliers and against the unquantised
  inputs (input rounding included); SDPA fp16's rel-Frobenius on standard-normal inputs is ~3e-4.

Backward tolerances, per gradient g (dQ, dK, dV) against its float64 reference r
(reference.attention_backward): relative Frobenius ‖g − r‖/‖r‖ and elementwise
|g − r| <= atol·rms(r) + rtol·|r| (a gradient's scale is set by dO, not by 1):
float32 2e-5, 1e-4, 1e-3; float16 2e-3, 5e-3, 2e-2 (dO, O and the gradients are rounded to float16,
and D = rowsum(dO ∘ O) is taken from the float16 O, as FlashAttention does); bfloat16 8× float16's,
as for the forward. The Frobenius bounds are the forward's. Measured errors of the rungs and of
SDPA's own gradients: figures/h100/training-inference-checks.json.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from workbench import dtypes
from workbench import reference
from workbench.kernels import contract, get
from workbench.problem import DecodeProblem, Problem
from . import runner


@dataclass(frozen=True)
class Tolerance:
    rel_fro: float
    atol: float
    rtol: float
    lse_atol: float
    row_scaled: bool = False  # atol in units of each row's RMS of the reference (FP8)


TOLERANCE = {
    "float32": Tolerance(rel_fro=2e-5, atol=1e-5, rtol=1e-4, lse_atol=1e-4),
    "float16": Tolerance(rel_fro=2e-3, atol=1e-3, rtol=4e-3, lse_atol=1e-3),
    "bfloat16": Tolerance(rel_fro=1.6e-2, atol=8e-3, rtol=3.2e-2, lse_atol=1e-3),
    dtypes.FP8: Tolerance(rel_fro=5e-2, atol=0.25, rtol=0.25, lse_atol=2e-3, row_scaled=True),
}


@dataclass(frozen=True)
class GradTolerance:
    rel_fro: float
    atol: float  # times the reference's RMS
    rtol: float


GRAD_TOLERANCE = {"float32": GradTolerance(2e-5, 1e-4, 1e-3),
                  "float16": GradTolerance(2e-3, 5e-3, 2e-2),
                  "bfloat16": GradTolerance(1.6e-2, 4e-2, 1.6e-1)}


@dataclass
class Report:
    kernel: str
    problem: Problem | DecodeProblem
    seed: int
    max_abs: float = float("nan")  # (backward: the worst gradient's)
    rel_fro: float = float("nan")  # (backward: the worst gradient's)
    rmse: float = float("nan")  # root-mean-square error of O (forward and decode)
    lse_max_abs: float = float("nan")
    unwritten: int = 0  # output elements still NaN after the first launch
    deterministic: bool = True  # did every launch agree bit for bit with the first?
    failures: list = field(default_factory=list)
    workspace_bytes: int = 0
    inputs_changed: dict = field(default_factory=dict)  # {"q": elements that changed, ...}
    kind: str = "forward"  # the rung's kind: "forward", "backward" or "decode"
    errors: dict = field(default_factory=dict)  # per output: {"rel_fro", "max_abs"}
    bitwise_required: bool = True  # False for a rung that declares DETERMINISTIC = False

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def tolerance(self) -> Tolerance | GradTolerance:
        return (GRAD_TOLERANCE if self.kind == "backward" else TOLERANCE)[self.problem.dtype]

    def as_dict(self) -> dict:
        d = {"kernel": self.kernel, "problem": self.problem.describe(), "seed": self.seed,
             "passed": self.passed}
        if self.kind != "backward":  # (a backward's errors are per gradient, in "errors" only)
            d.update(max_abs=self.max_abs, rel_fro=self.rel_fro, rmse=self.rmse, lse_max_abs=self.lse_max_abs)
        d.update({"errors": dict(self.errors), "unwritten": self.unwritten,
                  "deterministic": self.deterministic, "bitwise_required": self.bitwise_required,
                  "inputs_changed": dict(self.inputs_changed), "failures": list(self.failures),
                  "tolerance": vars(self.tolerance), "kind": self.kind})
        return d

    def __str__(self) -> str:
        verdict = "PASS" if self.passed else "FAIL: " + "; ".join(self.failures)
        if not self.bitwise_required and not self.deterministic:
            verdict += " (launches differ bitwise: the rung declares DETERMINISTIC = False)"
        if self.kind == "backward":
            errs = " ".join(f"{n}:{e['rel_fro']:.1e}" for n, e in self.errors.items())
            return f"{self.kernel} [{self.problem.describe()}] rel_fro {errs} {verdict}"
        return (f"{self.kernel} [{self.problem.describe()}] rel_fro={self.rel_fro:.2e} "
                f"max_abs={self.max_abs:.2e} rmse={self.rmse:.2e} lse={self.lse_max_abs:.2e} {verdict}")


# --------------------------------------------------------------------------------------------------
# Errors against float64
# --------------------------------------------------------------------------------------------------
def compare(report: Report, out, lse, ref_o, ref_lse) -> Report:
    """Fill `report` with the errors of (out, lse) against the float64 (ref_o, ref_lse)."""
    tol = report.tolerance
    out = np.asarray(out)
    if out.shape != ref_o.shape:
        report.failures.append(f"output shape {out.shape} != expected {ref_o.shape}")
        return report
    out = out.astype(np.float64)
    unwritten = int(np.isnan(out).sum())
    if unwritten and not report.unwritten:
        report.unwritten = unwritten
        report.failures.append(f"{unwritten} of {out.size} output elements are NaN (never written?)")
    err = np.abs(out - ref_o)
    err = np.where(np.isnan(err), np.inf, err)
    report.max_abs = float(err.max())
    norm = float(np.linalg.norm(ref_o))
    diff = float(np.linalg.norm(err)) if np.isfinite(err).all() else float("inf")
    report.rel_fro = diff / norm if norm > 0 else diff
    report.rmse = diff / np.sqrt(err.size) if err.size else 0.0
    report.errors["o"] = {"rel_fro": report.rel_fro, "max_abs": report.max_abs, "rmse": report.rmse}
    if not report.rel_fro <= tol.rel_fro:
        report.failures.append(f"relative Frobenius error {report.rel_fro:.2e} > {tol.rel_fro:.0e}")
    atol = tol.atol * np.sqrt((ref_o ** 2).mean(axis=-1, keepdims=True)) if tol.row_scaled else tol.atol
    bad = err > atol + tol.rtol * np.abs(ref_o)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        unit = "·rms(row of ref)" if tol.row_scaled else ""
        report.failures.append(
            f"{int(bad.sum())} elements off by more than {tol.atol:.0e}{unit} + {tol.rtol:.0e}·|ref| "
            f"(first at {first}: {float(out[first]):.7g} vs {float(ref_o[first]):.7g})"
        )
    if lse is not None:
        lse = np.asarray(lse, dtype=np.float64)
        if lse.shape != ref_lse.shape:
            report.failures.append(f"LSE shape {lse.shape} != expected {ref_lse.shape}")
            return report
        finite = np.isfinite(ref_lse)
        with np.errstate(invalid="ignore"):  # -inf - -inf in masked rows; judged separately below
            lerr = np.abs(np.where(finite, lse - ref_lse, 0.0))
        lerr = np.where(np.isnan(lerr), np.inf, lerr)
        report.lse_max_abs = float(lerr.max()) if lerr.size else 0.0
        norm = float(np.linalg.norm(np.where(finite, ref_lse, 0.0)))  # (reported, not judged)
        diff = float(np.linalg.norm(lerr)) if np.isfinite(lerr).all() else float("inf")
        report.errors["lse"] = {"rel_fro": diff / norm if norm > 0 else diff, "max_abs": report.lse_max_abs}
        if report.lse_max_abs > tol.lse_atol:
            report.failures.append(f"LSE max error {report.lse_max_abs:.2e} > {tol.lse_atol:.0e}")
        masked_wrong = int((~finite & ~(np.isneginf(lse))).sum())
        if masked_wrong:
            report.failures.append(f"{masked_wrong} rows see no key but their LSE is not -inf")
    return report


def compare_gradients(report: Report, got: dict, ref: dict) -> Report:
    """Judge each gradient in `got` (name -> array) against float64 `ref` with the dtype's rule
    (`report.kind` must be "backward")."""
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
    if report.errors:
        report.rel_fro = max(e["rel_fro"] for e in report.errors.values())
        report.max_abs = max(e["max_abs"] for e in report.errors.values())
    return report


# --------------------------------------------------------------------------------------------------
# Forward: sampled (batch, head) pairs and query rows, for problems too large for a full reference
# --------------------------------------------------------------------------------------------------
def sampled_reference(problem: Problem, q, k, v, pairs, rows=None):
    """The float64 reference for the (batch, head) pairs listed, stacked as (len(pairs), 1, Nq, D)
    (or only the query `rows` given: (len(pairs), 1, len(rows), D))."""
    outs, lses = [], []
    for b, h in pairs:
        hk = h // problem.group
        o, lse = reference.attention(q[b:b + 1, h:h + 1], k[b:b + 1, hk:hk + 1], v[b:b + 1, hk:hk + 1],
                                     causal=problem.causal, window=problem.window, scale=problem.scale,
                                     rows=rows)
        outs.append(o[0])
        lses.append(lse[0])
    return np.stack(outs), np.stack(lses)


def _pick_pairs(pairs, count: int | None, seed: int):
    """All pairs, or `count` of them: the first, the last and random ones between."""
    if count is None or count >= len(pairs):
        return pairs
    rng = np.random.default_rng(seed + 1)
    middle = rng.choice(np.arange(1, len(pairs) - 1), size=max(0, count - 2), replace=False)
    return [pairs[0]] + [pairs[i] for i in sorted(middle)] + [pairs[-1]]


def sample_pairs(problem: Problem, heads: int | None, seed: int):
    """All (batch, head) pairs, or `heads` of them: the first, the last and random ones between."""
    return _pick_pairs([(b, h) for b in range(problem.batch) for h in range(problem.heads)], heads, seed)


def sample_rows(problem: Problem, rows: int | None, seed: int):
    """None (every query row), or `rows` sorted row indices: the first and last 64 (where masks
    and tile edges bite) and random ones between."""
    n = problem.seq_q
    if rows is None or rows >= n:
        return None
    edge = min(64, rows // 4)
    rng = np.random.default_rng(seed + 2)
    middle = rng.choice(np.arange(edge, n - edge), size=rows - 2 * edge, replace=False)
    return np.sort(np.concatenate([np.arange(edge), middle, np.arange(n - edge, n)]))


def fp8_inputs(problem: Problem, seed: int):
    """FP8 verification inputs: the standard-normal draws of the float32 twin problem, quantised
    per tensor (dtypes.quantize_fp8): (q8, k8, v8, the problem with those scales as its descale)."""
    import dataclasses

    twin = dataclasses.replace(problem, dtype="float32", descale=None)
    (q8, sq), (k8, sk), (v8, sv) = (dtypes.quantize_fp8(x) for x in twin.make_inputs(seed))
    return q8, k8, v8, dataclasses.replace(problem, descale=(float(sq), float(sk), float(sv)))


def dequantized(problem: Problem, q8, k8, v8):
    """The float64 tensors FP8 codes stand for (codes × the problem's descale; 1 if None)."""
    scales = problem.descale or (1.0, 1.0, 1.0)
    return tuple(dtypes.dequantize_fp8(x, s) for x, s in zip((q8, k8, v8), scales))


@functools.lru_cache(maxsize=2)
def truth(problem: Problem, seed: int, heads: int | None, rows: int | None = None):
    """Inputs for `seed` and the float64 reference on the sampled pairs and rows (cached: every rung
    and peer of a sweep point is judged against the same truth, computed once)."""
    if problem.dtype == dtypes.FP8:  # (the launch's problem carries the inputs' scales: truth_for)
        q, k, v, scaled = fp8_inputs(problem, seed)
        exact = dequantized(scaled, q, k, v)
    else:
        q, k, v = exact = problem.make_inputs(seed)
    pairs = sample_pairs(problem, heads, seed)
    ref_o, ref_lse = sampled_reference(problem, *exact, pairs, sample_rows(problem, rows, seed))
    return q, k, v, pairs, ref_o, ref_lse


def compare_sampled(report: Report, out, lse, pairs, ref_o, ref_lse, rows=None) -> Report:
    """Judge full outputs (B, H, Nq, D) on the sampled (batch, head) pairs (and query rows: the
    indices from sample_rows, None for all)."""
    b_idx, h_idx = (np.array(x) for x in zip(*pairs))
    out = np.asarray(out)[b_idx, h_idx][:, None]
    lse = None if lse is None else np.asarray(lse)[b_idx, h_idx][:, None]
    if rows is not None:
        out, lse = out[:, :, rows], None if lse is None else lse[:, :, rows]
    return compare(report, out, lse, ref_o, ref_lse)


# --------------------------------------------------------------------------------------------------
# Backward: inputs (O, LSE from the flash2 forward), sampled key/value heads, float64 gradients
# --------------------------------------------------------------------------------------------------
def make_grad_inputs(problem: Problem, seed: int):
    """q, k, v and a standard-normal upstream gradient dO, in the problem's dtype."""
    q, k, v = problem.make_inputs(seed)
    do = np.random.default_rng(seed + 7).standard_normal(problem.q_shape, dtype=np.float32)
    return q, k, v, do.astype(dtypes.host_dtype(problem.dtype))


def forward_outputs(problem: Problem, q, k, v, kernel="flash2"):
    """Host copies of O and LSE from the forward rung `kernel` on host q, k, v (what a training
    step's backward receives)."""
    from numba import cuda

    rung = get(kernel)
    cfg = runner.check_config(rung, problem)
    dev = [cuda.to_device(dtypes.to_bits(np.ascontiguousarray(x))) for x in (q, k, v)]
    o_arg, lse_arg = contract.outputs(rung.args)
    o = cuda.device_array(o_arg.shape_of(problem), o_arg.device_dtype(problem))
    lse = cuda.device_array(lse_arg.shape_of(problem), lse_arg.device_dtype(problem))
    runner.run(rung, problem, cfg, *dev, o, lse)
    cuda.synchronize()
    return dtypes.from_bits(o.copy_to_host(), problem.dtype), lse.copy_to_host()


def backward_inputs(problem: Problem, seed: int) -> dict:
    """Every input of a backward rung: q, k, v, dO (make_grad_inputs) and O, LSE of the flash2
    forward on them."""
    q, k, v, do = make_grad_inputs(problem, seed)
    o, lse = forward_outputs(problem, q, k, v)
    return {"q": q, "k": k, "v": v, "o": o, "lse": lse, "do": do}


def sample_kv_heads(problem: Problem, heads: int | None, seed: int):
    """(batch, kv head) pairs to check against float64: all, or the first, the last and random
    ones between (a kv head's dK/dV needs every query head of its group)."""
    return _pick_pairs([(b, hk) for b in range(problem.batch) for hk in range(problem.kv_heads)],
                       heads, seed)


def sampled_gradients(problem: Problem, q, k, v, do, pairs) -> dict:
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


def pick_gradients(problem: Problem, grads: dict, pairs) -> dict:
    """The sampled pairs' slices of full (dq, dk, dv), shaped like `sampled_gradients`'."""
    g = problem.group
    return {"dq": np.stack([grads["dq"][b, hk * g:(hk + 1) * g] for b, hk in pairs]),
            "dk": np.stack([grads["dk"][b, hk:hk + 1] for b, hk in pairs]),
            "dv": np.stack([grads["dv"][b, hk:hk + 1] for b, hk in pairs])}


# --------------------------------------------------------------------------------------------------
# Decode: the reference on the gathered cache
# --------------------------------------------------------------------------------------------------
def reference_decode(problem: DecodeProblem, q, k_cache, v_cache, table, seq_lens):
    """Float64 O, LSE on the gathered cache, one sequence at a time (each has its own length)."""
    o = np.zeros(problem.q_shape)
    lse = np.zeros(problem.lse_shape)
    for b, n in enumerate(seq_lens):
        kb = reference.gather_paged(k_cache, table[b:b + 1], seq_lens[b:b + 1])
        vb = reference.gather_paged(v_cache, table[b:b + 1], seq_lens[b:b + 1])
        o[b:b + 1], lse[b:b + 1] = reference.attention(q[b:b + 1], kb, vb, causal=problem.causal,
                                                       window=problem.window, scale=problem.scale)
    return o, lse


# --------------------------------------------------------------------------------------------------
# One check for every kind
# --------------------------------------------------------------------------------------------------
@dataclass
class Truth:
    """A rung's inputs for one seed and the judge of one launch's outputs against float64."""

    inputs: dict  # name -> host array, every "in" array of the rung's kind
    judge: Callable[[Report, dict], Report]  # (report, {output name: host array}) -> report
    problem: Problem | DecodeProblem | None = None  # the problem to launch (FP8: with the descale)


def make_inputs(rung, problem, seed: int) -> dict:
    """Fresh host inputs of a rung's kind for `seed`, by name (see the module docstring)."""
    if rung.kind == "forward":
        return dict(zip("qkv", problem.make_inputs(seed)))
    if rung.kind == "backward":
        return backward_inputs(problem, seed)
    if rung.kind == "decode":
        return dict(zip([a.name for a in contract.inputs(contract.DECODE)], problem.make_inputs(seed)))
    raise ValueError(f"rung {rung.name!r} has unknown kind {rung.kind!r}")


def truth_for(rung, problem, seed: int, heads: int | None = None, rows: int | None = None) -> Truth:
    """Inputs and reference for a rung of any kind (heads: sample this many (batch, head) pairs,
    for backward (batch, kv head) pairs; rows: this many query rows, forward only)."""
    if rung.kind == "forward":
        q, k, v, pairs, ref_o, ref_lse = truth(problem, seed, heads, rows)
        picked = sample_rows(problem, rows, seed)
        launched = fp8_inputs(problem, seed)[3] if problem.dtype == dtypes.FP8 else problem
        return Truth({"q": q, "k": k, "v": v},
                     lambda rep, out: compare_sampled(rep, out["o"], out["lse"], pairs, ref_o, ref_lse, picked),
                     launched)
    if rows is not None:
        raise ValueError(f"rows: only forward rungs are checked on sampled query rows, not {rung.kind} "
                         f"rung {rung.name!r}")
    if rung.kind == "backward":
        ins = make_inputs(rung, problem, seed)
        pairs = sample_kv_heads(problem, heads, seed)
        ref = sampled_gradients(problem, ins["q"], ins["k"], ins["v"], ins["do"], pairs)
        return Truth(ins, lambda rep, out: compare_gradients(rep, pick_gradients(problem, out, pairs), ref))
    if rung.kind == "decode":
        if heads is not None:
            raise ValueError(f"heads: decode rung {rung.name!r} is checked on every head")
        ins = make_inputs(rung, problem, seed)
        ref_o, ref_lse = reference_decode(problem, *ins.values())
        return Truth(ins, lambda rep, out: compare(rep, out["o"], out["lse"], ref_o, ref_lse))
    raise ValueError(f"rung {rung.name!r} has unknown kind {rung.kind!r}")


def check(kernel, problem, seed: int = 0, config=None, heads: int | None = None,
          rows: int | None = None) -> Report:
    """Run `kernel` (a rung of any kind, or its name) twice on fresh inputs and judge it against
    float64 (see the module docstring).

    heads, rows: compare only this many (batch, head) pairs — for a backward rung (batch, kv head)
    pairs — and this many query rows of each (forward only), with the float64 reference (for
    problems too large for a NumPy reference of everything); unwritten elements and determinism
    are still checked over the whole output.
    """
    rung = get(kernel, kind=None)
    cfg = runner.check_config(rung, problem, config)  # before any input is made or launch runs
    truth_ = truth_for(rung, problem, seed, heads, rows)
    try:
        inputs = [truth_.inputs[a.name] for a in contract.inputs(rung.args)]
    except KeyError as exc:
        raise ValueError(f"kernel {rung.name!r} declares an input {exc.args[0]!r} that the verifier "
                         f"does not make for a {rung.kind} rung (it makes {sorted(truth_.inputs)})") from None
    problem = truth_.problem or problem
    launched = launch_poisoned(rung, problem, cfg, *inputs)
    report = Report(rung.name, problem, seed, kind=rung.kind)
    return judge_outputs(report, launched, truth_.judge, bitwise=deterministic(rung))


def deterministic(rung) -> bool:
    """Must the rung's launches repeat bit for bit? (False where its module says DETERMINISTIC = False.)"""
    return bool(getattr(rung.module, "DETERMINISTIC", True))


@dataclass
class Launches:
    """What a rung wrote in repeated launches on one set of inputs (host copies)."""

    outputs: list  # one tuple per launch, in the declaration's output order (forward: (o, lse))
    inputs_changed: dict = field(default_factory=dict)  # {"q": (elements changed, size), ...}
    workspace_bytes: int = 0
    names: tuple = ("o", "lse")  # the outputs' names


def changed_elements(device_array, host_array) -> int:
    """Elements of `device_array` that differ bit for bit from `host_array`."""
    now = device_array.copy_to_host()  # (bfloat16: the uint16 bits)
    bits = f"u{host_array.dtype.itemsize}"
    return int(np.count_nonzero(now.view(bits) != host_array.view(bits)))


def _poison(dtype: np.dtype):
    """What an output is filled with before a launch: NaN, or the smallest integer."""
    return np.nan if np.issubdtype(dtype, np.floating) or dtype == dtypes.BFLOAT16 else np.iinfo(dtype).min


def _unwritten(host) -> int:
    """Elements of a host copy still holding the poison."""
    if np.issubdtype(host.dtype, np.integer):
        return int(np.count_nonzero(host == np.iinfo(host.dtype).min))
    return int(np.isnan(host.astype(np.float32) if host.dtype == dtypes.BFLOAT16 else host).sum())


def launch_poisoned(rung, problem, cfg: dict, *inputs, launches: int = 2) -> Launches:
    """Launch `rung` (config already checked) `launches` times on device copies of the host
    `inputs` (the rung's "in" arrays, in declaration order; forward: q, k, v), with every output
    poisoned before each launch; then count the input elements the launches changed. `rung` may be
    any Rung, e.g. one whose module was loaded from a file."""
    from numba import cuda

    args = rung.args
    ins, outs = contract.inputs(args), contract.outputs(args)
    if len(inputs) != len(ins):
        raise TypeError(f"kernel {rung.name!r} takes inputs ({', '.join(a.name for a in ins)}), "
                        f"got {len(inputs)} arrays")
    host_in = [np.ascontiguousarray(x) for x in inputs]
    dev_in = {a.name: cuda.to_device(dtypes.to_bits(x)) for a, x in zip(ins, host_in)}
    result = Launches(outputs=[], names=tuple(a.name for a in outs))
    for _ in range(launches):
        dev_out = {}
        for a in outs:
            dt = a.host_dtype(problem)
            dev_out[a.name] = cuda.to_device(dtypes.to_bits(np.full(a.shape_of(problem), _poison(dt), dt)))
        arrays = [dev_out[a.name] if a.is_output else dev_in[a.name] for a in args]
        ran = runner.run(rung, problem, cfg, *arrays)
        cuda.synchronize()
        result.outputs.append(tuple(dtypes.from_bits(dev_out[a.name].copy_to_host(), a.dtype_name(problem))
                                    for a in outs))
        result.workspace_bytes = ran.workspace_bytes
        del dev_out, arrays, ran  # the next launch gets fresh scratch, not this one's (nor room for both)
        runner.release_memory()
    for a, x in zip(ins, host_in):
        changed = changed_elements(dev_in[a.name], dtypes.to_bits(x))
        if changed:
            result.inputs_changed[a.name] = (changed, x.size)
    return result


_WHAT = {"o": "output elements", "lse": "LSE values"}  # how the failures name the forward's outputs


def judge_launches(report: Report, launched: Launches, bitwise: bool = True) -> Report:
    """The rules that need no reference: inputs untouched, nothing left poisoned in any launch,
    and (unless `bitwise` is False) every launch bitwise equal to the first."""
    first, later = launched.outputs[0], launched.outputs[1:]
    report.workspace_bytes = launched.workspace_bytes
    report.inputs_changed = {name: int(n) for name, (n, _) in launched.inputs_changed.items()}
    for name, (n, size) in launched.inputs_changed.items():
        report.failures.append(f"the kernel wrote its input {name}: {n} of {size} elements changed "
                               f"(a kernel must leave its inputs as it found them)")
    report.bitwise_required = bitwise
    report.deterministic = all(x.tobytes() == y.tobytes() for out in later for x, y in zip(out, first))
    if bitwise and not report.deterministic:
        report.failures.append("two launches on the same inputs differ bitwise (a race?)")
    report.unwritten = 0
    for i, out in enumerate(launched.outputs):
        for name, x in zip(launched.names, out):
            n = _unwritten(x)
            if i == 0:
                report.unwritten += n
            if n and (i == 0 or not bitwise):  # (bitwise: a later launch's NaN is a difference too)
                where = "" if i == 0 else f"launch {i + 1}: "
                report.failures.append(f"{where}{n} of {x.size} {_WHAT.get(name, name + ' elements')} "
                                       f"are NaN (never written?)")
    return report


def judge_outputs(report: Report, launched: Launches, judge: Callable[[Report, dict], Report],
                  bitwise: bool = True) -> Report:
    """judge_launches, then the first launch's outputs against float64 with `judge`; without the
    bitwise rule, every later launch is judged against float64 too (its failures prefixed)."""
    judge_launches(report, launched, bitwise)
    outs = [dict(zip(launched.names, out)) for out in launched.outputs]
    judge(report, outs[0])
    if not bitwise:
        for i, out in enumerate(outs[1:], start=2):
            again = Report(report.kernel, report.problem, report.seed, kind=report.kind,
                           unwritten=sum(_unwritten(x) for x in out.values()))  # (reported above)
            judge(again, out)
            report.failures += [f"launch {i}: {f}" for f in again.failures]
    return report


def judge(report: Report, launched: Launches, pairs, ref_o, ref_lse, rows=None, bitwise: bool = True) -> Report:
    """A forward rung's launches (outputs (o, lse)): judge_launches, then the first launch's errors
    against the float64 reference on the sampled (batch, head) pairs and rows."""
    return judge_outputs(report, launched,
                         lambda rep, out: compare_sampled(rep, out["o"], out["lse"], pairs, ref_o, ref_lse, rows),
                         bitwise)
