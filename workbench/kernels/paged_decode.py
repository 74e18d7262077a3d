"""Paged decode — flash-decoding over a paged KV cache, written to stream the cache at HBM speed.

A decode step is one (or a few) new query tokens per sequence against a cache of thousands of
keys. Every cached K and V byte is read once and used for a handful of multiply-adds, so the step
is bound by memory bandwidth: its floor is the cache's bytes over HBM's bandwidth. The algorithm
is flash-decoding's; the lesson is in how the work and the bytes are laid out so that the GPU
actually reaches that floor.

The algorithm (flash-decoding, as FlashAttention's `flash_attn_with_kvcache`):
1. Split the keys. With Nq = 1 there are only B·Hkv (key/value head) problems, often fewer than
   the SMs. CTA (row block, s, b·Hkv + hk) takes the keys [s·L, (s+1)·L) of its sequence and
   writes a normalised partial O_s with its LSE_s. The number of splits is chosen so that every
   SM gets as many CTAs as its registers hold (`ctas_per_sm`; the SM count is read from the
   device), a split at least `split_keys` keys. With one split the kernel writes O itself and no
   combine runs.
2. Combine the splits by their LSE (the online-softmax merge, once over splits):
       m = max_s LSE_s,   w_s = exp(LSE_s − m),   O = Σ w_s O_s / Σ w_s,   LSE = m + log Σ w_s
   One CTA per query row; the weights are computed once into shared memory.
3. The cache is paged: k_cache, v_cache are (num_blocks, Hkv, block_size, D), and sequence b's
   logical key j lives in physical block block_table[b, j // block_size] at offset
   j % block_size (vLLM's layout). Each key's row of D elements is contiguous.

GQA/MQA: the query heads of a group and the Nq new tokens are the rows of one CTA
(row r = g·Nq + i: head hk·group + g, token i), Br of them at most, held in registers; so each
K/V byte is read once for the whole group (groups of more than Br rows are split over CTAs that
run side by side, and their repeated reads come from L2).

Masks: causal is bottom-right within each sequence (new token i of sequence b sits at position
seq_lens[b] − Nq + i), windows as in the forward; keys at or past seq_lens[b] are never read, so
cache slots no sequence owns may hold anything (NaN). Rows or splits that see no key give O = 0,
LSE = −inf, which the combine weights by 0.

Inside a split CTA (T threads, W = T/32 warps):
- Lane groups. A row of K (or V) is D·itemsize bytes = C chunks of 16 bytes. A lane group of LK
  lanes (C rounded up to a power of two, at most 32) reads one row, a 16-byte chunk per lane; so a
  warp reads KW = 32/LK consecutive keys per load instruction, fully coalesced. Each lane holds
  the same 16 bytes' worth of elements of every query row (E per row) and of its O accumulator.
- A step: every lane group takes `unroll` keys (U), all their K and V chunks loaded first, then
  S = Q·K (partial dot products, summed over the lane group by a shuffle butterfly), the online
  softmax, O += P·V. The CTA covers W·KW·U consecutive keys per step.
- Each lane group runs its own online softmax (its own m, l, O) over the keys it sees: nothing is
  exchanged between lane groups or warps inside the loop, no barrier in the loop at all. At the
  end of the split, lane groups merge by LSE with shuffles, warps through shared memory.

Tricks, named:
- 16-byte vector loads: the host passes the cache as uint32 words; `load_vec4` reads four words
  with one `ld.v4.u32` (LDG.E.128) and the halves are unpacked in registers (fp16 by the
  hardware's conversion, bf16 by a shift, float32 as is).
- Many loads in flight: U keys × (K + V) per lane group are issued before any is used, and
  launch bounds cap registers so that the planned CTAs per SM fit (MIN_BLOCKS, by rows: each row
  costs a lane 16 registers of Q and O).
- Integer bookkeeping kept 32-bit (int32 local arrays; Numba's own integers are 64-bit), and
  unsigned indices where the compiler would otherwise add negative-index wrap-around.
- The block table off the critical path: each lane group's next physical blocks are read during
  the current step (prefetch), and logical block and offset advance by additions, not divisions.
- Conditional rescaling: O and l are rescaled only when a row's running max grows (exact; once
  the max settles the branch is not taken).
- exp2 with scale·log2 e folded into Q; masks only on steps at the edges of the visible keys.
- No combine when one split suffices; a one-CTA-per-row combine with the weights in shared memory
  and the sum over splits unrolled, so it is a few microseconds.

Checks on the device (block tables and lengths are device data in serving: nothing is copied to
the host to check them). Before it reads any K or V, each split CTA checks its sequence's length
n against [Nq, max_len] (max_len: the lengths the launch was planned for, at most the table's
capacity) and every table entry for the keys of its split, [s·L, min((s+1)·L, n)), against
[0, num_blocks): the host check's rule, whatever the masks. The entries are spread over the
threads (one load each, beside the first K/V block reads) and or-ed by the barrier
`syncthreads_or`. A CTA that finds a violation reads no K/V, or-s a code into errors[b]
(BAD_LENGTH, BAD_BLOCK) and writes NaN; the combine turns any NaN LSE_s into NaN O and LSE. So a
bad sequence's outputs are NaN, the others' exact, and no read leaves the cache or the table.
Cost: one barrier and ceil(L/block_size) 4-byte table reads per CTA (the prefetch reads them
again from L1/L2); no extra kernel, no host synchronisation.

FP8 cache (compile-time flag `fp8` of `build`, problem.cache_dtype = "float8_e4m3fn"): K and V are
stored as e4m3 codes (one byte: 16 elements a 16-byte chunk, so D a multiple of 16) with a
float32 scale per kv head for each (value = code's number × scale). `e4m3x4` turns a word of four
codes into float32 with integer operations (exact, NaN codes included); the scales fold into Q
(q·k_scale) and into O (·v_scale), so they cost nothing per key. Q and O keep their own dtype.

Config keys: Br (rows per CTA, at most), threads (T, a multiple of 32), unroll (U), split_keys
(the fewest keys a split takes). Head dims: every multiple of 8 up to 256 (16 with an FP8
cache); dtypes float16, bfloat16 (as uint16 bits) and float32. The cache must be 16-byte aligned
(allocations are; workbench.api.inference.validate checks views before any launch). Workspace: the
float32 partial O and LSE of every split (none with one split), and the per-sequence error flags
when the caller passes no array of its own.
"""

