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
# # 07 — Rung 6, the tensor cores: `mma.sync` from a linked `mma.cu`, P kept in registers
#
# Rungs 1–5 do every multiply-add of S = Q Kᵀ and O += P V as one FFMA instruction per thread on
# the CUDA cores. An H100's tensor cores multiply small matrices instead: one `mma.sync`
# instruction has a whole warp compute a 16×8 tile of C = A·B + C with A 16×16 and B 16×8, 16-bit
# inputs and float32 sums. Rung 6, `flash2_mma`, is rung 5's algorithm with both products on the
# tensor cores. This notebook shows how a warp's 32 lanes share the operands (the *fragment
# layouts*), how Numba reaches an instruction it has no Python spelling for (a small CUDA C++
# file, `workbench/kernels/mma.cu`, linked into the kernel), why P never has to leave the
# registers between the two products — and you write that last step.
#
# The simulator cannot run rung 6 (it cannot link C++), so without a GPU this notebook runs the
# fragment arithmetic in NumPy (`workbench.course.fragments`, lane by lane) and shows the
# measurements committed from the H100; on a GPU it checks and times the rung live.

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
from workbench.course import fragments
from workbench.kernels import flash2_mma, get

print(get("flash2_mma"))
print("in this process:", f"refused — {flash2_mma.GPU_ONLY}" if SIM else "runs on the GPU")

# %% [markdown]
# ## 1. What the tensor cores buy
#
# The committed perf suite (`figures/h100/perf.json`) times rung 5 and rung 6 at the benchmark
# page's shape beside PyTorch's SDPA backends, in float32, float16 and bfloat16. Rung 6 takes 16-bit
# inputs only (it is "n/a" in float32); the ratios are printed under the table.

# %%
perf = course.committed("perf")
print(course.source_line(perf))
print(course.table(perf["points"], columns=("kernel", "problem", "status", "ms", "TFLOP/s", "rel err")))
for dtype in ("float16", "bfloat16"):
    for causal in (False, True):
        pts = course.select(perf["points"], dtype=dtype, causal=causal)
        f2, mma, sdpa = (course.ms(pts, k) for k in ("flash2", "flash2_mma", "sdpa-flash"))
        if f2 and mma:
            print(f"{dtype}{' causal' if causal else ''}: flash2_mma is {f2 / mma:.1f}x flash2"
                  + (f", {sdpa / mma:.2f}x SDPA's flash backend" if sdpa else ""))

# %% [markdown]
# ## 2. One warp, one instruction: `mma.sync.m16n8k16`
#
# A warp's `mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32` multiplies A (16×16) by B (16×8)
# and adds C (16×8): 16·8·16 multiply-adds in one instruction. No lane holds a whole matrix:
# each of the 32 lanes holds fixed elements of each operand in its registers, its *fragment*.
# With lane = 4g + t (g = lane // 4 the group, t = lane % 4), lane 4g + t holds rows g and g + 8
# of A and C, columns 2t, 2t + 1 (and 2t + 8, 2t + 9 of A); two 16-bit values share one 32-bit
# register. The picture colours each element by the lane that holds it (a hue per group g):

# %%
diagrams.mma_fragments()
plt.show()

# %% [markdown]
# `workbench.course.fragments` is that layout in NumPy, and a warp's `mma` computed through it:
# the operands are cut into the 32 lanes' fragments, multiplied, and the C fragments put back
# together. It agrees with A @ B (16-bit inputs are exact in float32, so the only rounding is
# the float32 sum):

# %%
rng = np.random.default_rng(0)
A = fragments.round16(rng.standard_normal((16, 16)))  # as float16 registers hold them
B = fragments.round16(rng.standard_normal((16, 8)))
a, b = fragments.a_fragments(A), fragments.b_fragments(B)
lane = 9
g, t = divmod(lane, 4)
print(f"lane {lane} (g = {g}, t = {t}):")
for reg in range(4):
    lo, hi = fragments.a_coords(lane, reg, 0), fragments.a_coords(lane, reg, 1)
    print(f"  a[{reg}] = A{lo}, A{hi} = {a[lane, reg].tolist()}")
for reg in range(2):
    print(f"  b[{reg}] = B{fragments.b_coords(lane, reg, 0)}, B{fragments.b_coords(lane, reg, 1)}")
