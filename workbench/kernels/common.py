"""What every rung shares: constants, the mask rules, the KV-tile range, I/O element conversions
(small device functions, inlined, so compile checks need no GPU)."""

import math

import numpy as np
from numba import config as numba_config
from numba import cuda, float32

# exp2, log2 and 1/l as the hardware's approximate instructions, denormals flushed to zero (what
# nvcc -use_fast_math does), but not the "fast" flags that let the compiler assume there are no
# infinities: m = -inf is how a row says it has seen no key yet.
FASTMATH = {"afn", "arcp", "contract"}
NEG_INF = float32(-math.inf)  # a bare -math.inf would be float64 and drag the arithmetic into FP64
LOG2E = np.float32(math.log2(math.e))  # e^x = 2^(x·log2 e): scores in base-2 units, one MUFU.EX2
LN2 = float32(math.log(2.0))  # ln y = ln2 · log2 y


def cdiv(a, b):
    """⌈a / b⌉ for integers (a >= 0, b > 0): tiles needed to cover a."""
    return -(-a // b)


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


@cuda.jit(device=True, inline="always")
def kv_tile_range(i0, i_last, Bc, shift, left, right, n_kv):
    """(j_start, j_end): the tiles of Bc keys that query rows i0 … i_last see together. Row i sees
    keys i + shift − left … i + shift + right (clamped to [0, Nkv)), and both ends grow with i, so
    the rows see one run of keys, from the first row's first key to the last row's last key;
    j_end = j_start when they see none. Plain integer arithmetic, so the same function serves
    kernels (inlined) and host code (`kv_tile_range_host`, its Python function)."""
    key_lo = max(i0 + shift - left, 0)
    key_hi = min(i_last + shift + right + 1, n_kv)
    j_start = key_lo // Bc
    j_end = (key_hi + Bc - 1) // Bc if key_hi > key_lo else j_start
    return j_start, j_end


@cuda.jit(device=True, inline="always")
def unmasked_keys(i0, i_last, shift, left, right, n_kv):
    """(inner_lo, inner_hi): the keys EVERY row i0 … i_last sees, the last row's first key to the
    first row's last (empty when inner_hi <= inner_lo). A tile inside them needs no mask."""
    return max(i_last + shift - left, 0), min(i0 + shift + right + 1, n_kv)


# The same rules for host code (traffic model, diagrams, assignments): a CUDA dispatcher cannot be
# called from the host, but its Python function can, and is the very same code. (Host twins of
# the functions that call no other device function.)
def _host(f):
    return getattr(f, "py_func", f)


first_key_host, last_key_host, visible_host = _host(first_key), _host(last_key), _host(visible)
kv_tile_range_host, unmasked_keys_host = _host(kv_tile_range), _host(unmasked_keys)


# --- I/O element conversions ------------------------------------------------------------------
# A rung computes in float32 whatever its I/O dtype. float16 and float32 elements convert with
# float32(x). bfloat16 elements arrive as their uint16 bits (workbench/dtypes.py): a bfloat16 is
# the top half of a float32, so the bits shifted left 16 ARE the float32, exactly (NaN, inf and
# subnormals included); back, the low 16 bits of the float32 are rounded off to nearest even, and a
# NaN stays a NaN.
#
#   load_f32(x)      float32 of a float32, float16 or bfloat16-bits (uint16) element, chosen by x's
#                    type when the kernel compiles (so one tile loader serves every dtype)
#   bf16_bits(x)     the uint16 bits of float32 x rounded to bfloat16 (nearest even)
#   to_io(x, o)      float32 x as an element of the I/O array o: bf16_bits(x) when o holds
#                    bfloat16 bits (uint16), else x (the store converts it to o's dtype)
#
# On the GPU both are intrinsics, always inline and compiled with no GPU present: load_f32 is a
# shift and a reinterpretation (libdevice's int_as_float), bf16_bits the hardware's conversion
# instruction (cvt.rn.bf16.f32, sm_80 and later). The simulator has neither bfloat16 nor
# libdevice: it does the same in NumPy, rounding with the integer arithmetic of _round_bits.
BF16_QUIET = 0x0040  # the quiet bit of a bfloat16 NaN


def _round_bits(u):
    """bfloat16 bits of the float32 whose bits are u (0 <= u < 2**32), rounded to nearest even:
    add just under half of the dropped 16 bits' range, plus 1 when the kept part is odd (ties go
    to the even neighbour), and drop them. A carry out of the mantissa bumps the exponent, which
    is right (and the largest floats round to inf, as they should)."""
    if (u & 0x7FFFFFFF) > 0x7F800000:  # NaN: keep sign and payload's top, set the quiet bit so
        # that dropping the low bits cannot turn it into an inf
        return (u >> 16) | BF16_QUIET
    return (u + 0x7FFF + ((u >> 16) & 1)) >> 16


if numba_config.ENABLE_CUDASIM:
    def load_f32(x):
        """float32 of a float32, float16 or bfloat16-bits (uint16) element."""
        if isinstance(x, np.uint16):  # bfloat16 bits
            return np.uint32(int(x) << 16).view(np.float32)
        return np.float32(x)

    def bf16_bits(x):
        """The uint16 bits of float32 x rounded to bfloat16 (nearest even; NaN stays NaN)."""
        return np.uint16(_round_bits(int(np.float32(x).view(np.uint32))))

    def to_io(x, o):
        """float32 x as an element of the I/O array o (bfloat16 bits when o is uint16)."""
        return bf16_bits(x) if o.dtype == np.uint16 else x

else:
    from llvmlite import ir
    from numba.cuda import types
    from numba.cuda.core.errors import TypingError
    from numba.cuda.extending import intrinsic
    from numba.cuda.typing import signature

    def _is_bits(ty):
        """bfloat16 bits: a uint16 (as the harness hands bfloat16 arrays to a rung)."""
        return isinstance(ty, types.Integer) and ty.bitwidth == 16 and not ty.signed

    @intrinsic
    def load_f32(typingctx, x):
        """float32 of a float32, float16 or bfloat16-bits (uint16) element: chosen by x's type when
        the kernel is compiled (an intrinsic, so it needs no GPU to compile and is always inline)."""
        if _is_bits(x):
            def bits_codegen(context, builder, sig, args):  # int_as_float(bits << 16)
                i32 = ir.IntType(32)
                wide = builder.shl(builder.zext(args[0], i32), ir.Constant(i32, 16))
                return builder.bitcast(wide, ir.FloatType())

            return signature(types.float32, x), bits_codegen
        if isinstance(x, types.Float):
            def float_codegen(context, builder, sig, args):
                return context.cast(builder, args[0], sig.args[0], types.float32)

            return signature(types.float32, x), float_codegen
        raise TypingError(f"load_f32 takes float32, float16 or bfloat16 bits (uint16), not {x}")

    def _cvt_bf16(context, builder, sig, args):
        """cvt.rn.bf16.f32: float32 to bfloat16, nearest even (sm_80 and later), as 16 bits."""
        fnty = ir.FunctionType(ir.IntType(16), [ir.FloatType()])
        return builder.asm(fnty, "cvt.rn.bf16.f32 $0, $1;", "=h,f", [args[0]], side_effect=False)

    @intrinsic
    def bf16_bits(typingctx, x):
        """The uint16 bits of float32 x rounded to bfloat16: the hardware's conversion, one
        instruction (nearest even; NaN stays NaN)."""
        if x != types.float32:
            raise TypingError(f"bf16_bits takes a float32, not {x}")
        return signature(types.uint16, x), _cvt_bf16

    @intrinsic
    def to_io(typingctx, x, o):
        """float32 x as an element of the I/O array o: bfloat16 bits when o holds uint16, else x
        converted to o's float dtype (what the store would do anyway)."""
        if x != types.float32 or not isinstance(o, types.Array):
            raise TypingError(f"to_io takes a float32 and an array, not {x} and {o}")
        if _is_bits(o.dtype):
            return signature(o.dtype, x, o), _cvt_bf16
        if isinstance(o.dtype, types.Float):
            def cast(context, builder, sig, args):
                return context.cast(builder, args[0], types.float32, o.dtype)

            return signature(o.dtype, x, o), cast
        raise TypingError(f"to_io: O must be float32, float16 or bfloat16 bits (uint16), not {o.dtype}")
