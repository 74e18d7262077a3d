"""workbench: a measured ladder of Numba CUDA attention kernels, from naive to FlashAttention-2.

    import workbench
    o = workbench.attention(q, k, v, kernel="flash2", causal=True)
    workbench.LADDER        # the rungs, in order, each with its one-line lesson
    workbench.Problem       # shapes, dtype, mask; FLOP and byte counts; random inputs
    workbench.mode()        # 'gpu', or 'simulator' when there is no usable CUDA device
    workbench.traffic("online", Problem(seq_q=13, head_dim=8))  # bytes moved (simulator only)
"""

# Must run before anything imports Numba: it may switch Numba's CUDA simulator on.
from .harness.device import mode, patch_simulator, select_mode

if select_mode() == "simulator":
    patch_simulator()

from .api import attention  # noqa: E402
from .kernels import LADDER  # noqa: E402
from .problem import Problem  # noqa: E402


def traffic(kernel, problem, config=None, seed: int = 0):
    """Memory traffic of one call of rung `kernel` on `problem`, counted in the simulator (bytes
    per array and launch, device and shared memory): see workbench.sim.traffic."""
    from .sim.traffic import traffic as count  # imported here: `python -m workbench.sim.traffic`

    return count(kernel, problem, config, seed)


__all__ = ["attention", "LADDER", "Problem", "mode", "traffic"]
