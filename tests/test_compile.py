"""Every rung compiles for sm_90 at its default config with no spills and within the shared-memory
budget — checked in a subprocess with the simulator off (Numba fixes the mode at import)."""

import json
import os
import subprocess
import sys

import pytest

from workbench import Problem
from workbench.harness.device import H100


# flash1 and flash2 take every D of tiles.HEAD_DIMS (the other rungs are checked at 64 and 128)
TILED = ("flash1", "flash2")
SMALL_DIMS = ("16", "32")


FAST_DTYPES = ("float32", "float16")
MORE = {"bf16": ["--dtype", "bfloat16"],  # (a rung is compiled for the dtypes its needs() declare)
        "fp32-128": ["--dtype", "float32", "--dim", "128"],
        "small": ["--kernels", ",".join(TILED), "--dim", *SMALL_DIMS, "--dtype", "float32"]}


def inspect(tmp, runs):
    """Inspector runs at once (each compiles one kernel at a time) in subprocesses with the
    simulator off; their rows together."""
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0"}
    procs = {}
    for name, extra in runs.items():
        cmd = [sys.executable, "-m", "workbench.inspect", "--json", str(tmp / f"{name}.json"), *extra]
        procs[name] = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)
    rows = []
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err[-3000:]
        rows += json.loads((tmp / f"{name}.json").read_text())
    return rows


@pytest.fixture(scope="module")
def usage(tmp_path_factory):
    """Every rung at D = 64 in float32 and float16, and at D = 128 in float16 (the CI tier;
    float32 at D = 128, bfloat16, and flash1, flash2 at the small D are test_more_compiled_kernels',
    in the slow tier)."""
    return inspect(tmp_path_factory.mktemp("inspect"), {"64": ["--dtype", *FAST_DTYPES, "--dim", "64"],
                                                        "128": ["--dtype", "float16", "--dim", "128"]})


def check_every_rung_compiled(usage, dtypes=FAST_DTYPES, small=False):
    from workbench import LADDER

    assert {u["rung"] for u in usage} == {r.name for r in LADDER if any(
        t in r.module.needs(Problem(head_dim=64, dtype=t), r.module.DEFAULT_CONFIG).dtypes for t in dtypes)}
    every = {(t, 64) for t in dtypes} | ({("float16", 128)} if "float16" in dtypes else set())
    extra = {("float32", d) for d in (16, 32)} if small else set()
    assert {(u["dtype"], u["head_dim"]) for u in usage} <= every | extra
    for rung in TILED:  # every supported D
        assert {(u["dtype"], u["head_dim"]) for u in usage if u["rung"] == rung} >= (
            {x for x in every if x[0] in dtypes} | extra)


def check_no_spills_and_shared_memory_in_budget(usage):
    """No spills, except a rung's declared, measured SPILL_BUDGET (flash2_mma: its spill-free configs
    ran slower on the H100, figures/h100/perf-variants-mma.json)."""
    from workbench.kernels import get

    def budget(u):
        return getattr(get(u["rung"]).module, "SPILL_BUDGET", 0)

    def shared_limit(u):  # dynamic shared memory (flash3) may go to the opt-in limit
        rung = get(u["rung"])
        needs = rung.module.needs(Problem(head_dim=u["head_dim"], dtype=u["dtype"]), rung.module.DEFAULT_CONFIG)
        return H100.max_dynamic_shared_per_block if needs.dynamic_shared else H100.max_shared_per_block

    bad = [u for u in usage
           if u["spill_bytes"] > budget(u) or u["shared_bytes"] > shared_limit(u)]
    assert not bad, bad
    assert "flash2_mma" in {u["rung"] for u in usage if u["dtype"] in ("float16", "bfloat16")} or \
        not any(u["dtype"] in ("float16", "bfloat16") for u in usage)


def check_declared_shared_memory_is_what_the_compiler_allocated(usage):
    """A rung's needs().shared_bytes is what the harness checks configs with: it must be true."""
    from workbench import LADDER

    for rung in LADDER:
        for dtype, d in {(u["dtype"], u["head_dim"]) for u in usage if u["rung"] == rung.name}:
            p = Problem(8, 32, 32, 4096, 4096, d, dtype)
            needs = rung.module.needs(p, rung.module.DEFAULT_CONFIG)
            declared = needs.shared_bytes
            actual = max(u["shared_bytes"] for u in usage
                         if u["rung"] == rung.name and u["dtype"] == dtype and u["head_dim"] == d)
            assert declared >= actual, (rung.name, dtype, d, declared, actual)


def test_compiled_kernels(usage):
    """One test for the three checks: under pytest-xdist each worker that ran one of them would
    compile every kernel again (a minute of CPU each)."""
    check_every_rung_compiled(usage)
    check_no_spills_and_shared_memory_in_budget(usage)
    check_declared_shared_memory_is_what_the_compiler_allocated(usage)


@pytest.mark.slow
def test_more_compiled_kernels(tmp_path):
    """bfloat16 for the rungs that take it, every float32 rung at D = 128, and flash1, flash2 at
    D = 16 and 32 (float32)."""
    from workbench import LADDER

    rows = inspect(tmp_path, MORE)
    assert "flash2" in {u["rung"] for u in rows if u["dtype"] == "bfloat16"}
    fp32 = {r.name for r in LADDER if "float32" in r.module.needs(Problem(head_dim=128), r.module.DEFAULT_CONFIG).dtypes}
    assert {(u["rung"], u["head_dim"]) for u in rows if u["dtype"] == "float32"} == {
        (r, d) for r in TILED for d in (16, 32)} | {(r, 128) for r in fp32}
    check_no_spills_and_shared_memory_in_budget(rows)
    check_declared_shared_memory_is_what_the_compiler_allocated(rows)
