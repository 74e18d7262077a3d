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
# # 09 — Inference: decode, the paged KV cache, split-KV
#
# A language model generates one token at a time. Each step runs attention for **one** new query
# per sequence (or a few, with speculative decoding) against the keys and values of every token
# before it, kept from earlier steps in a *KV cache*. Three things change against the forward
# rungs: the step is bound by memory, not arithmetic; the cache is *paged* (allocated in fixed
# blocks, as vLLM's PagedAttention does), so the kernel reads keys through a block table; and a
# single query row is too little work for a GPU, so the keys are split over many CTAs
# (flash-decoding) whose partial results are merged by their LSE — which you write. The package's
# decode rungs run here in the simulator through `workbench.decode`.

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
# ## 1. Why decode is memory-bound
#
# One step for one sequence of context n reads the cache once — K and V, 2·n·Hkv·D elements — and
# does 4·H·D FLOPs per key (S = q Kᵀ and O = P V, 2 each). Its arithmetic intensity is therefore
# 2·(H/Hkv)/itemsize FLOP per byte, whatever n is: a few FLOP/byte, below even the CUDA cores'
# float32 ridge point (printed first; the tensor cores' is many times higher). The time floor is
# the cache's bytes over the memory bandwidth. `DecodeProblem` counts
# both, at Llama-2-7B's attention shape (32 heads, D = 128, float16), MHA and with GQA:

# %%
from workbench.bench import plots
from workbench.problem import DecodeProblem

