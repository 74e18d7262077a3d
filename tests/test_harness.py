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


# --------------------------------------------------------------------------------------------------
# One runner, one verifier: every kind of rung through the declaration (kernels/contract.py)
# --------------------------------------------------------------------------------------------------
from workbench import kernels  # noqa: E402
from workbench.kernels import contract, flash2_bwd  # noqa: E402
from workbench.kernels import paged_decode as decode_rung  # noqa: E402
from workbench.kernels.contract import Arg  # noqa: E402
from workbench.problem import DecodeProblem  # noqa: E402

BWD_P = Problem(1, 2, 1, 9, 11, 16, "float32", causal=True)  # GQA, Nq < Nkv
DEC_P = DecodeProblem(2, 4, 2, 1, 16, 4, 4 + 2 + 2, 4 + 1, (13, 6), "float32")  # as test_decode's


def double(kind, base, name, launch, **extra):
    """A rung of `kind` that behaves like module `base` except for its `launch` (and `extra`)."""
    module = types.SimpleNamespace(
        LESSON="a test double", DEFAULT_CONFIG=dict(base.DEFAULT_CONFIG),
        SIM_CONFIG=dict(getattr(base, "SIM_CONFIG", {})), needs=base.needs,
        workspace_bytes=base.workspace_bytes, launch=launch, **extra)
    return Rung(99, name, module.LESSON, module, kind)


def test_every_rung_declares_its_arrays_as_its_launch_takes_them():
    """Each registered rung has a kind; its declaration (ARGS, else its kind's) names the arrays of
    its launch() in order, and each declared shape is a property of its kind's problem."""
    import inspect

    problems = {"forward": Problem(), "backward": Problem(), "decode": DEC_P}
    assert {r.kind for r in kernels.of_kind(None)} == {"forward", "backward", "decode"}
    for rung in kernels.of_kind(None):
        params = list(inspect.signature(rung.module.launch).parameters)
        assert params[2:-1] == [a.name for a in rung.args], rung.name
        assert rung.args == contract.SIGNATURES[rung.kind], rung.name  # (declared or by fallback)
        for a in rung.args:
            assert len(a.shape_of(problems[rung.kind])) >= 1 and a.device_dtype(problems[rung.kind])
    assert [r.name for r in kernels.BACKWARD][:1] == ["flash2_bwd"]
    assert [r.name for r in kernels.DECODE][:1] == ["paged_decode"]
    assert runner.Needs is contract.Needs  # rungs may import Needs from either place


def test_get_looks_in_the_kind_asked():
    assert kernels.get("flash2_bwd", kind=None).kind == "backward"
    assert kernels.get("paged_decode", kind="decode").kind == "decode"
    with pytest.raises(ValueError, match="unknown kernel 'flash2_bwd'"):
        kernels.get("flash2_bwd")  # the forward ladder by default (workbench.attention's choice)
    with pytest.raises(ValueError, match="unknown decode kernel 'flash2'"):
        kernels.get("flash2", kind="decode")


def test_plan_of_every_kind_from_the_declaration():
    bwd = kernels.get("flash2_bwd", kind="backward")
    launches = runner.plan(bwd, BWD_P, runner.check_config(bwd, BWD_P))
    assert [l.name for l in launches] == ["bwd_prep", "bwd_dkdv", "bwd_dq"]
    dec = kernels.get("paged_decode", kind="decode")
    launches = runner.plan(dec, DEC_P, runner.check_config(dec, DEC_P))
    assert [l.name for l in launches][:1] == ["paged_decode_split"]  # (combine only with splits)
    assert runner.declared_bytes(kernels.get("flash2"), BWD_P) == BWD_P.io_bytes()
    q_bytes, kv_bytes = (4 * int(np.prod(s)) for s in (BWD_P.q_shape, BWD_P.kv_shape))
    assert runner.declared_bytes(bwd, BWD_P) == BWD_P.io_bytes() + 2 * q_bytes + 2 * kv_bytes  # dO, dQ; dK, dV
    with pytest.raises(ValueError, match="'flash2_bwd' takes dtypes.*not 'float8_e4m3fn'"):
        runner.check_config(bwd, Problem(1, 1, 1, 8, 8, 16, "float8_e4m3fn"))


