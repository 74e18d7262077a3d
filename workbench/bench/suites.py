"""Named sets of measurements for `python -m workbench.bench.compare --suite NAME`.

Each suite has a GPU form (the sizes the question needs) and a simulator form (tiny, correctness and
the memory model only), so the same command runs anywhere.

- `verify`: every rung at its default config over odd shapes, masks, GQA, both head dims and dtypes;
  verification only, every head compared with float64 (no timing).
- `ladder`: the seed page's config (B=8, H=32, D=64), seq 512..8192, float32 and float16, every
  rung: time and peak memory as the sequence grows.
- `seed-speed`, `seed-memory`, `seed-scaling`, `seed-versions`: the seed page's tables
  (../shared/seed/flash-attention-benchmarks.md) re-measured on the GPU at hand, our rungs beside the
  real thing: "Standard" = the naive rung and torch standard attention, "Flash Attn 2" = the flash2
  rung and SDPA's flash backend, FA3-class = SDPA's cuDNN backend. `seed` runs all four.
- `perf`: the optimised rungs beside SDPA's backends: issue 8's rows (flash2 in float32 against SDPA
  efficient at B=8 H=32 N=4096 D=64) and issue 20's (the tensor-core rungs flash2_mma and flash3
  in float16 at B=8 H=32 D=64 and B=8 H=16 D=128, N 1K/4K/16K, causal and not, bfloat16 at 4K,
  against SDPA flash and cuDNN).
- `seed-training`, `seed-inference`, `seed-models`: the page's training, decode and model tables
  (workbench/suites_training.py: forward+backward, decode over a paged KV cache, model shapes).
"""

from __future__ import annotations

from dataclasses import dataclass

from workbench.problem import Problem


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    problems: tuple
    timed: bool  # time and measure memory (GPU) or verify only
    all_heads: bool  # compare every head with float64, whatever the cost
    kernels: tuple | None = None  # rung names (None: the whole ladder)
    peers: tuple = ()
    repeat: int | None = None  # timed runs per point, when the suite wants fewer than --repeat


# The simulator's ladder cases: seq 1, 7, 33, 97; (Nq, Nkv) = (13, 29) and (29, 13); causal on and
# off; window (4, 0) and (2, 3); H/Hkv 4/4, 4/1, 8/2; D 16 and 32; float32 and float16.
SIM_VERIFY = (  # B=1, and one head at the longest lengths: the simulator pays per thread
    Problem(1, 4, 4, 1, 1, 16, "float32"),
    Problem(1, 4, 1, 1, 1, 32, "float16", causal=True),
    Problem(1, 4, 1, 7, 7, 32, "float16", causal=True),
    Problem(1, 4, 4, 7, 7, 16, "float32", window=(2, 3)),
    Problem(1, 2, 1, 33, 33, 16, "float32", window=(4, 0)),
    Problem(1, 1, 1, 33, 33, 32, "float16"),
    Problem(1, 1, 1, 67, 67, 32, "float16", window=(2, 3)),
    Problem(1, 1, 1, 67, 67, 16, "float32", causal=True),
    Problem(1, 4, 1, 13, 29, 16, "float32", causal=True),
    Problem(1, 8, 2, 13, 29, 32, "float16", window=(4, 0)),
    Problem(1, 8, 2, 29, 13, 32, "float16", causal=True),
    Problem(1, 4, 4, 29, 13, 16, "float32", window=(2, 3)),
    Problem(1, 8, 2, 29, 13, 16, "float32"),
)

# On the GPU: seq 97, 128, 1025, 2048; (Nq, Nkv) = (113, 203), (1023, 1024); causal; window (256, 0);
# H/Hkv 32/8 and 32/32; D 64 and 128; float32 and float16 — each value in several combinations.
GPU_VERIFY = (
    Problem(2, 32, 32, 97, 97, 64, "float32"),
    Problem(2, 32, 8, 97, 97, 128, "float16", causal=True),
    Problem(2, 32, 8, 128, 128, 128, "float16", causal=True),
    Problem(1, 32, 32, 128, 128, 64, "float32", window=(256, 0)),
    Problem(1, 32, 8, 1025, 1025, 64, "float16", window=(256, 0)),
    Problem(1, 32, 8, 1025, 1025, 128, "float32"),
    Problem(1, 32, 32, 2048, 2048, 128, "float32", causal=True),
    Problem(1, 32, 32, 2048, 2048, 64, "float16", window=(256, 0)),
    Problem(2, 32, 8, 113, 203, 64, "float32", causal=True),
    Problem(2, 32, 32, 113, 203, 128, "float16", window=(256, 0)),
    Problem(1, 32, 8, 1023, 1024, 128, "float16"),
    Problem(1, 32, 8, 1023, 1024, 64, "float32", causal=True),
    # N = 1, MQA and bfloat16 (the 16-bit rungs' cases: flash2_mma, flash3)
    Problem(2, 32, 8, 1, 1, 64, "bfloat16", causal=True),
    Problem(1, 32, 1, 1, 77, 128, "bfloat16"),
    Problem(2, 32, 1, 301, 301, 64, "float16", causal=True),
    Problem(2, 32, 4, 513, 700, 128, "bfloat16", window=(128, 0)),
    # FP8 (flash3 only: e4m3 codes quantised per tensor, judged on the dequantised inputs)
    Problem(2, 32, 8, 301, 301, 64, "float8_e4m3fn", causal=True),
    Problem(1, 16, 16, 1025, 1000, 128, "float8_e4m3fn"),
)

