"""CUDA-event timing of device work: warm-up, L2 flushed between runs, median with p20/p80.

What is timed is the launch sequence of one call on arrays already on the device: host↔device
copies are never inside the events (the harness copies inputs once, before timing). The first
`warmup` calls (at least one) compile the kernels and load the modules, and are never counted. Before
every timed call a 256 MiB buffer is written, so the call starts with an L2 that holds none of its
inputs (the H100's L2 is 50 MiB) — what a layer inside a model sees.

In the simulator nothing is timed: `time_call` raises, and callers say "simulator: no timing".
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import device

FLUSH_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float
    samples_ms: tuple = field(repr=False)

    @property
    def spread(self) -> float:
        """(p80 - p20) / median: the run-to-run noise a difference must beat."""
        return (self.p80_ms - self.p20_ms) / self.median_ms if self.median_ms else float("nan")

    def as_dict(self) -> dict:
        return {"median_ms": self.median_ms, "p20_ms": self.p20_ms, "p80_ms": self.p80_ms,
                "repeats": len(self.samples_ms)}


def summarize(samples_ms) -> Timing:
    """Median and 20th/80th percentiles of per-call times (milliseconds)."""
    s = np.asarray(samples_ms, dtype=np.float64)
    if s.size == 0:
        raise ValueError("no timing samples")
    if not np.all(np.isfinite(s)) or np.any(s < 0):
        raise ValueError(f"timing samples must be finite and >= 0, got {samples_ms!r}")
    p20, med, p80 = np.percentile(s, [20, 50, 80])
    return Timing(float(med), float(p20), float(p80), tuple(float(x) for x in s))


_flush_buffer = None


def flush_l2():
    """Overwrite a buffer larger than L2, evicting whatever the last call left there."""
    global _flush_buffer
    from numba import cuda

    if _flush_buffer is None:
        _flush_buffer = cuda.device_array(FLUSH_BYTES // 4, np.float32)
    _flush_buffer[:] = np.float32(0)  # a device-side fill kernel


def time_call(fn, *, repeat: int = 20, warmup: int = 2, budget_s: float = 2.0,
              flush: bool = True, setup=None) -> Timing:
    """Time `fn()` (device work only) with CUDA events; at least 3 and at most `repeat` timed runs,
    fewer than `repeat` only when the calls are so long that `budget_s` is spent first.
    `setup()`, if given, runs before every call (warm-ups too), outside the events: e.g. to check
    the previous call's output and poison it again, so that every timed call is verified."""
    if device.simulator():
        raise RuntimeError("the CUDA simulator measures no time; run on a GPU")
    from numba import cuda

    for _ in range(max(1, warmup)):
        if setup is not None:
            setup()
        fn()
    cuda.synchronize()
    samples, spent = [], 0.0
    start, end = cuda.event(), cuda.event()
    while len(samples) < repeat and (len(samples) < 3 or spent < budget_s * 1e3):
        if setup is not None:
            setup()
            cuda.synchronize()
        if flush:
            flush_l2()
        start.record()
        fn()
        end.record()
        end.synchronize()
        ms = cuda.event_elapsed_time(start, end)
        samples.append(ms)
        spent += ms
    return summarize(samples)
