"""Warp intrinsics for Numba's CUDA simulator, with the hardware's semantics.

Numba's simulator runs each CUDA thread as a Python thread and knows blocks (`syncthreads`) but not
warps: `cuda.shfl_sync` and friends are missing. This module adds them to the simulator's `cuda`
module (`FakeCUDAModule`), so kernels that exchange values inside a warp run, unchanged, on the CPU.

Warps, as on the GPU: a block's threads are numbered linearly, tid = x + y·Dx + z·Dx·Dy, warp =
tid // 32, lane = tid % 32. The last warp of a block whose size is not a multiple of 32 is partial;
its missing lanes count as exited.

A warp collective (`*_sync(mask, ...)`, `syncwarp(mask)`) is a rendezvous: every lane named in
`mask` that has not exited must arrive at the same intrinsic with the same mask (and width) before
any of them goes on. Lanes not in the mask may do other things meanwhile, including their own
collectives with another mask (independent thread scheduling, Volta and later).

Shuffles follow PTX `shfl.sync` exactly (`source_lane` below): `b` (the source lane, delta or
lane mask) is used modulo 32, and `c` packs the segment (width) and the clamp:

    segmask = c[12:8] (= 32 − width),  max_lane = (lane & segmask) | (c[4:0] & ~segmask),
    min_lane = lane & segmask
    idx:  j = min_lane | (b & ~segmask)   → (lane & ~(width−1)) + b % width
    up:   j = lane − b, valid if j ≥ max_lane (max_lane is the segment's first lane)
    down: j = lane + b, valid if j ≤ max_lane (the segment's last lane)
    bfly: j = lane ^ b, valid if j ≤ max_lane (so a lane may read an EARLIER segment, never a later)
    an invalid j reads the lane's own value.

Numba's `cuda.shfl_sync` etc. have no width (always 32: c = 0x1f, or 0 for up);
`workbench.kernels.warp` adds `shfl_*(mask, value, b, width)` for both targets.

Undefined on the GPU, and what the simulator does instead of silently agreeing with one run of it:
- the calling lane is not in `mask`: RuntimeError;
- lanes meet at different intrinsics (or widths) under one mask, or a warp deadlocks (a lane it
  waits for waits at `syncthreads`, or in a collective that waits for it): RuntimeError naming the
  lanes, instead of hanging;
- a shuffle reads a lane that is not in the mask, has exited or does not exist: the result is
  poison (NaN for floats, 0xDEADBEEF for ints), or a RuntimeError with `on_undefined = "raise"`.

`activemask()` is a rendezvous too (the simulator has no notion of convergence): it returns the
lanes that reach the same `activemask()` call, waiting for every lane of the warp that has not
exited and is not waiting elsewhere (another collective or call site, syncthreads). So in a
divergent branch it names the branch's lanes, as on the GPU; unlike the GPU, lanes that reach the
same call at different times are counted together.

`reference_shfl` is the same semantics in NumPy, for a whole warp at once: tests and
`scripts/gpu_warps.py` compare the simulator and the H100 with it.
"""

from __future__ import annotations

import math
import sys
import threading

import numpy as np

from workbench.kernels.warp import BFLY, DOWN, FULL_MASK, IDX, UP, WARP, clamp  # noqa: F401

MODE_NAMES = {IDX: "shfl_sync", UP: "shfl_up_sync", DOWN: "shfl_down_sync", BFLY: "shfl_xor_sync"}
UNDEFINED_INT = 0xDEADBEEF
on_undefined = "poison"  # or "raise": what a shuffle from an absent lane does in the simulator
DEADLOCK_CHECK_S = 0.25  # how long a lane waits before it looks for a deadlock (then again, ...)


# ---------------------------------------------------------------------------------------------
# The semantics, free of threads (shared by the simulator and the NumPy reference)


def source_lane(mode: int, lane: int, b: int, c: int) -> int:
    """The lane that `lane` reads in PTX `shfl.sync.mode d, a, b, c` (its own lane when the
    computed one is outside its segment)."""
    bval, cval, segmask = b & 0x1F, c & 0x1F, (c >> 8) & 0x1F
    max_lane = (lane & segmask) | (cval & ~segmask & 0x1F)
    min_lane = lane & segmask
    if mode == UP:
        j = lane - bval
        ok = j >= max_lane
    elif mode == DOWN:
        j = lane + bval
        ok = j <= max_lane
    elif mode == BFLY:
        j = lane ^ bval
        ok = j <= max_lane
    elif mode == IDX:
        j = min_lane | (bval & ~segmask & 0x1F)
        ok = j <= max_lane
    else:
        raise ValueError(f"unknown shuffle mode {mode!r}")
    return j if ok else lane


