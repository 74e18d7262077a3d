"""The figures, drawn from `python -m workbench.bench.compare`'s JSON.

    python -m workbench.bench.plots figures/h100/ladder.json [more.json ...]

writes, next to each JSON, every figure that applies to it: `<stem>-time.png` (forward time vs
sequence length, log-log, p20-p80 bars), `<stem>-memory.png` (measured peak memory as points, the
analytic model as lines, out-of-memory marked), `<stem>-speedup.png` (time ratio to a baseline
measured in the same file), `<stem>-per_token.png` (ms and MiB per token), `<stem>-roofline.png`
(achieved TFLOP/s vs arithmetic intensity against compute and bandwidth ceilings) and, for a suite
measured at a single sequence length, `<stem>-bars.png`. The seed page's claims (workbench.bench.benchmark_page) are
drawn beside the measurements as hollow markers on dotted lines, labelled "page ...".

Each function takes the loaded JSON (or a path to it) and the PNG path, returns the path written,
or None when the data holds nothing that figure can show (e.g. no timing in simulator JSON). One
panel per (dtype, shape) in the file, float32 first; the title carries the device and the date.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator  # noqa: E402

RUNGS = ("naive", "tiled", "online", "flash1", "flash2", "flash2_mma")
PEERS = ("torch-standard", "cupy-standard", "sdpa-math", "sdpa-efficient", "sdpa-flash", "sdpa-cudnn")
COLORS = {
    "naive": "#d62728", "tiled": "#ff7f0e", "online": "#bcbd22", "flash1": "#17becf", "flash2": "#1f77b4",
    "flash2_mma": "#393b79",
    "torch-standard": "#8c564b", "cupy-standard": "#e377c2", "sdpa-math": "#7f7f7f",
    "sdpa-efficient": "#9467bd", "sdpa-flash": "#2ca02c", "sdpa-cudnn": "#111111",
}
EXTRA_COLORS = ("#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94")
DTYPE_ORDER = ("float32", "float16", "bfloat16")
DTYPE_MARKER = {"float32": "o", "float16": "^", "bfloat16": "v"}

# Ceilings measured on the H100 (../shared/numba-cuda-notes.md): cuBLAS SGEMM fp32 without TF32
# 51.6 TFLOP/s, a Numba grid-stride copy 2.3 TB/s. Used by `main` when no --peak-* is given.
MEASURED_PEAKS = {"h100": (51.6, 2300.0)}
DPI = 100  # PNG resolution


# --------------------------------------------------------------------------------------------------
# Data helpers
# --------------------------------------------------------------------------------------------------
def load(data) -> dict:
    if isinstance(data, (str, os.PathLike)):
        with open(data) as f:
            return json.load(f)
    return data


def style(kernel: str) -> dict:
    if kernel in COLORS:
        color = COLORS[kernel]
    else:
        color = EXTRA_COLORS[sum(map(ord, kernel)) % len(EXTRA_COLORS)]
    peer = kernel not in RUNGS
    return dict(color=color, marker="s" if peer else "o", linestyle="--" if peer else "-")


def _kernel_order(points) -> list:
    names = list(dict.fromkeys(p["kernel"] for p in points))
    rank = {k: i for i, k in enumerate(RUNGS + PEERS)}
    return sorted(names, key=lambda k: (rank.get(k, len(rank)), names.index(k)))


def _shape(p) -> tuple:
    w = p.get("window")
    return (p.get("batch"), p.get("heads"), p.get("kv_heads"), p.get("head_dim"), bool(p.get("causal")),
            tuple(w) if w else None)


def _shape_text(shape) -> str:
    b, h, kv, d, causal, window = shape
    heads = f"H={h}" + (f"/{kv}" if kv not in (None, h) else "")
    return f"B={b} {heads} D={d}" + (" causal" if causal else "") + (f" window={window}" if window else "")


def panels(points) -> list:
    """[((dtype, shape), [points])] in display order: float32 before float16, shapes as first seen."""
    groups: dict = {}
    for p in points:
        groups.setdefault((p.get("dtype"), _shape(p)), []).append(p)
    shapes = list(dict.fromkeys(s for _, s in groups))
    dt = {d: i for i, d in enumerate(DTYPE_ORDER)}
    return sorted(groups.items(), key=lambda kv: (dt.get(kv[0][0], 99), shapes.index(kv[0][1])))


def _panel_title(key) -> str:
    dtype, shape = key
    return f"{dtype}, {_shape_text(shape)}"


def timed(p) -> bool:
    return bool(p.get("timing")) and p["timing"].get("median_ms") is not None and p.get("status") in ("pass", "FAIL")


def has_timing(data) -> bool:
    return any(timed(p) for p in load(data)["points"])


def is_sweep(data) -> bool:
    """Some kernel in some panel was measured at two or more sequence lengths."""
    for _, pts in panels(load(data)["points"]):
        seqs: dict = {}
        for p in pts:
            if p.get("status") != "n/a":
                seqs.setdefault(p["kernel"], set()).add(p["seq_q"])
        if any(len(s) > 1 for s in seqs.values()):
            return True
    return False


def peak_mib(p):
    v = (p.get("memory") or {}).get("peak_MiB")
    return None if v is None else float(v)


def model_mib(p):
    v = (p.get("memory") or {}).get("model_MiB")
    return None if v is None else float(v)


def gpu_of(device: str | None) -> str | None:
    """'NVIDIA H100 80GB HBM3' -> 'H100' (the seed page's GPU names), else None."""
    for g in ("H100", "A100", "A10G"):
        if device and g.lower() in device.lower():
            return g
    return None


def _capacity_mib(device: str | None):
    m = re.search(r"(\d+)\s*GB", device or "")
    return int(m.group(1)) * 1024 if m else None


def _claim_matches(claim, key) -> bool:
    dtype, (b, h, _kv, d, causal, window) = key
    if causal or window:
        return False
    if claim.dtype not in (None, dtype):
        return False
    return all(c is None or c == v for c, v in ((claim.batch, b), (claim.heads, h), (claim.head_dim, d)))


def _claims_in(claims, key, metrics) -> dict:
    """{label: [(seq, value, kernel-for-color)]} for the claims that fit this panel."""
    out: dict = {}
    for c in claims or ():
        if c.metric in metrics and c.value is not None and _claim_matches(c, key):
            out.setdefault((c.label(), c.kernels[0] if c.kernels else ""), []).append((c.seq, c.value))
    return out


def pick_claims(claims, device) -> list:
    """Keep the device's GPU's claims for each metric where the page has some, else all of them."""
    gpu = gpu_of(device)
    if not gpu:
        return list(claims)
    out = []
    for metric in dict.fromkeys(c.metric for c in claims):
        mine = [c for c in claims if c.metric == metric]
        match = [c for c in mine if c.gpu and gpu.lower() in c.gpu.lower()]
        out += [c for c in mine if c.gpu is None or c in match] if match else mine
    return out


# --------------------------------------------------------------------------------------------------
# Drawing helpers
# --------------------------------------------------------------------------------------------------
def _seq_label(n: int) -> str:
    return f"{n // 1024}K" if n >= 1024 and n % 1024 == 0 else str(n)


def _seq_axis(ax, seqs):
    seqs = sorted(set(seqs))
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(seqs))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([_seq_label(n) for n in seqs])
    if len(seqs) > 1:
        lo, hi = seqs[0], seqs[-1]
        pad = (hi / lo) ** 0.06
        ax.set_xlim(lo / pad, hi * pad)
    ax.set_xlabel("sequence length N (tokens)")
    ax.grid(True, which="major", alpha=0.3)


