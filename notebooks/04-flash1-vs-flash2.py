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
# # 04 — Rungs 4 and 5: FlashAttention-1 against FlashAttention-2
#
# Both papers compute exactly the recurrence of notebook 03. They differ in *loop order* — which
# of the two loops (over query blocks i, over KV blocks j) is outside — and in how the work is
# spread over the GPU:
#
# ```
# FA1 (Dao et al. 2022, Algorithm 1)          FA2 (Dao 2023)
# for j = 1 … Tc:          # KV blocks        for i = 1 … Tr in parallel:  # a CTA per Q block
#     load K_j, V_j                               load Q_i; m, l, O on chip
#     for i = 1 … Tr:      # Q blocks             for j = 1 … Tc:          # KV blocks
#         load Q_i, O_i, m_i, l_i  (HBM)              load K_j, V_j
#         update O_i, m_i, l_i                        update m, l, O (no division)
#         write O_i, m_i, l_i      (HBM)          O = O / l, LSE = m + log l; write O, LSE
# ```
#
# FA1 reads K and V from device memory once, but the running O, m, l of every query block must
# leave the chip between its visits and come back Tc times. FA2 keeps them on chip and reads K and
# V once per query block, and it has Tr times more independent blocks to spread over the SMs.

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
from workbench.bench import plots
from workbench.bench import traffic_model
from workbench.harness import runner
from workbench.kernels import flash1, flash2, get, online

for name in ("online", "flash1", "flash2"):
    print(get(name))

# %% [markdown]
# ## Which CTA computes which tile, in which order

# %%
diagrams.loop_orders(n_q=32, n_kv=32, Br=8, Bc=8)
plt.show()

# %% [markdown]
# ## online → flash1: the loop swap
#
# Rung 4 is rung 3 with the loops swapped (on rung 5's tile engine, `workbench/kernels/tiles.py`,
# which the two share): the KV loop moves outside, the Q loop inside it, and O, m, l get a round
# trip through device memory (`o_acc`, `m_acc`, `l_acc`) at every KV block; the update takes the
# paper's form, with O normalised at each step. The two kernels' outlines — loops, barriers,
# loads and stores, as `course.kernels_of` finds them in the rungs' launch plans — side by side:

# %%
tiny = Problem(1, 1, 1, 16, 16, 16)  # any problem: the kernels are built for the simulator's tiles
(k_online,) = course.kernels_of("online", tiny)
(k1,) = course.kernels_of("flash1", tiny)
(k2,) = course.kernels_of("flash2", tiny)
outline = [r"^\s*for (j|ji|i0|j0)\b", r"syncthreads\(\)", r"\b(tile_scores|scores|add_pv|row_max|mask)\(",
           r"\bload_(q|kv|tile|q_row|row)\(", r"\bstore_row\(", r"(m_acc|l_acc|o_acc)\[.*\] =",
           r"= (m_acc|l_acc)\[", r"^\s*def (online|flash1|flash2)\(", r"j_start|j_end", r"✂", r"segment_sum"]
print(course.side_by_side(course.skeleton(k_online, outline), course.skeleton(k1, outline),
                          names=("online (rung 3)", "flash1 (rung 4)"), width=76))

# %% [markdown]
# ## flash1 → flash2
#
# Rung 5 keeps the engine and changes the loops and what lives where; the outlines:

# %%
print(course.side_by_side(course.skeleton(k1, outline), course.skeleton(k2, outline), names=("flash1", "flash2"), width=76))

# %% [markdown]
# What changed, and why (the module's docstring says more):
#
# - **loop order**: one Q block per CTA, KV tiles inside; O, m, l never leave the chip, so the
#   `o_acc`/`m_acc`/`l_acc` round trips are gone, and Q is read once;
# - **normalise once**: the loop only rescales O by α; the division by l happens after the loop;
# - **skip masked tiles**: the loop runs over `j_start … j_end`, only the tiles the mask lets the
#   block see (notebook 06);
# - **warps split the rows**: the CTA's threads form a grid; each computes a small RM × RN
#   micro-tile of S and a slice of O in registers, so each value read from shared memory feeds
#   several multiply-adds (register tiling); K_j and V_j share one shared buffer.
#
# Both kernels are in `workbench/kernels/` (flash1.py, flash2.py); the outlines above leave out
# the per-tile arithmetic, since flash2's is your turn.

