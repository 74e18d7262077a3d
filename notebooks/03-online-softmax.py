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
# # 03 — Rung 3, online softmax: one pass, no N² buffer
#
# Rungs 1 and 2 store S because a row's softmax needs the whole row: its max m and its sum l are
# known only after the last key. The *online softmax* removes that need: walk the keys in tiles,
# keep a running max and a running sum, and fix up what was accumulated whenever the max grows.
# With it, the three phases fuse into one kernel that never holds more than one tile of scores.

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

# %% [markdown]
# ## Deriving the recurrence
#
# Take one query row with scores s₁…s_N and values v₁…v_N. The answer is
# o = Σⱼ e^(sⱼ−m) vⱼ / Σⱼ e^(sⱼ−m) for *any* constant m (it cancels); the max is used only so
# that no exponent is positive.
#
# Split the keys into two tiles A and B. After tile A alone keep
# m_A = max over A, l_A = Σ_A e^(sⱼ−m_A), õ_A = Σ_A e^(sⱼ−m_A) vⱼ.
# When tile B arrives, the new max is m = max(m_A, max over B). Everything in l_A and õ_A was
# computed relative to m_A; relative to m, each term is off by the same factor
# α = e^(m_A − m), so
#
# l = α·l_A + Σ_B e^(sⱼ−m),  õ = α·õ_A + Σ_B e^(sⱼ−m) vⱼ,
#
# and o = õ / l at the end. The same step applies to a third tile, and every tile after: that is
# the recurrence, with P_ij = e^(S_ij − m_new) for the tile:
#
# m_new = max(m, rowmax(S_ij)); α = e^(m − m_new); l = α·l + rowsum(P_ij); O = α·O + P_ij V_j; m = m_new.
#
# ## Checking it in NumPy
#
# Here it is on one row, tile by tile, against the softmax of the whole row:

# %%
rng = np.random.default_rng(0)
n, d, Bc = 40, 4, 8
s = 2 * rng.standard_normal(n) + np.linspace(0, 4, n)  # one row of scores (rising: the max moves)
vals = rng.standard_normal((n, d))      # the value rows
exact = np.exp(s - s.max()) / np.exp(s - s.max()).sum() @ vals

m, l, o = -np.inf, 0.0, np.zeros(d)
m_steps, l_steps, l_rescaled = [], [], []
for j0 in range(0, n, Bc):
    tile, v_tile = s[j0:j0 + Bc], vals[j0:j0 + Bc]
    m_new = max(m, tile.max())
    alpha = np.exp(m - m_new)           # rescales what was accumulated under the old max
    p = np.exp(tile - m_new)
    l_rescaled.append(alpha * l)
    l = alpha * l + p.sum()
    o = alpha * o + p @ v_tile
    m = m_new
    m_steps.append(m)
    l_steps.append(l)
print("online o / l:", (o / l).round(6))
print("exact:       ", exact.round(6), " max difference", np.abs(o / l - exact).max())
diagrams.running_max_sum(m_steps, l_steps, s.max(), np.exp(s - s.max()).sum(), Bc, l_rescaled)
plt.show()

# %% [markdown]
# Every time the running max jumps, what was summed so far shrinks by α = e^(m_old − m_new) < 1
# (the hollow triangles) before the new tile's terms are added; after the last tile, m and l are
# exactly the whole row's. Forget the rescale and the answer is wrong:

# %%
m, l, o = -np.inf, 0.0, np.zeros(d)
for j0 in range(0, n, Bc):
    tile, v_tile = s[j0:j0 + Bc], vals[j0:j0 + Bc]
    m = max(m, tile.max())
    p = np.exp(tile - m)
    l, o = l + p.sum(), o + p @ v_tile  # no alpha
print("without the rescale, max difference:", np.abs(o / l - exact).max())

# %% [markdown]
# The package keeps this recurrence for whole (B, H, N, D) problems in
# `reference.online_attention` (float64, with masks): any tile size gives the reference's answer.

# %%
problem = Problem(1, 2, 2, 50, 50, 8, causal=True)
q, k, v = problem.make_inputs(seed=0)
o_ref, lse_ref = reference.attention(q, k, v, causal=True)
for block_kv in (1, 7, 16, 50):
    o_on, lse_on = reference.online_attention(q, k, v, block_kv=block_kv, causal=True)
    print(f"block_kv {block_kv:2d}: max |O diff| {np.abs(o_on - o_ref).max():.1e}, max |LSE diff| {np.abs(lse_on - lse_ref).max():.1e}")

# %% [markdown]
# ## The kernel
#
# Rung 3 turns the recurrence into one kernel. The grid is (Tr, B·H): block (i, bh) owns the
# query block Q_i of Br rows, one thread per row. The block walks the Tc KV tiles K_j, V_j of Bc
# keys; all its threads load each tile into shared memory together (barrier), then each thread
# computes its row's Bc scores and applies the update above to its own m, l and O row, which stay
# in registers for the whole loop. Every block runs at once on different SMs; the numbers are the
# step at which a block computes each tile:

