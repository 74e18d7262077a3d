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
# # 02 — Rung 2, tiled: reuse through shared memory
#
# In rung 1, the T threads that compute S[i, j], S[i, j+1], …, S[i, j+T−1] all read row i of Q
# from device memory, each for itself. Rung 2 keeps the same three kernels and the same N²
# buffer, and changes one thing: a block of T × T threads first copies a T × T *tile* of each
# operand into shared memory — one element per thread — waits at a barrier, and then every
# thread reads what it needs from the tile. Each element fetched from device memory now serves T
# threads. This is the classic tiled matrix product.

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
from workbench.harness import runner
from workbench.kernels import get, tiled

rung = get("tiled")
print(rung)

# %% [markdown]
# ## The picture
#
# The block that owns a T × T tile of S (T queries × T keys) needs rows i0…i0+T−1 of Q and rows
# j0…j0+T−1 of K, all D columns of each. It walks D in steps of T: at each step its T² threads
# load one T × T tile of Q and one of K (one element each), barrier, T multiply-adds each from
# shared memory, barrier, next step.

# %%
diagrams.tiled_step(n_q=32, n_kv=32, head_dim=24, T=8, block=(1, 2))
plt.show()

# %% [markdown]
# ## The code
#
# `scores_kernel(tile)` builds the kernel for one tile size: shared arrays need shapes known when
# the kernel is compiled, so each tile size is its own compiled kernel (cached). Look for the K
# tile padded to T + 1 columns (its reads go down a column; unpadded, they would all hit a few of
# shared memory's 32 banks and queue up). The loop over D is elided: it is your turn, below.

# %%
course.show(tiled.scores_kernel)

# %% [markdown]
# ### Your turn: one step of the tiled loop
#
# Write the body of the loop over D for one head (2-D arrays `q` (Nq, D), `k` (Nkv, D), `s`
# (Nq, Nkv)). The block of T × T threads owns the tile of S at rows i0…, keys j0…; at step d0:
#
# 1. thread (tx, ty) loads one element of each tile: `q_tile[ty, tx]` = Q[i0 + ty, d0 + tx] and
#    `k_tile[ty, tx]` = K[j0 + ty, d0 + tx], and 0 where that is outside Q or K (a 0 adds 0);
# 2. a barrier, `cuda.syncthreads()`, so that no thread reads a tile before it is complete;
# 3. T multiply-adds from the tiles into `acc`: Q[i] · K[j] along d0 … d0 + T − 1, where thread
#    (tx, ty) computes S[i0 + ty, j0 + tx] (so it reads row ty of `q_tile` and row tx of `k_tile`);
# 4. a second barrier, so that no thread overwrites the tiles while another still reads them.
#
# The check runs it on sizes that are not multiples of T (D included), launches it twice and
# compares the two results bit for bit: a missing barrier is a race, and races show up there
# (not always: a race can be lucky once).

# %%
checks.spec("tiled-scores")

# %% tags=["your-turn"]
T = 4  # the tile: T × T threads per block
TP = T + 1  # the padded K row. (Shared arrays' shapes must be constants when the kernel compiles:
# globals like T and TP are, an expression like T + 1 written inside the kernel is not.)


def scores_tiled(q, k, s, scale):
    """s = scale · q kᵀ with T × T tiles of q and k in shared memory (block (x, y) owns the tile of
    s at keys x·T…, queries y·T…)."""
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    j0, i0 = cuda.blockIdx.x * T, cuda.blockIdx.y * T
    i, j = i0 + ty, j0 + tx
    n_q, n_kv, dim = q.shape[0], k.shape[0], q.shape[1]
    q_tile = cuda.shared.array((T, T), float32)
    k_tile = cuda.shared.array((T, TP), float32)  # padded: no bank conflicts down a column
    acc = float32(0)
    for d0 in range(0, dim, T):
        # FILL ME IN (about 12 lines): load one element of each tile (0 outside Q or K), barrier,
        # T multiply-adds from the tiles into acc, barrier
        pass
    if i < n_q and j < n_kv:
        s[i, j] = acc * scale