def reference_shfl(mode: int, values, b, mask: int = FULL_MASK, width: int = WARP, present=WARP):
    """What one warp's shuffle returns, in NumPy: `values` and `b` per lane (b may be a scalar),
    lanes in `mask` among the first `present` lanes take part. Returns (result, defined): float64
    results per lane (NaN for lanes not taking part), and whether each lane's result is defined
    (it takes part and reads a lane that takes part)."""
    values = np.asarray(values, dtype=np.float64)
    b = np.broadcast_to(np.asarray(b, dtype=np.int64), (WARP,))
    c = clamp(mode, width)
    takes_part = np.array([(mask >> l) & 1 and l < present for l in range(WARP)], dtype=bool)
    result = np.full(WARP, np.nan)
    defined = np.zeros(WARP, dtype=bool)
    for lane in np.flatnonzero(takes_part):
        j = source_lane(mode, int(lane), int(b[lane]), c)
        if takes_part[j]:
            result[lane], defined[lane] = values[j], True
    return result, defined


def poison(value):
    """What an undefined shuffle gives in the simulator: NaN for floats, 0xDEADBEEF for ints."""
    if isinstance(value, (float, np.floating)):
        return type(value)(math.nan)
    if isinstance(value, np.integer):
        return np.uint32(UNDEFINED_INT).astype(value.dtype)
    return UNDEFINED_INT


# ---------------------------------------------------------------------------------------------
# The rendezvous


class WarpError(RuntimeError):
    """A warp collective that is undefined or deadlocks on the GPU."""


class _Group:
    """One collective in flight: the lanes of `warp` that named `mask`."""

    __slots__ = ("op", "c", "warp", "mask", "expected", "values", "operands", "done", "results")

    def __init__(self, op, c, warp, mask, expected):
        self.op, self.c, self.warp, self.mask, self.expected = op, c, warp, mask, expected
        self.values, self.operands, self.results = {}, {}, {}
        self.done = False

    def describe(self) -> str:
        if self.op == "activemask":
            return "activemask()"
        width = WARP - ((self.c >> 8) & 0x1F)
        extra = f", width={width}" if self.op in MODE_NAMES.values() and width != WARP else ""
        return f"{self.op}(mask=0x{self.mask:08x}{extra})"


class _BlockWarps:
    """Warp state of one block, kept on the simulator's BlockManager."""

    def __init__(self, manager):
        self.manager = manager
        self.threads = int(np.prod(manager._block_dim))
        self.pending: dict[tuple[int, int], _Group] = {}  # (warp, mask) -> collective in flight
        self.waiting: dict[int, _Group] = {}  # tid -> the collective it waits in
        self.exited: set[int] = set()


_COND = threading.Condition()  # guards every _BlockWarps (the simulator runs one block at a time)


def _state(manager) -> _BlockWarps:
    st = manager.__dict__.get("_workbench_warps")
    if st is None:
        st = manager.__dict__["_workbench_warps"] = _BlockWarps(manager)
    return st


def _lanes(mask: int) -> list[int]:
    return [l for l in range(WARP) if (mask >> l) & 1]


def _try_complete(st: _BlockWarps, g: _Group) -> None:
    base = g.warp * WARP
    if any(l not in g.values and base + l not in st.exited for l in g.expected):
        return
    if g.op in MODE_NAMES.values():
        mode = {v: k for k, v in MODE_NAMES.items()}[g.op]
        for lane, value in g.values.items():
            j = source_lane(mode, lane, g.operands[lane], g.c)
            g.results[lane] = g.values[j] if j in g.values else _Undefined(lane, j, value)
    elif g.op == "syncwarp":
        g.results = dict.fromkeys(g.values)
    elif g.op in ("ballot_sync", "all_sync", "any_sync", "eq_sync"):
        votes = {l: bool(v) for l, v in g.values.items()}
        ballot = sum(1 << l for l, v in votes.items() if v)
        result = {
            "ballot_sync": np.uint32(ballot).astype(np.int32),  # Numba types the ballot int32
            "all_sync": all(votes.values()),
            "any_sync": any(votes.values()),
            "eq_sync": len(set(votes.values())) == 1,
        }[g.op]
        g.results = dict.fromkeys(g.values, result)
    elif g.op == "match_any_sync":
        for lane, value in g.values.items():
            same = sum(1 << l for l, v in g.values.items() if v == value)
            g.results[lane] = np.uint32(same).astype(np.int32)
    elif g.op == "match_all_sync":
        arrived = sum(1 << l for l in g.values)
        equal = len({v for v in g.values.values()}) == 1
        g.results = dict.fromkeys(g.values, (np.uint32(arrived if equal else 0).astype(np.int32), equal))
    g.done = True
    del st.pending[(g.warp, g.mask)]
    for lane in g.values:
        st.waiting.pop(base + lane, None)
    _COND.notify_all()


