"""Inputs that once gave a silent wrong answer or a crash inside Numba: each is now a clear
ValueError/TypeError before any launch, or a result that matches float64."""

import numpy as np
import pytest

import workbench
from workbench import Problem, reference


def _qkv(seed=0, shape=(1, 2, 7, 8), dtype=np.float32):
    rng = np.random.default_rng(seed)
    return tuple(rng.standard_normal(shape).astype(dtype) for _ in range(3))


@pytest.mark.parametrize("scale, error, words", [
    (1e300, ValueError, "not representable in float32"),
    (float("nan"), ValueError, "finite and nonzero"),
    (float("inf"), ValueError, "finite and nonzero"),
    (0.0, ValueError, "finite and nonzero"),
    (1e-50, ValueError, "not representable in float32"),
    (True, TypeError, "real number"),
    ("x", TypeError, "real number"),
])
def test_bad_scale_is_refused(scale, error, words):
    q, k, v = _qkv()
    with pytest.raises(error, match=words):
        workbench.attention(q, k, v, kernel="naive", scale=scale)
    with pytest.raises(error, match=words):
        Problem(seq_q=4, head_dim=8, scale=scale)


def test_numpy_integer_scale_is_taken():
    q, k, v = _qkv()
    o = workbench.attention(q, k, v, kernel="naive", scale=np.int64(1))
    ref, _ = reference.attention(q, k, v, scale=1.0)
    assert np.allclose(o, ref, atol=1e-5)


@pytest.mark.parametrize("factor, scale", [(1.0, 1e38), (1e19, None)])
def test_logits_that_overflow_float32_are_refused(factor, scale):
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="overflow float32"):
        workbench.attention(q * factor, k * factor, v, kernel="online", scale=scale)


def test_large_but_finite_logits_still_run():
    q, k, v = _qkv()
    o = workbench.attention(q * 1e3, k, v, kernel="online")
    ref, _ = reference.attention(q.astype(np.float64) * 1e3, k, v)
    assert np.abs(o - ref).max() < 1e-3


@pytest.mark.parametrize("name, value", [("return_lse", "no"), ("return_lse", 1), ("causal", "yes"),
                                         ("causal", 0)])
def test_flags_must_be_bools(name, value):
    q, k, v = _qkv()
    with pytest.raises(TypeError, match=f"{name} must be True or False"):
        workbench.attention(q, k, v, kernel="naive", **{name: value})


@pytest.mark.parametrize("which", ["q", "k", "v"])
def test_big_endian_is_refused(which):
    arrays = dict(zip("qkv", _qkv()))
    arrays[which] = arrays[which].astype(">f4")
    with pytest.raises(ValueError, match=f"{which} is big-endian"):
        workbench.attention(arrays["q"], arrays["k"], arrays["v"], kernel="naive")


@pytest.mark.parametrize("window", [(2**70, 0), (0, 2**63 - 1), (2**62, 2**62)])
def test_huge_windows_equal_their_unbounded_sides(window):
    """A window side wider than Nq + Nkv sees what -1 (unbounded) sees: exactly, no overflow."""
    q, k, v = _qkv(shape=(1, 1, 9, 8))
    o = workbench.attention(q, k, v, kernel="online", window=window)
    unbounded = tuple(-1 if w > 1000 else w for w in window)
    ref, _ = reference.attention(q, k, v, window=unbounded)
    assert np.abs(o - ref).max() < 1e-5
    assert Problem(seq_q=9, head_dim=8, window=window).mask_bounds() == \
        Problem(seq_q=9, head_dim=8, window=unbounded).mask_bounds()


# --- decode -------------------------------------------------------------------------------------
def _paged(seed=0, lens=(11,), nq=1, D=8, block=4, blocks=6):
    rng = np.random.default_rng(seed)
    b = len(lens)
    q = rng.standard_normal((b, 2, nq, D), dtype=np.float32)
    k = rng.standard_normal((blocks, 1, block, D), dtype=np.float32)
    v = rng.standard_normal((blocks, 1, block, D), dtype=np.float32)
    table = np.stack([rng.permutation(blocks)[:blocks // b] for _ in range(b)]).astype(np.int32)
    return q, k, v, table, np.array(lens, dtype=np.int32)


def test_decode_refuses_nan_in_a_slot_it_reads_but_not_elsewhere():
    q, k, v, table, lens = _paged()
    unused = np.setdiff1d(np.arange(k.shape[0]), table[0, :3])  # lens 11, block 4: 3 blocks read
    k[unused] = np.nan  # never read: fine
    workbench.decode(q, k, v, table, lens)
    k[table[0, 1], 0, 2, 3] = np.nan  # token 6 of sequence 0: read
    with pytest.raises(ValueError, match="k_cache holds NaN or inf in a slot sequence 0 reads"):
        workbench.decode(q, k, v, table, lens)


@pytest.mark.parametrize("scale, error", [("x", TypeError), (float("nan"), ValueError), (1e300, ValueError)])
def test_decode_validates_scale(scale, error):
    q, k, v, table, lens = _paged()
    with pytest.raises(error, match="scale"):
        workbench.decode(q, k, v, table, lens, scale=scale)


def test_decode_refuses_a_length_below_its_new_tokens():
    q, k, v, table, lens = _paged(lens=(2,), nq=3)
    with pytest.raises(ValueError, match="below the 3 new tokens"):
        workbench.decode(q, k, v, table, lens)


def test_decode_refuses_big_endian_tables_and_non_bool_flags():
    q, k, v, table, lens = _paged()
    with pytest.raises((ValueError, TypeError), match="block_table"):
        workbench.decode(q, k, v, table.astype(">i4"), lens)
    with pytest.raises(TypeError, match="return_lse must be True or False"):
        workbench.decode(q, k, v, table, lens, return_lse="no")


# --- backward -----------------------------------------------------------------------------------
@pytest.mark.parametrize("mask", [{"causal": True}, {"window": (2, 1)}])
def test_backward_of_large_logits_with_a_mask_matches_float64(mask):
    """Masked scores are huge here (q × 1e3): the backward masks before exponentiating, so no
    overflow (the simulator raised OverflowError) and the gradients match float64."""
    rng = np.random.default_rng(3)
    q = rng.standard_normal((1, 1, 9, 16)).astype(np.float32) * 1e3
    k, v, do = (rng.standard_normal(s).astype(np.float32) for s in ((1, 1, 9, 16),) * 3)
    o, lse = workbench.attention(q, k, v, kernel="flash2", return_lse=True, **mask)
    dq, dk, dv = workbench.backward(q, k, v, o, lse, do, **mask)
    ref = reference.attention_backward(q.astype(np.float64), k, v, do, **mask)
    for ours, theirs in zip((dq, dk, dv), ref):  # (saturated softmax: dV ~ 1, dQ and dK ~ 0)
        assert np.isfinite(ours).all() and np.abs(ours - theirs).max() < 1e-3 * max(1.0, np.abs(theirs).max())
