#!/usr/bin/env python3
"""Issue 9 on a GPU: the backward and decode rungs verified, then the seed page's training,
inference and model tables re-measured.

    python3 scripts/gpu_training_inference.py OUTDIR

1. verify-backward: flash2_bwd (float32/float16, causal, window, GQA/MQA, odd lengths) against float64
   on sampled key/value heads, two launches bitwise equal; SDPA's own gradients against the same
   float64 beside ours.
2. autograd: a tiny causal transformer block trained a few SGD steps through
   `workbench.training.flash_attention` and through SDPA from the same weights: the losses side by side.
3. verify-decode: the decode rung on odd paged caches (shuffled blocks, partial last blocks, block
   sizes 5/7/16/32, GQA/MQA, several new tokens) against float64 on the gathered cache.
4. seed-training: forward+backward of one attention layer at Llama-2-7B's shape (32 heads, D=128,
   float16, causal) at the page's batch × seq rows: our flash2 + flash2_bwd, SDPA (flash), torch
   standard attention -> samples/s.
   seed-inference: one decode step (B=1, 1 new token, 32 heads, D=128, float16) over a paged cache of
   512..32K tokens: our decode rung, SDPA on a contiguous cache, torch gather of the paged cache +
   SDPA, torch standard -> tokens/s.
   seed-models: forward and forward+backward at each listed model's attention shape.

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
from workbench import Problem, seed, training
from workbench import decode as dec
from workbench.harness import device, runner, timing
from workbench.kernels import get as get_rung

OUT = sys.argv[1] if len(sys.argv) > 1 else "out-training-inference"
os.makedirs(OUT, exist_ok=True)
SIM = workbench.mode() == "simulator"
try:
    import torch

    HAVE_TORCH = torch.cuda.is_available() and not SIM
except ImportError:  # the simulator machine has no torch
    torch = None
    HAVE_TORCH = False
T0 = time.time()
SUMMARY: list[tuple] = []
PROV = device.provenance()


def log(*a):
    print(f"[{time.time() - T0:6.1f}s]", *a, flush=True)


def save(name, suite, points, complete=True, **extra):
    data = {"provenance": PROV, "suite": suite, "complete": complete, **extra, "points": points}
    if suite.startswith("seed-"):
        data["claims"] = [{**c.__dict__, "kernels": list(c.kernels)} for c in seed.claims_for(suite)]
    with open(os.path.join(OUT, name), "w") as f:
        json.dump(data, f, indent=1, default=str)


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


def is_oom(exc) -> bool:
    return "out of memory" in str(exc).lower() or "OUT_OF_MEMORY" in str(exc)


def timed(fn, repeat=5):
    if SIM:
        return None
    t = timing.time_call(fn, repeat=repeat, warmup=1, budget_s=1.0)
    return t.as_dict()


def torch_peak(fn):
    """Bytes torch allocates beyond what is held before one call (its allocator's peak)."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del out
    return peak


def free_torch():
    if HAVE_TORCH:
        torch.cuda.empty_cache()
    runner.release_memory()


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
            q, k, v, do = training.make_grad_inputs(p, seed_)
            pairs = training.sample_kv_heads(p, heads, seed_)
            ref = training.sampled_reference(p, q, k, v, do, pairs)
            got = sdpa_grads(p, q, k, v, do)
            peer = training.compare_gradients(training.GradReport("sdpa", p, seed_),
                                              training.pick(p, got, pairs), ref)
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
                       "verify": rep.as_dict(), "splits": dec._decode.split_plan(p, dec.check_config(dec.DECODE[0], p))[0]})
        runner.release_memory()
    save_check("verify-decode", points)
    bad = [pt["problem"] for pt in points if pt["status"] != "pass"]
    SUMMARY.append(("decode (paged) vs float64", f"{len(points) - len(bad)}/{len(points)} pass",
                    "; ".join(bad) or "shuffled blocks, partial last blocks, GQA/MQA, Nq 1-4"))


