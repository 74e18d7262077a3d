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
# # 00 — The problem and the mental model
#
# This course climbs a ladder of attention kernels written in Numba CUDA, from attention exactly
# as it is written on paper to FlashAttention-2, and measures every step. Each notebook teaches one
# rung or one idea: a short explanation, a picture, the kernel's source *as it is in the package*
# (never a copy), a correctness check against float64 NumPy, a measurement, and 2–3 exercises.
#
# **Two modes.** Without a GPU, `import workbench` switches on Numba's CUDA simulator: every CUDA
# thread becomes a Python thread, so the same kernels run on the CPU, slowly, at tiny sizes, and
# are checked exactly as on a GPU. No time is measured there; the notebooks show the numbers
# measured on an H100 instead (committed under `figures/h100/`, each file with its device, date
# and command) and say so. On a GPU, the same cells run at real sizes and measure live.
#
# **Your turn.** Every notebook asks you to write the kernel part it has just taught — a kernel, a
# device function or a loop body — in a cell marked *Your turn*: a NumPy spec says what to
# compute, a stub says where (`# FILL ME IN`), and `checks.check(...)` runs your function as CUDA
# code (in the simulator here) against float64 and lists the wrong elements with their inputs.
# The stubs are left in place, so the first run of each check says NOT YET; the rungs' own
# solutions are elided wherever their source is shown.
#
# This notebook builds the mental model the rest needs: what attention computes, where its N²
# lives, how many FLOPs and bytes each phase costs, what the GPU's memory hierarchy looks like,
# how to write and check a first kernel, and how to run, check and measure things here.

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
# ## 1. Attention in NumPy
#
# One head of attention takes N queries, N keys and N values, each a row of D numbers — matrices
# Q, K, V of shape N × D — and computes
#
# $$S = \text{scale}\cdot QK^\top \quad(N\times N),\qquad P = \text{softmax}_\text{rows}(S),\qquad O = PV \quad(N\times D)$$
#
# with scale = 1/√D. Row i of S scores query i against every key; softmax turns the row into
# weights that sum to 1; row i of O is the weighted average of the value rows. In a model there
# are B sequences (batch) and H heads, so the arrays are (B, H, N, D) and the same thing happens
# for each of the B·H (batch, head) pairs. Here it is, three lines of NumPy:

# %%
rng = np.random.default_rng(0)
N, D = 6, 4
q, k, v = (rng.standard_normal((N, D)) for _ in range(3))

s = q @ k.T / np.sqrt(D)                      # S: N × N scores
p = np.exp(s - s.max(axis=1, keepdims=True))  # subtract each row's max m: exp never overflows
p /= p.sum(axis=1, keepdims=True)             # divide by the row's sum l: rows of P sum to 1
o = p @ v                                     # O: N × D
print("S", s.shape, " P", p.shape, " O", o.shape, " row sums of P:", p.sum(axis=1).round(12))

# %% [markdown]
# Subtracting the row max m changes nothing mathematically (it cancels in the division) but keeps
# every exponent ≤ 0, so `exp` cannot overflow: in float32, e^89 is already infinite. The kernels
# also keep, per row, LSE = m + log l (l the row's sum of e^(s−m)), the log of the softmax's
# normaliser, which a backward pass needs.
#
# `workbench.reference.attention` is this computation in float64, with masks and multi-head
# shapes: the truth every kernel is checked against.

# %%
o_ref, lse_ref = reference.attention(q[None, None], k[None, None], v[None, None])  # (B=1, H=1, N, D)
print("max |NumPy above - reference|:", np.abs(o_ref[0, 0] - o).max())
print("LSE = m + log(l):", np.allclose(lse_ref[0, 0], s.max(1) + np.log(np.exp(s - s.max(1, keepdims=True)).sum(1))))

# %% [markdown]
# ## 2. Where the N² lives
#
# Q, K, V and O grow like N (N·D numbers per head). S and P grow like N²: N·N numbers per head.
# Written as three separate steps, attention has to *store* S (then P) somewhere between the
# steps, and for long sequences that matrix dwarfs everything else:

# %%
for n in (512, 2048, 8192, 32768):
    p = Problem(batch=8, heads=32, seq_q=n, head_dim=64, dtype="float16")
    s_bytes = 4 * p.batch * p.heads * p.seq_q * p.seq_kv  # one float32 score matrix per (batch, head)
    print(f"N = {n:6d}   Q, K, V, O, LSE: {p.io_bytes() / 2**30:7.2f} GiB    S (float32): {s_bytes / 2**30:9.2f} GiB")
diagrams.bytes_vs_seq(batch=8, heads=32, head_dim=64, dtype="float16")
plt.show()

