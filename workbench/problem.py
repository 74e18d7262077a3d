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

from workbench.dtypes import host_dtype

# I/O dtypes (accumulation is always float32). bfloat16 is ml_dtypes.bfloat16 on the host and reaches
# a rung as uint16 bit patterns (workbench/dtypes.py); not every rung takes it (Needs.dtypes).
DTYPES = ("float32", "float16", "bfloat16")


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
        q_o = 2 * self.batch * self.heads * self.seq_q * self.head_dim * self.itemsize
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
