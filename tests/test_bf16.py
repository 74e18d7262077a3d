"""bfloat16 I/O: ml_dtypes arrays on the host, uint16 bits on the device, flash2 the rung that takes
them (workbench/dtypes.py, kernels/common.py). Simulator only; the GPU side is scripts/gpu_bf16.py."""

import ml_dtypes
import numpy as np
import pytest

import workbench
from numba import cuda  # (after workbench, which chooses the simulator)

from workbench import Problem, reference
from workbench.api import training
from workbench.harness import runner, verify
from workbench.kernels.common import bf16_bits, load_f32

BF16 = np.dtype(ml_dtypes.bfloat16)


def special_floats():
    """float32 bit patterns where rounding to bfloat16 is delicate, plus random ones."""
    rng = np.random.default_rng(11)
    kept = rng.integers(0, 1 << 16, 500, dtype=np.uint32) << 16
    edges = np.concatenate([
        kept | 0x8000,  # exact ties: to the even neighbour
        kept | 0x8001, kept | 0x7FFF,  # just above and just below the tie
        np.array([0x7F7FFFFF, 0xFF7FFFFF, 0x7F7F8000,  # largest floats: round to +-inf
                  0x7F800000, 0xFF800000,  # inf
                  0x7FC00000, 0xFFC00001, 0x7F800001, 0x7FFFFFFF,  # NaNs, quiet and signalling
                  0x00000001, 0x00008000, 0x00018000, 0x007FFFFF, 0x80008001,  # subnormals
                  0x00000000, 0x80000000], np.uint32),  # zeros
        rng.integers(0, 1 << 32, 20000, dtype=np.uint32),
    ]).astype(np.uint32)
    return edges.view(np.float32)


def as_bf16_bits(xs):
    with np.errstate(invalid="ignore"):  # (NumPy warns when casting NaN)
        return xs.astype(BF16).view(np.uint16)


def same_bf16(a, b):
    """Equal bits, or both NaN (NaN payloads may differ: ml_dtypes and the GPU make their own)."""
    fa, fb = a.view(BF16).astype(np.float32), b.view(BF16).astype(np.float32)
    return np.array_equal(np.isnan(fa), np.isnan(fb)) and np.array_equal(a[~np.isnan(fa)], b[~np.isnan(fb)])


def test_load_f32_is_exact_on_every_bfloat16():
    bits = np.arange(1 << 16, dtype=np.uint16)
    got = np.array([load_f32(b) for b in bits], np.float32)
    want = bits.view(BF16).astype(np.float32)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    assert np.array_equal(got.view(np.uint32)[~nan], want.view(np.uint32)[~nan])
    assert load_f32(np.float16(1.5)) == np.float32(1.5) and load_f32(np.float32(-2.25)) == -2.25


def test_bf16_bits_rounds_like_ml_dtypes():
    xs = special_floats()
    got = np.array([bf16_bits(x) for x in xs], np.uint16)
    want = as_bf16_bits(xs)
    nan = np.isnan(xs)
    assert np.isnan(got.view(BF16)[nan].astype(np.float32)).all()  # NaN stays NaN (never inf)
    bad = np.nonzero(got[~nan] != want[~nan])[0]
    assert not bad.size, [(hex(xs[~nan].view(np.uint32)[i]), hex(got[~nan][i]), hex(want[~nan][i]))
                          for i in bad[:5]]


def test_conversions_inside_a_kernel():
    @cuda.jit
    def convert(bits, xs, f, b):
        i = cuda.grid(1)
        if i < bits.size:
            f[i] = load_f32(bits[i])
            b[i] = bf16_bits(xs[i])

    xs = special_floats()[1495:1559]  # the largest floats, infs, NaNs, subnormals, zeros, random
    bits = as_bf16_bits(xs)
    f, b = np.zeros(64, np.float32), np.zeros(64, np.uint16)
    convert[2, 32](bits, xs, f, b)
    assert same_bf16(b, bits)
    assert np.array_equal(f, bits.view(BF16).astype(np.float32), equal_nan=True)


def test_problem_inputs_are_the_float32_draws_rounded():
    p16 = Problem(1, 2, 1, 5, 7, 8, "bfloat16")
    q, k, v = p16.make_inputs(4)
    q32, k32, v32 = Problem(1, 2, 1, 5, 7, 8, "float32").make_inputs(4)
    assert q.dtype == BF16 and p16.itemsize == 2
    for a, b in ((q, q32), (k, k32), (v, v32)):
        assert np.array_equal(a.view(np.uint16), b.astype(BF16).view(np.uint16))
    assert Problem(dtype=ml_dtypes.bfloat16).dtype == "bfloat16"
    assert p16.min_bytes() == Problem(1, 2, 1, 5, 7, 8, "float16").min_bytes()