def _plain(v, _pos=None) -> str:
    """Tick text without exponents: 0.01, 1, 100, 5,000, 20k, 1M."""
    if v >= 1e6:
        return f"{v / 1e6:g}M"
    if v >= 1e4:
        return f"{v / 1e3:g}k"
    if v >= 1000:
        return f"{v:,.0f}"
    return f"{v:g}" if v >= 1e-4 else f"{v:.10f}".rstrip("0")


def _plain_log_y(ax):
    """Log y axis labelled 0.1, 1, 10 (not 10⁻¹), with 2 and 5 labelled too when it spans few decades."""
    lo, hi = ax.get_ylim()
    ax.yaxis.set_major_formatter(FuncFormatter(_plain))
    if hi / lo < 100:
        def minor(v, _):
            lead = round(v / 10 ** math.floor(math.log10(v) + 1e-9))
            return _plain(v) if lead in (2, 5) else ""
        ax.yaxis.set_minor_formatter(FuncFormatter(minor))
    else:
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.tick_params(axis="y", which="minor", labelsize=8)


def _overlap_size(i: int, base: float = 13.0) -> float:
    """Marker size for the i-th kernel of a panel: earlier kernels larger, drawn as hollow rings, so
    equal values (rungs with the same memory) stay visible as rings inside each other."""
    return max(3.0, base - 2.0 * i)


