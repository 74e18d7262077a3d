"""The course's "your turn" exercises: the learner writes the kernel part a notebook just taught, and
`check(name, fn)` runs it against float64 NumPy and says, element by element, what is wrong.

GPU-Puzzles style. Each exercise has
- a NumPy spec in float64 (`spec(name)` prints it): what the function must compute;
- a stub in its notebook (a docstring and `# FILL ME IN`), which compiles and fails its check;
- a harness here that wraps the learner's function in a kernel (`cuda.jit`; a device function with
  `cuda.jit(device=True)`) and launches it on fresh random inputs, with the outputs poisoned with
  NaN first (an element never written fails), on shapes that are not multiples of the block or tile
  (threads past the edge exist) and with the masks that make edge cases (rows that see no key);
- a report: passed, or how many elements are wrong and, for the first few, where, what was expected,
  what came out, and the inputs that element depends on. Nothing is raised: a notebook runs top to
  bottom with the stubs in place, and the report is the cell's output.

Without a GPU the kernels run in Numba's CUDA simulator (each CUDA thread a Python thread, so the
shapes are tiny); on a GPU the same check compiles the learner's function for the device and runs it
there. Exercise "p-fragment" (notebook 07) is NumPy only: a warp of `mma.sync` emulated lane by lane
(workbench.course.fragments).

    from workbench.course import checks
    checks.spec("online-update")                # the float64 spec
    checks.check("online-update", online_update) # -> Result: prints the report; bool(result) = passed

Every check draws fresh inputs unless given `seed=`; the report names the seed it used, so a failure
can be replayed. The reference solutions live outside the package (tests/test_course.py), which
proves each exercise both ways: its notebook's stub fails, a solution passes.
"""

from __future__ import annotations

import inspect
import math
import textwrap
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
from numba import cuda, float32

from workbench.problem import Problem
from workbench.reference import attention as reference_attention
from workbench.reference import attention_backward as reference_backward
from workbench.reference import visible_mask

NEG_INF = float32(-math.inf)
# float32 arithmetic against float64: what harness/verify.py allows a float32 rung, elementwise
ATOL, RTOL = 1e-5, 1e-4
SHOWN = 6  # wrong elements listed in a report


# --------------------------------------------------------------------------------------------------
# Results and reports
# --------------------------------------------------------------------------------------------------
@dataclass
class Result:
    """What `check` found. Its repr is the report (the notebook cell shows it); bool(result) is
    whether every case passed."""

    exercise: str
    passed: bool
    lines: list

    def __bool__(self) -> bool:
        return self.passed

    def __repr__(self) -> str:
        return "\n".join(self.lines)

    __str__ = __repr__


def _fmt(x) -> str:
    if isinstance(x, (float, np.floating)):
        x = float(x)
        if math.isnan(x):
            return "nan"
        if math.isinf(x):
            return "-inf" if x < 0 else "inf"
        return f"{x:.6g}"
    return str(x)


def _vec(x, n=6) -> str:
    """A short text of a vector: its first n entries."""
    x = np.asarray(x).ravel()
    body = ", ".join(_fmt(v) for v in x[:n])
    return f"[{body}{', …' if x.size > n else ''}] ({x.size})" if x.size > n else f"[{body}]"


def close(got, want, atol=ATOL, rtol=RTOL):
    """Elementwise: |got − want| <= atol·scale + rtol·|want| (scale = the rms of want, at least 1),
    equal infinities equal, NaN in got never close."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    finite = np.isfinite(want)
    scale = max(1.0, float(np.sqrt(np.mean(want[finite] ** 2)))) if finite.any() else 1.0
    with np.errstate(invalid="ignore"):
        ok = np.abs(got - want) <= atol * scale + rtol * np.abs(np.where(finite, want, 0))
    return np.where(finite, ok & np.isfinite(got), got == want)


class Case:
    """One launch's findings: compare outputs, collect lines."""

    def __init__(self, title: str):
        self.title = title
        self.lines: list = []
        self.passed = True

    def fail(self, text: str):
        self.passed = False
        self.lines.append(text)

    def compare(self, name, got, want, inputs: Callable | None = None, ok=None, atol=ATOL, rtol=RTOL,
                fmt: Callable = None):
        """Element by element; the first SHOWN wrong ones listed (one per row first) with
        `inputs(index)`, said once for consecutive elements that share it."""
        got, want = np.asarray(got), np.asarray(want)
        ok = close(got, want, atol, rtol) if ok is None else ok
        bad = [tuple(int(i) for i in ix) for ix in np.argwhere(~ok)]
        if not bad:
            return True
        self.passed = False
        fmt = fmt or _fmt
        unwritten = int(np.isnan(got.astype(np.float64)).sum()) if got.dtype.kind == "f" else 0
        head = f"{name}: {len(bad)} of {got.size} elements wrong"
        if unwritten:
            head += f" ({unwritten} NaN: {'never written' if unwritten == got.size else 'never written, or NaN'})"
        self.lines.append(head)
        rows, first = set(), []
        for ix in bad:  # one element of each wrong row first, then the rest
            if ix[:1] not in rows:
                rows.add(ix[:1])
                first.append(ix)
        shown = (first + [ix for ix in bad if ix not in set(first)])[:SHOWN]
        said = None
        for ix in sorted(shown):
            text = f"    {name}[{', '.join(map(str, ix))}]: expected {fmt(want[ix])}, got {fmt(got[ix])}"
            if inputs is not None:
                told = inputs(ix)
                text += f"   <- {told}" if told != said else "   <- (the same)"
                said = told
            self.lines.append(text)
        if len(bad) > SHOWN:
            self.lines.append(f"    … and {len(bad) - SHOWN} more")
        return False


