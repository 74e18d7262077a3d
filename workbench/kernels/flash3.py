"""Rung 7 — flash3: FlashAttention-3's forward (Shah et al. 2024) on Hopper's own instructions.

Rung 6 runs flash2 on the tensor cores through `mma.sync`, Ampere's instruction: every warp
loads its fragments from shared memory into registers (`ldmatrix`), multiplies 16×8×16, and waits
for the result; and every warp also copies K and V (`cp.async`). On an H100 that reaches about
half of SDPA-cuDNN. Hopper adds four things, and FA3 is the algorithm that uses them together.
Each lives in the linked `hopper.cu`, one PTX instruction per function, as `mma.cu` does for rung 6:

- **wgmma** (`wgmma.mma_async`): the 4 warps of a *warpgroup* (128 threads) issue one 64×N×16
  product together, reading A and B straight from shared memory through *matrix descriptors*
  (no ldmatrix, no registers for K or V), asynchronously: `commit_group` closes a batch, and
  `wait_group` waits for it. The accumulator's layout per warp is exactly mma.sync's C fragment
  (lane 4g + t holds rows g, g + 8, columns 2t, 2t + 1 of every 8), so the softmax of rung 6 carries
  over unchanged; P goes from S's registers into the next product as its A operand, as in rung 6.
- **TMA** (`cp.async.bulk.tensor`): one thread asks the copy engine for a whole tile (a box of a
  tensor described by a *tensor map*, built on the host), which lands in shared memory already
  swizzled for wgmma (128-byte swizzle: 16-byte chunk c of row r at chunk c ^ (r % 8), no bank
  conflicts). Rows past the sequence's end arrive as zeros: the maps are 3-D, (D, N, B·H), so a
  partial tile never reads the next head.
- **mbarrier** with transaction counts: a tile's *full* barrier completes when its bytes have
  landed; an *empty* barrier completes when the consumers are done with a buffer. These make a
  ring of `stages` K/V buffers between a producer and the consumers, with no block-wide barrier.
- **warp specialization** and **setmaxnreg**: the CTA has 3 warpgroups. Warpgroup 0 is the
  *producer*: one of its threads issues the TMA loads, and the warpgroup gives its registers back
  (`setmaxnreg.dec` to 24). Warpgroups 1 and 2 are *consumers*, 64 query rows each (Br = 128),
  and take those registers (`setmaxnreg.inc` to 240: S, P and O of a 64×128 tile fit).

The algorithm is flash2's (Algorithm 1 of FA2), with FA3's two schedules on top (Algorithm 2 of
FA3); each consumer warpgroup runs, for its 64 rows of Q_i:

    wait for Q_i (TMA, once)
    m = -inf, l = 0, O = 0                                   (registers: the wgmma layout)
    for j = j_start … j_end − 1:                             (Tc tiles of Bc keys)
        wait until K_j is full
        S = Q_i K_jᵀ                                        (wgmma, both operands in shared memory)
        m_new = max(m, rowmax(S)); P = 2^(c·S − c·m_new)     (4 lanes share a row: 2 shuffles)
        alpha = 2^(c·m − c·m_new); l = alpha·l + rowsum(P); O = alpha·O
        wait until V_j is full
        O = O + P V_j                                       (wgmma, P from registers, V transposed)
        mark buffer j empty                                 (the producer refills it)
    O = O / l;  LSE = ln 2 · (c·m + log2 l)

while the producer runs ahead: `for j: wait until buffer j % stages is empty; TMA K_j, V_j into it`.

FA3's two overlaps, each a config flag so a GPU session can turn them on one at a time:

- **intra_overlap** (intra-warpgroup, FA3 §3.2): S_j = Q K_jᵀ and O += P_{j−1} V_{j−1} are issued
  together, and the warpgroup computes the softmax of S_j while the second product runs (wgmma is
  asynchronous: `wait_group 1` waits for S_j only). It costs the registers of two tiles at once:
  S_j (floats) and P_{j−1} (16-bit A fragments).
- **pingpong** (inter-warpgroup, FA3 §3.1): two named barriers hand the tensor cores back and forth,
  so warpgroup 1's GEMMs run while warpgroup 2 does its softmax (exp2 on the MUFU unit is slow next
  to wgmma: 3.9 TFLOP/s of exp against 989 of matmul), then the other way round.

What the diff against flash2_mma teaches: no `ldmatrix` and no K/V fragments (wgmma reads shared
memory), no `cp.async` by every thread and no `__syncthreads` in the loop (one TMA thread, mbarriers),
no padded rows (the swizzle removes bank conflicts), dynamic shared memory above 48 KiB (160 KiB at
D = 128: Q, and 2 stages of K and V, 128 keys each), and 3 warpgroups with different jobs.

Variants (compile-time, config values 1 = the simpler design, 2 = FA3's):
- warp_specialized: ONE_ROLE — 2 warpgroups, thread 0 issues the TMA loads in line and the
  buffers are recycled behind a block barrier (the simplest correct version); SPECIALIZED — the
  producer warpgroup, the empty barriers and setmaxnreg.
- pingpong: TOGETHER or PINGPONG (needs SPECIALIZED).
- intra_overlap: IN_ORDER or OVERLAP.

FP8 (FA3 §3.3), the same algorithm on e4m3 codes (dtype "float8_e4m3fn", uint8 on the device):
- **k32 wgmma**: `m64nNk32 .e4m3` does twice the work of k16 per instruction (the tensor cores'
  FP8 rate is twice fp16's); a row of D codes is one 128-byte (D = 128) or 64-byte (D = 64) TMA box
  and swizzle span, so Q Kᵀ is D / 32 products on the same kind of descriptors.
- **V transposed in shared memory**: 8-bit operands have no transpose bit, so both must be K-major;
  for O += P V that is V_jᵀ (d, key). The producer warpgroup makes it: after issuing tile j's TMA
  it waits for V_{j−1} and moves 4×4-byte blocks (4 word loads, 8 byte permutes, 4 word stores per
  thread) into a second buffer per stage, fences (generic → async proxy) and arrives on that
  stage's vt_full barrier, which the consumers wait on instead of v_full. Cost: a pass of Bc·D bytes
  through shared memory per tile (stores 4-way bank-conflicted), taken off the consumers' path.
- **P as the 8-bit A operand**: S's accumulator gives a lane keys 2t, 2t+1, 8+2t, 9+2t of each 16,
  the k32 A fragment wants 4 consecutive ones (FA3 permutes bytes across registers for this). Any
  order of keys gives the same Σ P V if V's rows follow it, so the transpose writes V_jᵀ's key
  columns in the accumulator's order and P is packed in place: 2 cvt.e4m3x2 per register.
- **Descaling**: per-tensor scales fold in for free: q_descale·k_descale into c (the scores' base-2
  factor), v_descale into 1/l at the end; LSE is the dequantised problem's. P is computed as 2⁸·P
  (subtract 8 from the exponent: no extra instruction), so its small values land in e4m3's normal
  range instead of its subnormals; l carries the same 2⁸, LSE subtracts it.
- Error: P keeps 3 mantissa bits, so O is off by a few percent of its rows' size (the verifier's
  FP8 rule, against float64 on the dequantised inputs); O is float16, as FA3's.
Head dims 64 and 128; float16, or bfloat16 passed as their uint16 bit patterns, or FP8 e4m3 codes;
O in the input dtype (float16 for FP8), LSE in float32. sm_90a only: the simulator cannot link CUDA C++ and has no wgmma or TMA.
"""

