"""Inference: attention of a few new tokens against a paged KV cache (the decode rung).

    o = workbench.api.inference.decode(q, k_cache, v_cache, block_table, seq_lens, causal=True)

- q: (B, H, Nq, D), the new tokens' queries (Nq = 1 for plain generation).
- k_cache, v_cache: (num_blocks, Hkv, block_size, D), the pool of physical blocks.
- block_table: (B, max_blocks) int32; sequence b's logical key j lives in physical block
  block_table[b, j // block_size] at offset j % block_size. Entries past a sequence's last used
  block are never read (they may hold anything).
- seq_lens: (B,) int32, each sequence's length *including* the Nq new tokens (whose K and V are
  already written to the cache), at most max_blocks · block_size.
- causal: bottom-right within each sequence, as the forward: new token i of sequence b is at
  position seq_lens[b] − Nq + i and sees the keys up to it. window=(left, right) likewise.

Array kinds as `workbench.attention` (NumPy, Numba device arrays, CuPy, torch CUDA tensors; the
result is q's kind). Block tables and lengths are copied to the host and checked before any launch
(a physical block id outside the pool, a length over the table's capacity or below 1: ValueError).
Cache slots that no sequence uses are never read, so they need not be finite (and are not scanned).

`paged_cache` builds a paged cache from contiguous K/V with physical blocks in a shuffled order,
the spare slots poisoned with NaN; `check_decode` verifies the rung against float64 on the cache
gathered back (reference.gather_paged), with the forward's tolerances (harness/verify.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from workbench import reference
from workbench.api.forward import _contiguous, _kind
from workbench.harness import runner, verify
from workbench.kernels import Rung
from workbench.kernels import decode as _decode
from workbench.problem import DTYPES, check_window

DECODE = (Rung(1, "decode", _decode.LESSON, _decode),)


@dataclass(frozen=True)
class DecodeProblem:
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

    def __post_init__(self):
        object.__setattr__(self, "seq_lens", tuple(int(n) for n in self.seq_lens))
        object.__setattr__(self, "window", check_window(self.window))
        if self.scale is None:
            object.__setattr__(self, "scale", 1.0 / math.sqrt(self.head_dim))

    @property
    def group(self) -> int:
        return self.heads // self.kv_heads

    @property
    def max_seq(self) -> int:
        return max(self.seq_lens)

    @property
    def q_shape(self):
        return (self.batch, self.heads, self.seq_q, self.head_dim)

    @property
    def cache_shape(self):
        return (self.num_blocks, self.kv_heads, self.block_size, self.head_dim)

    @property
    def lse_shape(self):
        return (self.batch, self.heads, self.seq_q)

    @property
    def itemsize(self) -> int:
        return np.dtype(self.dtype).itemsize

    def mask_bounds(self) -> tuple[int, int]:
        """(left, right) with unbounded replaced by a number no row reaches (as Problem's)."""
        far = self.seq_q + self.max_seq
        left, right = self.window if self.window is not None else (-1, -1)
        if self.causal:
            right = 0
        return (far if left < 0 else left), (far if right < 0 else right)

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
        return 2 * self.kv_heads * self.head_dim * self.itemsize * sum(self.seq_lens)

    def io_bytes(self) -> int:
        q_o = 2 * self.batch * self.heads * self.seq_q * self.head_dim * self.itemsize
        cache = 2 * self.num_blocks * self.kv_heads * self.block_size * self.head_dim * self.itemsize
        return q_o + cache + 4 * self.batch * (self.max_blocks + 1) + 4 * self.batch * self.heads * self.seq_q

    def describe(self) -> str:
        heads = f"H={self.heads}" + (f"/{self.kv_heads}" if self.kv_heads != self.heads else "")
        lens = (f"ctx={self.seq_lens[0]}" if len(set(self.seq_lens)) == 1
                else f"ctx={min(self.seq_lens)}..{self.max_seq}")
        mask = (" causal" if self.causal else "") + (f" window={self.window}" if self.window else "")
        return (f"B={self.batch} {heads} Nq={self.seq_q} {lens} D={self.head_dim} "
                f"block={self.block_size} {self.dtype}{mask}")


# --------------------------------------------------------------------------------------------------
# Planning, launching, validation
# --------------------------------------------------------------------------------------------------
def plan(rung, problem: DecodeProblem, config: dict):
    P = runner.Placeholder
    gpu = runner.Launcher(live=False)
    rung.module.launch(problem, config, P(problem.q_shape, problem.dtype),
                       P(problem.cache_shape, problem.dtype), P(problem.cache_shape, problem.dtype),
                       P((problem.batch, problem.max_blocks), np.int32), P((problem.batch,), np.int32),
                       P(problem.q_shape, problem.dtype), P(problem.lse_shape, np.float32), gpu)
    return gpu.launches


def check_config(rung, problem, config=None) -> dict:
    return runner.check_config(rung, problem, config, planner=plan)


def run(rung, problem, config, q, k_cache, v_cache, block_table, seq_lens, o, lse, pool=None):
    if pool is not None:
        pool.next = 0
    gpu = runner.Launcher(live=True, pool=pool)
    rung.module.launch(problem, config, q, k_cache, v_cache, block_table, seq_lens, o, lse, gpu)
    return gpu


def _dtype_name(x) -> str:
    return str(x.dtype).split(".")[-1] if hasattr(x.dtype, "is_floating_point") else np.dtype(x.dtype).name


def _host(x, kind):
    if kind == "numpy":
        return x
    if kind == "numba":
        return x.copy_to_host()
    if kind == "torch":
        return x.cpu().numpy()
    import cupy

    return cupy.asnumpy(x)


def validate(q, k_cache, v_cache, block_table, seq_lens, causal=True, window=None, scale=None):
    """The DecodeProblem of these arrays, or a ValueError/TypeError naming the problem and the fix."""
    arrays = {"q": q, "k_cache": k_cache, "v_cache": v_cache, "block_table": block_table,
              "seq_lens": seq_lens}
    kinds = {_kind(x) for x in arrays.values()}
    if len(kinds) > 1:
        raise TypeError(f"q, k_cache, v_cache, block_table, seq_lens must be the same kind of array; "
                        f"got {sorted(kinds)}")
    kind = kinds.pop()
    if len(q.shape) != 4:
        raise ValueError(f"q must be 4-D (batch, heads, new tokens, head_dim); got {tuple(q.shape)}")
    for name in ("k_cache", "v_cache"):
        if len(arrays[name].shape) != 4:
            raise ValueError(f"{name} must be 4-D (num_blocks, kv_heads, block_size, head_dim); got "
                             f"{tuple(arrays[name].shape)}")
    if tuple(k_cache.shape) != tuple(v_cache.shape):
        raise ValueError(f"k_cache and v_cache must have the same shape; got {tuple(k_cache.shape)} "
                         f"and {tuple(v_cache.shape)}")
    dtypes = {_dtype_name(x) for x in (q, k_cache, v_cache)}
    if len(dtypes) > 1 or not dtypes <= set(DTYPES):
        raise TypeError(f"q, k_cache, v_cache must share one dtype of {DTYPES}; got {sorted(dtypes)}")
    b, h, nq, d = (int(x) for x in q.shape)
    num_blocks, hkv, bs, dk = (int(x) for x in k_cache.shape)
    if min(b, h, nq, d, num_blocks, hkv, bs) < 1:
        raise ValueError(f"every dimension must be >= 1: q {tuple(q.shape)}, cache {tuple(k_cache.shape)}")
    if dk != d:
        raise ValueError(f"q has head_dim {d} but the cache has {dk}: they must match")
    if h % hkv:
        raise ValueError(f"q has {h} heads, the cache {hkv} kv heads: heads must be a multiple of "
                         f"kv_heads (MHA, GQA, MQA)")
    if len(block_table.shape) != 2 or int(block_table.shape[0]) != b:
        raise ValueError(f"block_table must be (batch, max_blocks) = ({b}, ...); got {tuple(block_table.shape)}")
    if tuple(int(x) for x in seq_lens.shape) != (b,):
        raise ValueError(f"seq_lens must be ({b},) (one length per sequence); got {tuple(seq_lens.shape)}")
    for name in ("block_table", "seq_lens"):
        if _dtype_name(arrays[name]) != "int32":
            raise TypeError(f"{name} must be int32, got {_dtype_name(arrays[name])}: cast it "
                            f"(.astype(np.int32) / .to(torch.int32))")
    if not isinstance(causal, (bool, np.bool_)):
        raise TypeError(f"causal must be True or False, got {causal!r}")
    for name in ("q", "k_cache", "v_cache", "block_table", "seq_lens"):
        if not _contiguous(arrays[name], kind):
            raise ValueError(f"{name} is not C-contiguous: pass a contiguous copy")
    if kind == "numpy" and not np.isfinite(q).all():
        raise ValueError("q contains NaN or inf")
    table, lens = _host(block_table, kind), _host(seq_lens, kind)
    max_blocks = int(table.shape[1])
    if (lens < 1).any():
        raise ValueError(f"seq_lens must be >= 1 (the new tokens are in the cache); got {lens.tolist()}")
    over = np.nonzero(lens > max_blocks * bs)[0]
    if over.size:
        i = int(over[0])
        raise ValueError(f"seq_lens[{i}] = {int(lens[i])} is over the block table's capacity "
                         f"{max_blocks} blocks × {bs} = {max_blocks * bs}: add blocks to the table")
    for i, n in enumerate(lens):
        used = table[i, : -(-int(n) // bs)]
        bad = (used < 0) | (used >= num_blocks)
        if bad.any():
            j = int(np.argmax(bad))
            raise ValueError(f"block_table[{i}, {j}] = {int(used[j])} is not a physical block of the "
                             f"cache (0..{num_blocks - 1}); sequence {i} needs its first "
                             f"{len(used)} entries valid")
    problem = DecodeProblem(b, h, hkv, nq, d, bs, num_blocks, max_blocks, tuple(lens.tolist()),
                            dtypes.pop(), bool(causal), window, scale)
    return problem, kind


def decode(q, k_cache, v_cache, block_table, seq_lens, *, causal=True, window=None, scale=None,
           config=None, return_lse=False):
    """Attention of q's new tokens over their sequences' paged caches (see the module docstring).
    Returns O shaped like q (and LSE (B, H, Nq) float32 with return_lse=True), of q's kind."""
    rung = DECODE[0]
    problem, kind = validate(q, k_cache, v_cache, block_table, seq_lens, causal, window, scale)
    config = check_config(rung, problem, config)
    from numba import cuda

    if kind in ("numpy", "numba"):
        args = [cuda.to_device(np.ascontiguousarray(x)) if kind == "numpy" else x
                for x in (q, k_cache, v_cache, block_table, seq_lens)]
        o = cuda.device_array(problem.q_shape, problem.dtype)
        lse = cuda.device_array(problem.lse_shape, np.float32)
        out_o, out_lse = o, lse
    else:
        if kind == "torch":
            import torch

            out_o = torch.empty_like(q)
            out_lse = torch.empty(problem.lse_shape, dtype=torch.float32, device=q.device)
        else:
            import cupy

            out_o, out_lse = cupy.empty_like(q), cupy.empty(problem.lse_shape, dtype=cupy.float32)
        args = [cuda.as_cuda_array(x) for x in (q, k_cache, v_cache, block_table, seq_lens)]
        o, lse = cuda.as_cuda_array(out_o), cuda.as_cuda_array(out_lse)
    run(rung, problem, config, *args, o, lse)
    cuda.synchronize()
    if kind == "numpy":
        out_o, out_lse = o.copy_to_host(), lse.copy_to_host()
    return (out_o, out_lse) if return_lse else out_o


# --------------------------------------------------------------------------------------------------
# Paged caches for tests and benchmarks, and verification
# --------------------------------------------------------------------------------------------------
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


def make_decode_inputs(problem: DecodeProblem, seed: int, **paged):
    """q and a paged cache (shuffled physical blocks) for this problem's lengths."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal(problem.q_shape, dtype=np.float32).astype(problem.dtype)
    shape = (problem.batch, problem.kv_heads, problem.max_seq, problem.head_dim)
    k = rng.standard_normal(shape, dtype=np.float32).astype(problem.dtype)
    v = rng.standard_normal(shape, dtype=np.float32).astype(problem.dtype)
    k_cache, v_cache, table = paged_cache(k, v, problem.seq_lens, problem.block_size, seed=seed, **paged)
    return q, k_cache, v_cache, table, np.asarray(problem.seq_lens, np.int32)


def reference_decode(problem: DecodeProblem, q, k_cache, v_cache, table, seq_lens):
    """Float64 O, LSE on the gathered cache, one sequence at a time (each has its own length)."""
    o = np.zeros(problem.q_shape)
    lse = np.zeros(problem.lse_shape)
    for b, n in enumerate(seq_lens):
        kb = reference.gather_paged(k_cache, table[b:b + 1], seq_lens[b:b + 1])
        vb = reference.gather_paged(v_cache, table[b:b + 1], seq_lens[b:b + 1])
        o[b:b + 1], lse[b:b + 1] = reference.attention(q[b:b + 1], kb, vb, causal=problem.causal,
                                                       window=problem.window, scale=problem.scale)
    return o, lse


def check_decode(problem: DecodeProblem, seed: int = 0, config=None, inputs=None) -> verify.Report:
    """Run the decode rung twice (outputs poisoned) and judge O and LSE against float64."""
    from numba import cuda

    rung = DECODE[0]
    cfg = check_config(rung, problem, config)
    q, k_cache, v_cache, table, lens = inputs if inputs is not None else make_decode_inputs(problem, seed)
    ref_o, ref_lse = reference_decode(problem, q, k_cache, v_cache, table, lens)
    dev = [cuda.to_device(x) for x in (q, k_cache, v_cache, table, lens)]
    report = verify.Report(rung.name, problem, seed)
    outs = []
    for _ in range(2):
        o = cuda.to_device(np.full(problem.q_shape, np.nan, problem.dtype))
        lse = cuda.to_device(np.full(problem.lse_shape, np.nan, np.float32))
        ran = run(rung, problem, cfg, *dev, o, lse)
        cuda.synchronize()
        report.workspace_bytes = ran.workspace_bytes
        outs.append((o.copy_to_host(), lse.copy_to_host()))
    (o1, l1), (o2, l2) = outs
    report.deterministic = o1.tobytes() == o2.tobytes() and l1.tobytes() == l2.tobytes()
    if not report.deterministic:
        report.failures.append("two launches on the same inputs differ bitwise (a race?)")
    report.unwritten = int(np.isnan(o1).sum())
    if report.unwritten:
        report.failures.append(f"{report.unwritten} of {o1.size} output elements are NaN (never written?)")
    return verify.compare(report, o1, l1, ref_o, ref_lse)
