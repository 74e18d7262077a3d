"""Memory traffic, counted in the simulator: what FlashAttention is about, made visible on a CPU.

FlashAttention's argument (Dao et al. 2022, Theorem 2) is about traffic to device memory (HBM), not
FLOPs: standard attention needs Θ(N·d + N²) HBM accesses, FlashAttention Θ(N²·d²/M) with M the
on-chip SRAM (shared memory) per block. The simulator runs every load and store of a kernel as a
Python index operation, so it can count them exactly:

    t = workbench.traffic("online", Problem(seq_q=13, head_dim=8))
    t.global_read, t.global_written          # bytes to and from device memory, all launches
    t.by_array()                             # {"Q": (read, written), "K": ..., "O": ..., "LSE": ...}
    t.shared_read, t.shared_written          # bytes to and from shared memory
    t.launches[0]["global"]["q"]             # per launch, per kernel argument

Counted: every element read or written through a kernel's array arguments (device memory), at its
itemsize, and every element of `cuda.shared.array` arrays (shared memory), per array. Not counted:
local arrays and scalars (registers), `shape` lookups, host<->device copies. These are the bytes
the algorithm asks for; on a GPU, caches (L1, L2) catch part of the re-reads and the memory system
moves whole 32-byte sectors, so a profiler's DRAM bytes are lower for re-reads and higher for
scattered accesses. Counting is opt-in (`counting()`), so ordinary simulator runs are not slowed.

    python -m workbench.sim.traffic --out figures/cpu

counts every rung over a range of sequence lengths and writes traffic.json (with provenance),
traffic.csv and traffic.png: global and shared traffic vs N beside the FA1 paper's Θ-bounds.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import linecache
import re
import sys
from dataclasses import dataclass, field

import numpy as np

_active: _Recorder | None = None


class _Tally:
    """Elements read and written through one array (itertools.count: atomic under the GIL, so
    the simulator's threads need no lock)."""

    __slots__ = ("name", "itemsize", "dtype", "shape", "_reads", "_writes")

    def __init__(self, name, ary):
        self.name, self.itemsize = name, ary.dtype.itemsize
        self.dtype, self.shape = str(ary.dtype), tuple(ary.shape)
        self._reads, self._writes = itertools.count(), itertools.count()

    def read(self):
        next(self._reads)

    def write(self, n=1):
        for _ in range(n):
            next(self._writes)

    def totals(self) -> dict:
        # count() yields how many times it was advanced before; reading it advances it once more
        reads, writes = next(self._reads), next(self._writes)
        self._reads, self._writes = itertools.count(reads), itertools.count(writes)
        return {"read": reads * self.itemsize, "written": writes * self.itemsize,
                "dtype": self.dtype, "shape": list(self.shape)}


def _elements(ary, idx) -> int:
    """How many elements `ary[idx] = ...` writes."""
    sub = np.ndarray.__getitem__(ary, idx) if isinstance(ary, np.ndarray) else ary[idx]
    return sub.size if isinstance(sub, np.ndarray) else 1


def _counting_array_class():
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

    class CountingArray(FakeCUDAArray):
        """A device array argument whose element reads and writes are tallied."""

        def __init__(self, ary, tally, stream=0):
            super().__init__(ary, stream)
            self._tally = tally

        def __getitem__(self, idx):
            ret = self._ary[idx]
            if type(ret) is np.ndarray:  # a view (q[b, h]): counted when its elements are touched
                return CountingArray(ret, self._tally, self.stream)
            self._tally.read()
            return ret

        def __setitem__(self, idx, val):
            self._ary[idx] = val
            self._tally.write(_elements(self._ary, idx))

    return CountingArray


class _CountingShared(np.ndarray):
    """A view of a shared array whose element reads and writes are tallied."""

    def __array_finalize__(self, obj):
        self._tally = getattr(obj, "_tally", None)

    def __getitem__(self, idx):
        ret = np.ndarray.__getitem__(self, idx)
        if isinstance(ret, np.ndarray):
            return ret
        self._tally.read()
        return ret

    def __setitem__(self, idx, val):
        np.ndarray.__setitem__(self, idx, val)
        self._tally.write(_elements(self, idx))


_SHARED_NAME = re.compile(r"(\w+)\s*=\s*cuda\.shared\.array")


class _Launch:
    def __init__(self, kernel, labels):
        self.name = kernel.py_func.__name__
        self.grid, self.block = tuple(kernel.grid_dim), tuple(kernel.block_dim)
        self.labels = labels  # buffer address -> label ("Q", "K", ... or the first argument name)
        self.globals: dict[str, tuple[str, _Tally]] = {}
        self.shared: dict[tuple, _Tally] = {}

    def wrap(self, name, arg, CountingArray):
        from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

        if isinstance(arg, FakeCUDAArray):
            ary = arg._ary
        elif isinstance(arg, np.ndarray) and arg.ndim > 0:
            ary = arg  # written in place (the simulator would copy in and back out)
        else:
            return arg
        base = ary.__array_interface__["data"][0]
        label = self.labels.setdefault(base, name)
        tally = _Tally(name, ary)
        self.globals[name] = (label, tally)
        return CountingArray(ary, tally)

    def shared_tally(self, frame, ary) -> _Tally:
        key = (frame.f_code.co_filename, frame.f_lineno, frame.f_lasti)
        tally = self.shared.get(key)
        if tally is None:
            m = _SHARED_NAME.search(linecache.getline(frame.f_code.co_filename, frame.f_lineno))
            name = m[1] if m else f"line {frame.f_lineno}"
            tally = self.shared.setdefault(key, _Tally(name, ary))
        return tally

    def record(self) -> dict:
        glob = {}
        for name, (label, tally) in self.globals.items():
            glob[name] = {"array": label, **tally.totals()}
        shared = {}
        for tally in self.shared.values():
            t = tally.totals()
            prev = shared.get(tally.name)
            if prev:  # two shared arrays with one variable name: add them up
                t = {**t, "read": t["read"] + prev["read"], "written": t["written"] + prev["written"]}
            shared[tally.name] = t
        return {"kernel": self.name, "grid": list(self.grid), "block": list(self.block),
                "global": glob, "shared": shared}


class _Recorder:
    def __init__(self):
        self.labels: dict[int, str] = {}
        self.launches: list[dict] = []
        self.current: _Launch | None = None

    def label(self, array, name: str):
        """Name a device array in the records ("Q", ...) instead of by its first argument name."""
        ary = getattr(array, "_ary", array)
        self.labels[ary.__array_interface__["data"][0]] = name


@contextlib.contextmanager
def counting():
    """Count device- and shared-memory traffic of every kernel launched inside the block:

        with counting() as rec:
            kernel[grid, block](...)
        rec.launches   # one dict per launch: kernel, grid, block, global{arg}, shared{array}
    """
    global _active
    from numba.cuda.simulator import kernel as simkernel
    from numba.cuda.simulator import kernelapi

    if not getattr(kernelapi.FakeCUDAShared, "_workbench_patched", False):
        raise RuntimeError("traffic counting needs Numba's CUDA simulator, set up by `import "
                           "workbench` (NUMBA_ENABLE_CUDASIM=1 or no GPU)")
    if _active is not None:
        raise RuntimeError("counting() does not nest")
    CountingArray = _counting_array_class()
    call, array = simkernel.FakeCUDAKernel.__call__, kernelapi.FakeCUDAShared.array
    rec = _Recorder()

    def counted_call(self, *args):
        if self._device or simkernel._kernel_context is not None:  # a device function: no launch
            return call(self, *args)
        launch = _Launch(self, rec.labels)
        names = list(inspect.signature(self.fn).parameters)
        wrapped = [launch.wrap(n, a, CountingArray) for n, a in zip(names, args)]
        rec.current = launch
        try:
            return call(self, *wrapped)
        finally:
            rec.current = None
            rec.launches.append(launch.record())

    def counted_array(self, shape, dtype, alignment=None):
        frame = sys._getframe(1)
        res = array(self, shape, dtype, alignment, _frame=frame) if alignment is None and shape != 0 \
            else array(self, shape, dtype, alignment)
        if rec.current is None:
            return res
        view = res.view(_CountingShared)
        view._tally = rec.current.shared_tally(frame, res)
        return view

    simkernel.FakeCUDAKernel.__call__ = counted_call
    kernelapi.FakeCUDAShared.array = counted_array
    _active = rec
    try:
        yield rec
    finally:
        simkernel.FakeCUDAKernel.__call__ = call
        kernelapi.FakeCUDAShared.array = array
        _active = None


# -------------------------------------------------------------------------------------------------
# A rung's traffic on a problem


@dataclass
class Traffic:
    """What one call of a rung moved, launch by launch."""

    rung: str
    problem: dict
    config: dict
    launches: list[dict] = field(default_factory=list)

    def _sum(self, where, what) -> int:
        return sum(a[what] for launch in self.launches for a in launch[where].values())

    @property
    def global_read(self) -> int:
        return self._sum("global", "read")

    @property
    def global_written(self) -> int:
        return self._sum("global", "written")

    @property
    def global_bytes(self) -> int:
        return self.global_read + self.global_written

    @property
    def shared_read(self) -> int:
        return self._sum("shared", "read")

    @property
    def shared_written(self) -> int:
        return self._sum("shared", "written")

    @property
    def shared_bytes(self) -> int:
        return self.shared_read + self.shared_written

    def by_array(self) -> dict[str, tuple[int, int]]:
        """Device-memory (read, written) bytes per array over all launches ("Q", "K", "V", "O",
        "LSE", and scratch arrays by the argument name of their first launch)."""
        out: dict[str, list[int]] = {}
        for launch in self.launches:
            for a in launch["global"].values():
                r, w = out.setdefault(a["array"], [0, 0])
                out[a["array"]] = [r + a["read"], w + a["written"]]
        return {k: tuple(v) for k, v in out.items()}

    def to_dict(self) -> dict:
        return {"rung": self.rung, "problem": self.problem, "config": self.config,
                "global_read": self.global_read, "global_written": self.global_written,
                "shared_read": self.shared_read, "shared_written": self.shared_written,
                "by_array": {k: {"read": r, "written": w} for k, (r, w) in self.by_array().items()},
                "launches": self.launches}


def traffic(kernel, problem, config=None, seed: int = 0) -> Traffic:
    """Run rung `kernel` (of any kind) once on `problem` in the simulator and count its memory
    traffic. `config` overrides the rung's (simulator) tiles, as in `workbench.attention`. The
    arrays are the rung's declaration (`rung.args`), labelled by their names in capitals ("Q",
    "K", "V", "O", "LSE"; "DQ", "K_CACHE", ...), the inputs the verifier's for `seed`."""
    from dataclasses import asdict

    from workbench import dtypes
    from workbench.harness import device, runner, verify
    from workbench.kernels import get

    if not device.simulator():
        raise RuntimeError("workbench.traffic counts in Numba's CUDA simulator only; on a GPU use a "
                           "profiler (Nsight Compute). Run with NUMBA_ENABLE_CUDASIM=1.")
    rung = get(kernel, kind=None)
    cfg = runner.check_config(rung, problem, config)
    from numba import cuda

    inputs = verify.make_inputs(rung, problem, seed)
    arrays = [cuda.device_array(a.shape_of(problem), a.device_dtype(problem)) if a.is_output
              else cuda.to_device(dtypes.to_bits(np.ascontiguousarray(inputs[a.name]))) for a in rung.args]
    with counting() as rec:
        for a, arr in zip(rung.args, arrays):
            rec.label(arr, a.name.upper())
        runner.run(rung, problem, cfg, *arrays)
    for a, arr in zip(rung.args, arrays):
        if a.is_output and a.dtype in ("io", "out"):  # (LSE may be -inf: rows that see no key)
            if not np.isfinite(dtypes.from_bits(arr.copy_to_host(), a.dtype_name(problem)).astype(np.float32)).all():
                raise RuntimeError(f"{rung.name} left non-finite values in {a.name} while counting: a bug")
    return Traffic(rung.name, asdict(problem), cfg, rec.launches)


# -------------------------------------------------------------------------------------------------
# The figure


def fa1_bounds(n: int, d: int, m_elements: int, itemsize: int = 4, heads: int = 1) -> dict:
    """The FA1 paper's HBM-access bounds (Theorem 2) with constant 1, in bytes: standard
    attention N·d + N², FlashAttention N²·d²/M (M in elements)."""
    return {"standard": heads * itemsize * (n * d + n * n),
            "flash": heads * itemsize * n * n * d * d / m_elements}


def sweep(seqs, head_dim=16, rungs=None, dtype="float32", progress=None) -> list[Traffic]:
    from workbench.kernels import LADDER
    from workbench.problem import Problem

    out = []
    for rung in LADDER:
        if rungs and rung.name not in rungs:
            continue
        if getattr(rung.module, "GPU_ONLY", None):  # (flash2_mma: the simulator cannot link it)
            continue
        for n in seqs:
            if progress:
                progress(rung.name, n)
            out.append(traffic(rung, Problem(seq_q=n, head_dim=head_dim, dtype=dtype)))
    return out


def flash1_shared_elements(head_dim: int) -> int:
    """M for the Θ-bound: the shared memory flash1 (FA1's loop order) uses at the simulator's
    tiles, in float32 elements."""
    from workbench.harness import runner
    from workbench.kernels import get
    from workbench.problem import Problem

    rung = get("flash1")
    cfg = runner.default_config(rung)
    return rung.module.needs(Problem(head_dim=head_dim), cfg).shared_bytes // 4
