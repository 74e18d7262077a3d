"""Does workbench drop into PyTorch? The checks and measurements behind `figures/<gpu>/torch-integration.json`
(issue 19), on a GPU, in one run:

- opcheck: `torch.library.opcheck` of `workbench::attention` (float16, bfloat16, float32) and
  `workbench::decode` (float16, bfloat16): schema, fake implementation, autograd registration;
- stream: the inputs' producer runs on a side stream and the op on that stream must see its writes;
- graph: the op captured in a `torch.cuda.CUDAGraph` replays bitwise the same output;
- overhead: microseconds per call, workbench's `scaled_dot_product_attention` vs torch's SDPA, at a
  tiny shape (host time dominates) and the benchmark page's seed shape (kernel time dominates):
  `host_us` is the wall time of a loop of calls with no synchronisation inside it, per call;
  `gpu_us` the CUDA-event time of the same loop; the ratio is workbench's over SDPA's;
- compile: a small transformer (2 layers, d_model 256, 4 heads of 64, random tokens) trained for 50
  steps under `torch.compile(fullgraph=True)` with workbench's attention and, from the same
  initial weights and batches, with torch's SDPA; both loss curves are kept. bfloat16 autocast, so
  attention runs on the tensor-core pair. The curves must agree within `LOSS_RTOL` at every step:
  the two attentions differ by bfloat16 rounding (about 2⁻⁸ relative per element), which training
  does not amplify over 50 steps at this size.

    python -m workbench.bench.torch_integration figures/h200     # writes torch-integration.{json,png}

`plot(data, path)` draws the loss curves and the overhead bars. Nothing here runs without a GPU
except the model itself (`train(..., device="cpu", compile=False)`: what the CPU tests exercise).
"""

from __future__ import annotations

import argparse
import json
import os
import time
import traceback

LOSS_RTOL = 0.02
TINY = dict(b=1, h=8, n=128, d=64)
SEED_SHAPE = dict(b=8, h=32, n=4096, d=64)
MODEL = dict(vocab=512, d_model=256, heads=4, layers=2, seq=256, batch=8)


