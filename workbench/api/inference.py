"""Inference: attention of a few new tokens against a paged KV cache (the decode rungs).

    o = workbench.api.inference.decode(q, k_cache, v_cache, block_table, seq_lens, causal=True)

- q: (B, H, Nq, D), the new tokens' queries (Nq = 1 for plain generation).
- k_cache, v_cache: (num_blocks, Hkv, block_size, D), the pool of physical blocks, in q's dtype or
  FP8 (below).
- block_table: (B, max_blocks) int32; sequence b's logical key j lives in physical block
  block_table[b, j // block_size] at offset j % block_size. Entries past a sequence's last used
  block are never read (they may hold anything).
- seq_lens: (B,) int32, each sequence's length *including* the Nq new tokens (whose K and V are
  already written to the cache), from Nq to max_blocks · block_size.
- causal: bottom-right within each sequence, as the forward: new token i of sequence b is at
  position seq_lens[b] − Nq + i and sees the keys up to it. window=(left, right) likewise.

Array kinds as `workbench.attention` (NumPy, Numba device arrays, CuPy, torch CUDA tensors; the
result is q's kind). Cache slots that no sequence uses are never read, so they need not be finite.

Checking the block table and the lengths (a bad block id would read outside the cache):
- NumPy inputs (copied to the device anyway) are checked on the host before any launch: a length
  outside [Nq, capacity], a block id outside the pool, NaN in a slot a sequence reads: ValueError.
- Device inputs are never copied to the host (that would synchronise every step): the kernel
  checks each length and every table entry it would use, on the device, before it reads the
  cache (kernels/paged_decode.py, "Checks on the device"; no extra launch). A sequence that fails
  gets NaN O (and LSE); the others are exact. To know which and why without a sync per step,
  pass `errors=DecodeErrors(max_batch, like=q)`: the kernel or-s DecodeErrors.BAD_LENGTH /
  BAD_BLOCK into its flag for sequence b, the flags stay set over calls, and `errors.check()`
  (one sync, when you choose: once per batch, before returning tokens) raises DecodeError naming
  the sequences, then clears them. `errors="raise"` checks device inputs on the host instead, as
  NumPy's (a copy and a sync per call: for debugging).
- Planning: with device lengths the launch is planned for lengths up to the table's capacity
  max_blocks · block_size (split sizes; CTAs past a sequence's end return at once); pass
  `max_seq_len=` (a host int, e.g. the longest sequence of the batch) to plan for less: a longer
  length is then flagged BAD_LENGTH like one past the capacity. A value that stays the same from
  step to step (rounded up to a power of two, say) keeps the plan cached (a new one is planned on
  the host, once, for each new value).
- Alignment: the caches must start on a 16-byte boundary (the kernel reads 16-byte vectors);
  views that do not: ValueError before any launch.

FP8 cache: k_cache, v_cache hold e4m3 codes (uint8, torch.float8_e4m3fn or ml_dtypes
float8_e4m3fn), with `k_scale=`, `v_scale=` (Hkv,) float32 of the same kind: the cached number is
code's value × scale of its kv head. q and O keep their dtype (float16, bfloat16, float32); D a
multiple of 16. `quantize_cache` makes one from a NumPy cache (a scale per kv head: max |x| / 448,
nearest rounding); `dequantize_cache` gives the float64 numbers the result is judged against.

The decode rungs (`workbench.kernels.DECODE`: paged_decode; `kernel=` picks one) go through the
harness like every rung (`runner.check_config`, the arrays of kernels/contract.py DECODE). The
problem's shapes are `workbench.problem.DecodeProblem`; `paged_cache` (also there) builds a paged
cache from contiguous K/V with physical blocks in a shuffled order, the spare slots poisoned with
NaN; `check_decode` is `harness.verify.check` of a decode rung: against float64 on the cache
gathered back, with the forward's tolerances.
"""

from __future__ import annotations

import numpy as np