PANEL_W, PANEL_H = 5.2, 4.0  # inches per panel
M_LEFT, M_GAP, M_TOP, M_BOTTOM, M_VGAP = 1.0, 1.0, 1.0, 0.65, 0.85  # margins (inches)


def _figure(n_panels: int, rows: int = 1, width=PANEL_W, height=PANEL_H):
    """A rows × n_panels grid with fixed margins in inches (no tight-bbox pass: faster, and every
    figure of a kind has the same layout); the legend's column is sized by `_legend`."""
    fig, axes = plt.subplots(rows, n_panels, squeeze=False)
    fig._workbench_grid = (rows, n_panels, width, height)
    _layout(fig, 0.3)
    return fig, axes


def _layout(fig, legend_w: float) -> float:
    rows, cols, w, h = fig._workbench_grid
    fw = M_LEFT + cols * w + (cols - 1) * M_GAP + legend_w
    fh = M_TOP + rows * h + (rows - 1) * M_VGAP + M_BOTTOM
    fig.set_size_inches(fw, fh)
    fig.subplots_adjust(left=M_LEFT / fw, right=(fw - legend_w) / fw, wspace=M_GAP / w, top=1 - M_TOP / fh,
                        bottom=M_BOTTOM / fh, hspace=M_VGAP / h)
    return fw


def _title(fig, data, what: str):
    prov = data.get("provenance", {})
    date = str(prov.get("date", "date unknown"))[:10]
    suite = data.get("suite") or "compare"
    fig.suptitle(f"{what} — suite {suite}\n{prov.get('device', 'unknown device')}, {date}",
                 fontsize=12)


def _mark_oom(ax, oom: dict):
    """`oom` {kernel: [seq, ...]}: at the top of the panel, at each such N, one 'x' per kernel in its
    colour, side by side, and 'OOM' under them."""
    from matplotlib.transforms import offset_copy

    at: dict = {}
    for k, xs in oom.items():
        for x in xs:
            at.setdefault(x, []).append(k)
    if not at:
        return
    lo, hi = ax.get_ylim()  # headroom, so the marks sit above the data
    ax.set_ylim(lo, hi * (hi / lo) ** 0.18 if ax.get_yscale() == "log" else hi + 0.18 * (hi - lo))
    base = ax.get_xaxis_transform()
    for x, ks in at.items():
        for i, k in enumerate(ks):
            tr = offset_copy(base, fig=ax.figure, x=(i - (len(ks) - 1) / 2) * 9, y=0, units="points")
            ax.plot([x], [0.955], marker="x", color=style(k)["color"], markersize=8, mew=2.2, transform=tr,
                    clip_on=False, linestyle="none")
        ax.text(x, 0.925, "OOM", transform=base, ha="center", va="top", fontsize=7, fontweight="bold",
                color="#aa0000")


def _legend(fig, kernels, extra=(), claims_labels=()):
    handles = [Line2D([], [], label=k, markersize=6, **style(k)) for k in kernels]
    for label, kernel in claims_labels:
        color = style(kernel)["color"] if kernel else "#555555"
        handles.append(Line2D([], [], label=label, color=color, marker="D", markerfacecolor="white",
                              linestyle=":", markersize=6))
    handles += list(extra)
    if handles:
        width = 0.75 + 0.075 * max(len(h.get_label()) for h in handles)  # 9 pt text, with its handle
        fw = _layout(fig, width + 0.25)
        fig.legend(handles=handles, loc="center left", bbox_to_anchor=((fw - width - 0.1) / fw, 0.5),
                   fontsize=9, frameon=False)