# %%
diagrams.schedule("online", n_q=32, n_kv=32, Br=8, Bc=8)
plt.show()

# %%
from workbench.kernels import get, online

rung = get("online")
print(rung)
course.show(online.build)

# %% [markdown]
# Two parts are elided: the update inside the KV loop and, after the loop, the division by l
# (once) with LSE = m + log l. The names are the recurrence's: `m`, `l`, `acc` (the unnormalised
# O). The update is yours to write.
#
# ### Your turn: the online-softmax update
#
# Write the update for one query row and one KV tile, as a device function: `m`, `l` (float32
# scalars) are the row's running max and sum, `acc` its unnormalised O (a local array of D),
# `s` the tile's Bc scores (a local array, −∞ where masked or past Nkv), `v_j` the tile's values
# (Bc × D, in shared memory). Update `acc` in place and return the new `(m, l)`. The check's kernel
# is rung 3's loop (a thread per row, tiles of 4 keys) around your function, then O = acc / l and
# LSE = m + log l.
#
# One edge case matters: under a mask a row may see no key in its first tiles (all −∞). Then
# m_new = −∞ too, and e^(m − m_new) = e^(−∞ + ∞) is NaN: such a tile must change nothing. The
# check's second case has rows like that (a sliding window), its third rows that see no key at all.

# %%
checks.spec("online-update")

# %% tags=["your-turn"]
def online_update(m, l, acc, s, v_j):
    """One KV tile of the online softmax for one row: returns the new (m, l); acc (the row's
    unnormalised O) is rescaled and gets P V_j added, in place."""
    # FILL ME IN (about 15 lines): m_new; if it is -inf return m, l unchanged; alpha; rescale l and
    # acc; add each key's p = exp(s[c] - m_new) to l and p · v_j[c] to acc
    return m, l


# %%
checks.check("online-update", online_update)

# %% [markdown]
# A row that has seen no key keeps m = −∞ and l = 0 to the end; rung 3 then writes O = 0 and
# LSE = −∞ for it (the check's kernel does the same).
#
# ## Shared memory and the tile sizes
#
# A block holds Q_iᵀ (D × Br), K_j and V_j (Bc × D each) and P_ijᵀ (Bc × Br) in shared memory,
# all float32. Br is also the number of threads. `online.shared_bytes` is the formula the
# harness checks against the 48 KiB static limit:

# %%
for D in (64, 128):
    cfg = online.DEFAULT_CONFIG
    print(f"D = {D:3d}, {cfg}: {online.shared_bytes(cfg['Br'], cfg['Bc'], D):6d} bytes of shared memory per block (limit 49152)")

# %% [markdown]
# ## Check it

# %%
cases = ([Problem(1, 2, 2, 21, 21, 16), Problem(1, 2, 1, 13, 29, 16, causal=True)] if SIM
         else [Problem(1, 8, 8, 1023, 1023, 64), Problem(1, 8, 2, 1000, 2049, 128, causal=True)])
for p in cases:
    print(check("online", p, seed=4))

# %% [markdown]
# ## No N² anywhere
#
# The scratch the rung asks for (`workspace_bytes`) is zero: m and l live in registers, one
# tile's scores too. The memory of a call is just its inputs and outputs:

# %%
from workbench.harness import memory

for n in (4096, 32768):
    p = Problem(8, 32, 32, n, n, 64, "float16")
    print(f"N = {n:5d}: naive {memory.model_bytes(get('naive'), p, {}) / 2**30:8.2f} GiB, "
          f"online {memory.model_bytes(rung, p, online.DEFAULT_CONFIG) / 2**30:6.2f} GiB")

# %% [markdown]
# ## Measure (GPU) or load (no GPU)

# %%
if SIM:
    data = course.committed("ladder")
    print(course.source_line(data))
    points = course.select(data["points"], kernel=("tiled", "online"), dtype="float32")
else:
    points = course.measure(["tiled", "online"], [Problem(8, 32, 32, n, n, 64, "float32") for n in (1024, 2048)])
    course.record("03-online-softmax", points)
print(course.table(points))

# %% [markdown]
# Faster than tiled *and* a fraction of the memory. K and V are still read once per query block
# (Tr times); rung 4 changes the loop order to read them once — and pays for it elsewhere.
#
# ## Exercises
#
# 1. Change Bc in online's config to 16 and predict the shared memory at D = 64 and Br = 64,
#    then check with `online.shared_bytes(64, 16, 64)` and with
#    `runner.check_config(rung, Problem(head_dim=128), {"Br": 64, "Bc": 16})` (from
#    `workbench.harness import runner`). What is the largest Bc that fits at D = 128?
# 2. Rewrite the NumPy loop above in FlashAttention-1's form: keep o *normalised* after every
#    tile (divide by the new l each step, rescaling the old o by α·l_old/l_new). Check it gives
#    the same answer. Why is dividing once at the end cheaper?
# 3. Run `reference.online_attention` with `block_kv=1` and with `block_kv` equal to N. Which of
#    them is the classic three-pass softmax, and which is a purely streaming one?
