"""Pictures for the course (notebooks/): tiles over the score matrix, who computes what, masks,
the memory hierarchy and traffic. Each function draws from the package's own numbers — launch plans
from the runner, tile ranges from flash2's rule, byte counts from `workbench.bench.traffic_model` — and returns
the matplotlib Figure (the caller shows it; nothing is saved here).

The score matrix is drawn as the paper draws it: query rows i down, keys j across, so a tile of
Br rows × Bc keys is a box Br tall and Bc wide.
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.patches import Patch, Rectangle

from workbench.bench import traffic_model
from workbench.kernels import get
from workbench.kernels.common import unmasked_keys_host
from workbench.problem import Problem

CMAP = plt.get_cmap("tab20")
SKIPPED, EDGE, FULL = "#d9d9d9", "#fdae6b", "#74c476"


def _matrix_axes(ax, rows, cols, title, row_label="query i", col_label="key j"):
    ax.set_xlim(0, cols)
    ax.set_ylim(rows, 0)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(col_label)
    ax.set_ylabel(row_label)
    ax.tick_params(labelsize=8)


def _box(ax, x, y, w, h, color, text=None, edge="k", lw=0.6, alpha=1.0, fontsize=7, hatch=None):
    ax.add_patch(Rectangle((x, y), w, h, facecolor=color, edgecolor=edge, lw=lw, alpha=alpha, hatch=hatch))
    if text is not None:
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fontsize)


def score_grid(ax, n_q, n_kv, Br, Bc, owner=None, label=None, title="", fontsize=7):
    """Tiles of Br × Bc over an n_q × n_kv matrix; `owner(i, j)` gives a colour index (None: left
    blank) and `label(i, j)` the text of tile (i, j) (block indices)."""
    _matrix_axes(ax, n_q, n_kv, title)
    for bi in range(math.ceil(n_q / Br)):
        for bj in range(math.ceil(n_kv / Bc)):
            who = owner(bi, bj) if owner else None
            color = "white" if who is None else CMAP(who % 20)
            text = label(bi, bj) if label else None
            h, w = min(Br, n_q - bi * Br), min(Bc, n_kv - bj * Bc)
            _box(ax, bj * Bc, bi * Br, w, h, color, text, fontsize=fontsize)


def naive_launches(problem: Problem, config: dict | None = None):
    """Rung 1's three launches, from the runner's plan: which block computes which part of S
    (then P) and of O. One thread per element of S, per row of P, per element of O."""
    from workbench.harness import runner

    rung = get("naive")
    cfg = runner.check_config(rung, problem, config)
    scores, softmax, pv = runner.plan(rung, problem, cfg)
    p = problem
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.2), gridspec_kw={"width_ratios": [p.seq_kv, p.seq_kv, p.head_dim]})
    t = scores.block[0]
    score_grid(axes[0], p.seq_q, p.seq_kv, t, t, owner=lambda i, j: i * scores.grid[0] + j,
               label=lambda i, j: f"({j},{i})",
               title=f"scores: grid {scores.grid} × block {scores.block}\nblock (x, y) → a {t}×{t} tile of S")
    rows = softmax.block[0]

    def rows_label(i, j):
        inside = min(rows, p.seq_q - i * rows)
        return f"block {i}: {rows} threads, one row each" + (f"\n({inside} rows inside N)" if inside < rows else "")

    score_grid(axes[1], p.seq_q, p.seq_kv, rows, p.seq_kv, owner=lambda i, j: 2 * i, label=rows_label,
               title=f"softmax: grid {softmax.grid} × block {softmax.block}\na thread walks its row 3 times")
    score_grid(axes[2], p.seq_q, p.head_dim, pv.block[1], pv.block[0], owner=lambda i, j: i * pv.grid[0] + j,
               label=lambda i, j: f"({j},{i})", title=f"pv: grid {pv.grid}\n× block {pv.block}")
    axes[2].set_xlabel("column d of O")
    fig.suptitle(f"naive rung, {p.describe()}: the third grid index runs over the B·H = "
                 f"{p.batch * p.heads} (batch, head) pairs", fontsize=10)
    fig.tight_layout()
    return fig


def tiled_step(n_q=32, n_kv=32, head_dim=24, T=8, block=(1, 2)):
    """Rung 2's scores kernel: the block that owns tile (bi, bj) of S walks D in steps of T, and
    at each step its T×T threads load one T×T tile of Q and one of K into shared memory."""
    bi, bj = block
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.2), gridspec_kw={"width_ratios": [head_dim, head_dim, n_kv]})
    steps = math.ceil(head_dim / T)
    for ax, n, which, b in ((axes[0], n_q, "Q", bi), (axes[1], n_kv, "K", bj)):
        _matrix_axes(ax, n, head_dim, f"{which}: rows {b * T}…{b * T + T - 1}, loaded a {T}×{T} tile per step",
                     row_label="query i" if which == "Q" else "key j", col_label="d")
        for s in range(steps):
            _box(ax, s * T, b * T, min(T, head_dim - s * T), T, CMAP(2 * s), f"step {s}")
        _box(ax, 0, 0, head_dim, n, "none", lw=1.0)
    score_grid(axes[2], n_q, n_kv, T, T, owner=lambda i, j: 6 if (i, j) == (bi, bj) else None,
               label=lambda i, j: "this\nblock" if (i, j) == (bi, bj) else None,
               title=f"S: block ({bj}, {bi}) owns one {T}×{T} tile;\n"
                     f"each Q, K element it loads serves {T} threads")
    fig.suptitle(f"tiled rung, scores kernel: {steps} steps along D = {head_dim}, two barriers each", fontsize=10)
    fig.tight_layout()
    return fig


def schedule(kind, n_q=32, n_kv=32, Br=8, Bc=8, ax=None):
    """Which CTA computes each tile of S, and in which order. kind "online" (rungs 3 and 5): a CTA
    per query block (one colour each), all running at once, each walking its row of KV tiles;
    kind "flash1" (rung 4): one CTA per head visits every tile, KV block j outside, Q block i inside."""
    tr, tc = math.ceil(n_q / Br), math.ceil(n_kv / Bc)
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(5.8, 5.6))
    if kind == "online":
        score_grid(ax, n_q, n_kv, Br, Bc, owner=lambda i, j: 2 * i, label=lambda i, j: f"{j + 1}",
                   title=f"online / flash2: {tr} CTAs (one colour each) run at once;\n"
                         f"each walks its row of tiles, steps 1…{tc}", fontsize=9)
    elif kind == "flash1":
        score_grid(ax, n_q, n_kv, Br, Bc, owner=lambda i, j: 0, label=lambda i, j: f"{j * tr + i + 1}",
                   title=f"flash1: one CTA per head visits all {tr * tc} tiles,\n"
                         f"down each column (KV block j outside, Q block i inside)", fontsize=9)
    else:
        raise ValueError(f"kind must be 'online' or 'flash1', got {kind!r}")
    if own:
        fig.tight_layout()
    return ax.figure


def loop_orders(n_q=32, n_kv=32, Br=8, Bc=8):
    """The two schedules side by side (rungs 3/5 against rung 4)."""
    tr, tc = math.ceil(n_q / Br), math.ceil(n_kv / Bc)
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.4))
    schedule("online", n_q, n_kv, Br, Bc, ax=axes[0])
    schedule("flash1", n_q, n_kv, Br, Bc, ax=axes[1])
    fig.suptitle(f"the same {tr}×{tc} tiles of S (Br = {Br} queries × Bc = {Bc} keys), two schedules; "
                 f"numbers: the order a CTA computes them", fontsize=10)
    fig.tight_layout()
    return fig


def flash2_tile_kinds(problem: Problem, Br: int, Bc: int) -> np.ndarray:
    """(Tr, Tc) array: 0 = skipped (outside the query block's j_start … j_end), 1 = on the mask's
    edge (the mask is evaluated), 2 = every row sees every key (no mask test) — flash2's rule."""
    p = problem
    left, right = p.mask_bounds()
    shift = p.seq_kv - p.seq_q
    ranges = traffic_model.flash2_tile_ranges(p, Br, Bc)
    kinds = np.zeros((len(ranges), math.ceil(p.seq_kv / Bc)), np.int8)
    for bi, (js, je) in enumerate(ranges):
        i0 = bi * Br
        i_last = min(i0 + Br, p.seq_q) - 1
        inner_lo, inner_hi = unmasked_keys_host(i0, i_last, shift, left, right, p.seq_kv)
        for j in range(js, je):
            j0 = j * Bc
            kinds[bi, j] = 1 if (j0 < inner_lo or j0 + Bc > inner_hi) else 2
    return kinds


def mask_tiles(problem: Problem, Br: int, Bc: int, ax=None, title=None):
    """The mask (dark: pairs a query sees) under flash2's tiles: skipped, edge (mask evaluated) and
    full tiles, with counts."""
    from workbench.reference import visible_mask

    p = problem
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(8.4, 5.0 * min(1.6, p.seq_q / p.seq_kv) + 0.9))
    kinds = flash2_tile_kinds(p, Br, Bc)
    _matrix_axes(ax, p.seq_q, p.seq_kv, "")
    for bi in range(kinds.shape[0]):
        for bj in range(kinds.shape[1]):
            h, w = min(Br, p.seq_q - bi * Br), min(Bc, p.seq_kv - bj * Bc)
            _box(ax, bj * Bc, bi * Br, w, h, (SKIPPED, EDGE, FULL)[kinds[bi, bj]], lw=0.8)
    ax.imshow(np.where(visible_mask(p), 1.0, np.nan), cmap="Greys", vmin=0, vmax=1, alpha=0.3, zorder=3,
              extent=(0, p.seq_kv, p.seq_q, 0), interpolation="nearest")  # dark: the pairs the mask lets through
    n = {k: int((kinds == k).sum()) for k in range(3)}
    ax.set_title(title or f"{p.describe()}, Br={Br} Bc={Bc}\n"
                 f"tiles computed {n[1] + n[2]} of {kinds.size} ({(n[1] + n[2]) / kinds.size:.0%}); "
                 f"visible pairs {p.visible_pairs() / (p.seq_q * p.seq_kv):.0%}", fontsize=9)
    ax.legend(handles=[Patch(facecolor=FULL, edgecolor="k", label=f"full, no mask test ({n[2]})"),
                       Patch(facecolor=EDGE, edgecolor="k", label=f"edge, mask evaluated ({n[1]})"),
                       Patch(facecolor=SKIPPED, edgecolor="k", label=f"skipped, never loaded ({n[0]})")],
              loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False,
              title="dark: pairs the mask lets through", title_fontsize=8)
    if own:
        fig.tight_layout()
        return fig
    return ax.figure


