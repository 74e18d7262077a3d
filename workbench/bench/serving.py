"""Serving: how many sequences a KV-cache budget holds, contiguous vs paged, and the tokens/s at
each concurrency (issue 16, Build 4), beside the benchmark page's "Can serve 2-3x more users".

    python -m workbench.bench.serving --capacity-only [--json PATH]      (CPU: arithmetic only)
    python3 scripts/gpu_serving.py OUT                                   (a GPU with torch: measure)

The page's sentence (benchmark_page.STATEMENTS["recommend-serving"]) gives no setup. Read here as
vLLM's argument for paged attention: at one memory budget, a cache of fixed-size blocks handed
out as sequences grow holds more concurrent sequences than one that reserves each sequence's
maximum length up front (what a plain attention call over a contiguous (B, H, N, D) cache needs).

The capacity model (pure arithmetic, no measurement):
    bytes per token     b_t = 2 · layers · kv_heads · D · itemsize     (K and V of every layer)
    contiguous          C_contig = floor(M / (b_t · N_max))            every sequence reserves N_max
    paged               sequences are admitted in draw order while their blocks fit:
                        Σ_{i<C} (ceil(n_i / bs) · bs · b_t + table) ≤ M
                        (waste: only each sequence's last, partial block; table: a block-table row
                        of ceil(N_max / bs) int32 per layer-independent sequence, and its length)
                        in expectation C ≈ M / (b_t · E[ceil(n / bs) · bs] + table)
    ratio               C_paged / C_contig                             the page's "2-3x"
An FP8 (e4m3) cache stores 1 byte an element plus a float32 scale per (layer, kv head) for K and V.

Lengths: each running sequence's current length (prompt + tokens so far) at the moment the cache is
full, independent draws from a stated distribution (numpy default_rng(seed)):
    uniform(lo, hi)          integers, both ends included
    lognormal(median, sigma) exp(N(log median, sigma²)), rounded up, clipped to [1, N_max]
    fixed(n)                 every sequence n tokens (fixed(N_max): the worst case for paging)
What the model leaves out, said: the budget M is what is left for the KV cache (default: vLLM's
gpu_memory_utilization 0.9 of the GPU's memory less the model's fp16 weights; activations are not
subtracted); paged sequences keep growing, so a server keeps headroom or preempts (the count here
is the steady state's upper bound); a contiguous server could also cap lengths lower.

The measurement (`measure`, on a GPU with torch; scripts/gpu_serving.py runs it): for concurrencies C
up to C_paged, lengths the first C draws, one layer's decode step (Nq = 1) at the model's shape:
    paged   workbench.api.inference.decode on torch tensors (device block table and lengths, a
            DecodeErrors, max_seq_len = the batch's longest: what a scheduler knows on the host),
            the whole call (`call`: events around it, GPU idle before) and the kernels alone
            (`kernel`: the GPU kept busy first so launches queue behind it);
    SDPA    torch's scaled_dot_product_attention on the contiguous cache (C, Hkv, N_max, D), keys
            up to the batch's longest, a key-padding mask for the shorter ones (its backends that
            take a mask), only for C ≤ C_contig (beyond, the contiguous cache does not fit M);
    attention tokens/s = C / (layers · step time)  (attention only: no weights, no MLP).
L2 flushed before every repetition, medians of `reps`. Written to OUT/serving.json with provenance
(workbench.harness.device.provenance()) and the capacity model's numbers; `plot` draws
serving.png: the ratio per scenario beside the page's 2-3x, and tokens/s against concurrency.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import sys
from dataclasses import asdict, dataclass

import numpy as np

GiB = 2**30
GPU_MEMORY_GiB = {"H200": 140.0, "H100": 79.6}  # what torch reports usable (the H200's 141 GB card)
GPU_MEMORY_UTILIZATION = 0.9  # vLLM's default share of the GPU's memory for weights + cache
BLOCK_SIZES = (16, 64, 256)
TABLE_ENTRY = 4  # bytes: an int32 block id


# --------------------------------------------------------------------------------------------------
# Inputs: the model's cache shape and the lengths
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Model:
    """The KV cache's shape of a model (every layer caches K and V of kv_heads × head_dim)."""

    name: str
    layers: int
    kv_heads: int
    head_dim: int
    params: float  # for the default budget: fp16 weights take 2 · params bytes
    heads: int = 0  # query heads (the measurement's q); 0: kv_heads

    @property
    def query_heads(self) -> int:
        return self.heads or self.kv_heads

    def bytes_per_token(self, cache_dtype: str = "float16") -> float:
        """K and V of one token in every layer (an FP8 cache's scales are per kv head, not per
        token: paged_capacity takes them off the budget once)."""
        size = 1 if cache_dtype == "float8_e4m3fn" else (4 if cache_dtype == "float32" else 2)
        return 2 * self.layers * self.kv_heads * self.head_dim * size