@pytest.mark.parametrize("problem", [
    Problem(1, 4, 2, 13, 11, 16, "bfloat16", causal=True),  # GQA, Nq > Nkv, odd lengths
    Problem(2, 1, 1, 9, 17, 32, "bfloat16", window=(3, 2)),
], ids=lambda p: p.describe().replace(" ", "_"))
def test_flash2_bfloat16_matches_float64(problem):
    report = verify.check("flash2", problem, seed=23)
    assert report.passed, str(report)
    # the errors are bfloat16's rounding of O, not float16's: a float16-sized bound would be wrong
    assert report.rel_fro > verify.TOLERANCE["float16"].rel_fro / 20


def test_verify_catches_a_bfloat16_output_that_is_off():
    """The bfloat16 rule still fails an output that is wrong by much more than its rounding."""
    p = Problem(1, 1, 1, 6, 6, 8, "bfloat16")
    q, k, v = p.make_inputs(1)
    ref_o, ref_lse = reference.attention(q, k, v)
    off = (ref_o * 1.05).astype(BF16)  # 5% off: ~10 units of bfloat16 rounding
    report = verify.compare(verify.Report("fake", p, 1), off, ref_lse, ref_o, ref_lse)
    assert not report.passed
    ok = verify.compare(verify.Report("fake", p, 1), ref_o.astype(BF16), ref_lse, ref_o, ref_lse)
    assert ok.passed, ok.failures


def test_ml_dtypes_round_trip_through_attention():
    p = Problem(1, 2, 2, 7, 10, 16, "bfloat16", causal=True)
    q, k, v = p.make_inputs(5)
    o, lse = workbench.attention(q, k, v, causal=True, return_lse=True)
    assert isinstance(o, np.ndarray) and o.dtype == BF16 and o.shape == q.shape
    assert lse.dtype == np.float32
    ref_o, ref_lse = reference.attention(q, k, v, causal=True)
    report = verify.compare(verify.Report("flash2", p, 5), o, lse, ref_o, ref_lse)
    assert report.passed, report.failures
    # device arrays of ml_dtypes.bfloat16 (the simulator's) come back as the same kind and dtype
    od = workbench.attention(*(cuda.to_device(x) for x in (q, k, v)), causal=True)
    assert od.dtype == BF16 and np.array_equal(od.copy_to_host().view(np.uint16), o.view(np.uint16))


def test_rungs_without_bfloat16_refuse_it_before_a_launch(monkeypatch):
    launched = []
    monkeypatch.setattr(runner, "run", lambda *a, **k: launched.append(a))
    q, k, v = Problem(1, 1, 1, 8, 8, 16, "bfloat16").make_inputs(0)
    with pytest.raises(ValueError, match=r"'online' takes dtypes \('float32', 'float16'\), not "
                                         r"'bfloat16'.*take bfloat16:.*flash2"):
        workbench.attention(q, k, v, kernel="online")
    assert not launched


def test_plain_uint16_is_not_taken_for_bfloat16():
    q, k, v = Problem(1, 1, 1, 8, 8, 16, "bfloat16").make_inputs(0)
    for kind in (np.uint16, np.int16):
        with pytest.raises(TypeError, match="not taken for bfloat16 bits.*ml_dtypes.bfloat16"):
            workbench.attention(*(x.view(kind) for x in (q, k, v)))


def test_gpu_script_conversion_check_runs_and_can_fail():
    """scripts/gpu_bf16.py's conversion check (its CPU-safe part) in the simulator, on a slice: the
    near-ties, the special values and some random floats; then with a wrong rounding put in."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "gpu_bf16.py"
    spec = importlib.util.spec_from_file_location("gpu_bf16", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    bits, xs = script.conversion_inputs(n_random=16)
    bits, xs = bits[::509].copy(), xs[3 * 4096 - 8:]  # 129 patterns; 8 near-ties, 16 specials, 16 random
    c = script.conversion_check(bits, xs)
    assert c["bit_patterns"] == 129 and c["floats"] == 40
    assert script.conversions_ok(c), c
    wrong = dict(c, bf16_bits_mismatches=1)
    assert not script.conversions_ok(wrong)
    assert script._mismatches(np.array([0x3F80, 0x7FC0], np.uint16), np.array([0x3F81, 0x7FFF], np.uint16)) == 1