print(f"  c[0..3] = C{[fragments.c_coords(lane, e) for e in range(4)]}")
d = fragments.mma(a, b)
print("max |mma through the fragments - A @ B| =",
      np.abs(fragments.from_c_fragments(d) - A.astype(np.float64) @ B.astype(np.float64)).max())

# %% [markdown]
# ## 3. Why a linked `.cu` file
#
# Numba's CUDA target compiles Python to PTX, but it has no Python spelling for `mma.sync`,
# `ldmatrix` or `cp.async` (numba#5899). It can, however, *call* device functions written in
# CUDA C++: `cuda.declare_device(name, signature, link=path, abi="c")` declares them and compiles
# the file with the kernel (NVRTC, to LTO-IR), and nvJitLink's link-time optimisation inlines
# them, so a call costs nothing and the fragment arrays the kernel passes by pointer stay in
# registers. `mma.cu` keeps each function to one PTX instruction, written as inline assembly;
# everything else — loops, masks, the online softmax — stays Python in `flash2_mma.py`.

# %%
course.show_file(flash2_mma.MMA_CU, ["wb_mma_f16", "wb_pack_f16x2"], header_lines=14)

# %%
course.show(flash2_mma._declare)

# %% [markdown]
# The same compile path runs without a GPU: `python -m workbench.inspect` (and
# `tests/test_compile.py`) compiles rung 6 for sm_90 in a process with the simulator off and
# reads the linker's report (registers, shared memory, spills). This process runs the simulator,
# which cannot link C++: hence the refusal above.
#
# ## 4. Fragments straight from shared memory: `ldmatrix`
#
# The operands come from shared memory. `ldmatrix.x4` has each lane give the address of one
# 16-byte row and hands every lane its fragment elements of four 8×8 matrices in one instruction.
# K_j sits in shared memory as (key, d), row-major — which is exactly the "col" B operand that
# Q Kᵀ needs, so `ldmatrix` loads it as it is; V_j is (key, d) too, but P V needs it transposed,
# and `ldmatrix.trans` transposes on the way.

# %%
course.show_file(flash2_mma.MMA_CU, ["wb_ldmatrix_x4", "wb_ldmatrix_x4_trans"])

# %% [markdown]
# ## 5. P stays in registers
#
# S = Q_i K_jᵀ comes out of the first product as C fragments, one 16×8 tile per 8 keys. The
# second product, O += P V_j, needs P as an A operand: 16 rows × 16 keys. Put the two C tiles of
# 16 keys side by side and compare with the A layout — the same lane holds the same elements:

# %%
diagrams.p_in_registers()
plt.show()

# %% [markdown]
# So after the softmax turns S into P element by element (in place, in the C fragments), each lane
# already holds exactly the P elements it must feed to the next `mma`: no shared memory, no
# exchange between lanes, only a repacking of two float32 values into one register of two 16-bit
# halves (`wb_pack_f16x2`, which is also where P is rounded to 16 bits). Rungs 3–5 write P to
# shared memory and read it back; this is what FA2's CUDA code does instead.
#
# ### Your turn: P's A fragment from S's C fragments
#
# Write, for one lane, the map from its C fragments of S for 16 keys to its A fragment of P. The
# input `s` is (2, 4): `s[nt, e]` is value c[e] of n-tile nt (keys 8·nt … 8·nt + 7) — so
# s[nt, 0], s[nt, 1] are row g, s[nt, 2], s[nt, 3] row g + 8, at columns 2t, 2t + 1 of the tile.
# Return the A fragment as a (4, 2) array: register r's (low, high) halves, in the A layout of
# section 2 (a[0] row g, columns 2t, 2t + 1 of the 16 keys; a[1] row g + 8; a[2] row g, columns
# 2t + 8, 2t + 9; a[3] row g + 8, the same columns). The check gives every lane of a warp its
# fragments, assembles the P the tensor core would read from your registers, compares it with S
# exactly, and then multiplies it by V through `fragments.mma` against float64.

# %%
checks.spec("p-fragment")

# %% tags=["your-turn"]
def p_fragment(s):
    """My C fragments of S for 16 keys, s[n-tile, c-index] (2, 4) -> my A fragment of P for those
    keys, [register, half] (4, 2)."""
    # FILL ME IN (about 2 lines): four (low, high) pairs taken from s
    return np.zeros((4, 2), np.float32)


