"""Every rung of the ladder against float64, over odd shapes (not multiples of any tile), masks,
head layouts and dtypes. In the simulator each rung runs at its tiny SIM_CONFIG; on a GPU at its
DEFAULT_CONFIG. Each case draws fresh inputs from its own seed."""

import pytest

import workbench
from workbench import LADDER, Problem
from workbench.harness import verify
from workbench.bench.suites import SIM_VERIFY

LADDER_CASES = list(SIM_VERIFY)  # seq 1/7/33/97, Nq≠Nkv both ways, masks, GQA, D, dtypes


@pytest.mark.parametrize("problem", LADDER_CASES, ids=lambda p: p.describe().replace(" ", "_"))
@pytest.mark.parametrize("rung", LADDER, ids=lambda r: r.name)
def test_rung_matches_float64(rung, problem):
    if workbench.mode() == "simulator" and getattr(rung.module, "GPU_ONLY", None):
        pytest.skip(f"{rung.name}: {rung.module.GPU_ONLY}")
    needs = rung.module.needs(problem, rung.default_config)
    if problem.dtype not in needs.dtypes:
        pytest.skip(f"{rung.name} does not take {problem.dtype}")
    if needs.head_dims is not None and problem.head_dim not in needs.head_dims:
        pytest.skip(f"{rung.name} does not take head_dim {problem.head_dim}")
    seed = LADDER_CASES.index(problem) * 101 + rung.index
    report = verify.check(rung, problem, seed=seed)
    assert report.passed, str(report)


# The naive rung takes any head_dim; a few more of the foundation's odd shapes.
NAIVE_CASES = [
    Problem(1, 2, 2, 13, 13, 8, "float32"),
    Problem(1, 3, 1, 13, 7, 24, "float16", causal=True),
    Problem(2, 2, 1, 7, 13, 8, "float32", window=(1, 1)),
]


@pytest.mark.parametrize("problem", NAIVE_CASES, ids=lambda p: p.describe().replace(" ", "_"))
def test_naive_on_odd_head_dims(problem):
    report = verify.check("naive", problem, seed=7)
    assert report.passed, str(report)


def test_ladder_is_ordered_and_documented():
    assert [r.index for r in LADDER] == list(range(1, len(LADDER) + 1))
    assert LADDER[0].name == "naive"
    for rung in LADDER:
        m = rung.module
        assert rung.lesson and m.__doc__ and len(m.__doc__) > 200, rung.name
        for attr in ("DEFAULT_CONFIG", "launch", "needs", "workspace_bytes"):
            assert hasattr(m, attr), (rung.name, attr)


def test_fused_rungs_need_no_quadratic_memory():
    small, big = Problem(1, 2, 2, 64, 64, 32), Problem(1, 2, 2, 512, 512, 32)
    for rung in LADDER:
        cfg = workbench.harness.runner.default_config(rung)
        grow = rung.module.workspace_bytes(big, cfg) / max(1, rung.module.workspace_bytes(small, cfg))
        if rung.name in ("naive", "tiled"):
            assert grow == 64  # N² buffer: 8x the sequence, 64x the bytes
        else:
            assert grow <= 8, rung.name  # at most linear in N


def test_gpu_only_rung_is_refused_in_the_simulator_with_the_reason():
    from workbench.harness import runner

    if workbench.mode() != "simulator":
        pytest.skip("simulator only")
    rung = workbench.kernels.get("flash2_mma")
    with pytest.raises(ValueError, match="cannot run in the simulator: the simulator cannot link"):
        runner.check_config(rung, Problem(1, 2, 2, 64, 64, 64, "float16"))
