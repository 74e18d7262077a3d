"""Inference: attention of a few new tokens against a paged KV cache (the decode rungs).

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

The decode rungs (`workbench.kernels.DECODE`: decode, paged_decode; `kernel=` picks one) go through
the harness like every rung (`runner.check_config`, `runner.run` with the arrays of
kernels/contract.py DECODE). The problem's shapes are `workbench.problem.DecodeProblem`;
`paged_cache` (also there) builds a paged cache from contiguous K/V with physical blocks in a
shuffled order, the spare slots poisoned with NaN; `check_decode` is `harness.verify.check` of a
decode rung: against float64 on the cache gathered back, with the forward's tolerances.
"""

from __future__ import annotations

import numpy as np

from workbench import dtypes as _dtypes
from workbench.api.forward import _contiguous, _kind, caller_allocator, caller_stream, check_flag
from workbench.harness import runner, verify
from workbench.kernels import get
from workbench.problem import DTYPES, DecodeProblem, paged_cache  # noqa: F401  (paged_cache: re-exported)
from workbench.harness.verify import reference_decode  # noqa: F401  (re-exported for callers)


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
    check_flag("causal", causal)
    for name, x in arrays.items():
        if isinstance(x, np.ndarray) and x.dtype.byteorder not in "=|" and x.dtype.itemsize > 1:
            raise ValueError(f"{name} is big-endian ({x.dtype.str}): the GPU reads native (little-endian) "
                             f"numbers; pass {name}.astype({name}.dtype.newbyteorder('='))")
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
    short = np.nonzero(lens < nq)[0]
    if short.size:
        i = int(short[0])
        raise ValueError(f"seq_lens[{i}] = {int(lens[i])} is below the {nq} new tokens in q: the cache "
                         f"must already hold them (seq_lens counts the new tokens too)")
    if kind == "numpy":  # what each sequence reads must be finite, as the forward's inputs must be
        for name, cache in (("k_cache", k_cache), ("v_cache", v_cache)):
            for i, n in enumerate(lens):
                blocks = table[i, : -(-int(n) // bs)]
                rows = cache[blocks].transpose(1, 0, 2, 3).reshape(hkv, -1, d)[:, : int(n)]
                if not np.isfinite(rows).all():
                    raise ValueError(f"{name} holds NaN or inf in a slot sequence {i} reads (its first "
                                     f"{int(n)} tokens): attention of non-finite inputs is undefined here")
    problem = DecodeProblem(b, h, hkv, nq, d, bs, num_blocks, max_blocks, tuple(lens.tolist()),
                            dtypes.pop(), bool(causal), window, scale)
    return problem, kind


def decode(q, k_cache, v_cache, block_table, seq_lens, *, causal=True, window=None, scale=None,
           config=None, return_lse=False, kernel="paged_decode"):
    """Attention of q's new tokens over their sequences' paged caches (see the module docstring).
    Returns O shaped like q (and LSE (B, H, Nq) float32 with return_lse=True), of q's kind."""
    rung = get(kernel, kind="decode")
    problem, kind = validate(q, k_cache, v_cache, block_table, seq_lens, causal, window, scale)
    check_flag("return_lse", return_lse)
    config = runner.check_config(rung, problem, config)
    from numba import cuda

    io = _dtypes.device_dtype(problem.dtype)  # bfloat16 travels as its uint16 bits
    if kind == "numpy":
        args = [cuda.to_device(_dtypes.to_bits(np.ascontiguousarray(x)))
                for x in (q, k_cache, v_cache, block_table, seq_lens)]
    else:
        args = [_dtypes.device_view(x, kind) for x in (q, k_cache, v_cache, block_table, seq_lens)]
    if kind in ("numpy", "numba"):
        o = cuda.device_array(problem.q_shape, io)
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
        o, lse = _dtypes.device_view(out_o, kind), cuda.as_cuda_array(out_lse)
    runner.run(rung, problem, config, *args, o, lse, stream=caller_stream(kind, q),
               allocate=caller_allocator(kind, q), track_memory=False)
    if kind == "numpy":
        out_o, out_lse = _dtypes.from_bits(o.copy_to_host(), problem.dtype), lse.copy_to_host()
    return (out_o, out_lse) if return_lse else out_o


# --------------------------------------------------------------------------------------------------
# Verification (harness/verify.py), by the names callers know
# --------------------------------------------------------------------------------------------------
def make_decode_inputs(problem: DecodeProblem, seed: int, **paged):
    """q and a paged cache (shuffled physical blocks) for this problem: `problem.make_inputs`."""
    return problem.make_inputs(seed, **paged)


def check_decode(problem: DecodeProblem, seed: int = 0, config=None, kernel="paged_decode") -> verify.Report:
    """`verify.check` of a decode rung: two launches (outputs poisoned), O and LSE against float64
    on the gathered cache."""
    return verify.check(get(kernel, kind="decode"), problem, seed=seed, config=config)
