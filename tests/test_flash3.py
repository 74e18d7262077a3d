"""flash3 (rung 7, Hopper: wgmma, TMA, mbarriers, warp specialization) on this machine and on a GPU.

With no GPU (the default tier):
- the simulator refuses it, with the reason, before any input is made (check_config; compare's
  verify suite reports the same line);
- it compiles for sm_90a (a subprocess with the simulator off, as test_compile.py): the linker's
  report (registers, spills: none), no "wgmma serialized" warning, and the SASS (nvdisasm) holds
  the Hopper instructions: HGMMA (wgmma), UTMALDG (TMA loads), SYNCS (mbarrier), USETMAXREG
  (setmaxnreg) and the named barriers of the ping-pong, at D = 64 and 128 in float16; bfloat16 and
  the simpler schedules (ONE_ROLE, IN_ORDER) in the slow tier.
On a GPU (marked gpu): every schedule against float64 over odd N, Nq ≠ Nkv, GQA/MQA, causal,
window, N = 1, D 64/128, float16 and bfloat16.
"""

import json
import os
import subprocess
import sys

import pytest

import workbench
from workbench import Problem
from workbench.harness import runner
from workbench.kernels import flash3, get

SCRIPT = r"""
import json, os, re, sys
os.environ["NUMBA_ENABLE_CUDASIM"] = "0"
from numba import cuda
from cuda.core import Linker, LinkerOptions, ObjectCode
from workbench.problem import Problem
from workbench.harness import runner
from workbench.kernels import get

rung = get("flash3")
cc = rung.module.CC
arch = "sm_%d%d%s" % cc
out = []
for spec in json.loads(sys.argv[2]):
    p = Problem(2, 32, 8, 1000, 1000, spec["D"], spec["dtype"], causal=True)
    cfg = runner.check_config(rung, p, spec["config"])
    (launch,) = runner.plan(rung, p, cfg)
    kernel = launch.kernel
    opts = {k: v for k, v in (kernel.targetoptions or {}).items() if k in ("fastmath", "launch_bounds")}
    objs, _ = cuda.compile_all(kernel.py_func, launch.argtypes, device=False, abi="numba",
                               output="ltoir", cc=cc, **opts)
    linker = Linker(*[o if isinstance(o, ObjectCode) else ObjectCode.from_ltoir(o) for o in objs],
                    options=LinkerOptions(arch=arch, link_time_optimization=True, verbose=True))
    cubin = linker.link("cubin")
    log = linker.get_info_log()
    m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads"
                  r"[\s\S]*?Used (\d+) registers", log)
    row = {**spec, "threads": launch.threads, "shared": launch.shared, "log": log,
           "registers": int(m[4]), "stack_bytes": int(m[1]), "spill_bytes": int(m[2]) + int(m[3])}
    from workbench.bench.resources import nvdisasm_path
    if nvdisasm_path() is not None:
        from numba.cuda.codegen import run_nvdisasm
        sass = run_nvdisasm(cubin, ["-c"])
        row["sass"] = {op: len(re.findall(r"\b" + re.escape(op), sass)) for op in
                       ("HGMMA", "UTMALDG", "SYNCS", "USETMAXREG", "BAR.SYNC", "BAR.ARV", "LDL", "STL")}
        row["setmaxnreg"] = [int(x, 16) for x in re.findall(r"USETMAXREG\.\S+(?: \S+,)? (0x[0-9a-f]+)", sass)]
        row["max_register"] = max(int(r) for r in re.findall(r"\bR(\d+)\b", sass))
    out.append(row)
json.dump(out, open(sys.argv[1], "w"))
"""

DEFAULT = {"warp_specialized": flash3.SPECIALIZED, "pingpong": flash3.PINGPONG,
           "intra_overlap": flash3.OVERLAP}
ONE_ROLE = {"warp_specialized": flash3.ONE_ROLE, "pingpong": flash3.TOGETHER,
            "intra_overlap": flash3.IN_ORDER}
IN_ORDER = {"intra_overlap": flash3.IN_ORDER}


def compile_specs(tmp_path, groups):
    """Each group of specs compiled in its own subprocess (at once: one kernel is ~10 s of CPU)."""
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0"}
    procs = []
    for i, specs in enumerate(groups):
        out = tmp_path / f"flash3-{i}.json"
        procs.append((out, subprocess.Popen([sys.executable, "-c", SCRIPT, str(out), json.dumps(specs)],
                                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                            text=True)))
    rows = []
    for out, proc in procs:
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err[-4000:]
        rows += json.loads(out.read_text())
    return rows


