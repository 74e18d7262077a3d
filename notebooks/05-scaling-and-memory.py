# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 05 — Scaling and memory: the seed page, reproduced and checked
#
# The project started from a public page of FlashAttention benchmarks; `workbench.bench.benchmark_page`
# holds its tables exactly as written. This notebook puts its tables beside what we measured on an H100, redraws
# the figures from the committed data, and checks the page against itself and against physics:
# several of its numbers cannot be right.

# %%
import math

import matplotlib.pyplot as plt
import numpy as np

import workbench  # first: without a GPU it switches Numba's CUDA simulator on
from numba import cuda, float32
from workbench import Problem, reference
from workbench.course import checks, diagrams
from workbench.course import helpers as course
from workbench.harness.verify import check

SIM = course.simulator()  # no GPU: Numba's CUDA simulator, tiny sizes, committed H100 data
print(course.banner())

# %%
import tempfile
import textwrap

from workbench.bench import plots
from workbench.bench import report
from workbench.bench import benchmark_page
from workbench.harness import memory
from workbench.kernels import get

def print_table(key):
    t = benchmark_page.table(key)
    print(f"{t.title}  [{t.key}]")
    for row in (t.columns, *t.rows):
        print("  " + " | ".join(f"{c:>12s}" for c in row))
    print()

for key in ("h100-speed", "memory-standard", "memory-flash2", "versions"):
    print_table(key)

# %% [markdown]
# ## The page beside the H100
#
# The README's table, generated from `figures/h100/seed-speed.json` by `workbench.bench.report`: "Standard"
# is our naive rung and PyTorch's matmul-softmax-matmul, "Flash Attn 2" our flash2 rung and PyTorch
# SDPA's flash backend, FA3-class SDPA's cuDNN backend.

# %%
print(report.speed_table(str(course.figures_dir("h100"))))

# %% [markdown]
# ## The figures, redrawn from the committed data
#
# `workbench.bench.plots` draws from compare's JSON; here into a temporary folder (the committed PNGs in
# `figures/h100/` are the same drawings). Hollow markers on dotted lines are the page's benchmark_page.

# %%
tmp = tempfile.mkdtemp()
drawings = (("seed-speed", plots.time_vs_seq), ("seed-memory", plots.memory_vs_seq),
            ("seed-scaling", plots.per_token))
for suite, draw in drawings:
    data = course.committed(suite)
    print(course.source_line(data))
    page_claims = plots.pick_claims(benchmark_page.claims_for(suite), "H100")
    course.show_png(draw(data, f"{tmp}/{suite}.png", page_claims))

# %% [markdown]
# Three things to read off them: time grows like N² for every kernel, flash included (attention's
# FLOPs are N²; flash changes memory and traffic, not the FLOP count); memory grows like N² for
# the standard kernels and like N for flash, with the standard ones running out of the 80 GB;
# and per-token time is *not* constant for FA2, though per-token memory is.
#
# ## Where the page is wrong
#
# `benchmark_page.findings()` checks every table against its own arithmetic and against hardware facts
# (FLOPs from `Problem.flops`, the H100's datasheet peaks). Each finding starts with a verdict:

# %%
for text in benchmark_page.findings():
    print(textwrap.fill(text, 110, subsequent_indent="    "), end="\n\n")

# %% [markdown]
# Two of them by hand: the memory table's "Attention Matrix" cell at N = 512 against one float16
# score matrix at B = 8, H = 32, and the versions table's FA2 time against its own TFLOPS column:

# %%
s_bytes = benchmark_page.score_matrix_bytes(8, 32, 512, 512, 2)
cell = benchmark_page.table("memory-standard").cell(512, "Attention Matrix")
print(f"one score matrix: {s_bytes / 2**20:.0f} MiB; the page: {cell!r}, "
      f"{s_bytes / 2**20 / benchmark_page.mib(cell):.0f}x less")
versions = benchmark_page.table("versions")
ms, said = versions.num("Forward time (ms)", "FA2"), versions.num("TFLOPS", "FA2")
flops = Problem(8, 32, 32, 4096, 4096, 64).flops()
print(f"versions table: {flops:.3e} FLOP in {ms} ms = {flops / ms / 1e9:.0f} TFLOP/s; the page says {said:.0f}")

# %% [markdown]
# ## The memory model at the page's sizes
#
# Our memory model is the call's own arrays plus each rung's scratch, from the rung's
# `workspace_bytes` (naive: the N² matrix; flash2: nothing):

