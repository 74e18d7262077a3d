#!/usr/bin/env python3
"""Issue 15 on a GPU: flash2_mma_bwd verified against float64, then timed beside SDPA flash's backward.

    python3 scripts/gpu_mma_bwd.py OUTDIR [--quick] [--no-verify] [--variants]

1. verify: the rung's three launches, called through its own `launch(problem, config, ..., gpu)`
   with a small launcher (no dependency on the package's moving API). Inputs: standard normal
   q, k, v, dO in the dtype; O and LSE from the float64 reference (O rounded to the dtype), so the
   check isolates the backward. dQ, dK, dV are poisoned with NaN before each of two launches; the
   gradients are judged against reference.attention_backward in float64 (training.check_backward's
   rule: relative Frobenius ≤ 2e-3 and |g − r| ≤ 5e-3·rms(r) + 2e-2·|r| in float16, 8× in bfloat16).
   dK and dV must repeat bit for bit; dQ is summed with float atomics (DETERMINISTIC = False), so
   its repeat is only reported. Where SDPA can run the same problem (square, no window, H = Hkv),
   SDPA flash's own gradients are judged by the same rule, for scale.
2. time: the backward (prep + main + convert) and each of its kernels, beside SDPA flash's backward
   (torch.autograd.grad on SDPA under sdpa_kernel(FLASH_ATTENTION), retain_graph), CUDA events,
   rounds interleaved, median of the rounds' medians. O and LSE for our backward come from SDPA
   flash's forward (aten._scaled_dot_product_flash_attention), so both backwards see the same
   inputs.
Writes OUTDIR/mma_bwd.json (provenance, every check and timing) and prints a short table last.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
import time
import traceback

import numpy as np

from workbench import reference
from workbench.kernels import flash2_mma_bwd as rung
from workbench.problem import Problem

OUT = sys.argv[1] if len(sys.argv) > 1 and not sys.argv[1].startswith("--") else "out-mma-bwd"
QUICK = "--quick" in sys.argv
VERIFY = "--no-verify" not in sys.argv
VARIANTS = "--variants" in sys.argv
os.makedirs(OUT, exist_ok=True)
T0 = time.time()

from numba import cuda  # noqa: E402

TOL = {"float16": (2e-3, 5e-3, 2e-2), "bfloat16": (16e-3, 40e-3, 16e-2)}  # rel_fro, atol·rms, rtol


def provenance() -> dict:
    info = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(["python3"] + sys.argv), "python": platform.python_version(),
            "numpy": np.__version__}
    try:
        import numba
        from importlib.metadata import version

        info["numba"] = numba.__version__
        info["numba_cuda"] = version("numba-cuda")
    except Exception:  # noqa: BLE001
        pass
    try:
        dev = cuda.get_current_device()
        info["device"] = dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name)
        info["compute_capability"] = list(dev.compute_capability)
        info["cuda_driver_api"] = ".".join(map(str, cuda.cudadrv.driver.driver.get_version()))
    except Exception as exc:  # noqa: BLE001
        info["device"] = f"unknown ({exc!r})"
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_cuda"] = torch.version.cuda
    except Exception:  # noqa: BLE001
        pass
    try:
        import subprocess

        info["nvidia_smi"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.sm,memory.total",
             "--format=csv,noheader"], capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception:  # noqa: BLE001
        pass
    return info


RESULT = {"provenance": provenance(), "rung": "flash2_mma_bwd", "default_config": rung.DEFAULT_CONFIG,
          "deterministic": rung.DETERMINISTIC, "verify": [], "timing": []}


def log(*a):
    print(f"[{time.time() - T0:6.1f}s]", *a, flush=True)


def save():
    with open(os.path.join(OUT, "mma_bwd.json"), "w") as f:
        json.dump(RESULT, f, indent=1, default=str)


class Launcher:
    """What a rung's launch() needs: empty(shape, dtype) and launch(kernel, grid, block, *args).
    With a pool, the n-th empty() of every call returns the same array (timing without mallocs)."""

    def __init__(self, pool=None):
        self.pool, self.n = pool, 0

    def empty(self, shape, dtype):
        key = (self.n, tuple(int(s) for s in shape), np.dtype(dtype).str)
        self.n += 1
        if self.pool is None:
            return cuda.device_array(shape, dtype)
        if key not in self.pool:
            self.pool[key] = cuda.device_array(shape, dtype)
        return self.pool[key]

    def launch(self, kernel, grid, block, *args):
        grid = grid if isinstance(grid, tuple) else (grid,)
        kernel[grid, block](*args)


def backward(p, cfg, q, k, v, o, lse, do, dq, dk, dv, pool=None):
    rung.launch(p, cfg, q, k, v, o, lse, do, dq, dk, dv, Launcher(pool))


def host_dtype(name):
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def to_dev(x):
    return cuda.to_device(x.view(np.uint16) if x.dtype.name == "bfloat16" else x)


def from_dev(d, name):
    h = d.copy_to_host()
    return (h.view(host_dtype("bfloat16")) if name == "bfloat16" else h).astype(np.float64)


def judge(name, got, ref, dtype):
    rel_max, atol, rtol = TOL[dtype]
    err = np.abs(got - ref)
    err = np.where(np.isnan(err), np.inf, err)
    norm = float(np.linalg.norm(ref))
    if norm == 0:  # an exactly-zero gradient (N = 1: dS = P·(dP − D) = 0): judged absolutely, at
        # the unit scale of standard-normal inputs (ours and SDPA's come to ~1e-7: D from 16-bit O)
        max_abs = float(err.max()) if err.size else 0.0
        fails = [] if max_abs <= rel_max else [f"{name}: reference is 0, max |g| {max_abs:.2e} > {rel_max:.0e}"]
        return {"rel_fro": None, "max_abs": max_abs, "bad": 0, "zero_reference": True}, fails
    rel = float(np.linalg.norm(err)) / norm if np.isfinite(err).all() else float("inf")
    rms = norm / np.sqrt(ref.size)
    bad = int((err > atol * rms + rtol * np.abs(ref)).sum())
    fails = []
    if not rel <= rel_max:
        fails.append(f"{name}: rel_fro {rel:.2e} > {rel_max:.0e}")
    if bad:
        first = tuple(int(i) for i in np.argwhere(err > atol * rms + rtol * np.abs(ref))[0])
        fails.append(f"{name}: {bad} elements out of tolerance (first {first}: {got[first]!r} vs {ref[first]!r})")
    return {"rel_fro": rel, "max_abs": float(err.max()) if err.size else 0.0, "bad": bad}, fails


def sdpa_error(p, q, k, v, do, ref):
    """SDPA flash's own gradients on the same inputs, judged by the same rule (square, no window;
    GQA by repeating K, V over the group and summing dK, dV back)."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    tdt = {"float16": torch.float16, "bfloat16": torch.bfloat16}[p.dtype]

    def t(x):
        return torch.tensor(x.astype(np.float32), device="cuda").to(tdt).requires_grad_(True)

    rep = p.group
    tq, tk, tv = t(q), t(np.repeat(k, rep, axis=1)), t(np.repeat(v, rep, axis=1))
    tdo = torch.tensor(do.astype(np.float32), device="cuda").to(tdt)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        out = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=p.causal, scale=p.scale)
        grads = torch.autograd.grad(out, (tq, tk, tv), tdo)
    res = {}
    for name, g, r in zip(("dq", "dk", "dv"), grads, ref):
        g = g.float().cpu().numpy().astype(np.float64)
        if name != "dq":
            g = g.reshape(p.batch, p.kv_heads, rep, p.seq_kv, p.head_dim).sum(axis=2)
        e = judge(name, g, r, p.dtype)[0]
        res[name] = {"rel_fro": e["rel_fro"], "bad": e["bad"], "max_abs": e["max_abs"]}
    return res


