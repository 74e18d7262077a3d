"""Warp shuffles with a width, and warp reductions: device functions for both targets.

Inside a warp, 32 threads can read each other's registers directly (`shfl.sync`), with no shared
memory and no block barrier. Numba has `cuda.shfl_sync`, `shfl_up_sync`, `shfl_down_sync` and
`shfl_xor_sync`, always over the whole warp. CUDA C's `__shfl*_sync(mask, var, b, width)` can also
split the warp into segments of `width` lanes (a power of two); so can these, on the GPU (the
hardware's own segment, through the `c` operand of PTX `shfl.sync`) and in the simulator
(`workbench.sim.warps`, the same semantics):

    shfl_idx(mask, value, src_lane, width)   lane (lane & ~(width−1)) + src_lane % width
    shfl_up(mask, value, delta, width)       lane − delta, or its own value before its segment
    shfl_down(mask, value, delta, width)     lane + delta, or its own value past its segment
    shfl_xor(mask, value, lane_mask, width)  lane ^ lane_mask, or its own value in a LATER segment

`width` must be a compile-time constant (a literal or a closure constant).

Reductions over segments of `width` consecutive lanes (a butterfly: after the steps with offsets
width/2, …, 2, 1 every lane of the segment holds the result; offsets below `width` never leave the
segment, so no width is needed):

    segment_max(mask, value, width), segment_sum(mask, value, width)

The lanes named in `mask` must all call them (see workbench.sim.warps for what the simulator
checks).
"""

from numba import config as numba_config
from numba import cuda

__all__ = ["FULL_MASK", "shfl_idx", "shfl_up", "shfl_down", "shfl_xor", "segment_max", "segment_sum"]

FULL_MASK = 0xFFFFFFFF
WARP = 32
IDX, UP, DOWN, BFLY = 0, 1, 2, 3  # PTX shfl.sync modes, as Numba numbers them


def clamp(mode: int, width: int = WARP) -> int:
    """PTX's `c` operand for a shuffle over segments of `width` lanes (what nvcc passes for
    `__shfl*_sync(..., width)`; Numba passes width 32)."""
    if width not in (1, 2, 4, 8, 16, 32):
        raise ValueError(f"width must be a power of two from 1 to 32, got {width!r}")
    return ((WARP - width) << 8) | (0 if mode == UP else 0x1F)

if numba_config.ENABLE_CUDASIM:
    # workbench.sim gives the simulator Numba's `shfl_sync_intrinsic` (installed by `import
    # workbench`), so this layer needs nothing from above it.
    def shfl_idx(mask, value, src_lane, width):
        return cuda.shfl_sync_intrinsic(mask, IDX, value, src_lane, clamp(IDX, width))[0]

    def shfl_up(mask, value, delta, width):
        return cuda.shfl_sync_intrinsic(mask, UP, value, delta, clamp(UP, width))[0]

    def shfl_down(mask, value, delta, width):
        return cuda.shfl_sync_intrinsic(mask, DOWN, value, delta, clamp(DOWN, width))[0]

    def shfl_xor(mask, value, lane_mask, width):
        return cuda.shfl_sync_intrinsic(mask, BFLY, value, lane_mask, clamp(BFLY, width))[0]

else:
    from numba.cuda import types
    from numba.cuda.core.errors import RequireLiteralValue, TypingError
    from numba.cuda.extending import intrinsic
    from numba.cuda.intrinsics import shfl_sync_intrinsic
    from numba.cuda.typing import signature

    def _with_width(mode):
        """An intrinsic for PTX shfl.sync in `mode` whose segment is a constant `width`: Numba's
        own shuffle lowering, given the `c` operand that nvcc uses for that width."""

        @intrinsic
        def shfl(typingctx, mask, value, b, width):
            if not isinstance(width, types.IntegerLiteral):
                raise RequireLiteralValue(width)
            try:
                c = clamp(mode, width.literal_value)
            except ValueError as exc:
                raise TypingError(str(exc)) from None
            mask, value, b = types.unliteral(mask), types.unliteral(value), types.unliteral(b)
            inner_sig, inner = shfl_sync_intrinsic(typingctx, mask, mode, value, b, c)

            def codegen(context, builder, sig, args):
                return inner(context, builder, inner_sig, args[:3])

            return signature(inner_sig.return_type, mask, value, b, width), codegen

        return shfl

    shfl_idx = _with_width(IDX)
    shfl_up = _with_width(UP)
    shfl_down = _with_width(DOWN)
    shfl_xor = _with_width(BFLY)


@cuda.jit(device=True, inline="always")
def segment_max(mask, value, width):
    """max of `value` over each segment of `width` lanes, in every lane of the segment."""
    offset = width // 2
    while offset > 0:
        value = max(value, cuda.shfl_xor_sync(mask, value, offset))
        offset //= 2
    return value


@cuda.jit(device=True, inline="always")
def segment_sum(mask, value, width):
    """Sum of `value` over each segment of `width` lanes, in every lane of the segment (the same
    butterfly order in every lane, so all of them hold the same bits)."""
    offset = width // 2
    while offset > 0:
        value += cuda.shfl_xor_sync(mask, value, offset)
        offset //= 2
    return value
