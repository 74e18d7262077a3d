"""Simulator or GPU: chosen once, before Numba is imported (the lowest layer: no Numba here).

Numba fixes `NUMBA_ENABLE_CUDASIM` the first time `numba` is imported, so the choice has to be made
here, by asking the CUDA driver directly (through ctypes, without Numba) whether there is a device.

- The user's own `NUMBA_ENABLE_CUDASIM` always wins.
- Otherwise, no usable driver or no device -> the simulator, announced once on stderr.
- If Numba was imported before workbench and there is no GPU, we cannot switch any more: warn.
"""

from __future__ import annotations

import ctypes
import os
import sys
import warnings

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


def mode() -> str:
    """'simulator' or 'gpu'."""
    return select_mode()


def mode_reason() -> str:
    select_mode()
    return _reason


def simulator() -> bool:
    return select_mode() == "simulator"
