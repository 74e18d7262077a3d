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
# # 08 — The backward pass: recompute P from LSE, KV blocks outside
#
# Training needs the gradients dQ, dK, dV of a loss for an upstream gradient dO = ∂L/∂O.
# Standard attention keeps P (N² per head) from the forward to get them; FlashAttention keeps only
# O and the row LSEs (N per head) and recomputes each tile of S, and so of P, on chip — more
# arithmetic, far less memory and traffic. This notebook derives the gradients, shows why the
# saved LSE makes recomputing P cheap, why the backward loops over KV blocks outside (the
# reverse of the forward), what that does to dQ, and runs the package's backward rung,
# `workbench.backward` (FlashAttention-2's Algorithm 2), in the simulator. You write the step of
# the loop that recomputes P and accumulates dK and dV.

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
# ## 1. The gradients
#
# With S = scale · Q Kᵀ, P = softmax(S) by rows and O = P V, the chain rule gives, one product at
# a time:
#
# $$dV = P^\top dO,\qquad dP = dO\,V^\top,\qquad dS_{ij} = P_{ij}\,(dP_{ij} - D_i),\qquad
# dQ = \text{scale}\cdot dS\,K,\qquad dK = \text{scale}\cdot dS^\top Q$$
#
# where the softmax's Jacobian brings in one number per row, D_i = Σ_j P_ij dP_ij. That sum
# would need a whole row of P and dP — but Σ_j P_ij dP_ij = Σ_j P_ij (dO_i · V_j) = dO_i · O_i, so
# **D = rowsum(dO ∘ O)**, from two N × D arrays the backward has anyway (FA2's preprocessing
# step). `reference.attention_backward` is these formulas in float64, and the truth for the rungs;
# here the identity and the gradients against finite differences:

# %%
rng = np.random.default_rng(0)
p = Problem(1, 1, 1, 5, 7, 4)
q, k, v = (rng.standard_normal(s) for s in (p.q_shape, p.kv_shape, p.kv_shape))
do = rng.standard_normal(p.q_shape)
o, lse = reference.attention(q, k, v)
s = p.scale * q[0, 0] @ k[0, 0].T
P = np.exp(s - lse[0, 0][:, None])  # P from S and the saved LSE: no max, no sum
dP = do[0, 0] @ v[0, 0].T
print("rowsum(P ∘ dP) == rowsum(dO ∘ O):", np.allclose((P * dP).sum(1), (do * o).sum(-1)[0, 0]))

dq, dk, dv = reference.attention_backward(q, k, v, do)
loss = lambda q_: (reference.attention(q_, k, v)[0] * do).sum()  # noqa: E731 - L with ∂L/∂O = dO
eps, (i, d) = 1e-6, (3, 2)
bump = np.zeros_like(q)
bump[0, 0, i, d] = eps
print(f"dQ[{i}, {d}]: formula {dq[0, 0, i, d]:.8f}, finite difference {(loss(q + bump) - loss(q - bump)) / (2 * eps):.8f}")

# %% [markdown]
# ## 2. Recompute P from the saved LSE
#
# The forward saved LSE_i = m_i + log l_i, so a tile of P is **P_ij = exp(S_ij − LSE_i)**: one
# subtraction and one exponential per element, no running max, no running sum, no rescaling —
# the forward's whole online-softmax machinery is not needed. The cell above did exactly that
# (`P = np.exp(s - lse)`); it is the softmax:

# %%
soft = np.exp(s - s.max(1, keepdims=True))
print("exp(S - LSE) == softmax(S):", np.allclose(P, soft / soft.sum(1, keepdims=True)))

# %% [markdown]
# ## 3. Why KV is the outer loop
#
# dK_j and dV_j are sums over the query rows i that see key j; dQ_i is a sum over the keys j.
# Whichever loop is outside, one of the two sums crosses CTAs. FlashAttention-2 puts the **KV
# blocks outside**: a CTA owns K_j, V_j and keeps dK_j, dV_j in registers while it walks every
# query block Q_i, dO_i that sees its keys (under causal, about half of them), so dK and dV are
# written once, by one CTA, with no atomics. dQ_i then gets a contribution from every KV block in
# its row: either added into a float32 accumulator in device memory with atomic adds (the paper's
# way; `flash2_mma_bwd` on the tensor cores), or recomputed by a second kernel that owns Q_i
# (`flash2_bwd`: two more matrix products, no atomics, bit-for-bit repeatable). The picture:

# %%
diagrams.backward_schedule(n_q=32, n_kv=32, Br=8, Bc=8, causal=True)
plt.show()

# %%
from workbench.kernels import BACKWARD, flash2_bwd

for rung in BACKWARD:
    print(rung)
print()
print(flash2_bwd.__doc__.split("Three kernels:")[1].split("The choice for dQ.")[0])

# %% [markdown]
# The dK/dV kernel in outline — the loops, loads and barriers, with the per-tile arithmetic left
# out (it is your turn below):

# %%
outline = [r"^\s*for (g|ib|d|r) in range", r"syncthreads\(\)", r"\bload_(q|kv)\(", r"^\s*def bwd_dkdv\(",
           r"^\s+# ", r"i_lo =|i_hi =|ib_end =", r"dk\[.*\] =|dv\[.*\] ="]
print(course.skeleton(flash2_bwd.build_dkdv, outline))

