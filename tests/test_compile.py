"""Every rung compiles for sm_90 at its default config with no spills and within the shared-memory
budget — checked in a subprocess with the simulator off (Numba fixes the mode at import)."""

import json
import os
import subprocess
import sys

import pytest

from workbench.harness.device import H100


# flash1 and flash2 take every D of tiles.HEAD_DIMS (the other rungs are checked at 64 and 128)
TILED = ("flash1", "flash2")
SMALL_DIMS = ("16", "32")


@pytest.fixture(scope="module")
def usage(tmp_path_factory):
    """Every rung at D = 64 and 128 in every dtype it takes, and flash1, flash2 at the small D too
    (float32: register pressure grows with D, and 64 and 128 cover the dtypes): two inspector runs
    at once (each compiles one kernel at a time)."""
    tmp = tmp_path_factory.mktemp("inspect")
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0"}
    # (a rung is compiled for the dtypes its needs() declare; bfloat16 as uint16 bits)
    runs = {"all": ["--dtype", "float32", "float16", "bfloat16"],
            "small": ["--kernels", ",".join(TILED), "--dim", *SMALL_DIMS, "--dtype", "float32"]}
    procs = {}
    for name, extra in runs.items():
        cmd = [sys.executable, "-m", "workbench.inspect", "--json", str(tmp / f"{name}.json"),
               *extra]
        procs[name] = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)
    rows = []
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err[-3000:]
        rows += json.loads((tmp / f"{name}.json").read_text())
    return rows


def check_every_rung_compiled(usage):
    from workbench import LADDER

    assert {u["rung"] for u in usage} == {r.name for r in LADDER}
    every = {(t, d) for t in ("float32", "float16", "bfloat16") for d in (64, 128)}
    assert {(u["dtype"], u["head_dim"]) for u in usage} == every | {
        ("float32", d) for d in (16, 32)}
    for rung in TILED:  # every supported D
        assert {(u["dtype"], u["head_dim"]) for u in usage if u["rung"] == rung} == every | {
            ("float32", d) for d in (16, 32)}
    assert "flash2" in {u["rung"] for u in usage if u["dtype"] == "bfloat16"}


def check_no_spills_and_shared_memory_in_budget(usage):
    """No spills, except a rung's declared, measured SPILL_BUDGET (flash2_mma: its spill-free configs
    ran slower on the H100, figures/h100/perf-variants-mma.json)."""
    from workbench.kernels import get

    def budget(u):
        return getattr(get(u["rung"]).module, "SPILL_BUDGET", 0)

    bad = [u for u in usage
           if u["spill_bytes"] > budget(u) or u["shared_bytes"] > H100.max_shared_per_block]
    assert not bad, bad
    assert "flash2_mma" in {u["rung"] for u in usage if u["dtype"] in ("float16", "bfloat16")}


def check_declared_shared_memory_is_what_the_compiler_allocated(usage):
    """A rung's needs().shared_bytes is what the harness checks configs with: it must be true."""
    from workbench import LADDER, Problem

    for rung in LADDER:
        for dtype in ("float32", "float16", "bfloat16"):
            small = (16, 32) if dtype == "float32" and rung.name in TILED else ()
            for d in (*small, 64, 128):
                p = Problem(8, 32, 32, 4096, 4096, d, dtype)
                needs = rung.module.needs(p, rung.module.DEFAULT_CONFIG)
                if dtype not in needs.dtypes:
                    continue
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
