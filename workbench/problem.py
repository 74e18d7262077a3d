"""Problem: one attention call's shapes, dtype and mask, with its FLOP and byte counts.

Shapes follow the API contract: q is (B, H, Nq, D), k and v are (B, Hkv, Nkv, D), H a multiple of
Hkv (Hkv = H: multi-head, Hkv = 1: multi-query, otherwise grouped-query). Query head h reads
key/value head h // (H // Hkv).

The mask is FlashAttention's (>= 2.1): with shift = Nkv - Nq, query i sees key j when
    i + shift - left <= j <= i + shift + right,
where window = (left, right) and -1 means unbounded on that side; causal=True sets right = 0
(so a causal square problem is the usual lower triangle, aligned bottom-right when Nq != Nkv).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from workbench.dtypes import FP8, host_dtype, out_dtype

# I/O dtypes (accumulation is always float32). bfloat16 is ml_dtypes.bfloat16 on the host and reaches
# a rung as uint16 bit patterns (workbench/dtypes.py); not every rung takes it (Needs.dtypes).
# float8_e4m3fn: e4m3 codes (uint8 on the device) with per-tensor descale factors, O in float16
# (flash3 only).
DTYPES = ("float32", "float16", "bfloat16", FP8)


def check_descale(descale, dtype: str):
    """FP8's (q_descale, k_descale, v_descale): None (unscaled codes) or three finite positive
    numbers, kept as float32 values; only FP8 problems have them."""
    if descale is None:
        return None
    if dtype != FP8:
        raise ValueError(f"descale is for {FP8} inputs (their per-tensor scales); a {dtype} problem "
                         f"has none: drop it")
    try:
        values = tuple(descale)
    except TypeError:
        values = ()
    if len(values) != 3:
        raise TypeError(f"descale must be (q_descale, k_descale, v_descale), three float32 scales "
                        f"(workbench.quantize_fp8 gives each tensor's); got {descale!r}")
    out = []
    for name, x in zip(("q_descale", "k_descale", "v_descale"), values):
        if isinstance(x, np.ndarray) and x.size == 1:
            x = x.reshape(()).item()
        elif type(x).__module__.split(".")[0] == "torch" and x.numel() == 1:
            x = x.item()  # (a device tensor: one host sync)
        if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, float, np.integer, np.floating)):
            raise TypeError(f"{name} must be a real number (a per-tensor float32 scale), got {x!r}")
        value = float(np.float32(x))
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} = {x!r} must be finite and > 0 (in float32): codes × scale is "
                             f"the tensor")
        out.append(value)
    return tuple(out)


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def check_window(window) -> tuple[int, int] | None:
    """Validate `window=(left, right)`; -1 means unbounded, anything below -1 is an error."""
    if window is None:
        return None
    try:
        left, right = window
    except (TypeError, ValueError):
        raise TypeError(f"window must be a pair (left, right) of ints or None, got {window!r}") from None
    for side, w in (("left", left), ("right", right)):
        if isinstance(w, bool) or not isinstance(w, (int, np.integer)):
            raise TypeError(f"window {side} must be an int (-1 = unbounded), got {w!r}")
        if w < -1:
            raise ValueError(f"window {side} = {w} is below -1; use -1 for unbounded, or a size >= 0")
    return int(left), int(right)


FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_scale(scale, head_dim: int) -> float:
    """`scale` as a float the kernels can use: None -> 1/sqrt(D); otherwise a real number (not a
    bool) that is finite, nonzero and stays so in float32, where every rung multiplies by it."""
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    if isinstance(scale, (bool, np.bool_)) or not isinstance(scale, (int, float, np.integer, np.floating)):
        raise TypeError(f"scale must be a real number or None (1/sqrt(D)), got {scale!r}")
    value = float(scale)
    if not math.isfinite(value) or value == 0:
        raise ValueError(f"scale must be finite and nonzero, got {scale!r}")
    if abs(value) > FLOAT32_MAX or np.float32(value) == 0:
        raise ValueError(f"scale = {value!r} is not representable in float32 (the kernels' arithmetic): "
                         f"use |scale| between {float(np.finfo(np.float32).tiny):.1e} and {FLOAT32_MAX:.1e}")
    return value


@dataclass(frozen=True)
class Problem:
    batch: int = 1
    heads: int = 1
    kv_heads: int | None = None  # defaults to heads
    seq_q: int = 64
    seq_kv: int | None = None  # defaults to seq_q
    head_dim: int = 64
    dtype: str = "float32"
    causal: bool = False
    window: tuple[int, int] | None = None
    scale: float | None = None  # defaults to 1/sqrt(head_dim)
    descale: tuple | None = None  # FP8: (q_descale, k_descale, v_descale); None = unscaled codes

    def __post_init__(self):
        set_ = object.__setattr__
        for name in ("batch", "heads", "seq_q", "head_dim"):
            set_(self, name, _positive_int(name, getattr(self, name)))
        set_(self, "kv_heads", self.heads if self.kv_heads is None else _positive_int("kv_heads", self.kv_heads))
        set_(self, "seq_kv", self.seq_q if self.seq_kv is None else _positive_int("seq_kv", self.seq_kv))
        if self.heads % self.kv_heads:
            raise ValueError(
                f"heads ({self.heads}) must be a multiple of kv_heads ({self.kv_heads}): "
                f"each key/value head serves heads // kv_heads query heads"
            )
        dtype = np.dtype(self.dtype).name if not isinstance(self.dtype, str) else self.dtype
        if dtype not in DTYPES:
            raise TypeError(f"dtype {dtype!r} is not supported; use one of {DTYPES}")
        set_(self, "dtype", dtype)
        set_(self, "causal", bool(self.causal))
        set_(self, "window", check_window(self.window))
        set_(self, "scale", check_scale(self.scale, self.head_dim))
        set_(self, "descale", check_descale(self.descale, dtype))

    @property
    def out_dtype(self) -> str:
        """O's dtype: the I/O dtype, or float16 for FP8 inputs (contract.Arg dtype "out")."""
        return out_dtype(self.dtype)

    # --- shapes -----------------------------------------------------------------------------
    @property
    def q_shape(self):
        return (self.batch, self.heads, self.seq_q, self.head_dim)

    @property
    def kv_shape(self):
        return (self.batch, self.kv_heads, self.seq_kv, self.head_dim)

    @property
    def lse_shape(self):
        return (self.batch, self.heads, self.seq_q)

    @property
    def group(self) -> int:
        """Query heads per key/value head."""
        return self.heads // self.kv_heads

    @property
    def itemsize(self) -> int:
        return host_dtype(self.dtype).itemsize

    # --- the mask -----------------------------------------------------------------------------
    def window_bounds(self) -> tuple[int, int]:
        """(left, right) after causal is folded in; -1 = unbounded."""
        left, right = self.window if self.window is not None else (-1, -1)
        if self.causal:
            right = 0
        return left, right

    def mask_bounds(self) -> tuple[int, int]:
        """(left, right) as kernels use them: unbounded replaced by a number no row can reach,
        so that `i + shift - left <= j <= i + shift + right` needs no branch."""
        far = self.seq_q + self.seq_kv
        left, right = self.window_bounds()
        # A side wider than Nq + Nkv sees exactly what an unbounded one does; clamping it keeps the
        # kernels' int64 mask arithmetic (i + shift ± bound) far from overflow.
        return (far if left < 0 else min(left, far)), (far if right < 0 else min(right, far))

    def visible_range(self) -> tuple[np.ndarray, np.ndarray]:
        """Per query row i: the first and one-past-last visible key (empty when lo >= hi)."""
        left, right = self.mask_bounds()
        i = np.arange(self.seq_q, dtype=np.int64)
        shift = self.seq_kv - self.seq_q
        lo = np.clip(i + shift - left, 0, self.seq_kv)
        hi = np.clip(i + shift + right + 1, 0, self.seq_kv)
        return lo, np.maximum(hi, lo)

    def visible_pairs(self) -> int:
        """How many (query, key) pairs of one head the mask lets through."""
        lo, hi = self.visible_range()
        return int((hi - lo).sum())

    # --- counts ---------------------------------------------------------------------------------
    def flops(self) -> int:
        """4·B·H·D per visible pair (2 for QKᵀ, 2 for PV); causal is about half of the square."""
        return 4 * self.batch * self.heads * self.head_dim * self.visible_pairs()

    def min_bytes(self) -> int:
        """Each input read once, each output (O, and the float32 LSE) written once."""
        out_size = host_dtype(self.out_dtype).itemsize  # (FP8: O is float16)
        q_o = self.batch * self.heads * self.seq_q * self.head_dim * (self.itemsize + out_size)
        k_v = 2 * self.batch * self.kv_heads * self.seq_kv * self.head_dim * self.itemsize
        lse = self.batch * self.heads * self.seq_q * 4
        return q_o + k_v + lse

    def input_bytes(self) -> int:
        """Q, K and V."""
        q = self.batch * self.heads * self.seq_q * self.head_dim
        kv = 2 * self.batch * self.kv_heads * self.seq_kv * self.head_dim
        return (q + kv) * self.itemsize

    def io_bytes(self) -> int:
        """Device memory the call's own arrays occupy: Q, K, V, O and LSE (the floor for peak)."""
        return self.min_bytes()

    # --- inputs -----------------------------------------------------------------------------
    def make_inputs(self, seed: int):
        """Fresh standard-normal q, k, v in this problem's dtype (never zeros or ranges); bfloat16 as
        ml_dtypes.bfloat16 arrays, the float32 draws rounded to nearest even.

        Each (tensor, batch, head) slice has its own stream spawned from `seed`, drawn on all cores:
        the result depends on the seed only, and the seed page's largest problems (3×10⁹ normals)
        take seconds instead of minutes."""
        from concurrent.futures import ThreadPoolExecutor

        shapes = (self.q_shape, self.kv_shape, self.kv_shape)
        arrays = [np.empty(s, host_dtype(self.dtype)) for s in shapes]
        slices = [(a, b, h) for a in arrays for b in range(a.shape[0]) for h in range(a.shape[1])]
        streams = np.random.SeedSequence(seed).spawn(len(slices))

        def fill(i):
            a, b, h = slices[i]  # numpy draws without the GIL, so threads use every core
            a[b, h] = np.random.default_rng(streams[i]).standard_normal(a.shape[2:], dtype=np.float32)

        with ThreadPoolExecutor(min(32, os.cpu_count() or 1)) as pool:
            list(pool.map(fill, range(len(slices))))
        return tuple(arrays)

    def describe(self) -> str:
        heads = f"H={self.heads}" + (f"/{self.kv_heads}" if self.kv_heads != self.heads else "")
        seq = f"N={self.seq_q}" + (f"x{self.seq_kv}" if self.seq_kv != self.seq_q else "")
        mask = (" causal" if self.causal else "") + (f" window={self.window}" if self.window else "")
        return f"B={self.batch} {heads} {seq} D={self.head_dim} {self.dtype}{mask}"