def save_figure(fig, path, dpi=DPI) -> str:
    """Write `fig` to `path` (making its folder) and close it: every figure of the project ends here."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return str(path)


_save = save_figure


def _draw_claims(ax, found: dict, claims_seen: dict):
    for (label, kernel), pts in found.items():
        pts.sort()
        color = style(kernel)["color"] if kernel else "#555555"
        ax.plot([s for s, _ in pts], [v for _, v in pts], linestyle=":", marker="D", color=color,
                markerfacecolor="white", markersize=6, linewidth=1.2)
        claims_seen[(label, kernel)] = True


def _oom_by_kernel(pts):
    out: dict = {}
    for p in pts:
        if p.get("status") == "OOM":
            out.setdefault(p["kernel"], []).append(p["seq_q"])
    return out


# --------------------------------------------------------------------------------------------------
# The figures
# --------------------------------------------------------------------------------------------------
def time_vs_seq(data, path, claims=None):
    """Median forward time vs N, log-log, p20-p80 as error bars; the page's times as 'page ...'."""
    data = load(data)
    groups = [(k, pts) for k, pts in panels(data["points"]) if any(timed(p) for p in pts)]
    if not groups:
        return None
    fig, axes = _figure(len(groups))
    kernels, seen = [], {}
    for ax, (key, pts) in zip(axes[0], groups):
        seqs = []
        for k in _kernel_order(pts):
            ks = sorted((p for p in pts if p["kernel"] == k and timed(p)), key=lambda p: p["seq_q"])
            if not ks:
                continue
            kernels.append(k)
            st = style(k)
            x = [p["seq_q"] for p in ks]
            y = [p["timing"]["median_ms"] for p in ks]
            lo = [max(0.0, p["timing"]["median_ms"] - p["timing"].get("p20_ms", p["timing"]["median_ms"])) for p in ks]
            hi = [max(0.0, p["timing"].get("p80_ms", p["timing"]["median_ms"]) - p["timing"]["median_ms"]) for p in ks]
            ax.errorbar(x, y, yerr=[lo, hi], color=st["color"], marker=st["marker"], linestyle=st["linestyle"],
                        markersize=5, capsize=3, linewidth=1.5)
            for p in ks:
                if p["status"] == "FAIL":
                    ax.annotate("FAIL", (p["seq_q"], p["timing"]["median_ms"]), color="red", fontsize=7,
                                xytext=(4, 4), textcoords="offset points")
            seqs += x
        oom = _oom_by_kernel(pts)
        for k, xs in oom.items():
            kernels.append(k)
            seqs += xs
        found = _claims_in(claims, key, {"time"})
        _draw_claims(ax, found, seen)
        seqs += [s for pts_ in found.values() for s, _ in pts_]
        ax.set_yscale("log")
        _seq_axis(ax, seqs)
        _mark_oom(ax, oom)
        _n2_guide(ax, _first_timed(pts))
        _plain_log_y(ax)
        ax.set_ylabel("forward time, median (ms)")
        ax.set_title(_panel_title(key), fontsize=10)
    extra = [Line2D([], [], color="#999999", linestyle=(0, (1, 3)), label="∝ N² (guide)")]
    _legend(fig, list(dict.fromkeys(kernels)), extra, list(seen))
    _title(fig, data, "Forward time vs sequence length (bars: p20–p80)")
    return _save(fig, path)


def _first_timed(pts):
    ts = sorted((p for p in pts if timed(p)), key=lambda p: p["seq_q"])
    return (ts[0]["seq_q"], ts[0]["timing"]["median_ms"]) if ts else None


def _n2_guide(ax, first):
    """A dotted ∝ N² line from the first kernel's shortest N: what O(N²) work looks like."""
    if not first:
        return
    lo, hi = ax.get_xlim()
    n0, t0 = first
    xs = [max(lo, n0), hi]
    ax.plot(xs, [t0 * (x / n0) ** 2 for x in xs], color="#999999", linestyle=(0, (1, 3)), linewidth=1)
    ax.set_xlim(lo, hi)


