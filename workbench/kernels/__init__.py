"""The rungs: one module per rung, listed by kind. Each module has LESSON, DEFAULT_CONFIG, needs(),
workspace_bytes(), launch() and (see contract.py) ARGS; see ../shared/design.md, "Each rung module".

- LADDER: the forward rungs, in course order (a rung's lesson is what changed from the one before);
- BACKWARD: the backward rungs (dQ, dK, dV from q, k, v, O, LSE, dO);
- DECODE: the decode rungs (a few new tokens against a paged KV cache).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from .contract import SIGNATURES

# Rung order is the course order; a rung's lesson is what changed from the one before it.
_ORDER = {
    "forward": ("naive", "tiled", "online", "flash1", "flash2", "flash2_mma", "flash3"),
    "backward": ("flash2_bwd", "flash2_mma_bwd"),
    "decode": ("paged_decode",),
}
KINDS = tuple(_ORDER)


@dataclass(frozen=True)
class Rung:
    index: int
    name: str
    lesson: str
    module: ModuleType
    kind: str = "forward"  # "forward", "backward" or "decode": which standard signature it has

    @property
    def default_config(self) -> dict:
        return dict(self.module.DEFAULT_CONFIG)

    @property
    def args(self) -> tuple:
        """The rung's arrays in launch order (contract.Arg): the module's ARGS, else its kind's."""
        return getattr(self.module, "ARGS", None) or SIGNATURES[self.kind]

    def __repr__(self) -> str:
        return f"Rung({self.index}, {self.name!r}: {self.lesson})"


def _load(kind) -> tuple[Rung, ...]:
    rungs = []
    for name in _ORDER[kind]:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:  # a rung not written yet
            if exc.name != f"{__name__}.{name}":
                raise
            continue
        rungs.append(Rung(len(rungs) + 1, name, module.LESSON, module, kind))
    return tuple(rungs)


LADDER: tuple[Rung, ...] = _load("forward")
BACKWARD: tuple[Rung, ...] = _load("backward")
DECODE: tuple[Rung, ...] = _load("decode")
_BY_KIND = {"forward": LADDER, "backward": BACKWARD, "decode": DECODE}


def of_kind(kind: str | None) -> tuple[Rung, ...]:
    """The rungs of `kind` (None: every rung)."""
    if kind is None:
        return LADDER + BACKWARD + DECODE
    if kind not in _BY_KIND:
        raise ValueError(f"unknown kind of rung {kind!r}; choose one of {KINDS}")
    return _BY_KIND[kind]


def get(name, kind: str | None = "forward") -> Rung:
    """The rung called `name` among the rungs of `kind` (default the forward ladder; None: any
    kind); a ValueError listing the names otherwise. A Rung is returned as it is."""
    if isinstance(name, Rung):
        return name
    rungs = of_kind(kind)
    for rung in rungs:
        if rung.name == name:
            return rung
    what = "kernel" if kind in (None, "forward") else f"{kind} kernel"
    raise ValueError(f"unknown {what} {name!r}; choose one of {[r.name for r in rungs]}")