# --------------------------------------------------------------------------------------------------
# 4. Measurements
# --------------------------------------------------------------------------------------------------
def rand(shape, dtype):
    return torch.randn(*shape, device="cuda", dtype=getattr(torch, dtype))


def sdpa_fn(causal, gqa):
    """SDPA with the flash backend forced where it takes the call, else torch's own choice."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    def flash(q, k, v):
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return sdpa(q, k, v, is_causal=causal, enable_gqa=gqa)

    def default(q, k, v):
        return sdpa(q, k, v, is_causal=causal, enable_gqa=gqa)

    return flash, default


def torch_standard(q, k, v, causal):
    if k.shape[1] != q.shape[1]:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    s = torch.matmul(q, k.transpose(-2, -1)) * (q.shape[-1] ** -0.5)
    if causal:
        n, m = s.shape[-2:]
        s = s.masked_fill(~torch.ones(n, m, dtype=torch.bool, device=q.device).tril(m - n), float("-inf"))
    return torch.matmul(torch.softmax(s, dim=-1), v)


class Ours:
    """flash2 forward + flash2_bwd backward on torch tensors, through the runner (checked once)."""

    def __init__(self, p: Problem, q, k, v, do):
        from numba import cuda

        self.p = p
        self.fwd, self.bwd = get_rung("flash2"), training.get()
        self.cfg_f = runner.check_config(self.fwd, p)
        self.cfg_b = training.check_config(self.bwd, p)
        self.o, self.lse = torch.empty_like(q), torch.empty(p.lse_shape, device="cuda")
        self.grads = [torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)]
        a = cuda.as_cuda_array
        self.args = [a(x) for x in (q, k, v)]
        self.o_, self.lse_, self.do_ = a(self.o), a(self.lse), a(do)
        self.g_ = [a(g) for g in self.grads]
        self.pool_f, self.pool_b = runner.Pool(), runner.Pool()

    def forward(self):
        runner.run(self.fwd, self.p, self.cfg_f, *self.args, self.o_, self.lse_, pool=self.pool_f)

    def backward(self):
        return training.run(self.bwd, self.p, self.cfg_b, *self.args, self.o_, self.lse_, self.do_,
                            *self.g_, pool=self.pool_b)

    def both(self):
        self.forward()
        self.backward()

    def bytes(self) -> int:
        """Q, K, V, O, dO, dQ, dK, dV, LSE and the backward's workspace (what this call holds)."""
        p = self.p
        qo = p.batch * p.heads * p.seq_q * p.head_dim * p.itemsize
        kv = p.batch * p.kv_heads * p.seq_kv * p.head_dim * p.itemsize
        return 4 * qo + 4 * kv + 4 * p.batch * p.heads * p.seq_q + training.get().module.workspace_bytes(p, self.cfg_b)


def rel(a, b) -> float:
    a, b = a.float(), b.float()
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def train_point(p: Problem, label: str, impl: str, fn, mem_fn=None, extra=None):
    point = {"kernel": impl, "label": label, "problem": p.describe(), "batch": p.batch, "heads": p.heads,
             "kv_heads": p.kv_heads, "seq_q": p.seq_q, "seq_kv": p.seq_kv, "head_dim": p.head_dim,
             "dtype": p.dtype, "causal": p.causal, "flops_fwd": p.flops(), "flops_fwd_bwd": 3.5 * p.flops(),
             **(extra or {})}
    try:
        t = timed(fn)
        point["timing"] = t
        point["status"] = "ok" if t else "simulator: no timing"
        if t:
            point["samples_per_s"] = p.batch / (t["median_ms"] * 1e-3)
            point["tokens_per_s"] = p.batch * p.seq_q / (t["median_ms"] * 1e-3)
        if mem_fn is not None:
            point["memory"] = {"peak_MiB": mem_fn() / 2**20}
    except Exception as exc:  # noqa: BLE001
        if not is_oom(exc):
            raise
        point["status"] = "OOM"
        point["error"] = str(exc).splitlines()[0][:200]
    free_torch()
    return point