def memory_vs_seq(data, path, claims=None):
    """Measured peak device memory (points) and the analytic model (lines) vs N; OOM marked at the
    top. With no measurement (simulator JSON) the model alone, said in the title."""
    data = load(data)
    groups = [(k, pts) for k, pts in panels(data["points"])
              if any(peak_mib(p) is not None or model_mib(p) is not None or p.get("status") == "OOM"
                     for p in pts)]
    if not groups:
        return None
    measured_any = any(peak_mib(p) is not None for _, pts in groups for p in pts)
    device = data.get("provenance", {}).get("device")
    cap = _capacity_mib(device) if measured_any else None
    fig, axes = _figure(len(groups))
    kernels, seen = [], {}
    for ax, (key, pts) in zip(axes[0], groups):
        seqs, ys = [], []
        for i, k in enumerate(_kernel_order(pts)):
            ks = sorted((p for p in pts if p["kernel"] == k), key=lambda p: p["seq_q"])
            st = style(k)
            size = _overlap_size(i)
            meas = [(p["seq_q"], peak_mib(p)) for p in ks if peak_mib(p) is not None]
            model = [(p["seq_q"], model_mib(p)) for p in ks if model_mib(p) is not None]
            if not meas and not model and not any(p["status"] == "OOM" for p in ks):
                continue
            kernels.append(k)
            if model:
                ax.plot(*zip(*model), color=st["color"], linestyle="-", linewidth=2.2 if measured_any else 1.6,
                        alpha=0.45 if measured_any else 0.9, marker=None if measured_any else st["marker"],
                        markersize=size, markerfacecolor="none", markeredgewidth=1.8)
            if meas:
                ax.plot(*zip(*meas), color=st["color"], marker=st["marker"], markersize=size,
                        markerfacecolor="none", markeredgewidth=1.8,
                        linestyle="none" if model else st["linestyle"], linewidth=1.2)
            seqs += [p["seq_q"] for p in ks if p["status"] != "n/a"]
            ys += [v for _, v in meas + model]
        found = _claims_in(claims, key, {"memory"})
        _draw_claims(ax, found, seen)
        seqs += [s for pts_ in found.values() for s, _ in pts_]
        ax.set_yscale("log")
        _seq_axis(ax, seqs)
        if cap and ys and max(ys) > cap / 8:
            ax.axhline(cap, color="#444444", linewidth=1, linestyle="-.")
            ax.text(ax.get_xlim()[0], cap, f" device memory ({cap // 1024} GB)", va="bottom", fontsize=8,
                    color="#444444")
        _mark_oom(ax, _oom_by_kernel(pts))
        _plain_log_y(ax)
        ax.set_ylabel("device memory of one call (MiB)")
        ax.set_title(_panel_title(key), fontsize=10)
    extra = []
    if measured_any:
        extra = [Line2D([], [], color="#333333", marker="o", markerfacecolor="none", markeredgewidth=1.8,
                        linestyle="none", label="measured peak"),
                 Line2D([], [], color="#333333", linewidth=2.2, alpha=0.45, label="model (formula)")]
    _legend(fig, list(dict.fromkeys(kernels)), extra, list(seen))
    what = "Device memory vs sequence length" + ("" if measured_any else " (model only: nothing measured)")
    _title(fig, data, what)
    return _save(fig, path)


def speedup_vs_seq(data, path, baseline="naive", claims=None):
    """Each kernel's time relative to `baseline` measured in the same file at the same problem
    (baseline time / kernel time: above 1 is faster)."""
    data = load(data)
    groups = []
    for key, pts in panels(data["points"]):
        base = {p["seq_q"]: p["timing"]["median_ms"] for p in pts if p["kernel"] == baseline and timed(p)}
        if base:
            groups.append((key, pts, base))
    if not groups:
        return None
    from workbench.bench.benchmark_page import KERNELS_FOR

    show_claims = baseline in KERNELS_FOR["Standard"]
    fig, axes = _figure(len(groups))
    kernels, seen = [], {}
    for ax, (key, pts, base) in zip(axes[0], groups):
        seqs = list(base)
        for k in _kernel_order(pts):
            ks = sorted((p for p in pts if p["kernel"] == k and timed(p) and p["seq_q"] in base),
                        key=lambda p: p["seq_q"])
            if not ks or k == baseline:
                continue
            kernels.append(k)
            st = style(k)
            ax.plot([p["seq_q"] for p in ks], [base[p["seq_q"]] / p["timing"]["median_ms"] for p in ks],
                    color=st["color"], marker=st["marker"], linestyle=st["linestyle"], markersize=5)
        if show_claims:
            found = _claims_in(claims, key, {"speedup"})
            _draw_claims(ax, found, seen)
            seqs += [s for pts_ in found.values() for s, _ in pts_]
        ax.axhline(1.0, color=style(baseline)["color"], linewidth=1.2)
        ax.set_yscale("log")
        _seq_axis(ax, seqs)
        _plain_log_y(ax)
        ax.set_ylabel(f"speedup over {baseline} (× its time)")
        ax.set_title(_panel_title(key), fontsize=10)
    extra = [Line2D([], [], color=style(baseline)["color"], label=f"{baseline} (= 1)")]
    _legend(fig, list(dict.fromkeys(kernels)), extra, list(seen))
    _title(fig, data, f"Speedup over {baseline} vs sequence length")
    return _save(fig, path)