class _Undefined:
    __slots__ = ("lane", "source", "own")

    def __init__(self, lane, source, own):
        self.lane, self.source, self.own = lane, source, own


def _deadlock(st: _BlockWarps, me: int) -> str | None:
    """If thread `me` can never leave its collective, say why. A lane is stuck when it waits at
    syncthreads (released only when every thread gets there, and we are waiting) or in a
    collective whose missing lanes are all stuck; the largest such set is found by elimination."""
    threads = {t.thread_id: t for t in threading.enumerate()
               if getattr(t, "_manager", None) is st.manager}
    at_barrier = {tid for tid, t in threads.items() if t.syncthreads_blocked}
    stuck = set(st.waiting) | at_barrier

    def missing(g):
        base = g.warp * WARP
        return [base + l for l in g.expected if l not in g.values and base + l not in st.exited]

    changed = True
    while changed:
        changed = False
        for tid in list(stuck):
            g = st.waiting.get(tid)
            if g is not None and any(m not in stuck for m in missing(g)):
                stuck.discard(tid)
                changed = True
    if me not in stuck:
        return None
    g = st.waiting[me]
    parts = []
    for m in missing(g):
        where = ("at syncthreads" if m in at_barrier else
                 f"in {st.waiting[m].describe()}" if m in st.waiting else "nowhere")
        parts.append(f"lane {m % WARP} waits {where}")
    return (f"warp {g.warp} deadlocks: lanes {sorted(g.values)} wait in {g.describe()} for lanes "
            f"that never come ({'; '.join(parts)}). On the GPU this hangs or is undefined: every "
            f"non-exited lane named in the mask must reach the same intrinsic with the same mask.")


def _collective(op: str, mask, value=None, operand=0, c=0):
    """Arrive at a warp collective; return this lane's result once the collective is complete."""
    t = threading.current_thread()
    tid = t.thread_id
    warp, lane = divmod(tid, WARP)
    mask = int(mask) & FULL_MASK
    if not (mask >> lane) & 1:
        raise WarpError(
            f"{op}: lane {lane} (thread {tid}) calls it with mask 0x{mask:08x}, which does not name "
            f"it; on the GPU the result is undefined. Include the calling lane in the mask.")
    with _COND:
        st = _state(t._manager)
        g = st.pending.get((warp, mask))
        if g is None:
            present = min(WARP, st.threads - warp * WARP)
            g = _Group(op, c, warp, mask, [l for l in _lanes(mask) if l < present])
            st.pending[(warp, mask)] = g
        elif g.op != op or g.c != c:
            raise WarpError(
                f"warp {warp}: lane {lane} calls {_Group(op, c, warp, mask, []).describe()} while "
                f"lanes {sorted(g.values)} wait in {g.describe()}; on the GPU this is undefined.")
        g.values[lane], g.operands[lane] = value, operand
        st.waiting[tid] = g
        _try_complete(st, g)
        while not g.done:
            if not _COND.wait(timeout=DEADLOCK_CHECK_S) and not g.done:
                why = _deadlock(st, tid)
                if why:
                    raise WarpError(why)
            if t.abort:
                raise RuntimeError("abort flag set in a warp collective")
        result = g.results[lane]
    if isinstance(result, _Undefined):
        if on_undefined == "raise":
            raise WarpError(
                f"warp {warp}: lane {lane} reads lane {result.source} in {g.describe()}, but lane "
                f"{result.source} is not in the mask, has exited or does not exist: undefined on "
                f"the GPU.")
        return poison(result.own)
    return result


def _thread_exited(thread) -> None:
    """A lane that exits no longer holds up its warp's collectives (PTX: non-exited lanes)."""
    with _COND:
        st = _state(thread._manager)
        st.exited.add(thread.thread_id)
        warp = thread.thread_id // WARP
        for g in [g for (w, _), g in st.pending.items() if w == warp and g.op != "activemask"]:
            _try_complete(st, g)
        _COND.notify_all()  # activemask calls look again


# ---------------------------------------------------------------------------------------------
# What kernels call (as `cuda.<name>` inside a simulated kernel)


def _check_shuffled(value, op):
    if isinstance(value, (bool, np.bool_)) or (
            isinstance(value, np.generic) and value.dtype.itemsize not in (4, 8)):
        raise TypeError(f"{op} shuffles 32- and 64-bit ints and floats only (as Numba on the GPU), "
                        f"got {type(value).__name__}")


def shuffle(mode: int, mask, value, b, c: int):
    """PTX shfl.sync with an explicit `c` (segment and clamp): the engine of every shuffle."""
    op = MODE_NAMES[mode]
    _check_shuffled(value, op)
    return _collective(op, mask, value, int(b), c)


def shfl_sync(mask, value, src_lane):
    return shuffle(IDX, mask, value, src_lane, clamp(IDX))