def fwd_bwd_points(p: Problem, label: str, what=("flash2", "sdpa-flash", "torch-standard"), forward_too=False):
    """Our flash2 + flash2_bwd, SDPA and torch standard attention on the same torch tensors."""
    points = []
    q, k, v = rand(p.q_shape, p.dtype), rand(p.kv_shape, p.dtype), rand(p.kv_shape, p.dtype)
    do = rand(p.q_shape, p.dtype)
    gqa = p.kv_heads != p.heads
    flash, default = sdpa_fn(p.causal, gqa)
    sdpa_grads_ = None
    tq, tk, tv = (x.detach().clone().requires_grad_() for x in (q, k, v))

    def grad_of(f):
        return lambda: torch.autograd.grad(f(tq, tk, tv), (tq, tk, tv), do)

    if "sdpa-flash" in what:
        backend = "flash"
        try:
            grad_of(flash)()
            f_sdpa = flash
        except RuntimeError as exc:
            if is_oom(exc):
                raise
            backend, f_sdpa = "default (flash refused: " + str(exc).splitlines()[0][:80] + ")", default
        sdpa_grads_ = grad_of(f_sdpa)()
        if forward_too:
            points.append(train_point(p, label, "sdpa-flash", lambda: f_sdpa(q, k, v),
                                      lambda: torch_peak(lambda: f_sdpa(q, k, v)),
                                      {"pass": "forward", "backend": backend}))
        points.append(train_point(p, label, "sdpa-flash", grad_of(f_sdpa), lambda: torch_peak(grad_of(f_sdpa)),
                                  {"pass": "forward+backward", "backend": backend}))
    if "flash2" in what:
        if p.head_dim not in training.get().module.HEAD_DIMS:
            for kind in (("forward",) if forward_too else ()) + ("forward+backward",):
                points.append({"kernel": "flash2", "label": label, "problem": p.describe(), "batch": p.batch,
                               "heads": p.heads, "head_dim": p.head_dim, "seq_q": p.seq_q, "pass": kind,
                               "status": "n/a", "reason": f"flash2 supports head_dim in "
                                                          f"{training.get().module.HEAD_DIMS}, not {p.head_dim}"})
        else:
            ours = Ours(p, q, k, v, do)
            ours.both()
            torch.cuda.synchronize()
            extra = {}
            if sdpa_grads_ is not None:
                extra = {"rel_vs_sdpa": {"o": rel(ours.o, f_sdpa(q, k, v)),
                                         **{n: rel(a, b) for n, a, b in zip(("dq", "dk", "dv"), ours.grads, sdpa_grads_)}}}
            if forward_too:
                points.append(train_point(p, label, "flash2", ours.forward, None,
                                          {"pass": "forward", **extra}))
            points.append(train_point(p, label, "flash2", ours.both, None,
                                      {"pass": "forward+backward", **extra,
                                       "memory": {"peak_MiB": ours.bytes() / 2**20,
                                                  "what": "counted: inputs, outputs, gradients, LSE, workspace"}}))
            del ours
    if "torch-standard" in what:
        f_std = lambda a, b, c: torch_standard(a, b, c, p.causal)  # noqa: E731
        if forward_too:
            points.append(train_point(p, label, "torch-standard", lambda: f_std(q, k, v),
                                      lambda: torch_peak(lambda: f_std(q, k, v)), {"pass": "forward"}))
        points.append(train_point(p, label, "torch-standard", grad_of(f_std), lambda: torch_peak(grad_of(f_std)),
                                  {"pass": "forward+backward"}))
    q = k = v = do = tq = tk = tv = sdpa_grads_ = None  # free the tensors now (closures hold names)
    free_torch()
    return points


TRAIN_ROWS = [(4, 2048), (8, 2048), (4, 4096), (8, 4096), (2, 8192)]