MODELS = {  # model cards
    "llama2-7b": Model("Llama 2 7B", 32, 32, 128, 6.74e9, 32),
    "llama3-8b": Model("Llama 3 8B", 32, 8, 128, 8.03e9, 32),
    "llama2-70b": Model("Llama 2 70B", 80, 8, 128, 69.0e9, 64),
}


@dataclass(frozen=True)
class Lengths:
    """A stated length distribution (module docstring): kind, its two numbers, and the seed."""

    kind: str  # "uniform" | "lognormal" | "fixed"
    a: float  # uniform: lo; lognormal: median; fixed: n
    b: float = 0.0  # uniform: hi; lognormal: sigma
    seed: int = 0

    def __post_init__(self):
        if self.kind not in ("uniform", "lognormal", "fixed"):
            raise ValueError(f"lengths kind must be uniform, lognormal or fixed, not {self.kind!r}")

    def describe(self) -> str:
        if self.kind == "uniform":
            return f"uniform({int(self.a)}, {int(self.b)})"
        if self.kind == "lognormal":
            return f"lognormal(median={int(self.a)}, sigma={self.b:g})"
        return f"fixed({int(self.a)})"

    def draw(self, count: int, max_len: int) -> np.ndarray:
        """`count` lengths (int64), the same first ones for every count (one stream per seed)."""
        rng = np.random.default_rng(self.seed)
        if self.kind == "uniform":
            n = rng.integers(int(self.a), int(self.b), size=count, endpoint=True)
        elif self.kind == "lognormal":
            n = np.ceil(np.exp(rng.normal(math.log(self.a), self.b, size=count)))
        else:
            n = np.full(count, self.a)
        return np.clip(n, 1, max_len).astype(np.int64)


def default_budget(model: Model, gpu: str = "H200") -> float:
    """Bytes for the KV cache: GPU_MEMORY_UTILIZATION of the GPU's memory less fp16 weights."""
    return GPU_MEMORY_UTILIZATION * GPU_MEMORY_GiB[gpu] * GiB - 2 * model.params


