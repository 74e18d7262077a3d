"""`python -m workbench.bench.report figures/h100`: the README's measured-vs-claimed tables, generated.

Reads the suites' JSON in the folder and rewrites the README between `<!-- report:NAME -->` and
`<!-- /report:NAME -->` markers (or prints the tables with --print). No number is typed by hand:
every cell comes from a JSON file in figures/ or from workbench.bench.benchmark_page (the page's claims).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

from workbench.bench import benchmark_page


def _load(folder, suite):
    path = os.path.join(folder, f"{suite}.json")
    with open(path) as f:
        return json.load(f)


def _ms(points, kernel, seq, dtype):
    for p in points:
        if p["kernel"] == kernel and p["seq_q"] == seq and p["dtype"] == dtype:
            if p["status"] == "OOM":
                return "OOM"
            if "timing" in p:
                return p["timing"]["median_ms"]
    return None


def _fmt(x, digits=3):
    if x is None:
        return "–"
    if isinstance(x, str):
        return x
    return f"{x:.{digits}g}" if x < 100 else f"{x:.0f}"


def speed_table(folder, dtype="float16") -> str:
    data = _load(folder, "seed-speed")
    pts, prov = data["points"], data["provenance"]
    page = benchmark_page.table("h100-speed")
    claim = {c: dict(page.series(c)) for c in ("Standard", "Flash Attn 2", "Flash Attn 3 (FP16)")}
    rows = ["| seq | page Standard | naive rung | torch standard | page FA2 | flash2 rung | SDPA flash "
            "| page FA3 fp16 | SDPA cuDNN | SDPA flash ÷ page FA2 |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for n in sorted({p["seq_q"] for p in pts if p["dtype"] == dtype}):
        flash = _ms(pts, "sdpa-flash", n, dtype)
        ratio = f"{flash / claim['Flash Attn 2'][n]:.2f}×" if isinstance(flash, float) and n in claim["Flash Attn 2"] else "–"
        rows.append("| " + " | ".join([
            str(n), _fmt(claim["Standard"].get(n)), _fmt(_ms(pts, "naive", n, dtype)),
            _fmt(_ms(pts, "torch-standard", n, dtype)), _fmt(claim["Flash Attn 2"].get(n)),
            _fmt(_ms(pts, "flash2", n, dtype)), _fmt(flash), _fmt(claim["Flash Attn 3 (FP16)"].get(n)),
            _fmt(_ms(pts, "sdpa-cudnn", n, dtype)), ratio]) + " |")
    note = (f"\n\nForward ms, B=8 H=32 D=64 {dtype}, median of CUDA-event timings with L2 flushed, on "
            f"{prov['device']} ({prov['date'][:10]}; `{prov['command']}`). Page: the benchmark page's H100 "
            f"table (dtype unstated). From `figures/{os.path.basename(folder.rstrip('/'))}/seed-speed.json`.")
    return "\n".join(rows) + note


def ladder_table(folder, dtype="float32", seq=4096) -> str:
    data = _load(folder, "ladder")
    prov = data["provenance"]
    from workbench.kernels import LADDER

    rungs = {r.name for r in LADDER}
    # (a rung or peer that does not take this dtype, e.g. flash2_mma in float32, has no row)
    pts = [p for p in data["points"] if p["dtype"] == dtype and p["seq_q"] == seq and p["status"] != "n/a"]
    rows = ["| rung | ms | TFLOP/s | × previous rung | peak MiB | model MiB |", "|---|---|---|---|---|---|"]
    prev = None
    for p in sorted(pts, key=lambda p: p["kernel"] not in rungs):  # rungs in order, then the peers
        t = p.get("timing", {}).get("median_ms")
        rung = p["kernel"] in rungs
        speed = f"{prev / t:.2f}×" if rung and prev and t else "–"
        mem = p.get("memory", {})
        name = p["kernel"] if rung else f"{p['kernel']} (peer)"
        rows.append(f"| {name} | {_fmt(t)} | {_fmt(p.get('tflops'))} | {speed} | "
                    f"{_fmt(mem.get('peak_MiB'))} | {_fmt(mem.get('model_MiB'))} |")
        prev = t if rung else prev
    note = (f"\n\nB=8 H=32 D=64 N={seq} {dtype}, on {prov['device']} ({prov['date'][:10]}). "
            f"From `figures/{os.path.basename(folder.rstrip('/'))}/ladder.json`.")
    return "\n".join(rows) + note


def _peak(points, kernel, batch, seq, dim):
    for p in points:
        if (p["kernel"], p["batch"], p["seq_q"], p["head_dim"]) == (kernel, batch, seq, dim):
            if p["status"] == "OOM":
                return "OOM"
            return (p.get("memory") or {}).get("peak_MiB")
    return None


def memory_table(folder) -> str:
    """The page's memory tables (B=8 H=32 D=64, and Llama-2-7B's attention at B=1) beside measured
    peaks, in MiB (the page's MB and GB read as MiB and GiB: its KV column is exact that way)."""
    data = _load(folder, "seed-memory")
    pts, prov = data["points"], data["provenance"]
    def claims(key, column):  # MiB, or the page's own words where it gives no number ("OOM")
        return {n: benchmark_page.mib(cell) if benchmark_page.mib(cell) is not None else cell
                for n, cell in benchmark_page.table(key).series(column, str)}

    std, fa2 = claims("memory-standard", "Total"), claims("memory-flash2", "Total")
    l_std = claims("llama2-7b-memory", "Standard Attention")
    l_fa2 = claims("llama2-7b-memory", "Flash Attention 2")
    rows = ["| problem | seq | page Standard | naive rung | torch standard | page FA2 | flash2 rung "
            "| SDPA flash |", "|---|---|---|---|---|---|---|---|"]
    for label, batch, dim, claims in (("B=8 H=32 D=64", 8, 64, (std, fa2)),
                                      ("Llama-2-7B layer, B=1 H=32 D=128", 1, 128, (l_std, l_fa2))):
        seqs = sorted({p["seq_q"] for p in pts if p["batch"] == batch and p["head_dim"] == dim})
        for n in seqs:
            rows.append("| " + " | ".join([
                label, str(n), _fmt(claims[0].get(n)), _fmt(_peak(pts, "naive", batch, n, dim)),
                _fmt(_peak(pts, "torch-standard", batch, n, dim)), _fmt(claims[1].get(n)),
                _fmt(_peak(pts, "flash2", batch, n, dim)), _fmt(_peak(pts, "sdpa-flash", batch, n, dim))])
                + " |")
    note = (f"\n\nPeak device memory of one forward call in MiB, float16: inputs, output and every byte "
            f"the call allocates (for our rungs checked against the driver's free-memory reading). "
            f"On {prov['device']} ({prov['date'][:10]}; `{prov['command']}`). "
            f"From `figures/{os.path.basename(folder.rstrip('/'))}/seed-memory.json`.")
    return "\n".join(rows) + note


TABLES = {"speed": speed_table, "memory": memory_table, "ladder": ladder_table,
          "ladder-float16": lambda folder: ladder_table(folder, "float16")}


def render(folder) -> dict:
    return {name: fn(folder) for name, fn in TABLES.items()}


def update_readme(readme, tables) -> str:
    with open(readme) as f:
        text = f.read()
    for name, body in tables.items():
        pattern = re.compile(rf"(<!-- report:{name} -->\n)(?:.*?\n)?(<!-- /report:{name} -->)", re.S)
        if not pattern.search(text):
            raise ValueError(f"{readme} has no <!-- report:{name} --> ... <!-- /report:{name} --> block")
        text = pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)
    with open(readme, "w") as f:
        f.write(text)
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m workbench.bench.report", description=__doc__.split("\n")[0])
    ap.add_argument("folder", help="figures/<device> with the suites' JSON")
    ap.add_argument("--readme", default="README.md")
    ap.add_argument("--print", action="store_true", help="print the tables instead of editing README")
    args = ap.parse_args(argv)
    tables = render(args.folder)
    if args.print:
        for name, body in tables.items():
            print(f"## {name}\n{body}\n")
    else:
        update_readme(args.readme, tables)
        print(f"updated {args.readme}: {', '.join(tables)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