def memory_hierarchy(levels):
    """Capacity of each level (log scale), with its scope, bandwidth and where each number comes
    from. `levels`: [{"name", "capacity", "scope", "bandwidth", "source"}] as `course.hierarchy()`
    gives them, fastest first."""
    fig, ax = plt.subplots(figsize=(11, 0.75 * len(levels) + 1.2))
    names = [f"{lv['name']}\n({lv['scope'].split(';')[0]})" for lv in levels][::-1]
    caps = [lv["capacity"] for lv in levels][::-1]
    ax.barh(names, caps, color=[CMAP(2 * i) for i in range(len(levels))][::-1])
    ax.set_xscale("log")
    ax.set_xlim(min(caps) / 4, max(caps) * 4)
    ax.set_xlabel("capacity, bytes (log scale)")
    ax.grid(axis="x", alpha=0.3)
    for y, lv in enumerate(levels[::-1]):
        text = f"{human_bytes(lv['capacity'])}"
        extra = [x.strip() for x in lv["scope"].split(";")[1:]] + ([lv["bandwidth"]] if lv.get("bandwidth") else [])
        if extra:
            text += "  ·  " + "; ".join(extra)
        ax.text(1.02, y, text + f"\n[{lv['source']}]", transform=ax.get_yaxis_transform(), va="center", fontsize=8.5)
    ax.set_title("what a kernel sees: small and fast on the SM, large and slow off it", fontsize=10)
    fig.subplots_adjust(left=0.2, right=0.55, top=0.88, bottom=0.18)
    return fig


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB', 80e9 -> '74.5 GiB' (binary units)."""
    return _bytes(n)


