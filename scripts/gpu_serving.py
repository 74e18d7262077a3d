"""The serving measurement of issue 16 (Build 4) on a GPU: how many sequences a KV-cache budget
holds contiguous vs paged, and the attention tokens/s at each concurrency, decode rung vs SDPA.

    python3 scripts/gpu_serving.py OUT_DIR [--quick] [--limit SECONDS]     (a CUDA GPU with torch)

Runs `workbench.bench.serving.measure` (its docstring says what is timed and how) for Llama 2 7B's
attention (32 layers, 32 heads, D = 128, float16), N_max = 4096, 16-token blocks, lengths
uniform(1, 4096) with seed 0, the budget 0.9 × the GPU's memory less the fp16 weights; then, if time
is left, the same at a chat-like lognormal(median 512, sigma 1) into OUT_DIR/lognormal/. Writes
OUT_DIR/serving.{json,png} (provenance: workbench.harness.device.provenance()) and
OUT_DIR/serving-capacity.json (the arithmetic alone). Copy them to figures/h200/.
--quick: 3 repetitions a point, the uniform lengths only (a smoke run). --limit (default 50 s, what
the runbook's decode group has left in its 10 minutes): points not reached are left out, said so
in the JSON ("stopped"); each point is saved as it is measured.
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "0")
os.environ.setdefault("NUMBA_CUDA_ARRAY_INTERFACE_SYNC", "0")  # no stream sync per as_cuda_array
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from workbench.bench import serving  # noqa: E402

LIMIT_S = 50


def main(argv):
    out = argv[0]
    quick = "--quick" in argv
    limit = float(argv[argv.index("--limit") + 1]) if "--limit" in argv else LIMIT_S
    t0 = time.time()
    os.makedirs(out, exist_ok=True)
    cap = serving.capacity()
    with open(os.path.join(out, "serving-capacity.json"), "w") as f:
        json.dump(cap, f, indent=1)
    serving.print_table(cap)
    left = lambda: limit - (time.time() - t0)  # noqa: E731
    reps = 3 if quick else 10
    serving.measure(out, lengths=serving.Lengths("uniform", 1, 4096, 0), reps=reps, time_left=left)
    if not quick and left() > 25:
        serving.measure(os.path.join(out, "lognormal"), lengths=serving.Lengths("lognormal", 512, 1.0, 0),
                        reps=reps, time_left=left)
    print(f"done in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
