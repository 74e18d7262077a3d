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
# # 06 — Variants: causal, sliding window, GQA and MQA
#
# Three variations every real model uses, all in the ladder's kernels through two small ideas: a
# mask that says which keys a query sees, and a map from query heads to key/value heads. The
# interesting question is not whether a kernel can mask — every rung can — but whether it *skips
# the work* the mask removes.

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
from workbench.bench import traffic_model
from workbench.kernels import common, flash2, get

# %% [markdown]
# ## The mask
#
# With shift = Nkv − Nq, query i sees key j when i + shift − left ≤ j ≤ i + shift + right
# (`Problem`'s docstring; FlashAttention's convention). Causal sets right = 0: a query sees itself
# and the past, aligned bottom-right when Nq ≠ Nkv (the last query sees every key, as in decoding
# with a KV cache). A window (left, right) bounds both sides; −1 means unbounded.

# %%
course.show(Problem.visible_range, numbers=False)
course.show(common.visible, numbers=False)

# %% [markdown]
# ## Causal, and why it halves the work
#
# A causal square problem sees N(N+1)/2 of the N² pairs, so it needs about half the FLOPs
# (`Problem.flops` counts visible pairs). flash2 computes, per CTA, the KV tiles from its first
# row's first key to its last row's last key (`j_start … j_end`) and never loads the rest; only
# tiles on the diagonal evaluate the mask at all. The picture: the visible pairs (dark) under
# flash2's tiles, on a small problem with 8 × 8 tiles.

# %%
diagrams.mask_tiles(Problem(1, 1, 1, 64, 64, 16, causal=True), 8, 8)
diagrams.mask_tiles(Problem(1, 1, 1, 24, 64, 16, causal=True), 8, 8)
plt.show()

# %%
for n in (512, 4096, 16384):
    full, causal = Problem(8, 32, 32, n, n, 64), Problem(8, 32, 32, n, n, 64, causal=True)
    Br, Bc = flash2.tiles(causal, flash2.DEFAULT_CONFIG)[:2]
    kinds = diagrams.flash2_tile_kinds(causal, Br, Bc)
    print(f"N = {n:5d}: causal FLOPs {causal.flops() / full.flops():.3f} of full; flash2 computes "
          f"{(kinds > 0).mean():.3f} of the tiles ({(kinds == 1).sum()} of them evaluate the mask)")

# %% [markdown]
# Rungs 1–4 apply the same mask but compute every tile (the masked scores become −∞, their
# probability 0): they do the full work and throw half away.
#
# ## Sliding window
#
# With window (w, 0) a query sees itself and the w keys before it. A CTA of Br rows needs about
# (Br + w)/Bc + 1 KV tiles, *whatever N is*: cost linear in N instead of quadratic.

# %%
diagrams.mask_tiles(Problem(1, 1, 1, 64, 64, 16, window=(12, 0)), 8, 8)
plt.show()
for n in (1024, 4096, 16384):
    p = Problem(8, 32, 32, n, n, 64, window=(256, 0))
    Br, Bc = flash2.tiles(p, flash2.DEFAULT_CONFIG)[:2]
    tiles = [je - js for js, je in traffic_model.flash2_tile_ranges(p, Br, Bc)]
    print(f"N = {n:5d}, window (256, 0): at most {max(tiles)} KV tiles per CTA of {Br} rows "
          f"((Br + w)/Bc + 1 = {(Br + 256) / Bc + 1:.0f}); K/V traffic {traffic_model.requested('flash2', p)['K'] / 1e9:.2f} GB")

# %% [markdown]
# ### Your turn: the KV tiles a CTA needs
#
# flash2 computes, before its KV loop, the range of tiles `j_start … j_end − 1` that its query
# rows i0 … i_last see together (its source above elides it: the `causal-skip` region). Row i sees
# the keys i + shift − left … i + shift + right, clamped to [0, Nkv), with shift = Nkv − Nq and
# (left, right) from `Problem.mask_bounds()` (a number no row reaches when unbounded). Both ends
# grow with i, so the block's rows see one run of keys, from the first row's first key to the last
# row's last key; the tiles of Bc keys that cover it are the answer, and an empty range
# (j_end == j_start) when the rows see no key at all (possible when Nq > Nkv under causal). Return
# `(j_start, j_end)`. The check runs your function on every query block of random problems —
# causal, windows on one or both sides, Nq ≠ Nkv, several tile sizes — and wants exactly the
# smallest range: a tile too many is wasted work, a tile too few a wrong answer.

# %%
checks.spec("kv-tiles")

# %% tags=["your-turn"]
def kv_tiles(i0, i_last, Bc, shift, left, right, n_kv):
    """(j_start, j_end): the KV tiles (Bc keys each) that query rows i0 … i_last see together."""
    # FILL ME IN (about 5 lines): the first key the block sees (clamped at 0), one past the last
    # (clamped at n_kv), then the tiles that cover them; an empty range if there is no key
    return 0, 0


