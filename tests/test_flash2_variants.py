"""flash2's compile-time variants (issue 8: shared_index, row_reduce, kv_buffers, stages, d_step):
each against float64 in the simulator on one tiny odd shape. The default config (the measured
best, "rm8-ua") is compiled for sm_90 by test_compile.py and verified by test_rungs.py."""

import importlib.util
import json
from pathlib import Path

import pytest

from workbench import Problem
from workbench.harness import runner, verify
from workbench.kernels import flash2, get

ROOT = Path(__file__).resolve().parents[1]
ALL = {"row_reduce": flash2.SHUFFLE, "kv_buffers": 2, "stages": 2, "d_step": 8,
       "shared_index": flash2.UNSIGNED}

# (config over SIM_CONFIG, problem): every option on and off somewhere; odd lengths, Nq != Nkv,
# masks, GQA, the three input dtypes (the prefetch converts as the tile loader does).
SIM_CASES = [
    # (the defaults are now SHUFFLE and UNSIGNED: this case keeps v0's SHARED and SIGNED paths tested)
    ({"kv_buffers": 2, "d_step": 8, "row_reduce": flash2.SHARED, "shared_index": flash2.SIGNED},
     Problem(1, 2, 2, 11, 9, 16, "float16", window=(3, 1))),
    ({"stages": 2}, Problem(1, 2, 1, 11, 21, 16, "bfloat16", causal=True)),
    (ALL, Problem(2, 2, 1, 13, 19, 16, "float32", causal=True)),
    ({**ALL, "RM": 4, "d_step": 16}, Problem(1, 2, 2, 9, 23, 32, "float16")),  # RM = 2·RN
]


@pytest.mark.parametrize("config, problem", SIM_CASES,
                         ids=[json.dumps(c, separators=(",", ":")) for c, _ in SIM_CASES])
def test_variant_matches_float64(config, problem):
    report = verify.check("flash2", problem, seed=SIM_CASES.index((config, problem)) + 17,
                          config=config)
    assert report.passed, str(report)


def test_variant_keys_refuse_other_values():
    p = Problem(1, 2, 2, 64, 64, 64)
    for key, bad in (("row_reduce", 3), ("kv_buffers", 3), ("stages", 3), ("d_step", 12),
                     ("shared_index", 3)):
        with pytest.raises(ValueError, match=key):
            runner.check_config(get("flash2"), p, {key: bad})


def test_shared_bytes_of_the_variants():
    # D = 64, Br 64, Bc 32, TC 8: Q 64·68, K/V 32·68 (twice with 2 buffers), P 64·40, scratch 64·8
    assert flash2.shared_bytes(64, 32, 64, 8) == 38400
    assert flash2.shared_bytes(64, 32, 64, 8, flash2.SHUFFLE) == 38400 - 64 * 8 * 4
    assert flash2.shared_bytes(64, 32, 64, 8, flash2.SHUFFLE, 2) == 36352 + 32 * 68 * 4


def _gpu_script():
    """scripts/gpu_perf_flash2.py as a module (its VARIANTS and BEST_GUESS; nothing runs)."""
    path = ROOT / "scripts" / "gpu_perf_flash2.py"
    spec = importlib.util.spec_from_file_location("gpu_perf_flash2", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
