"""workbench: a measured ladder of Numba CUDA attention kernels, from naive to FlashAttention-2.

    import workbench
    o = workbench.attention(q, k, v, kernel="flash2", causal=True)
    dq, dk, dv = workbench.backward(q, k, v, o, lse, do, causal=True)
    o = workbench.decode(q, k_cache, v_cache, block_table, seq_lens)     # paged KV cache
    workbench.LADDER        # the forward rungs, in order, each with its one-line lesson
    workbench.Problem       # shapes, dtype, mask; FLOP and byte counts; random inputs
    workbench.mode()        # 'gpu', or 'simulator' when there is no usable CUDA device
    workbench.traffic("online", Problem(seq_q=13, head_dim=8))  # bytes moved (simulator only)

The package is layered; each layer imports only from the ones below it (tests/test_layers.py):
core (target, problem, dtypes, reference) <- kernels <- harness <- api, sim <- bench, course, demos.
docs/design.md draws it.
"""

# Must run before anything imports Numba: it may switch Numba's CUDA simulator on.
from workbench.target import mode, select_mode

if select_mode() == "simulator":
    from workbench.sim import install as _install_simulator

    _install_simulator()

from workbench.api import DecodeError, DecodeErrors, attention, backward, decode, quantize_cache  # noqa: E402
from workbench.dtypes import quantize_fp8  # noqa: E402
from workbench.kernels import LADDER  # noqa: E402
from workbench.problem import Problem  # noqa: E402


def traffic(kernel, problem, config=None, seed: int = 0):
    """Memory traffic of one call of rung `kernel` on `problem`, counted in the simulator (bytes
    per array and launch, device and shared memory): see workbench.sim.traffic."""
    from workbench.sim.traffic import traffic as count

    return count(kernel, problem, config, seed)


__all__ = ["attention", "backward", "decode", "DecodeErrors", "DecodeError", "quantize_cache", "LADDER", "Problem", "mode", "quantize_fp8", "traffic"]
