"""The public functions: validation of the caller's arrays, then the one launch path (the harness's
runner). `forward` is attention, `backward` its gradients (and a torch autograd function), `decode`
a few new tokens against a paged KV cache."""

from workbench.api.training import backward
from workbench.api.inference import DecodeError, DecodeErrors, decode, quantize_cache
from workbench.api.forward import attention

__all__ = ["attention", "backward", "decode", "DecodeErrors", "DecodeError", "quantize_cache"]
