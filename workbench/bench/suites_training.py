"""Issue 9's suites: the seed page's training, inference and model tables, re-measured.

    python -m workbench.bench.compare --suite seed-training  --out DIR    # DIR/seed-training.json, .png
    python -m workbench.bench.compare --suite seed-inference --out DIR [--seq 1024 8192]
    python -m workbench.bench.compare --suite seed-models    --out DIR

(scripts/gpu_training_inference.py runs the same functions, beside its verification sections.)

- `seed-training`: forward+backward of one attention layer at Llama-2-7B's shape (32 heads, D=128,
  float16, causal) at the page's batch × seq rows: our flash2 + flash2_bwd, SDPA (flash backend where
  it takes the call), torch standard attention -> samples/s = batch / (fwd+bwd time).
- `seed-inference`: one decode step (B=1, 1 new token, 32 heads, D=128, float16) over a paged cache
  (block 16, shuffled physical blocks) of 512..32K tokens: our decode rung, SDPA on the contiguous
  cache, torch gathering the paged cache then SDPA, torch standard -> tokens/s of one layer (and of
  32 layers of attention alone, no weights, no MLP).
- `seed-models`: forward and forward+backward at each listed model's attention shape (heads, kv heads,
  head dim; GQA where the model has it). flash2 takes every head dim that is a multiple of 8 up to
  256 (GPT-J's 256 and GPT-NeoX's 96 included); a shape a rung does not take is recorded "n/a" with
  the reason.

Each point is verified (ours against SDPA on the same tensors, and decode against float64 on 4 heads);
each JSON carries provenance and the page's claims (workbench.bench.benchmark_page) beside the points. The page's
numbers are whole models on an A100; ours are attention layers, and the tables say which.

Without torch on a GPU (the simulator, or a GPU machine without torch) nothing is timed: each suite
runs a tiny version that verifies our rungs against float64 (the backward rung through
`training.check_backward`, the decode rung on a shuffled paged cache through `inference.check_decode`),
records the torch peers "n/a" with the reason, and says that no time was measured.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

from workbench.api import inference as dec
from workbench.bench import benchmark_page
from workbench.api import training
from workbench.harness import device, memory, peers, runner, timing
from workbench.harness import verify as _verify
from workbench.kernels import get as get_rung
from workbench.problem import Problem

BWD = get_rung("flash2_bwd", "backward")  # our backward and decode rungs in these suites
DECODE = get_rung("paged_decode", "decode")

try:
    import torch
except ImportError:  # the simulator machine has no torch
    torch = None

NAMES = ("seed-training", "seed-inference", "seed-models")
NO_TIMING = "no time measured: needs torch on a CUDA GPU"


class Session:
    """One run: where it writes (out, and an extra JSON path), its provenance, log and summary rows,
    the sequence lengths it keeps (None: all), and whether torch on a GPU is there to measure with."""

    def __init__(self, out=None, seqs=None, json_path=None, t0=None):
        self.out = out
        if out:
            os.makedirs(out, exist_ok=True)
        self.json_path = json_path
        self.seqs = set(seqs) if seqs else None
        self.t0 = time.time() if t0 is None else t0
        self.prov = device.provenance()
        self.sim = device.simulator()
        self.torch_missing = peers.available()["torch-standard"]  # None when torch sees a GPU
        self.have_torch = self.torch_missing is None
        self.summary: list[tuple] = []
        self.paths: list[str] = []

    def log(self, *a):
        print(f"[{time.time() - self.t0:6.1f}s]", *a, flush=True)

    def keep(self, n) -> bool:
        return self.seqs is None or n in self.seqs

    def save(self, name, suite, points, complete=True, **extra):
        """OUT/name (and the --json path): provenance, suite, complete, the suite's config, points and
        the page's claims."""
        data = {"provenance": self.prov, "suite": suite, "complete": complete, **extra, "points": points}
        if suite.startswith("seed-"):
            data["claims"] = [{**c.__dict__, "kernels": list(c.kernels)} for c in benchmark_page.claims_for(suite)]
        paths = ([os.path.join(self.out, name)] if self.out else []) + ([self.json_path] if self.json_path else [])
        for path in paths:
            with open(path, "w") as f:
                json.dump(data, f, indent=1, default=str)
        self.paths = paths
        return paths


# --------------------------------------------------------------------------------------------------
# Measuring on torch tensors
# --------------------------------------------------------------------------------------------------
def is_oom(exc) -> bool:
    return memory.is_oom(exc)