# %% [markdown]
# At 32K tokens, one score matrix for the batch is 1 TiB — no GPU holds it. FlashAttention's whole
# point is to never store S: compute it a tile at a time, on chip, and fold each tile into the
# output at once (notebook 03 shows how that is possible for a softmax).
#
# ## 3. FLOPs and bytes of each phase
#
# A GPU kernel is limited by one of two budgets: arithmetic (FLOP/s) or traffic to device memory
# (bytes/s). A useful first model: time ≥ max(FLOPs / peak FLOP/s, bytes / bandwidth). The ratio
# FLOPs / bytes of a computation is its *arithmetic intensity*; where it is below the GPU's
# *ridge point* (peak FLOP/s ÷ bandwidth) the kernel waits on memory, above it on arithmetic.
#
# `workbench.bench.traffic_model.phases` counts each phase of unfused attention: its FLOPs (2·D per visible
# pair for QKᵀ and again for PV; ~5 per pair for the softmax) and the fewest bytes it could move
# (every operand read once, every result written once). The ceilings are the ones we measured on
# the H100 (cuBLAS SGEMM in float32, and a device-memory copy), kept in `workbench.bench.plots.MEASURED_PEAKS`.

# %%
from workbench.bench import plots
from workbench.bench import traffic_model

peak_tflops, peak_gbps = plots.MEASURED_PEAKS["h100"]
ridge = peak_tflops * 1e12 / (peak_gbps * 1e9)
print(f"H100 (measured): {peak_tflops} TFLOP/s float32, {peak_gbps:,.0f} GB/s -> ridge point {ridge:.0f} FLOP/byte\n")

problem = Problem(batch=8, heads=32, seq_q=4096, head_dim=64, dtype="float32")
print(f"{problem.describe()}")
print(f"{'phase':16s} {'GFLOP':>8s} {'GB moved':>9s} {'FLOP/B':>8s} {'floor ms':>9s}  bound by")
for ph in traffic_model.phases(problem):
    t_flop = ph.flops / (peak_tflops * 1e12) * 1e3
    t_byte = ph.min_bytes / (peak_gbps * 1e9) * 1e3
    print(f"{ph.name:16s} {ph.flops / 1e9:8.0f} {ph.min_bytes / 1e9:9.2f} {ph.intensity:8.1f} "
          f"{max(t_flop, t_byte):9.1f}  {'memory' if t_byte > t_flop else 'compute'}")
fused_floor_ms = problem.flops() / (peak_tflops * 1e12) * 1e3
print(f"fused forward: {problem.flops() / problem.min_bytes():.0f} FLOP/byte; compute floor {fused_floor_ms:.1f} ms")

# %% [markdown]
# Read the table from the top. The two matrix products do 2·N²·D FLOPs each, but they also write
# or read the N² matrix, so their intensity is only about D/2 — near the ridge. The softmax does
# almost no arithmetic per byte: it is pure memory traffic. Run one after the other, the three
# phases cannot beat the sum of their floors. The fused forward does the same FLOPs but moves only
# Q, K, V, O and LSE: its intensity is about N / itemsize (printed below), far above the ridge,
# so it can be compute-bound. That floor is what the ladder climbs towards.
#
# ## 4. The GPU, in one page
#
# A CUDA **kernel** is a function that many **threads** run at once, each on its own piece of the
# data. Threads come in **blocks** (also called CTAs, cooperative thread arrays) of up to 1024
# threads; a **grid** of blocks covers the problem. Each thread reads its coordinates from
# `cuda.blockIdx`, `cuda.blockDim` and `cuda.threadIdx`. A block runs on one **SM** (streaming
# multiprocessor; the H100 has 132) in groups of 32 threads called **warps**, which execute in
# lockstep. In Numba a kernel is a Python function decorated with `@cuda.jit`, launched as
# `kernel[grid, block](arguments)`.
#
# Where data lives decides how fast a kernel is:
#
# - **registers**: private to a thread, the operands of every instruction;
# - **shared memory**: per block, on the SM, shared by the block's threads (Numba: `cuda.shared.array`,
#   at most 48 KiB per block declared statically); threads wait for each other at a barrier,
#   `cuda.syncthreads()`, before reading what others wrote;
# - **L2 cache**: on chip, shared by all SMs;
# - **device memory** (HBM): the 80 GB where arrays live between kernels, the slowest level.
#
# The smallest kernel of the ladder, rung 1's O = PV: thread (d, i) of the grid computes one
# element of O, reading a row of P and a column of V straight from device memory.

# %%
from workbench.kernels import naive

course.show(naive.pv)

# %% [markdown]
# ### Your turn: S = scale · QKᵀ, one thread per element
#
# Rung 1's first kernel computes the scores the same way `pv` computes O: thread (x, y) of the
# grid owns one element. Write it for one head, with 2-D arrays: `q` (Nq, D), `k` (Nkv, D),
# `s` (Nq, Nkv), all float32, and `scale` a float32. The check launches your kernel on a grid of
# blocks of 8 × 4 threads (x: 8 keys, y: 4 queries), rounded up, so Nq and Nkv are not multiples
# of the block: threads past the matrix's edge exist and must not write. Accumulate in float32
# (`float32(0)`, not `0.0`, which would make it float64). The spec, in float64 NumPy:

