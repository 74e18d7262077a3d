#!/usr/bin/env python3
"""Issue 8, target 1: flash2's float32 variants against SDPA's efficient backend, in one process.

    python scripts/gpu_perf_flash2.py OUTDIR            (an H100; about 2-3 minutes)

1. verify: every variant in VARIANTS (experiments/flash2_variants.py: the flash2 kernel as issue 8
   measured it, with every variant selectable; PERF_NOTES.md, "v1 candidates", predicts
   each) with workbench.harness.verify.check on two odd shapes (N = 1000, GQA; and causal).
2. time: B=8 H=32 N=4096 D=64 float32 non-causal, every variant and SDPA efficient (float32)
   interleaved round-robin (ROUNDS rounds of REPEAT timed calls each, the order rotated every
   round, so clock drift is shared), with the harness's timing (workbench.harness.timing: CUDA
   events, L2 flushed before every call), the median over all of a kernel's calls; then a causal
   row for v0, the best guesses and SDPA.
3. resources as the driver sees them (registers, shared and local memory, CTAs per SM), and the
   SM clock (nvidia-smi) before and after the timing.
4. if `ncu` is on PATH: Nsight Compute on one launch of v0 and of BEST_GUESS (warp states,
   scheduler, occupancy, speed of light, shared-memory wavefronts), text under OUTDIR.

Writes OUTDIR/perf_flash2.json (provenance, the exact command, every report and timing) and prints
a short table last. Variant names: u = shared_index UNSIGNED, a = row_reduce SHUFFLE,
b = kv_buffers 2, c = stages 2, d8 = d_step 8, rm8 = RM 8 (64-thread CTAs), wN = warps_per_sm N.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # experiments/ lives at the repository root
    sys.path.insert(0, ROOT)
from experiments import flash2_variants  # noqa: E402  (the flash2 kernel these variants ran)

VARIANTS = flash2_variants.VARIANTS  # name: config over flash2_variants.DEFAULT_CONFIG
BEST_GUESS = "rm8-ua"
CAUSAL = ("v0", "uab", "rm8-ua", "rm8-uab")
PEER = "sdpa-efficient"
ROUNDS, REPEAT = 3, 5
NCU_SHAPE = (2, 32, 32, 4096, 4096, 64)  # B, H, Hkv, Nq, Nkv, D of the one profiled launch
NCU_TIMEOUT_S = 90
NCU_SECTIONS = ("SpeedOfLight", "WarpStateStats", "SchedulerStats", "Occupancy",
                "MemoryWorkloadAnalysis_Tables")
NCU_METRICS = ("smsp__inst_executed.sum", "smsp__sass_thread_inst_executed_op_ffma_pred_on.sum",
               "smsp__inst_executed_op_shared_ld.sum",
               "l1tex__data_pipe_lsu_wavefronts_mem_shared_op_ld.sum",
               "l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum",
               "sm__cycles_elapsed.avg.per_second")


def _problems():
    from workbench import Problem

    seed_shape = dict(batch=8, heads=32, seq_q=4096, head_dim=64, dtype="float32")
    return Problem(**seed_shape), Problem(**seed_shape, causal=True)


def _check_problems():
    from workbench import Problem

    return (Problem(2, 4, 2, 1000, 1000, 64, "float32"),
            Problem(1, 3, 3, 1000, 1000, 64, "float32", causal=True))


def ncu_launch(name):
    """One flash2 launch of variant `name` (what ncu profiles): NCU_SHAPE in float32."""
    import numpy as np
    from numba import cuda

    from workbench import Problem
    from workbench.harness import runner

    p = Problem(*NCU_SHAPE, dtype="float32")
    rung = flash2_variants.rung()
    cfg = runner.check_config(rung, p, VARIANTS[name])
    q, k, v = (cuda.to_device(x) for x in p.make_inputs(1))
    o, lse = cuda.device_array(p.q_shape, np.float32), cuda.device_array(p.lse_shape, np.float32)
    runner.run(rung, p, cfg, q, k, v, o, lse)
    cuda.synchronize()


def smi_clocks():
    """SM clock, its maximum, power and temperature from nvidia-smi (None without it)."""
    if not shutil.which("nvidia-smi"):
        return None
    q = "clocks.sm,clocks.max.sm,power.draw,temperature.gpu,clocks_throttle_reasons.active"
    proc = subprocess.run(["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader"],
                          capture_output=True, text=True, timeout=30)
    return proc.stdout.strip() or proc.stderr.strip()


def main(out_dir) -> int:
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "0")
    import numpy as np
    from numba import cuda

    import workbench
    from workbench.harness import device, peers, runner, timing, verify
    from workbench.harness.occupancy import occupancy

    if workbench.mode() != "gpu":
        print("scripts/gpu_perf_flash2.py needs a CUDA GPU", file=sys.stderr)
        return 2
    os.makedirs(out_dir, exist_ok=True)
    t0 = time.time()

    def log(*a):
        print(f"[{time.time() - t0:6.1f}s]", *a, flush=True)

    rung = flash2_variants.rung()
    result = {"provenance": device.provenance(),
              "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
              "variants": VARIANTS, "best_guess": BEST_GUESS, "peer": PEER,
              "rounds": ROUNDS, "repeat": REPEAT, "verify": [], "resources": {}, "timing": [],
              "clocks": {}, "ncu": {}}
    path = os.path.join(out_dir, "perf_flash2.json")

    def save():
        with open(path, "w") as f:
            json.dump(result, f, indent=1, default=str)

    # 1. Verify every variant (this also compiles them) on odd shapes; variant-major inside a
    #    problem so the float64 truth is computed once per problem.
    checks = _check_problems()
    failed = set()
    for problem in checks:
        for name, cfg in VARIANTS.items():
            report = verify.check(rung, problem, seed=11, config=cfg)
            result["verify"].append({"variant": name, "problem": problem.describe(),
                                     "passed": report.passed, "report": report.as_dict()})
            if not report.passed:
                failed.add(name)
                log("FAIL", name, problem.describe(), str(report)[:300])
    log("verified", len(VARIANTS), "variants on", len(checks), "shapes; failed:", sorted(failed))

    # 2. Timing, interleaved.
    ctx = cuda.current_context()
    plain, causal = _problems()

    def timed_calls(problem):
        q, k, v = (cuda.to_device(x) for x in problem.make_inputs(0))
        o = cuda.device_array(problem.q_shape, np.float32)
        lse = cuda.device_array(problem.lse_shape, np.float32)
        calls = {}
        for name in (VARIANTS if problem is plain else CAUSAL):
            if name in failed:
                continue
            cfg = runner.check_config(rung, problem, VARIANTS[name])
            pool = runner.Pool()
            calls[name] = (lambda c=cfg, pl=pool: runner.run(rung, problem, c, q, k, v, o, lse,
                                                              pool=pl))
            if problem is plain:  # the driver's view of the compiled kernel
                try:
                    (launch,) = runner.plan(rung, problem, cfg)
                    f = launch.kernel.compile(launch.argtypes)._codelibrary.get_cufunc()
                    ours = occupancy(launch.threads, f.attrs.regs, f.attrs.shared)
                    result["resources"][name] = {
                        "threads": launch.threads, "registers": f.attrs.regs,
                        "shared_bytes": f.attrs.shared, "local_bytes": f.attrs.local,
                        "ctas_per_sm": int(ctx.get_active_blocks_per_multiprocessor(
                            f, launch.threads, 0)),
                        "ctas_per_sm_model": ours.blocks_per_sm, "limited_by": ours.limited_by}
                except Exception as exc:  # noqa: BLE001 - resources are a side note to the timing
                    result["resources"][name] = {"error": repr(exc)[:300]}
        try:
            calls[PEER] = peers.build(PEER, problem, q, k, v)
        except peers.NotApplicable as exc:
            result.setdefault("peer_errors", []).append(str(exc))
        samples = {name: [] for name in calls}
        names = list(calls)
        for r in range(ROUNDS):
            for name in names[r % len(names):] + names[:r % len(names)]:
                t = timing.time_call(calls[name], repeat=REPEAT, warmup=1)
                samples[name].extend(t.samples_ms)
        rows = []
        peer_ms = (timing.summarize(samples[PEER]).median_ms if PEER in samples else None)
        for name in names:
            t = timing.summarize(samples[name])
            rows.append({"kernel": name, "config": VARIANTS.get(name), "problem": problem.describe(),
                         "causal": problem.causal, **t.as_dict(),
                         "tflops": problem.flops() / (t.median_ms * 1e-3) / 1e12,
                         "ratio_vs_sdpa_efficient": (peer_ms / t.median_ms if peer_ms else None),
                         "samples_ms": list(t.samples_ms)})
        del q, k, v, o, lse
        runner.release_memory()
        return rows

    result["clocks"]["before"] = smi_clocks()
    result["timing"] += timed_calls(plain)
    result["clocks"]["after_plain"] = smi_clocks()
    log("timed", plain.describe())
    save()
    result["timing"] += timed_calls(causal)
    result["clocks"]["after_causal"] = smi_clocks()
    log("timed", causal.describe())
    save()

    # 4. Nsight Compute, one launch each, in subprocesses (skipped without ncu).
    ncu = shutil.which("ncu")
    result["ncu"]["path"] = ncu
    if ncu:
        for name in ("v0", BEST_GUESS):
            base = [ncu, "--clock-control", "none"]
            for s in NCU_SECTIONS:
                base += ["--section", s]
            base += ["-k", "regex:flash2", "-c", "1"]
            target = [sys.executable, os.path.abspath(__file__), "--ncu-launch", name]
            attempts = (base + ["--metrics", ",".join(NCU_METRICS)] + target, base + target)
            for cmd in attempts:
                try:
                    proc = subprocess.run(cmd, capture_output=True, text=True,
                                          timeout=NCU_TIMEOUT_S)
                    rc, text = proc.returncode, proc.stdout + "\n" + proc.stderr
                except subprocess.TimeoutExpired as exc:
                    rc, text = "timeout", str(exc)
                with open(os.path.join(out_dir, f"ncu-{name}.txt"), "w") as f:
                    f.write(" ".join(cmd) + "\n\n" + text)
                result["ncu"][name] = {"command": " ".join(cmd), "rc": rc}
                if rc == "timeout" or (rc == 0 and "==ERROR==" not in text):
                    break
            log("ncu", name, result["ncu"][name]["rc"])
    else:
        log("ncu not on PATH: skipped")
    save()

    # Summary table, last.
    print(f"\nflash2 float32 variants vs {PEER} (B=8 H=32 N=4096 D=64), "
          f"median of {ROUNDS}x{REPEAT} interleaved calls; clocks: {result['clocks'].get('before')}")
    print(f"{'kernel':<16}{'mask':<8}{'ms':>8}{'p20-p80':>16}{'TFLOP/s':>9}{'vs SDPA':>9}"
          f"{'regs':>6}{'smem':>7}{'CTA/SM':>7}")
    for r in result["timing"]:
        res = result["resources"].get(r["kernel"], {})
        ratio = r["ratio_vs_sdpa_efficient"]
        print(f"{r['kernel']:<16}{'causal' if r['causal'] else '-':<8}{r['median_ms']:8.2f}"
              f"{r['p20_ms']:8.2f}-{r['p80_ms']:<7.2f}{r['tflops']:9.1f}"
              f"{(f'{ratio:.3f}x' if ratio else '-'):>9}{res.get('registers', ''):>6}"
              f"{res.get('shared_bytes', ''):>7}{res.get('ctas_per_sm', ''):>7}")
    print(f"verify failures: {sorted(failed) or 'none'}; wrote {path} ({time.time() - t0:.0f}s)")
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--ncu-launch":
        os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "0")
        ncu_launch(sys.argv[2])
    elif len(sys.argv) == 2 and not sys.argv[1].startswith("-"):
        sys.exit(main(sys.argv[1]))
    else:
        print(__doc__)
        sys.exit(2)
