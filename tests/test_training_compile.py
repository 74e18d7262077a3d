"""The backward and decode kernels compile for sm_90 at their default configs with no spills and
within 48 KiB of static shared memory (a subprocess with the simulator off, as test_compile.py)."""

import json
import os
import subprocess
import sys

from workbench.harness.device import H100

SCRIPT = r"""
import json, os, sys
os.environ["NUMBA_ENABLE_CUDASIM"] = "0"
from workbench.problem import DecodeProblem, Problem
from workbench.bench.resources import compile_usage
from workbench.harness import runner
from workbench.kernels import get
out, seen = [], set()
def add(kind, launches, declared, label):
    for l in launches:
        key = (id(l.kernel), l.argtypes)
        if key in seen:
            continue
        seen.add(key)
        out.append({"kind": kind, "kernel": l.name, "case": label, "declared": declared, **compile_usage(l)})
# The shapes that matter (each distinct kernel once): float16 at D = 64 and 128, float32 at one.
for dtype, d in (("float16", 64), ("float16", 128), ("float32", 128)):
    p = Problem(2, 32, 8, 1024, 1024, d, dtype, causal=True)
    rung = get("flash2_bwd", kind="backward")
    cfg = runner.check_config(rung, p)
    add("backward", runner.plan(rung, p, cfg), rung.module.needs(p, cfg).shared_bytes, p.describe())
for dtype, d, h, hkv, nq in (("float16", 128, 32, 32, 1), ("float16", 128, 64, 8, 1),
                             ("float32", 64, 32, 8, 4)):
    p = DecodeProblem(1, h, hkv, nq, d, 16, 2048, 2048, (32768,), dtype)
    rung = get("paged_decode", kind="decode")
    cfg = runner.check_config(rung, p)
    add("decode", runner.plan(rung, p, cfg), rung.module.needs(p, cfg).shared_bytes, p.describe())
json.dump(out, open(sys.argv[1], "w"))
"""


def test_backward_and_decode_compile_without_spills(tmp_path):
    out = tmp_path / "usage.json"
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(out)], env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    usage = json.loads(out.read_text())
    assert {u["kernel"] for u in usage} >= {"bwd_prep", "bwd_dkdv", "bwd_dq", "paged_decode_split"}
    bad = [u for u in usage if u["spill_bytes"] or u["shared_bytes"] > H100.max_shared_per_block]
    assert not bad, bad
    under = [u for u in usage if u["kernel"] in ("bwd_dkdv", "bwd_dq", "paged_decode_split")
             and u["declared"] < u["shared_bytes"]]
    assert not under, under  # needs().shared_bytes is what the harness checks configs with