def timed(fn, repeat=5):
    if device.simulator():
        return None
    t = timing.time_call(fn, repeat=repeat, warmup=1, budget_s=1.0)
    return t.as_dict()


torch_peak = peers.torch_peak_bytes  # bytes torch allocates beyond what it held, one call


def free_torch():
    if torch is not None and not device.simulator() and torch.cuda.is_available():
        torch.cuda.empty_cache()
    runner.release_memory()


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
    """Our training pair on torch tensors, through the runner (checked once): the tensor-core
    rungs for float16/bfloat16, the SIMT rungs for float32 (training.training_kernels)."""

    def __init__(self, p: Problem, q, k, v, do):
        from numba import cuda

        self.p = p
        fwd, bwd = training.training_kernels(p.dtype, p.head_dim)
        self.fwd, self.bwd = get_rung(fwd), get_rung(bwd, "backward")
        self.cfg_f = runner.check_config(self.fwd, p)
        self.cfg_b = runner.check_config(self.bwd, p)
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
        return runner.run(self.bwd, self.p, self.cfg_b, *self.args, self.o_, self.lse_, self.do_,
                            *self.g_, pool=self.pool_b)

    def both(self):
        self.forward()
        self.backward()

    def bytes(self) -> int:
        """Q, K, V, O, dO, dQ, dK, dV, LSE and the backward's workspace (what this call holds)."""
        p = self.p
        qo = p.batch * p.heads * p.seq_q * p.head_dim * p.itemsize
        kv = p.batch * p.kv_heads * p.seq_kv * p.head_dim * p.itemsize
        return 4 * qo + 4 * kv + 4 * p.batch * p.heads * p.seq_q + BWD.module.workspace_bytes(p, self.cfg_b)


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
        if p.head_dim not in BWD.module.HEAD_DIMS:
            for kind in (("forward",) if forward_too else ()) + ("forward+backward",):
                points.append({"kernel": "flash2", "label": label, "problem": p.describe(), "batch": p.batch,
                               "heads": p.heads, "head_dim": p.head_dim, "seq_q": p.seq_q, "pass": kind,
                               "status": "n/a", "reason": f"flash2 supports head_dim in "
                                                          f"{BWD.module.HEAD_DIMS}, not {p.head_dim}"})
        else:
            ours = Ours(p, q, k, v, do)
            ours.both()
            torch.cuda.synchronize()
            extra = {"rungs": [ours.fwd.name, ours.bwd.name]}
            if sdpa_grads_ is not None:
                extra["rel_vs_sdpa"] = {"o": rel(ours.o, f_sdpa(q, k, v)),
                                        **{n: rel(a, b) for n, a, b in zip(("dq", "dk", "dv"), ours.grads, sdpa_grads_)}}
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


# --------------------------------------------------------------------------------------------------
# The suites
# --------------------------------------------------------------------------------------------------
TRAIN_ROWS = [(4, 2048), (8, 2048), (4, 4096), (8, 4096), (2, 8192)]
TRAIN_META = {"config": "one attention layer at Llama-2-7B's shape: 32 heads, D=128, float16, causal; "
                        "samples/s = batch / (forward + backward time of the layer)",
              "assumed": {"causal": "causal (a decoder LM; the page does not say)",
                          "dtype": "float16 (the page does not say)"}}


def seed_training(s: Session):
    if not s.have_torch:
        return verify_only(s, "seed-training")
    heads, _, dim = benchmark_page.MODEL_SHAPES["Llama 2 7B"]
    points = []
    for b, n in [r for r in TRAIN_ROWS if s.keep(r[1])]:
        p = Problem(b, heads, heads, n, n, dim, "float16", causal=True)
        points += fwd_bwd_points(p, f"{b} × {n // 1024}K")
        s.save("seed-training.json", "seed-training", points, complete=False, **TRAIN_META)
        s.log("seed-training", p.describe(), [(x["kernel"], x.get("samples_per_s"), x["status"]) for x in points[-3:]])
    s.save("seed-training.json", "seed-training", points, **TRAIN_META)
    first = points[0]["label"]
    row = {x["kernel"]: x for x in points if x["label"] == first}
    s.summary.append((f"seed-training {first.replace(' ', '')} samples/s", " / ".join(
        f"{k} {row[k].get('samples_per_s', float('nan')):.1f}" for k in row), "one attention layer, fwd+bwd"))
    return points


