"""Running a rung of any kind: config checks, the launch plan, and the one place kernels are launched from.

A rung's `launch(problem, config, <its arrays>, gpu)` takes the arrays its declaration lists
(`rung.args`: the module's ARGS or its kind's standard signature, kernels/contract.py), asks `gpu`
for scratch memory (`gpu.empty`) and launches through it (`gpu.launch(kernel, grid, block, *args)`).
Forward, backward and decode rungs all go through the same three functions:

- `plan(rung, problem, config)`: run with placeholder arrays built from the declaration and nothing
  launched, to see every kernel's grid and block before any real launch (so an impossible config is
  a ValueError, not a CUDA error) and to know the argument types for compiling ahead of time
  (`python -m workbench.bench.resources`);
- `check_config(rung, problem, config)`: the config merged with the mode's defaults and checked
  against the rung's `needs()`, the device and the plan;
- `run(rung, problem, config, *arrays, pool=None)`: the arrays in the declaration's order, their
  shapes and dtypes checked against it, then allocated scratch and live launches, counting the
  scratch bytes the rung allocates (what the memory model predicts).

Checks every launch shares: block and grid limits, and no float64 scalar sneaking into a float32
kernel (a Python float argument silently turns the kernel's arithmetic into FP64).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from workbench.kernels import of_kind
from workbench.kernels.contract import Needs  # noqa: F401  (re-exported: rungs import it from here)
from workbench.kernels.hardware import STATIC_SHARED, allow_dynamic_shared
from . import device


class Placeholder:
    """Stands in for a device array while planning: has a shape, a dtype and a Numba type."""

    def __init__(self, shape, dtype):
        from numba import types
        from numba.np.numpy_support import from_dtype

        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.size = int(np.prod(self.shape))
        self.nbytes = self.size * self.dtype.itemsize
        self._numba_type_ = types.Array(from_dtype(self.dtype), len(self.shape), "C")


@dataclass
class Launch:
    kernel: object  # a Numba dispatcher
    grid: tuple
    block: tuple
    argtypes: tuple
    shared: int = 0  # dynamic shared memory, bytes

    @property
    def name(self) -> str:
        return self.kernel.py_func.__name__

    @property
    def threads(self) -> int:
        return int(np.prod(self.block))


def _dims(x) -> tuple:
    return tuple(int(v) for v in (x if isinstance(x, tuple) else (x,)))


class Pool:
    """Scratch arrays kept between calls of the same rung on the same problem, so that repeated
    (timed) calls measure kernels, not cudaMalloc. Handed out in allocation order."""

    def __init__(self):
        self.arrays, self.next = [], 0

    def take(self, shape, dtype):
        from numba import cuda

        if self.next < len(self.arrays):
            arr = self.arrays[self.next]
            if arr.shape != tuple(shape) or arr.dtype != np.dtype(dtype):
                raise RuntimeError("a Pool serves one rung on one problem; make a new Pool")
        else:
            arr = cuda.device_array(shape, dtype)
            self.arrays.append(arr)
        self.next += 1
        return arr


class Launcher:
    """What a rung's `launch` talks to. Live, it allocates scratch (from a `pool`, through the
    caller's `allocate(shape, dtype)` — e.g. torch's caching allocator — or Numba's) and launches on
    `stream` (0: Numba's default stream); `track_memory` reads the driver's free memory around each
    step, which costs a driver call each time and is for measurements, not for the API's calls."""

    def __init__(self, live: bool, pool: Pool | None = None, stream=0, allocate=None,
                 track_memory: bool = True):
        self.live = live
        self.pool = pool
        self.stream = stream
        self.allocate = allocate
        self.launches: list[Launch] = []
        self.workspace_bytes = 0
        self._scratch = []
        self._free_start = self._free_min = None
        if live and track_memory and not device.simulator():
            from numba import cuda

            self._free_start = self._free_min = cuda.current_context().get_memory_info().free

    def _note_free(self):
        if self._free_start is not None:
            from numba import cuda

            self._free_min = min(self._free_min, cuda.current_context().get_memory_info().free)

    def empty(self, shape, dtype):
        """Scratch memory for the rung (counted: this is what the memory model predicts)."""
        arr = Placeholder(shape, dtype)
        self.workspace_bytes += arr.nbytes
        if self.live:
            if self.pool is not None:
                arr = self.pool.take(arr.shape, arr.dtype)
            elif self.allocate is not None:
                arr = self.allocate(arr.shape, arr.dtype)
            else:
                from numba import cuda

                arr = cuda.device_array(arr.shape, arr.dtype)
            self._scratch.append(arr)
            self._note_free()
        return arr

    def launch(self, kernel, grid, block, *args, shared=0):
        """Launch `kernel` on the launcher's stream; `shared`: bytes of dynamic shared memory (the
        kernel declares `cuda.shared.array(0, dtype)`; above 48 KiB its limit is raised first)."""
        for i, a in enumerate(args):
            if isinstance(a, (float, np.float64)):
                raise TypeError(
                    f"{kernel.py_func.__name__}: argument {i} is a float64 ({a!r}); pass "
                    f"np.float32(...) so the kernel stays in float32 arithmetic"
                )
        grid, block = _dims(grid), _dims(block)
        if self.live:  # (argument types are for planning: typing them again costs host time)
            self.launches.append(Launch(kernel, grid, block, (), shared))
            if shared > STATIC_SHARED and not device.simulator():
                kernel = kernel.specialize(*args)
                allow_dynamic_shared(kernel, shared)
            kernel[grid, block, self.stream, shared](*args)
            self._note_free()
        else:
            from numba import typeof

            self.launches.append(Launch(kernel, grid, block, tuple(typeof(a) for a in args), shared))

    @property
    def driver_bytes(self) -> int | None:
        """Device memory the driver saw disappear during the call (None in the simulator)."""
        if self._free_start is None:
            return None
        return self._free_start - self._free_min


def default_config(rung) -> dict:
    """The tiles that suit the mode: DEFAULT_CONFIG on a GPU, the rung's tiny SIM_CONFIG in the
    simulator (where every CUDA thread is a Python thread)."""
    module = rung.module
    if device.simulator():
        return {**module.DEFAULT_CONFIG, **getattr(module, "SIM_CONFIG", {})}
    return dict(module.DEFAULT_CONFIG)


def merged_config(rung, config) -> dict:
    """The mode's defaults overridden by `config`; unknown keys and non-positive ints refused."""
    default = default_config(rung)
    if config is None:
        return dict(default)
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict like {default}, got {type(config).__name__}")
    unknown = sorted(set(config) - set(default))
    if unknown:
        raise ValueError(
            f"unknown config key(s) {unknown} for kernel {rung.name!r}; it takes {sorted(default)}"
        )
    for key, value in config.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"config[{key!r}] must be a positive int, got {value!r}")
    return {**default, **{k: int(v) for k, v in config.items()}}


