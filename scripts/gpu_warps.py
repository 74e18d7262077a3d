"""GPU checks for the simulator's warp intrinsics and the occupancy calculator (issue 5).

    python scripts/gpu_warps.py OUT_DIR        (on a machine with a CUDA GPU; ~2-3 min)

1. Shuffle and ballot probes (workbench.sim.probes) on the GPU: every mode at widths 1…32 through
   workbench.kernels.warp, Numba's own four shuffles, and ballot_sync, over operands past the
   segment and the warp (32, 33, −1, random), partial masks, exited lanes and a partial last warp
   (48-thread blocks); int32 and float32. Each lane is compared with NumPy's PTX semantics
   (workbench.sim.warps.reference_shfl) where the result is defined.
2. The same probes (a subset: widths 1 and 16, Numba's own, ballot) in Numba's simulator, in a subprocess, compared
   lane by lane with the GPU's results: the simulator must give the hardware's bits wherever the
   result is defined.
3. The warp-shuffle softmax (workbench.kernels.warp_softmax) on the GPU and in the simulator on the
   same inputs, each against float64 NumPy, and against each other.
4. Occupancy: for every rung's kernels at the default config (D 64 and 128, float32 and float16),
   the driver's cuOccupancyMaxActiveBlocksPerMultiprocessor against workbench.harness.occupancy
   computed from the same kernel's registers and shared memory.

Writes OUT_DIR/warps.json (with provenance) and prints a summary table last. Exit status 1 when
anything disagrees.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np

SIM_WIDTHS = (1, 16)  # with Numba's own shuffles (width 32) and ballot_sync
SOFTMAX_CASES = ((32, 64), (8, 40), (4, 12))  # (lanes per row, threads per block)


def softmax_inputs(seed=5):
    rng = np.random.default_rng(seed)
    s = (rng.standard_normal((37, 77)) * 3).astype(np.float32)
    s[3] = -np.inf  # a row that sees nothing
    s[10, ::3] = -np.inf
    return s


def run_softmax():
    from workbench.kernels.warp_softmax import softmax_rows

    s = softmax_inputs()
    out = {}
    for lanes, threads in SOFTMAX_CASES:
        p = np.full_like(s, np.nan)
        lse = np.full(s.shape[0], np.nan, np.float32)
        softmax_rows(s, p, lse, lanes_per_row=lanes, threads=threads)
        out[f"W{lanes}/T{threads}"] = {"p": p, "lse": lse}
    return out


def softmax_reference():
    s = softmax_inputs().astype(np.float64)
    m = s.max(axis=1, keepdims=True)
    seen = np.isfinite(m[:, 0])
    e = np.exp(s - np.where(seen[:, None], m, 0))
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(seen[:, None], e / e.sum(axis=1, keepdims=True), 0)
        lse = np.where(seen, m[:, 0] + np.log(e.sum(axis=1)), -np.inf)
    return p, lse


def sim_part(path):
    """Runs in a subprocess with NUMBA_ENABLE_CUDASIM=1: the probe subset and the softmax."""
    import workbench  # noqa: F401  (selects the simulator)
    from workbench.sim import probes

    t0 = time.time()
    rows = probes.run(probes.probe_list(widths=SIM_WIDTHS), threads=(48,))
    soft = run_softmax()
    with open(path, "w") as f:
        json.dump({"probes": rows, "softmax": {k: {n: v.tolist() for n, v in d.items()}
                                               for k, d in soft.items()},
                   "seconds": time.time() - t0}, f)


def compare_probes(gpu_rows, sim_rows):
    """Lane by lane, the simulator's probe outputs against the GPU's on the same cases."""
    from workbench.sim import probes

    comparisons = []
    gpu_by_key = {(r["probe"], r["threads"], r["dtype"]): r for r in gpu_rows}
    for r in sim_rows:
        g = gpu_by_key[(r["probe"], r["threads"], r["dtype"])]
        c = probes.cases(r["threads"])
        values = probes.values_for(len(c["masks"]), r["threads"], r["dtype"])
        mode = None if r["probe"] == "ballot_sync" else probes.MODES[r["probe"].split("/")[0].split("_")[-1]]
        width = int(r["probe"].split("/w")[1]) if "/w" in r["probe"] else 32
        _, defined, took = probes.expected("ballot" if mode is None else "shfl", mode, width, values, c)
        gs, ss = np.array(g["out"], np.float64), np.array(r["out"], np.float64)
        comparisons.append({
            "probe": r["probe"], "threads": r["threads"], "dtype": r["dtype"],
            "defined_lanes": int(defined.sum()),
            "sim_vs_gpu_mismatches": int((defined & (gs != ss)).sum()),
            "sim_vs_numpy_mismatches": r["mismatches"],
            "undefined_lanes": int((took & ~defined).sum()),
            "undefined_equal": int((took & ~defined & (gs == ss)).sum()),
            "not_taking_part_changed": int(((~took) & (gs != ss)).sum()),
        })
    return comparisons


def occupancy_checks():
    from numba import cuda

    from workbench import LADDER, Problem
    from workbench.harness import runner
    from workbench.harness.occupancy import occupancy

    ctx = cuda.current_context()
    rows = []
    for rung in LADDER:
        for dtype in ("float32", "float16"):
            for d in (64, 128):
                problem = Problem(batch=8, heads=32, seq_q=4096, head_dim=d, dtype=dtype)
                cfg = runner.check_config(rung, problem, None)
                seen = set()
                for launch in runner.plan(rung, problem, cfg):
                    key = (launch.name, launch.argtypes, launch.threads)
                    if key in seen:
                        continue
                    seen.add(key)
                    cufunc = launch.kernel.compile(launch.argtypes)._codelibrary.get_cufunc()
                    driver = ctx.get_active_blocks_per_multiprocessor(cufunc, launch.threads, 0)
                    ours = occupancy(launch.threads, cufunc.attrs.regs, cufunc.attrs.shared)
                    rows.append({"rung": rung.name, "kernel": launch.name, "dtype": dtype, "D": d,
                                 "threads": launch.threads, "registers": cufunc.attrs.regs,
                                 "shared_bytes": cufunc.attrs.shared, "driver_blocks": int(driver),
                                 "ours_blocks": ours.blocks_per_sm, "ours_limited_by": ours.limited_by,
                                 "match": int(driver) == ours.blocks_per_sm})
    return rows


def main(out_dir):
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "0")
    import workbench
    from workbench.harness.device import provenance
    from workbench.sim import probes

    if workbench.mode() != "gpu":
        print("scripts/gpu_warps.py needs a CUDA GPU", file=sys.stderr)
        return 2
    os.makedirs(out_dir, exist_ok=True)
    t0 = time.time()
    result = {"provenance": provenance()}

    # 1. probes on the GPU against NumPy
    gpu_rows = probes.run(probes.probe_list())
    result["probes_gpu"] = [{k: v for k, v in r.items() if k != "out" or r["mismatches"]}
                            for r in gpu_rows]

    # 2. the simulator, in a subprocess, on the subset
    sim_json = os.path.join(out_dir, "warps-sim.json")
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    t_sim = time.time()
    proc = subprocess.run([sys.executable, __file__, "--sim-part", sim_json], env=env,
                          capture_output=True, text=True, timeout=900)
    result["sim_seconds"] = round(time.time() - t_sim, 1)
    comparisons = []
    if proc.returncode != 0:
        result["sim_error"] = proc.stderr[-4000:]
        sim = None
    else:
        with open(sim_json) as f:
            sim = json.load(f)
        os.remove(sim_json)
        comparisons = compare_probes(gpu_rows, sim["probes"])
    result["probes_sim_vs_gpu"] = comparisons

    # 3. the warp softmax
    p_ref, lse_ref = softmax_reference()
    gpu_soft = run_softmax()
    soft_rows = []
    for name, d in gpu_soft.items():
        row = {"case": name,
               "gpu_p_max_abs_err": float(np.nanmax(np.abs(d["p"] - p_ref))),
               "gpu_lse_max_abs_err": float(np.max(np.abs(np.where(np.isinf(lse_ref), 0, d["lse"] - lse_ref)))),
               "gpu_masked_row_ok": bool((d["p"][3] == 0).all() and d["lse"][3] == -np.inf)}
        if sim is not None:
            sp, sl = np.array(sim["softmax"][name]["p"]), np.array(sim["softmax"][name]["lse"])
            row["sim_p_max_abs_err"] = float(np.nanmax(np.abs(sp - p_ref)))
            row["sim_vs_gpu_p_max_abs_diff"] = float(np.max(np.abs(sp - d["p"])))
            row["sim_vs_gpu_p_bitwise_equal_fraction"] = float(np.mean(sp.astype(np.float32) == d["p"]))
        row["ok"] = row["gpu_p_max_abs_err"] < 1e-5 and row["gpu_lse_max_abs_err"] < 1e-4 \
            and row["gpu_masked_row_ok"] and row.get("sim_p_max_abs_err", 0) < 1e-5
        soft_rows.append(row)
    result["softmax"] = soft_rows

    # 4. occupancy: the driver against the calculator
    result["occupancy"] = occupancy_checks()
    result["seconds"] = round(time.time() - t0, 1)
    with open(os.path.join(out_dir, "warps.json"), "w") as f:
        json.dump(result, f, indent=1)

    gpu_bad = [r for r in gpu_rows if r["mismatches"] or r["untouched_changed"]]
    cmp_bad = [c for c in comparisons if c["sim_vs_gpu_mismatches"] or c["sim_vs_numpy_mismatches"]
               or c["not_taking_part_changed"]]
    occ_bad = [r for r in result["occupancy"] if not r["match"]]
    soft_bad = [r for r in soft_rows if not r["ok"]]
    print(f"\n{'check':46} {'items':>7} {'failed':>7}")
    print(f"{'GPU probes vs NumPy PTX semantics (launches)':46} {len(gpu_rows):7} {len(gpu_bad):7}")
    print(f"{'  defined lanes compared':46} {sum(r['defined_lanes'] for r in gpu_rows):7} "
          f"{sum(r['mismatches'] for r in gpu_rows):7}")
    if sim is None:
        print(f"{'simulator vs GPU':46} {'-':>7} {'ERROR':>7}  (see sim_error in warps.json)")
    else:
        print(f"{'simulator vs GPU probes (launches)':46} {len(comparisons):7} {len(cmp_bad):7}")
        print(f"{'  defined lanes compared':46} {sum(c['defined_lanes'] for c in comparisons):7} "
              f"{sum(c['sim_vs_gpu_mismatches'] for c in comparisons):7}")
    print(f"{'warp softmax (GPU, simulator vs float64)':46} {len(soft_rows):7} {len(soft_bad):7}")
    print(f"{'occupancy: driver vs calculator (kernels)':46} {len(result['occupancy']):7} {len(occ_bad):7}")
    for r in gpu_bad[:5]:
        print("  GPU mismatch:", r["probe"], r["threads"], r["dtype"], r["first_mismatch"])
    for r in occ_bad[:5]:
        print("  occupancy:", r)
    print(f"written {os.path.join(out_dir, 'warps.json')} in {result['seconds']} s "
          f"(simulator part {result['sim_seconds']} s)")
    return 1 if (gpu_bad or cmp_bad or occ_bad or soft_bad or sim is None) else 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    if len(sys.argv) == 3 and sys.argv[1] == "--sim-part":
        sim_part(sys.argv[2])
        sys.exit(0)
    if len(sys.argv) != 2:
        print(__doc__)
        sys.exit(2)
    sys.exit(main(sys.argv[1]))
