"""Every rung compiles for sm_90 at its default config with no spills and within the shared-memory
budget — checked in a subprocess with the simulator off (Numba fixes the mode at import)."""

import json
import os
import subprocess
import sys

import pytest

from workbench.harness.device import H100


@pytest.fixture(scope="module")
def usage(tmp_path_factory):
    out = tmp_path_factory.mktemp("inspect") / "usage.json"
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0"}
    # every dtype: a rung is compiled for those its needs() declare (bfloat16: flash2's uint16 bits)
    proc = subprocess.run([sys.executable, "-m", "workbench.inspect", "--json", str(out),
                           "--dtype", "float32", "float16", "bfloat16"],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def check_every_rung_compiled(usage):
    from workbench import LADDER

    assert {u["rung"] for u in usage} == {r.name for r in LADDER}
    assert {(u["dtype"], u["head_dim"]) for u in usage} == {
        (t, d) for t in ("float32", "float16", "bfloat16") for d in (64, 128)}
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
            for d in (64, 128):
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