def placeholders(rung, problem) -> list[Placeholder]:
    """One placeholder per declared array, in launch order."""
    return [Placeholder(a.shape_of(problem), a.device_dtype(problem)) for a in rung.args]


def declared_bytes(rung, problem) -> int:
    """Device memory of the call's own arrays, from the declaration (the memory model's io part:
    for a forward rung `problem.io_bytes()`; a backward rung's adds dO, dQ, dK, dV)."""
    return sum(p.nbytes for p in placeholders(rung, problem))


def plan(rung, problem, config: dict) -> list[Launch]:
    """Every launch the rung would make for this problem, with nothing allocated or launched."""
    gpu = Launcher(live=False)
    rung.module.launch(problem, config, *placeholders(rung, problem), gpu)
    return gpu.launches


_CHECKED: dict = {}  # (rung, module, problem, config) -> the checked config: a repeated call plans once


def check_config(rung, problem, config=None) -> dict:
    """Merge and check a config against the problem and the device; ValueError before any launch.
    A config that passed for a (rung, problem) is remembered, so a call repeated on the same shapes
    (every layer of a model, every step of decoding) does not plan its launches again."""
    key = None
    if config is None or isinstance(config, dict):
        try:
            key = (rung.name, id(rung.module), problem,
                   None if config is None else tuple(sorted(config.items())))
            hash(key)
        except TypeError:  # an unhashable value or problem: checked below, with its own error
            key = None
    if key is not None and key in _CHECKED:
        return dict(_CHECKED[key])
    cfg = _check_config(rung, problem, config)
    if key is not None:
        _CHECKED[key] = dict(cfg)
    return cfg


