"""What workbench adds to Numba's CUDA simulator, so that the CPU is a teaching GPU.

- `warps`: warp intrinsics the simulator lacks (`cuda.shfl_*_sync`, `syncwarp`, `activemask`,
  `ballot_sync`, `all/any/eq_sync`, `match_*_sync`, `lanemask_lt`), with the hardware's semantics
  (PTX `shfl.sync`): lanes by linear thread index, segments of `width` lanes, masks, and a clear
  error instead of a silent hang when a warp deadlocks.
- `traffic`: opt-in counting of the bytes each launch reads and writes in device (global) memory,
  per array, and in shared memory, per shared array (`workbench.traffic(kernel, problem)`); its
  patches are in place only inside `traffic.counting()`, so ordinary runs pay nothing.

`install()` is called by `import workbench` when it selects the simulator; it patches classes of the simulator, never Numba's source, and is idempotent.
"""

from __future__ import annotations

import sys


def install() -> None:
    """Make the running simulator a teaching GPU: shared arrays made safely, warp intrinsics."""
    from workbench.sim import warps

    patch_shared_arrays()
    warps.install()


def patch_shared_arrays():
    """Make the simulator's shared memory safe: `cuda.shared.array` looks its array up in a dict and
    creates it when missing, with no lock, so under load two threads of a block can both miss and one
    keeps a private, uninitialised array (seen here: 1 launch in 300 of a 256-thread kernel). We take
    a lock, and also key by the call's bytecode offset so that two calls on one line no longer alias
    (on hardware they are two arrays)."""
    import threading

    import numpy as np
    from numba.core import types
    from numba.cuda.simulator import kernelapi
    from numba.np import numpy_support

    if getattr(kernelapi.FakeCUDAShared, "_workbench_patched", False):
        return
    original = kernelapi.FakeCUDAShared.array
    lock = threading.Lock()

    def array(self, shape, dtype, alignment=None, _frame=None):
        if shape == 0 or alignment is not None:  # dynamic shared memory / unsupported: as before
            return original(self, shape, dtype, alignment)
        if isinstance(dtype, types.Type):
            dtype = numpy_support.as_dtype(dtype)
        frame = _frame or sys._getframe(1)  # a wrapper (workbench.sim.traffic) passes the kernel's
        caller = (frame.f_code.co_filename, frame.f_lineno, frame.f_lasti)
        with lock:
            res = self._allocations.get(caller)
            if res is None:
                res = self._allocations[caller] = np.empty(shape, dtype)
        return res

    kernelapi.FakeCUDAShared.array = array
    kernelapi.FakeCUDAShared._workbench_patched = True