def _bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            v = n / size
            return f"{v:.0f} {unit}" if v >= 10 else f"{v:.3g} {unit}"
    return f"{n:.0f} B"


def bytes_vs_seq(batch=8, heads=32, head_dim=64, dtype="float16", seqs=(512, 1024, 2048, 4096, 8192, 16384, 32768),
                 capacity=80e9):
    """Where the N² lives: one score matrix S (float32, B·H·N² numbers) against Q, K, V, O (4·B·H·N·D)."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    probs = [Problem(batch, heads, heads, n, n, head_dim, dtype) for n in seqs]
    io = [p.input_bytes() + batch * heads * p.seq_q * head_dim * p.itemsize for p in probs]
    s = [traffic_model.F32 * batch * heads * n * n for n in seqs]
    ax.loglog(seqs, io, "o-", label=f"Q, K, V, O ({dtype}): grows like N")
    ax.loglog(seqs, s, "s-", color="#d62728", label="S (float32): grows like N²")
    ax.axhline(capacity, color="k", ls="-.", lw=0.8)
    ax.text(seqs[0], capacity * 1.15, f"H100 device memory ({capacity / 1e9:.0f} GB)", fontsize=8)
    ax.set_xticks(seqs, [f"{n // 1024}K" if n >= 1024 else str(n) for n in seqs])
    ax.minorticks_off()
    ax.set_xlabel("sequence length N")
    ax.set_ylabel("bytes")
    ax.set_title(f"B={batch} H={heads} D={head_dim}: one score matrix against the inputs and output",
                 fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def traffic_table(problem: Problem, rungs=("naive", "tiled", "online", "flash1", "flash2"), configs=None):
    """Heat map: how many times each rung moves each array through device memory (bytes requested
    ÷ the array's size), from `workbench.bench.traffic_model.requested`, with the total beside it."""
    p = problem
    configs = configs or {}
    sizes = {"Q": p.batch * p.heads * p.seq_q * p.head_dim * p.itemsize,
             "K": p.batch * p.kv_heads * p.seq_kv * p.head_dim * p.itemsize,
             "V": p.batch * p.kv_heads * p.seq_kv * p.head_dim * p.itemsize,
             "S/P": p.batch * p.heads * p.seq_q * p.seq_kv * traffic_model.F32,
             "O": p.batch * p.heads * p.seq_q * p.head_dim * p.itemsize,
             "m, l": p.batch * p.heads * p.seq_q * 2 * traffic_model.F32}
    cols = list(sizes)
    rows = [traffic_model.requested(r, p, configs.get(r)) for r in rungs]
    moved = np.array([[row[c] if row[c] else np.nan for c in cols] for row in rows], dtype=float)
    fig, ax = plt.subplots(figsize=(10, 0.62 * len(rungs) + 1.6))
    finite = moved[np.isfinite(moved)]
    norm = LogNorm(vmin=finite.min() / 3, vmax=finite.max() * 1.5)
    ax.imshow(moved, cmap="Reds", norm=norm, aspect="auto")
    for r in range(len(rungs)):
        for c in range(len(cols)):
            v = moved[r, c]
            if not np.isfinite(v):
                ax.text(c, r, "–", ha="center", va="center", fontsize=9)
                continue
            times = v / sizes[cols[c]]
            dark = norm(v) > 0.6
            ax.text(c, r, (f"{times:,.0f}×" if times >= 10 else f"{times:.2g}×") + f"\n{_gb(v)}",
                    ha="center", va="center", fontsize=8.5, color="white" if dark else "black")
        total = sum(rows[r].values())
        ax.text(len(cols) - 0.4, r, f"total {_gb(total)}\n{total / p.min_bytes():,.0f}× the minimum",
                va="center", fontsize=9)
    ax.set_xticks(range(len(cols)), cols)
    ax.xaxis.tick_top()
    ax.set_yticks(range(len(rungs)), [f"{r}" for r in rungs])
    ax.set_xlim(-0.5, len(cols) + 1.6)
    ax.spines[:].set_visible(False)
    ax.tick_params(length=0)
    ax.set_title(f"device-memory traffic the kernels request (before caches), {p.describe()}\n"
                 f"per array: times it is moved, and bytes (colour)", fontsize=10)
    fig.tight_layout()
    return fig


def _gb(n: float) -> str:
    return f"{n / 1e9:,.0f} GB" if n >= 1e11 else f"{n / 1e9:.3g} GB"


def running_max_sum(m_steps, l_steps, final_m, final_l, Bc, l_rescaled=None):
    """The online softmax's running max m and running sum l after each KV tile, against the
    values computed from the whole row at once (dotted); `l_rescaled[t]`, if given, is the old sum
    times alpha at tile t, before the tile's own terms are added."""
    steps = np.arange(1, len(m_steps) + 1)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    axes[0].plot(steps, m_steps, "o-", drawstyle="steps-post")
    axes[0].axhline(final_m, ls=":", color="k", label="max of the whole row")
    axes[0].set_title("running max m after each tile", fontsize=10)
    axes[1].plot(steps, l_steps, "o-", color="#ff7f0e", drawstyle="steps-post", label="l after the tile")
    if l_rescaled is not None:
        axes[1].plot(steps, l_rescaled, "v", color="#ff7f0e", mfc="white",
                     label="α · l of the tiles before (rescaled)")
    axes[1].axhline(final_l, ls=":", color="k", label="Σ exp(s − max) of the whole row")
    axes[1].set_title("running sum l (the old part shrinks by α when m grows)", fontsize=10)
    for ax in axes:
        ax.set_xlabel(f"KV tiles seen (Bc = {Bc} keys each)")
        ax.set_xticks(steps)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def gqa_heads(heads=8, kv_heads=2):
    """Which key/value head each query head reads: h // (H / Hkv)."""
    group = heads // kv_heads
    fig, ax = plt.subplots(figsize=(8, 2.6))
    for h in range(heads):
        ax.add_patch(Rectangle((h, 1.6), 0.8, 0.6, facecolor=CMAP(2 * (h // group)), edgecolor="k"))
        ax.text(h + 0.4, 1.9, f"q{h}", ha="center", va="center", fontsize=8)
        hk = h // group
        x_kv = hk * group + (group - 0.8) / 2
        ax.annotate("", xy=(x_kv + 0.4, 0.62), xytext=(h + 0.4, 1.58),
                    arrowprops=dict(arrowstyle="->", color="0.5", lw=0.8))
    for hk in range(kv_heads):
        x = hk * group + (group - 0.8) / 2
        ax.add_patch(Rectangle((x, 0), 0.8, 0.6, facecolor=CMAP(2 * hk), edgecolor="k"))
        ax.text(x + 0.4, 0.3, f"kv{hk}", ha="center", va="center", fontsize=8)
    kind = "MHA" if kv_heads == heads else "MQA" if kv_heads == 1 else "GQA"
    ax.set_xlim(-0.3, heads + 0.1)
    ax.set_ylim(-0.2, 2.4)
    ax.axis("off")
    ax.set_title(f"{kind}: H = {heads} query heads, Hkv = {kv_heads} key/value heads; "
                 f"query head h reads K, V of head h // {group}", fontsize=10)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------------
# Rung 6: the fragments of mma.sync.m16n8k16 (workbench.course.fragments)
# --------------------------------------------------------------------------------------------------
def _lane_color(lane: int):
    """32 lanes, 8 groups g of 4 threads t: a hue per group, a shade per thread."""
    g, t = divmod(lane, 4)
    base = plt.get_cmap("tab10")(g % 10)
    shade = 0.55 + 0.15 * t
    return tuple(min(1.0, c * shade + (1 - shade) * 0.95) for c in base[:3])


def _fragment_panel(ax, kind, title, col0=0, show_text=True):
    """One operand's layout: an image of lane colours (one artist) and, per cell, its lane and
    register (text; no layout engine runs over them, which would be slow)."""
    from workbench.course import fragments

    grid, label = fragments.lane_grid(kind)
    rows, cols = grid.shape
    colours = np.array([[_lane_color(int(lane)) for lane in row] for row in grid])
    ax.imshow(colours, extent=(col0, col0 + cols, rows, 0), interpolation="nearest", zorder=0)
    for x in range(cols + 1):
        ax.axvline(col0 + x, color="k", lw=0.3)
    for y in range(rows + 1):
        ax.axhline(y, xmin=0, xmax=1, color="k", lw=0.3)
    if show_text:  # one text per register (its two 16-bit halves; C: a pair of values)
        pairs = {"A": [(lane, f"a{r}", [fragments.a_coords(lane, r, h) for h in range(2)])
                       for lane in range(32) for r in range(4)],
                 "B": [(lane, f"b{r}", [fragments.b_coords(lane, r, h) for h in range(2)])
                       for lane in range(32) for r in range(2)],
                 "C": [(lane, f"c{2 * r},{2 * r + 1}", [fragments.c_coords(lane, 2 * r + h) for h in range(2)])
                       for lane in range(32) for r in range(2)]}[kind]
        for lane, name, cells in pairs:
            y = sum(rc[0] for rc in cells) / 2 + 0.5
            x = col0 + sum(rc[1] for rc in cells) / 2 + 0.5
            ax.text(x, y, f"{lane}:{name}", ha="center", va="center", fontsize=5.5,
                    rotation=90 if kind == "B" else 0)
    if title:
        ax.set_title(title, fontsize=9)


def mma_fragments():
    """Which lane of the warp holds which element of A (16×16), B (16×8) and C (16×8) for
    mma.sync.m16n8k16 (PTX's layouts; lane = 4g + t: a colour per group g, a shade per t). Each
    cell: the lane, and the register (a0-a3, b0-b1) or value (c0-c3) that holds it."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 6.2), gridspec_kw={"width_ratios": [16, 8, 8]})
    for ax, kind, rows, cols, title, xl, yl in (
            (axes[0], "A", 16, 16, "A (16×16, 16-bit): 4 registers × 2 halves per lane", "k", "m (row)"),
            (axes[1], "B", 16, 8, "B (16×8, 16-bit):\n2 registers × 2 halves", "n", "k"),
            (axes[2], "C", 16, 8, "C = A·B + C (16×8, float32):\n4 values per lane", "n", "m (row)")):
        _matrix_axes(ax, rows, cols, "", row_label=yl, col_label=xl)
        _fragment_panel(ax, kind, title)
    fig.suptitle("mma.sync.aligned.m16n8k16: one warp multiplies a 16×16 A by a 16×8 B; each of the 32 "
                 "lanes holds fixed elements (cell: lane, register)", fontsize=10)
    fig.subplots_adjust(left=0.05, right=0.98, top=0.86, bottom=0.08, wspace=0.25)
    return fig


def p_in_registers():
    """S = Q Kᵀ comes out of two mma's as two C tiles (16 × 8 keys each); P for those 16 keys
    goes into the next mma as one A tile (16 × 16). Same colour, same lane: every lane already
    holds the P elements it must feed, so P never goes through shared memory."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.6))
    _matrix_axes(axes[0], 16, 16, "", col_label="key (two n-tiles of 8)", row_label="query row")
    _fragment_panel(axes[0], "C", "", col0=0)
    _fragment_panel(axes[0], "C", "S as two C tiles of mma #1 (keys 0-7 | keys 8-15)", col0=8)
    axes[0].axvline(8, color="k", lw=2)
    _matrix_axes(axes[1], 16, 16, "", col_label="key (k of mma #2)", row_label="query row")
    _fragment_panel(axes[1], "A", "P as the A tile of mma #2 (O += P V)")
    fig.suptitle("the P trick of rung 6: C of S and A of P put the same elements in the same lanes "
                 "(only the registers change: c0,c1 → a0 …)", fontsize=10)
    fig.subplots_adjust(left=0.06, right=0.98, top=0.86, bottom=0.1, wspace=0.2)
    return fig


# --------------------------------------------------------------------------------------------------
# The backward (notebook 08)
# --------------------------------------------------------------------------------------------------
def backward_schedule(n_q=32, n_kv=32, Br=8, Bc=8, causal=True):
    """FA2's backward: a CTA per KV block (a colour each) walks the query blocks that see its keys
    (numbers: the order), skipping the masked ones; dQ_i gathers a contribution from every KV
    block in its row (right: how many, the adds of the atomics or the tiles of a second pass)."""
    from workbench.reference import visible_mask

    p = Problem(1, 1, 1, n_q, n_kv, 16, causal=causal)
    vis = visible_mask(p)
    tr, tc = math.ceil(n_q / Br), math.ceil(n_kv / Bc)
    needed = np.array([[vis[i * Br:(i + 1) * Br, j * Bc:(j + 1) * Bc].any() for j in range(tc)] for i in range(tr)])
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.6))
    order = {}
    for j in range(tc):
        steps = [i for i in range(tr) if needed[i, j]]
        for n, i in enumerate(steps, 1):
            order[(i, j)] = n
    score_grid(axes[0], n_q, n_kv, Br, Bc, owner=lambda i, j: 2 * j if needed[i, j] else None,
               label=lambda i, j: str(order[(i, j)]) if needed[i, j] else "",
               title="dK_j, dV_j: a CTA per KV block (colour), KV outer;\n"
                     "it walks the query blocks that see its keys (1, 2, …)", fontsize=9)
    score_grid(axes[1], n_q, n_kv, Br, Bc, owner=lambda i, j: 2 * i + 1 if needed[i, j] else None,
               label=lambda i, j: "+" if needed[i, j] else "",
               title="dQ_i = Σ_j dS_ij K_j: every needed tile of row i adds to dQ_i\n"
                     "(from tc different CTAs: atomics, or a second pass per Q block)", fontsize=9)
    for i in range(tr):
        axes[1].text(n_kv + 0.5, i * Br + Br / 2, f"{int(needed[i].sum())} adds", va="center", fontsize=8)
    axes[1].set_xlim(0, n_kv + 7)
    fig.suptitle(f"the backward's two loops over the same {tr}×{tc} tiles"
                 f"{' (causal: blank tiles are skipped)' if causal else ''}", fontsize=10)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------------
# Inference (notebook 09)
# --------------------------------------------------------------------------------------------------
def paged_cache(block_table, seq_lens, block_size, num_blocks):
    """A paged KV cache: each sequence's logical blocks (left, in order) live in physical blocks of
    one pool (right) wherever the block table says; grey: free blocks."""
    table = np.asarray(block_table)
    lens = [int(n) for n in seq_lens]
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.9 * max(len(lens), math.ceil(num_blocks / 16)) + 1.6),
                             gridspec_kw={"width_ratios": [table.shape[1] + 2, min(num_blocks, 12) + 1]})
    owner = {}
    ax = axes[0]
    for b, n in enumerate(lens):
        used = -(-n // block_size)
        for lb in range(used):
            phys = int(table[b, lb])
            owner[phys] = (b, lb)
            fill = min(block_size, n - lb * block_size)
            _box(ax, lb, b, 1, 0.8, CMAP(2 * b), f"→ {phys}\n{fill}/{block_size}", fontsize=7)
        ax.text(-0.2, b + 0.4, f"seq {b}\n({n} tokens)", ha="right", va="center", fontsize=8)
    ax.set_xlim(-1.6, table.shape[1])
    ax.set_ylim(len(lens), -0.2)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title("each sequence's logical blocks, in order\n(→ physical block; tokens used)", fontsize=9)
    ax = axes[1]
    per_row = min(num_blocks, 12)
    for phys in range(num_blocks):
        r, c = divmod(phys, per_row)
        if phys in owner:
            b, lb = owner[phys]
            _box(ax, c, r, 1, 0.8, CMAP(2 * b), f"{phys}\ns{b}:{lb}", fontsize=7)
        else:
            _box(ax, c, r, 1, 0.8, SKIPPED, f"{phys}\nfree", fontsize=7)
    ax.set_xlim(0, per_row)
    ax.set_ylim(math.ceil(num_blocks / per_row), -0.2)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(f"the pool: {num_blocks} physical blocks of {block_size} tokens\n"
                 f"(label: physical id, then sequence:logical block)", fontsize=9)
    fig.tight_layout()
    return fig


def split_kv(n_kv, splits, sms=None):
    """Flash-decoding: one query row's keys cut into `splits` runs, one CTA each, every CTA a
    partial (O_s, LSE_s); a second kernel merges them by their LSE."""
    bounds = np.linspace(0, n_kv, splits + 1).astype(int)
    fig, ax = plt.subplots(figsize=(11, 2.8))
    for s in range(splits):
        a, b = bounds[s], bounds[s + 1]
        _box(ax, a, 1.2, b - a, 0.8, CMAP(2 * s), f"CTA {s}\nkeys {a}…{b - 1}", fontsize=8)
        ax.annotate("", xy=(n_kv / 2, 0.55), xytext=((a + b) / 2, 1.18),
                    arrowprops=dict(arrowstyle="->", color="0.4", lw=0.8))
        ax.text((a + b) / 2, 2.1, f"O_{s}, LSE_{s}", ha="center", fontsize=8)
    _box(ax, n_kv * 0.3, 0.0, n_kv * 0.4, 0.5, "#eeeeee", "combine: m = max LSE_s, w_s = e^(LSE_s − m),\n"
         "O = Σ w_s O_s / Σ w_s,  LSE = m + log Σ w_s", fontsize=8)
    ax.set_xlim(0, n_kv)
    ax.set_ylim(-0.1, 2.4)
    ax.axis("off")
    extra = f" (the GPU has {sms} SMs)" if sms else ""
    ax.set_title(f"split-KV: one new token's {n_kv} keys over {splits} CTAs{extra}", fontsize=10)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------------
# Precision (notebook 10)
# --------------------------------------------------------------------------------------------------
FORMATS = (("float32", 1, 8, 23), ("float16", 1, 5, 10), ("bfloat16", 1, 8, 7), ("fp8 e4m3", 1, 4, 3))


def float_formats():
    """The bits of each format: sign, exponent (range), mantissa (precision)."""
    fig, ax = plt.subplots(figsize=(11, 3.2))
    for row, (name, s, e, m) in enumerate(FORMATS):
        x = 0
        for n, color, what in ((s, "#9e9ac8", "s"), (e, "#6baed6", "exponent"), (m, "#74c476", "mantissa")):
            _box(ax, x, row, n, 0.8, color, f"{what} {n}" if n > 2 else what[0], fontsize=8)
            x += n
        ax.text(-0.5, row + 0.4, f"{name} ({s + e + m} bits)", ha="right", va="center", fontsize=9)
    ax.set_xlim(-9, 33)
    ax.set_ylim(len(FORMATS), -0.2)
    ax.axis("off")
    ax.set_title("exponent bits set the range, mantissa bits the precision (relative spacing 2^-mantissa)",
                 fontsize=10)
    fig.tight_layout()
    return fig


def error_and_memory(rows):
    """Bars: error against float64 (log scale) and bytes per element, for each format.
    rows: [{"format", "error", "bytes"}]."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
    names = [r["format"] for r in rows]
    colors = [CMAP(2 * i) for i in range(len(rows))]
    axes[0].bar(names, [r["error"] for r in rows], color=colors)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("relative Frobenius error\nof O against float64")
    axes[0].grid(axis="y", alpha=0.3)
    for i, r in enumerate(rows):
        axes[0].text(i, r["error"], f"{r['error']:.1e}", ha="center", va="bottom", fontsize=8)
    axes[1].bar(names, [r["bytes"] for r in rows], color=colors)
    axes[1].set_ylabel("bytes per element")
    for i, r in enumerate(rows):
        axes[1].text(i, r["bytes"], f"{r['bytes']:.3g}", ha="center", va="bottom", fontsize=8)
    for ax in axes:
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    return fig


def measured(points, x, y, by="kernel", title="", xlabel=None, ylabel=None, logx=True, logy=True, hline=None):
    """A line per `by` value of committed measurements: y against x (dicts, or keys of them)."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    get = lambda p, key: key(p) if callable(key) else p.get(key)  # noqa: E731
    groups = {}
    for p in points:
        if get(p, y) is not None:
            groups.setdefault(get(p, by), []).append(p)
    for i, (name, pts) in enumerate(groups.items()):
        pts = sorted(pts, key=lambda p: get(p, x))
        ax.plot([get(p, x) for p in pts], [get(p, y) for p in pts], "o-", color=CMAP(2 * i % 20), label=str(name))
    if logx:
        ax.set_xscale("log", base=2)
    if logy:
        ax.set_yscale("log")
    if hline:
        value, text = hline
        ax.axhline(value, color="k", ls="-.", lw=0.8)
        ax.annotate(text, (0.01, value), xycoords=("axes fraction", "data"), xytext=(0, 3),
                    textcoords="offset points", fontsize=8)
    ax.set_xlabel(xlabel or (x if isinstance(x, str) else ""))
    ax.set_ylabel(ylabel or (y if isinstance(y, str) else ""))
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