def verify(p, seed, cfg=None):
    cfg = {**rung.DEFAULT_CONFIG, **(cfg or {})}
    rng = np.random.default_rng(seed)
    hd = host_dtype(p.dtype)
    q = rng.standard_normal(p.q_shape, dtype=np.float32).astype(hd)
    k = rng.standard_normal(p.kv_shape, dtype=np.float32).astype(hd)
    v = rng.standard_normal(p.kv_shape, dtype=np.float32).astype(hd)
    do = rng.standard_normal(p.q_shape, dtype=np.float32).astype(hd)
    o64, lse64 = reference.attention(q, k, v, causal=p.causal, window=p.window, scale=p.scale)
    o = o64.astype(np.float32).astype(hd)
    lse = lse64.astype(np.float32)
    ref = reference.attention_backward(q, k, v, do, causal=p.causal, window=p.window, scale=p.scale)
    dev = [to_dev(x) for x in (q, k, v, o)] + [cuda.to_device(lse), to_dev(do)]
    runs = []
    for _ in range(2):
        grads = [to_dev(np.full(s, np.nan, hd)) for s in (p.q_shape, p.kv_shape, p.kv_shape)]
        backward(p, cfg, *dev, *grads)
        cuda.synchronize()
        runs.append([from_dev(g, p.dtype) for g in grads])
    rec = {"problem": p.describe(), "dtype": p.dtype, "config": cfg, "errors": {}, "failures": []}
    for name, got, r in zip(("dq", "dk", "dv"), runs[0], ref):
        rec["errors"][name], fails = judge(name, got, r, p.dtype)
        rec["failures"] += fails
    rec["unwritten"] = int(sum(np.isnan(g).sum() for g in runs[0]))
    rec["repeat_bitwise"] = {n: bool(np.array_equal(a, b, equal_nan=True))
                             for n, a, b in zip(("dq", "dk", "dv"), *runs)}
    if not (rec["repeat_bitwise"]["dk"] and rec["repeat_bitwise"]["dv"]):
        rec["failures"].append("dK or dV differ between two launches (they have no atomics)")
    if p.seq_q == p.seq_kv and p.window is None:
        try:
            rec["sdpa_flash"] = sdpa_error(p, q, k, v, do, ref)
        except Exception as exc:  # noqa: BLE001
            rec["sdpa_flash"] = repr(exc)[:200]
    rec["passed"] = not rec["failures"]
    return rec


