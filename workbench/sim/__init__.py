"""What workbench adds to Numba's CUDA simulator, so that the CPU is a teaching GPU.

- `warps`: warp intrinsics the simulator lacks (`cuda.shfl_*_sync`, `syncwarp`, `activemask`,
  `ballot_sync`, `all/any/eq_sync`, `match_*_sync`, `lanemask_lt`), with the hardware's semantics
  (PTX `shfl.sync`): lanes by linear thread index, segments of `width` lanes, masks, and a clear
  error instead of a silent hang when a warp deadlocks.
- `traffic`: opt-in counting of the bytes each launch reads and writes in device (global) memory,
  per array, and in shared memory, per shared array (`workbench.traffic(kernel, problem)`); its
  patches are in place only inside `traffic.counting()`, so ordinary runs pay nothing.

`install()` is called by `workbench.harness.device.patch_simulator()` when workbench selects the
simulator; it patches classes of the simulator, never Numba's source, and is idempotent.
"""

from __future__ import annotations


def install() -> None:
    """Add the warp intrinsics to the running simulator."""
    from . import warps

    warps.install()