# %% [markdown]
# ### Your turn: FA2's update on a thread's micro-tile
#
# flash2's update of m, l and O (elided above) is yours. A CTA of TR × TC threads owns Br query
# rows; thread (tr, tc) owns RM of them (rows `tr + TR·a`) and, of each KV tile, RN keys (keys
# `tc + TC·c`): an RM × RN micro-tile `s` of S. Its arguments: `s` (RM, RN), the micro-tile of
# scores (−∞ where masked); `mx` (RM,), each of its rows' max over the whole tile (already
# combined over the TC threads that share the row); `m`, `l` (RM,), the running max and the
# running sum — **over this thread's own keys only**: the TC partial sums of a row are added
# once, after the last tile, which is why FA2's l needs no exchange inside the loop; `acc` (RM, DT),
# the thread's part of the unnormalised O; `p_ij` (Br, Bc), P in shared memory; `rows`, `keys`,
# the indices of its rows and keys in the tile. Per row: m_new, α = e^(m − m_new), P = e^(s − m_new)
# into `p_ij`, l = α·l + (the row sum of its P), O = α·O — rescaled, not divided; the check's
# kernel then adds P V_j and, after the last tile, adds the partial l's and divides once.
# A row that has seen no key yet (m_new = −∞) uses 0 in place of m_new, so that every exponent
# stays finite: its P is 0, its l stays 0. (flash2 itself works in base 2 with `math.exp2`; here
# it is `math.exp`.) The spec is for a whole CTA's Br rows at once:

# %%
checks.spec("fa2-update")

# %% tags=["your-turn"]
def fa2_update(s, mx, m, l, acc, p_ij, rows, keys):
    """One KV tile on my RM × RN micro-tile: m, l (my keys' partial sum) and acc (my part of the
    unnormalised O) updated in place; P written to p_ij[rows[a], keys[c]]."""
    # FILL ME IN (about 14 lines): per row a: m_new, m_use (0 if m_new is -inf), alpha; each p into
    # p_ij and its row sum; l and acc rescaled by alpha (l also gets the row sum); m[a] = m_new


# %%
checks.check("fa2-update", fa2_update)

# %% [markdown]
# ## Traffic
#
# What each loop order asks of device memory at the seed configuration (before caches; L2 serves
# part of online's and flash2's K/V re-reads, since the CTAs of a head read the same tiles at about
# the same time):

# %%
diagrams.traffic_table(Problem(8, 32, 32, 4096, 4096, 64, "float32"), rungs=("online", "flash1", "flash2"))
plt.show()

# %% [markdown]
# ## Parallelism
#
# An H100 has 132 SMs. flash1 launches one CTA per (batch, head); flash2 one per (query block,
# batch, head). The launch plans, at the GPU's default tiles:

# %%
sms = workbench.harness.device.H100.sm_count
for p in (Problem(8, 32, 32, 4096, 4096, 64), Problem(1, 8, 8, 8192, 8192, 64), Problem(1, 32, 32, 16384, 16384, 128)):
    for name, module in (("flash1", flash1), ("flash2", flash2)):
        r = get(name)
        (launch,) = runner.plan(r, p, dict(module.DEFAULT_CONFIG))
        ctas = int(np.prod(launch.grid))
        print(f"{p.describe():32s} {name}: {ctas:6d} CTAs of {launch.threads:3d} threads = {ctas / sms:6.1f} per SM")

# %% [markdown]
# At B = 1, H = 8, flash1 has 8 CTAs for 132 SMs: most of the GPU idles.
#
# ## Check both

