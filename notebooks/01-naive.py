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
# # 01 — Rung 1, naive: attention as written
#
# The first rung does exactly what notebook 00 wrote in NumPy, one CUDA kernel per line:
#
# 1. `scores`: S = scale·QKᵀ, one thread per element (i, j) of S;
# 2. `softmax`: P = softmax(S) in place, one thread per row;
# 3. `pv`: O = PV, one thread per element (i, d) of O.
#
# S lives in device memory between the kernels: B·H·N² float32 numbers. Nothing is clever here on
# purpose — this is the baseline every later rung is measured against, and it shows both costs
# that the ladder removes: operands re-read from device memory by neighbouring threads (rung 2
# fixes that) and the N² buffer (rung 3).

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
from workbench.harness import memory, runner
from workbench.kernels import get, naive

rung = get("naive")
print(rung)

# %% [markdown]
# ## The code
#
# Here is the whole module as it is in the package: the docstring, the three kernels, and
# `launch`, which the harness calls. Things to look for:
#
# - each kernel computes its thread's coordinates from `blockIdx`, `blockDim` and `threadIdx`,
#   and returns early when they fall outside the matrix (grids are rounded up to whole blocks);
# - `blockIdx.z` (or `.y`) numbers the (batch, head) pairs; query head h reads key/value head
#   `h // group` (grouped-query attention, notebook 06);
# - `visible(i, j, ...)` is the mask (causal, sliding window; notebook 06) — a masked score is −∞,
#   so its probability is 0;
# - every sum is accumulated in float32 (`float32(0)`, never a bare Python float, which would
#   silently turn the kernel into float64 arithmetic);
# - `launch` asks `gpu.empty` for the N² buffer S, then launches the three kernels through
#   `gpu.launch(kernel, grid, block, *args)`.

# %%
course.show(naive)

# %% [markdown]
# ### Your turn: the row softmax
#
# The softmax kernel's body is elided above: it is yours to write. One thread owns row i of S,
# in device memory, and makes it a row of P in place, with three passes over the row: its max m,
# its sum l = Σ_j e^(s_ij − m), and the normalisation P_ij = e^(s_ij − m) / l; it also writes
# LSE = m + log l. Masked scores are −∞ (probability 0); a row whose every score is −∞ (possible
# under a mask) gets P = 0 and LSE = −∞ — and no `math.log(0)`. Here for one head, as a device
# function on 2-D arrays: `s` (Nq, Nkv) and `lse` (Nq,) float32; the check's kernel calls it for
# every row i. Keep the arithmetic float32: start m at `float32(-math.inf)`, l at `float32(0)`.
# The check includes rows with a score of 95, where e^s overflows float32 without the max.

# %%
checks.spec("softmax-row")

# %% tags=["your-turn"]
def softmax_row(s, lse, i):
    """Row i of s becomes softmax(s[i]) in place (masked scores are -inf); lse[i] = m + log(l).
    A row whose every score is -inf: zeros, and lse[i] = -inf."""
    # FILL ME IN (about 14 lines): the row's max m (return early for an all -inf row), l, then P


# %%
checks.check("softmax-row", softmax_row)

# %% [markdown]
# ## Which block computes what
#
# The launch plan comes from the harness: `runner.plan` runs the rung's `launch` with placeholder
# arrays and records every kernel's grid and block without launching anything (this is how a bad
# configuration becomes a `ValueError` before any launch). The picture draws that plan on a small
# problem, with 8×8-thread blocks so the tiles are visible.

# %%
pic = Problem(1, 1, 1, 40, 40, 24)
config = {"block_xy": 8, "block_rows": 16}
for launch in runner.plan(rung, pic, runner.check_config(rung, pic, config)):
    blocks = int(np.prod(launch.grid))
    print(f"{launch.name:8s} grid {launch.grid} x block {launch.block}: {blocks} blocks, {blocks * launch.threads} threads")
diagrams.naive_launches(pic, config)
plt.show()

# %% [markdown]
# Note the threads past the matrix edge (40 is not a multiple of 8): they exist, and the
# `if i >= n_q or j >= n_kv: return` lines keep them from writing out of bounds.
#
# ## Run it and check it
#
# In the simulator the sizes are tiny, but the kernels, the launch and the check are the same as
# on a GPU. First by hand, against the float64 reference, then with the harness's check (fresh
# inputs, NaN-poisoned outputs, two launches compared bit for bit):

