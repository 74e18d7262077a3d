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
# # 10 — Precision: float16, bfloat16 and FP8 against float64, and what they save
#
# Every rung computes in float32, but its inputs and outputs may be 16-bit (float16, bfloat16),
# and FlashAttention-3 goes down to 8 bits (FP8). Fewer bits mean half (or a quarter) of the
# memory and traffic, and faster tensor cores — and a larger error. This notebook measures that
# error against float64, for the kernels' own I/O types and for FP8 storage of the KV cache
# (`workbench.demos.fp8`, emulated: Numba has no FP8 type), and shows where the bits go. You
# write the rounding that turns a float32 into a bfloat16, on the bits, as the rungs' loaders do.

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
# ## 1. Where the bits go
#
# A floating-point number is a sign, an exponent (its range) and a mantissa (its precision:
# neighbouring values are 2^−mantissa apart, relatively). float16 spends its 16 bits on precision
# (10 mantissa bits) and has a small range; bfloat16 keeps float32's 8 exponent bits (its range)
# and only 7 mantissa bits; FP8 e4m3 has 3. NumPy knows float32 and float16; `ml_dtypes` (the
# package JAX uses) adds bfloat16 and the FP8 types:

# %%
import ml_dtypes

diagrams.float_formats()
plt.show()
print(f"{'format':10s} {'bytes':>5s} {'eps (spacing at 1)':>19s} {'largest':>12s} {'smallest normal':>16s}")
for name, dt in (("float32", np.float32), ("float16", np.float16), ("bfloat16", ml_dtypes.bfloat16),
                 ("fp8 e4m3", ml_dtypes.float8_e4m3fn)):
    fi = ml_dtypes.finfo(dt) if dt not in (np.float32, np.float16) else np.finfo(dt)
    print(f"{name:10s} {np.dtype(dt).itemsize:5d} {float(fi.eps):19.3g} {float(fi.max):12.4g} {float(fi.smallest_normal):16.3g}")

# %% [markdown]
# Rounding one number to each format shows the spacing: the error of x is at most half a spacing,
# about eps/2 relative.

# %%
for x in (1 / 3, 1000.1, 70000.0):
    row = []
    for name, dt in (("float16", np.float16), ("bfloat16", ml_dtypes.bfloat16), ("e4m3", ml_dtypes.float8_e4m3fn)):
        with np.errstate(over="ignore"):
            y = float(np.array([x], np.float32).astype(dt).astype(np.float64)[0])
        row.append(f"{name} {y:.6g} (rel. err {abs(y - x) / x:.1e})" if math.isfinite(y)
                   else f"{name} {y} (out of range)")
    print(f"{x:<10.6g} -> " + ";  ".join(row))

# %% [markdown]
# ## 2. Attention's error, per format
#
# Two errors add up. The inputs are rounded to the format (*storage*), and the kernel computes in
# float32 and rounds O back to the format (*arithmetic*). The cell below runs flash2 in the
# simulator on the same random q, k, v stored in float32, float16 and bfloat16, and measures O's
# relative Frobenius error against float64 attention twice: on the rounded inputs (the kernel's
# own error, what `verify.check` bounds) and on the original float64 inputs (storage included).
# FP8 is storage only here: K and V encoded to e4m3 with one float32 scale per tensor
# (`workbench.demos.fp8`), decoded and used in float64 — no kernel computes in FP8 in this package.

# %%
from workbench.demos import fp8

problem = Problem(1, 2, 2, 24, 24, 16) if SIM else Problem(2, 16, 16, 2048, 2048, 64)
rng = np.random.default_rng(0)
q64, k64, v64 = (rng.standard_normal(s) for s in (problem.q_shape, problem.kv_shape, problem.kv_shape))
o_true, _ = reference.attention(q64, k64, v64)
rel = lambda a, b: float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))  # noqa: E731

rows = []
for name, dt in (("float32", np.float32), ("float16", np.float16), ("bfloat16", ml_dtypes.bfloat16)):
    q, k, v = (x.astype(dt) for x in (q64, k64, v64))
    o = workbench.attention(q, k, v, kernel="flash2")
    o_exact, _ = reference.attention(*(x.astype(np.float64) for x in (q, k, v)))
    rows.append({"format": name, "kernel": rel(o.astype(np.float64), o_exact),
                 "error": rel(o.astype(np.float64), o_true), "bytes": np.dtype(dt).itemsize})
k8, k_scale = fp8.encode(k64)
v8, v_scale = fp8.encode(v64)
o8, _ = reference.attention(q64, fp8.decode(k8, k_scale).astype(np.float64), fp8.decode(v8, v_scale).astype(np.float64))
rows.append({"format": "fp8 e4m3 K, V", "kernel": float("nan"), "error": rel(o8, o_true),
             "bytes": fp8.storage_bytes(k64.shape) / k64.size})