def seed_training():
    if not HAVE_TORCH:
        SUMMARY.append(("seed-training", "skipped", "needs torch on a GPU"))
        return None
    heads, _, dim = seed.MODEL_SHAPES["Llama 2 7B"]
    points = []
    for b, n in TRAIN_ROWS:
        p = Problem(b, heads, heads, n, n, dim, "float16", causal=True)
        points += fwd_bwd_points(p, f"{b} × {n // 1024}K")
        save("seed-training.json", "seed-training", points, complete=False, **TRAIN_META)
        log("seed-training", p.describe(), [(x["kernel"], x.get("samples_per_s"), x["status"]) for x in points[-3:]])
    save("seed-training.json", "seed-training", points, **TRAIN_META)
    row = {x["kernel"]: x for x in points if x["label"] == "4 × 2K"}
    SUMMARY.append(("seed-training 4×2K samples/s", " / ".join(
        f"{k} {row[k].get('samples_per_s', float('nan')):.1f}" for k in row), "one attention layer, fwd+bwd"))
    return points


TRAIN_META = {"config": "one attention layer at Llama-2-7B's shape: 32 heads, D=128, float16, causal; "
                        "samples/s = batch / (forward + backward time of the layer)",
              "assumed": {"causal": "causal (a decoder LM; the page does not say)",
                          "dtype": "float16 (the page does not say)"}}


INF_CONTEXTS = (512, 1024, 2048, 4096, 8192, 16384, 32768)
BLOCK = 16


def seed_inference():
    if not HAVE_TORCH:
        SUMMARY.append(("seed-inference", "skipped", "needs torch on a GPU"))
        return None
    from numba import cuda
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    from workbench import reference

    heads, hkv, dim = seed.MODEL_SHAPES["Llama 2 7B"]
    rung = dec.DECODE[0]
    points = []
    gen = torch.Generator(device="cuda").manual_seed(0)
    for n in INF_CONTEXTS:
        nb = n // BLOCK
        q = rand((1, heads, 1, dim), "float16")
        k, v = rand((1, hkv, n, dim), "float16"), rand((1, hkv, n, dim), "float16")
        perm = torch.randperm(nb + 5, device="cuda", generator=gen)[:nb]  # shuffled physical blocks
        k_cache = torch.full((nb + 5, hkv, BLOCK, dim), float("nan"), device="cuda", dtype=torch.float16)
        v_cache = k_cache.clone()
        k_cache[perm] = k[0].view(hkv, nb, BLOCK, dim).transpose(0, 1)
        v_cache[perm] = v[0].view(hkv, nb, BLOCK, dim).transpose(0, 1)
        table = perm.to(torch.int32).view(1, nb).contiguous()
        lens = torch.tensor([n], dtype=torch.int32, device="cuda")
        p = dec.DecodeProblem(1, heads, hkv, 1, dim, BLOCK, nb + 5, nb, (n,), "float16", causal=True)
        cfg = dec.check_config(rung, p)
        a = cuda.as_cuda_array
        o, lse = torch.empty_like(q), torch.empty((1, heads, 1), device="cuda")
        args = [a(x) for x in (q, k_cache, v_cache, table, lens, o, lse)]
        pool = runner.Pool()

        def ours():
            dec.run(rung, p, cfg, *args, pool=pool)

        ours()
        torch.cuda.synchronize()
        # float64 check of 4 heads on the contiguous K, V the paged cache was made from
        hs = slice(0, 4)
        ref, _ = reference.attention(q[:, hs].cpu().numpy(), k[:, hs].cpu().numpy(), v[:, hs].cpu().numpy(),
                                     causal=True)
        err = float(np.linalg.norm(o[:, hs].float().cpu().numpy() - ref) / np.linalg.norm(ref))
        ref_o = sdpa(q, k, v)

        def gather_sdpa():
            kk = k_cache[table[0].long()].transpose(0, 1).reshape(1, hkv, n, dim)
            vv = v_cache[table[0].long()].transpose(0, 1).reshape(1, hkv, n, dim)
            return sdpa(q, kk, vv)

        flash, _ = sdpa_fn(False, False)
        impls = {"decode": (ours, None),
                 "sdpa-flash": (lambda: flash(q, k, v), lambda: torch_peak(lambda: flash(q, k, v))),
                 "torch-gather-sdpa": (gather_sdpa, lambda: torch_peak(gather_sdpa)),
                 "torch-standard": (lambda: torch_standard(q, k, v, False),
                                    lambda: torch_peak(lambda: torch_standard(q, k, v, False)))}
        cache_bytes = 2 * hkv * n * dim * 2
        for name, (fn, mem_fn) in impls.items():
            point = {"kernel": name, "context": n, "seq_kv": n, "seq_q": 1, "batch": 1, "heads": heads,
                     "kv_heads": hkv, "head_dim": dim, "dtype": "float16", "block_size": BLOCK,
                     "cache_bytes": cache_bytes}
            if name == "decode":
                point.update(rel_fro_vs_float64=err, rel_vs_sdpa=rel(o, ref_o),
                             splits=dec._decode.split_plan(p, cfg)[0],
                             memory={"peak_MiB": (dec._decode.workspace_bytes(p, cfg)) / 2**20,
                                     "what": "workspace beyond the cache (partial O, LSE)"})
            else:
                out = fn()
                point["rel_vs_decode"] = rel(o, out)
            t = timed(fn, repeat=20)
            point["timing"] = t
            point["tokens_per_s_layer"] = 1e3 / t["median_ms"]
            point["tokens_per_s_32_layers_attention_only"] = 1e3 / (32 * t["median_ms"])
            point["cache_GBps"] = cache_bytes / (t["median_ms"] * 1e-3) / 1e9
            if mem_fn is not None:
                point["memory"] = {"peak_MiB": mem_fn() / 2**20, "what": "torch allocations beyond the inputs"}
            point["status"] = "ok"
            points.append(point)
        log("seed-inference", n, [(x["kernel"], round(x["timing"]["median_ms"], 4)) for x in points[-4:]],
            f"float64 err {err:.1e}")
        q = k = v = k_cache = v_cache = o = lse = args = pool = None  # free before the next context
        free_torch()
    meta = {"config": "one decode step of one attention layer at Llama-2-7B's shape: B=1, 1 new token, 32 "
                      "heads, D=128, float16, paged cache (block 16, shuffled physical blocks); tokens/s = "
                      "1 / step time; the 32-layer figure is attention alone (no weights, no MLP)"}
    save("seed-inference.json", "seed-inference", points, **meta)
    at = {x["kernel"]: x for x in points if x["context"] == 32768}
    SUMMARY.append(("seed-inference 32K µs/step", " / ".join(
        f"{k} {1e3 * at[k]['timing']['median_ms']:.0f}" for k in at),
        f"decode {at['decode']['cache_GBps']:.0f} GB/s of cache"))
    return points