# %%
problem = Problem(1, 2, 2, 16, 16, 16) if SIM else Problem(1, 8, 8, 1024, 1024, 64)
q, k, v = problem.make_inputs(seed=0)
o, lse = workbench.attention(q, k, v, kernel="naive", return_lse=True)
o_ref, lse_ref = reference.attention(q, k, v)
print(problem.describe(), " max |O error|:", np.abs(o - o_ref).max(), " max |LSE error|:", np.abs(lse - lse_ref).max())
print(check("naive", problem, seed=1))
print(check("naive", Problem(1, 1, 1, 13, 21, 16, causal=True) if SIM else Problem(1, 8, 8, 1000, 2049, 64, causal=True), seed=2))  # Nq != Nkv, causal

# %% [markdown]
# ## The N² buffer
#
# `naive.workspace_bytes` is the memory model of the rung's scratch: one float32 score matrix.
# `harness.memory.model_bytes` adds the call's own arrays (Q, K, V, O, LSE). On a GPU the harness
# also *measures* peak memory, and the two agree (see the table at the end).

# %%
for n in (1024, 4096, 16384, 32768):
    p = Problem(8, 32, 32, n, n, 64, "float32")
    cfg = naive.DEFAULT_CONFIG
    print(f"N = {n:6d}: Q, K, V, O, LSE {p.io_bytes() / 2**30:6.2f} GiB + S {naive.workspace_bytes(p, cfg) / 2**30:8.2f} GiB"
          f" = {memory.model_bytes(rung, p, cfg) / 2**30:8.2f} GiB")

# %% [markdown]
# ## The traffic
#
# Memory is one cost; traffic is the other. Thread (i, j) of `scores` reads row i of Q and row j
# of K; so does every other thread — each row of Q is read N times, once per key. `pv` reads a
# row of P and a column of V per output element, so P is read D times. `workbench.bench.traffic_model.requested`
# counts what the kernels' loads and stores ask of device memory, before any cache:

# %%
from workbench.bench import traffic_model

p = Problem(8, 32, 32, 4096, 4096, 64, "float32")
asked = traffic_model.requested("naive", p)
for array, n_bytes in asked.items():
    print(f"{array:5s} {n_bytes / 1e9:10.2f} GB")
print(f"total {sum(asked.values()) / 1e9:10.2f} GB, {sum(asked.values()) / p.min_bytes():.0f}x the "
      f"{p.min_bytes() / 1e9:.2f} GB that the problem needs")

# %% [markdown]
# Thousands of times the minimum. The L1 and L2 caches catch much of it on a real GPU (threads of a
# block read the same rows at about the same time), which is why the measured time below is not
# thousands of times the floor — but its rate is far from the chip's float32 peak (printed below
# beside the measurements).
#
# ## Measure (GPU) or load (no GPU)

# %%
if SIM:
    data = course.committed("ladder")
    print(course.source_line(data))
    points = course.select(data["points"], kernel="naive", dtype="float32")
else:
    points = course.measure(["naive"], [Problem(8, 32, 32, n, n, 64, "float32") for n in (512, 1024, 2048)])
    course.record("01-naive", points)
    data = {"provenance": workbench.harness.device.provenance(), "suite": "01-naive", "points": points}
print(course.table(points))
import tempfile
course.show_png(plots.time_vs_seq(data | {"points": points}, f"{tempfile.mkdtemp()}/naive-time.png"))

from workbench.bench import benchmark_page

timed = sorted((pt["seq_q"], pt["timing"]["median_ms"], pt.get("tflops")) for pt in points if pt.get("timing"))
if len(timed) > 1:
    exponent = benchmark_page.fit_exponent([n for n, _, _ in timed], [ms for _, ms, _ in timed])
    peak = plots.MEASURED_PEAKS["h100"][0]
    rate = max(t for _, _, t in timed)
    print(f"time grows like N^{exponent:.2f}; at most {rate:.2f} TFLOP/s, {peak / rate:.0f}x below the "
          f"{peak} TFLOP/s float32 peak measured on the H100 (plots.MEASURED_PEAKS)")

# %% [markdown]
# Time grows like N² (the fitted exponent above; doubling N quadruples it), at a small fraction
# of what the chip can do. Peak memory equals the model: the score matrix is the memory.
#
# ## Exercises
#
# 1. Change `block_xy` to 4 in `config` above and predict the grid of `scores` for the 40 × 40
#    picture problem; check with `runner.plan`. What limits `block_xy` from above? (Try 64 and
#    read the `ValueError`.)
# 2. How many times does `scores` read each element of K (no mask)? Predict from the kernel, then
#    check: `traffic_model.requested("naive", p)["K"]` divided by the bytes of K.
# 3. With `causal=True`, which threads of `scores` skip the dot product? Predict the Q traffic of
#    a causal N = 4096 problem as a fraction of the full one, and check with
#    `Problem(...).visible_pairs()` and `traffic_model.requested`.