SEED_SEQS = (512, 1024, 2048, 4096, 8192)


def _ladder(seqs, batch, heads, dim, dtypes=("float32", "float16")):
    return tuple(Problem(batch, heads, heads, n, n, dim, dtype) for dtype in dtypes for n in seqs)


def _rung_names() -> set:
    from workbench.kernels import LADDER

    return {r.name for r in LADDER}


STANDARD_AND_FLASH = ("torch-standard", "sdpa-flash", "sdpa-efficient", "sdpa-cudnn")


def get(name: str, simulator: bool) -> Suite:
    tiny = _ladder((16, 33), 1, 2, 16)
    if name == "seed-speed":
        return Suite(name, "forward time vs seq at B=8 H=32 D=64 (the page's speed tables)",
                     tiny if simulator else _ladder(SEED_SEQS, 8, 32, 64), True, False,
                     ("naive", "flash2"), STANDARD_AND_FLASH)
    if name == "seed-memory":
        # The page's memory table (B=8 H=32 D=64, to 32K) and its Llama-2-7B rows: one attention
        # layer at B=1, 32 heads of D=128, float16, 2K..32K. The naive rung is expected to OOM.
        llama = tuple(Problem(1, 32, 32, n, n, 128, "float16") for n in (2048, 4096, 8192, 16384, 32768))
        page = _ladder((512, 2048, 8192, 32768), 8, 32, 64, ("float16",))
        return Suite(name, "peak device memory vs seq (the page's memory tables, Llama-2-7B rows)",
                     tiny if simulator else page + llama, True, False, ("naive", "flash2"),
                     ("torch-standard", "sdpa-flash"), repeat=3)
    if name == "seed-scaling":
        return Suite(name, "time and memory per token at B=1 H=32 D=64, seq 512..16K",
                     tiny if simulator else _ladder((*SEED_SEQS, 16384), 1, 32, 64, ("float16",)),
                     True, False, ("naive", "flash2"), ("torch-standard", "sdpa-flash"))
    if name == "seed-versions":
        # our FA1, FA2 and FA3 rungs (flash1, flash2 / flash2_mma, flash3) beside SDPA's backends
        kernels = tuple(k for k in ("flash1", "flash2", "flash2_mma", "flash3") if k in _rung_names())
        return Suite(name, "FA1 vs FA2 vs FA3 at seq 4096, B=8 H=32 D=64",
                     tiny[:1] if simulator else _ladder((4096,), 8, 32, 64), True, False,
                     kernels, ("sdpa-flash", "sdpa-efficient", "sdpa-cudnn"))
    if name == "perf":
        fp32 = tuple(Problem(8, 32, 32, 4096, 4096, 64, "float32", causal=c) for c in (False, True))
        fp16 = tuple(Problem(8, h, h, n, n, d, "float16", causal=c)
                     for h, d in ((32, 64), (16, 128)) for n in (1024, 4096, 16384) for c in (False, True))
        bf16 = tuple(Problem(8, h, h, 4096, 4096, d, "bfloat16", causal=c)
                     for h, d in ((32, 64), (16, 128)) for c in (False, True))
        kernels = tuple(k for k in ("flash2", "flash2_mma", "flash3") if k in _rung_names())
        return Suite(name, "flash2 (fp32), flash2_mma and flash3 (fp16/bf16) vs SDPA's backends",
                     tiny[:1] if simulator else fp32 + fp16 + bf16, True, False, kernels,
                     ("sdpa-efficient", "sdpa-flash", "sdpa-cudnn"), repeat=5)
    if name == "verify":
        return Suite("verify", "every rung over odd shapes, masks, GQA, D and dtypes (no timing)",
                     SIM_VERIFY if simulator else GPU_VERIFY, timed=False, all_heads=True)
    if name == "ladder":
        problems = _ladder((16, 33), 1, 2, 16) if simulator else _ladder(SEED_SEQS, 8, 32, 64)
        return Suite("ladder", "the seed config, seq swept: time and peak memory of every rung",
                     problems, timed=True, all_heads=False)
    if name in TRAINING_INFERENCE:
        raise ValueError(f"suite {name!r} is run by workbench.bench.suites_training.run_suite, not suites.get")
    raise ValueError(f"unknown suite {name!r}; choose one of {NAMES}")


SEED = ("seed-speed", "seed-memory", "seed-scaling", "seed-versions")
# Issue 9's suites (training, decode, model shapes): run by workbench/suites_training.py, not `get`.
TRAINING_INFERENCE = ("seed-training", "seed-inference", "seed-models")
NAMES = ("verify", "ladder", *SEED, "seed", "perf", *TRAINING_INFERENCE)