# %%
checks.spec("scores")

# %% tags=["your-turn"]
def scores(q, k, s, scale):
    """s[i, j] = scale · (q[i] · k[j]): thread x of the grid is key j, thread y is query i."""
    # FILL ME IN (about 8 lines): j and i from blockIdx, blockDim, threadIdx; return if outside s;
    # a float32 dot product over d; store it times scale


# %%
checks.check("scores", scores)

# %%
hbm = None if SIM else course.copy_bandwidth_gbps()  # on a GPU: a 1 GiB device-to-device copy, timed now
levels = course.hierarchy(hbm)
for lv in levels:
    print(f"{lv['name']:20s} {diagrams.human_bytes(lv['capacity']):>9s}  {lv['scope']:45s} {lv['bandwidth']}")
diagrams.memory_hierarchy(levels)
plt.show()

# %% [markdown]
# The numbers to keep in mind are in that table: shared memory and registers per SM are KiB, while
# a single float32 score matrix at N = 4096 is 64 MiB per head. Every rung of the ladder is a
# different answer to "which of these numbers stays on chip, and how often does it travel?".
#
# ## 5. How to run things here
#
# `workbench.attention` is the whole API: q of shape (B, H, Nq, D), k and v of shape
# (B, Hkv, Nkv, D), a rung's name, and options (`causal`, `window`, `config` for tile sizes).
# `workbench.LADDER` lists the rungs in course order, each with its one-line lesson.

# %%
print("mode:", workbench.mode(), "-", workbench.harness.device.mode_reason())
for rung in workbench.LADDER:
    print(f"{rung.index}  {rung.name:7s} {rung.lesson}")

# %%
# A problem that suits the mode: tiny in the simulator (each CUDA thread is a Python thread).
problem = Problem(batch=1, heads=2, seq_q=16, head_dim=16) if SIM else Problem(batch=1, heads=8, seq_q=1024, head_dim=64)
q, k, v = problem.make_inputs(seed=0)
o = workbench.attention(q, k, v, kernel="flash2")
o_ref, _ = reference.attention(q, k, v)
print(problem.describe(), "->", o.shape, o.dtype, " max |error| vs float64:", np.abs(o - o_ref).max())

# %% [markdown]
# A single comparison can be lucky. `workbench.harness.verify.check(kernel, problem)` is the
# ladder's one correctness rule: fresh random inputs, outputs poisoned with NaN before each launch
# (an element a kernel forgets to write stays NaN), two launches that must agree bit for bit (a
# difference means a race), and errors against float64 within a stated tolerance (float32:
# relative Frobenius error ≤ 2e-5). It returns a report:

# %%
for name in ("naive", "flash2"):
    print(check(name, problem, seed=1))

# %% [markdown]
# Measuring: `course.measure(kernels, problems)` runs the harness's `compare.run_point` on each —
# verify, then (on a GPU) time with CUDA events (median of several runs, L2 flushed before each)
# and measure peak device memory. In the simulator it verifies and reports the memory model only,
# so below, without a GPU, the table shows the H100 measurements of the whole ladder at the seed
# configuration instead (`figures/h100/ladder.json`).

# %%
if SIM:
    data = course.committed("ladder")
    print(course.source_line(data))
    points = course.select(data["points"], dtype="float32", seq_q=4096)
else:
    points = course.measure(["naive", "tiled", "online", "flash2"], [Problem(8, 32, 32, 1024, 1024, 64, "float32")])
    course.record("00-mental-model", points)
print(course.table(points))
for name in ("naive", "flash2"):
    t = course.ms(points, name, seq_q=4096)
    if t:
        print(f"{name}: {t / fused_floor_ms:.1f}x the fused forward's float32 compute floor ({fused_floor_ms:.1f} ms)")

# %% [markdown]
# Set the table against section 3's floor (the last lines compare). The naive rung is far above
# every floor (it re-reads its operands from device memory many times over, notebook 01), and
# flash2 gets within a small factor of the compute floor. The next notebooks walk up the ladder
# one rung at a time.
#
# ## Exercises
#
# 1. With `traffic_model.phases`, find the sequence length N at which the N² score matrix makes up more
#    than 90 % of the bytes of the S = QKᵀ phase (B=8, H=32, D=64, float32). Predict it first:
#    S is 4·N² bytes per head, Q and K are 2·N·D·4.
# 2. The fused forward's intensity is `problem.flops() / problem.min_bytes()`. Predict how it
#    changes when D goes from 64 to 128 at N = 4096, and when the dtype goes from float32 to
#    float16; check.
# 3. One attention layer of Llama-2-7B at 32K context is B=1, H=32, D=128. How many GiB would its
#    float32 score matrix take, and does it fit in the H100's 80 GB? (Use `Problem` and the
#    formula from section 2.)