# %% [markdown]
# ### Your turn: one step of the dK/dV loop
#
# Write the step for one (query row i, key j) pair, as a device function: the check's kernel gives
# key j to one thread, which keeps `dk_j` and `dv_j` (local arrays of D, float32) and calls your
# function for every row i that sees key j, with the rows `q_i`, `do_i` and `k_j`, `v_j` (arrays
# of D), the forward's `lse_i`, `delta_i` = D_i = rowsum(dO ∘ O)_i, and `scale`. Recompute
# s = scale · q_i · k_j and P_ij = exp(s − lse_i); dP_ij = do_i · v_j; dS_ij = P_ij (dP_ij − D_i); then
# dV_j += P_ij · do_i and dK_j += scale · dS_ij · q_i. The check compares dK and dV with
# `reference.attention_backward` in float64, with and without a causal mask.

# %%
checks.spec("dkdv")

# %% tags=["your-turn"]
def dkdv_step(q_i, do_i, k_j, v_j, lse_i, delta_i, scale, dk_j, dv_j):
    """Row i's contribution to key j's gradients, added into dk_j and dv_j in place."""
    # FILL ME IN (about 10 lines): s and dp (two dot products over D), p, ds; then dv_j and dk_j


# %%
checks.check("dkdv", dkdv_step)

# %% [markdown]
# ## 4. The backward rung, run
#
# `workbench.backward(q, k, v, o, lse, do)` takes the forward's O and LSE (from
# `workbench.attention(..., return_lse=True)`) and returns dQ, dK, dV; under GQA, dK and dV come
# out summed over each key/value head's group. In the simulator, at a tiny size, against float64:

# %%
problem = (Problem(1, 4, 2, 13, 21, 16, causal=True) if SIM
           else Problem(2, 16, 4, 1025, 2049, 64, "float16", causal=True))
q, k, v = problem.make_inputs(seed=0)
o, lse = workbench.attention(q, k, v, kernel="flash2", causal=True, return_lse=True)
do = np.random.default_rng(1).standard_normal(q.shape).astype(q.dtype)
grads = workbench.backward(q, k, v, o, lse, do, causal=True)
truth = reference.attention_backward(q, k, v, do, causal=True)
print(problem.describe())
for name, g, r in zip(("dQ", "dK", "dV"), grads, truth):
    print(f"  {name}: relative Frobenius error {np.linalg.norm(g - r) / np.linalg.norm(r):.1e}")

# %% [markdown]
# ## 5. Measured
#
# The committed training suite (`figures/h100/seed-training.json`) times forward plus backward of
# one attention layer at Llama-2-7B's shape, beside PyTorch (SDPA's flash backend and the standard
# matmul-softmax-matmul), with the peak memory of each; the committed checks
# (`training-inference-checks.json`) hold the gradients' errors on the H100, the rungs' and SDPA's.

# %%
train = course.committed("seed-training")
print(course.source_line(train))
print(train.get("config", ""))
print(f"\n{'kernel':16s} {'problem':40s} {'ms':>9s} {'tokens/s':>12s} {'peak MiB':>9s}")
for pt in train["points"]:
    t = (pt.get("timing") or {}).get("median_ms")
    mem = (pt.get("memory") or {}).get("peak_MiB")
    print(f"{pt['kernel']:16s} {pt['problem']:40s} {t or float('nan'):9.3g} {pt.get('tokens_per_s') or float('nan'):12,.0f} "
          f"{mem or float('nan'):9,.0f}")
checks_data = course.committed("training-inference-checks")
print("\n" + course.source_line(checks_data))
for pt in checks_data["sections"]["verify-backward"]["points"]:
    errs = pt["verify"]["errors"]
    print(f"  {pt['kernel']:14s} {pt['problem']:40s} " + "  ".join(f"{n} {e['rel_fro']:.1e}" for n, e in errs.items()))

if not SIM:
    from workbench.harness import timing

    live = Problem(4, 32, 32, 2048, 2048, 128, "float16", causal=True)
    q, k, v = live.make_inputs(seed=0)
    from numba import cuda as _cuda

    q, k, v = (_cuda.to_device(x) for x in (q, k, v))
    o, lse = workbench.attention(q, k, v, kernel="flash2", causal=True, return_lse=True)
    do = _cuda.to_device(np.random.default_rng(1).standard_normal(live.q_shape).astype(np.float16))
    t = timing.time_call(lambda: workbench.backward(q, k, v, o, lse, do, causal=True), repeat=5)
    print(f"\nlive: backward of {live.describe()}: {t.median_ms:.2f} ms")
    course.record("08-backward", [{"kernel": "flash2_bwd", "problem": live.describe(), "timing": {"median_ms": t.median_ms}}])

# %%
timed = [pt for pt in train["points"] if (pt.get("timing") or {}).get("median_ms")]
diagrams.measured(timed, x=lambda pt: pt["batch"] * pt["seq_q"], y=lambda pt: pt["timing"]["median_ms"],
                  by=lambda pt: f"{pt['kernel']} N={pt['seq_q']}", xlabel="tokens per step (B·N)",
                  ylabel="forward + backward, ms", title=f"one attention layer, forward + backward "
                  f"({train['provenance'].get('device', '?')}, {train['provenance'].get('date', '?')[:10]})")
plt.show()

# %% [markdown]
# ## Exercises
#
# 1. Count the matrix products per tile: the forward does 2 (S, then P V). How many does the
#    backward do with dQ by atomics, and how many with `flash2_bwd`'s second pass? Compare the
#    ratio with the backward's time over the forward's in the committed data.
# 2. Under causal at N = 4096 with Br = Bc = 64, how many query blocks does the dK/dV CTA of the
#    last KV block visit, and the first? (Redraw `diagrams.backward_schedule` with larger sizes.)
# 3. What memory does the backward need besides the inputs and the gradients? Read
#    `flash2_bwd.workspace_bytes` and compare with what standard attention keeps (P: B·H·N²).