def shfl_up_sync(mask, value, delta):
    return shuffle(UP, mask, value, delta, clamp(UP))


def shfl_down_sync(mask, value, delta):
    return shuffle(DOWN, mask, value, delta, clamp(DOWN))


def shfl_xor_sync(mask, value, lane_mask):
    return shuffle(BFLY, mask, value, lane_mask, clamp(BFLY))


def syncwarp(mask=FULL_MASK):
    _collective("syncwarp", mask)


def ballot_sync(mask, predicate):
    return _collective("ballot_sync", mask, predicate)


def all_sync(mask, predicate):
    return _collective("all_sync", mask, predicate)


def any_sync(mask, predicate):
    return _collective("any_sync", mask, predicate)


def eq_sync(mask, predicate):
    return _collective("eq_sync", mask, predicate)


def match_any_sync(mask, value):
    return _collective("match_any_sync", mask, value)


def match_all_sync(mask, value):
    return _collective("match_all_sync", mask, value)


def activemask():
    """The lanes of this warp that reach this same `activemask()` call together (see the module
    docstring): a lane counts unless it has exited or waits elsewhere (another collective, another
    activemask call, syncthreads)."""
    t = threading.current_thread()
    tid = t.thread_id
    warp, lane = divmod(tid, WARP)
    frame = sys._getframe(1)
    site = ("activemask", frame.f_code, frame.f_lasti)
    with _COND:
        st = _state(t._manager)
        g = st.pending.get((warp, site))
        if g is None:
            g = st.pending[(warp, site)] = _Group("activemask", 0, warp, site, [])
        g.values[lane] = True
        st.waiting[tid] = g
        _COND.notify_all()  # lanes waiting in other activemask calls look again
        while not g.done:
            if _activemask_ready(st, g):
                g.results = dict.fromkeys(g.values, np.uint32(sum(1 << l for l in g.values)))
                g.done = True
                del st.pending[(warp, site)]
                for l in g.values:
                    st.waiting.pop(warp * WARP + l, None)
                _COND.notify_all()
                break
            _COND.wait(timeout=0.02)  # syncthreads does not notify us: look again soon
            if t.abort:
                raise RuntimeError("abort flag set in activemask")
        return g.results[lane]


def _activemask_ready(st: _BlockWarps, g: _Group) -> bool:
    base = g.warp * WARP
    present = min(WARP, st.threads - base)
    threads = None
    for l in range(present):
        tid = base + l
        if l in g.values or tid in st.exited or st.waiting.get(tid, g) is not g:
            continue
        if threads is None:
            threads = {x.thread_id: x for x in threading.enumerate()
                       if getattr(x, "_manager", None) is st.manager}
        if tid in threads and threads[tid].syncthreads_blocked:
            continue
        return False  # still running (or not started): it may come here
    return True


def lanemask_lt():
    return np.uint32((1 << (threading.current_thread().thread_id % WARP)) - 1)


def shfl_sync_intrinsic(mask, mode, value, b, c):
    """Numba's own `cuda.shfl_sync_intrinsic` (PTX shfl.sync with explicit mode and `c`): what
    workbench.kernels.warp calls on both targets. Returns (value, predicate) as on the GPU."""
    return shuffle(mode, mask, value, b, c), True


_INTRINSICS = {
    "shfl_sync_intrinsic": shfl_sync_intrinsic,
    "shfl_sync": shfl_sync, "shfl_up_sync": shfl_up_sync, "shfl_down_sync": shfl_down_sync,
    "shfl_xor_sync": shfl_xor_sync, "syncwarp": syncwarp, "ballot_sync": ballot_sync,
    "all_sync": all_sync, "any_sync": any_sync, "eq_sync": eq_sync,
    "match_any_sync": match_any_sync, "match_all_sync": match_all_sync,
    "activemask": activemask, "lanemask_lt": lanemask_lt,
}


def install() -> None:
    """Give the simulator's `cuda` module the intrinsics above, and tell warps when lanes exit."""
    from numba.cuda.simulator import kernel, kernelapi

    module = kernelapi.FakeCUDAModule
    if getattr(module, "_workbench_warps", False):
        return
    import numba.cuda

    if not hasattr(numba.cuda, "shfl_sync_intrinsic"):  # called from plain functions, too
        numba.cuda.shfl_sync_intrinsic = shfl_sync_intrinsic
    for name, fn in _INTRINSICS.items():
        if not hasattr(module, name):  # a later Numba may bring its own
            setattr(module, name, staticmethod(fn))
    run = kernel.BlockThread.run

    def run_and_leave_warp(self):
        try:
            run(self)
        finally:
            _thread_exited(self)

    kernel.BlockThread.run = run_and_leave_warp
    module._workbench_warps = True