from workbench import dtypes as _dtypes
from workbench.api.forward import _contiguous, _kind, caller_allocator, caller_stream, check_flag
from workbench.harness import runner, verify
from workbench.kernels import get
from workbench.problem import DTYPES, DecodeProblem, paged_cache  # noqa: F401  (paged_cache: re-exported)
from workbench.harness.verify import reference_decode  # noqa: F401  (re-exported for callers)

FP8 = "float8_e4m3fn"  # DecodeProblem.cache_dtype of an e4m3 cache
FP8_NAMES = ("uint8", FP8)  # cache dtypes taken as e4m3 codes (with k_scale, v_scale)
E4M3_MAX = 448.0
ALIGN = 16  # bytes: the kernel reads the cache in 16-byte vectors
BAD_LENGTH, BAD_BLOCK = 1, 2  # (kernels/paged_decode.py's codes)


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


def _address(x, kind) -> int:
    """The device address of x's first element (the simulator's device arrays are NumPy arrays)."""
    if kind == "torch":
        return int(x.data_ptr())
    cai = getattr(x, "__cuda_array_interface__", None)
    if cai is not None:
        return int(cai["data"][0])
    return int(x.ctypes.data)


# --------------------------------------------------------------------------------------------------
# Device-side error flags
# --------------------------------------------------------------------------------------------------
class DecodeError(ValueError):
    """decode's device-side checks found a bad length or block id (`codes`: the flags per sequence)."""

    def __init__(self, message, codes):
        super().__init__(message)
        self.codes = codes


class DecodeErrors:
    """Flags the decode kernel sets on the device when a sequence's length or block table is bad,
    read when the caller chooses to synchronise (see the module docstring).

        errors = DecodeErrors(64, like=q)      # int32 zeros on q's device (torch, CuPy or Numba)
        o = decode(q, k_cache, v_cache, table, lens, errors=errors)    # no host sync
        ...
        errors.check()                         # one sync: DecodeError if any flag is set

    flags[b] is or-ed with BAD_LENGTH (1) when sequence b's length was outside [Nq, max_len]
    (max_len: the table's capacity, or max_seq_len) and with BAD_BLOCK (2) when an entry of its
    table for its keys was outside [0, num_blocks); b is the sequence's row in the call. Flags
    are sticky: or-ed over calls until `clear()` (or `check()`, which clears them)."""

    BAD_LENGTH = BAD_LENGTH
    BAD_BLOCK = BAD_BLOCK

    def __init__(self, batch: int, like=None):
        from numba import cuda

        if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
            raise ValueError(f"DecodeErrors needs a batch size >= 1 (the most sequences a call "
                             f"has), got {batch!r}")
        self.kind = "numba" if like is None or isinstance(like, np.ndarray) else _kind(like)
        if self.kind == "torch":
            import torch

            self.flags = torch.zeros(int(batch), dtype=torch.int32, device=like.device)
            self.view = cuda.as_cuda_array(self.flags)  # made once: no view per call
        elif self.kind == "cupy":
            import cupy

            self.flags = cupy.zeros(int(batch), dtype=cupy.int32)
            self.view = cuda.as_cuda_array(self.flags)
        else:
            self.flags = self.view = cuda.to_device(np.zeros(int(batch), np.int32))

    def __len__(self) -> int:
        return int(self.view.shape[0])

    def codes(self) -> np.ndarray:
        """The flags on the host (a synchronisation)."""
        return np.asarray(_host(self.flags, self.kind), dtype=np.int32).copy()

    def any(self) -> bool:
        return bool(self.codes().any())

    def clear(self) -> None:
        if self.kind in ("torch", "cupy"):
            self.flags.fill(0) if self.kind == "cupy" else self.flags.zero_()
        else:
            self.view.copy_to_device(np.zeros(len(self), np.int32))

    def check(self, clear: bool = True) -> None:
        """Raise DecodeError naming each flagged sequence (then clear the flags, unless told not
        to); return quietly when none is set."""
        codes = self.codes()
        bad = np.nonzero(codes)[0]
        if clear and bad.size:
            self.clear()
        if not bad.size:
            return
        what = []
        for b in bad[:8]:
            c = int(codes[b])
            why = [w for bit, w in ((BAD_LENGTH, "length outside [Nq, max_len]"),
                                    (BAD_BLOCK, "a block id outside the cache")) if c & bit]
            what.append(f"sequence {int(b)}: " + " and ".join(why or [f"code {c}"]))
        more = f" (and {bad.size - 8} more)" if bad.size > 8 else ""
        raise DecodeError(f"decode found bad inputs on the device (their outputs are NaN): "
                          f"{'; '.join(what)}{more}", codes)


