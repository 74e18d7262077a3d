"""The real thing, on the same Problem: PyTorch SDPA with each backend forced, and "standard"
attention (matmul, softmax, matmul) in torch and in CuPy (cuBLAS).

Peers read the very arrays the rungs read: a Numba device array is wrapped by torch/CuPy through
`__cuda_array_interface__` — no host copies, no device copies. Their outputs are verified against the
same float64 truth as the rungs'. A peer that cannot run a case (flash in float32, a mask it does not
take) is recorded as "n/a" with the reason, never silently replaced by another backend.

Masks: SDPA's `is_causal` is aligned top-left, ours bottom-right; they agree when Nq == Nkv. For
Nq != Nkv causal, and for sliding windows, peers get an explicit boolean mask (which the flash and
cuDNN backends refuse: n/a).
"""

from __future__ import annotations

import numpy as np

from workbench.problem import Problem

SDPA_BACKENDS = {"sdpa-flash": "FLASH_ATTENTION", "sdpa-efficient": "EFFICIENT_ATTENTION",
                 "sdpa-cudnn": "CUDNN_ATTENTION", "sdpa-math": "MATH"}
NAMES = (*SDPA_BACKENDS, "torch-standard", "cupy-standard")


class NotApplicable(Exception):
    """This peer cannot run this problem (the message says why)."""


def available() -> dict:
    """{peer name: None if usable, else why not}."""
    from . import device

    why = {}
    if device.simulator():
        return {n: "needs a CUDA GPU (simulator mode)" for n in NAMES}
    try:
        import torch

        torch_ok = None if torch.cuda.is_available() else "torch sees no CUDA device"
    except ImportError:
        torch_ok = "torch is not installed (pip install -e '.[peers]')"
    try:
        import cupy  # noqa: F401

        cupy_ok = None
    except ImportError:
        cupy_ok = "cupy is not installed (pip install -e '.[peers]')"
    for n in NAMES:
        why[n] = cupy_ok if n.startswith("cupy") else torch_ok
    return why


def _mask_numpy(p: Problem) -> np.ndarray | None:
    """The (Nq, Nkv) visible-pairs mask, or None when SDPA's own is_causal / no mask is exact."""
    if p.window is None and (not p.causal or p.seq_q == p.seq_kv):
        return None
    from workbench.reference import visible_mask

    return visible_mask(p)


def build(name: str, p: Problem, q, k, v):
    """A zero-argument callable computing O with peer `name` on device arrays q, k, v (Numba or any
    CUDA-array-interface object). Raises NotApplicable when the peer cannot do this problem."""
    if name.startswith("cupy"):
        return _cupy_standard(p, q, k, v)
    import torch

    tq, tk, tv = (_torch_tensor(x, p) for x in (q, k, v))
    mask = _mask_numpy(p)
    tmask = None if mask is None else torch.as_tensor(mask, device="cuda")
    causal = p.causal and mask is None
    if name == "torch-standard":
        return lambda: _torch_standard(p, tq, tk, tv, tmask, causal)
    if name not in SDPA_BACKENDS:
        raise ValueError(f"unknown peer {name!r}; choose from {NAMES}")
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    backend = getattr(SDPBackend, SDPA_BACKENDS[name])
    gqa = p.kv_heads != p.heads

    def call():
        with sdpa_kernel(backend):
            return sdpa(tq, tk, tv, attn_mask=tmask, is_causal=causal, scale=p.scale, enable_gqa=gqa)

    try:
        call()
        torch.cuda.synchronize()
    except RuntimeError as exc:  # "No available kernel" and friends: this backend can't do it
        if "out of memory" in str(exc).lower():
            raise
        raise NotApplicable(str(exc).splitlines()[0][:160] or type(exc).__name__) from None
    return call


def _torch_tensor(x, p: Problem):
    """A torch view of a device array; bfloat16 problems hold uint16 bits, viewed as torch.bfloat16
    (through int16: every torch version takes int16 through the CUDA array interface)."""
    import torch

    if p.dtype != "bfloat16":
        return torch.as_tensor(x, device="cuda")
    return torch.as_tensor(x.view(np.int16), device="cuda").view(torch.bfloat16)


def _torch_standard(p: Problem, q, k, v, mask, causal):
    """S = scale·QKᵀ, P = softmax(S), O = PV in the input dtype, as a model would write it."""
    import torch

    if p.kv_heads != p.heads:
        k = k.repeat_interleave(p.group, dim=1)
        v = v.repeat_interleave(p.group, dim=1)
    s = torch.matmul(q, k.transpose(-2, -1)) * p.scale
    if causal:
        mask = torch.ones(p.seq_q, p.seq_kv, dtype=torch.bool, device=q.device).tril()
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    return torch.matmul(torch.softmax(s, dim=-1), v)


def _cupy_standard(p: Problem, q, k, v):
    import cupy

    if p.dtype == "bfloat16":
        raise NotApplicable("cupy-standard is run in float32 and float16 only (no bfloat16 here)")
    cq, ck, cv = (cupy.asarray(x) for x in (q, k, v))
    mask = _mask_numpy(p)
    if mask is None and p.causal:
        mask = np.tril(np.ones((p.seq_q, p.seq_kv), dtype=bool))
    cmask = None if mask is None else cupy.asarray(mask)
    scale = cq.dtype.type(p.scale)

    def call():
        kk, vv = ck, cv
        if p.kv_heads != p.heads:
            kk, vv = cupy.repeat(ck, p.group, axis=1), cupy.repeat(cv, p.group, axis=1)
        s = cupy.matmul(cq, kk.swapaxes(-1, -2)) * scale
        if cmask is not None:
            s = cupy.where(cmask, s, s.dtype.type(-np.inf))
        s = cupy.exp(s - s.max(axis=-1, keepdims=True))
        s /= s.sum(axis=-1, keepdims=True)
        return cupy.matmul(s, vv)

    return call


def peak_bytes(name: str, fn) -> int:
    """Bytes the peer allocates beyond its inputs during one call (its library's allocator)."""
    if name.startswith("cupy"):
        import cupy

        pool = cupy.get_default_memory_pool()
        pool.free_all_blocks()
        fn()
        cupy.cuda.Device().synchronize()
        held = pool.total_bytes()  # the pool keeps every block it needed until freed
        return held
    return torch_peak_bytes(fn)


def torch_peak_bytes(fn) -> int:
    """Bytes torch's allocator takes beyond what it held before one call of `fn` (its peak)."""
    import torch

    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    del out
    return extra


def to_numpy(out) -> np.ndarray:
    if hasattr(out, "detach"):
        import torch

        if out.dtype == torch.bfloat16:  # NumPy has no bfloat16: its bits, as ml_dtypes.bfloat16
            from workbench.dtypes import from_bits

            return from_bits(out.detach().view(torch.int16).cpu().numpy().view(np.uint16), "bfloat16")
        return out.detach().cpu().numpy()
    import cupy

    return cupy.asnumpy(out)