import functools
import math
import os

import numpy as np
from numba import config as numba_config
from numba import cuda, float32, int32, types, uint32, uint64

from .common import FASTMATH, LN2, LOG2E, NEG_INF, cdiv, kv_tile_range, unmasked_keys, visible
from .contract import FORWARD, Needs
from .flash2_mma import address_of

LESSON = ("Hopper: wgmma from shared memory, TMA tiles on mbarriers, a producer warpgroup feeding "
          "two consumers (setmaxnreg), ping-pong and softmax/GEMM overlap")
ARGS = FORWARD  # (O in the problem's output dtype: the I/O dtype, or float16 for FP8 inputs)

ONE_ROLE, SPECIALIZED = 1, 2  # config["warp_specialized"]
TOGETHER, PINGPONG = 1, 2  # config["pingpong"]
IN_ORDER, OVERLAP = 1, 2  # config["intra_overlap"]
# FA3's design at both head dims: Br = 128 (two consumer warpgroups of 64 rows), Bc = 128, two
# K/V stages (160 KiB of shared memory at D = 128, 80 KiB at D = 64).
DEFAULT_CONFIG = {"Br": 128, "Bc": 128, "stages": 2, "warp_specialized": SPECIALIZED,
                  "pingpong": PINGPONG, "intra_overlap": OVERLAP}
HEAD_DIMS = (64, 128)
FP8 = "float8_e4m3fn"  # e4m3 codes (uint8 on the device) with per-tensor descale factors
DTYPES = ("float16", "bfloat16", FP8)
CC = (9, 0, "a")  # wgmma and setmaxnreg are sm_90a features: compile checks must ask for them
GPU_ONLY = ("the simulator cannot link CUDA C++ (hopper.cu) and has no wgmma, TMA or mbarrier; "
            "flash3 runs on a Hopper GPU (sm_90a) only, and its compile check runs with no GPU "
            "(pytest tests/test_flash3.py)")
HOPPER_CU = os.path.join(os.path.dirname(__file__), "hopper.cu")
WG = 128  # threads in a warpgroup
PANEL = 64  # 16-bit elements in a 128-byte swizzled row: a tile is D / 64 panels of rows × 128 B
ATOM = 1024  # a swizzle atom (8 rows of 128 bytes): tiles start 1024-byte aligned
PRODUCER_REGS, CONSUMER_REGS = 24, 240  # setmaxnreg: 128·24 + 256·240 <= 65 536
# FP8: the producer warpgroup also transposes V_j (addresses, 4 words and their permutes live at
# once), so it keeps 40 registers; the consumers need fewer (P is 8-bit): 128·40 + 256·232 <= 65 536.
PRODUCER_REGS_FP8, CONSUMER_REGS_FP8 = 40, 232
P_SHIFT = 8  # FP8: P is computed as 2^8·P (in [0, 256]): e4m3's normal range, not its subnormals
SCHEDULER_BARRIER = 1  # named barriers 1 and 2: consumer warpgroup 0's and 1's turn (0 is syncthreads)
TMAP_BYTES = 128  # a CUtensorMap
FULL = 0xFFFFFFFF


def _declare():
    """hopper.cu's functions, typed for Numba (C ABI: plain arguments, plain return values)."""
    vp, u32, u64, i32 = types.voidptr, types.uint32, types.uint64, types.int32
    f32, void = types.float32, types.void
    sig = {
        "wbh_shared_address": u32(vp),
        "wbh_address": u64(vp),
        "wbh_store_u32": void(vp, u64, u32),
        "wbh_pack_f16x2": u32(f32, f32),
        "wbh_pack_bf16x2": u32(f32, f32),
        "wbh_mbar_init": void(u32, u32),
        "wbh_fence_mbar_init": void(),
        "wbh_fence_proxy_async": void(),
        "wbh_mbar_arrive": void(u32),
        "wbh_mbar_arrive_expect_tx": void(u32, u32),
        "wbh_mbar_wait": void(u32, u32),
        "wbh_tensormap_acquire": void(u64),
        "wbh_tensormap_prefetch": void(u64),
        "wbh_tma_load_3d": void(u32, u64, i32, i32, i32, u32),
        "wbh_wgmma_fence": void(),
        "wbh_wgmma_commit": void(),
        "wbh_wgmma_wait0": void(),
        "wbh_wgmma_wait1": void(),
        "wbh_desc_sw128": u64(u32, u32, u32),
        "wbh_fence_acc32": void(vp),
        "wbh_fence_acc64": void(vp),
        "wbh_setmaxnreg_dec24": void(),
        "wbh_setmaxnreg_inc240": void(),
        "wbh_setmaxnreg_dec40": void(),
        "wbh_setmaxnreg_inc232": void(),
        "wbh_desc_sw64": u64(u32, u32, u32),
        "wbh_pack_e4m3x4": u32(f32, f32, f32, f32),
        "wbh_prmt": u32(u32, u32, u32),
        "wbh_lds32": u32(u32),
        "wbh_sts32": void(u32, u32),
        "wbh_bar_sync": void(u32, u32),
        "wbh_bar_arrive": void(u32, u32),
    }
    for n in (64, 128):
        for t in ("f16", "bf16", "e4m3"):
            sig[f"wbh_wgmma_ss_n{n}_{t}"] = void(vp, u64, u64, i32)
            sig[f"wbh_wgmma_rs_n{n}_{t}"] = void(vp, vp, u64)
    return {name: cuda.declare_device(name, s, link=HOPPER_CU, abi="c") for name, s in sig.items()}