print(problem.describe())
print(f"{'format':14s} {'kernel error':>13s} {'with storage':>13s} {'bytes/element':>14s}")
for r in rows:
    print(f"{r['format']:14s} {r['kernel']:13.1e} {r['error']:13.1e} {r['bytes']:14.4g}")
diagrams.error_and_memory(rows)
plt.show()

# %% [markdown]
# Read it twice. The kernel's own error is small in every format — float32 arithmetic, one
# rounding of O at the end; the error of a 16-bit format is mostly its storage, and bfloat16's
# is larger than float16's by about the ratio of their spacings (eps). FP8 halves the bytes
# again at a much larger error, which is why FP8 recipes keep a scale per tensor (or per block)
# and why FlashAttention-3 treats it with care.
#
# ## 3. bfloat16 on the device: bits, not a type
#
# NumPy, and Numba's device arrays, have no bfloat16. The package passes bfloat16 arrays to a
# rung as their uint16 bits (`workbench/dtypes.py`): a bfloat16 is exactly the top half of a
# float32, so loading is a shift (`common.load_f32`), and storing O is rounding the low 16 bits
# off to nearest, ties to even (`common.bf16_bits`; on the GPU one `cvt.rn.bf16.f32`
# instruction). Rounding on the integer bits: add just under half of the dropped part, plus one
# when the kept part is odd (so that a tie goes to the even neighbour), and shift. A carry out of
# the mantissa moves the exponent, which is right — and the largest float32s round to infinity,
# as they must. One case needs care: a NaN whose top 16 bits alone read as infinity
# (0x7F800001) must stay a NaN: keep its sign and top bits and set the quiet bit, 0x0040.
#
# ### Your turn: float32 → bfloat16, rounded to nearest even
#
# Write it as a device function of the float32's bits `u` (a uint32) returning the bfloat16's 16
# bits. The check runs it on ties of both parities, values just off a tie, the largest finite
# float32, infinities, NaNs, subnormals and random patterns, against `ml_dtypes`' conversion.

# %%
checks.spec("bf16-round")

# %% tags=["your-turn"]
def bf16_bits(u):
    """The bits of the bfloat16 nearest to the float32 whose bits are u (ties to even; NaN stays
    NaN), as an integer 0 … 0xFFFF."""
    # FILL ME IN (about 3 lines): NaN first (exponent all ones and a nonzero mantissa), then round
    return u >> 16


# %%
checks.check("bf16-round", bf16_bits)

# %% [markdown]
# ## 4. Measured
#
# What 16 bits buy on the H100, from the committed data: the tensor-core rung and flash2 in
# float16 and bfloat16 (`perf.json`), flash2's bfloat16 check and timing beside float16
# (`bf16.json`), and the FP8-storage experiment on a decode cache (`training-inference-checks.json`:
# memory halved, error against float64).

# %%
perf = course.committed("perf")
print(course.source_line(perf))
for kernel in ("flash2", "flash2_mma"):
    times = {d: course.ms(perf["points"], kernel, dtype=d, causal=False) for d in ("float32", "float16", "bfloat16")}
    print(f"  {kernel:11s} " + "   ".join(f"{d} {t:.3g} ms" if t else f"{d} n/a" for d, t in times.items()))
bf16 = course.committed("bf16")
print("\n" + course.source_line(bf16))
for sh in bf16["shapes"]:
    r = sh.get("flash2_torch") or {}
    if r:
        print(f"  flash2 {r['problem']:36s} rel_fro {r['rel_fro']:.1e} (tolerance {r['tolerance']['rel_fro']:.1e})")
for d, t in bf16["timing"].items():
    print(f"  {d:9s} {t['problem']:38s} {t['timing']['median_ms']:.3f} ms, {t['tflops']:.1f} TFLOP/s")
sec = course.committed("training-inference-checks")["sections"]["fp8-emulation"]
print("\n" + sec["config"])
for pt in sec["points"]:
    print(f"  {pt['format']:8s} cache {pt['cache_MiB']:6.1f} MiB, O's error against float64 {pt['rel_fro_vs_float64']:.1e}")

if not SIM:
    live = [Problem(4, 16, 16, 2048, 2048, 64, d, causal=True) for d in ("float16", "bfloat16")]
    points = course.measure(["flash2", "flash2_mma"], live)
    course.record("10-precision", points)
    print(course.table(points))

# %% [markdown]
# ## Exercises
#
# 1. float16's largest value is 65504. Which attention scores would overflow if S were stored in
#    float16 (it never is: the rungs keep S in float32)? What does bfloat16 change?
# 2. In section 2, encode K and V with `fp8.encode` but with the scale of the whole cache rather
#    than of each tensor (pass `scale=`). How does the error change when one head's values are
#    100× larger than the others'?
# 3. Rounding O to float16 alone costs about eps/√3 relative (eps/2 at most per element, spread
#    uniformly). Compare that estimate with the float16 "kernel error" above.