INF_CONTEXTS = (512, 1024, 2048, 4096, 8192, 16384, 32768)
BLOCK = 16
INF_META = {"config": "one decode step of one attention layer at Llama-2-7B's shape: B=1, 1 new token, 32 "
                      "heads, D=128, float16, paged cache (block 16, shuffled physical blocks); tokens/s = "
                      "1 / step time; the 32-layer figure is attention alone (no weights, no MLP)"}


def seed_inference(s: Session):
    if not s.have_torch:
        return verify_only(s, "seed-inference")
    from numba import cuda
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    from workbench import reference

    heads, hkv, dim = benchmark_page.MODEL_SHAPES["Llama 2 7B"]
    rung = DECODE
    points = []
    gen = torch.Generator(device="cuda").manual_seed(0)
    for n in [c for c in INF_CONTEXTS if s.keep(c)]:
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
        cfg = runner.check_config(rung, p)
        a = cuda.as_cuda_array
        o, lse = torch.empty_like(q), torch.empty((1, heads, 1), device="cuda")
        args = [a(x) for x in (q, k_cache, v_cache, table, lens, o, lse)]
        pool = runner.Pool()

        def ours():
            runner.run(rung, p, cfg, *args, pool=pool)

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
                             splits=rung.module.split_plan(p, cfg)[0],
                             memory={"peak_MiB": (rung.module.workspace_bytes(p, cfg)) / 2**20,
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
        s.log("seed-inference", n, [(x["kernel"], round(x["timing"]["median_ms"], 4)) for x in points[-4:]],
              f"float64 err {err:.1e}")
        q = k = v = k_cache = v_cache = o = lse = args = pool = None  # free before the next context
        free_torch()
    s.save("seed-inference.json", "seed-inference", points, **INF_META)
    longest = max(x["context"] for x in points)
    at = {x["kernel"]: x for x in points if x["context"] == longest}
    s.summary.append((f"seed-inference {longest // 1024}K µs/step", " / ".join(
        f"{k} {1e3 * at[k]['timing']['median_ms']:.0f}" for k in at),
        f"decode {at['decode']['cache_GBps']:.0f} GB/s of cache"))
    return points


MODEL_ROWS = [("Llama 2 7B", 4, 2048), ("Llama 2 13B", 4, 2048), ("Llama 2 70B", 4, 2048),
              ("GPT-2 (124M)", 4, 1024), ("GPT-J (6B)", 4, 1024), ("GPT-NeoX (20B)", 4, 1024)]
MODEL_META = {"config": "one attention layer at each model's shape (heads, kv heads, head dim from the "
                        "model cards), float16, causal; Llama rows at the page's batch 4 × seq 2048, GPT "
                        "rows at its seq 1024 with batch 4 (the page gives no batch)",
              "assumed": {"batch (GPT rows)": 4, "causal": True, "dtype": "float16"}}


def seed_models(s: Session):
    if not s.have_torch:
        return verify_only(s, "seed-models")
    points = []
    for model, b, n in [r for r in MODEL_ROWS if s.keep(r[2])]:
        h, hkv, d = benchmark_page.MODEL_SHAPES[model]
        p = Problem(b, h, hkv, n, n, d, "float16", causal=True)
        new = fwd_bwd_points(p, model, forward_too=True)
        for x in new:
            x["model"] = model
        points += new
        s.save("seed-models.json", "seed-models", points, complete=False, **MODEL_META)
        s.log("seed-models", model, [(x["kernel"], x.get("pass"), x.get("timing", {}) and round(x["timing"]["median_ms"], 3),
                                      x["status"]) for x in new])
    s.save("seed-models.json", "seed-models", points, **MODEL_META)
    na = sorted({x["model"] for x in points if x["status"] == "n/a"})
    s.summary.append(("seed-models", f"{len({x['model'] for x in points})} models",
                      f"flash2 n/a for {', '.join(na) or 'none'} (head dim)"))
    return points


SUITES = {"seed-training": seed_training, "seed-inference": seed_inference, "seed-models": seed_models}


# --------------------------------------------------------------------------------------------------
# Without torch on a GPU: tiny verification of our rungs, peers n/a, no time
# --------------------------------------------------------------------------------------------------
def _tiny_decode(ctx, heads=2, dim=32, block=4):
    """B=1, one new token, a context of `ctx` tokens in blocks of `block` (shuffled, NaN spares)."""
    nb = -(-ctx // block)
    return dec.DecodeProblem(1, heads, heads, 1, dim, block, nb + 2, nb + 1, (ctx,), "float16", causal=True)


# Tiny stand-ins: the real head dim where flash2 takes it (GQA kept as 2 query heads per kv head),
# short sequences and few heads (the simulator pays per thread).
TINY = {
    "seed-training": [("tiny Llama-2-7B-like", Problem(1, 2, 2, 13, 13, 32, "float16", causal=True))],
    "seed-inference": [(n, _tiny_decode(n)) for n in (7, 21)],  # partial last blocks
    "seed-models": [(m, Problem(1, 2 if hkv < h else 1, 1, 9, 9, d, "float16", causal=True))
                    for m, (h, hkv, d) in benchmark_page.MODEL_SHAPES.items()],
}
PEERS = {"seed-training": ("sdpa-flash", "torch-standard"),
         "seed-inference": ("sdpa-flash", "torch-gather-sdpa", "torch-standard"),
         "seed-models": ("sdpa-flash", "torch-standard")}
TINY_META = {"config": "verification only (no torch on a GPU): our rungs on tiny stand-ins of the suite's "
                       "shapes against float64; " + NO_TIMING}


def tiny_seqs(name) -> list:
    return sorted({x.seq_lens[0] if isinstance(x, dec.DecodeProblem) else x.seq_q for _, x in TINY[name]})


def _fields(p) -> dict:
    if isinstance(p, dec.DecodeProblem):
        return {"problem": p.describe(), "context": p.seq_lens[0], "seq_kv": p.seq_lens[0], "seq_q": p.seq_q,
                "batch": p.batch, "heads": p.heads, "kv_heads": p.kv_heads, "head_dim": p.head_dim,
                "dtype": p.dtype, "block_size": p.block_size}
    return {"problem": p.describe(), "batch": p.batch, "heads": p.heads, "kv_heads": p.kv_heads,
            "seq_q": p.seq_q, "seq_kv": p.seq_kv, "head_dim": p.head_dim, "dtype": p.dtype, "causal": p.causal}


def _checked(kernel, label, p, report, **extra) -> dict:
    return {"kernel": kernel, "label": label, **_fields(p), **extra,
            "status": "pass" if report.passed else "FAIL", "verify": report.as_dict(), "note": NO_TIMING}


def verify_only(s: Session, name: str) -> list:
    """The suite's tiny version: verification of ours against float64, every peer n/a, no time."""
    why = s.torch_missing or "needs torch on a CUDA GPU"
    points, done = [], {}
    for i, (label, p) in enumerate(TINY[name]):
        seq = p.seq_lens[0] if isinstance(p, dec.DecodeProblem) else p.seq_q
        if not s.keep(seq):
            continue
        seed_ = 500 + i
        if name == "seed-inference":
            label = f"context {label}"
            rep = dec.check_decode(p, seed=seed_)  # shuffled physical blocks, NaN in unused slots
            points.append(_checked("decode", label, p, rep,
                                   splits=DECODE.module.split_plan(p, runner.check_config(DECODE, p))[0]))
        else:
            passes = ("forward", "forward+backward") if name == "seed-models" else ("forward+backward",)
            extra = {"model": label} if name == "seed-models" else {}
            heads_ok = p.head_dim in BWD.module.HEAD_DIMS
            try:
                if not heads_ok:  # the reason the GPU points give, not the config check's long one
                    raise ValueError(f"flash2 supports head_dim in {BWD.module.HEAD_DIMS}, "
                                     f"not {p.head_dim}")
                cfg = runner.check_config(get_rung("flash2"), p)
            except ValueError as exc:
                points += [{"kernel": "flash2", "label": label, **_fields(p), **extra, "pass": kind,
                            "status": "n/a", "reason": str(exc)} for kind in passes]
            else:
                if p not in done:  # two models with the same tiny stand-in: checked once
                    done[p] = {"forward": _verify.check(get_rung("flash2"), p, seed=seed_, config=cfg)
                               if "forward" in passes else None,
                               "forward+backward": training.check_backward(p, seed=seed_)}
                points += [_checked("flash2", label, p, done[p][kind], **extra, **{"pass": kind})
                           for kind in passes]
        for peer in PEERS[name]:
            points.append({"kernel": peer, "label": label, **_fields(p), "status": "n/a", "reason": why})
        s.log(name, label, p.describe(), [x["status"] for x in points if x["label"] == label])
    s.save(f"{name}.json", name, points, **TINY_META)
    bad = [x["problem"] for x in points if x["status"] == "FAIL"]
    s.summary.append((name, f"{sum(x['status'] == 'pass' for x in points)} pass, {len(bad)} FAIL", NO_TIMING))
    return points


# --------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------
def figures(s: Session, train, infer, models):
    """seed-training.png, seed-inference.png, seed-models.png in s.out from the suites' points (a
    suite with no timed point draws nothing); returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from workbench.bench import plots

    timed_ = lambda pts: pts if pts and any(x.get("timing") for x in pts) else None  # noqa: E731
    train, infer, models = timed_(train), timed_(infer), timed_(models)
    dev = s.prov.get("device", "")
    for name in ("seed-training.json", "seed-inference.json", "seed-models.json"):
        if os.path.exists(os.path.join(s.out, name)):  # the device the data came from
            with open(os.path.join(s.out, name)) as f:
                dev = json.load(f)["provenance"].get("device", dev)
            break
    written = []
    if train:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        rows = [r for r in TRAIN_ROWS if any(x["batch"] == r[0] and x["seq_q"] == r[1] for x in train)]
        labels = [f"{b} × {n // 1024}K" for b, n in rows]
        kinds = [("flash2", "flash2 + flash2_bwd (ours)"), ("sdpa-flash", "SDPA flash"),
                 ("torch-standard", "torch standard")]
        w = 0.2
        for i, (k, name) in enumerate(kinds):
            ys = [next((x.get("samples_per_s") or 0 for x in train if x["kernel"] == k and x["label"] == lab), 0)
                  for lab in labels]
            ax.bar(np.arange(len(labels)) + (i - 1.5) * w, ys, w, label=name)
        claims = {(c.batch, c.seq): c.value for c in benchmark_page.claims_for("seed-training")
                  if c.column.startswith("Flash") and c.value}
        ys = [claims.get((b, n), 0) for b, n in rows]
        ax.bar(np.arange(len(labels)) + 1.5 * w, ys, w, label="page: Flash Attn (whole Llama-2-7B, A100)",
               color="grey")
        ax.set_yscale("log")
        ax.set_xticks(np.arange(len(labels)), labels)
        ax.set_ylabel("samples/s (one attention layer, fwd+bwd)")
        ax.set_title(f"Training, Llama-2-7B attention (H=32, D=128, fp16, causal) — {dev}", fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        written.append(plots.save_figure(fig, os.path.join(s.out, "seed-training.png"), dpi=120))
    if infer:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for k in ("decode", "sdpa-flash", "torch-gather-sdpa", "torch-standard"):
            xs = [x["context"] for x in infer if x["kernel"] == k]
            ys = [x["tokens_per_s_layer"] for x in infer if x["kernel"] == k]
            ax.plot(xs, ys, marker="o", label=k + (" (ours, paged)" if k == "decode" else ""))
        cl = [c for c in benchmark_page.claims_for("seed-inference") if c.column.startswith("Flash") and c.value]
        ax.plot([c.seq for c in cl], [c.value for c in cl], "k--", marker="x",
                label="page: Flash Attn (whole Llama-2-7B, A100)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context length")
        ax.set_ylabel("tokens/s (one attention layer)")
        ax.set_title(f"Decode, Llama-2-7B attention (B=1, H=32, D=128, fp16) — {dev}", fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        written.append(plots.save_figure(fig, os.path.join(s.out, "seed-inference.png"), dpi=120))
    if models:
        fig, ax = plt.subplots(figsize=(9, 4.5))
        names = [m for m, _, _ in MODEL_ROWS if any(x.get("model") == m for x in models)]
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
        written.append(plots.save_figure(fig, os.path.join(s.out, "seed-models.png"), dpi=120))
    return written


# --------------------------------------------------------------------------------------------------
# For `python -m workbench.bench.compare --suite NAME`: the table, the page's claims beside, the files
# --------------------------------------------------------------------------------------------------
def _rate(x):
    for key, unit in (("samples_per_s", "samples/s"), ("tokens_per_s_layer", "tokens/s")):
        if x.get(key) is not None:
            return f"{x[key]:.4g} {unit}"
    return ""


def print_points(points, title):
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for c in ("kernel", "where", "pass", "status", "ms (p20-p80)", "rate", "peak MiB", "note"):
        table.add_column(c, justify="right" if c in ("ms (p20-p80)", "rate", "peak MiB") else "left")
    for x in points:
        style = {"pass": "green", "ok": "green", "FAIL": "red"}.get(x["status"], "yellow")
        t = x.get("timing") or {}
        ms = f"{t['median_ms']:.3f} ({t['p20_ms']:.3f}-{t['p80_ms']:.3f})" if t else ""
        peak = (x.get("memory") or {}).get("peak_MiB")
        v = x.get("verify") or {}
        err = v.get("rel_fro", x.get("rel_fro_vs_float64"))
        grads = " ".join(f"{n} {e['rel_fro']:.1e}" for n, e in (v.get("errors") or {}).items())
        note = (x.get("reason") or x.get("error") or "; ".join(v.get("failures") or ())
                or (f"rel err vs float64 {err:.1e}" if err is not None else "")
                or (f"rel err vs float64: {grads}" if grads else ""))
        where = x.get("label") if "context" not in x else f"ctx {x['context']}"
        table.add_row(x["kernel"], str(where), x.get("pass", ""), f"[{style}]{x['status']}[/{style}]", ms,
                      _rate(x), "" if peak is None else f"{peak:.1f}", note[:70])
    Console(width=None if sys.stdout.isatty() else 160).print(table)


def _ours(suite, claim, x):
    """(our number for this claim from point x, what it is) or None when x is not comparable."""
    if x.get("kernel") not in claim.kernels or x.get("status") != "ok":
        return None
    if suite == "seed-inference":
        if x.get("context") != claim.seq:
            return None
        return x["tokens_per_s_32_layers_attention_only"], "32 layers of attention, no weights/MLP"
    if x.get("seq_q") != claim.seq or any(getattr(claim, k) not in (None, x.get(k)) for k in ("batch", "heads", "head_dim")):
        return None
    v = x.get(claim.metric)
    return None if v is None else (v, f"one attention layer, {x.get('pass', 'forward+backward')}")


def claims_beside(points, suite) -> list:
    """[(claim, kernel, ours, what ours is, ours ÷ claimed)] for the page's claims that have a number."""
    rows = []
    for c in benchmark_page.claims_for(suite):
        if c.metric == "speedup":
            continue
        for x in points:
            got = _ours(suite, c, x)
            if got is not None:
                rows.append((c, x["kernel"], got[0], got[1], got[0] / c.value if c.value else None))
    return rows


def print_claims(points, suite):
    from rich.console import Console
    from rich.table import Table

    rows = claims_beside(points, suite)
    if not rows:
        n = sum(c.metric != "speedup" for c in benchmark_page.claims_for(suite))
        print(f"the page's {n} claims for {suite} have no measurement beside them ({NO_TIMING})"
              if not any(x.get("timing") for x in points) else f"no claim of {suite} matches these points")
        return
    table = Table(title=f"the page's claims beside our measurements — suite {suite} (the page: whole "
                        f"models on an A100; ours: attention only, on this GPU)")
    for col in ("seq", "page says", "claimed", "kernel", "measured", "ours is", "measured ÷ claimed"):
        table.add_column(col, justify="left" if col in ("page says", "kernel", "ours is") else "right")
    for c, k, v, what, r in rows:
        table.add_row(str(c.seq), f"{c.what} ({c.table})", f"{c.value:g} {c.unit}" if c.value else c.note,
                      k, f"{v:.4g}", what, "" if r is None else f"{r:.2f}×")
    Console(width=None if sys.stdout.isatty() else 160).print(table)


def run_suite(name, out=None, json_path=None, seqs=None, plots=True) -> int:
    """What `compare --suite NAME` does for these suites; exit status 1 when a point fails."""
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; choose one of {NAMES}")
    s = Session(out, seqs=seqs, json_path=json_path)
    if seqs:
        have = (tiny_seqs(name) if not s.have_torch else
                {"seed-training": [n for _, n in TRAIN_ROWS], "seed-inference": list(INF_CONTEXTS),
                 "seed-models": [n for _, _, n in MODEL_ROWS]}[name])
        if not set(seqs) & set(have):
            raise ValueError(f"--seq {' '.join(map(str, seqs))} keeps nothing of suite {name} here; its "
                             f"lengths are {sorted(set(have))}")
    points = SUITES[name](s)
    where = s.prov["device"]
    print_points(points, f"suite {name} on {where}")
    print_claims(points, name)
    for path in s.paths:
        print(f"wrote {path}")
    if out and plots:
        for path in figures(s, *(points if n == name else None for n in NAMES)):
            print(f"wrote {path}")
    if not s.have_torch:
        print(f"{name}: verification only, {NO_TIMING} ({s.torch_missing})")
    return 1 if any(x["status"] == "FAIL" for x in points) else 0
