#!/usr/bin/env python3
"""Issue 20, rung 7 on a Hopper GPU: flash3 debugged, verified and timed, in stages that each fit
one device call (< 10 minutes) and each write one JSON with provenance.

    python3 scripts/gpu_flash3.py OUTDIR probe      # (a) hopper.cu's primitives, one by one
    python3 scripts/gpu_flash3.py OUTDIR verify     # (b) flash3 vs float64, simplest schedule first
    python3 scripts/gpu_flash3.py OUTDIR time       # (c) flash3 beside flash2_mma, SDPA flash, cuDNN
    python3 scripts/gpu_flash3.py OUTDIR schedules  # (d) flash3's schedules and tiles at N = 4096
    python3 scripts/gpu_flash3.py OUTDIR fp8        # (e) FP8: k32 probes, verify, FP8 vs fp16 timing
    python3 scripts/gpu_flash3.py OUTDIR all [--quick]

(a) probe.json: a TMA box into shared memory against NumPy, byte for byte with the 128-byte
    swizzle, rows past N zero-filled; the same map buffer rewritten from the host between two
    launches (tma_rewrite: the tensormap acquire fence must drop the old map); mbarrier phases (a fresh barrier passes parity 1, then four
    rounds of 128 arrivals); one wgmma m64nNk16 chain with A and B from shared memory (N = 64, 128)
    and one with A from registers and B transposed (V, N = D = 64, 128) against NumPy.
    Each probe runs in its own subprocess with a timeout: a wrong transaction count or parity
    hangs, and a hang must not take the stage down.
(b) verify.json: every schedule (one_role → in_order → overlap → pingpong → fa3) over odd N,
    Nq ≠ Nkv, GQA/MQA, causal, window, N = 1, D 64/128, float16/bfloat16; each schedule in a
    subprocess with a timeout (a deadlock is reported as one).
(c) time.json: the issue's shapes (B=8 H=32 D=64, B=8 H=16 D=128; N 1K, 4K, 16K; causal and not;
    float16, bfloat16 at 4K): flash3, flash2_mma, SDPA flash and cuDNN, round-robin.
(d) schedules.json: flash3's schedules (one_role, in_order, no-pingpong, FA3) and Bc = 64 × 4
    stages at N = 4096, float16, both D, causal and not, beside SDPA flash and cuDNN.
(e) fp8.json (stage fp8): first the FP8 probes (one k32 wgmma chain SS, Q·Kᵀ from UINT8 tensor
    maps, N = 64/128; one RS, P packed to e4m3 in S's accumulator order against a V_jᵀ whose key
    columns are stored in that order, N = D = 64/128; each against NumPy on the same e4m3 values),
    then flash3 FP8 against float64 of the dequantised inputs (tests/test_flash3.py FP8_CASES, the
    verifier's FP8 rule, RMSE reported), then FP8 beside float16 at the issue's shapes
    (target: FP8 >= 1.5x flash3 fp16 at N >= 4096).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import traceback

import numpy as np

OUT = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("OUT", "out-flash3")
STAGE = sys.argv[2] if len(sys.argv) > 2 else "all"
QUICK = "--quick" in sys.argv
T0 = time.time()


def log(*a):
    print(f"[{time.time() - T0:6.1f}s]", *a, flush=True)


def save(name, result):
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, name), "w") as f:
        json.dump(result, f, indent=1, default=str)


def provenance():
    from workbench.harness import device

    return device.provenance()


def in_subprocess(args, timeout):
    """Run this script with `args` in a fresh process; (returncode or 'timeout', stdout tail)."""
    try:
        proc = subprocess.run([sys.executable, __file__, OUT, *args], capture_output=True, text=True,
                              timeout=timeout)
        return proc.returncode, (proc.stdout + proc.stderr)[-4000:]
    except subprocess.TimeoutExpired as exc:
        return "timeout", ((exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes)
                           else (exc.stdout or ""))[-4000:]


# --- (a) probes -------------------------------------------------------------------------------------

def probe_kernels():
    """The probe kernels, built from flash3's declarations of hopper.cu (sm_90a on a Hopper GPU)."""
    from numba import cuda, float32, int32, types, uint32, uint64

    from workbench.kernels import flash3
    from workbench.kernels.flash2_mma import address_of

    f = flash3._declare()
    # (Numba kernels cannot index a dict: each function as a name of its own)
    wbh_address = f["wbh_address"]
    wbh_desc_sw128 = f["wbh_desc_sw128"]
    wbh_fence_acc32 = f["wbh_fence_acc32"]
    wbh_fence_acc64 = f["wbh_fence_acc64"]
    wbh_fence_mbar_init = f["wbh_fence_mbar_init"]
    wbh_mbar_arrive = f["wbh_mbar_arrive"]
    wbh_mbar_arrive_expect_tx = f["wbh_mbar_arrive_expect_tx"]
    wbh_mbar_init = f["wbh_mbar_init"]
    wbh_mbar_wait = f["wbh_mbar_wait"]
    wbh_pack_bf16x2 = f["wbh_pack_bf16x2"]
    wbh_pack_f16x2 = f["wbh_pack_f16x2"]
    wbh_shared_address = f["wbh_shared_address"]
    wbh_tensormap_acquire = f["wbh_tensormap_acquire"]
    wbh_tma_load_3d = f["wbh_tma_load_3d"]
    wbh_wgmma_commit = f["wbh_wgmma_commit"]
    wbh_wgmma_fence = f["wbh_wgmma_fence"]
    wbh_wgmma_wait0 = f["wbh_wgmma_wait0"]
    sa, addr = wbh_shared_address, wbh_address

    @cuda.jit(device=True, inline="always")
    def aligned(smem):
        raw = sa(address_of(smem))
        base = uint32((raw + 1023) & ~1023)
        return base, base - raw

    def tma_box(box_bytes):
        @cuda.jit(launch_bounds=(128, 1))
        def kernel(tmaps, out, x, y, z):
            smem = cuda.shared.array(0, types.uint8)
            base, off = aligned(smem)
            bar = base + uint32(box_bytes)
            t = cuda.threadIdx.x
            if t == 0:
                wbh_mbar_init(bar, uint32(1))
                wbh_fence_mbar_init()
            cuda.syncthreads()
            if t == 0:
                tm = addr(address_of(tmaps))
                wbh_tensormap_acquire(tm)
                wbh_mbar_arrive_expect_tx(bar, uint32(box_bytes))
                wbh_tma_load_3d(base, tm, int32(x), int32(y), int32(z), bar)
            wbh_mbar_wait(bar, uint32(0))
            for i in range(t, box_bytes, 128):
                out[i] = smem[off + i]
        return kernel

    @cuda.jit
    def mbar_rounds(out, rounds):
        word = cuda.shared.array(1, types.uint64)
        bar = sa(address_of(word))
        t = cuda.threadIdx.x
        if t == 0:
            wbh_mbar_init(bar, uint32(cuda.blockDim.x))
            wbh_fence_mbar_init()
        cuda.syncthreads()
        wbh_mbar_wait(bar, uint32(1))  # a fresh barrier: the phase "before" it is complete
        for r in range(rounds):
            wbh_mbar_arrive(bar)
            wbh_mbar_wait(bar, uint32(r & 1))
            if t == 0:
                out[r] = r + 1
        out[rounds + t] = 1

    def wgmma_ss(N, bf16, e4m3=False):
        """S (64 × N) = A (64 × 64) Bᵀ, A and B TMA-loaded, K-major, 4 k-steps of 16 (e4m3: A is
        64 × 128 codes, 4 k-steps of 32: the same 128-byte rows and descriptors)."""
        mma = f[f"wbh_wgmma_ss_n{N}_{'e4m3' if e4m3 else 'bf16' if bf16 else 'f16'}"]
        fence = wbh_fence_acc64 if N == 128 else wbh_fence_acc32
        a_bytes, b_bytes = 64 * 128, N * 128
        NT = N // 8

        @cuda.jit(launch_bounds=(128, 1))
        def kernel(tmaps, out):
            smem = cuda.shared.array(0, types.uint8)
            acc = cuda.local.array((NT, 4), float32)
            base, _ = aligned(smem)
            bar = base + uint32(a_bytes + b_bytes)
            t = cuda.threadIdx.x
            if t == 0:
                wbh_mbar_init(bar, uint32(1))
                wbh_fence_mbar_init()
            cuda.syncthreads()
            if t == 0:
                tm = addr(address_of(tmaps))
                wbh_tensormap_acquire(tm)
                wbh_tensormap_acquire(tm + uint64(128))
                wbh_mbar_arrive_expect_tx(bar, uint32(a_bytes + b_bytes))
                wbh_tma_load_3d(base, tm, int32(0), int32(0), int32(0), bar)
                wbh_tma_load_3d(base + uint32(a_bytes), tm + uint64(128), int32(0), int32(0), int32(0), bar)
            wbh_mbar_wait(bar, uint32(0))
            wbh_wgmma_fence()
            for kk in range(4):
                da = wbh_desc_sw128(base + uint32(32 * kk), uint32(16), uint32(1024))
                db = wbh_desc_sw128(base + uint32(a_bytes + 32 * kk), uint32(16), uint32(1024))
                mma(address_of(acc), da, db, int32(1 if kk > 0 else 0))
            wbh_wgmma_commit()
            wbh_wgmma_wait0()
            fence(address_of(acc))
            w, lane = t // 32, t % 32
            g, tq = lane // 4, lane % 4
            for nt in range(NT):
                for e in range(2):
                    out[16 * w + g, 8 * nt + 2 * tq + e] = acc[nt, e]
                    out[16 * w + g + 8, 8 * nt + 2 * tq + e] = acc[nt, 2 + e]
        return kernel, a_bytes + b_bytes + 8 + 1024

    def wgmma_rs(D, bf16, keys=64):
        """O (64 × D) = P (64 × keys) V (keys × D): P from registers (the A layout), V TMA-loaded
        as (key, d) rows, MN-major (the transpose bit), D / 64 panels."""
        mma = f[f"wbh_wgmma_rs_n{D}_{'bf16' if bf16 else 'f16'}"]
        fence = wbh_fence_acc64 if D == 128 else wbh_fence_acc32
        pack = wbh_pack_bf16x2 if bf16 else wbh_pack_f16x2
        v_bytes = keys * D * 2
        ND, KC = D // 8, keys // 16

        @cuda.jit(launch_bounds=(128, 1))
        def kernel(tmaps, p, out):
            smem = cuda.shared.array(0, types.uint8)
            acc = cuda.local.array((ND, 4), float32)
            pa = cuda.local.array((KC, 4), uint32)
            base, _ = aligned(smem)
            bar = base + uint32(v_bytes)
            t = cuda.threadIdx.x
            w, lane = t // 32, t % 32
            g, tq = lane // 4, lane % 4
            for nd in range(D // 8):
                for e in range(4):
                    acc[nd, e] = float32(0)
            r0, r1 = 16 * w + g, 16 * w + g + 8
            for kc in range(keys // 16):
                c0 = 16 * kc + 2 * tq
                pa[kc, 0] = pack(p[r0, c0], p[r0, c0 + 1])
                pa[kc, 1] = pack(p[r1, c0], p[r1, c0 + 1])
                pa[kc, 2] = pack(p[r0, c0 + 8], p[r0, c0 + 9])
                pa[kc, 3] = pack(p[r1, c0 + 8], p[r1, c0 + 9])
            if t == 0:
                wbh_mbar_init(bar, uint32(1))
                wbh_fence_mbar_init()
            cuda.syncthreads()
            if t == 0:
                tm = addr(address_of(tmaps))
                wbh_tensormap_acquire(tm)
                wbh_mbar_arrive_expect_tx(bar, uint32(v_bytes))
                for pnl in range(D // 64):
                    wbh_tma_load_3d(base + uint32(pnl * keys * 128), tm, int32(64 * pnl), int32(0),
                                         int32(0), bar)
            wbh_mbar_wait(bar, uint32(0))
            wbh_wgmma_fence()
            for kc in range(keys // 16):
                db = wbh_desc_sw128(base + uint32(kc * 2048), uint32(keys * 128), uint32(1024))
                mma(address_of(acc), address_of(pa[kc]), db)
            wbh_wgmma_commit()
            wbh_wgmma_wait0()
            fence(address_of(acc))
            for nd in range(D // 8):
                for e in range(2):
                    out[r0, 8 * nd + 2 * tq + e] = acc[nd, e]
                    out[r1, 8 * nd + 2 * tq + e] = acc[nd, 2 + e]
        return kernel, v_bytes + 8 + 1024

    wbh_pack_e4m3x4 = f["wbh_pack_e4m3x4"]

    def wgmma_rs8(D):
        """O (64 × D) = P (64 × 128 keys) V (128 keys × D), e4m3: P packed from registers in S's
        accumulator order (keys 2t, 2t+1, 8+2t, 9+2t of each 16 as columns 4t … 4t+3), V_jᵀ
        (D rows × 128 key columns in that same order, made on the host) TMA-loaded, K-major."""
        mma = f[f"wbh_wgmma_rs_n{D}_e4m3"]
        fence = wbh_fence_acc64 if D == 128 else wbh_fence_acc32
        vt_bytes = D * 128
        ND = D // 8

        @cuda.jit(launch_bounds=(128, 1))
        def kernel(tmaps, p, out):
            smem = cuda.shared.array(0, types.uint8)
            acc = cuda.local.array((ND, 4), float32)
            pa = cuda.local.array((4, 4), uint32)
            base, _ = aligned(smem)
            bar = base + uint32(vt_bytes)
            t = cuda.threadIdx.x
            w, lane = t // 32, t % 32
            g, tq = lane // 4, lane % 4
            for nd in range(ND):
                for e in range(4):
                    acc[nd, e] = float32(0)
            r0, r1 = 16 * w + g, 16 * w + g + 8
            for kc in range(4):
                for half in range(2):
                    c0 = 32 * kc + 16 * half + 2 * tq
                    pa[kc, 2 * half] = wbh_pack_e4m3x4(p[r0, c0], p[r0, c0 + 1], p[r0, c0 + 8], p[r0, c0 + 9])
                    pa[kc, 2 * half + 1] = wbh_pack_e4m3x4(p[r1, c0], p[r1, c0 + 1], p[r1, c0 + 8], p[r1, c0 + 9])
            if t == 0:
                wbh_mbar_init(bar, uint32(1))
                wbh_fence_mbar_init()
            cuda.syncthreads()
            if t == 0:
                tm = addr(address_of(tmaps))
                wbh_tensormap_acquire(tm)
                wbh_mbar_arrive_expect_tx(bar, uint32(vt_bytes))
                wbh_tma_load_3d(base, tm, int32(0), int32(0), int32(0), bar)
            wbh_mbar_wait(bar, uint32(0))
            wbh_wgmma_fence()
            for kc in range(4):
                mma(address_of(acc), address_of(pa[kc]), wbh_desc_sw128(base + uint32(32 * kc), uint32(16),
                                                                        uint32(1024)))
            wbh_wgmma_commit()
            wbh_wgmma_wait0()
            fence(address_of(acc))
            for nd in range(ND):
                for e in range(2):
                    out[r0, 8 * nd + 2 * tq + e] = acc[nd, e]
                    out[r1, 8 * nd + 2 * tq + e] = acc[nd, 2 + e]
        return kernel, vt_bytes + 8 + 1024

    return {"tma_box": tma_box, "mbar_rounds": mbar_rounds, "wgmma_ss": wgmma_ss, "wgmma_rs": wgmma_rs,
            "wgmma_rs8": wgmma_rs8}


def fp8_key_order():
    """slot c of a 128-key V_jᵀ row holds key KEY_OF[c] (flash3's transpose_v)."""
    return np.array([32 * (c // 32) + 16 * ((c // 16) % 2) + [0, 1, 8, 9][c % 4] + 2 * ((c % 16) // 4)
                     for c in range(128)])


def _device_maps(*maps):
    from numba import cuda

    return cuda.to_device(np.array(maps, dtype=np.uint64))


def _launch(kernel, threads, smem, *args):
    from numba import cuda

    from workbench.kernels.hardware import allow_dynamic_shared

    spec = kernel.specialize(*args)
    allow_dynamic_shared(spec, smem)
    spec[1, threads, 0, smem](*args)
    cuda.synchronize()


def probe_one(name):
    """One probe, in this process: returns its record (passed, detail)."""
    import ml_dtypes
    from numba import cuda

    from workbench.kernels import flash3

    k = probe_kernels()
    rng = np.random.default_rng(0)
    if name == "mbar_rounds":
        out = cuda.to_device(np.zeros(4 + 128, np.int32))
        k["mbar_rounds"][1, 128](out, 4)
        cuda.synchronize()
        got = out.copy_to_host()
        return {"passed": bool((got[:4] == [1, 2, 3, 4]).all() and (got[4:] == 1).all())}
    if name == "tma_rewrite":
        # flash3's tensor maps live in a pooled global buffer that the host rewrites before every
        # call: the same address, a new map. Two launches on one buffer, a different tensor each
        # time; the second box must come from the second tensor (a stale map cached by the
        # tensormap proxy would give the first one's bytes, or fault).
        D, BH, R = 128, 2, 64
        x, y, z = 0, 0, 1
        maps = cuda.to_device(np.zeros((1, 16), np.uint64))
        kernel, box_bytes = k["tma_box"](R * 128), R * 128
        results = []
        for N in (100, 40):
            src = rng.standard_normal((BH, N, D)).astype(np.float16)
            dev = cuda.to_device(src)
            maps.copy_to_device(np.array([flash3.tensor_map(dev.__cuda_array_interface__["data"][0], N, BH, D,
                                                            R, False)], np.uint64))
            out = cuda.to_device(np.zeros(box_bytes, np.uint8))
            _launch(kernel, 128, box_bytes + 8 + 1024, maps, out, x, y, z)
            box = np.zeros((R, 64), np.float16)
            rows = src[z, y:min(y + R, N), x:x + 64]
            box[:len(rows)] = rows
            plain = box.view(np.uint8).reshape(R, 8, 16)
            want = np.empty_like(plain)
            for r in range(R):
                for c in range(8):
                    want[r, c ^ (r % 8)] = plain[r, c]
            results.append(int((out.copy_to_host().reshape(R, 8, 16) != want).sum()))
            del dev  # (its memory may be reused: the stale map would then read the wrong tensor)
        return {"passed": results == [0, 0], "bytes_wrong_per_launch": results}
    if name.startswith("tma"):  # tma_d128_rows64: a box of 64 rows at row 64 of N = 100 (rows 100.. zero)
        D, N, BH, R = 128, 100, 2, 64
        src = rng.standard_normal((BH, N, D)).astype(np.float16)
        dev = cuda.to_device(src)
        maps = _device_maps(flash3.tensor_map(dev.__cuda_array_interface__["data"][0], N, BH, D, R, False))
        x, y, z = 64, 64, 1
        box_bytes = R * 128
        out = cuda.to_device(np.zeros(box_bytes, np.uint8))
        _launch(k["tma_box"](box_bytes), 128, box_bytes + 8 + 1024, maps, out, x, y, z)
        box = np.zeros((R, 64), np.float16)
        rows = src[z, y:min(y + R, N), x:x + 64]
        box[:len(rows)] = rows
        plain = box.view(np.uint8).reshape(R, 8, 16)
        want = np.empty_like(plain)
        for r in range(R):
            for c in range(8):
                want[r, c ^ (r % 8)] = plain[r, c]
        got = out.copy_to_host().reshape(R, 8, 16)
        unswizzled = np.array_equal(got, plain)
        return {"passed": bool(np.array_equal(got, want)), "bytes_wrong": int((got != want).sum()),
                "equal_without_swizzle": bool(unswizzled)}
    F8 = ml_dtypes.float8_e4m3fn
    if name.startswith("wgmma-ss8"):  # wgmma-ss8_n64: S = Q Kᵀ on e4m3 codes, K = 128
        n = int(name.split("_n")[1])
        a = rng.standard_normal((1, 64, 128)).astype(np.float32).clip(-448, 448).astype(F8)
        b = rng.standard_normal((1, n, 128)).astype(np.float32).clip(-448, 448).astype(F8)
        da, db = cuda.to_device(a.view(np.uint8)), cuda.to_device(b.view(np.uint8))
        maps = _device_maps(flash3.tensor_map(da.__cuda_array_interface__["data"][0], 64, 1, 128, 64, False, True),
                            flash3.tensor_map(db.__cuda_array_interface__["data"][0], n, 1, 128, n, False, True))
        kernel, smem = k["wgmma_ss"](n, False, e4m3=True)
        out = cuda.to_device(np.full((64, n), np.nan, np.float32))
        _launch(kernel, 128, smem, maps, out)
        want = a[0].astype(np.float64) @ b[0].astype(np.float64).T
        got = out.copy_to_host()
        err = float(np.nanmax(np.abs(got - want))) if np.isfinite(got).any() else float("nan")
        return {"passed": bool(np.isfinite(got).all() and np.allclose(got, want, rtol=1e-4, atol=1e-3)),
                "max_abs_err": err, "nan": int(np.isnan(got).sum())}
    if name.startswith("wgmma-rs8"):  # wgmma-rs8_n128: O = P V, P e4m3 from registers, V_jᵀ permuted
        n = int(name.split("_n")[1])
        p = rng.uniform(0, 256, (64, 128)).astype(np.float32)  # (2⁸·P, as flash3 scales it)
        v = rng.standard_normal((128, n)).astype(np.float32).astype(F8)
        vt = np.ascontiguousarray(v[fp8_key_order()].T)  # (D, 128): row d, slot c = V[key(c), d]
        dv = cuda.to_device(vt.view(np.uint8)[None])
        maps = _device_maps(flash3.tensor_map(dv.__cuda_array_interface__["data"][0], n, 1, 128, n, False, True))
        kernel, smem = k["wgmma_rs8"](n)
        out = cuda.to_device(np.full((64, n), np.nan, np.float32))
        _launch(kernel, 128, smem, maps, cuda.to_device(p), out)
        want = p.astype(F8).astype(np.float64) @ v.astype(np.float64)  # P rounded as the kernel rounds it
        got = out.copy_to_host()
        err = float(np.nanmax(np.abs(got - want))) if np.isfinite(got).any() else float("nan")
        scale = float(np.abs(want).max())
        return {"passed": bool(np.isfinite(got).all() and np.allclose(got, want, rtol=1e-3, atol=1e-3 * scale)),
                "max_abs_err": err, "nan": int(np.isnan(got).sum())}
    kind, n, dt = name.split("_")  # wgmma-ss_n64_f16, wgmma-rs_n128_bf16
    n = int(n[1:])
    bf16 = dt == "bf16"
    host_t = ml_dtypes.bfloat16 if bf16 else np.float16
    to_dev = (lambda x: cuda.to_device(x.view(np.uint16))) if bf16 else cuda.to_device
    if kind == "wgmma-ss":
        a = rng.standard_normal((1, 64, 64)).astype(host_t)
        b = rng.standard_normal((1, n, 64)).astype(host_t)
        da, db = to_dev(a), to_dev(b)
        maps = _device_maps(flash3.tensor_map(da.__cuda_array_interface__["data"][0], 64, 1, 64, 64, bf16),
                            flash3.tensor_map(db.__cuda_array_interface__["data"][0], n, 1, 64, n, bf16))
        kernel, smem = k["wgmma_ss"](n, bf16)
        out = cuda.to_device(np.full((64, n), np.nan, np.float32))
        _launch(kernel, 128, smem, maps, out)
        want = a[0].astype(np.float64) @ b[0].astype(np.float64).T
    else:
        keys = 64
        p = rng.uniform(0, 1, (64, keys)).astype(host_t).astype(np.float32)
        v = rng.standard_normal((1, keys, n)).astype(host_t)
        dv = to_dev(v)
        maps = _device_maps(flash3.tensor_map(dv.__cuda_array_interface__["data"][0], keys, 1, n, keys, bf16))
        kernel, smem = k["wgmma_rs"](n, bf16, keys)
        out = cuda.to_device(np.full((64, n), np.nan, np.float32))
        _launch(kernel, 128, smem, maps, cuda.to_device(p), out)
        want = p.astype(np.float64) @ v[0].astype(np.float64)
    got = out.copy_to_host()
    err = float(np.nanmax(np.abs(got - want))) if np.isfinite(got).any() else float("nan")
    return {"passed": bool(np.isfinite(got).all() and np.allclose(got, want, rtol=1e-3, atol=1e-2)),
            "max_abs_err": err, "nan": int(np.isnan(got).sum())}


PROBES = ["mbar_rounds", "tma_d128_rows64", "tma_rewrite", "wgmma-ss_n64_f16", "wgmma-ss_n128_f16", "wgmma-ss_n64_bf16",
          "wgmma-rs_n64_f16", "wgmma-rs_n128_f16", "wgmma-rs_n128_bf16"]
FP8_PROBES = ["wgmma-ss8_n64", "wgmma-ss8_n128", "wgmma-rs8_n64", "wgmma-rs8_n128"]


def stage_probe(names=None, file="probe.json"):
    result = {"provenance": provenance(), "probes": []}
    for name in names or PROBES:
        rc, tail = in_subprocess(["_probe", name], timeout=120)
        rec = {"probe": name, "returncode": rc}
        try:
            rec.update(json.loads(tail.strip().splitlines()[-1]))
        except Exception:  # noqa: BLE001 - a crash or hang: keep its output
            rec.update({"passed": False, "output": tail})
        result["probes"].append(rec)
        log("probe", name, "PASS" if rec.get("passed") else f"FAIL ({rc})", {k: v for k, v in rec.items()
                                                                          if k not in ("output", "probe")})
        save(file, result)
    return result


# --- (b) verify -------------------------------------------------------------------------------------

def cases():
    from workbench import Problem

    c = [Problem(1, 4, 4, 1, 1, 64, "float16"),
         Problem(2, 8, 2, 97, 97, 64, "float16", causal=True),
         Problem(1, 8, 1, 113, 203, 128, "bfloat16", causal=True),
         Problem(1, 8, 8, 203, 113, 64, "bfloat16"),
         Problem(1, 8, 2, 1025, 1025, 128, "float16", window=(256, 0)),
         Problem(2, 4, 4, 300, 300, 128, "float16", window=(17, 5)),
         Problem(1, 4, 4, 2048, 2048, 64, "bfloat16", causal=True),
         Problem(1, 32, 1, 1, 77, 128, "bfloat16"),
         Problem(2, 32, 4, 513, 700, 128, "bfloat16", window=(128, 0))]
    return c[:4] if QUICK else c


def schedules():
    from workbench.kernels import flash3 as f3

    return {  # simplest first: a failure in one localises the bug to what the next one adds
        "one_role": {"warp_specialized": f3.ONE_ROLE, "pingpong": f3.TOGETHER, "intra_overlap": f3.IN_ORDER},
        "in_order": {"pingpong": f3.TOGETHER, "intra_overlap": f3.IN_ORDER},
        "overlap": {"pingpong": f3.TOGETHER},
        "pingpong": {"intra_overlap": f3.IN_ORDER},
        "fa3": {},
        "fa3_bc64_4stages": {"Bc": 64, "stages": 4},
    }


def verify_schedule(name):
    from workbench.harness import verify

    out = []
    for i, p in enumerate(cases()):
        try:
            rep = verify.check("flash3", p, seed=7 + i, config=schedules()[name])
            out.append({"problem": p.describe(), "passed": rep.passed, "report": rep.as_dict()})
        except Exception:  # noqa: BLE001
            out.append({"problem": p.describe(), "passed": False, "error": traceback.format_exc()[-2000:]})
    return out


def stage_verify():
    result = {"provenance": provenance(), "schedules": {}}
    for name in schedules():
        rc, tail = in_subprocess(["_verify", name], timeout=90)
        try:
            rows = json.loads(tail.strip().splitlines()[-1])
        except Exception:  # noqa: BLE001
            rows = [{"passed": False, "returncode": rc, "output": tail}]
        result["schedules"][name] = rows
        log("verify", name, f"{sum(r.get('passed', False) for r in rows)}/{len(rows)} passed", "" if rc == 0 else rc)
        save("verify.json", result)


# --- (c) time ---------------------------------------------------------------------------------------

def stage_time(schedules_only=False):
    """Round-robin timings; `schedules_only`: flash3's schedules at N = 4096 (the 'schedules'
    stage), else flash3 at its default beside flash2_mma and the peers at every shape."""
    import torch
    from numba import cuda

    from workbench import Problem
    from workbench.harness import peers, runner, timing
    from workbench.kernels import get

    result = {"provenance": provenance(), "timing": []}
    seqs = (4096,) if QUICK or schedules_only else (1024, 4096, 16384)
    problems = [Problem(8, h, h, n, n, d, "float16", causal=c) for h, d in ((32, 64), (16, 128))
                for n in seqs for c in (False, True)]
    if not schedules_only:
        problems += [Problem(8, h, h, 4096, 4096, d, "bfloat16", causal=c) for h, d in ((32, 64), (16, 128))
                     for c in (False, True)]
    variants = {"flash3": {}}
    if schedules_only:  # (each compiles once per D: ~15 s of host time each)
        variants.update({"flash3 in_order": {"intra_overlap": 1}, "flash3 no-pingpong": {"pingpong": 1},
                         "flash3 one_role": {"warp_specialized": 1, "pingpong": 1, "intra_overlap": 1},
                         "flash3 Bc64x4": {"Bc": 64, "stages": 4}})
    for p in problems:
        dt = torch.float16 if p.dtype == "float16" else torch.bfloat16
        g = torch.Generator(device="cuda").manual_seed(0)
        tq, tk, tv = (torch.randn(p.q_shape, device="cuda", dtype=dt, generator=g) for _ in range(3))
        to = torch.empty_like(tq)
        tl = torch.empty(p.lse_shape, device="cuda", dtype=torch.float32)
        view = (lambda x: cuda.as_cuda_array(x.view(torch.int16)).view(np.uint16)) if p.dtype == "bfloat16" \
            else cuda.as_cuda_array
        dq, dk, dv, do = (view(x) for x in (tq, tk, tv, to))
        dl = cuda.as_cuda_array(tl)
        calls = {}
        others = {} if schedules_only else {"flash2_mma": None}
        for name, var in {**variants, **others}.items():
            rung = get("flash3" if name.startswith("flash3") else name)
            try:
                cfg = runner.check_config(rung, p, var)
                pool = runner.Pool()
                runner.run(rung, p, cfg, dq, dk, dv, do, dl, pool=pool)
                cuda.synchronize()
                calls[name] = (lambda rung=rung, cfg=cfg, pool=pool, p=p, arrays=(dq, dk, dv, do, dl):
                               runner.run(rung, p, cfg, *arrays, pool=pool, track_memory=False))
            except Exception as exc:  # noqa: BLE001
                result["timing"].append({"kernel": name, "problem": p.describe(), "error": repr(exc)[:300]})
                log(name, p.describe(), "ERROR", repr(exc)[:200])
        for peer in ("sdpa-flash", "sdpa-cudnn"):
            try:
                calls[peer] = peers.build(peer, p, dq, dk, dv)
            except Exception as exc:  # noqa: BLE001
                log(peer, "n/a", repr(exc)[:200])
        samples = {n: [] for n in calls}
        for _ in range(3):  # round-robin: clock drift is shared
            for n, fn in calls.items():
                samples[n].append(timing.time_call(fn, repeat=10, warmup=1, budget_s=1.0).median_ms)
        for n, ms in samples.items():
            med = float(np.median(ms))
            result["timing"].append({"kernel": n, "problem": p.describe(), "causal": p.causal, "dtype": p.dtype,
                                     "round_medians_ms": ms, "median_ms": med,
                                     "tflops": p.flops() / (med * 1e-3) / 1e12})
            log(f"{n:22s} {p.describe():40s} {med:8.3f} ms {p.flops() / (med * 1e-3) / 1e12:7.1f} TFLOP/s")
        save("schedules.json" if schedules_only else "time.json", result)
        del tq, tk, tv, to, tl, dq, dk, dv, do, dl, calls
        torch.cuda.empty_cache()


# --- (e) FP8 -----------------------------------------------------------------------------------------

def verify_fp8():
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
    from test_flash3 import FP8_CASES

    from workbench.harness import verify

    out = []
    for i, p in enumerate(FP8_CASES[:3] if QUICK else FP8_CASES):
        try:
            rep = verify.check("flash3", p, seed=FP8_CASES.index(p) + 11)
            out.append({"problem": p.describe(), "passed": rep.passed, "report": rep.as_dict()})
        except Exception:  # noqa: BLE001
            out.append({"problem": p.describe(), "passed": False, "error": traceback.format_exc()[-2000:]})
    return out


def stage_fp8():
    """FP8 probes, then verification, then FP8 beside float16 (flash3 both, round-robin)."""
    import torch
    from numba import cuda

    from workbench import Problem
    from workbench.harness import runner, timing
    from workbench.kernels import get

    result = {"provenance": provenance(), "probes": stage_probe(FP8_PROBES, "fp8.json")["probes"]}
    rc, tail = in_subprocess(["_verify_fp8"], timeout=240)
    try:
        result["verify"] = json.loads(tail.strip().splitlines()[-1])
    except Exception:  # noqa: BLE001 - a hang or crash: keep its output
        result["verify"] = [{"passed": False, "returncode": rc, "output": tail}]
    log("fp8 verify", f"{sum(r.get('passed', False) for r in result['verify'])}/{len(result['verify'])} passed")
    save("fp8.json", result)
    if not all(r.get("passed") for r in result["verify"]):
        return  # timings of a wrong kernel mean nothing
    rung, result["timing"] = get("flash3"), []
    seqs = (4096,) if QUICK else (1024, 4096, 16384)
    for h, d in ((32, 64), (16, 128)):
        for n in seqs:
            for causal in (False, True):
                p16 = Problem(8, h, h, n, n, d, "float16", causal=causal)
                p8 = Problem(8, h, h, n, n, d, "float8_e4m3fn", causal=causal, descale=(0.01, 0.01, 0.01))
                g = torch.Generator(device="cuda").manual_seed(0)
                x = [torch.randn(p16.q_shape, device="cuda", dtype=torch.float16, generator=g) for _ in range(3)]
                x8 = [(t * 100).clamp(-448, 448).to(torch.float8_e4m3fn) for t in x]
                o = torch.empty_like(x[0])
                lse = cuda.as_cuda_array(torch.empty(p16.lse_shape, device="cuda", dtype=torch.float32))
                calls = {}
                for name, p, ins in (("flash3 fp16", p16, x), ("flash3 fp8", p8, x8)):
                    arrays = [cuda.as_cuda_array(t.view(torch.uint8) if t.dtype == torch.float8_e4m3fn else t)
                              for t in ins] + [cuda.as_cuda_array(o), lse]
                    cfg, pool = runner.check_config(rung, p), runner.Pool()
                    runner.run(rung, p, cfg, *arrays, pool=pool)
                    cuda.synchronize()
                    calls[name] = (lambda p=p, cfg=cfg, pool=pool, arrays=arrays:
                                   runner.run(rung, p, cfg, *arrays, pool=pool, track_memory=False))
                samples = {k: [] for k in calls}
                for _ in range(3):
                    for k, fn in calls.items():
                        samples[k].append(timing.time_call(fn, repeat=10, warmup=1, budget_s=1.0).median_ms)
                med = {k: float(np.median(v)) for k, v in samples.items()}
                for k, ms in med.items():
                    result["timing"].append({"kernel": k, "problem": p16.describe(), "round_medians_ms": samples[k],
                                             "median_ms": ms, "tflops": p16.flops() / (ms * 1e-3) / 1e12})
                ratio = med["flash3 fp16"] / med["flash3 fp8"]
                result["timing"].append({"problem": p16.describe(), "fp8_speedup": ratio, "target": 1.5})
                log(f"{p16.describe():40s} fp16 {med['flash3 fp16']:.3f} ms  fp8 {med['flash3 fp8']:.3f} ms  x{ratio:.2f}")
                save("fp8.json", result)
                del x, x8, o, lse, calls
                torch.cuda.empty_cache()


if __name__ == "__main__":
    if STAGE == "_probe":  # (a child process: one probe, its record as the last line)
        print(json.dumps(probe_one(sys.argv[3])))
    elif STAGE == "_verify":
        print(json.dumps(verify_schedule(sys.argv[3]), default=str))
    elif STAGE == "_verify_fp8":
        print(json.dumps(verify_fp8(), default=str))
    else:
        for stage, fn in (("probe", stage_probe), ("verify", stage_verify), ("time", stage_time),
                          ("schedules", lambda: stage_time(schedules_only=True)), ("fp8", stage_fp8)):
            if STAGE in (stage, "all"):
                fn()
        log("done")
