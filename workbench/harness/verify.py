"""verify.check: is a rung right on this problem? One rule for every rung, stated here.

The procedure (METHOD.md of the device tool):
1. fresh standard-normal inputs from `seed`, and the float64 NumPy reference on exactly those inputs
   (float16 and bfloat16 inputs are upcast exactly, so the reference sees what the kernel sees);
2. O and LSE poisoned with NaN before each launch, so an element the kernel never writes fails;
3. two launches on the same inputs must agree bit for bit (a difference is a race), and the inputs
   must be bit for bit what they were (a kernel never writes q, k or v);
4. errors against float64: max-abs, relative Frobenius ‖out − ref‖/‖ref‖, elementwise
   |out − ref| <= atol + rtol·|ref|; for LSE, masked-out rows must be exactly -inf.

Tolerances (per I/O dtype; accumulation is always float32):
- float32: rel-Frobenius <= 2e-5, |err| <= 1e-5 + 1e-4·|ref|, |LSE err| <= 1e-4.
  float32 arithmetic with sums of up to ~10⁴ terms lands near 1e-6; an all-zeros output scores 1.0.
- float16: rel-Frobenius <= 2e-3, |err| <= 1e-3 + 4e-3·|ref|, |LSE err| <= 1e-3.
  Rounding the output to float16 alone costs ~2.8e-4 relative (unit roundoff 2⁻¹¹ / √3).
- bfloat16: rel-Frobenius <= 1.6e-2, |err| <= 8e-3 + 3.2e-2·|ref|, |LSE err| <= 1e-3.
  bfloat16 keeps 8 significant bits, so its unit roundoff is u = 2⁻⁸ ≈ 3.9e-3, 8× float16's 2⁻¹¹:
  rounding O alone costs ~u/√3 ≈ 2.3e-3 relative and up to u per element. The float16 rule scaled
  by that 8× gives the O bounds (still ~7× the rounding of O, as float16's are); the inputs are
  exact in the reference, and LSE is float32 arithmetic on exact inputs, so its bound is float16's.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from workbench import dtypes
from workbench import reference
from workbench.kernels import get
from workbench.problem import Problem
from . import runner


@dataclass(frozen=True)
class Tolerance:
    rel_fro: float
    atol: float
    rtol: float
    lse_atol: float


TOLERANCE = {
    "float32": Tolerance(rel_fro=2e-5, atol=1e-5, rtol=1e-4, lse_atol=1e-4),
    "float16": Tolerance(rel_fro=2e-3, atol=1e-3, rtol=4e-3, lse_atol=1e-3),
    "bfloat16": Tolerance(rel_fro=1.6e-2, atol=8e-3, rtol=3.2e-2, lse_atol=1e-3),
}


@dataclass
class Report:
    kernel: str
    problem: Problem
    seed: int
    max_abs: float = float("nan")
    rel_fro: float = float("nan")
    lse_max_abs: float = float("nan")
    unwritten: int = 0
    deterministic: bool = True
    failures: list = field(default_factory=list)
    workspace_bytes: int = 0
    inputs_changed: dict = field(default_factory=dict)  # {"q": elements that changed, ...}

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def tolerance(self) -> Tolerance:
        return TOLERANCE[self.problem.dtype]

    def as_dict(self) -> dict:
        return {
            "kernel": self.kernel, "problem": self.problem.describe(), "seed": self.seed,
            "passed": self.passed, "max_abs": self.max_abs, "rel_fro": self.rel_fro,
            "lse_max_abs": self.lse_max_abs, "unwritten": self.unwritten,
            "deterministic": self.deterministic, "inputs_changed": dict(self.inputs_changed),
            "failures": list(self.failures),
            "tolerance": vars(self.tolerance),
        }

    def __str__(self) -> str:
        verdict = "PASS" if self.passed else "FAIL: " + "; ".join(self.failures)
        return (f"{self.kernel} [{self.problem.describe()}] rel_fro={self.rel_fro:.2e} "
                f"max_abs={self.max_abs:.2e} lse={self.lse_max_abs:.2e} {verdict}")


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
    if not report.rel_fro <= tol.rel_fro:
        report.failures.append(f"relative Frobenius error {report.rel_fro:.2e} > {tol.rel_fro:.0e}")
    bad = err > tol.atol + tol.rtol * np.abs(ref_o)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        report.failures.append(
            f"{int(bad.sum())} elements off by more than {tol.atol:.0e} + {tol.rtol:.0e}·|ref| "
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
        if report.lse_max_abs > tol.lse_atol:
            report.failures.append(f"LSE max error {report.lse_max_abs:.2e} > {tol.lse_atol:.0e}")
        masked_wrong = int((~finite & ~(np.isneginf(lse))).sum())
        if masked_wrong:
            report.failures.append(f"{masked_wrong} rows see no key but their LSE is not -inf")
    return report


def _poisoned(shape, dtype):
    """A device array of NaN in I/O dtype `dtype` (bfloat16: NaN's bits, as the rung sees them)."""
    from numba import cuda

    return cuda.to_device(dtypes.to_bits(np.full(shape, np.nan, dtype=dtypes.host_dtype(dtype))))


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


def sample_pairs(problem: Problem, heads: int | None, seed: int):
    """All (batch, head) pairs, or `heads` of them: the first, the last and random ones between."""
    pairs = [(b, h) for b in range(problem.batch) for h in range(problem.heads)]
    if heads is None or heads >= len(pairs):
        return pairs
    rng = np.random.default_rng(seed + 1)
    middle = rng.choice(np.arange(1, len(pairs) - 1), size=max(0, heads - 2), replace=False)
    return [pairs[0]] + [pairs[i] for i in sorted(middle)] + [pairs[-1]]


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


@functools.lru_cache(maxsize=2)
def truth(problem: Problem, seed: int, heads: int | None, rows: int | None = None):
    """Inputs for `seed` and the float64 reference on the sampled pairs and rows (cached: every rung
    and peer of a sweep point is judged against the same truth, computed once)."""
    q, k, v = problem.make_inputs(seed)
    pairs = sample_pairs(problem, heads, seed)
    ref_o, ref_lse = sampled_reference(problem, q, k, v, pairs, sample_rows(problem, rows, seed))
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


def check(kernel, problem: Problem, seed: int = 0, config=None, heads: int | None = None,
          rows: int | None = None) -> Report:
    """Run `kernel` twice on fresh inputs and judge it against float64 (see the module docstring).

    heads, rows: compare only this many (batch, head) pairs, and this many query rows of each, with
    the float64 reference (for problems too large for a NumPy reference of everything); unwritten
    elements and determinism are still checked over the whole output.
    """
    rung = get(kernel)
    cfg = runner.check_config(rung, problem, config)
    q, k, v, pairs, ref_o, ref_lse = truth(problem, seed, heads, rows)
    launched = launch_poisoned(rung, problem, cfg, q, k, v)
    return judge(Report(rung.name, problem, seed), launched, pairs, ref_o, ref_lse,
                 sample_rows(problem, rows, seed))


@dataclass
class Launches:
    """What a rung wrote in repeated launches on one set of inputs (host copies)."""

    outputs: list  # [(o, lse), ...]: one pair per launch, each poisoned with NaN before it
    inputs_changed: dict = field(default_factory=dict)  # {"q": (elements changed, size), ...}
    workspace_bytes: int = 0


def changed_elements(device_array, host_array) -> int:
    """Elements of `device_array` that differ bit for bit from `host_array`."""
    now = device_array.copy_to_host()  # (bfloat16: the uint16 bits)
    bits = f"u{host_array.dtype.itemsize}"
    return int(np.count_nonzero(now.view(bits) != host_array.view(bits)))


def launch_poisoned(rung, problem: Problem, cfg: dict, q, k, v, launches: int = 2) -> Launches:
    """Launch `rung` (config already checked) `launches` times on device copies of the host
    arrays q, k, v, with O and LSE poisoned with NaN before each launch; then count the input
    elements the launches changed. `rung` may be any Rung, e.g. one whose module was loaded from a
    file."""
    from numba import cuda

    dq, dk, dv = (cuda.to_device(dtypes.to_bits(x)) for x in (q, k, v))
    result = Launches(outputs=[])
    for _ in range(launches):
        do = _poisoned(problem.q_shape, problem.dtype)
        dlse = _poisoned(problem.lse_shape, np.float32)
        ran = runner.run(rung, problem, cfg, dq, dk, dv, do, dlse)
        cuda.synchronize()
        result.outputs.append((dtypes.from_bits(do.copy_to_host(), problem.dtype), dlse.copy_to_host()))
        result.workspace_bytes = ran.workspace_bytes
        del do, dlse, ran  # the next launch gets fresh scratch, not this one's (nor room for both)
        runner.release_memory()
    for name, d, x in (("q", dq, q), ("k", dk, k), ("v", dv, v)):
        changed = changed_elements(d, x)
        if changed:
            result.inputs_changed[name] = (changed, x.size)
    return result


def judge(report: Report, launched: Launches, pairs, ref_o, ref_lse, rows=None) -> Report:
    """Fill `report` from `launched`: inputs untouched, every launch bitwise equal to the first,
    nothing left NaN in O or LSE, and the first launch's errors against the float64 reference on
    the sampled (batch, head) pairs and rows."""
    (o1, l1), later = launched.outputs[0], launched.outputs[1:]
    report.workspace_bytes = launched.workspace_bytes
    report.inputs_changed = {name: int(n) for name, (n, _) in launched.inputs_changed.items()}
    for name, (n, size) in launched.inputs_changed.items():
        report.failures.append(f"the kernel wrote its input {name}: {n} of {size} elements changed "
                               f"(a kernel must leave q, k and v as it found them)")
    report.deterministic = all(o.tobytes() == o1.tobytes() and l.tobytes() == l1.tobytes()
                               for o, l in later)
    if not report.deterministic:
        report.failures.append("two launches on the same inputs differ bitwise (a race?)")
    report.unwritten = int(np.isnan(o1).sum())
    if report.unwritten:
        report.failures.append(f"{report.unwritten} of {o1.size} output elements are NaN (never written?)")
    lse_unwritten = int(np.isnan(l1).sum())
    if lse_unwritten:
        report.failures.append(f"{lse_unwritten} of {l1.size} LSE values are NaN (never written?)")
    return compare_sampled(report, o1, l1, pairs, ref_o, ref_lse, rows)