import functools
import math

import numpy as np
from numba import config as numba_config
from numba import cuda, float32, int32, uint32

from .common import load_f32, to_io
from .warp import FULL_MASK, segment_max, segment_sum
from .contract import DECODE, Needs

LESSON = ("flash-decoding at HBM speed: splits sized to the GPU, 16-byte row loads through a "
          "prefetched block table, one LSE merge per split")
DEFAULT_CONFIG = {"Br": 4, "threads": 128, "unroll": 3, "split_keys": 64}
SIM_CONFIG = {"threads": 32, "unroll": 2, "split_keys": 8}
HEAD_DIMS = tuple(range(8, 257, 8))
DTYPES = ("float32", "float16", "bfloat16")
CHUNK = 16  # bytes a lane reads at once
MAX_SPLITS = 128  # the combine holds one split per thread
COMBINE_THREADS = 128
FALLBACK_SMS = 132  # H100/H200, when there is no device to ask
# CTAs of 128 threads per SM the registers are capped for (launch bounds), by rows per CTA: each
# row costs a lane 2·8 registers (its Q and O elements; 2·16 with an FP8 cache, counted as two
# rows); sm_90, no spills at unroll 3.
MIN_BLOCKS = {1: 5, 2: 4, 3: 3, 4: 3, 5: 2, 6: 2, 7: 2, 8: 2}

FASTMATH = {"afn", "arcp", "contract"}  # approximate exp2/log2/division; infinities kept
NEG_INF = float32(-math.inf)
LN2 = float32(math.log(2.0))
LOG2E = np.float32(math.log2(math.e))
NAN = float32(math.nan)
BAD_LENGTH = 1  # errors[b] bits: the length is outside [Nq, max_len]
BAD_BLOCK = 2  # ... an entry of the table for its keys is not a block of the pool
FP8 = "float8_e4m3fn"  # problem.cache_dtype of an e4m3 cache
E4M3_UNIT = np.float32(2.0 ** 8)  # e4m3x4 gives the numbers / 2^8; the scales carry the 2^8


# --- 16-byte loads and unpacking words ------------------------------------------------------------
#   load_vec4(words, i)   the four uint32 words words.flat[i : i + 4], i a multiple of 4, as one
#                         16-byte load (a tuple of 4 uint32)
#   f16x2(w), bf16x2(w)   the two 16-bit halves of word w as float32 (low half first)
#   f32_of(w)             the float32 whose bits are w
# On the GPU they are intrinsics (always inline, compiled with no GPU present); the simulator does
# the same in NumPy.
if numba_config.ENABLE_CUDASIM:
    def load_vec4(words, i):
        # Element by element through the array's own indexing, so the traffic counter sees them.
        return tuple(words[np.unravel_index(i + u, words.shape)] for u in range(4))

    def f16x2(w):
        h = np.array([w], np.uint32).view(np.float16)
        return np.float32(h[0]), np.float32(h[1])

    def bf16x2(w):
        w = int(w)
        return (np.array([(w << 16) & 0xFFFFFFFF], np.uint32).view(np.float32)[0],
                np.array([w & 0xFFFF0000], np.uint32).view(np.float32)[0])

    def f32_of(w):
        return np.array([w], np.uint32).view(np.float32)[0]

