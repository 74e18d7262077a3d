#!/usr/bin/env python3
"""Issue 14: flash2's old default, the new flash2 and the new flash1, in one process on one GPU.

    python scripts/gpu_flash12.py OUTDIR            (about 1-2 minutes, most of it compiling)

KERNELS: "flash2-old" is experiments/flash2_variants.py at OLD_DEFAULT (the measured "rm8-ua", the
kernel flash2 ran before the refactor), "flash2" and "flash1" are workbench/kernels/flash{2,1}.py
at their DEFAULT_CONFIG.

1. verify: each kernel against float64 (workbench.reference.attention) on small odd shapes
   (lengths not multiples of any tile, GQA, causal and window masks, float32/float16, and for the
   new rungs bfloat16 and D = 128), O and LSE poisoned with NaN before the launch, with the
   harness's tolerances; a kernel that fails is not timed.
2. time: the seed config B=8 H=32 N=4096 D=64, non-causal, float32 and float16. No harness code
   on this path (its API moves): module.launch(problem, config, q, k, v, o, lse, gpu) with a tiny
   launcher of our own (gpu.empty -> cuda.device_array, kept between calls like the harness's
   pool; gpu.launch -> kernel[grid, block](*args)), CUDA events around each call; WARMUP calls,
   then ROUNDS rounds of REPEAT calls of each kernel, interleaved (the order rotated every round,
   so clock drift is shared). Per point: median, p20, p80 of the ROUNDS·REPEAT samples.
3. flash1's device-memory traffic (its loop order's price, per KV step and per call: Q_i re-read,
   O_i (float32), m_i, l_i read and written back, K_j/V_j once) and the bandwidth it achieves.
4. the driver's view of each compiled kernel (registers, shared and local memory, CTAs per SM).

Writes OUTDIR/flash12.json (provenance: device, driver, numba / numba-cuda / torch versions, date,
exact command; every verification and timing) and prints a table last. Exit 1 if a check fails.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # experiments/ lives at the repository root
    sys.path.insert(0, ROOT)

OLD_DEFAULT = "rm8-ua"  # experiments.flash2_variants.VARIANTS: flash2's default before issue 14
KERNELS = ("flash2-old", "flash2", "flash1")
SEED = dict(batch=8, heads=32, kv_heads=32, seq_q=4096, seq_kv=4096, head_dim=64)
DTYPES = ("float32", "float16")
WARMUP, ROUNDS, REPEAT = 2, 4, 5  # 20 timed calls per kernel and dtype


def checks():
    """(kernel names, Problem) verified before any timing."""
    from workbench import Problem

    every = KERNELS
    new = ("flash2", "flash1")
    return [
        (every, Problem(2, 4, 2, 333, 333, 64, "float32", causal=True)),
        (every, Problem(1, 4, 4, 257, 300, 64, "float16")),
        (every, Problem(1, 2, 1, 200, 131, 64, "float16", window=(40, 3))),
        (new, Problem(1, 4, 2, 161, 150, 64, "bfloat16", causal=True)),
        (new, Problem(1, 2, 2, 150, 161, 128, "float32", window=(17, 0))),
    ]


class Launcher:
    """What a rung's launch() needs: empty() and launch(). Scratch arrays are allocated on the first
    call and handed out again, in order, on the next calls (so timed calls measure kernels, not
    cudaMalloc); every launch is recorded (kernel, grid, block, args) for the resource report."""

    def __init__(self):
        self.arrays, self.next, self.launches = [], 0, []

    def start(self):
        self.next, self.launches = 0, []
        return self

    def empty(self, shape, dtype):
        from numba import cuda

        if self.next == len(self.arrays):
            self.arrays.append(cuda.device_array(shape, dtype))
        arr = self.arrays[self.next]
        self.next += 1
        return arr

    def launch(self, kernel, grid, block, *args):
        grid = grid if isinstance(grid, tuple) else (grid,)
        kernel[grid, block](*args)
        self.launches.append((kernel, grid, block, args))


def module_and_config(name):
    import importlib

    if name == "flash2-old":
        from experiments import flash2_variants as fv

        return fv, {**fv.DEFAULT_CONFIG, **fv.VARIANTS[OLD_DEFAULT]}
    module = importlib.import_module(f"workbench.kernels.{name}")
    return module, dict(module.DEFAULT_CONFIG)


def device_inputs(problem, seed):
    from numba import cuda

    from workbench import dtypes

    host = problem.make_inputs(seed)
    return host, [cuda.to_device(dtypes.to_bits(x)) for x in host]


def poisoned(shape, dtype_name):
    import numpy as np
    from numba import cuda

    from workbench import dtypes

    host = np.full(shape, np.nan, dtypes.host_dtype(dtype_name))
    return cuda.to_device(dtypes.to_bits(host))


def verify(name, problem, seed=3):
    """One launch on NaN-poisoned O and LSE, compared with float64 (the harness's tolerances)."""
    import numpy as np
    from numba import cuda

    from workbench import dtypes, reference
    from workbench.harness.verify import TOLERANCE

    module, config = module_and_config(name)
    (q, k, v), (dq, dk, dv) = device_inputs(problem, seed)
    o = poisoned(problem.q_shape, problem.dtype)
    lse = poisoned(problem.lse_shape, "float32")
    module.launch(problem, config, dq, dk, dv, o, lse, Launcher())
    cuda.synchronize()
    o_h = np.asarray(dtypes.from_bits(o.copy_to_host(), problem.dtype), np.float64)
    lse_h = lse.copy_to_host().astype(np.float64)
    ref_o, ref_lse = reference.attention(q, k, v, causal=problem.causal, window=problem.window,
                                         scale=problem.scale)
    tol = TOLERANCE[problem.dtype]
    finite = np.isfinite(ref_lse)
    rel_fro = float(np.linalg.norm(o_h - ref_o) / max(np.linalg.norm(ref_o), 1e-30))
    max_abs = float(np.nanmax(np.abs(o_h - ref_o))) if not np.isnan(o_h).all() else float("nan")
    lse_err = float(np.max(np.abs(lse_h[finite] - ref_lse[finite]))) if finite.any() else 0.0
    passed = bool(not np.isnan(o_h).any() and not np.isnan(lse_h).any()
                  and np.array_equal(np.isfinite(lse_h), finite)
                  and rel_fro <= tol.rel_fro and lse_err <= tol.lse_atol)
    return {"kernel": name, "problem": problem.describe(), "passed": passed, "rel_fro": rel_fro,
            "max_abs": max_abs, "lse_max_abs": lse_err, "tolerance_rel_fro": tol.rel_fro}


def flash1_traffic(problem, config):
    """Device-memory bytes flash1 moves per KV step and per call, by its loop order (a model: every
    access counted once, as if nothing hit in L2; the K/V tiles are read once per head)."""
    from workbench.kernels import flash1

    p = problem
    Br, Bc = flash1.tiles(p, config)[:2]
    item = 2 if p.dtype == "float16" else 4
    Tc = -(-p.seq_kv // Bc)
    heads = p.batch * p.heads
    per_step = {  # one KV step of one head (a sweep over all its Q blocks)
        "Q_i read": p.seq_q * p.head_dim * item,
        "O_i read (float32)": p.seq_q * p.head_dim * 4,
        "O_i written (float32)": p.seq_q * p.head_dim * 4,
        "m_i, l_i read": 2 * p.seq_q * 4,
        "m_i, l_i written": 2 * p.seq_q * 4,
        "K_j, V_j read": 2 * Bc * p.head_dim * item,
    }
    # The first step reads no O, m, l back; the last writes O in the output's dtype and LSE.
    call = heads * (Tc * sum(per_step.values())
                    - p.seq_q * (p.head_dim * 4 + 8)  # no read back at j = 0
                    - p.seq_q * (p.head_dim * (4 - item) + 8 - 4))  # last: O in item, LSE only
    compulsory = heads * (p.seq_q * p.head_dim * item * 2 + p.seq_kv * p.head_dim * item * 2
                          + p.seq_q * 4)
    return {"Br": Br, "Bc": Bc, "Tc": Tc, "per_kv_step_per_head_bytes": per_step,
            "per_kv_step_per_head_total": sum(per_step.values()), "per_call_bytes": call,
            "compulsory_bytes": compulsory}


def resources(launcher):
    """The driver's view of the (one) kernel a launcher ran last."""
    from numba import cuda

    kernel, grid, block, args = launcher.launches[-1]
    info = {"grid": list(grid), "block": block}
    try:
        (compiled,) = kernel.overloads.values()
        f = compiled._codelibrary.get_cufunc()
        info.update(registers=f.attrs.regs, shared_bytes=f.attrs.shared, local_bytes=f.attrs.local,
                    ctas_per_sm=int(cuda.current_context().get_active_blocks_per_multiprocessor(
                        f, block, 0)))
    except Exception as exc:  # noqa: BLE001 - a side note to the timing
        info["error"] = repr(exc)[:300]
    return info


def percentile(xs, q):
    import numpy as np

    return float(np.percentile(np.asarray(xs), q))


def provenance():
    from importlib.metadata import PackageNotFoundError, version

    import numba
    from numba import cuda

    info = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
            "cwd": os.getcwd(), "python": platform.python_version(), "numba": numba.__version__}
    for dist in ("numba-cuda", "numpy", "torch"):
        try:
            info[dist] = version(dist)
        except PackageNotFoundError:
            info[dist] = None
    dev = cuda.get_current_device()
    info["device"] = dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name)
    info["compute_capability"] = list(dev.compute_capability)
    info["sm_count"] = dev.MULTIPROCESSOR_COUNT
    info["sm_clock_khz"] = dev.CLOCK_RATE
    try:
        info["cuda_driver_api"] = ".".join(map(str, cuda.cudadrv.driver.driver.get_version()))
        with open("/proc/driver/nvidia/version") as f:
            import re

            info["driver"] = re.search(r"\b(\d+\.\d+(?:\.\d+)?)\b", f.readline())[1]
    except Exception:  # noqa: BLE001
        info.setdefault("driver", "unknown")
    try:
        import subprocess

        q = "clocks.sm,clocks.max.sm,power.draw,temperature.gpu"
        info["nvidia_smi"] = subprocess.run(
            ["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader"], capture_output=True,
            text=True, timeout=20).stdout.strip()
    except Exception:  # noqa: BLE001
        pass
    return info