# --------------------------------------------------------------------------------------------------
# The model: a pre-norm GPT block stack whose attention is a parameter
# --------------------------------------------------------------------------------------------------
def make_model(attention, vocab, d_model, heads, layers, seq, seed=0):
    """A 2-layer causal transformer (torch.nn) calling `attention(q, k, v, is_causal=True)` on
    (B, H, N, D) tensors; weights from `seed`, so two models built alike start identical."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
            self.qkv, self.proj = nn.Linear(d_model, 3 * d_model), nn.Linear(d_model, d_model)
            self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))

        def forward(self, x):
            b, n, _ = x.shape
            q, k, v = self.qkv(self.ln1(x)).view(b, n, 3, heads, d_model // heads).permute(2, 0, 3, 1, 4)
            y = attention(q.contiguous(), k.contiguous(), v.contiguous(), is_causal=True)
            x = x + self.proj(y.transpose(1, 2).reshape(b, n, d_model))
            return x + self.mlp(self.ln2(x))

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.tok, self.pos = nn.Embedding(vocab, d_model), nn.Embedding(seq, d_model)
            self.blocks = nn.ModuleList(Block() for _ in range(layers))
            self.head = nn.Linear(d_model, vocab)

        def forward(self, tokens):
            x = self.tok(tokens) + self.pos(torch.arange(tokens.shape[1], device=tokens.device))
            for block in self.blocks:
                x = block(x)
            return self.head(x)

    torch.manual_seed(seed)
    return Model()


def train(attention, steps=50, device="cuda", compile=True, autocast=True, seed=0, **shape):
    """Losses of `steps` AdamW steps on random tokens (next-token targets); same seed, same batches."""
    import torch

    cfg = {**MODEL, **shape}
    model = make_model(attention, cfg["vocab"], cfg["d_model"], cfg["heads"], cfg["layers"], cfg["seq"],
                       seed).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    g = torch.Generator(device="cpu").manual_seed(seed + 1)
    batches = [torch.randint(0, cfg["vocab"], (cfg["batch"], cfg["seq"] + 1), generator=g) for _ in range(steps)]

    def step(tokens):
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=autocast):
            logits = model(tokens[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, cfg["vocab"]),
                                                     tokens[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    fn = torch.compile(step, fullgraph=True) if compile else step
    return [float(fn(t.to(device))) for t in batches]


# --------------------------------------------------------------------------------------------------
# The GPU checks
# --------------------------------------------------------------------------------------------------
def _inputs(dtype, b, h, n, d, hkv=None, seed=0):
    import torch

    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(b, h, n, d, device="cuda", dtype=dtype, generator=g)
    k, v = (torch.randn(b, hkv or h, n, d, device="cuda", dtype=dtype, generator=g) for _ in range(2))
    return q, k, v


def _attempt(fn) -> dict:
    try:
        out = fn()
        return {"ok": True, **(out or {})}
    except Exception as e:  # noqa: BLE001 - a failing check is a result
        return {"ok": False, "error": f"{type(e).__name__}: {e}"[:2000],
                "traceback": traceback.format_exc()[-3000:]}


def opchecks() -> dict:
    import torch

    from workbench.api import torch_ops  # noqa: F401  (registers the ops)

    res = {}
    for name in ("float16", "bfloat16", "float32"):
        dtype = getattr(torch, name)

        def attention_check():
            q, k, v = _inputs(dtype, 2, 8, 197, 64, hkv=2)
            for x in (q, k, v):
                x.requires_grad_()
            torch.library.opcheck(torch.ops.workbench.attention.default, (q, k, v, True, -1, -1, None))

        res[f"attention/{name}"] = _attempt(attention_check)
    for name in ("float16", "bfloat16"):
        dtype = getattr(torch, name)

        def decode_check():
            g = torch.Generator(device="cuda").manual_seed(3)
            kc, vc = (torch.randn(12, 2, 16, 64, device="cuda", dtype=dtype, generator=g) for _ in range(2))
            table = torch.randperm(12, device="cuda").reshape(3, 4).to(torch.int32)
            lens = torch.tensor([37, 1, 64], device="cuda", dtype=torch.int32)
            q = torch.randn(3, 8, 1, 64, device="cuda", dtype=dtype, generator=g)
            torch.library.opcheck(torch.ops.workbench.decode.default, (q, kc, vc, table, lens, True, -1, -1, None))

        res[f"decode/{name}"] = _attempt(decode_check)
    return res


def stream_check() -> dict:
    """The producer of q writes it on a side stream just before the op runs there: a launch on
    another stream (Numba's default) would race it and read the stale zeros."""
    import torch

    from workbench.api.torch_ops import scaled_dot_product_attention as wb_sdpa

    q, k, v = _inputs(torch.float16, 4, 16, 2048, 64)
    side = torch.cuda.Stream()
    stale = torch.zeros_like(q)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    with torch.cuda.stream(side):
        for _ in range(3):
            side.wait_stream(torch.cuda.current_stream())
            stale.zero_()
            torch.cuda._sleep(2_000_000)  # keep the side stream busy so a race would show
            stale.copy_(q)
            out = wb_sdpa(stale, k, v, is_causal=True)
    torch.cuda.synchronize()
    err = float((out.float() - ref.float()).abs().max())
    return {"max_abs_err_vs_sdpa": err, "ok": err < 2e-2}


def graph_check() -> dict:
    import torch

    from workbench.api.torch_ops import scaled_dot_product_attention as wb_sdpa

    q, k, v = _inputs(torch.float16, 2, 8, 333, 64)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        first = wb_sdpa(q, k, v, is_causal=True)  # warm-up outside the capture (compiles, plans)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = wb_sdpa(q, k, v, is_causal=True)
    outs = []
    for _ in range(3):
        graph.replay()
        outs.append(out.clone())
    torch.cuda.synchronize()
    same = all(torch.equal(o, first) for o in outs)
    return {"replays": len(outs), "bitwise_equal_to_eager": same, "ok": same}


def per_call(fn, calls) -> dict:
    """Host µs per call (no synchronisation inside the loop) and GPU µs per call (events)."""
    import torch

    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    t0 = time.perf_counter()
    start.record()
    for _ in range(calls):
        fn()
    host = time.perf_counter() - t0
    end.record()
    torch.cuda.synchronize()
    return {"host_us": 1e6 * host / calls, "gpu_us": 1e3 * start.elapsed_time(end) / calls, "calls": calls}


def overhead() -> list[dict]:
    import torch
    import torch.nn.functional as F

    from workbench.api.torch_ops import scaled_dot_product_attention as wb_sdpa

    rows = []
    for label, shape, calls in (("tiny", TINY, 500), ("seed", SEED_SHAPE, 30)):
        q, k, v = _inputs(torch.float16, **shape)
        wb = per_call(lambda: wb_sdpa(q, k, v, is_causal=True), calls)
        ref = per_call(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), calls)
        rows.append({"shape": label, **shape, "dtype": "float16", "causal": True, "workbench": wb, "sdpa": ref,
                     "host_ratio": wb["host_us"] / ref["host_us"], "gpu_ratio": wb["gpu_us"] / ref["gpu_us"]})
    return rows