REORDERED = (Arg("k", "kv_shape"), Arg("v", "kv_shape"), Arg("q", "q_shape"),
             Arg("lse", "lse_shape", "float32", "out"), Arg("o", "q_shape", role="out"))


def launch_reordered(p, cfg, k, v, q, lse, o, gpu):
    naive.launch(p, cfg, q, k, v, o, lse, gpu)


def test_a_rung_with_its_own_declaration_is_planned_run_and_verified_by_it():
    rung = fake("reordered", launch_reordered)
    rung.module.ARGS = REORDERED
    assert [a.name for a in rung.args] == ["k", "v", "q", "lse", "o"]
    assert [x.shape for x in runner.placeholders(rung, P)] == [P.kv_shape, P.kv_shape, P.q_shape,
                                                               P.lse_shape, P.q_shape]
    assert [l.name for l in runner.plan(rung, P, TINY)] == ["scores", "softmax", "pv"]
    report = verify.check(rung, P, seed=3)  # (o poisoned and judged where the declaration puts it)
    assert report.passed, str(report)
    q, k, v = (cuda.to_device(x) for x in P.make_inputs(0))
    o, lse = cuda.device_array(P.q_shape, np.float32), cuda.device_array(P.lse_shape, np.float32)
    with pytest.raises(ValueError, match=r"k must have shape"):  # the forward's order is refused
        runner.run(rung, P, TINY, q, k, v, o, lse)


def test_run_checks_the_arrays_against_the_declaration():
    rung = workbench.kernels.get("naive")
    q, k, v = (cuda.to_device(x) for x in P.make_inputs(0))
    o, lse = cuda.device_array(P.q_shape, np.float32), cuda.device_array(P.lse_shape, np.float32)
    with pytest.raises(TypeError, match="takes 5 arrays"):
        runner.run(rung, P, TINY, q, k, v, o)
    with pytest.raises(ValueError, match=r"k must have shape \(1, 1, 9, 8\)"):
        runner.run(rung, P, TINY, q, q, v, o, lse)
    with pytest.raises(TypeError, match="lse must be a float32"):
        runner.run(rung, P, TINY, q, k, v, o, cuda.device_array(P.lse_shape, np.float16))
    pool = runner.Pool()
    assert runner.run(rung, P, TINY, q, k, v, o, lse, pool).workspace_bytes > 0  # (a Pool after the arrays)
    assert len(pool.arrays) == 1


def noisy_launch():
    """naive, then o[b, h, 0, 0] nudged by a few ulps that differ from launch to launch (as float
    atomics would)."""
    calls = itertools.count(1)

    def launch(p, cfg, q, k, v, o, lse, gpu):
        naive.launch(p, cfg, q, k, v, o, lse, gpu)
        gpu.launch(shift, 1, 64, o, np.float32(1e-6 * next(calls)))

    return launch


def test_a_nondeterministic_rung_is_reported_not_failed():
    report = verify.check(fake("atomic", noisy_launch()), P, seed=3)
    assert not report.passed and any("differ bitwise" in f for f in report.failures)
    rung = fake("atomic", noisy_launch())
    rung.module.DETERMINISTIC = False
    report = verify.check(rung, P, seed=3)
    assert report.passed, str(report)
    assert not report.deterministic and not report.bitwise_required
    assert "DETERMINISTIC = False" in str(report) and report.as_dict()["bitwise_required"] is False


