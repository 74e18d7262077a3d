"""workbench's kernels as PyTorch operators: `torch.library.custom_op`s with fake (meta)
implementations and registered autograd, the convention FlashAttention 2 and 3 follow, so that
`torch.compile(fullgraph=True)` can trace a model that uses them.

    from workbench.api.torch_ops import scaled_dot_product_attention as wb_sdpa
    out = wb_sdpa(q, k, v, is_causal=True)           # q (B, H, N, D) CUDA tensors; out.backward() works

Operators (namespace `workbench`):
- `workbench::attention(q, k, v, causal, window_left, window_right, scale) -> (o, lse)`: the tensor-core
  rung (flash2_mma) for float16/bfloat16 on sm_80 and later where it takes the head dim, flash2
  otherwise (float32).
- `workbench::attention_backward(do, q, k, v, o, lse, causal, window_left, window_right, scale)
  -> (dq, dk, dv)`: the tensor-core backward (flash2_mma_bwd) for float16/bfloat16 where it exists,
  flash2_bwd otherwise.
- `workbench::decode(q, k_cache, v_cache, block_table, seq_lens, causal, window_left, window_right,
  scale) -> (o, lse)`: the paged-cache decode rung (paged_decode), for serving: q (B, H, Nq, D) new
  tokens, caches (num_blocks, Hkv, block_size, D), block_table (B, max_blocks) and seq_lens (B,)
  int32 CUDA tensors. Inference only (no autograd).

All three launch on the caller's current torch stream and allocate their outputs with torch (its caching
allocator). Windows use FlashAttention's `window_size` convention, -1 unbounded.
"""

from __future__ import annotations

import torch

from workbench.api.forward import attention as _attention
from workbench.api.inference import decode as _decode
from workbench.api.training import backward as _backward
from workbench.kernels import LADDER, BACKWARD


def _rung_names(group) -> set[str]:
    return {r.name for r in group}


def forward_kernel(q: torch.Tensor) -> str:
    """The forward rung for these inputs: tensor cores for 16-bit inputs on sm_80 and later."""
    if q.dtype in (torch.float16, torch.bfloat16) and "flash2_mma" in _rung_names(LADDER):
        major, _ = torch.cuda.get_device_capability(q.device)
        if major >= 8:
            return "flash2_mma"
    return "flash2"


def backward_kernel(q: torch.Tensor) -> str:
    if q.dtype in (torch.float16, torch.bfloat16) and "flash2_mma_bwd" in _rung_names(BACKWARD):
        return "flash2_mma_bwd"
    return "flash2_bwd"


def _window(left: int, right: int):
    return None if left == -1 and right == -1 else (left, right)


@torch.library.custom_op("workbench::attention", mutates_args=(), device_types="cuda")
def attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, window_left: int,
                 window_right: int, scale: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    o, lse = _attention(q, k, v, kernel=forward_kernel(q), causal=causal,
                        window=_window(window_left, window_right), scale=scale, return_lse=True)
    return o, lse


@attention_op.register_fake
def _(q, k, v, causal, window_left, window_right, scale):
    b, h, n, _ = q.shape
    return torch.empty_like(q), q.new_empty((b, h, n), dtype=torch.float32)


@torch.library.custom_op("workbench::attention_backward", mutates_args=(), device_types="cuda")
def attention_backward_op(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          o: torch.Tensor, lse: torch.Tensor, causal: bool, window_left: int,
                          window_right: int, scale: float | None
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dq, dk, dv = _backward(q, k, v, o, lse, do.contiguous(), causal=causal,
                           window=_window(window_left, window_right), scale=scale,
                           kernel=backward_kernel(q))
    return dq, dk, dv


@attention_backward_op.register_fake
def _(do, q, k, v, o, lse, causal, window_left, window_right, scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, causal, window_left, window_right, scale = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, o, lse)
    ctx.mask = (causal, window_left, window_right, scale)


def _backward_rule(ctx, do, dlse):
    q, k, v, o, lse = ctx.saved_tensors
    dq, dk, dv = attention_backward_op(do, q, k, v, o, lse, *ctx.mask)
    return dq, dk, dv, None, None, None, None


attention_op.register_autograd(_backward_rule, setup_context=_setup_context)


@torch.library.custom_op("workbench::decode", mutates_args=(), device_types="cuda")
def decode_op(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_table: torch.Tensor,
              seq_lens: torch.Tensor, causal: bool, window_left: int, window_right: int,
              scale: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    o, lse = _decode(q, k_cache, v_cache, block_table, seq_lens, causal=causal,
                     window=_window(window_left, window_right), scale=scale, return_lse=True)
    return o, lse


@decode_op.register_fake
def _(q, k_cache, v_cache, block_table, seq_lens, causal, window_left, window_right, scale):
    b, h, n, _ = q.shape
    return torch.empty_like(q), q.new_empty((b, h, n), dtype=torch.float32)


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                                 scale=None, enable_gqa=False, window=None):
    """`torch.nn.functional.scaled_dot_product_attention`'s signature on workbench's kernels.

    query (B, H, Nq, D), key/value (B, Hkv, Nkv, D) CUDA tensors. `is_causal` is aligned bottom-right
    (FlashAttention >= 2.1; the same as SDPA's when Nq == Nkv). `window=(left, right)` as
    FlashAttention's `window_size`. `attn_mask` and dropout are not supported (ValueError)."""
    if attn_mask is not None:
        raise ValueError("attn_mask is not supported: use is_causal=True or window=(left, right)")
    if dropout_p:
        raise ValueError(f"dropout_p={dropout_p} is not supported (attention dropout): pass 0.0")
    if query.shape[1] != key.shape[1] and not enable_gqa:
        raise ValueError(f"query has {query.shape[1]} heads and key {key.shape[1]}: pass enable_gqa=True "
                         f"for grouped-query attention")
    left, right = (-1, -1) if window is None else (int(window[0]), int(window[1]))
    o, _ = attention_op(query, key, value, bool(is_causal), left, right,
                        None if scale is None else float(scale))
    return o