# --------------------------------------------------------------------------------------------------
# FP8 caches
# --------------------------------------------------------------------------------------------------
def quantize_cache(k_cache, v_cache):
    """(k_codes, v_codes, k_scale, v_scale) of a NumPy cache (num_blocks, Hkv, block_size, D): e4m3
    codes (uint8), a float32 scale per kv head for each (max |x| over the head's finite values /
    448), every value rounded to the nearest e4m3 number (ml_dtypes' cast: nearest, ties to even);
    non-finite slots (unowned ones poisoned with NaN) become NaN codes."""
    import ml_dtypes

    out = []
    for cache in (k_cache, v_cache):
        x = np.asarray(cache, dtype=np.float32)
        finite = np.isfinite(x)
        amax = np.abs(np.where(finite, x, 0)).max(axis=(0, 2, 3))
        scales = np.where(amax > 0, amax / np.float32(E4M3_MAX), 1).astype(np.float32)
        y = np.where(finite, x, np.nan) / scales[None, :, None, None]
        out.append((y.astype(ml_dtypes.float8_e4m3fn).view(np.uint8), scales))
    (kc, ks), (vc, vs) = out
    return kc, vc, ks, vs


def dequantize_cache(codes, scale) -> np.ndarray:
    """The float64 numbers an e4m3 cache holds: code value × its kv head's scale (NaN codes NaN)."""
    import ml_dtypes

    values = np.asarray(codes).view(np.uint8).view(ml_dtypes.float8_e4m3fn).astype(np.float64)
    return values * np.asarray(scale, np.float64)[None, :, None, None]


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------
def validate(q, k_cache, v_cache, block_table, seq_lens, causal=True, window=None, scale=None, *,
             k_scale=None, v_scale=None, errors=None, max_seq_len=None):
    """The DecodeProblem of these arrays, or a ValueError/TypeError naming the problem and the fix.
    Block tables and lengths are checked here (host copies) for NumPy inputs and errors="raise";
    device inputs otherwise leave them to the kernel (module docstring) and the problem is planned
    for lengths up to max_seq_len (default: the table's capacity). Returns (problem, kind)."""
    arrays = {"q": q, "k_cache": k_cache, "v_cache": v_cache, "block_table": block_table,
              "seq_lens": seq_lens}
    fp8 = k_scale is not None or v_scale is not None or (
        hasattr(k_cache, "dtype") and _dtype_name(k_cache) in FP8_NAMES)
    if fp8:
        arrays.update(k_scale=k_scale, v_scale=v_scale)
    if fp8 and (k_scale is None or v_scale is None):
        raise ValueError("an FP8 (e4m3) cache needs k_scale and v_scale, (kv_heads,) float32 each; "
                         "workbench.api.inference.quantize_cache makes both")
    kinds = {_kind(x) for x in arrays.values()}
    names = ", ".join(arrays)
    if len(kinds) > 1:
        raise TypeError(f"{names} must be the same kind of array; got {sorted(kinds)}")
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
    if fp8:
        cache_dtypes = {_dtype_name(x) for x in (k_cache, v_cache)}
        if len(cache_dtypes) > 1 or not cache_dtypes <= set(FP8_NAMES):
            raise TypeError(f"with k_scale/v_scale, k_cache and v_cache hold e4m3 codes: one dtype of "
                            f"{FP8_NAMES}; got {sorted(cache_dtypes)}")
        if _dtype_name(q) not in DTYPES:
            raise TypeError(f"q must be one of {DTYPES}; got {_dtype_name(q)}")
        dtypes = {_dtype_name(q)}
    else:
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
    if fp8:
        for name in ("k_scale", "v_scale"):
            x = arrays[name]
            if tuple(int(n) for n in x.shape) != (hkv,) or _dtype_name(x) != "float32":
                raise ValueError(f"{name} must be ({hkv},) float32 (a scale per kv head); got "
                                 f"{tuple(x.shape)} {_dtype_name(x)}")
        if d % 16:
            raise ValueError(f"an FP8 cache needs head_dim a multiple of 16 (got {d}): 16 codes "
                             f"make a 16-byte load")
    if len(block_table.shape) != 2 or int(block_table.shape[0]) != b:
        raise ValueError(f"block_table must be (batch, max_blocks) = ({b}, ...); got {tuple(block_table.shape)}")
    if tuple(int(x) for x in seq_lens.shape) != (b,):
        raise ValueError(f"seq_lens must be ({b},) (one length per sequence); got {tuple(seq_lens.shape)}")
    for name in ("block_table", "seq_lens"):
        if _dtype_name(arrays[name]) != "int32":
            raise TypeError(f"{name} must be int32, got {_dtype_name(arrays[name])}: cast it "
                            f"(.astype(np.int32) / .to(torch.int32))")
    check_flag("causal", causal)
    if not (errors is None or isinstance(errors, DecodeErrors) or (isinstance(errors, str) and errors == "raise")):
        raise TypeError(f"errors must be None, 'raise' or a DecodeErrors; got {errors!r}")
    if isinstance(errors, DecodeErrors) and len(errors) < b:
        raise ValueError(f"errors holds {len(errors)} flags but the batch has {b} sequences: make "
                         f"DecodeErrors(max_batch) as large as the largest batch")
    max_blocks = int(block_table.shape[1])
    capacity = max_blocks * bs
    if max_seq_len is not None:
        if isinstance(max_seq_len, bool) or not isinstance(max_seq_len, (int, np.integer)):
            raise TypeError(f"max_seq_len must be an int (a host number), got {type(max_seq_len).__name__}")
        if not nq <= max_seq_len:
            raise ValueError(f"max_seq_len = {max_seq_len} is below the {nq} new tokens")
    for name, x in arrays.items():
        if isinstance(x, np.ndarray) and x.dtype.byteorder not in "=|" and x.dtype.itemsize > 1:
            raise ValueError(f"{name} is big-endian ({x.dtype.str}): the GPU reads native (little-endian) "
                             f"numbers; pass {name}.astype({name}.dtype.newbyteorder('='))")
    for name in arrays:
        if not _contiguous(arrays[name], kind):
            raise ValueError(f"{name} is not C-contiguous: pass a contiguous copy")
    if kind != "numpy":  # (NumPy inputs are copied into fresh, aligned allocations)
        for name in ("k_cache", "v_cache"):
            at = _address(arrays[name], kind)
            if at % ALIGN:
                raise ValueError(f"{name} must start on a {ALIGN}-byte boundary for the kernel's "
                                 f"vector loads (it starts at {at:#x}, {at % ALIGN} bytes past one): "
                                 f"pass a freshly allocated cache, or a view starting on a boundary")
    if kind == "numpy" and not np.isfinite(q).all():
        raise ValueError("q contains NaN or inf")
    if fp8 and kind == "numpy":
        for name in ("k_scale", "v_scale"):
            x = arrays[name]
            if not (np.isfinite(x).all() and (x > 0).all()):
                raise ValueError(f"{name} must be finite and positive, got {x.tolist()}")
    dtype = dtypes.pop()
    cache_dtype = FP8 if fp8 else None
    if kind != "numpy" and errors != "raise":  # checked on the device; planned for the bound
        bound = capacity if max_seq_len is None else min(capacity, int(max_seq_len))
        problem = DecodeProblem(b, h, hkv, nq, d, bs, num_blocks, max_blocks, (bound,) * b, dtype,
                                bool(causal), window, scale, cache_dtype)
        return problem, kind
    table, lens = _host(block_table, kind), _host(seq_lens, kind)
    if (lens < 1).any():
        raise ValueError(f"seq_lens must be >= 1 (the new tokens are in the cache); got {lens.tolist()}")
    over = np.nonzero(lens > capacity)[0]
    if over.size:
        i = int(over[0])
        raise ValueError(f"seq_lens[{i}] = {int(lens[i])} is over the block table's capacity "
                         f"{max_blocks} blocks × {bs} = {capacity}: add blocks to the table")
    if max_seq_len is not None and (lens > max_seq_len).any():
        i = int(np.argmax(lens > max_seq_len))
        raise ValueError(f"seq_lens[{i}] = {int(lens[i])} is over max_seq_len = {max_seq_len}")
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
                finite = ((rows.view(np.uint8) & 0x7F) != 0x7F) if fp8 else np.isfinite(rows)
                if not finite.all():
                    raise ValueError(f"{name} holds NaN or inf in a slot sequence {i} reads (its first "
                                     f"{int(n)} tokens): attention of non-finite inputs is undefined here")
    problem = DecodeProblem(b, h, hkv, nq, d, bs, num_blocks, max_blocks, tuple(lens.tolist()),
                            dtype, bool(causal), window, scale, cache_dtype)
    return problem, kind