def test_a_nondeterministic_rung_still_fails_unwritten_outputs():
    rung = fake("lazy-atomic", launch_missing_last_row)
    rung.module.DETERMINISTIC = False
    report = verify.check(rung, P, seed=3)
    assert not report.passed and report.unwritten == P.batch * P.heads * P.head_dim
    assert any("never written" in f for f in report.failures)

    calls = itertools.count()

    def lazy_second_time(p, cfg, q, k, v, o, lse, gpu):  # right once, a row short the next time
        first = not gpu.live or next(calls) == 0  # (planning launches nothing: not counted)
        (naive.launch if first else launch_missing_last_row)(p, cfg, q, k, v, o, lse, gpu)

    rung = fake("lazy-later", lazy_second_time)
    rung.module.DETERMINISTIC = False
    report = verify.check(rung, P, seed=3)
    assert not report.passed and report.unwritten == 0  # (the first launch was complete)
    assert any(f.startswith("launch 2:") and "never written" in f for f in report.failures), report.failures


def launch_bwd_without_dq(p, cfg, q, k, v, o, lse, do, dq, dk, dv, gpu):
    flash2_bwd.launch(p, cfg, q, k, v, o, lse, do, gpu.empty(dq.shape, dq.dtype), dk, dv, gpu)


def launch_decode_without_o(p, cfg, q, k_cache, v_cache, table, lens, o, lse, gpu):
    decode_rung.launch(p, cfg, q, k_cache, v_cache, table, lens, gpu.empty(o.shape, o.dtype), lse, gpu)


def launch_without_lse(p, cfg, q, k, v, o, lse, gpu):
    naive.launch(p, cfg, q, k, v, o, gpu.empty(lse.shape, lse.dtype), gpu)


UNWRITTEN = {  # kind: (rung double, problem, the output left unwritten, its elements)
    "forward": (lambda: double("forward", naive, "no-lse", launch_without_lse), P, "LSE values",
                int(np.prod(P.lse_shape))),
    "backward": (lambda: double("backward", flash2_bwd, "no-dq", launch_bwd_without_dq), BWD_P,
                 "dq elements", int(np.prod(BWD_P.q_shape))),
    "decode": (lambda: double("decode", decode_rung, "no-o", launch_decode_without_o), DEC_P,
               "output elements", int(np.prod(DEC_P.q_shape))),
}


@pytest.mark.parametrize("bitwise", [True, False], ids=["deterministic", "DETERMINISTIC=False"])
@pytest.mark.parametrize("kind", list(UNWRITTEN))
def test_an_output_left_unwritten_fails_for_every_kind(kind, bitwise):
    make, problem, what, size = UNWRITTEN[kind]
    rung = make()
    if not bitwise:
        rung.module.DETERMINISTIC = False
    report = verify.check(rung, problem, seed=4)
    assert report.kind == kind and not report.passed
    assert any(f"{size} of {size} {what} are NaN" in f for f in report.failures), report.failures
    assert report.unwritten == size


@pytest.mark.parametrize("kind", ["backward", "decode"])
def test_the_real_rungs_of_each_kind_pass_the_same_verifier(kind):
    name, problem = {"backward": ("flash2_bwd", BWD_P), "decode": ("paged_decode", DEC_P)}[kind]
    report = verify.check(name, problem, seed=6)
    assert report.passed and report.kind == kind and report.deterministic, str(report)
    assert not report.inputs_changed  # q, k, v, o, lse, do / q, caches (NaN slots too), table, lens
    if kind == "decode":
        assert set(report.errors) == {"o", "lse"} and report.as_dict()["lse_max_abs"] == report.lse_max_abs


def test_traffic_counts_any_kind_by_its_declared_names():
    from workbench.sim.traffic import traffic

    arrays = traffic("paged_decode", DEC_P).by_array()
    assert {"Q", "K_CACHE", "V_CACHE", "BLOCK_TABLE", "SEQ_LENS", "O", "LSE"} <= set(arrays)
    assert arrays["O"][1] == 4 * int(np.prod(DEC_P.q_shape))  # O written once (float32)
    assert arrays["K_CACHE"][0] > 0 and arrays["K_CACHE"][1] == 0