# %%
checks.check("kv-tiles", kv_tiles)

# %% [markdown]
# ## GQA and MQA
#
# Multi-query (MQA) and grouped-query attention (GQA) give several query heads one key/value head:
# H query heads, Hkv key/value heads, query head h reads key/value head h // (H / Hkv). The K and V
# arrays (and a decoder's KV cache) shrink by H / Hkv; the FLOPs do not change.

# %%
diagrams.gqa_heads(heads=8, kv_heads=2)
plt.show()
for hkv in (32, 8, 1):
    p = Problem(8, 32, hkv, 4096, 4096, 128, "float16")
    kv = 2 * p.batch * p.kv_heads * p.seq_kv * p.head_dim * p.itemsize
    print(f"H = 32, Hkv = {hkv:2d}: K and V {kv / 2**20:6.0f} MiB, FLOPs {p.flops():.3e}")
print()
print(course.skeleton(flash2.build, [r"group"]))

# %% [markdown]
# In the kernels it is one line: `hk = h // group`, the key/value head the CTA's loads read. The
# saving in *traffic* comes from the L2 cache, which serves the group's repeated reads of the same
# K/V tiles; `traffic_model.requested` counts requests, so it does not show it.
#
# ## Check every variant

# %%
cases = ([Problem(1, 2, 2, 24, 24, 16, causal=True), Problem(1, 2, 2, 13, 29, 16, causal=True),
          Problem(1, 2, 2, 29, 13, 16, causal=True), Problem(1, 2, 2, 24, 24, 16, window=(5, 0)),
          Problem(1, 4, 2, 17, 17, 16), Problem(1, 4, 1, 17, 17, 32, "float16", causal=True)] if SIM
         else [Problem(1, 4, 4, 2048, 2048, 64, causal=True), Problem(1, 4, 4, 1000, 2049, 64, causal=True),
               Problem(1, 4, 4, 2049, 1000, 64, causal=True), Problem(1, 4, 4, 2048, 2048, 64, window=(256, 0)),
               Problem(1, 8, 2, 2048, 2048, 128), Problem(1, 8, 1, 2048, 2048, 128, "float16", causal=True)])
for p in cases:
    print(check("flash2", p, seed=6))

# %% [markdown]
# (With Nq > Nkv under causal, the first Nq − Nkv queries see no key at all: the check requires
# O = 0 and LSE = −∞ for them.)
#
# ## Measure (GPU) or load (no GPU)
#
# flash2 at the seed configuration in float16: full, causal, a 256-key window, GQA (Hkv = 8) and
# MQA. Causal should take about half the full time, the window far less, GQA about the same.

# %%
variants = [Problem(8, 32, 32, 4096, 4096, 64, "float16"), Problem(8, 32, 32, 4096, 4096, 64, "float16", causal=True),
            Problem(8, 32, 32, 4096, 4096, 64, "float16", window=(256, 0)), Problem(8, 32, 8, 4096, 4096, 64, "float16"),
            Problem(8, 32, 1, 4096, 4096, 64, "float16")]
if SIM:
    data = course.committed("06-variants")
    if data is None:
        print("no committed H100 measurement of the variants yet: scripts/run_notebooks.py writes it on a GPU "
              "(06-variants.json), to be committed under figures/h100/. Predicted from the tile counts:")
        for p in variants:
            Br, Bc = flash2.tiles(p, flash2.DEFAULT_CONFIG)[:2]
            share = (diagrams.flash2_tile_kinds(p, Br, Bc) > 0).mean()
            print(f"  {p.describe():45s} tiles computed: {share:.3f} of the full problem's")
        points = []
    else:
        print(course.source_line(data))
        points = data["points"]
else:
    points = course.measure(["flash2"], variants)
    course.record("06-variants", points)
if points:
    print(course.table(points))
    base = points[0]["timing"]["median_ms"]
    for pt in points:
        print(f"{pt['problem']:45s} {pt['timing']['median_ms'] / base:.2f} of the full problem's time")

# %% [markdown]
# ## Exercises
#
# 1. For causal at N = 4096 with flash2's default tiles (Br = 64, Bc = 32), predict the fraction
#    of tiles computed (the diagonal's tiles count whole), then check with
#    `diagrams.flash2_tile_kinds`.
# 2. For window (256, 0), how many KV tiles does each CTA visit at N = 1024 and at N = 65536?
#    Compare with the docstring's (Br + w)/Bc + 1.
# 3. Under causal with Nq = 24, Nkv = 64 (the second picture), which query sees the most
#    keys, and how many? Check with `Problem(...).visible_range()`. What would change with
#    top-left alignment?