def per_token(data, path, claims=None):
    """Time per token (ms, if timed) and memory per token (MiB: measured peak, else the model) vs N;
    a token is one query row of one sequence, so values are divided by batch·N."""
    data = load(data)
    groups = [(k, pts) for k, pts in panels(data["points"])
              if any(peak_mib(p) is not None or model_mib(p) is not None or timed(p) for p in pts)]
    if not groups:
        return None
    with_time = any(timed(p) for _, pts in groups for p in pts)
    measured_any = any(peak_mib(p) is not None for _, pts in groups for p in pts)
    rows = ["time"] * with_time + ["memory"]
    fig, axes = _figure(len(groups), rows=len(rows), height=3.8)
    kernels, seen = [], {}
    for col, (key, pts) in enumerate(groups):
        for row, what in enumerate(rows):
            ax = axes[row][col]
            seqs = []
            for i, k in enumerate(_kernel_order(pts)):
                st = style(k)
                xy = []
                for p in sorted((p for p in pts if p["kernel"] == k), key=lambda p: p["seq_q"]):
                    tokens = p["batch"] * p["seq_q"]
                    if what == "time":
                        v = p["timing"]["median_ms"] if timed(p) else None
                    else:
                        v = peak_mib(p) if measured_any else model_mib(p)
                    if v is not None:
                        xy.append((p["seq_q"], v / tokens))
                if xy:
                    kernels.append(k)
                    ring = dict(markersize=_overlap_size(i), markerfacecolor="none", markeredgewidth=1.8)
                    ax.plot(*zip(*xy), color=st["color"], marker=st["marker"], linestyle=st["linestyle"],
                            **(ring if what == "memory" else dict(markersize=5)))
                    seqs += [x for x, _ in xy]
            metric = "time_per_token" if what == "time" else "memory_per_token"
            found = _claims_in(claims, key, {metric})
            _draw_claims(ax, found, seen)
            seqs += [s for pts_ in found.values() for s, _ in pts_]
            oom = _oom_by_kernel(pts)
            seqs += [s for xs in oom.values() for s in xs]
            ax.set_yscale("log")
            _seq_axis(ax, seqs or [1])
            _mark_oom(ax, oom)
            _plain_log_y(ax)
            if what == "time":
                ax.set_ylabel("time per token (ms)")
            else:
                ax.set_ylabel("memory per token (MiB)" + ("" if measured_any else ", model"))
            if row == 0:
                ax.set_title(_panel_title(key), fontsize=10)
    _legend(fig, list(dict.fromkeys(kernels)), (), list(seen))
    _title(fig, data, "Per token: time and memory ÷ (batch·N)")
    return _save(fig, path)


def roofline(data, path, peak_tflops, peak_gbps, *, peak_label="compute peak"):
    """Achieved TFLOP/s vs arithmetic intensity (FLOPs / compulsory bytes: Q, K, V read once, O and
    the LSE written once) under the ceilings min(peak, intensity × bandwidth). `peak_tflops` is a
    number (labelled `peak_label`) or {label: TFLOP/s} for several compute ceilings."""
    data = load(data)
    pts = [p for p in data["points"] if timed(p) and p.get("tflops") and p.get("min_bytes")]
    if not pts:
        return None
    peaks = peak_tflops if isinstance(peak_tflops, dict) else {peak_label: float(peak_tflops)}
    fig, ax = plt.subplots(figsize=(9.8, 6.0))
    fig.subplots_adjust(left=0.09, right=0.76, top=0.87, bottom=0.11)
    xs = [p["flops"] / p["min_bytes"] for p in pts]
    ridge_lo = min(peaks.values()) * 1e3 / peak_gbps
    lo = min(min(xs), ridge_lo) / 3
    hi = max(max(xs), max(peaks.values()) * 1e3 / peak_gbps) * 3
    grid = [lo * (hi / lo) ** (i / 200) for i in range(201)]
    ax.plot(grid, [x * peak_gbps / 1e3 for x in grid], color="#888888", linewidth=1, linestyle=":")
    for i, (label, peak) in enumerate(sorted(peaks.items(), key=lambda kv: kv[1])):
        ridge = peak * 1e3 / peak_gbps
        ax.plot(grid, [min(peak, x * peak_gbps / 1e3) for x in grid], color="#333333",
                linewidth=2 - 0.5 * i, linestyle="-" if i == 0 else "--")
        ax.text(hi / 1.1, peak * 1.06, f"{label}: {peak:g} TFLOP/s", ha="right", va="bottom", fontsize=9)
        ax.plot([ridge], [peak], marker="|", color="#333333", markersize=10)
    ax.text(lo * 1.4, lo * 1.4 * peak_gbps / 1e3 / 1.3, f"bandwidth\n{peak_gbps:g} GB/s", fontsize=9,
            color="#555555", va="top")
    kernels = _kernel_order(pts)
    dtypes = [d for d in DTYPE_ORDER if any(p.get("dtype") == d for p in pts)]
    for k in kernels:
        for d in dtypes:
            kp = [p for p in pts if p["kernel"] == k and p.get("dtype") == d]
            if kp:
                ax.scatter([p["flops"] / p["min_bytes"] for p in kp], [p["tflops"] for p in kp],
                           color=style(k)["color"], marker=DTYPE_MARKER.get(d, "o"), s=40, zorder=3,
                           edgecolors="white", linewidths=0.5)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ymin = min(min(p["tflops"] for p in pts), lo * peak_gbps / 1e3) / 2
    ax.set_ylim(ymin, max(max(peaks.values()), max(p["tflops"] for p in pts)) * 2)
    _plain_log_y(ax)
    ax.xaxis.set_major_formatter(FuncFormatter(_plain))
    ax.set_xlabel("arithmetic intensity: FLOPs / compulsory bytes (FLOP/B)")
    ax.set_ylabel("achieved TFLOP/s (median time)")
    ax.grid(True, which="major", alpha=0.3)
    handles = [Line2D([], [], color=style(k)["color"], marker="o", linestyle="none", label=k) for k in kernels]
    handles += [Line2D([], [], color="#333333", marker=DTYPE_MARKER.get(d, "o"), markerfacecolor="none",
                       linestyle="none", label=d) for d in dtypes]
    ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=9, frameon=False)
    prov = data.get("provenance", {})
    ax.set_title(f"Roofline — suite {data.get('suite') or 'compare'}\n{prov.get('device', 'unknown device')}, "
                 f"{str(prov.get('date', 'date unknown'))[:10]}", fontsize=12)
    return _save(fig, path)