@dataclass(frozen=True)
class DecodeProblem:
    """One decode step's shapes: Nq new tokens per sequence attending over a paged KV cache.

    q: (B, H, Nq, D); k_cache, v_cache: (num_blocks, Hkv, block_size, D), the pool of physical
    blocks; block_table: (B, max_blocks) int32, sequence b's logical key j in physical block
    block_table[b, j // block_size] at offset j % block_size; seq_lens: (B,) int32, each length
    including the new tokens. causal is bottom-right within each sequence (new token i of sequence b
    sits at position seq_lens[b] − Nq + i); window as Problem's. cache_dtype: None (the cache is in
    `dtype`, as q) or "float8_e4m3fn" (e4m3 codes, one byte each, with a float32 scale per kv head
    for K and for V). With device block tables and lengths the API plans with seq_lens = the
    lengths' upper bound (the kernel reads the true ones on the device)."""

    batch: int
    heads: int
    kv_heads: int
    seq_q: int  # new tokens per sequence
    head_dim: int
    block_size: int
    num_blocks: int
    max_blocks: int
    seq_lens: tuple  # per sequence, the new tokens included
    dtype: str = "float16"
    causal: bool = True
    window: tuple | None = None
    scale: float | None = None
    cache_dtype: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "seq_lens", tuple(int(n) for n in self.seq_lens))
        if self.cache_dtype not in (None, "float8_e4m3fn"):
            raise ValueError(f"cache_dtype must be None (the I/O dtype) or 'float8_e4m3fn', not "
                             f"{self.cache_dtype!r}")
        object.__setattr__(self, "window", check_window(self.window))
        object.__setattr__(self, "scale", check_scale(self.scale, self.head_dim))

    @property
    def group(self) -> int:
        return self.heads // self.kv_heads

    @property
    def max_seq(self) -> int:
        return max(self.seq_lens)

    # --- shapes (the decode rungs' arrays, kernels/contract.py DECODE) --------------------------
    @property
    def q_shape(self):
        return (self.batch, self.heads, self.seq_q, self.head_dim)

    @property
    def cache_shape(self):
        return (self.num_blocks, self.kv_heads, self.block_size, self.head_dim)

    @property
    def table_shape(self):
        return (self.batch, self.max_blocks)

    @property
    def lens_shape(self):
        return (self.batch,)

    @property
    def lse_shape(self):
        return (self.batch, self.heads, self.seq_q)

    @property
    def itemsize(self) -> int:
        return host_dtype(self.dtype).itemsize

    @property
    def cache_itemsize(self) -> int:
        """Bytes of a cached K or V element (1 for e4m3 codes)."""
        return 1 if self.cache_dtype else self.itemsize

    def mask_bounds(self) -> tuple[int, int]:
        """(left, right) with unbounded replaced by a number no row reaches (as Problem's)."""
        far = self.seq_q + self.max_seq
        left, right = self.window if self.window is not None else (-1, -1)
        if self.causal:
            right = 0
        return (far if left < 0 else min(left, far)), (far if right < 0 else min(right, far))

    def visible_pairs(self) -> int:
        left, right = self.mask_bounds()
        total = 0
        for n in self.seq_lens:
            i = np.arange(self.seq_q)
            lo = np.clip(i + n - self.seq_q - left, 0, n)
            hi = np.clip(i + n - self.seq_q + right + 1, 0, n)
            total += int(np.maximum(hi - lo, 0).sum())
        return total

    def flops(self) -> int:
        return 4 * self.heads * self.head_dim * self.visible_pairs()

    def cache_bytes_read(self) -> int:
        """K and V of every sequence's context, read once (the floor of a decode step's traffic)."""
        return 2 * self.kv_heads * self.head_dim * self.cache_itemsize * sum(self.seq_lens)

    def io_bytes(self) -> int:
        q_o = 2 * self.batch * self.heads * self.seq_q * self.head_dim * self.itemsize
        cache = 2 * self.num_blocks * self.kv_heads * self.block_size * self.head_dim * self.cache_itemsize
        cache += 8 * self.kv_heads if self.cache_dtype else 0  # the scales
        return q_o + cache + 4 * self.batch * (self.max_blocks + 1) + 4 * self.batch * self.heads * self.seq_q

    def make_inputs(self, seed: int, **paged):
        """Fresh standard-normal q and a paged cache of this problem's lengths and shapes (physical
        blocks shuffled, every unowned slot NaN, table entries past each sequence's blocks invalid:
        `paged_cache`, whose keywords `paged` may override), with the block table and the lengths:
        (q, k_cache, v_cache, block_table, seq_lens)."""
        if self.cache_dtype:
            raise ValueError("make_inputs builds a cache in the I/O dtype; quantise it with "
                             "workbench.api.inference.quantize_cache for an FP8 cache")
        need = [-(-n // self.block_size) for n in self.seq_lens]
        if sum(need) > self.num_blocks or max(need) > self.max_blocks:
            raise ValueError(f"{self.describe()}: the lengths need {sum(need)} blocks and {max(need)} table "
                             f"entries per sequence; the problem has {self.num_blocks} and {self.max_blocks}")
        paged = {"spare_blocks": self.num_blocks - sum(need), "extra_table": self.max_blocks - max(need),
                 **paged}
        rng = np.random.default_rng(seed)
        io = host_dtype(self.dtype)
        q = rng.standard_normal(self.q_shape, dtype=np.float32).astype(io)
        shape = (self.batch, self.kv_heads, self.max_seq, self.head_dim)
        k = rng.standard_normal(shape, dtype=np.float32).astype(io)
        v = rng.standard_normal(shape, dtype=np.float32).astype(io)
        k_cache, v_cache, table = paged_cache(k, v, self.seq_lens, self.block_size, seed=seed, **paged)
        return q, k_cache, v_cache, table, np.asarray(self.seq_lens, np.int32)

    def describe(self) -> str:
        heads = f"H={self.heads}" + (f"/{self.kv_heads}" if self.kv_heads != self.heads else "")
        lens = (f"ctx={self.seq_lens[0]}" if len(set(self.seq_lens)) == 1
                else f"ctx={min(self.seq_lens)}..{self.max_seq}")
        mask = (" causal" if self.causal else "") + (f" window={self.window}" if self.window else "")
        cache = f" cache={self.cache_dtype}" if self.cache_dtype else ""
        return (f"B={self.batch} {heads} Nq={self.seq_q} {lens} D={self.head_dim} "
                f"block={self.block_size} {self.dtype}{cache}{mask}")


def paged_cache(k, v, seq_lens, block_size, *, seed=0, spare_blocks=2, extra_table=1, shuffle=True,
                poison=np.nan):
    """(k_cache, v_cache, block_table) holding contiguous k, v (B, Hkv, N, D) of lengths seq_lens.

    Physical blocks are handed out in a random order (non-contiguous, shuffled), `spare_blocks`
    unused ones are added, every slot no sequence uses (spare blocks and the tail of each last,
    partial block) is filled with `poison`, and each table row has `extra_table` entries past its
    last used block holding an invalid id (num_blocks + 7): none of them may ever be read."""
    k, v = np.asarray(k), np.asarray(v)
    b, hkv, _, d = k.shape
    lens = [int(n) for n in seq_lens]
    need = [-(-n // block_size) for n in lens]
    num_blocks = sum(need) + spare_blocks
    rng = np.random.default_rng(seed)
    order = rng.permutation(num_blocks) if shuffle else np.arange(num_blocks)
    k_cache = np.full((num_blocks, hkv, block_size, d), poison, k.dtype)
    v_cache = np.full_like(k_cache, poison)
    table = np.full((b, max(need) + extra_table), num_blocks + 7, np.int32)
    nxt = 0
    for i, n in enumerate(lens):
        for lb in range(need[i]):
            phys = int(order[nxt])
            nxt += 1
            table[i, lb] = phys
            j0, j1 = lb * block_size, min(n, (lb + 1) * block_size)
            k_cache[phys, :, : j1 - j0] = k[i, :, j0:j1]
            v_cache[phys, :, : j1 - j0] = v[i, :, j0:j1]
    return k_cache, v_cache, table