else:
    from llvmlite import ir
    from numba.cuda import types
    from numba.cuda.core.errors import TypingError
    from numba.cuda.extending import intrinsic
    from numba.cuda.typing import signature

    _I32, _F32 = ir.IntType(32), ir.FloatType()

    @intrinsic
    def load_vec4(typingctx, words, index):
        """Four uint32 words from a C-contiguous uint32 array at flat index `index` (a multiple of
        4, on a 16-byte aligned array): one vector load, `ld.global.nc.v4.u32` (the cache is
        read-only while the kernel runs)."""
        if not (isinstance(words, types.Array) and words.dtype == types.uint32
                and words.layout == "C" and isinstance(index, types.Integer)):
            raise TypingError(f"load_vec4 takes a C-contiguous uint32 array and an int, not "
                              f"{words} and {index}")
        ret = types.UniTuple(types.uint32, 4)

        def codegen(context, builder, sig, args):
            ary = context.make_array(sig.args[0])(context, builder, args[0])
            idx = context.cast(builder, args[1], sig.args[1], types.intp)
            ptr = builder.bitcast(builder.gep(ary.data, [idx]), ir.VectorType(_I32, 4).as_pointer())
            vec = builder.load(ptr, align=16)
            vec.set_metadata("invariant.load", builder.module.add_metadata([]))
            return context.make_tuple(builder, ret, [
                builder.extract_element(vec, ir.Constant(_I32, k)) for k in range(4)])

        return signature(ret, words, index), codegen

    def _halves(builder, w, to_f32):
        return [to_f32(builder, w), to_f32(builder, builder.lshr(w, ir.Constant(_I32, 16)))]

    @intrinsic
    def f16x2(typingctx, w):
        """The two float16 halves of a uint32 word as float32 (cvt.f32.f16 each)."""
        if w != types.uint32:
            raise TypingError(f"f16x2 takes a uint32, not {w}")
        ret = types.UniTuple(types.float32, 2)

        def one(builder, x):
            return builder.fpext(builder.bitcast(builder.trunc(x, ir.IntType(16)), ir.HalfType()), _F32)

        def codegen(context, builder, sig, args):
            return context.make_tuple(builder, ret, _halves(builder, args[0], one))

        return signature(ret, w), codegen

    @intrinsic
    def bf16x2(typingctx, w):
        """The two bfloat16 halves of a uint32 word as float32: a bfloat16 is the top half of a
        float32, so the low half shifted up, and the high half with the low bits cleared, ARE the
        float32s (exactly)."""
        if w != types.uint32:
            raise TypingError(f"bf16x2 takes a uint32, not {w}")
        ret = types.UniTuple(types.float32, 2)

        def codegen(context, builder, sig, args):
            w = args[0]
            lo = builder.bitcast(builder.shl(w, ir.Constant(_I32, 16)), _F32)
            hi = builder.bitcast(builder.and_(w, ir.Constant(_I32, 0xFFFF0000)), _F32)
            return context.make_tuple(builder, ret, [lo, hi])

        return signature(ret, w), codegen

    @intrinsic
    def f32_of(typingctx, w):
        """The float32 whose bits are the uint32 w."""
        if w != types.uint32:
            raise TypingError(f"f32_of takes a uint32, not {w}")

        def codegen(context, builder, sig, args):
            return builder.bitcast(args[0], _F32)

        return signature(types.float32, w), codegen


@cuda.jit(device=True, inline="always")
def e4m3x4(w):
    """The four e4m3 codes of word w (low byte first) as float32, each divided by 2^8, exactly.
    e4m3 is s·eeee·mmm (bias 7), float16 s·eeeee·mmmmmmmmmm (bias 15): a code's sign moved to bit
    15 and its eeee·mmm to bits 13..7 is a float16 with the same exponent field and mantissa,
    subnormals included (float16 has them too), so its number is the code's / 2^(15−7). Two
    codes are spread into the two halves of a word and converted as a float16 pair. The NaN
    codes 0x7F/0xFF land on ±1.875, past the largest code's 448 / 2^8 = 1.75: they become NaN."""
    lo = (w & 0xFF) | ((w & 0xFF00) << 8)  # codes 0 and 1, one in the low byte of each half
    hi = ((w >> 16) & 0xFF) | ((w >> 8) & 0xFF0000)  # codes 2 and 3
    a, b = f16x2(uint32(((lo & 0x00800080) << 8) | ((lo & 0x007F007F) << 7)))
    c, d = f16x2(uint32(((hi & 0x00800080) << 8) | ((hi & 0x007F007F) << 7)))
    big = float32(1.8)
    return (a if abs(a) < big else NAN, b if abs(b) < big else NAN,
            c if abs(c) < big else NAN, d if abs(d) < big else NAN)


@cuda.jit(device=True, inline="always")
def rescale(m, m_new):
    """2^(m − m_new): the weight of a partial whose max is m in a merge whose max is m_new
    (0 when the partial saw no key; m = m_new = −inf would otherwise give NaN)."""
    return math.exp2(m - m_new) if m != NEG_INF else float32(0)


# --- the plan: lanes, rows, splits ----------------------------------------------------------------
def itemsize(dtype: str) -> int:
    return 4 if dtype == "float32" else 2


def is_fp8(problem) -> bool:
    return getattr(problem, "cache_dtype", None) == FP8