def compile_training(steps=50) -> dict:
    import torch.nn.functional as F

    from workbench.api.torch_ops import scaled_dot_product_attention as wb_sdpa

    curves = {"workbench": train(wb_sdpa, steps), "sdpa": train(F.scaled_dot_product_attention, steps)}
    rel = [abs(a - b) / abs(b) for a, b in zip(curves["workbench"], curves["sdpa"])]
    return {"model": MODEL, "steps": steps, "fullgraph": True, "autocast": "bfloat16", "losses": curves,
            "max_rel_diff": max(rel), "rtol": LOSS_RTOL, "ok": max(rel) <= LOSS_RTOL}


def measure() -> dict:
    from workbench.harness.device import provenance

    data = {"provenance": provenance()}
    data["opcheck"] = opchecks()
    data["stream"] = _attempt(stream_check)
    data["graph"] = _attempt(graph_check)
    data["overhead"] = overhead()
    data["compile"] = _attempt(compile_training)
    return data


def plot(data, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    comp = data.get("compile", {})
    for name, losses in comp.get("losses", {}).items():
        a.plot(range(1, len(losses) + 1), losses, label=name)
    a.set(xlabel="step", ylabel="loss", title="2-layer transformer, torch.compile(fullgraph=True)")
    a.legend()
    rows = data.get("overhead", [])
    labels = [r["shape"] for r in rows]
    x = range(len(rows))
    b.bar([i - 0.2 for i in x], [r["workbench"]["host_us"] for r in rows], 0.4, label="workbench")
    b.bar([i + 0.2 for i in x], [r["sdpa"]["host_us"] for r in rows], 0.4, label="torch SDPA")
    b.set_xticks(list(x), labels)
    b.set(ylabel="µs per call (host)", yscale="log", title="per-call time")
    b.legend()
    fig.suptitle(data["provenance"].get("device", ""))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="folder for torch-integration.json and .png")
    args = ap.parse_args(argv)
    from workbench.target import mode

    if mode() != "gpu":
        raise SystemExit("torch_integration needs a CUDA GPU (and NUMBA_ENABLE_CUDASIM unset)")
    os.makedirs(args.out, exist_ok=True)
    data = measure()
    with open(os.path.join(args.out, "torch-integration.json"), "w") as f:
        json.dump(data, f, indent=1, default=str)
    plot(data, os.path.join(args.out, "torch-integration.png"))
    print(f"{'check':<22} result")
    for name, r in {**{f"opcheck {k}": v for k, v in data["opcheck"].items()}, "stream": data["stream"],
                    "graph": data["graph"], "compile": data["compile"]}.items():
        print(f"{name:<22} {'ok' if r.get('ok') else 'FAILED ' + r.get('error', '')[:80]}")
    for r in data["overhead"]:
        print(f"overhead {r['shape']:<6} workbench {r['workbench']['host_us']:8.1f} µs  "
              f"SDPA {r['sdpa']['host_us']:8.1f} µs  ratio {r['host_ratio']:.2f}")


if __name__ == "__main__":
    main()
