"""flash2_mma_bwd compiles for sm_90 with no GPU: its three kernels at the default config, float16
and bfloat16, D = 64 and 128, within 48 KiB of static shared memory (what needs() declares) and
with no spills (a subprocess with the simulator off, as test_compile.py). The simulator refuses
the rung with its reason (it cannot link mma.cu)."""

import json
import os
import subprocess
import sys

SCRIPT = r"""
import json, os, sys
os.environ["NUMBA_ENABLE_CUDASIM"] = "0"
import numpy as np
from numba import cuda, typeof, types
from numba.np.numpy_support import from_dtype
from workbench.problem import Problem
from workbench.kernels import flash2_mma_bwd as rung


class Placeholder:  # a device array's shape, dtype and Numba type, nothing allocated
    def __init__(self, shape, dtype):
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self._numba_type_ = types.Array(from_dtype(self.dtype), len(self.shape), "C")


class Planner:  # records launches instead of making them
    def __init__(self):
        self.launches = []

    def empty(self, shape, dtype):
        return Placeholder(shape, dtype)

    def launch(self, kernel, grid, block, *args):
        self.launches.append((kernel, grid, block, tuple(typeof(a) for a in args)))


def usage(kernel, argtypes):
    # The LTO-IR of the kernel and of mma.cu, linked by nvJitLink for sm_90: its report.
    import re
    from cuda.core import Linker, LinkerOptions, ObjectCode

    opts = {k: v for k, v in (kernel.targetoptions or {}).items() if k in ("fastmath", "launch_bounds")}
    objs, _ = cuda.compile_all(kernel.py_func, argtypes, device=False, abi="numba", output="ltoir",
                               cc=(9, 0), **opts)
    linker = Linker(*[o if isinstance(o, ObjectCode) else ObjectCode.from_ltoir(o) for o in objs],
                    options=LinkerOptions(arch="sm_90", link_time_optimization=True, verbose=True))
    linker.link("cubin")
    log = linker.get_info_log()
    m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads"
                  r"[\s\S]*?Used (\d+) registers([^\n]*)", log)
    smem = re.search(r"(\d+) bytes smem", m[5])
    return {"registers": int(m[4]), "spill_bytes": int(m[2]) + int(m[3]),
            "shared_bytes": int(smem[1]) if smem else 0}


out = []
for dtype in ("float16", "bfloat16"):
    for d in (64, 128):
        p = Problem(2, 32, 8, 1000, 1000, d, dtype, causal=True)
        cfg = dict(rung.DEFAULT_CONFIG)
        io = np.uint16 if dtype == "bfloat16" else np.float16
        q, o, do, dq = (Placeholder(p.q_shape, io) for _ in range(4))
        k, v, dk, dv = (Placeholder(p.kv_shape, io) for _ in range(4))
        lse = Placeholder(p.lse_shape, np.float32)
        planner = Planner()
        rung.launch(p, cfg, q, k, v, o, lse, do, dq, dk, dv, planner)
        for kernel, grid, block, argtypes in planner.launches:
            out.append({"kernel": kernel.py_func.__name__, "dtype": dtype, "head_dim": d,
                        "threads": block, "declared": rung.needs(p, cfg).shared_bytes,
                        **usage(kernel, argtypes)})
json.dump(out, open(sys.argv[1], "w"))
"""


def test_mma_bwd_compiles_without_spills(tmp_path):
    out = tmp_path / "usage.json"
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(out)], env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    usage = json.loads(out.read_text())
    assert {u["kernel"] for u in usage} == {"bwd_prep", "flash2_mma_bwd", "bwd_dq_convert"}
    assert {(u["dtype"], u["head_dim"]) for u in usage} == {
        (t, d) for t in ("float16", "bfloat16") for d in (64, 128)}
    bad = [u for u in usage if u["spill_bytes"] or u["shared_bytes"] > 48 * 1024]
    assert not bad, bad
    main = [u for u in usage if u["kernel"] == "flash2_mma_bwd"]
    assert all(u["declared"] >= u["shared_bytes"] for u in main), main  # needs() tells the truth


def test_simulator_refuses_with_the_reason():
    """In the simulator the rung cannot be built (no linking of mma.cu): build() says why."""
    code = ("import os; os.environ['NUMBA_ENABLE_CUDASIM'] = '1'\n"
            "from workbench.kernels import flash2_mma_bwd as r\n"
            "try:\n    r.build(32, 64, 128, False)\nexcept RuntimeError as e:\n    print('REFUSED', e)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NUMBA_ENABLE_CUDASIM": "1"})
    assert "REFUSED" in proc.stdout and "mma.cu" in proc.stdout, proc.stdout + proc.stderr[-2000:]