peak_tflops, peak_gbps = plots.MEASURED_PEAKS["h100"]
print(f"H100 (measured): ridge point {peak_tflops * 1e12 / (peak_gbps * 1e9):.0f} FLOP/byte (float32 FMA peak / copy bandwidth)")
for kv_heads in (32, 8):
    for ctx in (4096, 32768):
        dp = DecodeProblem(1, 32, kv_heads, 1, 128, 16, -(-ctx // 16), -(-ctx // 16), (ctx,))
        floor_us = dp.cache_bytes_read() / (peak_gbps * 1e9) * 1e6
        print(f"{dp.describe():48s} cache read {dp.cache_bytes_read() / 2**20:7.1f} MiB, "
              f"{dp.flops() / dp.cache_bytes_read():.1f} FLOP/byte, floor {floor_us:6.1f} µs per layer")

# %% [markdown]
# ## 2. The paged KV cache
#
# A contiguous cache per sequence must be allocated for the longest length it might reach, and
# freed memory fragments. A paged cache is one pool of physical blocks of `block_size` tokens,
# `k_cache`, `v_cache` of shape (num_blocks, Hkv, block_size, D), and a block table per sequence:
# its logical key j lives in physical block `block_table[b, j // block_size]` at offset
# `j % block_size`. A sequence grows a block at a time, anywhere in the pool. `paged_cache` builds
# one from contiguous K, V with the physical blocks shuffled and the unused slots NaN (so a kernel
# that reads a slot it does not own fails its check):

# %%
from workbench.problem import paged_cache

lens = [37, 20, 9]
kv = np.random.default_rng(0).standard_normal((3, 2, max(lens), 8)).astype(np.float32)
k_cache, v_cache, table = paged_cache(kv, kv, lens, block_size=8, seed=1)
print("k_cache", k_cache.shape, " block table:\n", table)
diagrams.paged_cache(table, lens, 8, k_cache.shape[0])
plt.show()
back = reference.gather_paged(k_cache, table, np.array(lens, np.int32))
print("gathered back == contiguous:", all(np.array_equal(back[b, :, :n], kv[b, :, :n]) for b, n in enumerate(lens)))

# %% [markdown]
# ## 3. Split-KV (flash-decoding)
#
# flash2 gives each CTA a block of query rows. With one new token per sequence there is one row
# per (sequence, head): at batch 1 that is H CTAs for a GPU of many more SMs, each walking the
# whole context alone. Flash-decoding splits the **keys** instead: CTA s takes keys
# [s·L, (s + 1)·L) and writes a partial O_s normalised over its own keys, with its LSE_s; a second
# kernel merges the splits. The merge is the online softmax's step once more, over splits instead
# of tiles: with m = max_s LSE_s and w_s = e^(LSE_s − m),
#
# $$O = \frac{\sum_s w_s\,O_s}{\sum_s w_s},\qquad \text{LSE} = m + \log\sum_s w_s$$
#
# (O_s is normalised, so each w_s is its split's share of the row's total sum). A split whose keys
# the row does not see (causal, windows) has LSE_s = −∞ and weight 0.

# %%
sms = workbench.harness.device.facts().sm_count  # (the H100's in the simulator)
diagrams.split_kv(4096, 8, sms=sms)
plt.show()

# %%
from workbench.kernels import DECODE

for rung in DECODE:
    print(rung)

# %% [markdown]
# ### Your turn: merge the splits
#
# Write the merge for one query row r, as a device function: `o_parts` (S, R, D) and `lse_parts`
# (S, R) hold each split's partial O and LSE for every row (float32; LSE −∞ where the split saw no
# key of the row); write the row's O into `o[r]` and its LSE into `lse[r]`. A row that no split
# saw gets O = 0 and LSE = −∞ (and no `math.log(0)`). Keep every exponent ≤ 0: subtract the
# largest LSE first. The check splits random problems' keys, computes the partials in float64,
# and compares your merge with float64 attention over all the keys.

# %%
checks.spec("combine")

# %% tags=["your-turn"]
def combine(o_parts, lse_parts, r, o, lse):
    """Row r's O and LSE over all the keys, from the splits' partial (O_s, LSE_s)."""
    # FILL ME IN (about 18 lines): m = max over splits; if -inf: zeros, -inf; else the weights,
    # their sum, O = Σ w_s O_s / Σ w_s, LSE = m + log Σ w_s


# %%
checks.check("combine", combine)

# %% [markdown]
# ## 4. The decode rungs, run
#
# `workbench.decode(q, k_cache, v_cache, block_table, seq_lens)` runs a decode rung (`kernel=`
# picks one of the DECODE rungs above): q is (B, H, Nq, D) with Nq new tokens per sequence,
# `seq_lens` each sequence's length *including* them (their K and V are already in the cache).
# Here with sequences of different lengths, GQA, and causal new tokens, against float64 on the
# cache gathered back:

# %%
dp = (DecodeProblem(2, 4, 2, 2, 16, 4, 8, 4, (9, 14), "float32") if SIM
      else DecodeProblem(8, 32, 8, 1, 128, 16, 8 * 256 + 8, 256, (4096,) * 8, "float16"))
q, k_cache, v_cache, table, seq_lens = dp.make_inputs(seed=0)
for kernel in (r.name for r in DECODE):
    o, lse = workbench.decode(q, k_cache, v_cache, table, seq_lens, causal=True, return_lse=True, kernel=kernel)
    err = 0.0
    for b, n in enumerate(seq_lens):
        kb = reference.gather_paged(k_cache, table[b:b + 1], seq_lens[b:b + 1])
        vb = reference.gather_paged(v_cache, table[b:b + 1], seq_lens[b:b + 1])
        o_ref, _ = reference.attention(q[b:b + 1], kb, vb, causal=True)
        err = max(err, np.linalg.norm(o[b:b + 1] - o_ref) / np.linalg.norm(o_ref))
    print(f"{kernel:13s} {dp.describe()}: relative Frobenius error of O {err:.1e}")

# %% [markdown]
# ## 5. Measured
#
# The committed inference suite (`figures/h100/seed-inference.json`) times one decode step of one
# attention layer at Llama-2-7B's shape, batch 1, as the context grows, beside SDPA's flash backend
# on a contiguous cache, a gather-then-SDPA baseline and PyTorch's standard attention. Its
# "cache GB/s" column is the cache's bytes over the step's time: how close each gets to the memory
# floor of section 1 (the dashed line: the copy bandwidth measured on the H100).

# %%
infer = course.committed("seed-inference")
print(course.source_line(infer))
print(infer.get("config", ""))
print(f"\n{'kernel':18s} {'context':>8s} {'ms':>8s} {'cache GB/s':>11s} {'splits':>7s}")
for pt in infer["points"]:
    t = (pt.get("timing") or {}).get("median_ms")
    print(f"{pt['kernel']:18s} {pt['context']:8d} {t or float('nan'):8.3f} {pt.get('cache_GBps') or float('nan'):11.1f} "
          f"{pt.get('splits') or '':>7}")
checks_data = course.committed("training-inference-checks")
print("\n" + course.source_line(checks_data))
for pt in checks_data["sections"]["verify-decode"]["points"]:
    print(f"  {pt['kernel']:14s} {pt['problem']:58s} rel_fro {pt['verify']['rel_fro']:.1e}")

if not SIM:
    from workbench.harness import timing

    d_args = [cuda.to_device(x) for x in (q, k_cache, v_cache, table, seq_lens)]
    live = []
    for kernel in (r.name for r in DECODE):
        t = timing.time_call(lambda: workbench.decode(*d_args, causal=True, kernel=kernel), repeat=10)
        gbps = dp.cache_bytes_read() / (t.median_ms * 1e-3) / 1e9
        print(f"live: {kernel} {dp.describe()}: {t.median_ms * 1e3:.1f} µs, cache {gbps:,.0f} GB/s")
        live.append({"kernel": kernel, "problem": dp.describe(), "timing": {"median_ms": t.median_ms}, "cache_GBps": gbps})
    course.record("09-inference", live)

# %%
timed = [pt for pt in infer["points"] if pt.get("cache_GBps")]
diagrams.measured(timed, x="context", y="cache_GBps", xlabel="context (tokens)", ylabel="cache bytes / step time, GB/s",
                  title=f"one decode step, one layer, B=1 ({infer['provenance'].get('device', '?')}, "
                        f"{infer['provenance'].get('date', '?')[:10]})",
                  hline=(peak_gbps, "device-memory copy bandwidth (measured)"))
plt.show()

# %% [markdown]
# ## Exercises
#
# 1. At what context does one decode step's cache (B = 1, 32 layers of Llama-2-7B's attention,
#    float16) pass 1 GiB? Use `DecodeProblem.cache_bytes_read`. How does GQA with 8 key/value
#    heads change it?
# 2. With batch 1, H = 32 and one new token, how many CTAs does a decode rung launch at context
#    4096? Read `paged_decode.split_plan` (or `decode.split_plan`) and the rung's docstring: how
#    many splits does it choose, and why that many?
# 3. Speculative decoding checks Nq = 4 draft tokens at once. What does that do to the arithmetic
#    intensity of section 1, and to the mask (causal within the new tokens)?