def check_compiled(row):
    where = f"flash3 {row['dtype']} D={row['D']} {row['config']}"
    assert row["spill_bytes"] == 0 and row["stack_bytes"] == 0, (where, row["log"][-2000:])
    assert "serialized" not in row["log"] and "Potential Performance Loss" not in row["log"], \
        (where, row["log"][-2000:])
    assert row["shared"] > 48 * 1024 or row["D"] == 64  # dynamic shared memory, above 48 KiB at D = 128
    sass = row.get("sass")
    if sass is None:
        pytest.skip("nvdisasm is not installed (pip install 'cuda-toolkit[nvdisasm]'): SASS not checked")
    spec = row["config"].get("warp_specialized", flash3.SPECIALIZED) == flash3.SPECIALIZED
    assert sass["HGMMA"] > 0 and sass["UTMALDG"] > 0 and sass["SYNCS"] > 0, (where, sass)
    assert sass["LDL"] == 0 and sass["STL"] == 0, (where, sass)
    if spec:  # the producer gives registers back, the consumers take them
        assert sass["USETMAXREG"] == 2, (where, sass)
        assert sorted(row["setmaxnreg"]) == [flash3.PRODUCER_REGS, flash3.CONSUMER_REGS], (where, row)
        assert row["threads"] == 384 and row["registers"] == 168, (where, row["registers"])
    else:
        assert sass["USETMAXREG"] == 0 and row["threads"] == 256, (where, sass)
    if row["config"].get("pingpong", flash3.PINGPONG) == flash3.PINGPONG and spec:
        assert sass["BAR.SYNC"] > 0 and sass["BAR.ARV"] > 0, (where, sass)


def test_simulator_refuses_flash3_with_the_reason():
    if workbench.mode() != "simulator":
        pytest.skip("simulator only")
    with pytest.raises(ValueError, match=r"cannot run in the simulator: the simulator cannot link "
                                         r"CUDA C\+\+ \(hopper.cu\) and has no wgmma"):
        runner.check_config(get("flash3"), Problem(1, 2, 2, 64, 64, 64, "float16"))


def test_needs_and_rules():
    """Dynamic shared memory as declared (Q, 2 stages of K and V, the barriers, 1 KiB of alignment
    slack); the rules refuse what the kernel cannot do."""
    p = Problem(1, 2, 2, 64, 64, 128, "float16")
    n = flash3.needs(p, flash3.DEFAULT_CONFIG)
    assert n.dynamic_shared and n.shared_bytes == 2 * 128 * 128 * 5 + 8 * 7 + 1024
    assert n.head_dims == (64, 128) and n.dtypes == ("float16", "bfloat16")
    assert all(n.rules.values())
    for bad in ({"Br": 64}, {"Bc": 96}, {"stages": 5}, {"pingpong": flash3.PINGPONG,
                                                        "warp_specialized": flash3.ONE_ROLE}):
        assert not all(flash3.needs(p, {**flash3.DEFAULT_CONFIG, **bad}).rules.values()), bad


def test_compiles_for_sm90a_with_hopper_instructions(tmp_path):
    rows = compile_specs(tmp_path, [[{"D": d, "dtype": "float16", "config": DEFAULT}] for d in (64, 128)])
    assert {r["D"] for r in rows} == {64, 128}
    for row in rows:
        check_compiled(row)


@pytest.mark.slow
def test_compiles_bf16_and_the_simpler_schedules(tmp_path):
    groups = [[{"D": d, "dtype": "bfloat16", "config": DEFAULT},
               {"D": d, "dtype": "float16", "config": ONE_ROLE},
               {"D": d, "dtype": "float16", "config": IN_ORDER}] for d in (64, 128)]
    for row in compile_specs(tmp_path, groups):
        check_compiled(row)


# --- on a GPU -----------------------------------------------------------------------------------

GPU_CASES = [
    Problem(1, 4, 4, 1, 1, 64, "float16"),  # N = 1
    Problem(2, 8, 2, 97, 97, 64, "float16", causal=True),  # odd N, GQA
    Problem(1, 8, 1, 113, 203, 128, "bfloat16", causal=True),  # Nq < Nkv, MQA
    Problem(1, 8, 8, 203, 113, 64, "bfloat16"),  # Nq > Nkv
    Problem(1, 8, 2, 1025, 1025, 128, "float16", window=(256, 0)),  # window
    Problem(2, 4, 4, 300, 300, 128, "float16", window=(17, 5)),  # window with a right side
    Problem(1, 4, 4, 2048, 2048, 64, "bfloat16", causal=True),  # many tiles: the ring wraps
]
SCHEDULES = {"one_role": ONE_ROLE, "in_order": {**IN_ORDER, "pingpong": flash3.TOGETHER},
             "overlap": {"pingpong": flash3.TOGETHER}, "pingpong": IN_ORDER, "fa3": DEFAULT}


@pytest.mark.gpu
@pytest.mark.skipif(workbench.mode() != "gpu", reason="needs a Hopper GPU")
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("problem", GPU_CASES, ids=lambda p: p.describe().replace(" ", "_"))
def test_flash3_matches_float64_on_a_gpu(problem, schedule):
    from workbench.harness import verify

    report = verify.check("flash3", problem, seed=GPU_CASES.index(problem) + 7, config=SCHEDULES[schedule])
    assert report.passed, str(report)