MODEL_ROWS = [("Llama 2 7B", 4, 2048), ("Llama 2 13B", 4, 2048), ("Llama 2 70B", 4, 2048),
              ("GPT-2 (124M)", 4, 1024), ("GPT-J (6B)", 4, 1024), ("GPT-NeoX (20B)", 4, 1024)]


def seed_models():
    if not HAVE_TORCH:
        SUMMARY.append(("seed-models", "skipped", "needs torch on a GPU"))
        return None
    points = []
    for model, b, n in MODEL_ROWS:
        h, hkv, d = seed.MODEL_SHAPES[model]
        p = Problem(b, h, hkv, n, n, d, "float16", causal=True)
        new = fwd_bwd_points(p, model, forward_too=True)
        for x in new:
            x["model"] = model
        points += new
        save("seed-models.json", "seed-models", points, complete=False, **MODEL_META)
        log("seed-models", model, [(x["kernel"], x.get("pass"), x.get("timing", {}) and round(x["timing"]["median_ms"], 3),
                                    x["status"]) for x in new])
    save("seed-models.json", "seed-models", points, **MODEL_META)
    na = sorted({x["model"] for x in points if x["status"] == "n/a"})
    SUMMARY.append(("seed-models", f"{len(MODEL_ROWS)} models", f"flash2 n/a for {', '.join(na)} (head dim)"))
    return points


