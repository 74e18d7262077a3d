#!/usr/bin/env python3
"""Issue 8, the tensor-core rung on a GPU: flash2_mma verified against float64, then its variants
timed beside SDPA flash and cuDNN at the seed shape, in one process.

    python3 scripts/gpu_mma.py OUTDIR [--quick]

1. verify: flash2_mma at its default config on odd shapes (Nq, Nkv not multiples of a tile,
   Nq ≠ Nkv, causal, window, GQA/MQA, D = 32/64/128, float16 and bfloat16 when the harness takes it).
2. time: B=8 H=32 N=4096 D=64 float16 (non-causal and causal), each config variant and the peers
   interleaved round-robin (so clock drift is shared), median of the rounds' medians.
Writes OUTDIR/mma.json (provenance, every report and timing) and prints a short table last.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import traceback

import numpy as np

import workbench
from workbench import Problem
from workbench.harness import device, peers, runner, timing, verify
from workbench.kernels import Rung, flash2_mma

OUT = sys.argv[1] if len(sys.argv) > 1 else "out-mma"
QUICK = "--quick" in sys.argv
os.makedirs(OUT, exist_ok=True)
T0 = time.time()
RUNG = next((r for r in workbench.LADDER if r.name == "flash2_mma"), None) or Rung(
    6, "flash2_mma", flash2_mma.LESSON, flash2_mma)
RESULT = {"provenance": device.provenance(), "command": " ".join(["python3"] + sys.argv),
          "verify": [], "timing": [], "env": {}}


def log(*a):
    print(f"[{time.time() - T0:6.1f}s]", *a, flush=True)


def save():
    with open(os.path.join(OUT, "mma.json"), "w") as f:
        json.dump(RESULT, f, indent=1, default=str)


for mod in ("ml_dtypes",):
    try:
        __import__(mod)
        RESULT["env"][mod] = True
    except ImportError:
        RESULT["env"][mod] = False
RESULT["env"]["ncu"] = shutil.which("ncu")
log("env", RESULT["env"])

# 1. Verification.
CASES = [
    Problem(2, 4, 4, 1000, 1000, 64, "float16"),
    Problem(1, 4, 2, 300, 700, 64, "float16", causal=True),
    Problem(1, 4, 1, 700, 300, 64, "float16", causal=True),
    Problem(2, 8, 2, 513, 513, 128, "float16"),
    Problem(1, 2, 2, 777, 777, 32, "float16", window=(64, 0)),
    Problem(1, 2, 1, 1, 37, 64, "float16"),
    Problem(1, 2, 2, 7, 7, 64, "float16", causal=True),
    Problem(1, 2, 2, 130, 200, 64, "float16", window=(3, 5)),
]
if "bfloat16" in getattr(workbench.problem, "DTYPES", ()):
    CASES += [Problem(2, 4, 2, 1000, 999, 64, "bfloat16", causal=True),
              Problem(1, 2, 2, 257, 257, 128, "bfloat16")]
D128 = {"Bc": 32, "stages": 1, "warps_per_sm": 8}
CONFIGS = [None, {"Br": 128, "Bc": 32, "MT": 2, "warps_per_sm": 8}] if not QUICK else [None]
for i, p in enumerate(CASES):
    for cfg in CONFIGS:
        cfg = {**(cfg or {}), **(D128 if p.head_dim == 128 else {})} or None
        if cfg and p.head_dim == 128 and cfg.get("MT") == 2:
            cfg["MT"], cfg["Br"] = 1, 64
        try:
            rep = verify.check(RUNG, p, seed=11 + i, config=cfg)
            RESULT["verify"].append({"problem": p.describe(), "config": cfg, "passed": rep.passed,
                                     "report": rep.as_dict()})
            log("verify", p.describe(), cfg, "PASS" if rep.passed else "FAIL", str(rep).splitlines()[0][:150])
        except Exception as exc:  # noqa: BLE001 - record and go on
            RESULT["verify"].append({"problem": p.describe(), "config": cfg, "passed": False,
                                     "error": traceback.format_exc()})
            log("verify", p.describe(), cfg, "ERROR", repr(exc)[:300])
        save()

# 2. Timing: variants and peers, round-robin.
from numba import cuda  # noqa: E402
import torch  # noqa: E402

VARIANTS = [dict(), dict(stages=1), dict(stages=1, warps_per_sm=12), dict(stages=1, warps_per_sm=8),
            dict(Br=128, Bc=32, MT=2, warps_per_sm=8), dict(Br=128, Bc=32, MT=2, stages=1, warps_per_sm=8),
            # issue 20: dynamic shared memory above 48 KiB (2 CTAs of 4 warps per SM, 0 spills at
            # sm_90 against the default's 148 bytes): a 2-stage ring of 128-key tiles, or 32 rows
            # per warp with a 2-stage ring of 64-key tiles
            dict(Bc=128, stages=2), dict(Br=128, MT=2, Bc=64, stages=2, warps_per_sm=8)]
if QUICK:
    VARIANTS = VARIANTS[:2]
ROUNDS = 3
for causal in (False, True):
    p = Problem(8, 32, 32, 4096, 4096, 64, "float16", causal=causal)
    g = torch.Generator(device="cuda").manual_seed(0)
    tq, tk, tv = (torch.randn(p.q_shape, device="cuda", dtype=torch.float16, generator=g) for _ in range(3))
    to = torch.empty_like(tq)
    tl = torch.empty(p.lse_shape, device="cuda", dtype=torch.float32)
    dq, dk, dv, do, dl = (cuda.as_cuda_array(x) for x in (tq, tk, tv, to, tl))
    calls = {}
    for var in VARIANTS:
        name = "flash2_mma" + ("" if not var else " " + ",".join(f"{k}={v}" for k, v in var.items()))
        try:
            cfg = runner.check_config(RUNG, p, var)
            pool = runner.Pool()
            runner.run(RUNG, p, cfg, dq, dk, dv, do, dl, pool=pool)
            cuda.synchronize()
            calls[name] = (lambda cfg=cfg, pool=pool: runner.run(RUNG, p, cfg, dq, dk, dv, do, dl, pool=pool))
        except Exception as exc:  # noqa: BLE001
            RESULT["timing"].append({"kernel": name, "causal": causal, "error": repr(exc)[:300]})
            log(name, "ERROR", repr(exc)[:300])
    for peer in ("sdpa-flash", "sdpa-cudnn"):
        try:
            calls[peer] = peers.build(peer, p, dq, dk, dv)
        except Exception as exc:  # noqa: BLE001
            log(peer, "n/a", repr(exc)[:200])
    samples = {n: [] for n in calls}
    for _ in range(ROUNDS):
        for n, fn in calls.items():
            samples[n].append(timing.time_call(fn, repeat=10, warmup=1).median_ms)
    for n, ms in samples.items():
        med = float(np.median(ms))
        RESULT["timing"].append({"kernel": n, "causal": causal, "problem": p.describe(), "round_medians_ms": ms,
                                 "median_ms": med, "tflops": p.flops() / (med * 1e-3) / 1e12})
    save()
    del tq, tk, tv, to, tl, dq, dk, dv, do, dl, calls
    torch.cuda.empty_cache()

log("done")
print(f"\n{'kernel':40s} {'causal':6s} {'ms':>8s} {'TFLOP/s':>8s}")
for r in RESULT["timing"]:
    if "median_ms" in r:
        print(f"{r['kernel']:40s} {str(r['causal']):6s} {r['median_ms']:8.3f} {r['tflops']:8.1f}")
print("verify:", sum(v["passed"] for v in RESULT["verify"]), "/", len(RESULT["verify"]), "passed")