# %%
checks.check("tiled-scores", scores_tiled, tile=T)

# %% [markdown]
# The softmax becomes a block per row whose threads stride over the row and combine their partial
# max and sum through a tree in shared memory; `pv` is tiled like `scores`. The rung's `needs`
# declares the shared memory its largest kernel uses, and the harness refuses configurations over
# the device's limits before any launch:

# %%
course.show(tiled.needs, numbers=False)
p = Problem(8, 32, 32, 4096, 4096, 64)
for t in (4, 8, 16, 32, 64):
    cfg = {"tile": t, "softmax_threads": 128}
    try:
        runner.check_config(rung, p, cfg)
        print(f"tile {t:2d}: {t * t:4d} threads per block, {tiled.needs(p, cfg).shared_bytes:6d} bytes of shared memory: ok")
    except ValueError as err:
        print(f"tile {t:2d}: ValueError: {err}")

# %% [markdown]
# ## Traffic: naive against tiled
#
# `traffic_model.requested` counts, per array, the bytes each rung's loads and stores ask for. The heat
# map shows how many times each array crosses the bus: Q, K and V now travel N/T times instead of
# N times (T = 16 at the GPU's default). S/P barely improves: it is still written as S, read three
# times and written again as P by the softmax, and read ⌈D/T⌉ times by `pv` (rung 1: D times).
# That N² traffic is rung 3's target.

# %%
diagrams.traffic_table(Problem(8, 32, 32, 4096, 4096, 64, "float32"), rungs=("naive", "tiled"))
plt.show()

# %% [markdown]
# ## Check it
#
# Any tile size must give the same answer (within float32 rounding): the tests of the package run
# the simulator's small tiles, and here two more, on a length that is not a multiple of the tile.

# %%
problem = Problem(1, 1, 1, 13, 13, 16) if SIM else Problem(1, 8, 8, 1023, 1023, 64)
for cfg in ({"tile": 4, "softmax_threads": 4}, {"tile": 8, "softmax_threads": 8}) if SIM else ({"tile": 8}, {"tile": 32}):
    print(cfg, check("tiled", problem, seed=3, config=cfg))

# %% [markdown]
# ## Measure (GPU) or load (no GPU)

# %%
if SIM:
    data = course.committed("ladder")
    print(course.source_line(data))
    points = course.select(data["points"], kernel=("naive", "tiled"), dtype="float32")
else:
    points = course.measure(["naive", "tiled"], [Problem(8, 32, 32, n, n, 64, "float32") for n in (512, 1024, 2048)])
    course.record("02-tiled", points)
print(course.table(points))
for n in sorted({pt["seq_q"] for pt in points}):
    a, b = course.ms(points, "naive", seq_q=n), course.ms(points, "tiled", seq_q=n)
    if a and b:
        print(f"N = {n:5d}: tiled is {a / b:.1f}x faster than naive")

# %% [markdown]
# Several times faster, but not T² or even T times: the caches had already absorbed part of
# naive's re-reads, and the N² buffer's traffic, which tiling does not touch, is now most of what
# is left.
#
# ## Exercises
#
# 1. Predict the shared memory of the `scores` kernel at tile 12 (a Q tile and a padded K tile
#    of float32), then check with `tiled.needs(p, {"tile": 12, "softmax_threads": 128})`. Which
#    kernel sets `shared_bytes` at tile 4?
# 2. At tile 16 and N = 4096, how many times is each element of Q read? Compute ⌈N/T⌉ and
#    compare with `traffic_model.requested("tiled", p)["Q"]` over the bytes of Q.
# 3. Try `softmax_threads=6` in a config and read the error. Why does the tree reduction in the
#    softmax kernel (`course.show(tiled.softmax_kernel)`) need a power of two?