MODEL_META = {"config": "one attention layer at each model's shape (heads, kv heads, head dim from the "
                        "model cards), float16, causal; Llama rows at the page's batch 4 × seq 2048, GPT "
                        "rows at its seq 1024 with batch 4 (the page gives no batch)",
              "assumed": {"batch (GPT rows)": 4, "causal": True, "dtype": "float16"}}


# --------------------------------------------------------------------------------------------------
# 5. FP8 (e4m3) storage of the KV cache, emulated (Numba has no FP8 tensor-core path)
# --------------------------------------------------------------------------------------------------
def fp8_emulation():
    from workbench import fp8, reference

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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dev = PROV.get("device", "")
    for name in ("seed-training.json", "seed-inference.json", "seed-models.json"):
        if os.path.exists(os.path.join(OUT, name)):  # the device the data came from
            with open(os.path.join(OUT, name)) as f:
                dev = json.load(f)["provenance"].get("device", dev)
            break
    if train:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        labels = [f"{b} × {n // 1024}K" for b, n in TRAIN_ROWS]
        kinds = [("flash2", "flash2 + flash2_bwd (ours)"), ("sdpa-flash", "SDPA flash"),
                 ("torch-standard", "torch standard")]
        w = 0.2
        for i, (k, name) in enumerate(kinds):
            ys = [next((x.get("samples_per_s") or 0 for x in train if x["kernel"] == k and x["label"] == lab), 0)
                  for lab in labels]
            ax.bar(np.arange(len(labels)) + (i - 1.5) * w, ys, w, label=name)
        claims = {(c.batch, c.seq): c.value for c in seed.claims_for("seed-training")
                  if c.column.startswith("Flash") and c.value}
        ys = [claims.get((b, n), 0) for b, n in TRAIN_ROWS]
        ax.bar(np.arange(len(labels)) + 1.5 * w, ys, w, label="page: Flash Attn (whole Llama-2-7B, A100)",
               color="grey")
        ax.set_yscale("log")
        ax.set_xticks(np.arange(len(labels)), labels)
        ax.set_ylabel("samples/s (one attention layer, fwd+bwd)")
        ax.set_title(f"Training, Llama-2-7B attention (H=32, D=128, fp16, causal) — {dev}", fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(OUT, "seed-training.png"), dpi=120)
        plt.close(fig)
    if infer:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for k in ("decode", "sdpa-flash", "torch-gather-sdpa", "torch-standard"):
            xs = [x["context"] for x in infer if x["kernel"] == k]
            ys = [x["tokens_per_s_layer"] for x in infer if x["kernel"] == k]
            ax.plot(xs, ys, marker="o", label=k + (" (ours, paged)" if k == "decode" else ""))
        cl = [c for c in seed.claims_for("seed-inference") if c.column.startswith("Flash") and c.value]
        ax.plot([c.seq for c in cl], [c.value for c in cl], "k--", marker="x",
                label="page: Flash Attn (whole Llama-2-7B, A100)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context length")
        ax.set_ylabel("tokens/s (one attention layer)")
        ax.set_title(f"Decode, Llama-2-7B attention (B=1, H=32, D=128, fp16) — {dev}", fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(OUT, "seed-inference.png"), dpi=120)
        plt.close(fig)
    if models:
        fig, ax = plt.subplots(figsize=(9, 4.5))
        names = [m for m, _, _ in MODEL_ROWS]
        w = 0.27
        for i, k in enumerate(("flash2", "sdpa-flash", "torch-standard")):
            ys = [next((x["timing"]["median_ms"] for x in models if x["kernel"] == k and x["model"] == m
                        and x.get("pass") == "forward+backward" and x.get("timing")), 0) for m in names]
            ax.bar(np.arange(len(names)) + (i - 1) * w, ys, w, label=k)
        ax.set_xticks(np.arange(len(names)), [n.replace(" (", "\n(") for n in names], fontsize=8)
        ax.set_ylabel("forward+backward ms (one attention layer)")
        ax.set_yscale("log")
        ax.set_title(f"Attention layers at model shapes (fp16, causal; 0 = n/a or OOM) — {dev}", fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(OUT, "seed-models.png"), dpi=120)
        plt.close(fig)


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
