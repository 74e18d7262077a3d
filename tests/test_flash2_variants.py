"""flash2's compile-time variants (issue 8: shared_index, row_reduce, kv_buffers, stages, d_step):
each against float64 in the simulator on one tiny odd shape, and the GPU script's best guess
(scripts/gpu_perf_flash2.py) compiled for sm_90 (no spills, shared memory as declared) in a
subprocess with the simulator off. The default config is test_rungs.py's and test_compile.py's."""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from workbench import Problem
from workbench.harness import runner, verify
from workbench.harness.device import H100
from workbench.kernels import flash2, get

ROOT = Path(__file__).resolve().parents[1]
ALL = {"row_reduce": flash2.SHUFFLE, "kv_buffers": 2, "stages": 2, "d_step": 8,
       "shared_index": flash2.UNSIGNED}

# (config over SIM_CONFIG, problem): every option on and off somewhere; odd lengths, Nq != Nkv,
# masks, GQA, the three input dtypes (the prefetch converts as the tile loader does).
SIM_CASES = [
    ({"kv_buffers": 2, "d_step": 8}, Problem(1, 2, 2, 11, 9, 16, "float16", window=(3, 1))),
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


def test_best_guess_compiles_for_sm90_without_spills():
    """The GPU script's best-guess variant: no spills, no stack, shared memory as needs() declares
    (the default is test_compile.py's; PERF_NOTES.md lists every timed variant's resources, from
    the same compile, which takes ~6 s of CPU a variant: too slow to repeat for all here)."""
    gpu = _gpu_script()
    names = [gpu.BEST_GUESS]
    script = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(ROOT / "scripts")!r})
        import gpu_perf_flash2 as g
        from workbench import Problem
        from workbench.kernels import get
        from workbench.inspect import rung_usage
        out = {{}}
        p = Problem(8, 32, 32, 4096, 4096, 64, "float32")
        for name in {names!r}:
            (u,) = rung_usage(get("flash2"), p, g.VARIANTS[name])
            out[name] = [u.registers, u.shared_bytes, u.stack_bytes, u.spill_bytes]
        print(json.dumps(out))
    """)
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    usage = json.loads(proc.stdout.strip().splitlines()[-1])
    p = Problem(8, 32, 32, 4096, 4096, 64, "float32")
    for name, (regs, smem, stack, spill) in usage.items():
        declared = flash2.needs(p, {**flash2.DEFAULT_CONFIG, **gpu.VARIANTS[name]}).shared_bytes
        assert (stack, spill) == (0, 0), (name, regs, stack, spill)
        assert smem == declared <= H100.max_shared_per_block, (name, smem, declared)