def _check_config(rung, problem, config=None) -> dict:
    cfg = merged_config(rung, config)
    needs: Needs = rung.module.needs(problem, cfg)
    facts = device.facts()
    where = f"kernel {rung.name!r} with config {cfg}"
    gpu_only = getattr(rung.module, "GPU_ONLY", None)
    if gpu_only and device.simulator():
        raise ValueError(f"kernel {rung.name!r} cannot run in the simulator: {gpu_only}")
    if problem.dtype not in needs.dtypes:
        raise ValueError(
            f"kernel {rung.name!r} takes dtypes {needs.dtypes}, not {problem.dtype!r}: cast the inputs "
            f"to one of them{_who_takes(rung, problem)}"
        )
    if needs.head_dims is not None and problem.head_dim not in needs.head_dims:
        raise ValueError(
            f"{where} supports head_dim in {needs.head_dims}, not {problem.head_dim}"
        )
    broken = [rule for rule, ok in needs.rules.items() if not ok]
    if broken:
        raise ValueError(f"{where}: config must satisfy: {'; '.join(broken)}")
    limit, which = ((facts.max_dynamic_shared_per_block, "dynamic") if needs.dynamic_shared
                    else (facts.max_shared_per_block, "static"))
    if needs.shared_bytes > limit:
        raise ValueError(
            f"{where} needs {needs.shared_bytes} bytes of shared memory per block, over the "
            f"{limit}-byte {which} limit of {facts.name}: use smaller tiles"
        )
    for launch in plan(rung, problem, cfg):
        if launch.threads > facts.max_threads_per_block or launch.block[0] > 1024:
            raise ValueError(
                f"{where}: {launch.name} would launch {launch.block} = {launch.threads} threads per "
                f"block, over the limit of {facts.max_threads_per_block}: use smaller tiles"
            )
        if any(g > facts.max_grid_yz for g in launch.grid[1:]) or min(launch.grid) < 1:
            raise ValueError(
                f"{where}: {launch.name} would launch grid {launch.grid}; the y and z dimensions "
                f"must be 1..{facts.max_grid_yz}: use a smaller batch·heads or sequence"
            )
    return cfg


def _who_takes(asked, problem) -> str:
    """The tail of check_config's dtype message: the rungs of the same kind that take this dtype."""
    kind, names = getattr(asked, "kind", "forward"), []
    for rung in of_kind(kind):
        try:
            if problem.dtype in rung.module.needs(problem, default_config(rung)).dtypes:
                names.append(rung.name)
        except Exception:  # noqa: BLE001 - a rung that cannot judge this problem does not take it
            pass
    return f" (the {kind} kernels that take {problem.dtype}: {', '.join(names)})" if names else ""


def _expected(args, problem) -> tuple:
    """(shape, device dtype) of each declared array for this problem (cached: run is a hot path)."""
    try:
        return _expected_cached(args, problem)
    except TypeError:  # a problem that is not hashable
        return tuple((a.shape_of(problem), a.device_dtype(problem)) for a in args)


@functools.lru_cache(maxsize=64)
def _expected_cached(args, problem) -> tuple:
    return tuple((a.shape_of(problem), a.device_dtype(problem)) for a in args)


def check_arrays(rung, problem, arrays) -> None:
    """The arrays are the declaration's, in its order: their count, shapes and dtypes (TypeError /
    ValueError naming the array and what was expected)."""
    args = rung.args
    if len(arrays) != len(args):
        raise TypeError(f"kernel {rung.name!r} takes {len(args)} arrays ({', '.join(a.name for a in args)}), "
                        f"got {len(arrays)}")
    for a, (shape, dtype), x in zip(args, _expected(args, problem), arrays):
        if x.shape != shape and tuple(x.shape) != shape:
            raise ValueError(f"kernel {rung.name!r}: {a.name} must have shape {shape} "
                             f"(problem.{a.shape}), got {tuple(x.shape)}")
        if x.dtype != dtype:
            raise TypeError(f"kernel {rung.name!r}: {a.name} must be a {dtype} device array, got {x.dtype}")


def run(rung, problem, config: dict, *arrays, pool: Pool | None = None, stream=0, allocate=None,
        track_memory: bool = True) -> Launcher:
    """Launch a rung on device arrays given in its declaration's order (`rung.args`; config already
    checked). Returns the launcher's accounts. With a `pool`, scratch memory is reused from the
    previous call instead of allocated again (a Pool given as one more positional argument after
    the arrays is taken as the pool too)."""
    if pool is None and len(arrays) == len(rung.args) + 1 and isinstance(arrays[-1], Pool):
        *arrays, pool = arrays
    check_arrays(rung, problem, arrays)
    if pool is not None:
        pool.next = 0
    gpu = Launcher(live=True, pool=pool, stream=stream, allocate=allocate, track_memory=track_memory)
    rung.module.launch(problem, config, *arrays, gpu)
    return gpu


def release_memory():
    """Return freed device arrays to the driver now (Numba defers frees until it has several)."""
    import gc

    gc.collect()
    if not device.simulator():
        from numba import cuda

        cuda.current_context().deallocations.clear()