def tiles(problem, config):
    """(Br, Bc, stages) for this problem."""
    return config["Br"], config["Bc"], config["stages"]


def layout(Br, Bc, D, stages, fp8=False):
    """Byte offsets in the (1024-aligned) dynamic shared memory: Q_i; K and V, `stages` buffers
    each; the mbarriers (q_full; k_full, v_full, empty per stage); and the total to allocate (with
    the slack that aligns the base). FP8 (one byte an element): V is the TMA's landing buffer, and
    `stages` more buffers hold V_jᵀ (vt), with a vt_full barrier per stage after the others."""
    size = 1 if fp8 else 2
    q_bytes, kv_bytes = size * Br * D, size * Bc * D
    k0 = q_bytes
    v0 = k0 + stages * kv_bytes
    vt0 = v0 + stages * kv_bytes
    bars = vt0 + (stages * kv_bytes if fp8 else 0)
    n_bars = 1 + (4 if fp8 else 3) * stages
    return {"q": 0, "k": k0, "v": v0, "vt": vt0, "kv_bytes": kv_bytes, "q_bytes": q_bytes,
            "bars": bars, "total": bars + 8 * n_bars + ATOM}


def shared_bytes(Br, Bc, D, stages, fp8=False):
    return layout(Br, Bc, D, stages, fp8)["total"]