# %%
cases = ([Problem(1, 2, 2, 24, 24, 16), Problem(1, 2, 1, 13, 29, 16, causal=True)] if SIM
         else [Problem(1, 8, 8, 1023, 1023, 64), Problem(1, 8, 2, 1000, 2049, 128, causal=True)])
for name in ("flash1", "flash2"):
    for p in cases:
        print(check(name, p, seed=5))

# %% [markdown]
# ## Measure (GPU) or load (no GPU)
#
# The benchmark page this project started from (its tables are kept, as written, in
# `workbench.bench.benchmark_page`) compares FA1 and FA2 on an H100 in its "versions" table,
# printed first below. Our rungs 4 and 5 are not the papers' kernels — they do their multiply-adds
# on the CUDA cores, in float32; rung 6 (notebook 07) puts rung 5 on the tensor cores — but the
# loop orders are theirs.

# %%
from workbench.bench import benchmark_page
import tempfile

page = benchmark_page.table("versions")
print("page, forward ms:", {c: page.num("Forward time (ms)", c) for c in page.columns[1:]})
if SIM:
    data = course.committed("seed-versions")
    print(course.source_line(data))
    points = data["points"]
else:
    points = course.measure(["flash1", "flash2"], [Problem(8, 32, 32, n, n, 64, "float32") for n in (1024, 2048)])
    course.record("04-flash1-vs-flash2", points)
    data = {"provenance": workbench.harness.device.provenance(), "suite": "04-flash1-vs-flash2", "points": points}
print(course.table(points))
for n in sorted({pt["seq_q"] for pt in points}):
    for dtype in ("float32", "float16"):
        a, b = course.ms(points, "flash1", seq_q=n, dtype=dtype), course.ms(points, "flash2", seq_q=n, dtype=dtype)
        if a and b:
            print(f"N = {n}, {dtype}: flash2 is {a / b:.1f}x faster than flash1")
if SIM:
    course.show_png(plots.bars(data, f"{tempfile.mkdtemp()}/versions-bars.png",
                               plots.pick_claims(benchmark_page.claims_for("seed-versions"), "H100")))

ladder = course.committed("ladder")
for dtype in ("float32", "float16"):
    at = course.select(ladder["points"], dtype=dtype, seq_q=4096)
    timed = sorted((pt["timing"]["median_ms"], pt["kernel"]) for pt in at if pt.get("timing"))
    print(f"ladder, N = 4096, {dtype}: fastest first: " + ", ".join(f"{k} {ms:.3g} ms" for ms, k in timed))

# %% [markdown]
# flash1 is slower than rung 3 (notebook 03), which reads K/V many times: the O, m, l round trips,
# uncoalesced, cost far more than the K/V re-reads that L2 partly absorbs, and B·H CTAs leave SMs
# idle. Of the CUDA-core rungs flash2 is the fastest; the last lines, from the committed ladder
# (`figures/h100/ladder.json`), rank every kernel measured at N = 4096: in float16 the
# tensor-core rung and SDPA's backends are ahead, which is notebook 07's subject.
#
# ## Exercises
#
# 1. Give flash1 `{"Br": 64, "Bc": 16}`. Predict how its Q and O/m/l traffic change
#    (`traffic_model.requested("flash1", p, {"Br": 64, "Bc": 16})`) and whether the shared memory
#    still fits at D = 128 (`flash1.shared_bytes`).
# 2. Under `causal=True` at N = 4096, flash1 visits all Tr·Tc tiles. How many does flash2 compute?
#    Use `diagrams.flash2_tile_kinds(p, 64, 32)` (0 = skipped).
# 3. At D = 128, flash2 caps Br at 4096 // D. Use `flash2.tiles(p, flash2.DEFAULT_CONFIG)` to see
#    the tiles, and compute the threads per CTA (TR·TC) and the shared memory
#    (`flash2.shared_bytes`).
