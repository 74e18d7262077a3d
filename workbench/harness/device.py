"""The device the harness launches on: the limits launches are checked against, a short name for
its figures folder, and the provenance every JSON we write carries. Simulator or GPU is chosen by
`workbench.target` (re-exported here: `device.simulator()`)."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from workbench.kernels import hardware
from workbench.target import mode, mode_reason, select_mode, simulator  # noqa: F401


@dataclass(frozen=True)
class DeviceFacts:
    """The limits a launch is checked against (what kernels/hardware.py knows, seen by the harness)."""

    name: str
    compute_capability: tuple[int, int]
    sm_count: int
    max_threads_per_block: int
    max_shared_per_block: int  # static shared memory a kernel may declare (bytes)
    max_dynamic_shared_per_block: int  # dynamic shared memory, once the kernel's limit is raised
    max_grid_yz: int


MAX_GRID_YZ = 65535  # the y and z grid dimensions' limit on every GPU since sm_30


def _facts_of(gpu: hardware.GPU) -> DeviceFacts:
    return DeviceFacts(gpu.name, gpu.compute_capability, gpu.sm_count, gpu.max_threads_per_block,
                       gpu.smem_static_per_block, gpu.smem_optin_per_block, MAX_GRID_YZ)


# Numba declares shared arrays statically, and static shared memory over 48 KiB fails to link for
# sm_90 (../shared/numba-cuda-notes.md), so 48 KiB is the budget on the H100 and H200 too.
H100 = _facts_of(hardware.H100)
H200 = _facts_of(hardware.H200)


def facts() -> DeviceFacts:
    """The limits launches are checked against: the present GPU's (kernels/hardware.current()), the
    H100's in the simulator or with no GPU (so a config that the simulator would accept but sm_90
    would not is refused here too)."""
    if simulator():
        return H100
    return _facts_of(hardware.current())


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
            info["driver"] = re.search(r"(\d{3,}\.\d+(?:\.\d+)?)", f.read())[1]
    except Exception:
        info.setdefault("driver", "unknown")
    for mod in ("torch", "cupy"):
        if mod in sys.modules:
            info[mod] = sys.modules[mod].__version__
    return info