CASES = [
    Problem(2, 4, 4, 257, 257, 64, "float16", causal=True),
    Problem(1, 4, 4, 1000, 1000, 128, "float16"),
    Problem(1, 8, 2, 300, 700, 64, "float16", causal=True),
    Problem(1, 4, 1, 700, 300, 128, "float16", causal=True),
    Problem(1, 2, 2, 777, 777, 64, "float16", window=(64, 0)),
    Problem(1, 2, 2, 1, 37, 64, "float16"),
    Problem(1, 2, 2, 1, 1, 128, "float16", causal=True),
    Problem(1, 2, 2, 130, 200, 64, "float16", window=(3, 5)),
    Problem(1, 2, 2, 257, 257, 32, "float16", causal=True),
    Problem(2, 8, 2, 513, 513, 128, "bfloat16", causal=True),
    Problem(1, 4, 4, 1000, 999, 64, "bfloat16"),
    Problem(1, 4, 1, 1000, 1000, 128, "bfloat16", window=(64, 0)),
    Problem(1, 2, 2, 2048, 2048, 128, "float16", causal=True),
    Problem(1, 2, 2, 1024, 1024, 64, "float16"),
]
if QUICK:
    CASES = CASES[:4]
if VERIFY:
    for i, p in enumerate(CASES):
        try:
            rec = verify(p, seed=100 + i)
        except Exception:  # noqa: BLE001 - record and go on
            rec = {"problem": p.describe(), "passed": False, "error": traceback.format_exc()[-3000:]}
        RESULT["verify"].append(rec)
        errs = " ".join(f"{n}:{e['rel_fro'] or e['max_abs']:.1e}" for n, e in rec.get("errors", {}).items())
        log("verify", p.describe(), "PASS" if rec["passed"] else "FAIL", errs,
            "sdpa:", rec.get("sdpa_flash", "-"), "repeat:", rec.get("repeat_bitwise"),
            "; ".join(rec.get("failures", []))[:300], rec.get("error", "")[-800:])
        save()

# 2. Timing beside SDPA flash's backward.
import torch  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402


def events_ms(fn, reps):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / reps


SHAPES = [Problem(4, 32, 32, 2048, 2048, 128, "float16", causal=True),
          Problem(2, 32, 32, 4096, 4096, 128, "float16", causal=True),
          Problem(4, 32, 32, 4096, 4096, 64, "float16")]