def _launch(case: Case, what: str, fn, *args) -> bool:
    """Run `fn(*args)` (a launch); an exception becomes the case's failure, explained."""
    try:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fn(*args)
            cuda.synchronize()
        return True
    except Exception as exc:  # noqa: BLE001 - the learner's code: report it, never raise
        msg = f"{type(exc).__name__}: {exc}".strip()
        hint = ""
        if isinstance(exc, IndexError):
            hint = (" — an index past an array's end: do threads past the edge return before they "
                    "touch memory (the grid is rounded up to whole blocks)?")
        elif "math domain error" in msg or isinstance(exc, OverflowError):
            hint = (" — math.log of 0 (or less), or math.exp of a huge number: on a GPU that is "
                    "-inf or inf, silently; which rows can get there?")
        case.fail(f"{what} raised {textwrap.shorten(msg, 300)}{hint}")
        return False


def _run_cases(name: str, seed: int | None, cases) -> Result:
    """Run each case function (rng) -> Case; a report with the seed."""
    seed = int(np.random.SeedSequence().entropy % 2**31) if seed is None else int(seed)
    rng = np.random.default_rng(seed)
    results = [make(rng) for make in cases]
    passed = all(c.passed for c in results)
    lines = [f"{'PASSED' if passed else 'NOT YET'} — {name} ({len(results)} cases, seed={seed}; "
             f"{'simulator' if _simulator() else 'GPU'})"]
    for c in results:
        lines.append(f"  {'ok  ' if c.passed else 'FAIL'} {c.title}")
        lines += [f"      {line}" for line in c.lines]
    if not passed:
        lines.append(f"  (replay exactly these inputs: check({name!r}, fn, seed={seed}))")
    return Result(name, passed, lines)


def _simulator() -> bool:
    from numba import config

    return bool(config.ENABLE_CUDASIM)


def _dev(fn):
    """The learner's function as a device function, inlined into the check's kernel (as the rungs'
    device functions are; it also lets the kernel compile for sm_90 with no GPU present)."""
    return cuda.jit(device=True, inline="always")(fn)


def _nan(shape, dtype=np.float32):
    return cuda.to_device(np.full(shape, np.nan, dtype))


