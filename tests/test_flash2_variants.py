"""flash2's compile-time variants (issue 8: shared_index, row_reduce, kv_buffers, stages, d_step),
kept runnable in experiments/flash2_variants.py so that PERF_NOTES' tables stay reproducible: each
against float64 in the simulator on tiny odd shapes, and the old default ("rm8-ua") bitwise equal
to the rung that replaced it (workbench/kernels/flash2.py, its only path now)."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

import workbench  # noqa: F401  (first: it chooses the simulator before Numba is imported)
from workbench import Problem
from workbench.dtypes import device_dtype
from workbench.harness import runner, verify
from workbench.kernels import get

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # experiments/ lives at the repository root, beside workbench/
    sys.path.insert(0, str(ROOT))
from experiments import flash2_variants as fv  # noqa: E402

ALL = {"row_reduce": fv.SHUFFLE, "kv_buffers": fv.TWO_BUFFERS, "stages": fv.PREFETCH, "d_step": 8,
       "shared_index": fv.UNSIGNED}

# (config over SIM_CONFIG, problem): every option on and off somewhere; odd lengths, Nq != Nkv,
# masks, GQA, the three input dtypes (the prefetch converts as the tile loader does).
SIM_CASES = [
    # v0's SHARED and SIGNED paths (the defaults are SHUFFLE and UNSIGNED)
    ({"kv_buffers": fv.TWO_BUFFERS, "d_step": 8, "row_reduce": fv.SHARED,
      "shared_index": fv.SIGNED}, Problem(1, 2, 2, 11, 9, 16, "float16", window=(3, 1))),
    ({"stages": fv.PREFETCH}, Problem(1, 2, 1, 11, 21, 16, "bfloat16", causal=True)),
    (ALL, Problem(2, 2, 1, 13, 19, 16, "float32", causal=True)),
    ({**ALL, "RM": 4, "d_step": 16}, Problem(1, 2, 2, 9, 23, 32, "float16")),  # RM = 2·RN
    ({"row_reduce": fv.SHARED, "shared_index": fv.SIGNED}, Problem(1, 1, 1, 17, 17, 16, "float32")),
]


@pytest.mark.parametrize("config, problem", SIM_CASES,
                         ids=[json.dumps(c, separators=(",", ":")) for c, _ in SIM_CASES])
def test_variant_matches_float64(config, problem):
    report = verify.check(fv.rung(), problem, seed=SIM_CASES.index((config, problem)) + 17,
                          config=config)
    assert report.passed, str(report)


def test_variant_keys_refuse_other_values():
    p = Problem(1, 2, 2, 64, 64, 64)
    for key, bad in (("row_reduce", 3), ("kv_buffers", 3), ("stages", 3), ("d_step", 12),
                     ("shared_index", 3)):
        with pytest.raises(ValueError, match=key):
            runner.check_config(fv.rung(), p, {key: bad})


def test_shared_bytes_of_the_variants():
    # D = 64, Br 64, Bc 32, TC 8: Q 64·68, K/V 32·68 (twice with 2 buffers), P 64·40, scratch 64·8
    assert fv.shared_bytes(64, 32, 64, 8) == 38400
    assert fv.shared_bytes(64, 32, 64, 8, fv.SHUFFLE) == 38400 - 64 * 8 * 4
    assert fv.shared_bytes(64, 32, 64, 8, fv.SHUFFLE, fv.TWO_BUFFERS) == 36352 + 32 * 68 * 4


def test_the_named_variants_are_the_measured_configs():
    """PERF_NOTES' names: v0 is the rung as first committed, rm8-ua the measured best and the
    default here, and every name spells its keys (u, a, b, c, d8, rm8, wN)."""
    v = fv.VARIANTS
    assert v["v0"] == fv.V0
    assert {**fv.DEFAULT_CONFIG, **v["rm8-ua"]} == fv.DEFAULT_CONFIG
    assert v["v0"]["RM"] == 4 and v["v0"]["row_reduce"] == fv.SHARED
    for name, cfg in v.items():
        full = {**fv.DEFAULT_CONFIG, **cfg}
        parts = name.split("-")
        assert (full["RM"] == 8) == ("rm8" in parts), name
        keys = parts[-1] if parts[-1][0] not in "w" else parts[-2]
        assert (full["shared_index"] == fv.UNSIGNED) == ("u" in keys), name
        assert (full["row_reduce"] == fv.SHUFFLE) == ("a" in keys), name
        assert (full["kv_buffers"] == fv.TWO_BUFFERS) == ("b" in keys), name
        assert (full["stages"] == fv.PREFETCH) == ("c" in keys), name
        assert (full["d_step"] == 8) == ("d8" in keys), name
    assert v["rm8-uab-w8"]["warps_per_sm"] == 8


@pytest.mark.parametrize("problem", [Problem(1, 4, 2, 21, 30, 16, "float32", causal=True),
                                     Problem(1, 2, 2, 17, 9, 32, "bfloat16", window=(3, 2))],
                         ids=lambda p: p.describe().replace(" ", "_"))
def test_old_default_and_the_new_flash2_agree_bitwise(problem):
    """The new rung is the old default's code path, factored: same arithmetic in the same order."""
    q, k, v = problem.make_inputs(5)
    new, old = get("flash2"), fv.rung()
    outs = []
    for rung in (new, old):
        cfg = runner.check_config(rung, problem)
        launched = verify.launch_poisoned(rung, problem, cfg, q, k, v, launches=1)
        outs.append(launched.outputs[0])
    (o_new, lse_new), (o_old, lse_old) = outs
    io = device_dtype(problem.dtype)
    assert np.array_equal(np.asarray(o_new).view(io), np.asarray(o_old).view(io))
    assert np.array_equal(lse_new, lse_old)
    assert not np.isnan(lse_new).any()


def _gpu_script(name):
    """scripts/<name>.py as a module (its tables; nothing runs)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_scripts_build_their_variants_from_experiments():
    perf = _gpu_script("gpu_perf_flash2")
    assert perf.VARIANTS is fv.VARIANTS and perf.BEST_GUESS in fv.VARIANTS
    assert set(perf.CAUSAL) <= set(fv.VARIANTS)
    f12 = _gpu_script("gpu_flash12")
    assert f12.OLD_DEFAULT == "rm8-ua" and f12.OLD_DEFAULT in fv.VARIANTS