# %%
course.show(memory.model_bytes, numbers=False)
course.show(get("naive").module.workspace_bytes, numbers=False)
course.show(get("flash2").module.workspace_bytes, numbers=False)

# %% [markdown]
# At the page's rows, beside the page (in the simulator the rungs are first *verified* at a tiny
# size, which `measure` does):

# %%
tiny = [Problem(1, 2, 2, 16, 16, 16, "float16")] if SIM else []
for pt in course.measure(["naive", "flash2"], tiny):
    print(f"{pt['kernel']:7s} {pt['problem']:30s} {pt['status']}")
std, fa2 = benchmark_page.table("memory-standard"), benchmark_page.table("memory-flash2")
print(f"\n{'N':>6s} {'page Standard':>14s} {'naive model':>12s} {'page FA2':>9s} {'flash2 model':>13s}   (MiB; float16, B=8 H=32 D=64)")
for n in std.seqs():
    p = Problem(8, 32, 32, n, n, 64, "float16")
    naive_mib = memory.model_bytes(get("naive"), p, {}) / 2**20
    fa2_mib = memory.model_bytes(get("flash2"), p, {}) / 2**20
    print(f"{n:6d} {benchmark_page.mib(std.cell(n, 'Total')):14,.0f} {naive_mib:12,.0f} {benchmark_page.mib(fa2.cell(n, 'Total')):9,.0f} {fa2_mib:13,.0f}")

# %% [markdown]
# ### Your turn: a row's LSE in one pass, two numbers of memory
#
# The flash column is flat per token because a fused kernel never holds a row of N scores: the
# online softmax (notebook 03) keeps two numbers per row, the running max m and the running sum l.
# Write the smallest such kernel part: one query row's LSE = log Σ_j e^(s_ij), with
# s_ij = scale · q_i · k_j computed key by key, and nothing stored but m and l. When a key's score
# s beats m, rescale: l = l·e^(m − s) + 1 and m = s; otherwise l += e^(s − m). `q` (Nq, D), `k`
# (Nkv, D) float32, `i` the row, `scale` a float32; return LSE = m + log l. The check's second case
# uses scale = 12, so some scores pass 89, where e^s overflows float32: keep every exponent ≤ 0.
# (This LSE is what FlashAttention-2 saves for the backward pass, notebook 08.)

# %%
checks.spec("row-lse")

# %% tags=["your-turn"]
def row_lse(q, k, i, scale):
    """LSE of query row i, log Σ_j exp(scale · q[i] · k[j]), streamed over the keys with a running
    max m and sum l (float32; no array of scores)."""
    # FILL ME IN (about 13 lines): m = -inf, l = 0; for each key: its score, then rescale or add
    return float32(0)


# %%
checks.check("row-lse", row_lse)

# %% [markdown]
# ## Live (GPU)
#
# On a GPU, a slice of the page's memory table measured now — naive, flash2, PyTorch's standard
# attention and SDPA's flash backend at float16 — beside the committed H100 numbers.

# %%
if SIM:
    print("no GPU: nothing to measure live; the figures above are the committed H100 measurements")
else:
    problems = [Problem(8, 32, 32, n, n, 64, "float16") for n in (512, 2048)]
    points = course.measure(["naive", "flash2"], problems) + course.measure_peers(["torch-standard", "sdpa-flash"], problems)
    course.record("05-scaling-and-memory", points)
    print(course.table(points))
    committed = course.committed("seed-memory")
    print("\ncommitted:", course.source_line(committed))
    print(course.table(course.select(committed["points"], seq_q=(512, 2048), batch=8)))

# %% [markdown]
# ## Exercises
#
# 1. The page's Attention Matrix cells are N²·32 bytes. Which (batch, heads, dtype) would make
#    them right? (`benchmark_page.shapes_for_bytes_per_pair(32)`.) Are any of them the page's stated config?
# 2. From `course.committed("seed-scaling")`, fit the exponent of time against N for naive and
#    for flash2 with `benchmark_page.fit_exponent` (float16 points). What would "time per token is
#    constant" require?
# 3. In `figures/h100/seed-speed.json`, by what factor does SDPA's flash backend beat the page's
#    FA2 times at each N? (`course.ms(points, "sdpa-flash", seq_q=n, dtype="float16")` and
#    `benchmark_page.table("h100-speed").series("Flash Attn 2")`.)
