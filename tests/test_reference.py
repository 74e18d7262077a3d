"""The float64 reference against a plain-Python loop, and the online recurrence against both."""

import math

import numpy as np
import pytest

import workbench  # noqa: F401  (selects the simulator before anything imports Numba)
from workbench import Problem, reference


def loop_attention(q, k, v, causal, window, scale):
    """Attention one score at a time, straight from the definition (independent of Problem)."""
    b_, h_, nq, d = q.shape
    hkv, nkv = k.shape[1], k.shape[2]
    left, right = window if window else (-1, -1)
    if causal:
        right = 0
    o = np.zeros(q.shape)
    lse = np.full((b_, h_, nq), -math.inf)
    for b in range(b_):
        for h in range(h_):
            hk = h // (h_ // hkv)
            for i in range(nq):
                diag = i + nkv - nq
                keys = [j for j in range(nkv)
                        if (left < 0 or j >= diag - left) and (right < 0 or j <= diag + right)]
                if not keys:
                    continue
                s = {j: scale * sum(float(q[b, h, i, t]) * float(k[b, hk, j, t]) for t in range(d))
                     for j in keys}
                m = max(s.values())
                z = sum(math.exp(x - m) for x in s.values())
                lse[b, h, i] = m + math.log(z)
                for t in range(d):
                    o[b, h, i, t] = sum(math.exp(s[j] - m) / z * float(v[b, hk, j, t]) for j in keys)
    return o, lse


CASES = [
    Problem(1, 2, 2, 5, 5, 4),
    Problem(1, 4, 2, 3, 7, 4, causal=True),
    Problem(2, 2, 1, 7, 3, 4, causal=True),  # Nq > Nkv: the first rows see nothing
    Problem(1, 2, 2, 6, 6, 4, window=(1, 2)),
    Problem(1, 2, 1, 6, 9, 3, causal=True, window=(2, -1), scale=0.7),
    Problem(1, 1, 1, 4, 4, 2, "float16", window=(0, 0)),
]


@pytest.mark.parametrize("p", CASES, ids=lambda p: p.describe())
def test_reference_matches_plain_loop(p):
    q, k, v = p.make_inputs(seed=11)
    o, lse = reference.attention(q, k, v, causal=p.causal, window=p.window, scale=p.scale)
    o2, lse2 = loop_attention(q, k, v, p.causal, p.window, p.scale)
    np.testing.assert_allclose(o, o2, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(np.isinf(lse), np.isinf(lse2))
    np.testing.assert_allclose(lse[np.isfinite(lse)], lse2[np.isfinite(lse2)], rtol=1e-12)


@pytest.mark.parametrize("p", CASES, ids=lambda p: p.describe())
@pytest.mark.parametrize("block_kv", [1, 2, 4, 64])
def test_online_recurrence_matches_reference(p, block_kv):
    q, k, v = p.make_inputs(seed=5)
    o, lse = reference.attention(q, k, v, causal=p.causal, window=p.window, scale=p.scale)
    o2, lse2 = reference.online_attention(q, k, v, block_kv=block_kv, causal=p.causal,
                                          window=p.window, scale=p.scale)
    np.testing.assert_allclose(o2, o, rtol=1e-12, atol=1e-13)
    np.testing.assert_array_equal(np.isneginf(lse2), np.isneginf(lse))
    np.testing.assert_allclose(lse2[np.isfinite(lse)], lse[np.isfinite(lse)], rtol=1e-12)


def test_rows_that_see_nothing_are_zero_with_lse_minus_inf():
    p = Problem(1, 1, 1, 8, 4, 4, causal=True)  # shift = -4: rows 0..3 see no key
    q, k, v = p.make_inputs(seed=1)
    o, lse = reference.attention(q, k, v, causal=True)
    assert np.all(o[0, 0, :4] == 0) and np.all(np.isneginf(lse[0, 0, :4]))
    assert np.all(np.isfinite(lse[0, 0, 4:]))


def test_flops_count_visible_pairs():
    full = Problem(2, 4, 4, 128, 128, 64)
    causal = Problem(2, 4, 4, 128, 128, 64, causal=True)
    assert full.flops() == 4 * 2 * 4 * 128 * 128 * 64
    assert causal.flops() == 4 * 2 * 4 * 64 * (128 * 129 // 2)
    window = Problem(1, 1, 1, 10, 10, 8, window=(2, 0))  # rows see 1, 2, then 3 keys
    assert window.visible_pairs() == 1 + 2 + 3 * 8
    assert Problem(1, 1, 1, 4, 4, 8, "float16").min_bytes() == 4 * 4 * 8 * 2 + 4 * 4


def test_make_inputs_are_fresh_random_per_seed():
    p = Problem(1, 2, 1, 9, 11, 8, "float16")
    a, b = p.make_inputs(1), p.make_inputs(2)
    assert a[0].dtype == np.float16 and a[1].shape == (1, 1, 11, 8)
    assert not np.array_equal(a[0], b[0]) and np.all(a[0] != 0).mean() > 0.99
    np.testing.assert_array_equal(a[2], p.make_inputs(1)[2])


@pytest.mark.parametrize("kwargs, error", [
    (dict(heads=4, kv_heads=3), ValueError),
    (dict(seq_q=0), ValueError),
    (dict(dtype="float64"), TypeError),
    (dict(window=(-2, 0)), ValueError),
    (dict(window=(1,)), TypeError),
    (dict(head_dim=2.5), TypeError),
])
def test_problem_rejects_bad_fields(kwargs, error):
    with pytest.raises(error):
        Problem(**kwargs)


def test_reference_in_row_chunks_matches_whole(monkeypatch):
    p = Problem(1, 2, 1, 300, 200, 8, causal=True, window=(50, -1))
    q, k, v = p.make_inputs(1)
    whole = reference.attention(q, k, v, causal=True, window=(50, -1))
    monkeypatch.setattr(reference, "ROW_CHUNK_ELEMENTS", 1000)  # 5 rows per chunk
    chunked = reference.attention(q, k, v, causal=True, window=(50, -1))
    np.testing.assert_allclose(chunked[0], whole[0], rtol=1e-13, atol=1e-15)
    # BLAS may sum a 5-row block in another order than a 300-row one: equal to rounding, -inf alike
    np.testing.assert_allclose(chunked[1], whole[1], rtol=1e-13, atol=1e-15)


def test_reference_of_sampled_rows_equals_those_rows_of_the_whole():
    p = Problem(2, 2, 1, 301, 203, 8, causal=True, window=(40, 3))
    q, k, v = p.make_inputs(4)
    whole_o, whole_lse = reference.attention(q, k, v, causal=True, window=(40, 3))
    rows = np.array([0, 5, 97, 98, 150, 299, 300])  # includes rows that see no key (Nq > Nkv)
    o, lse = reference.attention(q, k, v, causal=True, window=(40, 3), rows=rows)
    assert o.shape == (2, 2, 7, 8) and lse.shape == (2, 2, 7)
    np.testing.assert_allclose(o, whole_o[:, :, rows], rtol=1e-13, atol=1e-15)
    np.testing.assert_array_equal(lse, whole_lse[:, :, rows])


def test_make_inputs_do_not_depend_on_how_many_threads_draw_them(monkeypatch):
    import os

    p = Problem(2, 3, 1, 17, 19, 8, "float16")
    many = p.make_inputs(7)
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    one = p.make_inputs(7)
    for a, b in zip(many, one):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(many[0][0, 0], many[0][0, 1])  # each head has its own stream
    assert not np.array_equal(many[1][0, 0], many[1][1, 0])