def bars(data, path, claims=None):
    """For a suite measured at one sequence length (seed-versions): a dot per kernel and dtype for
    ms, TFLOP/s and peak MiB (log axes), the page's claims as hollow diamonds below them."""
    data = load(data)
    pts = [p for p in data["points"] if p.get("status") != "n/a"]
    if not pts:
        return None
    measured_any = any(peak_mib(p) is not None for p in pts)
    metrics = [("time", "forward time, median (ms)", lambda p: p["timing"]["median_ms"] if timed(p) else None),
               ("tflops", "achieved TFLOP/s", lambda p: p.get("tflops") if timed(p) else None),
               ("memory", "peak device memory (MiB)" if measured_any else "device memory, model (MiB)",
                lambda p: peak_mib(p) if measured_any else model_mib(p))]
    if not any(timed(p) for p in pts):
        metrics = metrics[2:]
    keys = panels(pts)
    one_shape = len({s for (_, s), _ in keys}) == 1
    rows = []  # (label, kernel, page?, {metric: value}, status)
    for key, kp in keys:
        where = key[0] if one_shape else _panel_title(key)
        for k in _kernel_order(kp):
            for p in (p for p in kp if p["kernel"] == k):
                rows.append((f"{k} · {where}", k, False, {m: f(p) for m, _, f in metrics}, p["status"]))
    page: dict = {}
    seqs = sorted({p["seq_q"] for p in pts})
    for c in claims or ():
        if c.seq in seqs and c.value is not None and c.metric in {m for m, _, _ in metrics}:
            page.setdefault(c.label(), (c.kernels[0] if c.kernels else "", {}))[1][c.metric] = c.value
    rows += [(label, kernel, True, vals, "page") for label, (kernel, vals) in page.items()]
    left = 0.35 + 0.075 * max(len(r[0]) for r in rows)
    fw, fh = left + 3.7 * len(metrics) + 0.3 * (len(metrics) - 1) + 0.4, 0.34 * len(rows) + 1.9
    fig, axes = plt.subplots(1, len(metrics), figsize=(fw, fh), sharey=True, squeeze=False)
    fig.subplots_adjust(left=left / fw, right=1 - 0.4 / fw, wspace=0.3 / 3.7, top=1 - 1.0 / fh, bottom=0.6 / fh)
    ys = list(range(len(rows)))[::-1]
    for ax, (m, label, _) in zip(axes[0], metrics):
        for y, (name, kernel, is_page, vals, status) in zip(ys, rows):
            v = vals.get(m)
            color = style(kernel)["color"] if kernel else "#555555"
            if v:
                ax.plot([v], [y], marker="D" if is_page else style(kernel)["marker"], markersize=8,
                        color=color, markerfacecolor="white" if is_page else color, markeredgewidth=1.6,
                        linestyle="none")
                ax.annotate(_short(v), (v, y), xytext=(7, 0), textcoords="offset points", va="center",
                            fontsize=8)
            else:
                ax.text(0.02, y, status if status in ("OOM", "FAIL") else "—", va="center", fontsize=8,
                        transform=ax.get_yaxis_transform(), color="#aa0000")
        ax.set_xscale("log")
        lo, hi = ax.get_xlim()
        ax.set_xlim(lo / 1.5, hi * 2.5)
        ax.set_xlabel(label)
        ax.grid(True, axis="x", which="major", alpha=0.3)
        ax.grid(True, axis="y", alpha=0.15)
    if page:
        for ax in axes[0]:
            ax.axhline(len(page) - 0.5, color="#999999", linewidth=0.8)
    axes[0][0].set_yticks(ys)
    axes[0][0].set_yticklabels([r[0] for r in rows], fontsize=9)
    axes[0][0].set_ylim(-0.7, len(rows) - 0.3)
    shape = "" if not one_shape else f", {_shape_text(keys[0][0][1])}"
    _title(fig, data, f"At N = {', '.join(_seq_label(n) for n in seqs)}{shape}: measured (filled) and "
                      f"the page's claims (hollow ◇)")
    return _save(fig, path)