def _codes_view(x, kind):
    """An e4m3 cache as uint8 codes, for the device."""
    if kind == "torch":
        import torch

        return x.view(torch.uint8)
    return x.view(np.uint8)


def decode(q, k_cache, v_cache, block_table, seq_lens, *, causal=True, window=None, scale=None,
           k_scale=None, v_scale=None, errors=None, max_seq_len=None, config=None,
           return_lse=False, kernel="paged_decode"):
    """Attention of q's new tokens over their sequences' paged caches (see the module docstring).
    Returns O shaped like q (and LSE (B, H, Nq) float32 with return_lse=True), of q's kind.
    errors: None, "raise" or a DecodeErrors; k_scale, v_scale: with an FP8 cache; max_seq_len:
    the lengths to plan for with device inputs (default: the table's capacity)."""
    rung = get(kernel, kind="decode")
    problem, kind = validate(q, k_cache, v_cache, block_table, seq_lens, causal, window, scale,
                             k_scale=k_scale, v_scale=v_scale, errors=errors, max_seq_len=max_seq_len)
    check_flag("return_lse", return_lse)
    config = runner.check_config(rung, problem, config)
    from numba import cuda

    fp8 = problem.cache_dtype is not None
    io = _dtypes.device_dtype(problem.dtype)  # bfloat16 travels as its uint16 bits
    caches = [_codes_view(x, kind) if fp8 else x for x in (k_cache, v_cache)]
    inputs = [q, *caches, block_table, seq_lens]
    if kind == "numpy":
        args = [cuda.to_device(_dtypes.to_bits(np.ascontiguousarray(x))) for x in inputs]
        scales = [cuda.to_device(np.ascontiguousarray(x)) for x in (k_scale, v_scale)] if fp8 else []
    else:
        args = [_dtypes.device_view(x, kind) for x in inputs]
        scales = [_dtypes.device_view(x, kind) for x in (k_scale, v_scale)] if fp8 else []
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
    stream, allocate = caller_stream(kind, q), caller_allocator(kind, q)
    if not isinstance(errors, DecodeErrors) and not fp8:  # the harness's one launch path
        runner.run(rung, problem, config, *args, o, lse, stream=stream, allocate=allocate,
                   track_memory=False)
    else:  # the rung's launch_with: error flags of the caller's, FP8 scales (runner.run takes
        # neither); an FP8 cache is not the declaration's I/O dtype, validate() checked it
        if not fp8:
            runner.check_arrays(rung, problem, [*args, o, lse])
        gpu = runner.Launcher(live=True, stream=stream, allocate=allocate, track_memory=False)
        rung.module.launch_with(problem, config, *args, o, lse, gpu,
                                errors=errors.view if isinstance(errors, DecodeErrors) else None,
                                kv_scales=tuple(scales))
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
