"""The ladder: one module per rung, in order. Each module has LESSON, DEFAULT_CONFIG, needs(),
workspace_bytes() and launch(); see ../shared/design.md, "Each rung module"."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

# Rung order is the course order; a rung's lesson is what changed from the one before it.
_ORDER = ("naive", "tiled", "online", "flash1", "flash2", "flash2_mma")


@dataclass(frozen=True)
class Rung:
    index: int
    name: str
    lesson: str
    module: ModuleType

    @property
    def default_config(self) -> dict:
        return dict(self.module.DEFAULT_CONFIG)

    def __repr__(self) -> str:
        return f"Rung({self.index}, {self.name!r}: {self.lesson})"


def _load() -> tuple[Rung, ...]:
    rungs = []
    for name in _ORDER:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:  # a rung not written yet
            if exc.name != f"{__name__}.{name}":
                raise
            continue
        rungs.append(Rung(len(rungs) + 1, name, module.LESSON, module))
    return tuple(rungs)


LADDER: tuple[Rung, ...] = _load()


def get(name) -> Rung:
    """The rung called `name` (a ValueError listing the names otherwise)."""
    if isinstance(name, Rung):
        return name
    for rung in LADDER:
        if rung.name == name:
            return rung
    raise ValueError(f"unknown kernel {name!r}; choose one of {[r.name for r in LADDER]}")