def _cdiv(a, b):
    return -(-a // b)


# --------------------------------------------------------------------------------------------------
# The exercises
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Exercise:
    name: str
    notebook: str
    kind: str  # "kernel", "device" or "numpy": what the learner writes
    writes: str  # one line: what the learner writes
    spec: Callable  # the float64 NumPy spec
    run: Callable  # (fn, seed, **options) -> Result


EXERCISES: dict = {}


def _exercise(name, notebook, kind, writes, spec):
    def register(run):
        EXERCISES[name] = Exercise(name, notebook, kind, writes, spec, run)
        return run
    return register


def check(name: str, fn, seed: int | None = None, **options) -> Result:
    """Run exercise `name` on the learner's `fn`; the Result's repr is the report."""
    if name not in EXERCISES:
        raise ValueError(f"unknown exercise {name!r}; choose one of {sorted(EXERCISES)}")
    if not callable(fn):
        raise TypeError(f"check({name!r}, fn): fn must be the function you wrote, got {fn!r}")
    return EXERCISES[name].run(fn, seed, **options)


class Source(str):
    """Source text whose repr is the text itself (a notebook cell shows it as code)."""

    def __repr__(self) -> str:
        return str(self)


def spec(name: str) -> Source:
    """The exercise's NumPy spec (float64), as source (a notebook cell shows it)."""
    return Source(textwrap.dedent(inspect.getsource(EXERCISES[name].spec)).rstrip("\n"))


# --- 00: your first kernel, S = scale · Q Kᵀ, one thread per element ------------------------------
def spec_scores(q, k, scale):
    """s[i, j] = scale · Σ_d q[i, d] · k[j, d] for every query i and key j."""
    return scale * (q @ k.T)


SCORES_BLOCK = (8, 4)  # (x: keys, y: queries) threads per block


@_exercise("scores", "00-mental-model", "kernel",
           "a kernel: S = scale·QKᵀ, one thread per element, x → key j, y → query i", spec_scores)
def _check_scores(fn, seed=None):
    kernel = cuda.jit(fn)

    def case(nq, nkv, d):
        def make(rng):
            c = Case(f"Nq={nq} Nkv={nkv} D={d}: grid ({_cdiv(nkv, 8)}, {_cdiv(nq, 4)}) of {SCORES_BLOCK} threads")
            q = rng.standard_normal((nq, d)).astype(np.float32)
            k = rng.standard_normal((nkv, d)).astype(np.float32)
            scale = np.float32(1 / math.sqrt(d))
            s = _nan((nq, nkv))
            grid = (_cdiv(nkv, SCORES_BLOCK[0]), _cdiv(nq, SCORES_BLOCK[1]))
            if _launch(c, "the kernel", lambda: kernel[grid, SCORES_BLOCK](cuda.to_device(q), cuda.to_device(k), s, scale)):
                want = spec_scores(q.astype(np.float64), k.astype(np.float64), float(scale))
                c.compare("s", s.copy_to_host(), want, lambda ix: f"q[{ix[0]}] = {_vec(q[ix[0]])}, k[{ix[1]}] = {_vec(k[ix[1]])}")
            return c
        return make

    return _run_cases("scores", seed, [case(9, 13, 5), case(6, 17, 3)])


# --- 01: the row softmax (rung 1's softmax kernel) -------------------------------------------------
def spec_softmax_row(s):
    """Row by row: P = softmax(S) (masked scores are -inf: probability 0) and LSE = log Σ_j e^{S_ij};
    a row whose every score is -inf gets P = 0 and LSE = -inf."""
    p, lse = np.zeros_like(s), np.full(s.shape[0], -np.inf)
    for i, row in enumerate(s):
        if np.isfinite(row).any():
            m = row.max()
            e = np.exp(row - m)
            p[i], lse[i] = e / e.sum(), m + np.log(e.sum())
    return p, lse


def _masked_scores(rng, nq, nkv, causal, big):
    """Scores with a bottom-right causal mask (-inf) and, in some rows, a score large enough that
    e^s overflows float32 (e^89 is inf): only the max subtraction survives it."""
    s = 3 * rng.standard_normal((nq, nkv))
    if causal:
        s = np.where(visible_mask(Problem(1, 1, 1, nq, nkv, 8, causal=True)), s, -np.inf)
    for i in range(0, nq, 2):
        seen = np.flatnonzero(np.isfinite(s[i]))
        if big and seen.size:
            s[i, rng.choice(seen)] = 95.0 + rng.random()
    return s.astype(np.float32)


@_exercise("softmax-row", "01-naive", "device",
           "a device function: softmax of row i of S in place, and its LSE (rung 1's softmax)",
           spec_softmax_row)
def _check_softmax_row(fn, seed=None):
    dev = _dev(fn)

    @cuda.jit
    def kernel(s, lse):
        i = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        if i < s.shape[0]:
            dev(s, lse, i)

    def case(nq, nkv, causal, big, title):
        def make(rng):
            c = Case(title)
            s = _masked_scores(rng, nq, nkv, causal, big)
            d_s, lse = cuda.to_device(s), _nan(nq)
            if _launch(c, "the kernel", lambda: kernel[_cdiv(nq, 4), 4](d_s, lse)):
                p_want, lse_want = spec_softmax_row(s.astype(np.float64))
                row = lambda ix: f"row {ix[0]} of S = {_vec(s[ix[0]], 8)}"  # noqa: E731
                c.compare("P", d_s.copy_to_host(), p_want, row)
                c.compare("lse", lse.copy_to_host(), lse_want, row)
            return c
        return make

    return _run_cases("softmax-row", seed, [
        case(6, 11, False, False, "6 rows of 11 scores"),
        case(9, 7, True, False, "causal, Nq=9 > Nkv=7: rows 0-1 see no key (every score -inf)"),
        case(7, 10, True, True, "causal, with scores of 95 (e^95 overflows float32)"),
    ])


# --- 02: rung 2's tiled S = QKᵀ: the loop body over D --------------------------------------------
@_exercise("tiled-scores", "02-tiled", "kernel",
           "the loop body of a tiled kernel: load a T×T tile of Q and of K, barrier, T multiply-adds, barrier",
           spec_scores)
def _check_tiled_scores(fn, seed=None, tile=4):
    kernel = cuda.jit(fn)
    T = int(tile)

    def case(nq, nkv, d):
        def make(rng):
            c = Case(f"Nq={nq} Nkv={nkv} D={d}, tile {T}: D is not a multiple of {T}, nor are Nq, Nkv")
            q = rng.standard_normal((nq, d)).astype(np.float32)
            k = rng.standard_normal((nkv, d)).astype(np.float32)
            scale = np.float32(1 / math.sqrt(d))
            d_q, d_k = cuda.to_device(q), cuda.to_device(k)
            outs = []
            for _ in range(2):
                s = _nan((nq, nkv))
                if not _launch(c, "the kernel", lambda: kernel[(_cdiv(nkv, T), _cdiv(nq, T)), (T, T)](d_q, d_k, s, scale)):
                    return c
                outs.append(s.copy_to_host())
            want = spec_scores(q.astype(np.float64), k.astype(np.float64), float(scale))
            c.compare("s", outs[0], want, lambda ix: f"q[{ix[0]}] = {_vec(q[ix[0]])}, k[{ix[1]}] = {_vec(k[ix[1]])}")
            if c.passed and outs[0].tobytes() != outs[1].tobytes():
                c.fail("two launches on the same inputs differ: a race — is every tile complete before "
                       "it is read, and read by everyone before it is overwritten (two barriers)?")
            return c
        return make

    return _run_cases("tiled-scores", seed, [case(9, 11, 10), case(5, 7, 3)])


# --- 03: the online-softmax update ---------------------------------------------------------------
def spec_online_update(m, l, o, s, v_j):
    """One KV tile of the online softmax for one query row, in float64. m, l: the running max and
    sum; o: the unnormalised output row (D,), updated in place; s: the tile's Bc scores (-inf where
    masked); v_j: the tile's values (Bc, D). Returns the new (m, l)."""
    m_new = max(m, s.max())
    if m_new == -np.inf:  # the row has seen no key yet: nothing changes
        return m, l
    alpha = np.exp(m - m_new)  # rescales what was accumulated under the old max
    p = np.exp(s - m_new)
    o[:] = alpha * o + p @ v_j
    return m_new, alpha * l + p.sum()


ROWS = 4  # query rows (threads) per block of the fused exercises
TILE = 4  # Bc: keys per KV tile


def _fused_inputs(rng, nq, nkv, d, **mask):
    p = Problem(1, 1, 1, nq, nkv, d, **mask)
    q, k, v = (rng.standard_normal(s).astype(np.float32) for s in ((nq, d), (nkv, d), (nkv, d)))
    return p, q, k, v


def _row_inputs(p, s_full, ix):
    i = ix[0]
    lo, hi = p.visible_range()
    keys = f"keys {lo[i]}…{hi[i] - 1}" if hi[i] > lo[i] else "no key"
    return f"row {i} sees {keys}; its scores {_vec(s_full[i], 8)}"


def _fused_cases(name, run_kernel, nq_nkv_masks, d=8):
    """Cases for the exercises that compute O and LSE (03, 04): compare with float64 attention."""
    def case(nq, nkv, mask, title):
        def make(rng):
            c = Case(title)
            p, q, k, v = _fused_inputs(rng, nq, nkv, d, **mask)
            got = run_kernel(c, p, q, k, v)
            if got is None:
                return c
            o, lse = got
            o_ref, lse_ref = reference_attention(q[None, None], k[None, None], v[None, None], **mask)
            s_full = np.where(visible_mask(p), p.scale * (q.astype(np.float64) @ k.T.astype(np.float64)), -np.inf)
            row = lambda ix: _row_inputs(p, s_full, ix)  # noqa: E731
            c.compare("O", o, o_ref[0, 0], row)
            c.compare("LSE", lse, lse_ref[0, 0], row)
            return c
        return make
    return [case(*args) for args in nq_nkv_masks]


FUSED_CASES = [
    (10, 13, {}, "Nq=10 Nkv=13, no mask (13 keys: the last tile is partial)"),
    (11, 14, {"window": (2, 0)}, "window (2, 0): each row sees 3 keys, so most rows' first tiles are all -inf"),
    (9, 6, {"causal": True}, "causal, Nq=9 > Nkv=6: rows 0-2 see no key at all (O = 0, LSE = -inf)"),
]


@_exercise("online-update", "03-online-softmax", "device",
           "a device function: one KV tile of the online softmax for one row (m, l, O rescaled, P V added)",
           spec_online_update)
def _check_online_update(fn, seed=None):
    dev = _dev(fn)

    @cuda.jit
    def kernel(q, k, v, o, lse, scale, shift, left, right):
        """Rung 3's loop with the learner's update: a thread per query row, K/V tiles of TILE keys."""
        v_j = cuda.shared.array((TILE, 8), float32)
        s = cuda.local.array(TILE, float32)
        acc = cuda.local.array(8, float32)
        tx = cuda.threadIdx.x
        i = cuda.blockIdx.x * ROWS + tx
        n_q, n_kv = q.shape[0], k.shape[0]
        for d in range(8):
            acc[d] = float32(0)
        m, l = NEG_INF, float32(0)
        for j0 in range(0, n_kv, TILE):
            cuda.syncthreads()
            for e in range(tx, TILE * 8, ROWS):
                c, d = e // 8, e % 8
                v_j[c, d] = v[j0 + c, d] if j0 + c < n_kv else float32(0)
            cuda.syncthreads()
            for c in range(TILE):
                j = j0 + c
                s[c] = NEG_INF
                if i < n_q and j < n_kv and i + shift - left <= j <= i + shift + right:
                    dot = float32(0)
                    for d in range(8):
                        dot += q[i, d] * k[j, d]
                    s[c] = dot * scale
            m, l = dev(m, l, acc, s, v_j)
        if i < n_q:
            for d in range(8):
                o[i, d] = acc[d] / l if l > 0 else float32(0)
            lse[i] = m + math.log(l) if l > 0 else NEG_INF

    def run(c, p, q, k, v):
        o, lse = _nan(q.shape), _nan(p.seq_q)
        left, right = p.mask_bounds()
        args = (cuda.to_device(q), cuda.to_device(k), cuda.to_device(v), o, lse, np.float32(p.scale),
                p.seq_kv - p.seq_q, left, right)
        if not _launch(c, "the kernel", lambda: kernel[_cdiv(p.seq_q, ROWS), ROWS](*args)):
            return None
        return o.copy_to_host(), lse.copy_to_host()

    return _run_cases("online-update", seed, _fused_cases("online-update", run, FUSED_CASES))


# --- 04: FlashAttention-2's update, on a thread's micro-tile ---------------------------------------
def spec_fa2_update(s, m, l, o):
    """One KV tile for a CTA's Br query rows at once (FA2, Algorithm 1 of FA2): s (Br, Bc) the
    tile's scores (-inf where masked), m (Br,) the running max, l (Br,) the running sum, o (Br, D)
    the unnormalised O; m, l, o are updated in place, and P (Br, Bc) is returned (it goes to
    shared memory, for O += P V_j). O is rescaled, never divided: that happens once, after the
    last tile. A row that has seen no key yet has m = -inf: 0 stands in for its max, so every
    exponent stays finite (its P is 0 and its l stays 0)."""
    m_new = np.maximum(m, s.max(axis=1))
    m_use = np.where(m_new == -np.inf, 0.0, m_new)
    alpha = np.exp(m - m_use)
    p = np.exp(s - m_use[:, None])
    m[:], l[:] = m_new, alpha * l + p.sum(axis=1)
    o *= alpha[:, None]
    return p


FA2_BR, FA2_BC, FA2_RM, FA2_RN, FA2_D = 8, 8, 2, 2, 8
FA2_TR, FA2_TC = FA2_BR // FA2_RM, FA2_BC // FA2_RN
FA2_DT = FA2_D // FA2_TC


@_exercise("fa2-update", "04-flash1-vs-flash2", "device",
           "a device function: FA2's per-tile update on one thread's RM × RN micro-tile (P to shared "
           "memory, l over the thread's own keys, O rescaled)", spec_fa2_update)
def _check_fa2_update(fn, seed=None):
    from numba import int32

    dev = _dev(fn)
    BR, BC, RM, RN, D, TR, TC, DT = FA2_BR, FA2_BC, FA2_RM, FA2_RN, FA2_D, FA2_TR, FA2_TC, FA2_DT

    @cuda.jit
    def kernel(q, k, v, o, lse, scale, shift, left, right):
        """flash2's CTA with the learner's update: TR × TC threads, thread (tr, tc) owns rows
        tr + TR·a and keys tc + TC·c of each tile, and O columns tc + TC·x."""
        p_ij = cuda.shared.array((BR, BC), float32)
        red = cuda.shared.array((BR, TC), float32)  # a row's TC partials: max, then l
        s = cuda.local.array((RM, RN), float32)
        mx = cuda.local.array(RM, float32)
        m = cuda.local.array(RM, float32)
        l = cuda.local.array(RM, float32)
        acc = cuda.local.array((RM, DT), float32)
        rows = cuda.local.array(RM, int32)
        keys = cuda.local.array(RN, int32)
        t = cuda.threadIdx.x
        tr, tc = t // TC, t % TC
        i0 = cuda.blockIdx.x * BR
        n_q, n_kv = q.shape[0], k.shape[0]
        for a in range(RM):
            rows[a] = tr + TR * a
            m[a] = NEG_INF
            l[a] = float32(0)
            for x in range(DT):
                acc[a, x] = float32(0)
        for c in range(RN):
            keys[c] = tc + TC * c
        for j0 in range(0, n_kv, BC):
            for a in range(RM):  # S on my micro-tile (from device memory: the lesson is the update)
                i = i0 + rows[a]
                for c in range(RN):
                    j = j0 + keys[c]
                    s[a, c] = NEG_INF
                    if i < n_q and j < n_kv and i + shift - left <= j <= i + shift + right:
                        dot = float32(0)
                        for d in range(D):
                            dot += q[i, d] * k[j, d]
                        s[a, c] = dot * scale
                mine = s[a, 0]
                for c in range(1, RN):
                    mine = max(mine, s[a, c])
                red[rows[a], tc] = mine
                for c in range(RN):
                    p_ij[rows[a], keys[c]] = float32(0)
            cuda.syncthreads()
            for a in range(RM):  # the row's max over the tile: its TC threads' maxima
                mx[a] = red[rows[a], 0]
                for w in range(1, TC):
                    mx[a] = max(mx[a], red[rows[a], w])
            cuda.syncthreads()
            dev(s, mx, m, l, acc, p_ij, rows, keys)
            cuda.syncthreads()  # P_ij is complete in shared memory
            for a in range(RM):  # O += P_ij V_j on my micro-tile
                for x in range(DT):
                    col = tc + TC * x
                    add = float32(0)
                    for c in range(BC):
                        if j0 + c < n_kv:
                            add += p_ij[rows[a], c] * v[j0 + c, col]
                    acc[a, x] += add
            cuda.syncthreads()
        for a in range(RM):  # l: the TC partial sums of each row, added once
            red[rows[a], tc] = l[a]
        cuda.syncthreads()
        for a in range(RM):
            total = float32(0)
            for w in range(TC):
                total += red[rows[a], w]
            row = i0 + rows[a]
            if row < n_q:
                for x in range(DT):
                    o[row, tc + TC * x] = acc[a, x] / total if total > 0 else float32(0)
                if tc == 0:
                    lse[row] = m[a] + math.log(total) if total > 0 else NEG_INF

    def run(c, p, q, k, v):
        o, lse = _nan(q.shape), _nan(p.seq_q)
        left, right = p.mask_bounds()
        args = (cuda.to_device(q), cuda.to_device(k), cuda.to_device(v), o, lse, np.float32(p.scale),
                p.seq_kv - p.seq_q, left, right)
        if not _launch(c, "the kernel", lambda: kernel[_cdiv(p.seq_q, BR), TR * TC](*args)):
            return None
        return o.copy_to_host(), lse.copy_to_host()

    return _run_cases("fa2-update", seed, _fused_cases("fa2-update", run, [
        (10, 19, {}, "Nq=10 Nkv=19, no mask: two CTAs of 8 rows, the last KV tile partial"),
        (11, 20, {"window": (2, 0)}, "window (2, 0): rows whose first tiles are all -inf"),
        (12, 7, {"causal": True}, "causal, Nq=12 > Nkv=7: rows 0-4 see no key at all (O = 0, LSE = -inf)"),
    ], d=FA2_D))


# --- 05: a row's LSE in one pass, two numbers of memory ------------------------------------------
def spec_row_lse(q, k, i, scale):
    """LSE of query row i: log Σ_j exp(scale · q_i · k_j), in float64 (without storing the row)."""
    s = scale * (k @ q[i])
    m = s.max()
    return m + np.log(np.exp(s - m).sum())


@_exercise("row-lse", "05-scaling-and-memory", "device",
           "a device function: one row's LSE streamed over the keys with a running max and sum (O(1) memory)",
           spec_row_lse)
def _check_row_lse(fn, seed=None):
    dev = _dev(fn)

    @cuda.jit
    def kernel(q, k, lse, scale):
        i = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        if i < q.shape[0]:
            lse[i] = dev(q, k, i, scale)

    def case(nq, nkv, d, scale, title):
        def make(rng):
            c = Case(title)
            q = rng.standard_normal((nq, d)).astype(np.float32)
            k = rng.standard_normal((nkv, d)).astype(np.float32)
            lse = _nan(nq)
            if _launch(c, "the kernel", lambda: kernel[_cdiv(nq, 4), 4](cuda.to_device(q), cuda.to_device(k), lse, np.float32(scale))):
                q64, k64 = q.astype(np.float64), k.astype(np.float64)
                want = np.array([spec_row_lse(q64, k64, i, scale) for i in range(nq)])
                c.compare("lse", lse.copy_to_host(), want,
                          lambda ix: f"row {ix[0]}'s scores {_vec(scale * (k64 @ q64[ix[0]]), 8)}")
            return c
        return make

    return _run_cases("row-lse", seed, [
        case(7, 23, 8, 1 / math.sqrt(8), "7 rows, 23 keys, scale 1/√D"),
        case(6, 19, 16, 12.0, "scale 12: scores past 89, where e^s overflows float32"),
    ])


# --- 06: the KV tiles a query block needs ---------------------------------------------------------
def spec_kv_tiles(i0, i_last, Bc, shift, left, right, n_kv):
    """(j_start, j_end): the smallest run of KV tiles (Bc keys each) holding every key that any of
    the query rows i0 … i_last sees (row i sees keys i + shift − left … i + shift + right, inside
    [0, n_kv)); j_end == j_start when they see none."""
    keys = [j for i in range(i0, i_last + 1) for j in range(n_kv) if i + shift - left <= j <= i + shift + right]
    if not keys:
        return None  # any empty range (j_end == j_start) is right
    return min(keys) // Bc, max(keys) // Bc + 1


def _tile_cases(rng, count=60):
    """Random problems (lengths, masks, tiles) and every query block of each."""
    rows = []
    while len(rows) < count:
        nq, nkv = int(rng.integers(1, 60)), int(rng.integers(1, 60))
        kind = rng.integers(4)
        mask = ({} if kind == 0 else {"causal": True} if kind == 1
                else {"window": (int(rng.integers(0, 20)), 0)} if kind == 2
                else {"window": (int(rng.integers(0, 9)), int(rng.integers(0, 9)))})
        p = Problem(1, 1, 1, nq, nkv, 8, **mask)
        Br, Bc = int(rng.choice([4, 8, 16])), int(rng.choice([4, 8, 16]))
        left, right = p.mask_bounds()
        for i0 in range(0, nq, Br):
            rows.append((i0, min(i0 + Br, nq) - 1, Bc, nkv - nq, left, right, nkv, p.describe()))
    return rows


@_exercise("kv-tiles", "06-variants", "device",
           "a device function: the range of KV tiles a CTA's query rows see (flash2's skip of masked tiles)",
           spec_kv_tiles)
def _check_kv_tiles(fn, seed=None):
    dev = _dev(fn)

    @cuda.jit
    def kernel(args, out):
        t = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        if t < args.shape[0]:
            j_start, j_end = dev(args[t, 0], args[t, 1], args[t, 2], args[t, 3], args[t, 4], args[t, 5], args[t, 6])
            out[t, 0] = j_start
            out[t, 1] = j_end

    def make(rng):
        rows = _tile_cases(rng)
        c = Case(f"{len(rows)} query blocks of random problems (causal, windows, Nq ≠ Nkv; Br, Bc in 4, 8, 16)")
        args = np.array([r[:7] for r in rows], np.int64)
        out = cuda.to_device(np.full((len(rows), 2), -999, np.int64))
        if not _launch(c, "the kernel", lambda: kernel[_cdiv(len(rows), 32), 32](cuda.to_device(args), out)):
            return c
        got = out.copy_to_host()
        wrong = []
        for t, r in enumerate(rows):
            want = spec_kv_tiles(*r[:7])
            js, je = int(got[t, 0]), int(got[t, 1])
            ok = (je == js) if want is None else (js, je) == want
            if not ok:
                wrong.append((r, want, (js, je)))
        if wrong:
            c.fail(f"(j_start, j_end): {len(wrong)} of {len(rows)} query blocks wrong")
            wrong.sort(key=lambda w: w[1] is None)  # blocks that need tiles first: the usual mistake
            for r, want, got_ in wrong[:SHOWN]:
                i0, i_last, Bc, shift, left, right, n_kv, what = r
                need = "no tile (an empty range)" if want is None else f"tiles {want[0]}…{want[1] - 1}"
                c.lines.append(f"    rows {i0}…{i_last} of [{what}], Bc={Bc} (shift={shift}, left={left}, "
                               f"right={right}): need {need}, got range({got_[0]}, {got_[1]})")
            if len(wrong) > SHOWN:
                c.lines.append(f"    … and {len(wrong) - SHOWN} more")
        return c

    return _run_cases("kv-tiles", seed, [make])


# --- 07: P from S, in registers (NumPy: a warp of mma.sync, lane by lane) -------------------------
def spec_p_fragment(s):
    """A lane's C fragments of S for two n-tiles of 8 keys (s[nt, e], nt = 0, 1; e = c0…c3) -> the
    A fragment of P for those 16 keys: 4 registers of (low, high) 16-bit halves, shape (4, 2)."""
    return np.array([[s[0, 0], s[0, 1]], [s[0, 2], s[0, 3]], [s[1, 0], s[1, 1]], [s[1, 2], s[1, 3]]])


@_exercise("p-fragment", "07-tensor-cores", "numpy",
           "a NumPy function: a lane's C fragments of S (two 16×8 tiles) -> its A fragment of P (16×16)",
           spec_p_fragment)
def _check_p_fragment(fn, seed=None):
    from workbench.course import fragments as fr

    def make(rng):
        c = Case("one warp: S (16 × 16, two mma tiles of 8 keys) -> P's A fragments -> O = P V by mma.sync")
        s = rng.standard_normal((16, 16)).astype(np.float32)
        v = rng.standard_normal((16, 8)).astype(np.float32)
        s_frags = np.stack([fr.c_fragments(s[:, 8 * nt:8 * nt + 8]) for nt in range(2)], axis=1)  # (32, 2, 4)
        a = np.full((32, 4, 2), np.nan, np.float32)
        for lane in range(32):
            try:
                out = np.asarray(fn(s_frags[lane].copy()), dtype=np.float32)
            except Exception as exc:  # noqa: BLE001
                c.fail(f"lane {lane}: your function raised {type(exc).__name__}: {exc}")
                return c
            if out.shape != (4, 2):
                c.fail(f"lane {lane}: returned shape {out.shape}; an A fragment is 4 registers of 2 "
                       f"halves, shape (4, 2)")
                return c
            a[lane] = out
        p_got = fr.from_a_fragments(a)  # the 16 × 16 matrix the tensor core would see
        where = fr.c_owner_map()

        def inputs(ix):
            r, col = ix
            lane, reg, half = fr.a_owner(r, col)
            nt = col // 8
            src = where[(r, col % 8)]
            return (f"the tensor core reads it from lane {lane}, register a[{reg}], {'high' if half else 'low'} "
                    f"half; S[{r}, {col}] is in lane {src[0]}, c[{src[1]}] of n-tile {nt}")
        c.compare("P (as the mma reads it)", p_got, s.astype(np.float64), inputs, atol=0, rtol=0)
        if c.passed:
            o = fr.mma(fr.a_fragments(fr.round16(p_got)), fr.b_fragments(fr.round16(v)))
            o_want = fr.round16(s).astype(np.float64) @ fr.round16(v).astype(np.float64)
            c.compare("O = P V (mma.sync, float16 inputs)", fr.from_c_fragments(o), o_want, atol=1e-3, rtol=1e-3)
        return c

    return _run_cases("p-fragment", seed, [make])


# --- 08: the backward, KV outer: dK_j, dV_j of one key -------------------------------------------
def spec_dkdv_step(q_i, do_i, k_j, v_j, lse_i, delta_i, scale, dk_j, dv_j):
    """One (query row i, key j) pair of FA2's backward (Algorithm 2), accumulated into key j's
    gradients in place: P is recomputed from the forward's LSE, D_i = rowsum(dO_i ∘ O_i) is given."""
    p = np.exp(scale * q_i @ k_j - lse_i)  # P_ij, recomputed: no softmax to redo
    dp = do_i @ v_j  # dP_ij
    ds = p * (dp - delta_i)  # dS_ij
    dv_j += p * do_i  # dV_j += P_ij dO_i
    dk_j += scale * ds * q_i  # dK_j += scale · dS_ij Q_i


@_exercise("dkdv", "08-backward", "device",
           "a device function: one (row i, key j) step of the backward — recompute P_ij, accumulate dK_j, dV_j",
           spec_dkdv_step)
def _check_dkdv(fn, seed=None):
    dev = _dev(fn)

    @cuda.jit
    def kernel(q, k, v, do, lse, delta, dk, dv, scale, shift, left, right):
        """KV outer: thread j owns key j, keeps dK_j, dV_j in registers and walks the query rows
        that see it."""
        j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        dk_j = cuda.local.array(8, float32)
        dv_j = cuda.local.array(8, float32)
        if j >= k.shape[0]:
            return
        for d in range(8):
            dk_j[d] = float32(0)
            dv_j[d] = float32(0)
        for i in range(q.shape[0]):
            if i + shift - left <= j <= i + shift + right:
                dev(q[i], do[i], k[j], v[j], lse[i], delta[i], scale, dk_j, dv_j)
        for d in range(8):
            dk[j, d] = dk_j[d]
            dv[j, d] = dv_j[d]

    def case(nq, nkv, mask, title):
        def make(rng):
            c = Case(title)
            p, q, k, v = _fused_inputs(rng, nq, nkv, 8, **mask)
            do = rng.standard_normal(q.shape).astype(np.float32)
            o, lse = reference_attention(q[None, None], k[None, None], v[None, None], **mask)
            delta = (do * o[0, 0]).sum(axis=1)
            dk, dv = _nan(k.shape), _nan(v.shape)
            left, right = p.mask_bounds()
            args = [cuda.to_device(x) for x in (q, k, v, do, lse[0, 0].astype(np.float32), delta.astype(np.float32))]
            if _launch(c, "the kernel", lambda: kernel[_cdiv(nkv, 4), 4](*args, dk, dv, np.float32(p.scale),
                                                                        nkv - nq, left, right)):
                _, dk_ref, dv_ref = reference_backward(q[None, None], k[None, None], v[None, None], do[None, None], **mask)
                vis = visible_mask(p)

                def key(ix):
                    rows = np.flatnonzero(vis[:, ix[0]])
                    seen = f"rows {rows[0]}…{rows[-1]}" if rows.size else "no row"
                    return f"key {ix[0]} is seen by {seen}; k[{ix[0]}] = {_vec(k[ix[0]], 4)}"
                c.compare("dV", dv.copy_to_host(), dv_ref[0, 0], key)
                c.compare("dK", dk.copy_to_host(), dk_ref[0, 0], key)
            return c
        return make

    return _run_cases("dkdv", seed, [case(9, 9, {}, "Nq=Nkv=9, no mask"),
                                     case(7, 10, {"causal": True}, "causal, Nq=7 < Nkv=10")])


# --- 09: flash-decoding's combine of the splits ---------------------------------------------------
def spec_combine(o_parts, lse_parts):
    """Merge S partial results of one query row, each normalised over its own keys: o_parts (S, D),
    lse_parts (S,) (-inf: the split saw no key). Returns the row's (O, LSE) over all the keys."""
    m = lse_parts.max()
    if m == -np.inf:
        return np.zeros(o_parts.shape[1]), -np.inf
    w = np.exp(lse_parts - m)
    return (w @ o_parts) / w.sum(), m + np.log(w.sum())


def _split_partials(q, k, v, splits, **mask):
    """Float64 partial (O, LSE) of each split of the keys, as flash-decoding's first kernel makes."""
    nkv = k.shape[0]
    bounds = np.linspace(0, nkv, splits + 1).astype(int)
    p = Problem(1, 1, 1, q.shape[0], nkv, q.shape[1], **mask)
    vis = visible_mask(p)
    o_parts = np.zeros((splits, *q.shape))
    lse_parts = np.full((splits, q.shape[0]), -np.inf)
    s = p.scale * (q.astype(np.float64) @ k.T.astype(np.float64))
    for sp in range(splits):
        a, b = bounds[sp], bounds[sp + 1]
        for i in range(q.shape[0]):
            seen = vis[i, a:b]
            if seen.any():
                row = np.where(seen, s[i, a:b], -np.inf)
                m = row.max()
                e = np.exp(row - m)
                o_parts[sp, i] = e @ v[a:b] / e.sum()
                lse_parts[sp, i] = m + np.log(e.sum())
    return o_parts, lse_parts, bounds


@_exercise("combine", "09-inference", "device",
           "a device function: merge the splits' partial O and LSE of one query row (flash-decoding)",
           spec_combine)
def _check_combine(fn, seed=None):
    dev = _dev(fn)

    @cuda.jit
    def kernel(o_parts, lse_parts, o, lse):
        r = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        if r < o.shape[0]:
            dev(o_parts, lse_parts, r, o, lse)

    def case(nq, nkv, splits, mask, title):
        def make(rng):
            c = Case(title)
            p, q, k, v = _fused_inputs(rng, nq, nkv, 8, **mask)
            o_parts, lse_parts, bounds = _split_partials(q, k, v, splits, **mask)
            o, lse = _nan(q.shape), _nan(nq)
            if _launch(c, "the kernel", lambda: kernel[_cdiv(nq, 4), 4](
                    cuda.to_device(o_parts.astype(np.float32)), cuda.to_device(lse_parts.astype(np.float32)), o, lse)):
                o_ref, lse_ref = reference_attention(q[None, None], k[None, None], v[None, None], **mask)
                row = lambda ix: f"row {ix[0]}'s split LSEs {_vec(lse_parts[:, ix[0]])}"  # noqa: E731
                c.compare("O", o.copy_to_host(), o_ref[0, 0], row)
                c.compare("LSE", lse.copy_to_host(), lse_ref[0, 0], row)
            return c
        return make

    return _run_cases("combine", seed, [
        case(4, 37, 5, {}, "4 new tokens, 37 keys in 5 splits"),
        case(6, 30, 4, {"causal": True}, "causal, 6 new tokens over 30 keys in 4 splits: the last split is "
                                          "empty for the first rows (LSE -inf)"),
        case(5, 24, 3, {"window": (3, 0)}, "window (3, 0): each row's keys are in one or two splits"),
    ])


# --- 10: float32 -> bfloat16, rounded to nearest even, on the bits --------------------------------
def spec_bf16_bits(u):
    """The bfloat16 nearest (ties to even) to the float32 whose bits are u, as its 16 bits; NaN stays
    NaN. bfloat16 is the top half of a float32, so this is rounding off the low 16 bits."""
    import ml_dtypes

    return np.array([u], np.uint32).view(np.float32).astype(ml_dtypes.bfloat16).view(np.uint16)[0]


def _bf16_patterns(rng):
    """Random bit patterns and the edge cases: ties (kept part even and odd), just off a tie, the
    largest finite float32 (rounds to inf), infinities, NaNs whose top half alone reads as inf,
    subnormals, zeros."""
    edge = [0x00000000, 0x80000000, 0x3F808000, 0x3F818000, 0x3F807FFF, 0x3F808001, 0x3F80FFFF,
            0x7F7FFFFF, 0x7F7F7FFF, 0x7F800000, 0xFF800000, 0x7F800001, 0xFF800001, 0x7FC00000,
            0x7FFFFFFF, 0x00008000, 0x00018000, 0x807FFFFF, 0x00000001, 0xC0490FDB, 0x4049_0FDB]
    rand = rng.integers(0, 2**32, 200, dtype=np.uint64).astype(np.uint32)
    ties = (rng.integers(0, 2**16, 40, dtype=np.uint64).astype(np.uint32) << 16) | 0x8000
    return np.concatenate([np.array(edge, np.uint32), rand, ties & 0x7F7FFFFF])


@_exercise("bf16-round", "10-precision", "device",
           "a device function: the bfloat16 bits of a float32, rounded to nearest even, on the integer bits",
           spec_bf16_bits)
def _check_bf16_round(fn, seed=None):
    import ml_dtypes

    dev = _dev(fn)

    @cuda.jit
    def kernel(bits, out):
        t = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        if t < bits.shape[0]:
            out[t] = dev(bits[t])

    def make(rng):
        u = _bf16_patterns(rng)
        c = Case(f"{len(u)} float32 bit patterns: ties, the largest finite float, inf, NaN, subnormals, random")
        out = cuda.to_device(np.full(len(u), 0xDEAD, np.uint16))
        if not _launch(c, "the kernel", lambda: kernel[_cdiv(len(u), 32), 32](cuda.to_device(u), out)):
            return c
        got = out.copy_to_host()
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want = u.view(np.float32).astype(ml_dtypes.bfloat16).view(np.uint16)
        value = lambda b: float(np.array([b], np.uint16).view(ml_dtypes.bfloat16).astype(np.float32)[0])  # noqa: E731
        nan_want = np.isnan([value(b) for b in want])
        nan_got = np.isnan([value(b) for b in got])
        ok = np.where(nan_want, nan_got, got == want)
        c.compare("bits", got, want, ok=ok, fmt=lambda b: f"{int(b):#06x} ({_fmt(value(b))})",
                  inputs=lambda ix: f"the float32 {u[ix[0]]:#010x} = {_fmt(u[ix[0]:ix[0] + 1].view(np.float32)[0])}")
        return c

    return _run_cases("bf16-round", seed, [make])


# --------------------------------------------------------------------------------------------------
def table() -> str:
    """Every exercise: its notebook and what the learner writes."""
    return "\n".join(f"{e.notebook:24s} {e.name:14s} {e.kind:7s} {e.writes}" for e in EXERCISES.values())