def cache_itemsize(problem) -> int:
    """Bytes of a cached K or V element: 1 with an FP8 cache, else the I/O dtype's."""
    return 1 if is_fp8(problem) else itemsize(problem.dtype)


def lane_layout(D, size):
    """(C, LK, CPL, EPC) for rows of D elements of `size` bytes: C chunks of 16 bytes in a row, LK
    lanes (a power of two, at most 32) read a row, CPL chunks each, EPC elements in a chunk."""
    epc = CHUNK // size
    chunks = D // epc
    lk = 1
    while lk < min(chunks, 32):
        lk *= 2
    return chunks, lk, -(-chunks // lk), epc


def row_blocks(problem, config):
    """(Br, row blocks): the group·Nq rows of a kv head in as few blocks of at most Br as can be,
    evenly sized."""
    rows = problem.group * problem.seq_q
    blocks = -(-rows // config["Br"])
    return -(-rows // blocks), blocks


def step_keys(problem, config) -> int:
    """Keys a split CTA covers per step: W warps × KW lane groups × U keys."""
    _, lk, _, _ = lane_layout(problem.head_dim, cache_itemsize(problem))
    return config["threads"] // 32 * (32 // lk) * config["unroll"]


@functools.cache
def sm_count() -> int:
    """The device's SM count (132 on an H100/H200, and in the simulator or with no GPU)."""
    if numba_config.ENABLE_CUDASIM:
        return FALLBACK_SMS
    try:
        return int(cuda.get_current_device().MULTIPROCESSOR_COUNT)
    except Exception:  # no driver (compile checks on a CPU machine)
        return FALLBACK_SMS


def ctas_per_sm(Br, T, D, dtype, fp8=False) -> int:
    """CTAs per SM that the registers are capped for: MIN_BLOCKS by rows (a row counted twice
    when a lane holds 16 of its elements, as with an FP8 cache), one fewer when a lane reads two
    chunks of a row (float32 rows over 128 elements: twice the K/V registers), scaled to T
    threads."""
    _, _, cpl, epc = lane_layout(D, 1 if fp8 else itemsize(dtype))
    rows = min(Br, 4) * max(1, cpl * epc // 8)
    return max(1, (MIN_BLOCKS[rows] - (cpl - 1)) * 128 // T)


def split_plan(problem, config):
    """(splits, keys per split L). CTAs run in waves of SMs × ctas_per_sm; a last wave that is
    only partly full leaves SMs idle (and a straggling CTA reads alone, far below the bandwidth),
    so the plan maximises the wave efficiency w / ceil(w) of w = CTAs / slots, taking the fewest
    splits within 5 % of the best (fewer partials to combine). A split is a whole number of
    steps, at least split_keys keys, and there are at most MAX_SPLITS."""
    Br, blocks = row_blocks(problem, config)
    base = problem.batch * problem.kv_heads * blocks
    slots = sm_count() * ctas_per_sm(Br, config["threads"], problem.head_dim, problem.dtype,
                                     is_fp8(problem))
    return _splits(base, slots, problem.max_seq, step_keys(problem, config), config["split_keys"])


@functools.lru_cache(maxsize=4096)
def _splits(base, slots, n, step, split_keys):
    """split_plan's search (cached: it runs on every call, on the host)."""
    plans = {}
    for want in range(1, max(1, min(MAX_SPLITS, n // split_keys)) + 1):
        per = -(-(-(-n // want)) // step) * step
        splits = -(-n // per)
        waves = base * splits / slots
        plans[splits] = (waves / math.ceil(waves), per)
    best = max(eff for eff, _ in plans.values())
    splits = min(s for s, (eff, _) in plans.items() if eff >= 0.95 * best)
    return splits, plans[splits][1]


# --- the split kernel -----------------------------------------------------------------------------
@functools.cache
def build(Br, D, dtype, T, U, fp8=False):
    """The split kernel for Br rows of head dim D in `dtype`: CTA (row block, split, b·Hkv + hk).
    fp8: the cache holds e4m3 codes and kv_scales is (k_scale, v_scale), each (Hkv,) float32;
    otherwise the cache is in `dtype` and kv_scales is () (the FP8 code is compiled out)."""
    size = 1 if fp8 else itemsize(dtype)
    C, LK, CPL, EPC = lane_layout(D, size)
    W = T // 32
    KW = 32 // LK  # lane groups in a warp: keys per warp per load
    STRIDE = W * KW  # from one of a lane group's keys in a step to its next
    STEP = STRIDE * U
    E = CPL * EPC  # elements of a row each lane holds
    WORDS = CPL * 4  # uint32 words each lane loads per row
    RW = D * size // 4  # words per row
    FP8_CACHE = fp8  # four e4m3 codes per word
    HALVES = not fp8 and dtype != "float32"  # two elements per word
    BF16 = dtype == "bfloat16"

    blocks_per_sm = ctas_per_sm(Br, T, D, dtype, fp8)
    options = {} if numba_config.ENABLE_CUDASIM else {"launch_bounds": (T, blocks_per_sm)}

    @cuda.jit(fastmath=FASTMATH, **options)
    def paged_decode_split(q, k_words, v_words, block_table, seq_lens, o, lse, o_part, lse_part,
                           errors, kv_scales, scale_log2, split_len, max_len, left, right):
        sm_m = cuda.shared.array((W, Br), float32)  # each warp's m, l, O after its lane groups merge
        sm_l = cuda.shared.array((W, Br), float32)
        sm_o = cuda.shared.array((W, Br, D), float32)
        q_r = cuda.local.array((Br, E), float32)  # my elements of the CTA's query rows
        acc = cuda.local.array((Br, E), float32)  # ... and of O (unnormalised)
        m = cuda.local.array(Br, float32)  # running max (base 2) and sum, per row, my lane group
        l = cuda.local.array(Br, float32)
        s = cuda.local.array((U, Br), float32)  # S, then P, of this step's keys
        kw = cuda.local.array((U, WORDS), uint32)  # this step's K and V chunks
        vw = cuda.local.array((U, WORDS), uint32)
        # Key bookkeeping in int32 arrays, so the compiler keeps it 32-bit (Numba's integers are
        # 64-bit): per key u of a step, its offset from the step's first key, and where it is:
        # physical block (read a step ahead), logical block (unsigned: no negative-index
        # wrap-around code) and offset in the block.
        ahead = cuda.local.array(U, int32)
        blk = cuda.local.array(U, int32)
        lb = cuda.local.array(U, uint32)
        at = cuda.local.array(U, int32)

        t = cuda.threadIdx.x
        warp = t // 32
        lane_group = (t % 32) // LK  # my lane group in the warp
        lk = t % LK  # my lane in it
        mine = warp * KW + lane_group  # my first key of a step, relative to the step
        row0 = cuda.blockIdx.x * Br
        split = cuda.blockIdx.y
        kv_heads = k_words.shape[1]
        bs = k_words.shape[2]
        b = cuda.blockIdx.z // kv_heads
        hk = cuda.blockIdx.z - b * kv_heads
        heads = q.shape[1]
        n_q = int32(q.shape[2])
        group = heads // kv_heads
        rows = group * n_q
        n_kv = seq_lens[b]

        # Key positions as int32 (registers: Numba's int64 takes two). Row i (token i) sees the
        # keys i + first .. i + last; the CTA's rows see [lo, hi) of this split, all of them
        # [all_lo, all_hi).
        first = int32(n_kv - n_q - left)
        last = int32(n_kv - n_q + right)
        i_min = n_q
        i_max = int32(-1)
        for r in range(Br):
            if row0 + r < rows:
                i = (row0 + r) % n_q
                i_min = min(i_min, i)
                i_max = max(i_max, i)
        lo = int32(max(split * split_len, i_min + first, 0))
        hi = int32(min((split + 1) * split_len, i_max + last + 1, n_kv))

        # The checks (module docstring), before any K/V read: the length, then the table entries
        # of this split's keys, spread over the threads. A violation: no key is read (hi = lo),
        # errors[b] is flagged and the outputs are NaN.
        table_row = block_table[b]
        num_blocks = k_words.shape[0]
        length_ok = n_q <= n_kv and n_kv <= max_len
        bad_entry = int32(0)
        if length_ok:
            first_block = split * split_len // bs
            end_block = (min((split + 1) * split_len, n_kv) + bs - 1) // bs
            for jb in range(first_block + t, end_block, T):
                phys = table_row[jb]
                if phys < 0 or phys >= num_blocks:
                    bad_entry = int32(1)
        broken = int32(0) if length_ok else int32(BAD_LENGTH)
        if cuda.syncthreads_or(bad_entry) and length_ok:
            broken = int32(BAD_BLOCK)
        if broken != 0:
            hi = lo
            if t == 0:
                cuda.atomic.or_(errors, b, broken)
        all_lo = int32(i_max + first)
        all_hi = int32(min(i_min + last + 1, hi))

        # My elements of the query rows, times scale·log2 e (so S comes out in base 2), and with
        # an FP8 cache times K's scale (q·(s·k) = (s·q)·k).
        q_factor = scale_log2
        if FP8_CACHE:
            k_scale, v_scale = kv_scales
            q_factor = scale_log2 * (k_scale[hk] * E4M3_UNIT)
        for r in range(Br):
            g = (row0 + r) // n_q
            i = (row0 + r) - g * n_q
            for cc in range(CPL):
                chunk = lk + LK * cc
                for e in range(EPC):
                    x = float32(0)
                    if row0 + r < rows and chunk < C:
                        x = load_f32(q[b, hk * group + g, i, chunk * EPC + e]) * q_factor
                    q_r[r, cc * EPC + e] = x
                    acc[r, cc * EPC + e] = float32(0)
            m[r] = NEG_INF
            l[r] = float32(0)

        # Where my keys are: one division per CTA, then the walk advances by additions. A key's
        # first word: physical block · block_words + offset · RW + head_words (my lane's chunk).
        bs32 = int32(bs)
        step_blocks = int32(STEP // bs)
        step_at = int32(STEP - step_blocks * bs)
        block_words = int32(kv_heads * bs * RW)
        head_words = int32(hk * bs * RW + lk * 4)
        for u in range(U):
            ahead[u] = mine + u * STRIDE
            key = lo + ahead[u]
            lb[u] = key // bs
            at[u] = key - lb[u] * bs
            blk[u] = 0
            if key < hi:
                blk[u] = table_row[lb[u]]

        j0 = lo
        while j0 < hi:
            todo = int32(hi - j0)  # keys left from this step's first; then from the next step's
            todo_next = int32(todo - STEP)
            # Issue every K and V load of the step before using any (zeros past the keys).
            for u in range(U):
                words = blk[u] * block_words + (at[u] * RW + head_words)
                for cc in range(CPL):
                    k4 = (uint32(0), uint32(0), uint32(0), uint32(0))
                    v4 = (uint32(0), uint32(0), uint32(0), uint32(0))
                    if ahead[u] < todo and lk + LK * cc < C:
                        k4 = load_vec4(k_words, words + LK * 4 * cc)
                        v4 = load_vec4(v_words, words + LK * 4 * cc)
                    for w in range(4):
                        kw[u, cc * 4 + w] = k4[w]
                        vw[u, cc * 4 + w] = v4[w]

            # Walk to the next step's keys and read their physical blocks now: the block-table
            # read overlaps this step's K/V reads instead of preceding the next step's.
            for u in range(U):
                at[u] += step_at
                lb[u] += step_blocks
                if at[u] >= bs32:
                    at[u] -= bs32
                    lb[u] += 1
                if ahead[u] < todo_next:
                    blk[u] = table_row[lb[u]]

            # S = Q·K: my partial dot products, summed over the lane group (a butterfly).
            for u in range(U):
                for r in range(Br):
                    s[u, r] = float32(0)
                for w in range(WORDS):
                    if FP8_CACHE:
                        x0, x1, x2, x3 = e4m3x4(kw[u, w])
                        for r in range(Br):
                            s[u, r] += q_r[r, 4 * w] * x0
                            s[u, r] += q_r[r, 4 * w + 1] * x1
                            s[u, r] += q_r[r, 4 * w + 2] * x2
                            s[u, r] += q_r[r, 4 * w + 3] * x3
                    elif HALVES:
                        x0, x1 = bf16x2(kw[u, w]) if BF16 else f16x2(kw[u, w])
                        for r in range(Br):  # two FFMA (a + b·c + d·e would round in between)
                            s[u, r] += q_r[r, 2 * w] * x0
                            s[u, r] += q_r[r, 2 * w + 1] * x1
                    else:
                        x0 = f32_of(kw[u, w])
                        for r in range(Br):
                            s[u, r] += q_r[r, w] * x0
                for r in range(Br):
                    s[u, r] = segment_sum(FULL_MASK, s[u, r], LK)

            # Masks, only on steps at the edges of what every row sees.
            if not (j0 >= all_lo and j0 + STEP <= all_hi):
                for u in range(U):
                    key = j0 + ahead[u]
                    for r in range(Br):
                        i = (row0 + r) % n_q
                        if key >= hi or key < i + first or key > i + last:
                            s[u, r] = NEG_INF

            # Online softmax per row: O and l rescaled only when the max grows; P in place of S.
            for r in range(Br):
                m_new = m[r]
                for u in range(U):
                    m_new = max(m_new, s[u, r])
                if m_new > m[r]:
                    alpha = rescale(m[r], m_new)
                    l[r] *= alpha
                    for e in range(E):
                        acc[r, e] *= alpha
                    m[r] = m_new
                m_use = m[r] if m[r] != NEG_INF else float32(0)  # no key yet: every P is 0
                for u in range(U):
                    p = math.exp2(s[u, r] - m_use)
                    s[u, r] = p
                    l[r] += p

            # O += P·V on my elements.
            for u in range(U):
                for w in range(WORDS):
                    if FP8_CACHE:
                        x0, x1, x2, x3 = e4m3x4(vw[u, w])
                        for r in range(Br):
                            acc[r, 4 * w] += s[u, r] * x0
                            acc[r, 4 * w + 1] += s[u, r] * x1
                            acc[r, 4 * w + 2] += s[u, r] * x2
                            acc[r, 4 * w + 3] += s[u, r] * x3
                    elif HALVES:
                        x0, x1 = bf16x2(vw[u, w]) if BF16 else f16x2(vw[u, w])
                        for r in range(Br):
                            acc[r, 2 * w] += s[u, r] * x0
                            acc[r, 2 * w + 1] += s[u, r] * x1
                    else:
                        x0 = f32_of(vw[u, w])
                        for r in range(Br):
                            acc[r, w] += s[u, r] * x0
            j0 = int32(j0 + STEP)

        # Merge the lane groups of my warp by LSE (a butterfly over lanes LK, 2·LK, ... apart).
        dist = LK
        while dist < 32:
            for r in range(Br):
                m_o = cuda.shfl_xor_sync(FULL_MASK, m[r], dist)
                l_o = cuda.shfl_xor_sync(FULL_MASK, l[r], dist)
                m_new = max(m[r], m_o)
                a = rescale(m[r], m_new)
                c = rescale(m_o, m_new)
                l[r] = l[r] * a + l_o * c
                for e in range(E):
                    acc[r, e] = acc[r, e] * a + cuda.shfl_xor_sync(FULL_MASK, acc[r, e], dist) * c
                m[r] = m_new
            dist *= 2
        if lane_group == 0:
            for r in range(Br):
                if lk == 0:
                    sm_m[warp, r] = m[r]
                    sm_l[warp, r] = l[r]
                for cc in range(CPL):
                    chunk = lk + LK * cc
                    if chunk < C:
                        for e in range(EPC):
                            sm_o[warp, r, chunk * EPC + e] = acc[r, cc * EPC + e]
        cuda.syncthreads()

        # Merge the warps; write O and LSE (one split), or this split's normalised O_s and LSE_s.
        for idx in range(t, Br * D, T):
            r = idx // D
            d = idx - r * D
            if row0 + r < rows:
                m_all = NEG_INF
                for w in range(W):
                    m_all = max(m_all, sm_m[w, r])
                l_all = float32(0)
                o_all = float32(0)
                for w in range(W):
                    c = rescale(sm_m[w, r], m_all)
                    l_all += sm_l[w, r] * c
                    o_all += sm_o[w, r, d] * c
                out = o_all / l_all if l_all > float32(0) else float32(0)
                if FP8_CACHE:  # O = Σ p·(s·v) = s·Σ p·v
                    out *= v_scale[hk] * E4M3_UNIT
                row_lse = (m_all + math.log2(l_all)) * LN2 if l_all > float32(0) else NEG_INF
                if broken != 0:
                    out = NAN
                    row_lse = NAN
                g = (row0 + r) // n_q
                i = (row0 + r) - g * n_q
                h = hk * group + g
                if cuda.gridDim.y == 1:
                    o[b, h, i, d] = to_io(out, o)
                    if d == 0:
                        lse[b, h, i] = row_lse
                else:
                    row = (b * heads + h) * n_q + i
                    o_part[split, row, d] = out
                    if d == 0:
                        lse_part[split, row] = row_lse

    return paged_decode_split


# --- the combine kernel ---------------------------------------------------------------------------
@functools.cache
def build_combine(D):
    """O = Σ_s w_s O_s / Σ_s w_s with w_s = exp(LSE_s − max LSE): one CTA per query row, one split
    per thread for the weights, the sum over splits unrolled 8 ways (8 loads in flight)."""
    T = COMBINE_THREADS
    NW = T // 32

    @cuda.jit(fastmath=FASTMATH)
    def paged_decode_combine(o_part, lse_part, o, lse):
        weight = cuda.shared.array(MAX_SPLITS, float32)
        warp_max = cuda.shared.array(NW, float32)
        warp_sum = cuda.shared.array(NW, float32)
        t = cuda.threadIdx.x
        row = cuda.blockIdx.x
        heads = o.shape[1]
        n_q = o.shape[2]
        b = row // (heads * n_q)
        h = (row // n_q) % heads
        i = row % n_q
        splits = o_part.shape[0]

        x = lse_part[t, row] if t < splits else NEG_INF
        x_max = segment_max(FULL_MASK, x, 32)
        if t % 32 == 0:
            warp_max[t // 32] = x_max
        if cuda.syncthreads_or(int32(x != x)):  # a split found a bad length or block (NaN LSE_s): NaN
            for d in range(t, D, T):
                o[b, h, i, d] = to_io(NAN, o)
            if t == 0:
                lse[b, h, i] = NAN
            return
        m = warp_max[0]
        for w in range(1, NW):
            m = max(m, warp_max[w])
        if m == NEG_INF:  # no split saw a key
            for d in range(t, D, T):
                o[b, h, i, d] = to_io(float32(0), o)
            if t == 0:
                lse[b, h, i] = NEG_INF
            return
        wt = math.exp(x - m) if t < splits else float32(0)
        weight[t] = wt
        wt_sum = segment_sum(FULL_MASK, wt, 32)
        if t % 32 == 0:
            warp_sum[t // 32] = wt_sum
        cuda.syncthreads()
        den = float32(0)
        for w in range(NW):
            den += warp_sum[w]
        for d in range(t, D, T):
            a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = float32(0)
            sp = 0
            while sp + 8 <= splits:
                a0 += weight[sp] * o_part[sp, row, d]
                a1 += weight[sp + 1] * o_part[sp + 1, row, d]
                a2 += weight[sp + 2] * o_part[sp + 2, row, d]
                a3 += weight[sp + 3] * o_part[sp + 3, row, d]
                a4 += weight[sp + 4] * o_part[sp + 4, row, d]
                a5 += weight[sp + 5] * o_part[sp + 5, row, d]
                a6 += weight[sp + 6] * o_part[sp + 6, row, d]
                a7 += weight[sp + 7] * o_part[sp + 7, row, d]
                sp += 8
            while sp < splits:
                a0 += weight[sp] * o_part[sp, row, d]
                sp += 1
            o[b, h, i, d] = to_io(((a0 + a1) + (a2 + a3) + ((a4 + a5) + (a6 + a7))) / den, o)
        if t == 0:
            lse[b, h, i] = m + math.log(den)

    return paged_decode_combine


# --- the rung's contract --------------------------------------------------------------------------
ARGS = DECODE


def shared_bytes(Br, D, T):
    """The split kernel's m, l and O of each warp (the combine's is smaller)."""
    return 4 * (T // 32) * Br * (D + 2)


def needs(problem, config):
    Br, _ = row_blocks(problem, config)
    T = config["threads"]
    rules = {"threads is a multiple of 32, at most 1024": T % 32 == 0 and T <= 1024,
             "Br is at most 16 (the rows live in registers)": config["Br"] <= 16}
    if is_fp8(problem):
        rules["an FP8 cache needs head_dim a multiple of 16 (16 codes a 16-byte chunk)"] = (
            problem.head_dim % 16 == 0)
    return Needs(shared_bytes=shared_bytes(Br, problem.head_dim, T), head_dims=HEAD_DIMS,
                 dtypes=DTYPES, rules=rules)


def _splits_and_rows(problem, config):
    splits, split_len = split_plan(problem, config)
    return splits, split_len, problem.batch * problem.heads * problem.seq_q


def workspace_bytes(problem, config):
    """The float32 partial O and LSE of every split (a placeholder of two floats with one split),
    and the int32 error flag of each sequence (when the caller passes no array for them)."""
    splits, _, rows = _splits_and_rows(problem, config)
    return (4 * splits * rows * (problem.head_dim + 1) if splits > 1 else 8) + 4 * problem.batch


def as_words(cache):
    """The cache as uint32 words, (num_blocks, Hkv, block_size, D·itemsize/4): a view, no copy
    (planning placeholders get a placeholder of that shape)."""
    shape = tuple(int(n) for n in cache.shape)
    shape = shape[:-1] + (shape[-1] * np.dtype(cache.dtype).itemsize // 4,)
    if not hasattr(cache, "view"):
        return type(cache)(shape, np.uint32)
    return cache.view(np.uint32)  # (16-byte alignment: checked by the API's validate())


def launch(problem, config, q, k_cache, v_cache, block_table, seq_lens, o, lse, gpu):
    """The harness's launch (kernels/contract.py DECODE): error flags in scratch, no FP8 scales."""
    launch_with(problem, config, q, k_cache, v_cache, block_table, seq_lens, o, lse, gpu)


def launch_with(problem, config, q, k_cache, v_cache, block_table, seq_lens, o, lse, gpu,
                errors=None, kv_scales=()):
    """launch, with errors: an int32 array of at least B flags the kernel or-s BAD_LENGTH /
    BAD_BLOCK into (scratch when None: the outputs' NaN is then the only sign), and kv_scales:
    (k_scale, v_scale), each (Hkv,) float32, with an FP8 cache (problem.cache_dtype), else ()."""
    p = problem
    Br, blocks = row_blocks(p, config)
    splits, split_len, rows = _splits_and_rows(p, config)
    left, right = p.mask_bounds()
    if splits > 1:
        o_part = gpu.empty((splits, rows, p.head_dim), np.float32)
        lse_part = gpu.empty((splits, rows), np.float32)
    else:  # the split kernel writes O itself
        o_part = gpu.empty((1, 1, 1), np.float32)
        lse_part = gpu.empty((1, 1), np.float32)
    if errors is None:
        errors = gpu.empty((p.batch,), np.int32)
    if is_fp8(p) and not kv_scales and not hasattr(k_cache, "view"):  # planning placeholders
        kv_scales = (type(k_cache)((p.kv_heads,), np.float32),) * 2
    if is_fp8(p) != (len(kv_scales) == 2):
        raise ValueError("an FP8 cache (problem.cache_dtype) takes kv_scales = (k_scale, v_scale); "
                         "any other cache takes ()")
    T = config["threads"]
    kernel = build(Br, p.head_dim, p.dtype, T, config["unroll"], is_fp8(p))
    max_len = min(p.max_seq, p.max_blocks * p.block_size)  # the lengths this launch covers
    gpu.launch(kernel, (blocks, splits, p.batch * p.kv_heads), T,
               q, as_words(k_cache), as_words(v_cache), block_table, seq_lens, o, lse,
               o_part, lse_part, errors, tuple(kv_scales), LOG2E * np.float32(p.scale), split_len,
               max_len, left, right)
    if splits > 1:
        gpu.launch(build_combine(p.head_dim), rows, COMBINE_THREADS, o_part, lse_part, o, lse)