# %%
checks.check("p-fragment", p_fragment)

# %% [markdown]
# ## 6. The kernel, in outline
#
# `flash2_mma.build` is flash2's loop with the work split as FA2's CUDA code splits it: a CTA of
# Br/16 warps owns Q_i, warp w owns 16 of its rows for every tile, so a row's max and sum never
# leave the warp (the 4 lanes of a quad share a row: two `shfl_xor` each). Its outline — loops,
# copies, barriers, `ldmatrix`, `mma` — from the package source (the module's docstring explains
# every trick: `cp.async` copies that run in the background, padded shared rows against bank
# conflicts, the scale folded into `exp2`):

# %%
outline = [r"^\s*for \w+ in range", r"syncthreads\(\)", r"\bldmatrix(_t)?\(", r"\bmma\(", r"\bcopy_(q|kv)\(",
           r"\b(commit|wait0|wait1)\(\)", r"shfl_xor_sync", r"^\s*def flash2_mma\(", r"j_start, j_end =",
           r"^\s+# (S = |Mask|O \+= |l over)", r"^\s*if (not )?Q_IN_REGISTERS", r"^\s+else:  # per 32 columns"]
print(course.skeleton(flash2_mma.build, outline))

# %% [markdown]
# ## 7. Check and measure
#
# On a GPU the harness checks rung 6 like every other rung (float64 reference, NaN-poisoned
# outputs, two launches compared bit for bit) and times it beside rung 5. Without one, the last
# committed checks and the ladder sweep in float16 (`figures/h100/ladder.json`) stand in.

# %%
cases = ([Problem(1, 4, 4, 1000, 1000, 64, "float16"), Problem(1, 8, 2, 777, 2049, 128, "bfloat16", causal=True)])
if SIM:
    try:
        check("flash2_mma", Problem(1, 2, 2, 32, 32, 64, "float16"))
    except ValueError as err:
        print("ValueError:", err)
    mma_runs = course.committed("perf-variants-mma")
    print("\n" + course.source_line(mma_runs))
    for v in mma_runs["verify"]:
        r = v["report"]
        print(f"  {r['problem']:36s} rel_fro {r['rel_fro']:.1e}  {'PASS' if r['passed'] else 'FAIL'}")
    ladder = course.committed("ladder")
    data = ladder | {"points": course.select(ladder["points"], dtype="float16",
                                             kernel=("flash2", "flash2_mma", "sdpa-flash", "sdpa-efficient"))}
else:
    for p in cases:
        print(check("flash2_mma", p, seed=7))
    points = course.measure(["flash2", "flash2_mma"], [Problem(8, 32, 32, n, n, 64, "float16") for n in (1024, 4096)])
    points += course.measure_peers(["sdpa-flash"], [Problem(8, 32, 32, n, n, 64, "float16") for n in (1024, 4096)])
    course.record("07-tensor-cores", points)
    data = {"provenance": workbench.harness.device.provenance(), "suite": "07-tensor-cores", "points": points}
print(course.table(data["points"], columns=("kernel", "problem", "status", "ms", "TFLOP/s")))

import tempfile

from workbench.bench import plots

course.show_png(plots.time_vs_seq(data, f"{tempfile.mkdtemp()}/tensor-cores-time.png"))

# %% [markdown]
# ## Exercises
#
# 1. How many `mma.sync` instructions does one warp issue per KV tile for S = Q_i K_jᵀ and for
#    O += P V_j, at D = 64 and Bc = 64 (rung 6's default tiles, `flash2_mma.DEFAULT_CONFIG`)?
#    Count from the outline above (the loops over `nt`, `kk`, `kq`, `nd`).
# 2. With `fragments.round16(x, ml_dtypes.bfloat16)` in place of float16, repeat section 2's
#    product. How much larger is the difference from the float64 product of the *unrounded*
#    matrices, and why (notebook 10)?
# 3. `ldmatrix.trans` hands lane 4g + t the elements [2t, 2t + 1][g] of each 8×8 matrix. Using
#    `fragments.b_coords`, check that loading V_j (key, d) with `.trans` gives exactly the B
#    fragments of P V_j.
