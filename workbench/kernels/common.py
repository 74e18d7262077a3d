"""Small device functions every rung shares (inlined, so compile checks need no GPU)."""

from numba import cuda


@cuda.jit(device=True, inline="always")
def first_key(i, shift, left):
    """The first key query row i may see (may be < 0: clamp at the caller)."""
    return i + shift - left


@cuda.jit(device=True, inline="always")
def last_key(i, shift, right):
    """The last key query row i may see (may be >= Nkv: clamp at the caller)."""
    return i + shift + right


@cuda.jit(device=True, inline="always")
def visible(i, j, shift, left, right):
    """Does query i see key j? shift = Nkv - Nq; left/right from Problem.mask_bounds()."""
    return i + shift - left <= j <= i + shift + right