@functools.cache
def build(Bc, D, stages, bf16, warp_specialized=SPECIALIZED, pingpong=PINGPONG, intra_overlap=OVERLAP,
          Br=128, fp8=False):
    """The kernel for these tiles, head dim D, input type (bf16; fp8: e4m3 codes, O in float16) and
    schedule."""
    if numba_config.ENABLE_CUDASIM:
        raise RuntimeError(GPU_ONLY)
    f = _declare()
    shared_address, address, store_u32 = f["wbh_shared_address"], f["wbh_address"], f["wbh_store_u32"]
    pack = f["wbh_pack_bf16x2"] if bf16 else f["wbh_pack_f16x2"]
    mbar_init, fence_mbar_init = f["wbh_mbar_init"], f["wbh_fence_mbar_init"]
    arrive, mbar_wait = f["wbh_mbar_arrive"], f["wbh_mbar_wait"]
    arrive_expect_tx = f["wbh_mbar_arrive_expect_tx"]
    tensormap_acquire, tma_load = f["wbh_tensormap_acquire"], f["wbh_tma_load_3d"]
    wgmma_fence, commit, wait0, wait1 = (f["wbh_wgmma_fence"], f["wbh_wgmma_commit"],
                                         f["wbh_wgmma_wait0"], f["wbh_wgmma_wait1"])
    desc = f["wbh_desc_sw128"]
    t_name = "e4m3" if fp8 else "bf16" if bf16 else "f16"
    mma_s = f[f"wbh_wgmma_ss_n{Bc}_{t_name}"]  # S (64 × Bc) = Q (64 × D) K_jᵀ, k-steps of 16 of D
    mma_o = f[f"wbh_wgmma_rs_n{D}_{t_name}"]  # O (64 × D) += P (64 × 16 keys) V (16 keys × D)
    fence_s = f["wbh_fence_acc64"] if Bc == 128 else f["wbh_fence_acc32"]
    fence_o = f["wbh_fence_acc64"] if D == 128 else f["wbh_fence_acc32"]
    setmaxnreg_dec, setmaxnreg_inc = ((f["wbh_setmaxnreg_dec40"], f["wbh_setmaxnreg_inc232"]) if fp8 else
                                      (f["wbh_setmaxnreg_dec24"], f["wbh_setmaxnreg_inc240"]))
    bar_sync, bar_arrive = f["wbh_bar_sync"], f["wbh_bar_arrive"]
    # FP8 only: Q and K's descriptor (rows of D bytes: the 128-byte swizzle at D = 128, the 64-byte
    # one at D = 64), P's 8-bit pack, and V_j's transpose (byte permutes, 32-bit shared accesses).
    desc_qk8 = desc if D == 128 else f["wbh_desc_sw64"]
    pack8, prmt = f["wbh_pack_e4m3x4"], f["wbh_prmt"]
    lds32, sts32, fence_proxy_async = f["wbh_lds32"], f["wbh_sts32"], f["wbh_fence_proxy_async"]

    FP8 = fp8
    if FP8 and not (Bc == 128 and stages >= 2 and warp_specialized == SPECIALIZED):
        raise ValueError("FP8 needs Bc = 128, stages >= 2 and warp_specialized = SPECIALIZED")
    SPEC = warp_specialized == SPECIALIZED
    PP = pingpong == PINGPONG
    OV = intra_overlap == OVERLAP
    if PP and not SPEC:
        raise ValueError("pingpong needs warp_specialized = SPECIALIZED")
    if OV and stages < 2:  # S_j waits for K_j, which refills the buffer P_{j-1} V_{j-1} still holds
        raise ValueError("intra_overlap = OVERLAP needs stages >= 2")
    THREADS = WG * (3 if SPEC else 2)
    CONSUMER0 = 1 if SPEC else 0  # the first consumer warpgroup
    L = layout(Br, Bc, D, stages, FP8)
    Q_OFF, K_OFF, V_OFF, VT_OFF, BARS = L["q"], L["k"], L["v"], L["vt"], L["bars"]
    KV_BYTES, Q_BYTES = L["kv_bytes"], L["q_bytes"]
    PANELS = 1 if FP8 else D // PANEL  # FP8: a row of D bytes is one box (128 or 64 bytes)
    NS = Bc // 8  # n-tiles of S (8 keys each)
    NO = D // 8  # n-tiles of O (8 columns of D each)
    KC = Bc // 32 if FP8 else Bc // 16  # k-steps of P V (16 keys each; FP8: 32)
    DK = D // 32 if FP8 else D // 16  # k-steps of Q Kᵀ (16 of D each; FP8: 32)
    QK_SBO = 8 * D  # FP8: from 8 rows of Q or K to the next (one swizzle atom)
    V_READY = 1 + 3 * stages if FP8 else 1 + stages  # the barriers consumers wait on before P V_j
    V_LBO = Bc * 128  # V is MN-major: from one 64-column panel of D to the next
    # Empty barriers: one arrival per consumer warp (8) once its products have read the buffer.
    EMPTY_ARRIVALS = 8

    @cuda.jit(device=True, inline="always")
    def cta_tiles(q, k, group, left, right):
        """This CTA's query block (its first row i0, heaviest blocks first), its head's row in the
        Q and K/V tensor maps (B·H and B·Hkv: GQA), and the KV tiles its rows see (flash2's
        rule): j_start and how many."""
        heads = q.shape[1]
        b = cuda.blockIdx.y // heads
        h = cuda.blockIdx.y - b * heads
        n_q = q.shape[2]
        n_kv = k.shape[2]
        shift = n_kv - n_q
        i0 = (cuda.gridDim.x - 1 - cuda.blockIdx.x) * Br
        j_start, j_end = kv_tile_range(i0, min(i0 + Br, n_q) - 1, Bc, shift, left, right, n_kv)
        return i0, b * heads + h, b * k.shape[1] + h // group, j_start, j_end - j_start

    @cuda.jit(device=True, inline="always")
    def load_tile(base, tmap, it, j, bh_kv):
        """The producer's step for tile j (its it-th): K_j and V_j into buffer it % stages, each
        completing on its own full barrier (TMA: D / 64 boxes of Bc rows × 64 columns each)."""
        st = it % stages
        k_full = base + uint32(BARS + 8 * (1 + st))
        v_full = base + uint32(BARS + 8 * (1 + stages + st))
        arrive_expect_tx(k_full, uint32(KV_BYTES))
        for p in range(PANELS):
            tma_load(base + uint32(K_OFF + st * KV_BYTES + p * Bc * 128), tmap + uint64(TMAP_BYTES),
                     int32(PANEL * p), int32(j * Bc), int32(bh_kv), k_full)
        arrive_expect_tx(v_full, uint32(KV_BYTES))
        for p in range(PANELS):
            tma_load(base + uint32(V_OFF + st * KV_BYTES + p * Bc * 128), tmap + uint64(2 * TMAP_BYTES),
                     int32(PANEL * p), int32(j * Bc), int32(bh_kv), v_full)

    @cuda.jit(device=True, inline="always")
    def load_q(base, tmap, i0, bh_q):
        q_full = base + uint32(BARS)
        arrive_expect_tx(q_full, uint32(Q_BYTES))
        for p in range(PANELS):
            tma_load(base + uint32(Q_OFF + p * Br * 128), tmap, int32(PANEL * p), int32(i0), int32(bh_q),
                     q_full)

    @cuda.jit(device=True, inline="always")
    def issue_s(s, base, st, wg):
        """S = Q_i K_jᵀ for this warpgroup's 64 rows: DK wgmma's of k = 16, both operands K-major
        in shared memory (Q rows 64·wg …, K_j in buffer st); one commit group."""
        wgmma_fence()
        for kk in range(DK):
            if FP8:  # one panel of D bytes a row; a k-step of 32 elements is 32 bytes
                a = desc_qk8(base + uint32(Q_OFF + wg * 64 * D + 32 * kk), uint32(16), uint32(QK_SBO))
                b = desc_qk8(base + uint32(K_OFF + st * KV_BYTES + 32 * kk), uint32(16), uint32(QK_SBO))
            else:
                p, within = kk // 4, (kk % 4) * 32  # 64-column panel, 16-element step inside it
                a = desc(base + uint32(Q_OFF + p * Br * 128 + wg * 64 * 128 + within), uint32(16), uint32(ATOM))
                b = desc(base + uint32(K_OFF + st * KV_BYTES + p * Bc * 128 + within), uint32(16), uint32(ATOM))
            mma_s(address_of(s), a, b, int32(1 if kk > 0 else 0))
        commit()

    @cuda.jit(device=True, inline="always")
    def issue_pv(o, pa, base, st):
        """O += P V_j: KC wgmma's of 16 keys, P's A fragments from registers, V_j MN-major (rows
        of keys, D contiguous: the transpose bit) in buffer st; one commit group."""
        wgmma_fence()
        for kc in range(KC):
            if FP8:  # V_jᵀ: D rows of Bc = 128 keys, K-major; a k-step of 32 keys is 32 bytes
                b = desc(base + uint32(VT_OFF + st * KV_BYTES + 32 * kc), uint32(16), uint32(ATOM))
            else:
                b = desc(base + uint32(V_OFF + st * KV_BYTES + kc * 16 * 128), uint32(V_LBO), uint32(ATOM))
            mma_o(address_of(o), address_of(pa[kc]), b)
        commit()

    @cuda.jit(device=True, inline="always")
    def softmax_row(s, m, l, alpha, r, row, j0, edge, n_q, n_kv, shift, left, right, c):
        """The online softmax of rung 6 for this thread's row g + 8r: mask (edge tiles only), row
        max over the quad, P = 2^(c·S − c·m_new) in place, l = alpha·l + rowsum(P); alpha kept for
        O. (r is a constant at each call: the accumulators stay in registers.)"""
        tq = cuda.threadIdx.x % 4
        mx = NEG_INF
        for nt in range(NS):
            for e in range(2):
                if edge:
                    key = j0 + 8 * nt + 2 * tq + e
                    if row >= n_q or key >= n_kv or not visible(row, key, shift, left, right):
                        s[nt, 2 * r + e] = NEG_INF
                mx = max(mx, s[nt, 2 * r + e])
        mx = max(mx, cuda.shfl_xor_sync(FULL, mx, 1))
        mx = max(mx, cuda.shfl_xor_sync(FULL, mx, 2))
        m_new = max(m[r], mx)
        # A row that has seen no key keeps m = -inf; 0 stands in so exp2 stays finite.
        cm = c * (m_new if m_new != NEG_INF else float32(0))
        alpha[r] = math.exp2(c * m[r] - cm)
        m[r] = m_new
        if FP8:
            cm = cm - float32(P_SHIFT)  # P (and l) scaled by 2^8: e4m3's normals reach down to 2^-6
        rowsum = float32(0)
        for nt in range(NS):
            for e in range(2):
                pv = math.exp2(c * s[nt, 2 * r + e] - cm)
                s[nt, 2 * r + e] = pv
                rowsum += pv
        l[r] = alpha[r] * l[r] + rowsum

    @cuda.jit(device=True, inline="always")
    def softmax(s, m, l, alpha, row0, j0, edge, n_q, n_kv, shift, left, right, c):
        """Both rows of this thread (g and g + 8 of its warp's 16)."""
        softmax_row(s, m, l, alpha, 0, row0, j0, edge, n_q, n_kv, shift, left, right, c)
        softmax_row(s, m, l, alpha, 1, row0 + 8, j0, edge, n_q, n_kv, shift, left, right, c)

    @cuda.jit(device=True, inline="always")
    def rescale_and_pack(o, s, pa, alpha):
        """O = alpha·O (rows g, g + 8), and P's A fragments (16 keys each) from S's accumulators:
        the C layout of keys 16kc … 16kc + 15 is the A layout, packed to 16 bits."""
        for nd in range(NO):
            o[nd, 0] *= alpha[0]
            o[nd, 1] *= alpha[0]
            o[nd, 2] *= alpha[1]
            o[nd, 3] *= alpha[1]
        for kc in range(KC):
            if FP8:
                # 32 keys a k-step; this lane's keys 2t, 2t+1, 8+2t, 9+2t of each 16 go in as the
                # A fragment's columns 4t … 4t+3 (V_jᵀ's key columns are stored in that order).
                pa[kc, 0] = pack8(s[4 * kc, 0], s[4 * kc, 1], s[4 * kc + 1, 0], s[4 * kc + 1, 1])
                pa[kc, 1] = pack8(s[4 * kc, 2], s[4 * kc, 3], s[4 * kc + 1, 2], s[4 * kc + 1, 3])
                pa[kc, 2] = pack8(s[4 * kc + 2, 0], s[4 * kc + 2, 1], s[4 * kc + 3, 0], s[4 * kc + 3, 1])
                pa[kc, 3] = pack8(s[4 * kc + 2, 2], s[4 * kc + 2, 3], s[4 * kc + 3, 2], s[4 * kc + 3, 3])
            else:
                pa[kc, 0] = pack(s[2 * kc, 0], s[2 * kc, 1])
                pa[kc, 1] = pack(s[2 * kc, 2], s[2 * kc, 3])
                pa[kc, 2] = pack(s[2 * kc + 1, 0], s[2 * kc + 1, 1])
                pa[kc, 3] = pack(s[2 * kc + 1, 2], s[2 * kc + 1, 3])

    @cuda.jit(device=True, inline="always")
    def store_row(o, lse, acc, m, l, r, row, b, h, bh_q, n_q, c, o_scale):
        """Row g + 8r of this thread: l summed over the quad, O / l packed to 16 bits (4 bytes per
        store: columns 2t, 2t + 1 of every 8), and its LSE (one lane of the quad)."""
        tq = cuda.threadIdx.x % 4
        l_row = l[r]
        l_row += cuda.shfl_xor_sync(FULL, l_row, 1)
        l_row += cuda.shfl_xor_sync(FULL, l_row, 2)
        if row < n_q:
            if FP8:  # v_descale folded into O once, with 1 / l
                inv_l = o_scale / l_row if l_row > float32(0) else float32(0)
            else:
                inv_l = float32(1) / l_row if l_row > float32(0) else float32(0)
            o_row = (np.uint64(bh_q) * np.uint64(n_q) + np.uint64(row)) * np.uint64(D) + np.uint64(2 * tq)
            for nd in range(NO):
                store_u32(address_of(o), o_row + np.uint64(8 * nd),
                          pack(acc[nd, 2 * r] * inv_l, acc[nd, 2 * r + 1] * inv_l))
            if tq == 0:
                if FP8:  # l carries P's 2^8
                    lse[b, h, row] = ((c * m[r] + math.log2(l_row) - float32(P_SHIFT)) * LN2
                                      if l_row > float32(0) else NEG_INF)
                else:
                    lse[b, h, row] = ((c * m[r] + math.log2(l_row)) * LN2 if l_row > float32(0)
                                      else NEG_INF)

    @cuda.jit(device=True, inline="always")
    def release(base, it, n_tiles, tmap, j_start, bh_kv):
        """Buffer it % stages is free again. Warp-specialized: each consumer warp's lane 0 arrives
        on its empty barrier (the producer waits for 8). One role: the whole CTA meets at a block
        barrier, then thread 0 loads tile it + stages into it."""
        if SPEC:
            if cuda.threadIdx.x % 32 == 0:
                arrive(base + uint32(BARS + 8 * (1 + 2 * stages + it % stages)))
        else:
            cuda.syncthreads()
            if cuda.threadIdx.x == 0 and it + stages < n_tiles:
                load_tile(base, tmap, it + stages, j_start + it + stages, bh_kv)

    @cuda.jit(device=True, inline="always")
    def v_byte(st, key, d):
        """Shared address of V_j[key, d] in its landing buffer, as the TMA's swizzle put it (rows
        of D bytes; 16-byte chunk c of row r at c ^ (r % 8) at D = 128, c ^ ((r / 2) % 4) at 64)."""
        chunk = (d >> 4) ^ ((key & 7) if D == 128 else ((key >> 1) & 3))
        return uint32(V_OFF + st * KV_BYTES + key * D + (chunk << 4) + (d & 15))

    @cuda.jit(device=True, inline="always")
    def vt_byte(st, d, c):
        """Shared address of V_jᵀ[d, c] (rows of Bc = 128 bytes, the 128-byte swizzle)."""
        return uint32(VT_OFF + st * KV_BYTES + d * Bc + (((c >> 4) ^ (d & 7)) << 4) + (c & 15))

    @cuda.jit(device=True, inline="always")
    def transpose_v(base, it, t):
        """FP8: V_j (key, d), landed in buffer it % stages, into V_jᵀ (d, key) for wgmma's K-major
        B, by the producer warpgroup. Each thread moves 4×4-byte blocks: 4 keys × 4 of D read as 4
        words, transposed in registers by 8 byte permutes, written as 4 words (4 keys of one d
        each). Word w of a V_jᵀ row holds keys 32·(w/8) + 16·((w/4)%2) + {2t, 2t+1, 8+2t, 9+2t}
        (t = w % 4): S's accumulator order, so P's fragments need no shuffle. Lanes: 4 words × 8
        groups of 4 d; loads conflict-free at D = 128 (2-way at 64), stores 4-way."""
        st = it % stages
        mbar_wait(base + uint32(BARS + 8 * (1 + stages + st)), uint32((it // stages) & 1))  # landed
        warp = t // 32
        lane = t % 32
        for blk in range(warp, D // 4, 4):  # D / 4 blocks of 4 words × 8 groups of d, 4 warps
            w = 4 * (blk % 8) + lane % 4  # V_jᵀ word: 4 key columns
            d0 = 4 * (8 * (blk // 8) + lane // 4)  # 4 d's
            key0 = 32 * (w // 8) + 16 * ((w // 4) % 2) + 2 * (w % 4)
            w0 = lds32(base + v_byte(st, key0, d0))
            w1 = lds32(base + v_byte(st, key0 + 1, d0))
            w2 = lds32(base + v_byte(st, key0 + 8, d0))
            w3 = lds32(base + v_byte(st, key0 + 9, d0))
            t0 = prmt(w0, w1, uint32(0x5140))  # (w0.0, w1.0, w0.1, w1.1)
            t1 = prmt(w0, w1, uint32(0x7362))  # (w0.2, w1.2, w0.3, w1.3)
            t2 = prmt(w2, w3, uint32(0x5140))
            t3 = prmt(w2, w3, uint32(0x7362))
            sts32(base + vt_byte(st, d0, 4 * w), prmt(t0, t2, uint32(0x5410)))  # d0: (w0.0 … w3.0)
            sts32(base + vt_byte(st, d0 + 1, 4 * w), prmt(t0, t2, uint32(0x7632)))
            sts32(base + vt_byte(st, d0 + 2, 4 * w), prmt(t1, t3, uint32(0x5410)))
            sts32(base + vt_byte(st, d0 + 3, 4 * w), prmt(t1, t3, uint32(0x7632)))
        fence_proxy_async()  # these generic writes before wgmma's (async proxy) reads
        arrive(base + uint32(BARS + 8 * (1 + 3 * stages + st)))

    @cuda.jit(device=True, inline="always")
    def turn(wg):
        """Ping-pong: wait for this warpgroup's turn at the tensor cores."""
        if PP:
            bar_sync(uint32(SCHEDULER_BARRIER + wg), uint32(2 * WG))

    @cuda.jit(device=True, inline="always")
    def pass_turn(wg):
        """Ping-pong: the other warpgroup's turn (its barrier counts our 128 arrivals)."""
        if PP:
            bar_arrive(uint32(SCHEDULER_BARRIER + 1 - wg), uint32(2 * WG))

    @cuda.jit(fastmath=FASTMATH, launch_bounds=(THREADS, 1))
    def flash3(q, k, v, o, lse, tmaps, c, group, left, right, o_scale):
        """CTA (x, bh) owns query block i = Tr − 1 − x (heaviest first) of head bh; consumer
        warpgroup wg its rows 64·wg …; the producer (warp-specialized) loads for both (FP8: and
        transposes V_j). c = log2(e)·scale (FP8: ·q_descale·k_descale); o_scale: FP8's v_descale."""
        smem = cuda.shared.array(0, types.uint8)
        s = cuda.local.array((NS, 4), float32)  # S, then P (floats), of this thread's rows
        pa = cuda.local.array((KC, 4), uint32)  # P as A fragments (16 keys each)
        acc = cuda.local.array((NO, 4), float32)  # O
        m = cuda.local.array(2, float32)  # running max of rows g, g + 8 (raw score units)
        l = cuda.local.array(2, float32)  # running sum over this lane's keys of those rows
        alpha = cuda.local.array(2, float32)

        t = cuda.threadIdx.x
        base = shared_address(address_of(smem))
        base = uint32((base + (ATOM - 1)) & ~(ATOM - 1))  # swizzled tiles start on an atom
        tmap = address(address_of(tmaps))  # Q's, K's and V's tensor maps, 128 bytes each
        if t == 0:  # the barriers, then (one role) the first loads
            mbar_init(base + uint32(BARS), uint32(1))
            for st in range(stages):
                mbar_init(base + uint32(BARS + 8 * (1 + st)), uint32(1))
                mbar_init(base + uint32(BARS + 8 * (1 + stages + st)), uint32(1))
                mbar_init(base + uint32(BARS + 8 * (1 + 2 * stages + st)), uint32(EMPTY_ARRIVALS))
                if FP8:  # V_jᵀ written: every producer thread arrives
                    mbar_init(base + uint32(BARS + 8 * (1 + 3 * stages + st)), uint32(WG))
            fence_mbar_init()
            if not SPEC:
                i0, bh_q, bh_kv, j_start, n_tiles = cta_tiles(q, k, group, left, right)
                if n_tiles > 0:
                    for i in range(3):
                        tensormap_acquire(tmap + uint64(TMAP_BYTES * i))
                    load_q(base, tmap, i0, bh_q)
                    for it in range(min(stages, n_tiles)):
                        load_tile(base, tmap, it, j_start + it, bh_kv)
        cuda.syncthreads()

        role = t // WG
        if SPEC and role == 0:
            # The producer: one thread issues every load; the others only give registers back.
            # (First thing after the split: what is live across setmaxnreg.dec must fit 24.)
            setmaxnreg_dec()
            if FP8:
                # Every producer thread waits for the buffer; thread 0 issues tile it's loads, then
                # the warpgroup transposes tile it − 1's V (landed meanwhile) into V_jᵀ.
                i0, bh_q, bh_kv, j_start, n_tiles = cta_tiles(q, k, group, left, right)
                if t == 0 and n_tiles > 0:
                    for i in range(3):
                        tensormap_acquire(tmap + uint64(TMAP_BYTES * i))
                    load_q(base, tmap, i0, bh_q)
                for it in range(n_tiles + 1):
                    if it < n_tiles:
                        mbar_wait(base + uint32(BARS + 8 * (1 + 2 * stages + it % stages)),
                                  uint32(((it // stages) & 1) ^ 1))
                        if t == 0:
                            load_tile(base, tmap, it, j_start + it, bh_kv)
                    if it > 0:
                        transpose_v(base, it - 1, t)
                return
            if t == 0:
                i0, bh_q, bh_kv, j_start, n_tiles = cta_tiles(q, k, group, left, right)
                if n_tiles > 0:
                    for i in range(3):
                        tensormap_acquire(tmap + uint64(TMAP_BYTES * i))
                    load_q(base, tmap, i0, bh_q)
                    for it in range(n_tiles):
                        # A buffer's first use waits on parity 1 of a fresh barrier: passes at once.
                        mbar_wait(base + uint32(BARS + 8 * (1 + 2 * stages + it % stages)),
                                  uint32(((it // stages) & 1) ^ 1))
                        load_tile(base, tmap, it, j_start + it, bh_kv)
            return

        # A consumer warpgroup: 64 rows of Q_i.
        if SPEC:
            setmaxnreg_inc()
        i0, bh_q, bh_kv, j_start, n_tiles = cta_tiles(q, k, group, left, right)
        heads = q.shape[1]
        b = bh_q // heads
        h = bh_q - b * heads
        n_q = q.shape[2]
        n_kv = k.shape[2]
        shift = n_kv - n_q
        inner_lo, inner_hi = unmasked_keys(i0, min(i0 + Br, n_q) - 1, shift, left, right, n_kv)
        wg = role - CONSUMER0
        tw = t - WG * role
        warp = tw // 32
        lane = tw % 32
        g = lane // 4
        row0 = i0 + 64 * wg + 16 * warp + g  # this thread's rows: row0 and row0 + 8
        m[0], m[1] = NEG_INF, NEG_INF
        l[0], l[1] = float32(0), float32(0)
        alpha[0], alpha[1] = float32(1), float32(1)
        for nd in range(NO):
            for e in range(4):
                acc[nd, e] = float32(0)

        if n_tiles > 0:
            mbar_wait(base + uint32(BARS), uint32(0))  # Q_i has landed
            if PP and wg == 0:
                pass_turn(1)  # warpgroup 0 goes first: its own barrier gets the first 128 arrivals
            if not OV:
                # FA3's schedule without the overlap: a warpgroup's turn at the tensor cores is
                # O += P_{j-1} V_{j-1} and S_j back to back; the softmax runs outside it.
                turn(wg)
                for it in range(n_tiles):
                    st = it % stages
                    phase = uint32((it // stages) & 1)
                    j0 = (j_start + it) * Bc
                    mbar_wait(base + uint32(BARS + 8 * (1 + st)), phase)
                    issue_s(s, base, st, wg)
                    pass_turn(wg)
                    wait0()
                    fence_s(address_of(s))
                    softmax(s, m, l, alpha, row0, j0, j0 < inner_lo or j0 + Bc > inner_hi,
                            n_q, n_kv, shift, left, right, c)
                    rescale_and_pack(acc, s, pa, alpha)
                    mbar_wait(base + uint32(BARS + 8 * (V_READY + st)), phase)
                    turn(wg)
                    fence_o(address_of(acc))
                    issue_pv(acc, pa, base, st)
                    wait0()
                    fence_o(address_of(acc))
                    release(base, it, n_tiles, tmap, j_start, bh_kv)
                pass_turn(wg)
            else:
                # Prologue: S_0 and its softmax (O is 0: alpha does not matter).
                j0 = j_start * Bc
                mbar_wait(base + uint32(BARS + 8), uint32(0))
                turn(wg)
                issue_s(s, base, 0, wg)
                pass_turn(wg)
                wait0()
                fence_s(address_of(s))
                softmax(s, m, l, alpha, row0, j0, j0 < inner_lo or j0 + Bc > inner_hi,
                        n_q, n_kv, shift, left, right, c)
                rescale_and_pack(acc, s, pa, alpha)
                for it in range(1, n_tiles):
                    st = it % stages
                    phase = uint32((it // stages) & 1)
                    prev = (it - 1) % stages
                    prev_phase = uint32(((it - 1) // stages) & 1)
                    j0 = (j_start + it) * Bc
                    mbar_wait(base + uint32(BARS + 8 * (1 + st)), phase)
                    turn(wg)
                    issue_s(s, base, st, wg)  # S_j …
                    mbar_wait(base + uint32(BARS + 8 * (V_READY + prev)), prev_phase)
                    fence_o(address_of(acc))
                    issue_pv(acc, pa, base, prev)  # … and O += P_{j-1} V_{j-1}, both in flight
                    pass_turn(wg)
                    wait1()  # S_j is done (groups complete in order) …
                    fence_s(address_of(s))
                    softmax(s, m, l, alpha, row0, j0, j0 < inner_lo or j0 + Bc > inner_hi,
                            n_q, n_kv, shift, left, right, c)
                    wait0()  # … and now P_{j-1} V_{j-1}: its buffer and P's registers are free
                    fence_o(address_of(acc))
                    release(base, it - 1, n_tiles, tmap, j_start, bh_kv)
                    rescale_and_pack(acc, s, pa, alpha)
                last = (n_tiles - 1) % stages
                mbar_wait(base + uint32(BARS + 8 * (V_READY + last)),
                          uint32(((n_tiles - 1) // stages) & 1))
                fence_o(address_of(acc))
                issue_pv(acc, pa, base, last)
                wait0()
                fence_o(address_of(acc))
                release(base, n_tiles - 1, n_tiles, tmap, j_start, bh_kv)
            if PP and wg == 0:
                turn(0)  # take warpgroup 1's last hand-over: no barrier left half-full

        # l over the quad; O = O / l once; LSE = ln 2 · (c·m + log2 l); rows past Nq not stored.
        store_row(o, lse, acc, m, l, 0, row0, b, h, bh_q, n_q, c, o_scale)
        store_row(o, lse, acc, m, l, 1, row0 + 8, b, h, bh_q, n_q, c, o_scale)

    return flash3


def needs(problem, config):
    Br, Bc, stages = tiles(problem, config)
    ws, pp, ov = config["warp_specialized"], config["pingpong"], config["intra_overlap"]
    fp8 = problem.dtype == FP8
    rules = {}
    if fp8:
        rules = {
            "FP8 needs Bc = 128 (V_jᵀ's rows are 128 bytes: the 128-byte swizzle)": Bc == 128,
            "FP8 needs stages >= 2 (the producer transposes tile j − 1 after loading tile j)": stages >= 2,
            "FP8 needs warp_specialized = SPECIALIZED (the producer warpgroup transposes V)":
                ws == SPECIALIZED,
        }
    return Needs(
        shared_bytes=shared_bytes(Br, Bc, problem.head_dim, stages, fp8),
        dynamic_shared=True,
        head_dims=HEAD_DIMS,
        dtypes=DTYPES,
        rules={**rules,
            "Br is 128 (two consumer warpgroups of 64 query rows)": Br == 128,
            "Bc is 64 or 128 (S is one wgmma of N = Bc per k-step)": Bc in (64, 128),
            "stages is 1 to 4 (K/V buffers in the ring)": 1 <= stages <= 4,
            "warp_specialized is 1 (ONE_ROLE) or 2 (SPECIALIZED)": ws in (ONE_ROLE, SPECIALIZED),
            "pingpong is 1 (TOGETHER) or 2 (PINGPONG)": pp in (TOGETHER, PINGPONG),
            "intra_overlap is 1 (IN_ORDER) or 2 (OVERLAP)": ov in (IN_ORDER, OVERLAP),
            "pingpong needs warp_specialized = SPECIALIZED (one role recycles buffers behind "
            "__syncthreads)": pp == TOGETHER or ws == SPECIALIZED,
            "intra_overlap = OVERLAP needs stages >= 2 (S_j is issued before buffer j − 1 is "
            "released: with one buffer K_j never lands)": ov == IN_ORDER or stages >= 2,
        },
    )


def workspace_bytes(problem, config):
    """The three tensor maps (Q, K, V), 128 bytes each: O, m and l stay on chip."""
    return 3 * TMAP_BYTES


def tensor_map(ptr, n, bh, D, box_rows, bf16, fp8=False):
    """A 3-D tensor map over a (B·H, N, D) 16-bit array at device address `ptr`: boxes of 64
    columns × box_rows rows × 1 head, written to shared memory with the 128-byte swizzle; rows
    past N come back as zeros. FP8 (uint8 codes): boxes of D columns = D bytes, the 128-byte
    swizzle at D = 128 and the 64-byte one at D = 64 (a box row is the swizzle's span). Its 16
    words (cuTensorMapEncodeTiled; GPU only)."""
    from cuda.bindings import driver as d

    T, S = d.CUtensorMapDataType, d.CUtensorMapSwizzle
    dtype = T.CU_TENSOR_MAP_DATA_TYPE_UINT8 if fp8 else (
        T.CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 if bf16 else T.CU_TENSOR_MAP_DATA_TYPE_FLOAT16)
    size, box = (1, D) if fp8 else (2, PANEL)
    swizzle = S.CU_TENSOR_MAP_SWIZZLE_64B if fp8 and D == 64 else S.CU_TENSOR_MAP_SWIZZLE_128B
    u64, u32 = d.cuuint64_t, d.cuuint32_t  # (cuda.bindings 13 refuses plain ints in these lists)
    err, tmap = d.cuTensorMapEncodeTiled(
        dtype, 3, ptr, [u64(D), u64(n), u64(bh)], [u64(size * D), u64(size * D * n)],
        [u32(box), u32(box_rows), u32(1)], [u32(1), u32(1), u32(1)],
        d.CUtensorMapInterleave.CU_TENSOR_MAP_INTERLEAVE_NONE,
        swizzle,
        d.CUtensorMapL2promotion.CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
        d.CUtensorMapFloatOOBfill.CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE)
    if err != d.CUresult.CUDA_SUCCESS:
        raise RuntimeError(f"cuTensorMapEncodeTiled failed: {err}")
    return [int(w) for w in tmap.opaque]


def _pointer(a):
    return a.__cuda_array_interface__["data"][0]


def write_tensor_maps(tmaps, q, k, v, Br, Bc, stream=0):
    """Q's, K's and V's tensor maps into the device array `tmaps` (3 × 16 uint64)."""
    bq, hq, nq, D = q.shape
    bk, hk, nk, _ = k.shape
    bf16, fp8 = q.dtype == np.uint16, q.dtype == np.uint8
    host = np.array([tensor_map(_pointer(q), nq, bq * hq, D, Br, bf16, fp8),
                     tensor_map(_pointer(k), nk, bk * hk, D, Bc, bf16, fp8),
                     tensor_map(_pointer(v), nk, bk * hk, D, Bc, bf16, fp8)], dtype=np.uint64)
    dev = tmaps if hasattr(tmaps, "copy_to_device") else cuda.as_cuda_array(tmaps)
    dev.copy_to_device(host, stream=stream)


def launch(problem, config, q, k, v, o, lse, gpu):
    p = problem
    Br, Bc, stages = tiles(p, config)
    left, right = p.mask_bounds()
    fp8 = p.dtype == FP8
    kernel = build(Bc, p.head_dim, stages, p.dtype == "bfloat16", config["warp_specialized"],
                   config["pingpong"], config["intra_overlap"], Br, fp8)
    # FP8: scores are q_descale·k_descale times the codes' dot products (into c), O is v_descale
    # times the codes' average (o_scale); p.descale None = unscaled codes.
    q_descale, k_descale, v_descale = getattr(p, "descale", None) or (1.0, 1.0, 1.0)
    c = np.float32(float(LOG2E) * p.scale * q_descale * k_descale) if fp8 else LOG2E * np.float32(p.scale)
    tmaps = gpu.empty((3, TMAP_BYTES // 8), np.uint64)
    if gpu.live:
        write_tensor_maps(tmaps, q, k, v, Br, Bc, gpu.stream)
    threads = WG * (3 if config["warp_specialized"] == SPECIALIZED else 2)
    gpu.launch(kernel, (cdiv(p.seq_q, Br), p.batch * p.heads), threads,
               q, k, v, o, lse, tmaps, c, p.group, left, right, np.float32(v_descale if fp8 else 1),
               shared=shared_bytes(Br, Bc, p.head_dim, stages, fp8))
