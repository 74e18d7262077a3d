#!/usr/bin/env python3
"""Issue 9 on a GPU: the backward and decode rungs verified, then the seed page's training,
inference and model tables re-measured.

    python3 scripts/gpu_training_inference.py OUTDIR

1. verify-backward: flash2_bwd (float32/float16, causal, window, GQA/MQA, odd lengths) against float64
   on sampled key/value heads, two launches bitwise equal; SDPA's own gradients against the same
   float64 beside ours.
2. autograd: a tiny causal transformer block trained a few SGD steps through
   `workbench.api.training.flash_attention` and through SDPA from the same weights: the losses side by side.
3. verify-decode: the decode rung on odd paged caches (shuffled blocks, partial last blocks, block
   sizes 5/7/16/32, GQA/MQA, several new tokens) against float64 on the gathered cache.
4. seed-training: forward+backward of one attention layer at Llama-2-7B's shape (32 heads, D=128,
   float16, causal) at the page's batch × seq rows: our flash2 + flash2_bwd, SDPA (flash), torch
   standard attention -> samples/s.
   seed-inference: one decode step (B=1, 1 new token, 32 heads, D=128, float16) over a paged cache of
   512..32K tokens: our decode rung, SDPA on a contiguous cache, torch gather of the paged cache +
   SDPA, torch standard -> tokens/s.
   seed-models: forward and forward+backward at each listed model's attention shape.
   (The three suites live in workbench/suites_training.py; `python -m workbench.bench.compare --suite
   seed-training|seed-inference|seed-models --out DIR` runs one alone, with the same JSON.)

Writes OUTDIR/training-inference-checks.json (verification, autograd, FP8 sections), seed-training.json,
seed-inference.json, seed-models.json (each with provenance and the seed page's claims beside) and
three PNGs (7 files), and prints a short table last. About 3 minutes on an H100. In the
simulator (no GPU) it runs tiny versions of the checks and no timing, to test the script itself.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback

import numpy as np

import workbench
from workbench import Problem
from workbench.api import training
from workbench.api import inference as dec
from workbench.bench import suites_training as st
from workbench.harness import runner, verify
from workbench.kernels import get as get_rung
from workbench.bench.suites_training import free_torch

DECODE = get_rung("paged_decode", "decode")

OUT = sys.argv[1] if len(sys.argv) > 1 else "out-training-inference"
os.makedirs(OUT, exist_ok=True)
SIM = workbench.mode() == "simulator"
torch = st.torch
T0 = time.time()
SESSION = st.Session(OUT, t0=T0)  # the suites (workbench/suites_training.py) write through it
HAVE_TORCH = SESSION.have_torch
SUMMARY: list[tuple] = SESSION.summary
PROV = SESSION.prov
log = SESSION.log

CHECKS: dict = {}


def save_check(section, points, **extra):
    """The verification sections share one file (the device tool returns at most 8 files)."""
    CHECKS[section] = {**extra, "points": points}
    with open(os.path.join(OUT, "training-inference-checks.json"), "w") as f:
        json.dump({"provenance": PROV, "sections": CHECKS}, f, indent=1, default=str)


def guarded(fn, *a, **kw):
    """Run one section; an exception is recorded, not fatal (the other sections still run)."""
    try:
        return fn(*a, **kw)
    except Exception as exc:  # noqa: BLE001 - a measurement script: keep going, say what broke
        log(f"{fn.__name__} FAILED: {type(exc).__name__}: {exc}")
        traceback.print_exc()
        SUMMARY.append((fn.__name__, "FAILED", f"{type(exc).__name__}: {str(exc)[:80]}"))
        return None


# --------------------------------------------------------------------------------------------------
# 1. The backward rung against float64 (and SDPA's gradients beside it)
# --------------------------------------------------------------------------------------------------
BWD_CASES = [  # (problem, kv heads checked)
    (Problem(2, 32, 8, 1025, 1025, 128, "float16", causal=True), 3),
    (Problem(1, 16, 16, 777, 901, 64, "float32", window=(128, 0)), 3),
    (Problem(2, 8, 8, 2048, 2048, 64, "float16", causal=True), 2),
    (Problem(1, 8, 2, 513, 300, 128, "float32"), 2),
    (Problem(1, 4, 1, 300, 513, 32, "float16", causal=True), 1),
    (Problem(1, 4, 4, 1000, 1000, 16, "float32", window=(17, 5)), 2),
]
SIM_BWD_CASES = [(Problem(1, 2, 1, 11, 13, 16, "float16", causal=True), None)]


def sdpa_grads(p: Problem, q, k, v, do):
    """SDPA (torch's default backend choice) gradients of the same inputs, as NumPy."""
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    tq, tk, tv = (torch.tensor(x, device="cuda", requires_grad=True) for x in (q, k, v))
    mask = None
    if p.window is not None or (p.causal and p.seq_q != p.seq_kv):
        from workbench.reference import visible_mask

        mask = torch.as_tensor(visible_mask(p), device="cuda")
    out = sdpa(tq, tk, tv, attn_mask=mask, is_causal=p.causal and mask is None, scale=p.scale,
               enable_gqa=p.kv_heads != p.heads)
    grads = torch.autograd.grad(out, (tq, tk, tv), torch.tensor(do, device="cuda"))
    return dict(zip(("dq", "dk", "dv"), (g.float().cpu().numpy() for g in grads)))


def verify_backward():
    points = []
    for p, heads in (SIM_BWD_CASES if SIM else BWD_CASES):
        seed_ = 100 + len(points)
        rep = training.check_backward(p, seed=seed_, heads=heads)
        point = {"kernel": "flash2_bwd", "problem": p.describe(), "status": "pass" if rep.passed else "FAIL",
                 "verify": rep.as_dict(), "workspace_bytes": rep.workspace_bytes}
        log(rep)
        if HAVE_TORCH:
            q, k, v, do = verify.make_grad_inputs(p, seed_)
            pairs = verify.sample_kv_heads(p, heads, seed_)
            ref = verify.sampled_gradients(p, q, k, v, do, pairs)
            got = sdpa_grads(p, q, k, v, do)
            peer = verify.compare_gradients(verify.Report("sdpa", p, seed_, kind="backward"),
                                            verify.pick_gradients(p, got, pairs), ref)
            point["sdpa_vs_float64"] = peer.as_dict()
            log("  SDPA:", peer)
        points.append(point)
        free_torch()
    save_check("verify-backward", points)
    bad = [pt["problem"] for pt in points if pt["status"] != "pass"]
    SUMMARY.append(("backward vs float64", f"{len(points) - len(bad)}/{len(points)} pass",
                    "; ".join(bad) or "fp32/fp16, causal, window, GQA/MQA, bitwise repeatable"))
    return points


# --------------------------------------------------------------------------------------------------
# 2. Training a tiny model through the autograd Function vs SDPA
# --------------------------------------------------------------------------------------------------
def train_tiny(attn, steps=8, seed_=0):
    """A causal attention block (C=128, 4 heads of 32, N=97) trained by SGD; returns the losses."""
    torch.manual_seed(seed_)
    B, N, C, H = 4, 97, 128, 4
    D = C // H
    qkv = torch.nn.Linear(C, 3 * C).cuda()
    proj = torch.nn.Linear(C, C).cuda()
    x = torch.randn(B, N, C, device="cuda")
    target = torch.randn(B, N, C, device="cuda")
    opt = torch.optim.SGD(list(qkv.parameters()) + list(proj.parameters()), lr=0.5)
    losses = []
    for _ in range(steps):
        q, k, v = (t.contiguous() for t in qkv(x).view(B, N, 3, H, D).permute(2, 0, 3, 1, 4))
        y = attn(q, k, v).transpose(1, 2).reshape(B, N, C)
        loss = torch.nn.functional.mse_loss(proj(y), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    return losses


def autograd_training():
    if not HAVE_TORCH:
        SUMMARY.append(("autograd training", "skipped", "needs torch on a GPU"))
        return None
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    ours = train_tiny(lambda q, k, v: training.flash_attention(q, k, v, causal=True))
    ref = train_tiny(lambda q, k, v: sdpa(q, k, v, is_causal=True))
    rel = max(abs(a - b) / abs(b) for a, b in zip(ours, ref))
    ok = rel < 1e-4 and ours[-1] < ours[0]
    save_check("autograd-training",
         [{"step": i, "loss_flash2": a, "loss_sdpa": b} for i, (a, b) in enumerate(zip(ours, ref))],
         max_rel_diff=rel, passed=ok, tolerance=1e-4,
         model="x (4, 97, 128) -> Linear qkv -> causal attention (4 heads of 32) -> Linear -> MSE, "
               "float32, SGD lr 0.5, same init")
    log(f"autograd: losses ours {ours[0]:.5f}->{ours[-1]:.5f}, SDPA {ref[0]:.5f}->{ref[-1]:.5f}, max rel {rel:.1e}")
    SUMMARY.append(("autograd training (8 steps)", "pass" if ok else "FAIL",
                    f"loss {ours[0]:.4f}->{ours[-1]:.4f}, max rel diff vs SDPA {rel:.1e}"))
    return ok


# --------------------------------------------------------------------------------------------------
# 3. Decode on odd paged caches
# --------------------------------------------------------------------------------------------------
def decode_problem(batch, heads, kv_heads, nq, d, block, lens, dtype="float16", **kw):
    need = sum(-(-n // block) for n in lens)
    return dec.DecodeProblem(batch, heads, kv_heads, nq, d, block, need + 3,
                             max(-(-n // block) for n in lens) + 2, tuple(lens), dtype, **kw)


DECODE_CASES = [
    decode_problem(3, 32, 8, 1, 128, 16, (1000, 4097, 77)),
    decode_problem(2, 32, 32, 4, 64, 7, (3001, 129), "float32"),
    decode_problem(2, 64, 8, 1, 128, 32, (8191, 2)),
    decode_problem(1, 16, 1, 2, 128, 5, (999,)),
    decode_problem(2, 8, 2, 3, 32, 16, (700, 45), "float32", causal=False, window=(64, -1)),
]
SIM_DECODE_CASES = [decode_problem(2, 4, 2, 1, 16, 4, (13, 6))]


def verify_decode():
    points = []
    for p in (SIM_DECODE_CASES if SIM else DECODE_CASES):
        rep = dec.check_decode(p, seed=200 + len(points))
        log(rep)
        points.append({"kernel": "decode", "problem": p.describe(), "status": "pass" if rep.passed else "FAIL",
                       "verify": rep.as_dict(), "splits": DECODE.module.split_plan(p, runner.check_config(DECODE, p))[0]})
        runner.release_memory()
    save_check("verify-decode", points)
    bad = [pt["problem"] for pt in points if pt["status"] != "pass"]
    SUMMARY.append(("decode (paged) vs float64", f"{len(points) - len(bad)}/{len(points)} pass",
                    "; ".join(bad) or "shuffled blocks, partial last blocks, GQA/MQA, Nq 1-4"))



# --------------------------------------------------------------------------------------------------
# 4. Measurements: the three suites (workbench/suites_training.py, also `compare --suite NAME`)
# --------------------------------------------------------------------------------------------------
def seed_training():
    return st.seed_training(SESSION)


def seed_inference():
    return st.seed_inference(SESSION)


def seed_models():
    return st.seed_models(SESSION)

# --------------------------------------------------------------------------------------------------
# 5. FP8 (e4m3) storage of the KV cache, emulated (Numba has no FP8 tensor-core path)
# --------------------------------------------------------------------------------------------------
def fp8_emulation():
    from workbench import reference
    from workbench.demos import fp8

    n, heads, dim = (24, 2, 16) if SIM else (4096, 32, 128)
    p = decode_problem(1, heads, heads, 1, dim, 16 if not SIM else 4, (n,))
    q, kc, vc, table, lens = dec.make_decode_inputs(p, seed=300)
    used = np.unique(table[0, : -(-n // p.block_size)])
    out = {}
    for name, (k_store, v_store, nbytes) in {
            "float16": (kc[used], vc[used], 2 * kc[used].nbytes),
            "e4m3": (*(fp8.decode(*fp8.encode(np.nan_to_num(c[used])), np.float16) for c in (kc, vc)),
                     2 * fp8.storage_bytes(kc[used].shape))}.items():
        k2, v2 = kc.copy(), vc.copy()
        k2[used], v2[used] = k_store, v_store
        o = dec.decode(q, k2, v2, table, lens)
        kk = reference.gather_paged(kc, table, lens)  # the original float16 cache is the truth
        vv = reference.gather_paged(vc, table, lens)
        ref, _ = reference.attention(q, kk, vv, causal=True)
        out[name] = {"cache_MiB": nbytes / 2**20,
                     "rel_fro_vs_float64": float(np.linalg.norm(o - ref) / np.linalg.norm(ref)),
                     "max_abs": float(np.abs(o - ref).max())}
    save_check("fp8-emulation", [{"format": k, **v} for k, v in out.items()],
         config=f"decode, B=1, H={heads}, D={dim}, context {n}: K and V cache stored as e4m3 codes with "
                f"one float32 scale per tensor, decoded to float16 before the decode rung reads them "
                f"(storage emulated: the kernel reads float16, so no bandwidth is saved here; Numba has "
                f"no FP8 tensor-core path)")
    log("fp8", out)
    SUMMARY.append(("fp8 e4m3 KV cache (emulated)", f"{out['e4m3']['cache_MiB']:.1f} vs "
                    f"{out['float16']['cache_MiB']:.1f} MiB", f"rel err {out['e4m3']['rel_fro_vs_float64']:.1e} "
                    f"vs fp16 {out['float16']['rel_fro_vs_float64']:.1e}"))



# --------------------------------------------------------------------------------------------------
# Figures and the summary
# --------------------------------------------------------------------------------------------------
def figures(train, infer, models):
    return st.figures(SESSION, train, infer, models)


def _points(name):
    path = os.path.join(OUT, name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)["points"]


def main():
    """SECTIONS=a,b (environment) runs only those sections; `figures` then draws from the suites'
    JSON already in OUT (e.g. on a machine without a GPU, from a GPU run's files)."""
    only = set(filter(None, os.environ.get("SECTIONS", "").split(",")))
    want = lambda name: not only or name in only  # noqa: E731
    log("mode", workbench.mode(), PROV.get("device"))
    if only:
        global CHECKS
        CHECKS = (json.load(open(os.path.join(OUT, "training-inference-checks.json")))["sections"]
                  if os.path.exists(os.path.join(OUT, "training-inference-checks.json")) else {})
    for fn in (verify_backward, autograd_training, verify_decode):
        if want(fn.__name__):
            guarded(fn)
    train = guarded(seed_training) if want("seed_training") else _points("seed-training.json")
    infer = guarded(seed_inference) if want("seed_inference") else _points("seed-inference.json")
    models = guarded(seed_models) if want("seed_models") else _points("seed-models.json")
    if want("fp8_emulation"):
        guarded(fp8_emulation)
    if want("figures"):
        guarded(figures, train, infer, models)
    print(f"\nissue 9 on {PROV.get('device')} in {time.time() - T0:.0f} s (files in {OUT})")
    for row in SUMMARY:
        print(f"  {row[0]:<32} {row[1]:<34} {row[2]}")
    return 0 if not any(r[1] == "FAILED" or "FAIL" in str(r[1]) for r in SUMMARY) else 1


if __name__ == "__main__":
    sys.exit(main())