def default_lengths(max_len: int, seed: int = 0) -> tuple[Lengths, ...]:
    """The scenarios of the table: uniform over [1, N_max]; a chat-like lognormal (median N_max/8,
    sigma 1); every sequence at N_max (where paging can win nothing)."""
    return (Lengths("uniform", 1, max_len, seed), Lengths("lognormal", max_len // 8, 1.0, seed),
            Lengths("fixed", max_len, 0.0, seed))


# --------------------------------------------------------------------------------------------------
# The capacity model
# --------------------------------------------------------------------------------------------------
def contiguous_capacity(budget: float, model: Model, max_len: int, cache_dtype="float16") -> int:
    return int(budget // (model.bytes_per_token(cache_dtype) * max_len))


def paged_capacity(budget: float, model: Model, max_len: int, block_size: int, lengths: Lengths,
                   cache_dtype="float16") -> dict:
    """Sequences admitted in draw order while their blocks (and table rows) fit the budget; the
    expectation formula beside it; the waste in each last block."""
    bt = model.bytes_per_token(cache_dtype)
    table = TABLE_ENTRY * (-(-max_len // block_size) + 1)  # the row, and the length
    if cache_dtype == "float8_e4m3fn":
        budget = budget - 2 * 4 * model.layers * model.kv_heads  # the scales
    guess = int(budget / (bt * block_size)) + 16  # no sequence takes less than one block
    n = lengths.draw(guess, max_len)
    slots = -(-n // block_size) * block_size  # tokens each sequence's blocks hold
    used = np.cumsum(slots * bt + table)
    admitted = int(np.searchsorted(used, budget, side="right"))
    mean_slots = float(slots[: max(admitted, 1)].mean())
    mean_len = float(n[: max(admitted, 1)].mean())
    return {"sequences": admitted,
            "expected": budget / (bt * float(slots.mean()) + table),
            "mean_length": mean_len,
            "mean_block_tokens": mean_slots,
            "waste": 1 - mean_len / mean_slots,
            "bytes_used": float(used[admitted - 1]) if admitted else 0.0}


def capacity_rows(budget: float, model: Model, max_len: int, block_sizes=BLOCK_SIZES,
                  lengths=None) -> list[dict]:
    """One row per (lengths, block size): contiguous and paged counts, float16 and FP8 caches."""
    lengths = lengths or default_lengths(max_len)
    rows = []
    contig = contiguous_capacity(budget, model, max_len)
    for dist in lengths:
        for bs in block_sizes:
            paged = paged_capacity(budget, model, max_len, bs, dist)
            fp8 = paged_capacity(budget, model, max_len, bs, dist, "float8_e4m3fn")
            rows.append({"lengths": dist.describe(), "lengths_spec": asdict(dist), "block_size": bs,
                         "contiguous": contig, "paged": paged["sequences"],
                         "ratio": paged["sequences"] / contig if contig else math.inf,
                         "paged_expected": paged["expected"], "mean_length": paged["mean_length"],
                         "waste": paged["waste"], "paged_fp8": fp8["sequences"],
                         "ratio_fp8": fp8["sequences"] / contig if contig else math.inf})
    return rows


def page_claim() -> tuple[float, float, str]:
    """(low, high, sentence) of the page's serving claim, read from benchmark_page."""
    from workbench.bench import benchmark_page

    text = benchmark_page.STATEMENTS["recommend-serving"]
    m = re.search(r"(\d+(?:\.\d+)?)\s*[-–]\s*(\d+(?:\.\d+)?)x", text)
    return float(m[1]), float(m[2]), text


def capacity(budget: float | None = None, model: str = "llama2-7b", max_len: int = 4096,
             block_sizes=BLOCK_SIZES, seed: int = 0, gpu: str = "H200") -> dict:
    """The capacity model's whole result as a JSON-ready dict: inputs, formulas, rows, the claim."""
    m = MODELS[model]
    rule = (f"{GPU_MEMORY_UTILIZATION} x {GPU_MEMORY_GiB[gpu]} GiB ({gpu}) - fp16 weights "
            f"(2 x {m.params:.3g} bytes)") if budget is None else "given"
    budget = default_budget(m, gpu) if budget is None else float(budget)
    lo, hi, text = page_claim()
    return {"kind": "arithmetic (no measured numbers)",
            "inputs": {"model": asdict(m), "model_key": model, "budget_bytes": budget,
                       "budget_GiB": budget / GiB,
                       "budget_rule": rule,
                       "max_len": max_len, "block_sizes": list(block_sizes), "seed": seed,
                       "bytes_per_token": {"float16": m.bytes_per_token("float16"),
                                           "float8_e4m3fn": m.bytes_per_token("float8_e4m3fn")}},
            "formulas": {"contiguous": "floor(M / (b_t * N_max))",
                         "paged": "max C with sum_{i<C} (ceil(n_i/bs)*bs*b_t + 4*(ceil(N_max/bs)+1)) <= M",
                         "b_t": "2 * layers * kv_heads * D * itemsize"},
            "claim": {"text": text, "low": lo, "high": hi},
            "rows": capacity_rows(budget, m, max_len, block_sizes, default_lengths(max_len, seed)),
            "written": {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                        "command": " ".join(getattr(sys, "orig_argv", sys.argv))}}


def print_table(result: dict, file=None) -> None:
    from rich.console import Console
    from rich.table import Table

    inp = result["inputs"]
    m = inp["model"]
    lo, hi = result["claim"]["low"], result["claim"]["high"]
    table = Table(title=f"Concurrent sequences in {inp['budget_GiB']:.1f} GiB of KV cache: {m['name']} "
                        f"({m['layers']} layers × {m['kv_heads']} kv heads × D {m['head_dim']}, "
                        f"{inp['bytes_per_token']['float16'] / 2**10:.0f} KiB/token fp16), N_max {inp['max_len']}",
                  caption=f"the page: {lo:g}-{hi:g}× more users (\"{result['claim']['text']}\"); "
                          f"arithmetic, no measurement")
    for col in ("lengths", "block", "mean len (admitted)", "contiguous", "paged", "paged/contig", "last-block waste",
                "paged FP8", "FP8/contig"):
        table.add_column(col, justify="left" if col == "lengths" else "right")
    for r in result["rows"]:
        ratio = r["ratio"]
        mark = "green" if lo <= ratio <= hi else ("yellow" if ratio > hi else "red")
        table.add_row(r["lengths"], str(r["block_size"]), f"{r['mean_length']:.0f}", str(r["contiguous"]),
                      str(r["paged"]), f"[{mark}]{ratio:.2f}×[/{mark}]", f"{100 * r['waste']:.1f} %",
                      str(r["paged_fp8"]), f"{r['ratio_fp8']:.2f}×")
    Console(file=file, width=None if (file or sys.stdout).isatty() else 160).print(table)


# --------------------------------------------------------------------------------------------------
# The measurement (a GPU with torch)
# --------------------------------------------------------------------------------------------------
def concurrencies(c_contig: int, c_paged: int) -> list[int]:
    """1, 2, 4, ... up to c_paged, with c_contig and c_paged themselves."""
    out = {c_contig, c_paged}
    c = 1
    while c < c_paged:
        out.add(c)
        c *= 2
    return sorted(x for x in out if 1 <= x <= c_paged)


def measure(out_dir: str, *, model: str = "llama2-7b", max_len: int = 4096, block_size: int = 16,
            lengths: Lengths | None = None, budget: float | None = None, reps: int = 10,
            time_left=None, log=print) -> dict:
    """Time one layer's decode step at each concurrency (module docstring); write
    out_dir/serving.json (and serving.png). `time_left()` (seconds) lets a caller stop early: the
    JSON is rewritten after every point."""
    import torch
    import torch.nn.functional as F

    from workbench.api import inference
    from workbench.harness import device

    dev = torch.device("cuda")
    m = MODELS[model]
    lengths = lengths or Lengths("uniform", 1, max_len, 0)
    budget = default_budget(m) if budget is None else float(budget)
    cap = capacity(budget, model, max_len, (block_size,))
    c_contig = contiguous_capacity(budget, m, max_len)
    paged = paged_capacity(budget, m, max_len, block_size, lengths)
    c_paged = paged["sequences"]
    result = {"provenance": device.provenance(), "capacity": cap,
              "setup": {"model": model, "max_len": max_len, "block_size": block_size,
                        "lengths": asdict(lengths), "lengths_text": lengths.describe(),
                        "budget_bytes": budget, "layers": m.layers, "heads": m.query_heads,
                        "kv_heads": m.kv_heads, "head_dim": m.head_dim, "dtype": "float16",
                        "contiguous_sequences": c_contig, "paged_sequences": c_paged, "reps": reps,
                        "tokens_per_s": "C / (layers x one layer's step time): attention only"},
              "points": []}
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "serving.json")

    def save():
        with open(path, "w") as f:
            json.dump(result, f, indent=1)

    flush = torch.empty(256 << 20, dtype=torch.uint8, device=dev)

    def event_ms(fn, busy):
        times = []
        for _ in range(reps):
            flush.zero_()
            if busy:  # ~1.5 ms of spinning: longer than a call's host side, so only kernels count
                torch.cuda._sleep(3_000_000)
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        times.sort()
        return {"median_ms": times[len(times) // 2], "p20_ms": times[len(times) // 5],
                "p80_ms": times[(4 * len(times)) // 5]}

    h, hkv, d = m.query_heads, m.kv_heads, m.head_dim

    def one_point(c, lens, point):  # (its tensors are freed when it returns)
        need = [-(-n // block_size) for n in lens]
        nb = sum(need)
        order = torch.randperm(nb, device=dev).to(torch.int32)  # shuffled physical blocks
        table = torch.zeros((c, max(need)), dtype=torch.int32, device=dev)
        start = 0
        for i, k in enumerate(need):
            table[i, :k] = order[start:start + k]
            start += k
        kc = torch.randn((nb, hkv, block_size, d), device=dev, dtype=torch.float16)
        vc = torch.randn_like(kc)
        q = torch.randn((c, h, 1, d), device=dev, dtype=torch.float16)
        seq = torch.tensor(lens, dtype=torch.int32, device=dev)
        errors = inference.DecodeErrors(c, like=q)
        longest = max(lens)

        def paged_call():
            return inference.decode(q, kc, vc, table, seq, errors=errors, max_seq_len=longest)

        paged_call()
        torch.cuda.synchronize()
        point["paged_call"] = event_ms(paged_call, busy=False)
        point["paged_kernel"] = event_ms(paged_call, busy=True)
        point["paged_bytes"] = 2 * hkv * d * 2 * sum(lens)
        point["errors_clear"] = not errors.any()
        if c <= c_contig:
            k = torch.randn((c, hkv, max_len, d), device=dev, dtype=torch.float16)
            v = torch.randn_like(k)
            qg = q.view(c, hkv, h // hkv, d)  # the group's heads as query rows: K/V read once
            mask = (torch.arange(longest, device=dev)[None, :] < seq[:, None])[:, None, None, :]
            ks, vs = k[:, :, :longest], v[:, :, :longest]

            def sdpa():
                return F.scaled_dot_product_attention(qg, ks, vs, attn_mask=mask)

            if c == 1 or c == min(c_contig, 8):  # one check that both compute the same thing
                k[:, :, :longest] = _gather(kc, table, lens, block_size, longest)
                v[:, :, :longest] = _gather(vc, table, lens, block_size, longest)
                got = paged_call().float().view(c, hkv, h // hkv, d)
                point["max_abs_vs_sdpa"] = float((got - sdpa().float()).abs().max())
            sdpa()
            torch.cuda.synchronize()
            point["sdpa_call"] = event_ms(sdpa, busy=False)
            point["sdpa_kernel"] = event_ms(sdpa, busy=True)
        for name in ("paged_call", "paged_kernel", "sdpa_call", "sdpa_kernel"):
            if name in point:
                point[name.replace("call", "tokens_per_s").replace("kernel", "kernel_tokens_per_s")] = (
                    c / (m.layers * point[name]["median_ms"] * 1e-3))

    all_lens = lengths.draw(c_paged, max_len)
    for c in concurrencies(c_contig, c_paged):
        if time_left is not None and time_left() < 3:
            result["stopped"] = f"out of time before C = {c}"
            break
        lens = [int(x) for x in all_lens[:c]]
        point = {"C": c, "mean_length": float(np.mean(lens)), "max_length": max(lens)}
        try:
            one_point(c, lens, point)
        except Exception as exc:  # recorded, not fatal
            point["error"] = f"{type(exc).__name__}: {exc}"[:300]
        torch.cuda.empty_cache()
        result["points"].append(point)
        save()
        log(f"C={c:4d} paged call {point.get('paged_call', {}).get('median_ms', float('nan')):.3f} ms "
            f"SDPA {point.get('sdpa_call', {}).get('median_ms', float('nan')):.3f} ms "
            f"{point.get('error', '')}")
    save()
    plot(result, os.path.join(out_dir, "serving.png"))
    return result


def _gather(cache, table, lens, block_size, longest):
    """(C, Hkv, longest, D): the paged cache's keys of each sequence, zeros past its length."""
    import torch

    c = len(lens)
    out = torch.zeros((c, cache.shape[1], longest, cache.shape[3]), dtype=cache.dtype, device=cache.device)
    for i, n in enumerate(lens):
        j = torch.arange(n, device=cache.device)
        out[i, :, :n] = cache[table[i, j // block_size].long(), :, j % block_size].transpose(0, 1)
    return out


# --------------------------------------------------------------------------------------------------
# The figure
# --------------------------------------------------------------------------------------------------
def plot(data, path) -> str:
    """serving.png: left, C_paged / C_contig per scenario (bars, float16 and FP8 caches) with the
    page's 2-3x band; right, attention tokens/s against concurrency (measured, when there is a
    measurement), the contiguous and paged capacities marked."""
    from workbench.bench import plots

    data = plots.load(data)
    cap = data.get("capacity", data)
    lo, hi = cap["claim"]["low"], cap["claim"]["high"]
    fig, axes = plots._figure(2, width=6.0)
    ax = axes[0][0]
    rows = cap["rows"]
    x = np.arange(len(rows))
    ax.axhspan(lo, hi, color="#ffdd99", alpha=0.6, label=f"page: {lo:g}–{hi:g}× more users")
    ax.bar(x - 0.2, [r["ratio"] for r in rows], 0.4, color="#1f77b4", label="paged fp16 / contiguous")
    ax.bar(x + 0.2, [r["ratio_fp8"] for r in rows], 0.4, color="#9467bd", label="paged FP8 / contiguous fp16")
    ax.axhline(1.0, color="#555555", linewidth=0.8)
    ax.set_xticks(x, [f"{r['lengths'].split('(')[0]}\nbs {r['block_size']}" for r in rows], fontsize=7)
    ax.set_ylabel("concurrent sequences, paged / contiguous")
    inp = cap["inputs"]
    ax.set_title(f"{inp['model']['name']}, {inp['budget_GiB']:.0f} GiB cache, N_max {inp['max_len']}",
                 fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    ax = axes[0][1]
    pts = [p for p in data.get("points", []) if "paged_call" in p]
    if pts:
        setup = data["setup"]
        for key, label, color, ls in (("paged_tokens_per_s", "decode rung (paged), whole call", "#1f77b4", "-"),
                                      ("paged_kernel_tokens_per_s", "decode rung, kernels", "#1f77b4", ":"),
                                      ("sdpa_tokens_per_s", "SDPA (contiguous), whole call", "#2ca02c", "--"),
                                      ("sdpa_kernel_tokens_per_s", "SDPA, kernels", "#2ca02c", ":")):
            xs = [p["C"] for p in pts if key in p]
            if xs:
                ax.plot(xs, [p[key] for p in pts if key in p], color=color, linestyle=ls, marker="o",
                        markersize=4, label=label)
        for c, what in ((setup["contiguous_sequences"], "contiguous fits"), (setup["paged_sequences"], "paged fits")):
            ax.axvline(c, color="#888888", linestyle="--", linewidth=0.8)
            ax.text(c, 0.98, f" {what}: {c}", transform=ax.get_xaxis_transform(), fontsize=7, va="top",
                    rotation=90)
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(plots.FuncFormatter(lambda v, _pos: f"{v:g}"))
        ax.set_yscale("log")
        ax.set_xlabel("concurrent sequences C")
        ax.set_ylabel("attention tokens/s (C / (layers × step))")
        ax.set_title(f"one decode step per layer, {setup['lengths_text']}, block {setup['block_size']}",
                     fontsize=10)
        ax.legend(fontsize=7, loc="lower right")
    else:
        ax.axis("off")
        ax.text(0.5, 0.5, "tokens/s not measured here\n(scripts/gpu_serving.py on a GPU)", ha="center",
                va="center", fontsize=11, transform=ax.transAxes)
    prov = data.get("provenance", {})
    where = prov.get("device", "arithmetic only (no device)")
    fig.suptitle(f"Serving: concurrent sequences at a fixed KV-cache budget beside the page's "
                 f"\"{lo:g}-{hi:g}x more users\"\n{where}, {str(prov.get('date', cap.get('written', {}).get('date', '')))[:10]}",
                 fontsize=11)
    return plots.save_figure(fig, path)


# --------------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m workbench.bench.serving", description=__doc__.split("\n\n")[0])
    ap.add_argument("--capacity-only", action="store_true",
                    help="the arithmetic only (no GPU): print the table, write --json")
    ap.add_argument("--model", default="llama2-7b", choices=sorted(MODELS))
    ap.add_argument("--budget-gib", type=float, default=None,
                    help="KV-cache budget in GiB (default: 0.9 of an H200's 140 GiB less the fp16 weights)")
    ap.add_argument("--max-len", type=int, default=4096)
    ap.add_argument("--block-size", type=int, nargs="+", default=list(BLOCK_SIZES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="where to write the result (default: print only)")
    ap.add_argument("--plot", default=None, help="also draw the capacity figure to this PNG")
    ap.add_argument("--out", default=None, help="measure on the GPU and write OUT/serving.{json,png}")
    args = ap.parse_args(argv)
    if not args.capacity_only and not args.out:
        ap.error("pass --capacity-only (arithmetic) or --out DIR (measure on a GPU)")
    budget = None if args.budget_gib is None else args.budget_gib * GiB
    if args.out:
        measure(args.out, model=args.model, max_len=args.max_len, block_size=args.block_size[0],
                lengths=Lengths("uniform", 1, args.max_len, args.seed), budget=budget)
        return 0
    result = capacity(budget, args.model, args.max_len, tuple(args.block_size), args.seed)
    print_table(result)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.json}")
    if args.plot:
        print(f"wrote {plot(result, args.plot)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