def _short(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------
def write_all(json_path, *, peak_tflops=None, peak_gbps=None, baseline="naive", gpu=None, log=print) -> list:
    """Every figure that applies to one compare JSON, next to it; returns the paths written."""
    from workbench.bench import benchmark_page

    data = load(json_path)
    stem = os.path.splitext(str(json_path))[0]
    device = data.get("provenance", {}).get("device")
    try:
        claims = benchmark_page.claims_for(data.get("suite"))
    except ValueError:
        claims = []
    claims = pick_claims(claims, gpu or device)
    written = []

    def out(name, path):
        if path:
            written.append(path)
            log(f"wrote {path}")
        else:
            log(f"skipped {name}: nothing in {json_path} it can show")

    sweep, tm = is_sweep(data), has_timing(data)
    if sweep:
        if tm:
            out("time", time_vs_seq(data, f"{stem}-time.png", claims))
            if not any(p["kernel"] == baseline and timed(p) for p in data["points"]):
                baseline = next((p["kernel"] for p in data["points"] if timed(p)), baseline)
            out("speedup", speedup_vs_seq(data, f"{stem}-speedup.png", baseline, claims))
        else:
            log(f"skipped time, speedup: {json_path} has no timing (simulator: no time is measured)")
        out("memory", memory_vs_seq(data, f"{stem}-memory.png", claims))
        out("per_token", per_token(data, f"{stem}-per_token.png", claims))
    elif data["points"]:
        out("bars", bars(data, f"{stem}-bars.png", claims))
    if tm:
        if peak_tflops is None or peak_gbps is None:
            from workbench.harness.device import slug

            known = MEASURED_PEAKS.get(slug(device or ""))
            if known:
                peak_tflops = peak_tflops if peak_tflops is not None else {"FP32 (cuBLAS SGEMM, measured)": known[0]}
                peak_gbps = peak_gbps if peak_gbps is not None else known[1]
        if peak_tflops is None or peak_gbps is None:
            log("skipped roofline: give --peak-tflops and --peak-gbps (measured ceilings) for this device")
        else:
            out("roofline", roofline(data, f"{stem}-roofline.png", peak_tflops, peak_gbps,
                                     peak_label="FP32 peak"))
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m workbench.bench.plots",
                                description="Write the figures for compare JSON files, next to each file.")
    p.add_argument("json", nargs="+", help="compare JSON (python -m workbench.bench.compare --out DIR)")
    p.add_argument("--peak-tflops", type=float, default=None, help="compute ceiling for the roofline")
    p.add_argument("--peak-gbps", type=float, default=None, help="bandwidth ceiling for the roofline")
    p.add_argument("--baseline", default="naive", help="kernel the speedups are relative to")
    p.add_argument("--gpu", default=None, help="whose page claims to draw (H100, A100, A10G); "
                                                  "default: the JSON's device")
    args = p.parse_args(argv)
    for path in args.json:
        write_all(path, peak_tflops=args.peak_tflops, peak_gbps=args.peak_gbps, baseline=args.baseline,
                  gpu=args.gpu)
    return 0


if __name__ == "__main__":
    sys.exit(main())
