"""Device memory of one call: the analytic model beside what was measured.

Model: the call's own arrays (what the rung declares: Q, K, V, O, LSE for a forward rung, plus dO,
dQ, dK, dV for a backward one, the paged cache and its tables for decode) plus the rung's scratch
(`workspace_bytes(problem, config)`: the N² score matrix for rungs 1-2, O/m/l for flash1, nothing
for the fused rungs).

Measured: every byte the call allocates goes through the runner (inputs, outputs, scratch), which
counts it; the driver's free-memory reading before and at the low point of the call is kept beside
it as a check (it moves in 2 MiB pages, so small calls read a little high).

An out-of-memory is a data point, not a crash: `is_oom(exc)` recognises it so sweeps record "OOM".
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Memory:
    model_bytes: int  # io + workspace, from the formulas
    counted_bytes: int  # io + what the rung allocated through the runner
    driver_bytes: int | None  # io + the drop in the driver's free memory during the call

    def as_dict(self) -> dict:
        mb = 1024 * 1024
        return {"model_MiB": self.model_bytes / mb, "peak_MiB": self.counted_bytes / mb,
                "driver_MiB": None if self.driver_bytes is None else self.driver_bytes / mb}


def io_bytes(rung, problem) -> int:
    """The call's own arrays, from the rung's declaration (runner.declared_bytes)."""
    from .runner import declared_bytes

    return declared_bytes(rung, problem)


def model_bytes(rung, problem, config) -> int:
    return io_bytes(rung, problem) + rung.module.workspace_bytes(problem, config)


def account(rung, problem, config, launcher) -> Memory:
    """The memory of a call that `launcher` (runner.run's result) made."""
    io = io_bytes(rung, problem)
    driver = None if launcher.driver_bytes is None else io + launcher.driver_bytes
    return Memory(model_bytes(rung, problem, config), io + launcher.workspace_bytes, driver)


def is_oom(exc: BaseException) -> bool:
    """Is this exception the device running out of memory?"""
    text = f"{type(exc).__name__}: {exc}"
    return "OUT_OF_MEMORY" in text or "out of memory" in text.lower()