VARIANT_CONFIGS = {128: [{"Br": 32, "Bc": 32}], 64: [{"Br": 32, "warps_per_sm": 12}]} if VARIANTS else {}
ROUNDS, REPS = 3, 5
for p in SHAPES:
    try:
        g = torch.Generator(device="cuda").manual_seed(0)
        tq, tk, tv, tdo = (torch.randn(s, device="cuda", dtype=torch.float16, generator=g)
                           for s in (p.q_shape, p.kv_shape, p.kv_shape, p.q_shape))
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention(
            tq, tk, tv, 0.0, p.causal, False, scale=p.scale)[:2]
        out, lse = out.contiguous(), lse.contiguous()
        dq, dk, dv = torch.empty_like(tq), torch.empty_like(tk), torch.empty_like(tv)
        arrs = [cuda.as_cuda_array(x) for x in (tq, tk, tv, out, lse, tdo, dq, dk, dv)]
        calls = {}
        for cfg in [{}] + VARIANT_CONFIGS.get(p.head_dim, []):
            name = "flash2_mma_bwd" + ("" if not cfg else " " + ",".join(f"{a}={b}" for a, b in cfg.items()))
            full = {**rung.DEFAULT_CONFIG, **cfg}
            pool = {}
            backward(p, full, *arrs, pool=pool)
            torch.cuda.synchronize()
            calls[name] = (lambda full=full, pool=pool: backward(p, full, *arrs, pool=pool))
            if not cfg:  # the default's three kernels, one at a time
                rec = []
                lau = Launcher(pool)
                lau.launch = lambda kernel, grid, block, *args: rec.append((kernel, grid, block, args))
                rung.launch(p, full, *arrs, lau)
                for kernel, grid, block, args in rec:
                    calls[f"  {kernel.py_func.__name__}"] = (
                        lambda kernel=kernel, grid=grid, block=block, args=args: kernel[grid, block](*args))
        # SDPA flash: forward once, backward by autograd.grad with the graph kept
        sq, sk, sv = (x.detach().clone().requires_grad_(True) for x in (tq, tk, tv))
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            sout = torch.nn.functional.scaled_dot_product_attention(sq, sk, sv, is_causal=p.causal, scale=p.scale)
        calls["sdpa-flash backward"] = lambda: torch.autograd.grad(sout, (sq, sk, sv), tdo, retain_graph=True)

        def sdpa_fwd():
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=p.causal, scale=p.scale)

        calls["sdpa-flash forward"] = sdpa_fwd
        for fn in calls.values():
            fn()
        torch.cuda.synchronize()
        samples = {n: [] for n in calls}
        for _ in range(ROUNDS):
            for n, fn in calls.items():
                samples[n].append(events_ms(fn, REPS))
        fwd_flops = p.flops()
        sdpa_ms = float(np.median(samples["sdpa-flash backward"]))
        for n, ms in samples.items():
            med = float(np.median(ms))
            flops = fwd_flops if "forward" in n else 2.5 * fwd_flops
            RESULT["timing"].append({"kernel": n.strip(), "problem": p.describe(), "round_ms": ms,
                                     "median_ms": med, "tflops": flops / (med * 1e-3) / 1e12,
                                     "sdpa_bwd_over_this": sdpa_ms / med})
            log(f"{p.describe():32s} {n:34s} {med:8.3f} ms {flops / (med * 1e-3) / 1e12:6.1f} TFLOP/s "
                f"sdpa/this {sdpa_ms / med:5.2f}")
        save()
        del tq, tk, tv, tdo, out, lse, dq, dk, dv, arrs, calls, sq, sk, sv, sout
        torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001
        RESULT["timing"].append({"problem": p.describe(), "error": traceback.format_exc()[-3000:]})
        log("timing", p.describe(), "ERROR", traceback.format_exc()[-1500:])
        save()

log("done")
print(f"\n{'problem':34s} {'kernel':34s} {'ms':>8s} {'TFLOP/s':>8s} {'SDPA/this':>9s}")
for r in RESULT["timing"]:
    if "median_ms" in r:
        print(f"{r['problem']:34s} {r['kernel']:34s} {r['median_ms']:8.3f} {r['tflops']:8.1f} "
              f"{r['sdpa_bwd_over_this']:9.2f}")
print("verify:", sum(bool(v.get("passed")) for v in RESULT["verify"]), "/", len(RESULT["verify"]), "passed")
save()
