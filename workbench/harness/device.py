"""Simulator or GPU: chosen once, before Numba is imported.

Numba fixes `NUMBA_ENABLE_CUDASIM` the first time `numba` is imported, so the choice has to be made
here, by asking the CUDA driver directly (through ctypes, without Numba) whether there is a device.

- The user's own `NUMBA_ENABLE_CUDASIM` always wins.
- Otherwise, no usable driver or no device -> the simulator, announced once on stderr.
- If Numba was imported before workbench and there is no GPU, we cannot switch any more: warn.

Also here: the device facts the harness checks launches against, and the sizes that suit each mode.
"""

from __future__ import annotations

import ctypes
import os
import sys
import warnings
from dataclasses import dataclass

_ENV = "NUMBA_ENABLE_CUDASIM"
_mode: str | None = None
_reason: str = ""


def _driver_has_device() -> tuple[bool, str]:
    """Ask libcuda for a device without importing Numba (which would freeze the mode)."""
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    else:
        return False, "no CUDA driver library (libcuda) found"
    if lib.cuInit(0) != 0:
        return False, "the CUDA driver failed to initialise (cuInit)"
    count = ctypes.c_int(0)
    if lib.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value == 0:
        return False, "the CUDA driver reports no device"
    return True, f"{count.value} CUDA device(s)"


def select_mode() -> str:
    """Decide 'simulator' or 'gpu' once per process; idempotent."""
    global _mode, _reason
    if _mode is not None:
        return _mode
    user = os.environ.get(_ENV)
    if user is not None and user.strip() not in ("", "0"):
        _mode, _reason = "simulator", f"{_ENV}={user} was set by the user"
    elif user is not None:
        _mode, _reason = "gpu", f"{_ENV}={user} was set by the user"
    else:
        ok, why = _driver_has_device()
        if ok:
            _mode, _reason = "gpu", why
        elif "numba" in sys.modules:
            _mode, _reason = "gpu", why
            warnings.warn(
                f"workbench: {why}, but Numba was imported before workbench, so its CUDA simulator "
                f"can no longer be switched on and kernels will fail to launch. Import workbench "
                f"first, or set {_ENV}=1 before starting Python.",
                RuntimeWarning,
                stacklevel=3,
            )
        else:
            os.environ[_ENV] = "1"
            _mode, _reason = "simulator", why
            print(
                f"workbench: {why}; running kernels in Numba's CUDA simulator on the CPU "
                f"(correct results, tiny sizes, no timings). Set {_ENV}=0 to refuse this.",
                file=sys.stderr,
            )
    if _mode == "simulator":
        # Each simulated CUDA thread is a Python thread; a short switch interval makes
        # syncthreads ~10x cheaper (measured, ../shared/numba-cuda-notes.md).
        sys.setswitchinterval(1e-4)
    return _mode


def patch_simulator():
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
    from ..sim import install  # warp intrinsics, opt-in traffic counters (workbench/sim/)

    install()


def mode() -> str:
    """'simulator' or 'gpu'."""
    return select_mode()


def mode_reason() -> str:
    select_mode()
    return _reason


def simulator() -> bool:
    return select_mode() == "simulator"


@dataclass(frozen=True)
class DeviceFacts:
    name: str
    compute_capability: tuple[int, int]
    sm_count: int
    max_threads_per_block: int
    max_shared_per_block: int  # static shared memory a kernel may declare (bytes)
    max_grid_yz: int


# Numba declares shared arrays statically, and static shared memory over 48 KiB fails to link for
# sm_90 (../shared/numba-cuda-notes.md), so 48 KiB is the budget on the H100 too.
H100 = DeviceFacts("NVIDIA H100 80GB HBM3", (9, 0), 132, 1024, 48 * 1024, 65535)


def facts() -> DeviceFacts:
    """The limits launches are checked against: the real device's on a GPU, the H100's otherwise
    (so a config that the simulator would accept but sm_90 would not is refused here too)."""
    if simulator():
        return H100
    from numba import cuda

    try:
        dev = cuda.get_current_device()
    except Exception:  # compiling ahead of time with no GPU (workbench.inspect): check as for sm_90
        return H100
    name = dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name)
    return DeviceFacts(
        name,
        tuple(dev.compute_capability),
        dev.MULTIPROCESSOR_COUNT,
        dev.MAX_THREADS_PER_BLOCK,
        min(dev.MAX_SHARED_MEMORY_PER_BLOCK, 48 * 1024),
        dev.MAX_GRID_DIM_Y,
    )


def slug(name: str) -> str:
    """A short folder name for a device: 'NVIDIA H100 80GB HBM3' -> 'h100'."""
    import re

    m = re.search(r"\b([A-Z]{1,2}\d{2,4}[A-Z]?)\b", name)
    return (m.group(1) if m else re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")).lower()


def provenance() -> dict:
    """Who measured: device, driver and library versions (for every JSON we write)."""
    import datetime
    import platform

    import numba
    import numpy

    info = {
        "mode": mode(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "numba": numba.__version__,
        "command": " ".join(getattr(sys, "orig_argv", sys.argv)),
    }
    try:
        from importlib.metadata import version

        info["numba_cuda"] = version("numba-cuda")
    except Exception:  # pragma: no cover - metadata missing in odd installs
        info["numba_cuda"] = "unknown"
    if simulator():
        info["device"] = "Numba CUDA simulator (CPU)"
        return info
    from numba import cuda

    info["device"] = facts().name
    try:
        info["cuda_driver_api"] = ".".join(map(str, cuda.cudadrv.driver.driver.get_version()))
        import re

        with open("/proc/driver/nvidia/version") as f:  # "NVRM version: ... Kernel Module ... 580.159.04 ..."
            info["driver"] = re.search(r"\b(\d+\.\d+(?:\.\d+)?)\b", f.readline())[1]
    except Exception:
        info.setdefault("driver", "unknown")
    for mod in ("torch", "cupy"):
        if mod in sys.modules:
            info[mod] = sys.modules[mod].__version__
    return info
