"""What a rung declares to the harness: its arrays (`ARGS`) and its needs at a config (`Needs`).

A rung's `launch(problem, config, <its arrays in ARGS order>, gpu)` takes its arrays positionally.
Each array is declared once, as an `Arg`:

- name:  what the rung calls it (`q`, `k_cache`, `dq`, ...);
- shape: the name of the problem's attribute that gives its shape (`"q_shape"`, `"kv_shape"`,
  `"lse_shape"`; decode: `"cache_shape"`, `"table_shape"`, `"lens_shape"`);
- dtype: `"io"` for the problem's I/O dtype (bfloat16 reaches the rung as its uint16 bits:
  workbench/dtypes.py), `"out"` for its output dtype (`problem.out_dtype`: the I/O dtype, except
  float16 for FP8 inputs), or a fixed NumPy dtype name (`"float32"`, `"int32"`);
- role:  `"in"` (the rung only reads it) or `"out"` (the rung writes every element of it).

Scratch memory is not declared: a rung asks its launcher for it (`gpu.empty`), which counts it.

The harness reads the declaration for everything it does with a rung's arrays: the placeholders
that plan its launches, the shapes checked before a launch, the outputs poisoned with NaN and the
inputs checked untouched by the verifier, the simulator's traffic labels. The three kinds of rung
have one standard signature each (below); a rung module states its own with `ARGS = FORWARD`
(etc.), and the harness falls back to its kind's signature where a module has none.

A rung whose repeated launches may legitimately differ bit for bit (float atomics, e.g. a dQ
summed by atomicAdd) says `DETERMINISTIC = False`: the verifier then reports the difference instead
of failing it, and judges every launch against the reference instead of the first only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from workbench.dtypes import device_dtype, host_dtype, out_dtype


@dataclass(frozen=True)
class Needs:
    """What a rung declares about a problem at a config; the harness does the checking."""

    shared_bytes: int = 0  # shared memory of its largest kernel, per block
    dynamic_shared: bool = False  # shared_bytes is dynamic (may exceed 48 KiB: hardware.opt_in_shared)
    head_dims: tuple[int, ...] | None = None  # supported D (None: any)
    rules: dict = field(default_factory=dict)  # {"Br is a multiple of 4": bool, ...}
    dtypes: tuple[str, ...] = ("float32", "float16")  # I/O dtypes it takes (bfloat16: as uint16 bits)


ROLES = ("in", "out")


@dataclass(frozen=True)
class Arg:
    """One array of a rung's launch, declared by name, shape, dtype and role (see the module)."""

    name: str
    shape: str  # the problem attribute giving the shape, e.g. "q_shape"
    dtype: str = "io"  # "io" (the problem's I/O dtype), "out" (its output dtype) or a NumPy dtype name
    role: str = "in"  # "in" or "out"

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"Arg {self.name!r}: role must be one of {ROLES}, not {self.role!r}")
        if self.dtype not in ("io", "out"):
            np.dtype(self.dtype)  # a typo is an error here, not at the first launch

    def shape_of(self, problem) -> tuple[int, ...]:
        return tuple(int(n) for n in getattr(problem, self.shape))

    def dtype_name(self, problem) -> str:
        """The I/O dtype name this array is in for `problem` ("io" and "out" resolved)."""
        if self.dtype == "io":
            return problem.dtype
        return out_dtype(problem.dtype) if self.dtype == "out" else self.dtype

    def device_dtype(self, problem) -> np.dtype:
        """The dtype of the device array the rung receives (bfloat16 I/O: uint16 bits)."""
        return device_dtype(self.dtype_name(problem))

    def host_dtype(self, problem) -> np.dtype:
        """The dtype of a host copy (bfloat16 I/O: ml_dtypes.bfloat16)."""
        return host_dtype(self.dtype_name(problem))

    @property
    def is_output(self) -> bool:
        return self.role == "out"


# The standard signatures, one per kind of rung, in launch order.
FORWARD = (
    Arg("q", "q_shape"), Arg("k", "kv_shape"), Arg("v", "kv_shape"),
    Arg("o", "q_shape", "out", role="out"), Arg("lse", "lse_shape", "float32", role="out"),
)  # (O "out": the I/O dtype, float16 for FP8 inputs)
BACKWARD = (
    Arg("q", "q_shape"), Arg("k", "kv_shape"), Arg("v", "kv_shape"),
    Arg("o", "q_shape"), Arg("lse", "lse_shape", "float32"), Arg("do", "q_shape"),
    Arg("dq", "q_shape", role="out"), Arg("dk", "kv_shape", role="out"), Arg("dv", "kv_shape", role="out"),
)
DECODE = (
    Arg("q", "q_shape"), Arg("k_cache", "cache_shape"), Arg("v_cache", "cache_shape"),
    Arg("block_table", "table_shape", "int32"), Arg("seq_lens", "lens_shape", "int32"),
    Arg("o", "q_shape", role="out"), Arg("lse", "lse_shape", "float32", role="out"),
)
SIGNATURES = {"forward": FORWARD, "backward": BACKWARD, "decode": DECODE}


def inputs(args) -> tuple[Arg, ...]:
    return tuple(a for a in args if not a.is_output)


def outputs(args) -> tuple[Arg, ...]:
    return tuple(a for a in args if a.is_output)
