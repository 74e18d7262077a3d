"""The harness must catch what a wrong kernel does: zeros, unwritten elements, wrong shapes, races,
impossible configs, float64 arguments; and its statistics must be right on known data."""

import itertools
import types

import numpy as np
import pytest

import workbench  # noqa: F401
from numba import cuda, float32

from workbench import Problem, reference
from workbench.harness import memory, runner, timing, verify
from workbench.kernels import Rung, naive

P = Problem(1, 2, 1, 13, 9, 8, "float32", causal=True)
TINY = naive.SIM_CONFIG


@cuda.jit
def fill(o, lse, value):
    """Every element of o (B, H, N, D) and lse (B, H, N) := value; one thread per (b, h, i)."""
    i = cuda.grid(1)
    heads, n = o.shape[1], o.shape[2]
    if i < o.shape[0] * heads * n:
        b, h, r = i // (heads * n), (i // n) % heads, i % n
        for d in range(o.shape[3]):
            o[b, h, r, d] = value
        lse[b, h, r] = value


@cuda.jit
def copy_rows(src, dst, rows):
    """Copy all but the last `rows` query rows of src into dst."""
    i = cuda.grid(1)
    n_q, dim = src.shape[2], src.shape[3]
    if i < src.size:
        b = i // (src.shape[1] * n_q * dim)
        h = (i // (n_q * dim)) % src.shape[1]
        r = (i // dim) % n_q
        d = i % dim
        if r < n_q - rows:
            dst[b, h, r, d] = src[b, h, r, d]


@cuda.jit
def shift(o, amount):
    """o[b, h, 0, 0] += amount for every (b, h)."""
    i = cuda.grid(1)
    if i < o.shape[0] * o.shape[1]:
        o[i // o.shape[1], i % o.shape[1], 0, 0] += amount


def fake(name, launch, needs=None):
    module = types.SimpleNamespace(
        LESSON="a test double", DEFAULT_CONFIG=dict(TINY), launch=launch,
        needs=needs or naive.needs, workspace_bytes=naive.workspace_bytes)
    return Rung(99, name, module.LESSON, module)


def launch_zeros(p, cfg, q, k, v, o, lse, gpu):
    gpu.launch(fill, 4, 64, o, lse, np.float32(0))


def launch_missing_last_row(p, cfg, q, k, v, o, lse, gpu):
    full = gpu.empty(p.q_shape, np.float32)
    naive.launch(p, cfg, q, k, v, full, lse, gpu)
    gpu.launch(copy_rows, 8, 64, full, o, 1)


_calls = itertools.count()


def launch_racy(p, cfg, q, k, v, o, lse, gpu):
    naive.launch(p, cfg, q, k, v, o, lse, gpu)
    gpu.launch(shift, 1, 64, o, np.float32(1e-3 * next(_calls)))  # differs from call to call


def test_correct_kernel_passes():
    assert verify.check("naive", P, seed=3, config=TINY).passed


def test_all_zeros_output_fails():
    report = verify.check(fake("zeros", launch_zeros), P, seed=3)
    assert not report.passed and report.rel_fro == pytest.approx(1.0)
    assert any("Frobenius" in f for f in report.failures)


def test_unwritten_elements_fail_through_the_poison():
    report = verify.check(fake("lazy", launch_missing_last_row), P, seed=3)
    assert not report.passed
    assert report.unwritten == P.batch * P.heads * P.head_dim  # one row per head
    assert any("never written" in f for f in report.failures)


def test_run_to_run_differences_fail_as_a_race():
    report = verify.check(fake("racy", launch_racy), P, seed=3)
    assert not report.deterministic and not report.passed


def test_mismatched_shapes_fail():
    report = verify.Report("x", P, 0)
    ref_o, ref_lse = np.zeros(P.q_shape), np.zeros(P.lse_shape)
    verify.compare(report, np.zeros((1, 2, 13, 7)), None, ref_o, ref_lse)
    assert not report.passed and "shape" in report.failures[0]


def test_one_wrong_element_fails_elementwise_even_when_frobenius_passes():
    p = Problem(1, 4, 4, 64, 64, 32)
    q, k, v = p.make_inputs(0)
    ref_o, ref_lse = workbench.reference.attention(q, k, v)
    out = ref_o.copy()
    out[0, 3, 17, 5] += 2e-4
    report = verify.compare(verify.Report("x", p, 0), out, ref_lse, ref_o, ref_lse)
    assert report.rel_fro < verify.TOLERANCE["float32"].rel_fro
    assert not report.passed and "(0, 3, 17, 5)" in report.failures[-1]


def test_lse_of_masked_rows_must_be_minus_inf():
    p = Problem(1, 1, 1, 6, 3, 4, causal=True)
    q, k, v = p.make_inputs(0)
    ref_o, ref_lse = workbench.reference.attention(q, k, v, causal=True)
    lse = np.where(np.isinf(ref_lse), 0.0, ref_lse)
    report = verify.compare(verify.Report("x", p, 0), ref_o, lse, ref_o, ref_lse)
    assert not report.passed and "-inf" in report.failures[-1]


def test_sampled_heads_compare_only_those_pairs():
    p = Problem(2, 4, 2, 9, 9, 8)
    pairs = verify.sample_pairs(p, 3, seed=0)
    assert pairs[0] == (0, 0) and pairs[-1] == (1, 3) and len(set(pairs)) == 3
    assert verify.check("naive", p, seed=1, config=TINY, heads=3).passed


@pytest.mark.parametrize("config, message", [
    ({"nope": 4}, "unknown config key"),
    ({"block_xy": 0}, "positive int"),
    ({"block_xy": 64}, "threads per block"),
    ("16", "must be a dict"),
])
def test_bad_configs_are_refused_before_launch(config, message):
    with pytest.raises((ValueError, TypeError), match=message):
        runner.check_config(workbench.kernels.get("naive"), P, config)


def test_needs_are_enforced():
    def needs_big(p, cfg):
        return runner.Needs(shared_bytes=64 * 1024, head_dims=(8, 16))

    with pytest.raises(ValueError, match="shared memory"):
        runner.check_config(fake("big", launch_zeros, needs_big), P)
    with pytest.raises(ValueError, match="head_dim"):
        runner.check_config(fake("d", launch_zeros, lambda p, c: runner.Needs(head_dims=(64,))), P)
    with pytest.raises(ValueError, match="Br is even"):
        runner.check_config(fake("r", launch_zeros, lambda p, c: runner.Needs(rules={"Br is even": False})), P)


def test_float64_scalar_arguments_are_refused():
    def launch_f64(p, cfg, q, k, v, o, lse, gpu):
        gpu.launch(fill, 4, 64, o, lse, 0.5)

    with pytest.raises(TypeError, match="float32"):
        runner.plan(fake("f64", launch_f64), P, TINY)


def test_plan_records_every_launch_without_running():
    launches = runner.plan(workbench.kernels.get("naive"), P, TINY)
    assert [l.name for l in launches] == ["scores", "softmax", "pv"]
    t = TINY["block_xy"]
    assert launches[0].grid == (-(-9 // t), -(-13 // t), 2) and launches[0].block == (t, t)


def test_timing_statistics_on_known_samples():
    t = timing.summarize([5.0, 1.0, 2.0, 4.0, 3.0])
    assert t.median_ms == 3.0 and t.p20_ms == pytest.approx(1.8) and t.p80_ms == pytest.approx(4.2)
    assert t.spread == pytest.approx((4.2 - 1.8) / 3.0)
    with pytest.raises(ValueError):
        timing.summarize([])
    with pytest.raises(ValueError):
        timing.summarize([1.0, float("nan")])


def test_timing_refuses_the_simulator():
    if workbench.mode() != "simulator":
        pytest.skip("simulator only")
    with pytest.raises(RuntimeError, match="no time"):
        timing.time_call(lambda: None)


def test_memory_model_and_oom_recognition():
    rung = workbench.kernels.get("naive")
    assert memory.model_bytes(rung, P, TINY) == P.io_bytes() + P.batch * P.heads * 13 * 9 * 4
    assert memory.is_oom(RuntimeError("[2] Call to cuMemAlloc results in CUDA_ERROR_OUT_OF_MEMORY"))
    assert not memory.is_oom(ValueError("bad shape"))


def test_simulator_shared_arrays_on_one_line_are_distinct():
    if workbench.mode() != "simulator":
        pytest.skip("a simulator patch")

    @cuda.jit
    def two_arrays(out):
        a = cuda.shared.array(4, float32); b = cuda.shared.array(4, float32)  # noqa: E702
        t = cuda.threadIdx.x
        a[t] = float32(1)
        b[t] = float32(2)
        cuda.syncthreads()
        out[t] = a[t] + 10 * b[t]

    out = np.zeros(4, np.float32)
    two_arrays[1, 4](out)
    np.testing.assert_array_equal(out, 21)


def test_sampled_rows_keep_both_edges_and_are_judged_exactly():
    p = Problem(1, 2, 1, 60, 60, 8, causal=True)
    rows = verify.sample_rows(p, 40, seed=3)
    assert len(rows) == 40 and len(set(rows.tolist())) == 40 and np.all(np.diff(rows) > 0)
    assert rows[:10].tolist() == list(range(10)) and rows[-10:].tolist() == list(range(50, 60))
    assert verify.sample_rows(p, 60, seed=3) is None and verify.sample_rows(p, None, seed=3) is None
    assert verify.check("naive", p, seed=1, config=TINY, heads=2, rows=40).passed

    # A wrong row that the sample covers fails; the reference is only those rows.
    q, k, v, pairs, ref_o, ref_lse = verify.truth(p, 1, 2, 40)
    assert ref_o.shape == (2, 1, 40, 8)
    rows = verify.sample_rows(p, 40, seed=1)  # the rows truth() chose for seed 1
    full_o, full_lse = reference.attention(q, k, v, causal=True)
    out, lse = full_o.astype(np.float32), full_lse.astype(np.float32)
    rep = verify.compare_sampled(verify.Report("x", p, 1), out, lse, pairs, ref_o, ref_lse, rows)
    assert rep.passed
    out[0, 0, rows[20]] += 1.0
    rep = verify.compare_sampled(verify.Report("x", p, 1), out, lse, pairs, ref_o, ref_lse, rows)
    assert not rep.passed