def main(out_dir) -> int:
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "0")
    import workbench
    from numba import cuda

    if workbench.mode() != "gpu" or not cuda.is_available():
        print("scripts/gpu_flash12.py needs a CUDA GPU", file=sys.stderr)
        return 2
    import numpy as np

    from workbench import Problem

    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "flash12.json")
    t0 = time.time()

    def log(*a):
        print(f"[{time.time() - t0:6.1f}s]", *a, flush=True)

    result = {"provenance": provenance(), "kernels": {}, "old_default": OLD_DEFAULT,
              "seed": SEED, "warmup": WARMUP, "rounds": ROUNDS, "repeat": REPEAT,
              "timing_method": "CUDA events around module.launch(...) with the script's own "
                               "launcher; no L2 flush; interleaved rounds",
              "verify": [], "timing": [], "resources": {}, "flash1_traffic": {}}
    for name in KERNELS:
        module, config = module_and_config(name)
        result["kernels"][name] = {"module": module.__name__, "config": config}

    def save():
        with open(path, "w") as f:
            json.dump(result, f, indent=1, default=str)

    failed = set()
    for names, problem in checks():
        for name in names:
            r = verify(name, problem)
            result["verify"].append(r)
            if not r["passed"]:
                failed.add(name)
            log("verify", "PASS" if r["passed"] else "FAIL", name, r["problem"],
                f"rel_fro={r['rel_fro']:.2e} lse={r['lse_max_abs']:.2e}")
    save()

    for dtype in DTYPES:
        problem = Problem(SEED["batch"], SEED["heads"], SEED["kv_heads"], SEED["seq_q"],
                          SEED["seq_kv"], SEED["head_dim"], dtype)
        _, (q, k, v) = device_inputs(problem, 0)
        o = cuda.device_array(problem.q_shape, q.dtype)
        lse = cuda.device_array(problem.lse_shape, np.float32)
        names = [n for n in KERNELS if n not in failed]
        calls, launchers = {}, {}
        for name in names:
            module, config = module_and_config(name)
            launchers[name] = gpu = Launcher()
            calls[name] = (lambda m=module, c=config, g=gpu:
                           m.launch(problem, c, q, k, v, o, lse, g.start()))
            for _ in range(WARMUP):
                calls[name]()
            cuda.synchronize()
            result["resources"][f"{name} {dtype}"] = resources(gpu)
        log("compiled and warmed up", dtype)
        samples = {n: [] for n in names}
        for r in range(ROUNDS):
            for name in names[r % len(names):] + names[:r % len(names)]:
                for _ in range(REPEAT):
                    start, end = cuda.event(), cuda.event()
                    start.record()
                    calls[name]()
                    end.record()
                    end.synchronize()
                    samples[name].append(start.elapsed_time(end))
        for name in names:
            ms = samples[name]
            result["timing"].append({
                "kernel": name, "dtype": dtype, "problem": problem.describe(),
                "median_ms": percentile(ms, 50), "p20_ms": percentile(ms, 20),
                "p80_ms": percentile(ms, 80), "tflops": problem.flops() / (percentile(ms, 50)
                                                                           * 1e-3) / 1e12,
                "samples_ms": ms})
        if "flash1" in names:
            from workbench.kernels import flash1

            model = flash1_traffic(problem, flash1.DEFAULT_CONFIG)
            t1 = percentile(samples["flash1"], 50) * 1e-3
            model["achieved_GBps"] = model["per_call_bytes"] / t1 / 1e9
            result["flash1_traffic"][dtype] = model
        log("timed", dtype)
        save()
        del q, k, v, o, lse, launchers, calls

    by = {(t["kernel"], t["dtype"]): t for t in result["timing"]}
    summary = []
    for dtype in DTYPES:
        row = {"dtype": dtype}
        old, new, f1 = (by.get((n, dtype)) for n in KERNELS)
        if old and new:
            row["flash2_new_over_old"] = new["median_ms"] / old["median_ms"]
        if new and f1:
            row["flash1_over_flash2"] = f1["median_ms"] / new["median_ms"]
        summary.append(row)
    result["summary"] = summary
    save()

    print(f"\n{result['provenance']['device']}, B=8 H=32 N=4096 D=64 non-causal; median (p20-p80) "
          f"of {ROUNDS}x{REPEAT} interleaved calls")
    print(f"{'kernel':<12}{'dtype':<9}{'ms':>9}{'p20-p80':>17}{'TFLOP/s':>9}{'regs':>6}{'smem':>7}"
          f"{'CTA/SM':>7}")
    for t in result["timing"]:
        res = result["resources"].get(f"{t['kernel']} {t['dtype']}", {})
        print(f"{t['kernel']:<12}{t['dtype']:<9}{t['median_ms']:9.2f}{t['p20_ms']:8.2f}-"
              f"{t['p80_ms']:<8.2f}{t['tflops']:9.1f}{res.get('registers', ''):>6}"
              f"{res.get('shared_bytes', ''):>7}{res.get('ctas_per_sm', ''):>7}")
    for row in summary:
        print(row)
    for dtype, m in result["flash1_traffic"].items():
        print(f"flash1 {dtype}: {m['per_kv_step_per_head_total'] / 1e6:.2f} MB per KV step per "
              f"head, {m['per_call_bytes'] / 1e9:.1f} GB per call, {m['achieved_GBps']:.0f} GB/s")
    print(f"verify failures: {sorted(failed) or 'none'}; wrote {path} ({time.time() - t0:.0f}s)")
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) == 2 and not sys.argv[1].startswith("-"):
        sys.exit(main(sys.argv[1]))
    print(__doc__)
    sys.exit(2)
