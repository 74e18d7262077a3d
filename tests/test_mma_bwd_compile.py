"""flash2_mma_bwd on this machine (no GPU).

- It compiles for sm_90: its three kernels at the default config, float16 and bfloat16, D = 64 and
  128, within 48 KiB of static shared memory (what needs() declares), with no spills except the
  main kernel's declared SPILL_BUDGET at D = 128 (a subprocess with the simulator off, as
  test_compile.py).
- The simulator refuses the main kernel with its reason (it cannot link mma.cu).
- Its two plain kernels (no mma.cu) run in the simulator: the preprocessing (D = rowsum(dO ∘ O),
  LSE₂ with −inf → +inf, padding rows, dQ_acc zeroed) and the dQ conversion, against NumPy on
  fresh random inputs, with NaN-poisoned outputs, float16 and bfloat16.
"""

import json
import os
import subprocess
import sys

import pytest

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
for dtype in sys.argv[2].split(","):
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


@pytest.mark.parametrize("dtype", ["float16", pytest.param("bfloat16", marks=pytest.mark.slow)])
def test_mma_bwd_compiles_without_spills(dtype, tmp_path):
    """float16 in the default tier; bfloat16 (the same code but the packing) in the slow tier."""
    out = tmp_path / "usage.json"
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(out), dtype], env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    usage = json.loads(out.read_text())
    assert {u["kernel"] for u in usage} == {"bwd_prep", "flash2_mma_bwd", "bwd_dq_convert"}
    assert {(u["dtype"], u["head_dim"]) for u in usage} == {(dtype, d) for d in (64, 128)}
    from workbench.kernels import flash2_mma_bwd as rung

    def budget(u):  # the main kernel at D = 128: a declared, measured budget; everything else: none
        return rung.SPILL_BUDGET if u["kernel"] == "flash2_mma_bwd" and u["head_dim"] > 64 else 0

    bad = [u for u in usage if u["spill_bytes"] > budget(u) or u["shared_bytes"] > 48 * 1024]
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


SIM_SCRIPT = r"""
import os, sys
os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
sys.setswitchinterval(1e-4)
import ml_dtypes
import numpy as np
from numba import cuda
from workbench.kernels import flash2_mma_bwd as m
from workbench.problem import Problem

for dtype, host in (("float16", np.float16), ("bfloat16", ml_dtypes.bfloat16)):
    p = Problem(1, 2, 2, 37, 37, 32, dtype, causal=True)
    rng = np.random.default_rng(int(np.random.SeedSequence().entropy % 2**32))
    Br = 32
    n_qp, bh, D = m.padded_rows(p, Br), p.batch * p.heads, p.head_dim
    dev = (lambda x: cuda.to_device(x.view(np.uint16))) if dtype == "bfloat16" else cuda.to_device
    o = rng.standard_normal(p.q_shape).astype(host)
    do = rng.standard_normal(p.q_shape).astype(host)
    lse = rng.standard_normal(p.lse_shape).astype(np.float32)
    lse[0, 1, 5] = -np.inf  # a row that sees no key
    lse2 = cuda.to_device(np.full((bh, n_qp), np.nan, np.float32))
    delta = cuda.to_device(np.full((bh, n_qp), np.nan, np.float32))
    acc0 = np.full((bh, n_qp, D), np.nan, np.float32)
    dq_acc = cuda.to_device(acc0)
    m.build_prep(D)[(n_qp // m.PREP_ROWS, bh), 32 * m.PREP_WARPS](
        dev(o), dev(do), cuda.to_device(lse), lse2, delta, dq_acc)
    want_d = (o.astype(np.float64) * do.astype(np.float64)).sum(-1).reshape(bh, -1)
    want_l = np.where(np.isneginf(lse), np.inf, lse * np.log2(np.e)).reshape(bh, -1)
    got_d, got_l, got_acc = delta.copy_to_host(), lse2.copy_to_host(), dq_acc.copy_to_host()
    n = p.seq_q
    assert np.allclose(got_d[:, :n], want_d, rtol=1e-5, atol=1e-4), (dtype, got_d[:, :n] - want_d)
    assert (got_d[:, n:] == 0).all() and np.isposinf(got_l[:, n:]).all(), "padding rows"
    assert np.isposinf(got_l[1, 5]) and np.allclose(got_l[:, :n], want_l, rtol=1e-6), "LSE2"
    assert (got_acc[:, :n] == 0).all(), "dQ_acc rows not zeroed"

    acc = rng.standard_normal((bh, n_qp, D)).astype(np.float32)
    dq = dev(np.full(p.q_shape, np.nan, host))
    m.build_convert(D)[(-(-n * D // (m.CONVERT_THREADS * m.CONVERT_ITEMS)), bh), m.CONVERT_THREADS](
        cuda.to_device(acc), dq, np.float32(p.scale))
    got = dq.copy_to_host()
    got = got.view(host) if dtype == "bfloat16" else got
    want = (acc[:, :n] * np.float32(p.scale)).reshape(p.q_shape).astype(host)
    assert np.array_equal(got.astype(np.float32), want.astype(np.float32)), dtype
print("OK")
"""


def test_prep_and_convert_in_the_simulator():
    proc = subprocess.run([sys.executable, "-c", SIM_SCRIPT], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "NUMBA_ENABLE_CUDASIM": "1"})
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-3000:]
