"""The paged decode rung on the GPU (issue 16): correctness against float64, and one decode step's
time and cache-read bandwidth beside torch SDPA flash and the device's copy rate.

    python3 scripts/gpu_decode.py OUT_DIR [--quick] [--sweep]     (on a CUDA GPU with torch)

1. Copy rate: a ~2 GB torch device-to-device copy, (bytes read + written) / time, median of 10.
2. Checks: `workbench/kernels/paged_decode.py` against a float64 reference of the same inputs
   (gathered through the block table on the GPU) for odd contexts, B up to 64, GQA/MQA, causal
   with Nq > 1, windows, rows that see no key, block sizes 16/64/256, shuffled physical blocks,
   NaN in every cache slot and table entry no sequence owns, D = 64/128/256 and odd multiples of 8,
   float16/bfloat16/float32; outputs NaN-poisoned, two launches bitwise equal; the project's
   tolerance rule (workbench.harness.verify).
   Device-side checks: bad block ids (past the pool, negative) and bad lengths (past the table's
   capacity, below Nq) in device tables give NaN for exactly those sequences and their flags in a
   DecodeErrors (kernel and public API), the other sequences exact, and the next launch is fine
   (no fault, no sticky CUDA error).
   FP8 cache: `e4m3x4` on the GPU against torch.float8_e4m3fn for all 256 codes (exact), and
   e4m3 caches (GQA float16 D = 128 with splits, MQA bfloat16 D = 64 Nq = 2) against float64 on
   the dequantised cache, with q's dtype's tolerance.
3. Timing of one decode step (H = 32, D = 128, float16, Nq = 1, every sequence the same length,
   shuffled 64-token blocks), B in {1, 8, 64}, Hkv in {32, 8}, contexts 512..131072 (those whose
   two caches, paged and contiguous, fit in memory):
   - `kernel`: CUDA events around the rung's launches with the GPU kept busy beforehand
     (torch.cuda._sleep), so the host's launch cost is hidden: the device time of the kernels;
   - `launch`: the same events with an idle GPU (the host's launch cost shows when it is longer);
   - `call`: events around a whole call: torch arrays in, Numba views, the plan, torch-allocated
     outputs and workspace, both launches;
   - `api_call`: the same around the public `workbench.api.inference.decode` (validation, device
     tables checked on the device with a DecodeErrors, max_seq_len = ctx: no host copy, no sync):
     issue 16's "a few tens of microseconds" for the whole call;
   - SDPA flash (`kernel` as above, and `call`) on the contiguous cache; for GQA the group's heads
     are SDPA's query rows (q viewed as (B, Hkv, G, D)), so it too reads each K/V byte once;
   L2 flushed (a 256 MB write) before every repetition; medians. Cache-read GB/s is
   2·B·Hkv·ctx·D·2 bytes over the kernel time.
4. FP8 cache timing (e4m3, per-head scales): B = 8, Hkv = 8, contexts 8K and 32K; GB/s over the
   1-byte cache (the bit-arithmetic decode on load must not make it compute-bound).
5. With --sweep: unroll and threads at a few shapes (what DEFAULT_CONFIG was chosen from).

Calls the rung's launch() directly with a launcher of its own (empty -> torch/Numba arrays,
launch -> kernel[grid, block](*args)), building the problem as workbench's decode API does
(DecodeProblem). Writes OUT_DIR/decode-bandwidth.json (provenance: device, driver, versions, date,
command) and prints a short table last. Exit status 1 when a check fails.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback

os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "0")
os.environ.setdefault("NUMBA_CUDA_ARRAY_INTERFACE_SYNC", "0")  # no stream sync per as_cuda_array

import numpy as np  # noqa: E402
import torch  # noqa: E402
from numba import cuda  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
try:
    from workbench.api.inference import DecodeProblem  # noqa: E402
except ImportError:  # the package's layout moves; the problem class is what matters
    from workbench.decode import DecodeProblem  # noqa: E402
from workbench.harness import verify  # noqa: E402
from workbench.kernels import paged_decode as rung  # noqa: E402

DEV = torch.device("cuda")
TORCH_DTYPE = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


# --------------------------------------------------------------------------------------------------
# Launching the rung on torch tensors
# --------------------------------------------------------------------------------------------------
def numba_view(t):
    """A Numba device array over a torch tensor (bfloat16 as its uint16 bits)."""
    if t.dtype == torch.bfloat16:
        return cuda.as_cuda_array(t.view(torch.int16)).view(np.uint16)
    return cuda.as_cuda_array(t)


class TorchLauncher:
    """empty -> torch's caching allocator (viewed by Numba); launch -> kernel[grid, block](*args).
    With keep=True the workspace is allocated once and reused (timing the kernels, not malloc)."""

    def __init__(self, keep=False):
        self.keep, self.pool, self.next = keep, [], 0

    def empty(self, shape, dtype):
        if self.keep and self.next < len(self.pool):
            arr = self.pool[self.next]
        else:
            t = torch.empty(tuple(shape), dtype=getattr(torch, np.dtype(dtype).name), device=DEV)
            arr = (t, cuda.as_cuda_array(t))
            if self.keep:
                self.pool.append(arr)
        self.next += 1
        return arr[1]

    def launch(self, kernel, grid, block, *args):
        kernel[grid, block](*args)


def problem_of(q, k_cache, table, lens_list, causal=True, window=None):
    b, h, nq, d = q.shape
    nb, hkv, bs, _ = k_cache.shape
    name = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32"}[q.dtype]
    return DecodeProblem(b, h, hkv, nq, d, bs, nb, table.shape[1], tuple(lens_list), name, causal,
                         window)


def decode_call(q, k_cache, v_cache, table, lens, lens_list, config, causal=True, window=None):
    """One whole call as an API would make it (minus validation): outputs from torch, launches."""
    p = problem_of(q, k_cache, table, lens_list, causal, window)
    o = torch.empty_like(q)
    lse = torch.empty(p.lse_shape, dtype=torch.float32, device=DEV)
    rung.launch(p, config, *(numba_view(x) for x in (q, k_cache, v_cache, table, lens)),
                numba_view(o), numba_view(lse), TorchLauncher())
    return o, lse


# --------------------------------------------------------------------------------------------------
# Inputs: a paged cache of shuffled blocks, and the float64 truth
# --------------------------------------------------------------------------------------------------
def paged_cache(k, v, lens, block_size, gen, spare=3, extra_table=1, poison=float("nan")):
    """(k_cache, v_cache, table) holding k, v (B, Hkv, N, D) of lengths lens in shuffled physical
    blocks; every slot and table entry no sequence owns is poison / an invalid id."""
    b, hkv, _, d = k.shape
    need = [-(-n // block_size) for n in lens]
    nb = sum(need) + spare
    order = torch.randperm(nb, generator=gen, device="cpu").to(DEV)
    kc = torch.full((nb, hkv, block_size, d), poison, dtype=k.dtype, device=DEV)
    vc = torch.full_like(kc, poison)
    table = torch.full((b, max(need) + extra_table), nb + 7, dtype=torch.int32, device=DEV)
    start = 0
    for i, n in enumerate(lens):
        ids = order[start:start + need[i]]
        start += need[i]
        table[i, :need[i]] = ids.to(torch.int32)
        full, rest = divmod(n, block_size)
        if full:
            kc[ids[:full]] = k[i, :, :full * block_size].reshape(hkv, full, block_size, d).transpose(0, 1)
            vc[ids[:full]] = v[i, :, :full * block_size].reshape(hkv, full, block_size, d).transpose(0, 1)
        if rest:
            kc[ids[full], :, :rest] = k[i, :, full * block_size:n]
            vc[ids[full], :, :rest] = v[i, :, full * block_size:n]
    return kc, vc, table


def reference(q, kc, vc, table, lens, causal, window, scale):
    """Float64 O and LSE (natural log), gathering each sequence's keys through the table."""
    b_, h, nq, d = q.shape
    hkv, bs = kc.shape[1], kc.shape[2]
    g = h // hkv
    far = nq + max(lens)
    left, right = window if window is not None else (-1, -1)
    if causal:
        right = 0
    left, right = (far if left < 0 else left), (far if right < 0 else right)
    o = torch.zeros(q.shape, dtype=torch.float64, device=DEV)
    lse = torch.full((b_, h, nq), -math.inf, dtype=torch.float64, device=DEV)
    for b, n in enumerate(lens):
        j = torch.arange(n, device=DEV)
        blocks = table[b, j // bs].long()
        k = kc[blocks, :, j % bs].double().transpose(0, 1)  # (Hkv, n, D)
        v = vc[blocks, :, j % bs].double().transpose(0, 1)
        qb = q[b].double().reshape(hkv, g, nq, d)
        s = torch.einsum("kgid,knd->kgin", qb, k) * scale
        pos = torch.arange(nq, device=DEV) + n - nq
        seen = (j[None] >= pos[:, None] - left) & (j[None] <= pos[:, None] + right)  # (nq, n)
        s = s.masked_fill(~seen, -math.inf)
        row_lse = torch.logsumexp(s, -1)
        p = torch.exp(s - row_lse[..., None]).nan_to_num(0.0)
        o[b] = torch.einsum("kgin,knd->kgid", p, v).reshape(h, nq, d)
        lse[b] = row_lse.reshape(h, nq)
    return o, lse


CHECKS = [  # (B, H, Hkv, Nq, D, block, lens (None: random odd), dtype, causal, window)
    (64, 32, 8, 1, 128, 16, None, "float16", True, None),  # B = 64, GQA, random odd lengths
    (4, 32, 1, 1, 128, 64, (4097, 1, 777, 2049), "bfloat16", True, None),  # MQA
    (2, 16, 4, 4, 64, 256, (1000, 517), "float16", True, None),  # speculative: 4 new tokens
    (3, 8, 8, 1, 256, 64, (3001, 70, 1500), "float16", True, (300, 0)),  # D = 256, sliding window
    (2, 12, 4, 2, 40, 16, (333, 1234), "bfloat16", True, None),  # D = 40
    (5, 8, 2, 1, 72, 64, (99, 1, 4095, 2047, 513), "float16", True, None),  # D = 72
    (2, 4, 4, 3, 200, 16, (640, 129), "float16", False, (64, 64)),  # D = 200, window both ways
    (8, 32, 8, 1, 128, 256, (32769,) * 8, "float16", True, None),  # long: many splits
    (1, 32, 8, 1, 128, 64, (131077,), "bfloat16", True, None),  # longest: the split cap
    (2, 8, 2, 1, 128, 16, (1023, 3), "float32", True, None),  # float32
    (2, 8, 8, 3, 24, 16, (3, 45), "float16", True, None),  # D = 24; the shortest length (Nq)
    (16, 32, 32, 1, 128, 16, None, "bfloat16", True, None),  # MHA
]


def run_checks(seed=0):
    out, ok = [], True
    for idx, (b, h, hkv, nq, d, bs, lens, dtype, causal, window) in enumerate(CHECKS):
        gen = torch.Generator(device="cpu").manual_seed(seed + idx)
        if lens is None:
            lens = tuple(int(x) | 1 for x in torch.randint(1, 3000, (b,), generator=gen))
        n = max(lens)
        tdt = TORCH_DTYPE[dtype]
        torch.manual_seed(seed + idx)
        q = torch.randn((b, h, nq, d), device=DEV).to(tdt)
        k = torch.randn((b, hkv, n, d), device=DEV).to(tdt)
        v = torch.randn((b, hkv, n, d), device=DEV).to(tdt)
        kc, vc, table = paged_cache(k, v, lens, bs, gen)
        lens_t = torch.tensor(lens, dtype=torch.int32, device=DEV)
        p = problem_of(q, kc, table, lens, causal, window)
        ref_o, ref_lse = reference(q, kc, vc, table, lens, causal, window, p.scale)
        results = []
        for _ in range(2):  # outputs poisoned; two launches must agree bitwise
            o = torch.full_like(q, float("nan"))
            lse = torch.full(p.lse_shape, float("nan"), dtype=torch.float32, device=DEV)
            rung.launch(p, rung.DEFAULT_CONFIG, *(numba_view(x) for x in (q, kc, vc, table, lens_t)),
                        numba_view(o), numba_view(lse), TorchLauncher())
            torch.cuda.synchronize()
            results.append((o.float().cpu().numpy(), lse.cpu().numpy()))
        report = verify.Report("paged_decode", p, seed + idx)
        (o1, l1), (o2, l2) = results
        if o1.tobytes() != o2.tobytes() or l1.tobytes() != l2.tobytes():
            report.failures.append("two launches differ bitwise")
        verify.compare(report, o1, l1, ref_o.cpu().numpy(), ref_lse.cpu().numpy())
        splits, per = rung.split_plan(p, rung.DEFAULT_CONFIG)
        row = {"problem": p.describe(), "lens": list(lens) if len(lens) <= 8 else f"{len(lens)} odd lengths",
               "splits": splits, "keys_per_split": per, "passed": report.passed,
               "max_abs": report.max_abs, "rel_fro": report.rel_fro, "lse_max_abs": report.lse_max_abs,
               "failures": report.failures}
        ok &= report.passed
        out.append(row)
        print(("PASS " if report.passed else "FAIL ") + p.describe(), f"splits={splits}",
              f"max_abs={report.max_abs:.2e} rel_fro={report.rel_fro:.2e}", report.failures, flush=True)
        del q, k, v, kc, vc
    return out, ok


def run_device_checks(seed=100):
    """Bad device tables and lengths: NaN and flags for exactly those sequences, the others exact;
    the kernel's launch_with and the public API (DecodeErrors); a good launch afterwards."""
    from workbench.api import inference

    out, ok = [], True
    b, h, hkv, d, bs = 6, 16, 4, 128, 16
    gen = torch.Generator(device="cpu").manual_seed(seed)
    lens = [1500, 777, 2049, 64, 3001, 900]
    q = torch.randn((b, h, 1, d), device=DEV).half()
    k = torch.randn((b, hkv, max(lens), d), device=DEV).half()
    v = torch.randn_like(k)
    kc, vc, table = paged_cache(k, v, lens, bs, gen)
    nb, cap = kc.shape[0], table.shape[1] * bs
    good_lens = torch.tensor(lens, dtype=torch.int32, device=DEV)
    ref_o, _ = reference(q, kc, vc, table, lens, True, None, 1 / math.sqrt(d))
    bad_table = table.clone()
    bad_table[1, 3] = nb + 1_000_000  # far past the pool: an unchecked read would fault
    bad_table[2, 0] = -5
    bad_lens = good_lens.clone()
    bad_lens[3] = cap + 1  # past the table's capacity
    bad_lens[4] = 0  # below Nq
    expect = [0, inference.BAD_BLOCK, inference.BAD_BLOCK, inference.BAD_LENGTH, inference.BAD_LENGTH, 0]
    for config in (rung.DEFAULT_CONFIG, dict(rung.DEFAULT_CONFIG, split_keys=4096)):  # splits; one split
        row = {"config": config}
        try:
            p = problem_of(q, kc, table, [cap] * b)  # planned for the capacity, as the API does
            errors = torch.zeros(b, dtype=torch.int32, device=DEV)
            o = torch.full_like(q, float("nan"))
            lse = torch.empty(p.lse_shape, dtype=torch.float32, device=DEV)
            rung.launch_with(p, config, *(numba_view(x) for x in (q, kc, vc, bad_table, bad_lens)),
                             numba_view(o), numba_view(lse), TorchLauncher(), errors=numba_view(errors))
            torch.cuda.synchronize()
            flags = errors.cpu().tolist()
            bad = [i for i, e in enumerate(expect) if e]
            row["splits"] = rung.split_plan(p, config)[0]
            row["flags"] = flags
            row["nan_rows_ok"] = bool(torch.isnan(o[bad]).all()) and bool(torch.isnan(lse[bad]).all())
            good = [0, 5]
            row["good_max_abs"] = float((o[good].double() - ref_o[good]).abs().max())
            o2 = torch.empty_like(q)
            rung.launch_with(p, config, *(numba_view(x) for x in (q, kc, vc, table, good_lens)),
                             numba_view(o2), numba_view(lse), TorchLauncher(), errors=numba_view(errors))
            torch.cuda.synchronize()
            row["after_max_abs"] = float((o2.double() - ref_o).abs().max())
            row["passed"] = (flags == expect and row["nan_rows_ok"] and row["good_max_abs"] < 2e-3
                             and row["after_max_abs"] < 2e-3)
        except Exception:
            row["error"], row["passed"] = traceback.format_exc()[-1500:], False
        ok &= row["passed"]
        out.append(row)
        print(("PASS " if row["passed"] else "FAIL ") + "device checks", row, flush=True)
    try:  # the public API: DecodeErrors, check()
        errors = inference.DecodeErrors(8, like=q)
        o = inference.decode(q, kc, vc, bad_table, bad_lens, errors=errors)
        flags = errors.codes().tolist()[:b]
        try:
            errors.check()
            raised = False
        except inference.DecodeError:
            raised = True
        row = {"api": True, "flags": flags, "raised": raised, "cleared": not errors.any(),
               "good_max_abs": float((o[[0, 5]].double() - ref_o[[0, 5]]).abs().max())}
        row["passed"] = flags == expect and raised and row["cleared"] and row["good_max_abs"] < 2e-3
    except Exception:
        row = {"api": True, "error": traceback.format_exc()[-1500:], "passed": False}
    ok &= row["passed"]
    out.append(row)
    print(("PASS " if row["passed"] else "FAIL ") + "device checks through the API", flush=True)
    return out, ok


E4M3_KERNEL = None


def run_fp8_checks(seed=200):
    """e4m3x4 exact on the GPU for every code; e4m3 caches against float64 on the dequantised cache."""
    from workbench.api import inference

    global E4M3_KERNEL
    out, ok = [], True
    if E4M3_KERNEL is None:
        @cuda.jit
        def decode_words(words, vals):
            i = cuda.grid(1)
            if i < words.shape[0]:
                a, b, c, d = rung.e4m3x4(words[i])
                vals[i, 0] = a
                vals[i, 1] = b
                vals[i, 2] = c
                vals[i, 3] = d

        E4M3_KERNEL = decode_words
    c = np.arange(256, dtype=np.int64)
    byte_codes = np.stack([c, 255 - c, (c * 37 + 11) & 0xFF, (c * 91 + 5) & 0xFF], 1)  # every code, every byte
    words = (byte_codes << np.array([0, 8, 16, 24])).sum(1).astype(np.uint32)
    words_u = torch.from_numpy(words.view(np.int32).copy()).to(DEV)
    vals = torch.empty((256, 4), dtype=torch.float32, device=DEV)
    E4M3_KERNEL[2, 128](cuda.as_cuda_array(words_u).view(np.uint32), cuda.as_cuda_array(vals))
    torch.cuda.synchronize()
    table = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    want = table[torch.from_numpy(byte_codes)]
    got = vals.cpu() * float(rung.E4M3_UNIT)
    exact = bool(torch.equal(torch.nan_to_num(got, nan=1234.5), torch.nan_to_num(want, nan=1234.5)))
    out.append({"e4m3x4_exact_all_codes": exact})
    ok &= exact
    print(("PASS " if exact else "FAIL ") + "e4m3x4 exact for all 256 codes on the GPU", flush=True)
    for idx, (b, h, hkv, nq, d, bs, lens, dtype) in enumerate([
            (8, 32, 8, 1, 128, 16, (4097, 1, 777, 2049, 8191, 33, 100, 3000), "float16"),
            (3, 8, 1, 2, 64, 64, (1000, 2, 517), "bfloat16")]):
        gen = torch.Generator(device="cpu").manual_seed(seed + idx)
        tdt = TORCH_DTYPE[dtype]
        torch.manual_seed(seed + idx)
        q = torch.randn((b, h, nq, d), device=DEV).to(tdt)
        k = torch.randn((b, hkv, max(lens), d), device=DEV)
        v = torch.randn_like(k)
        kc, vc, table_ = paged_cache(k, v, lens, bs, gen, poison=0.0)
        scales = []
        codes8 = []
        for cache in (kc, vc):
            s = (cache.abs().amax(dim=(0, 2, 3)) / 448).float().clamp_min(1e-12)  # per kv head
            c8 = (cache / s[None, :, None, None]).to(torch.float8_e4m3fn)
            scales.append(s.contiguous())
            codes8.append(c8)
        deq = [c.float().double() * s[None, :, None, None].double() for c, s in zip(codes8, scales)]
        lens_t = torch.tensor(lens, dtype=torch.int32, device=DEV)
        p = problem_of(q, kc, table_, lens)
        ref_o, ref_lse = reference(q, deq[0], deq[1], table_, lens, True, None, p.scale)
        o, lse = inference.decode(q, codes8[0], codes8[1], table_, lens_t, k_scale=scales[0],
                                  v_scale=scales[1], return_lse=True)
        torch.cuda.synchronize()
        import dataclasses

        fp = dataclasses.replace(p, cache_dtype=rung.FP8)
        report = verify.Report("paged_decode", fp, seed + idx)
        verify.compare(report, o.float().cpu().numpy(), lse.cpu().numpy(), ref_o.cpu().numpy(),
                       ref_lse.cpu().numpy())
        exact_o, _ = reference(q, kc, vc, table_, lens, True, None, p.scale)
        cost = float((ref_o - exact_o).norm() / exact_o.norm())
        row = {"problem": fp.describe(), "passed": report.passed, "max_abs": report.max_abs,
               "rel_fro": report.rel_fro, "lse_max_abs": report.lse_max_abs, "failures": report.failures,
               "e4m3_cost_rel_fro": cost}
        ok &= report.passed
        out.append(row)
        print(("PASS " if report.passed else "FAIL ") + fp.describe(),
              f"rel_fro={report.rel_fro:.2e} (e4m3 vs exact cache: {cost:.2e})", report.failures, flush=True)
    return out, ok


# --------------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------------
FLUSH = None


def flush_l2():
    FLUSH.zero_()


def event_time(fn, reps, busy):
    """Median ms of fn() between CUDA events; busy: the GPU sleeps first so the launches queue up
    behind it (device time only); L2 flushed before each repetition."""
    times = []
    for _ in range(reps):
        flush_l2()
        if busy:
            torch.cuda._sleep(1_000_000)  # ~0.5 ms of GPU spinning: longer than any host launch cost
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return {"median_ms": statistics.median(times), "p20_ms": times[len(times) // 5],
            "p80_ms": times[(4 * len(times)) // 5], "reps": reps}


def copy_rate():
    n = 1 << 30  # float16 elements: 2 GiB
    src = torch.empty(n, dtype=torch.float16, device=DEV).normal_()
    dst = torch.empty_like(src)
    dst.copy_(src)
    torch.cuda.synchronize()
    t = event_time(lambda: dst.copy_(src), 10, busy=False)
    return {"bytes": 2 * 2 * n, "median_ms": t["median_ms"],
            "GB_per_s": 2 * 2 * n / (t["median_ms"] * 1e-3) / 1e9}


def time_point(b, hkv, ctx, config, reps, sdpa=True, h=32, d=128, block=64):
    """One decode step of B sequences of length ctx: the rung (kernel, launch, call) and SDPA flash."""
    gen = torch.Generator(device="cpu").manual_seed(b * 1000 + hkv + ctx)
    dt = torch.float16
    q = torch.randn((b, h, 1, d), device=DEV, dtype=dt)
    k = torch.randn((b, hkv, ctx, d), device=DEV, dtype=dt)
    v = torch.randn((b, hkv, ctx, d), device=DEV, dtype=dt)
    kc, vc, table = paged_cache(k, v, [ctx] * b, block, gen, spare=0, poison=0.0)
    lens = torch.full((b,), ctx, dtype=torch.int32, device=DEV)
    p = problem_of(q, kc, table, [ctx] * b)
    o = torch.empty_like(q)
    lse = torch.empty(p.lse_shape, dtype=torch.float32, device=DEV)
    views = [numba_view(x) for x in (q, kc, vc, table, lens, o, lse)]
    gpu = TorchLauncher(keep=True)

    def launches():
        gpu.next = 0
        rung.launch(p, config, *views, gpu)

    from workbench.api import inference

    errors = inference.DecodeErrors(b, like=q)

    def api_call():
        return inference.decode(q, kc, vc, table, lens, errors=errors, max_seq_len=ctx)

    for _ in range(2):
        launches()
        decode_call(q, kc, vc, table, lens, [ctx] * b, config)
        if config == rung.DEFAULT_CONFIG:
            api_call()
    torch.cuda.synchronize()
    bytes_read = p.cache_bytes_read()
    row = {"B": b, "H": h, "Hkv": hkv, "ctx": ctx, "D": d, "block": block, "dtype": "float16",
           "config": dict(config), "splits": rung.split_plan(p, config)[0],
           "cache_bytes": bytes_read,
           "kernel": event_time(launches, reps, busy=True),
           "launch": event_time(launches, reps, busy=False),
           "call": event_time(lambda: decode_call(q, kc, vc, table, lens, [ctx] * b, config), reps,
                              busy=False)}
    if config == rung.DEFAULT_CONFIG:  # the public API's whole call (Build 3's target)
        row["api_call"] = event_time(api_call, reps, busy=False)
        row["api_errors_clear"] = not errors.any()
    row["GB_per_s"] = bytes_read / (row["kernel"]["median_ms"] * 1e-3) / 1e9
    # correctness of this very step against SDPA (both fp16; loose: a sanity check)
    if sdpa:
        from torch.nn.attention import SDPBackend, sdpa_kernel
        import torch.nn.functional as F

        # One new token: the group's query heads become Hkv heads of G query rows each (what
        # FlashAttention does for GQA decode), so SDPA reads each K/V byte once too.
        q_grouped = q.view(b, hkv, h // hkv, d)

        def run_sdpa():
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return F.scaled_dot_product_attention(q_grouped, k, v, is_causal=False)

        try:
            ref = run_sdpa()
            launches()
            torch.cuda.synchronize()
            row["max_abs_vs_sdpa"] = float((ref.reshape(o.shape).float() - o.float()).abs().max())
            row["sdpa_kernel"] = event_time(run_sdpa, reps, busy=True)
            row["sdpa_call"] = event_time(run_sdpa, reps, busy=False)
            row["sdpa_GB_per_s"] = bytes_read / (row["sdpa_kernel"]["median_ms"] * 1e-3) / 1e9
            row["vs_sdpa_kernel"] = row["kernel"]["median_ms"] / row["sdpa_kernel"]["median_ms"]
        except Exception as exc:  # recorded, not fatal
            row["sdpa_error"] = f"{type(exc).__name__}: {exc}"[:300]
    return row  # (its tensors are freed on return; the caller empties torch's cache)


def time_point_fp8(b, hkv, ctx, reps, h=32, d=128, block=64):
    """One decode step over an e4m3 cache (random codes, per-head scales): the kernels' time."""
    gen = torch.Generator(device="cpu").manual_seed(b * 1000 + hkv + ctx + 1)
    q = torch.randn((b, h, 1, d), device=DEV, dtype=torch.float16)
    nb = b * (-(-ctx // block))
    kc = torch.randn((nb, hkv, block, d), device=DEV, dtype=torch.float16).to(torch.float8_e4m3fn)
    vc = torch.randn((nb, hkv, block, d), device=DEV, dtype=torch.float16).to(torch.float8_e4m3fn)
    order = torch.randperm(nb, generator=gen).to(torch.int32).to(DEV)
    table = order.view(b, -1).contiguous()
    lens = torch.full((b,), ctx, dtype=torch.int32, device=DEV)
    scales = [torch.full((hkv,), 0.01, dtype=torch.float32, device=DEV) for _ in range(2)]
    p = DecodeProblem(b, h, hkv, 1, d, block, nb, table.shape[1], (ctx,) * b, "float16",
                      cache_dtype=rung.FP8)
    o = torch.empty_like(q)
    lse = torch.empty(p.lse_shape, dtype=torch.float32, device=DEV)
    views = [numba_view(x) for x in (q, kc.view(torch.uint8), vc.view(torch.uint8), table, lens, o, lse)]
    errors = torch.zeros(b, dtype=torch.int32, device=DEV)
    gpu = TorchLauncher(keep=True)
    kv = tuple(numba_view(x) for x in scales)

    def launches():
        gpu.next = 0
        rung.launch_with(p, rung.DEFAULT_CONFIG, *views, gpu, errors=numba_view(errors), kv_scales=kv)

    launches()
    torch.cuda.synchronize()
    row = {"B": b, "Hkv": hkv, "ctx": ctx, "cache": "float8_e4m3fn", "splits": rung.split_plan(p, rung.DEFAULT_CONFIG)[0],
           "cache_bytes": p.cache_bytes_read(), "kernel": event_time(launches, reps, busy=True),
           "errors_clear": not bool(errors.any())}
    row["GB_per_s"] = p.cache_bytes_read() / (row["kernel"]["median_ms"] * 1e-3) / 1e9
    return row


def provenance(argv):
    import numba

    try:
        import numba_cuda

        numba_cuda_version = numba_cuda.__version__
    except Exception:
        numba_cuda_version = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or None
    except Exception:
        commit = None
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                          "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
    return {"device": torch.cuda.get_device_name(), "nvidia_smi": smi,
            "sm_count": rung.sm_count(), "numba": numba.__version__, "numba_cuda": numba_cuda_version,
            "torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": "python3 scripts/gpu_decode.py " + " ".join(argv), "commit": commit}


def main(argv):
    global FLUSH
    out_dir = argv[0]
    quick, sweep = "--quick" in argv, "--sweep" in argv
    os.makedirs(out_dir, exist_ok=True)
    t0 = time.time()
    FLUSH = torch.empty(256 << 20, dtype=torch.uint8, device=DEV)
    result = {"provenance": provenance(argv), "default_config": rung.DEFAULT_CONFIG}
    path = os.path.join(out_dir, "decode-bandwidth.json")

    def save():
        result["seconds"] = round(time.time() - t0, 1)
        with open(path, "w") as f:
            json.dump(result, f, indent=1)

    result["copy"] = copy_rate()
    torch.cuda.empty_cache()
    print(f"copy rate {result['copy']['GB_per_s']:.0f} GB/s (read+write)", flush=True)
    save()
    try:
        result["checks"], ok = run_checks()
    except Exception:
        traceback.print_exc()
        result["checks"], ok = [{"error": traceback.format_exc()[-2000:]}], False
    for name, fn in (("device_checks", run_device_checks), ("fp8_checks", run_fp8_checks)):
        try:
            result[name], passed = fn()
        except Exception:
            traceback.print_exc()
            result[name], passed = [{"error": traceback.format_exc()[-2000:]}], False
        ok &= passed
        torch.cuda.empty_cache()
        save()
    print(f"checks done at {time.time() - t0:.0f}s", flush=True)

    free = torch.cuda.mem_get_info()[0]
    rows = []
    contexts = [512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072]
    for b in (1, 8, 64):
        for hkv in (32, 8):
            for ctx in contexts:
                if quick and ctx not in (512, 8192, 32768):
                    continue
                need = 2 * 2 * b * hkv * ctx * 128 * 2 * 1.15  # two caches (paged, contiguous)
                if need > free - (4 << 30):
                    rows.append({"B": b, "Hkv": hkv, "ctx": ctx, "skipped": "does not fit"})
                    continue
                reps = 20 if b * hkv * ctx <= 8 * 8 * 32768 else 8
                try:
                    row = time_point(b, hkv, ctx, rung.DEFAULT_CONFIG, reps)
                except Exception as exc:
                    traceback.print_exc()
                    row = {"B": b, "Hkv": hkv, "ctx": ctx, "error": f"{type(exc).__name__}: {exc}"[:300]}
                torch.cuda.empty_cache()
                rows.append(row)
                if "kernel" in row:
                    print(f"B={b:2d} Hkv={hkv:2d} ctx={ctx:6d} splits={row['splits']:3d} "
                          f"kernel {row['kernel']['median_ms'] * 1e3:8.1f} us "
                          f"{row['GB_per_s']:6.0f} GB/s  SDPA {row.get('sdpa_kernel', {}).get('median_ms', float('nan')) * 1e3:8.1f} us"
                          f"  call {row['call']['median_ms'] * 1e3:7.1f} us", flush=True)
                result["timing"] = rows
                save()

    result["fp8_timing"] = []
    for b, hkv, ctx in ((8, 8, 8192), (8, 8, 32768), (1, 8, 32768)):
        try:
            row = time_point_fp8(b, hkv, ctx, 20)
        except Exception as exc:
            traceback.print_exc()
            row = {"B": b, "Hkv": hkv, "ctx": ctx, "error": f"{type(exc).__name__}: {exc}"[:300]}
        torch.cuda.empty_cache()
        fp16 = next((r for r in rows if r.get("B") == b and r.get("Hkv") == hkv and r.get("ctx") == ctx
                     and "kernel" in r), None)
        if fp16 and "kernel" in row:
            row["vs_fp16_kernel"] = row["kernel"]["median_ms"] / fp16["kernel"]["median_ms"]
        result["fp8_timing"].append(row)
        print("fp8", b, hkv, ctx, f"{row.get('GB_per_s', float('nan')):.0f} GB/s",
              f"x{row.get('vs_fp16_kernel', float('nan')):.2f} of fp16's time", flush=True)
        save()

    if sweep:
        variants = [dict(rung.DEFAULT_CONFIG, **v) for v in
                    ({"unroll": 1}, {"unroll": 2}, {"unroll": 3}, {"unroll": 4}, {"threads": 64},
                     {"threads": 256}, {"split_keys": 256})]
        result["sweep"] = []
        for b, hkv, ctx in ((1, 8, 32768), (8, 8, 8192), (8, 32, 8192), (64, 8, 4096), (1, 32, 1024)):
            for cfg in variants:
                try:
                    row = time_point(b, hkv, ctx, cfg, 10, sdpa=False)
                    row = {k: row[k] for k in ("B", "Hkv", "ctx", "config", "splits", "kernel", "GB_per_s")}
                except Exception as exc:
                    row = {"B": b, "Hkv": hkv, "ctx": ctx, "config": cfg, "error": str(exc)[:300]}
                torch.cuda.empty_cache()
                result["sweep"].append(row)
                print("sweep", b, hkv, ctx, {k: cfg[k] for k in ("unroll", "threads", "split_keys")},
                      f"{row.get('GB_per_s', float('nan')):.0f} GB/s", flush=True)
                save()
    save()

    copy = result["copy"]["GB_per_s"]
    print(f"\ncopy rate {copy:.0f} GB/s; checks {'all passed' if ok else 'FAILED'}; "
          f"{time.time() - t0:.0f} s")
    print(f"{'B':>3} {'Hkv':>3} {'ctx':>6} | {'kernel us':>9} {'GB/s':>5} {'%copy':>5} | "
          f"{'SDPA us':>8} {'GB/s':>5} | {'rung/SDPA':>9} | {'call us':>8} {'SDPA call':>9}")
    for r in rows:
        if "kernel" not in r:
            continue
        sk = r.get("sdpa_kernel", {}).get("median_ms", float("nan"))
        sc = r.get("sdpa_call", {}).get("median_ms", float("nan"))
        print(f"{r['B']:>3} {r['Hkv']:>3} {r['ctx']:>6} | {r['kernel']['median_ms'] * 1e3:9.1f} "
              f"{r['GB_per_s']:5.0f} {100 * r['GB_per_s'] / copy:5.0f} | {sk * 1e3:8.1f} "
              f"{r.get('sdpa_GB_per_s', float('nan')):5.0f} | {r.get('vs_sdpa_kernel', float('nan')):9.2f} | "
              f"{r['call']['median_ms'] * 1e3:8.1f} {sc * 1e3:9.1f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
