"""workbench.attention: the contract's input kinds, and every bad input refused before a launch."""

import numpy as np
import pytest

import workbench
from numba import cuda

from workbench import Problem, reference
from workbench.harness import verify
from workbench.kernels import naive

TINY = naive.SIM_CONFIG
P = Problem(1, 4, 2, 9, 12, 8, causal=True)


def inputs(p=P, seed=0):
    return p.make_inputs(seed)


def test_numpy_in_numpy_out_with_lse():
    q, k, v = inputs()
    o, lse = workbench.attention(q, k, v, kernel="naive", causal=True, config=TINY, return_lse=True)
    ref_o, ref_lse = reference.attention(q, k, v, causal=True)
    assert isinstance(o, np.ndarray) and o.dtype == q.dtype and lse.dtype == np.float32
    report = verify.compare(verify.Report("naive", P, 0), o, lse, ref_o, ref_lse)
    assert report.passed, report.failures


def test_device_arrays_in_device_arrays_out():
    q, k, v = inputs(Problem(1, 2, 2, 7, 7, 8, "float16"))
    dq, dk, dv = (cuda.to_device(x) for x in (q, k, v))
    o = workbench.attention(dq, dk, dv, kernel="naive", config=TINY, scale=0.3)
    assert type(o).__name__ in ("DeviceNDArray", "FakeCUDAArray") and o.shape == q.shape
    ref_o, _ = reference.attention(q, k, v, scale=0.3)
    np.testing.assert_allclose(o.copy_to_host().astype(np.float64), ref_o, atol=2e-3, rtol=4e-3)


def test_unknown_kernel():
    with pytest.raises(ValueError, match="unknown kernel 'nope'.*naive"):
        workbench.attention(*inputs(), kernel="nope")


BAD = {
    "q not 4-D": (lambda q, k, v: (q[0], k, v), {}, ValueError, "q must be 4-D"),
    "batch mismatch": (lambda q, k, v: (np.concatenate([q, q]), k, v), {}, ValueError, "batch"),
    "head_dim mismatch": (lambda q, k, v: (q[..., :4].copy(), k, v), {}, ValueError, "head_dim"),
    "k, v differ": (lambda q, k, v: (q, k, v[:, :, :5].copy()), {}, ValueError, "same shape"),
    "H not multiple": (lambda q, k, v: (q[:, :3].copy(), k, v), {}, ValueError, "multiple"),
    "Nkv = 0": (lambda q, k, v: (q, k[:, :, :0], v[:, :, :0]), {}, ValueError, "Nkv = 0"),
    "float64": (lambda q, k, v: (q.astype(np.float64), k.astype(np.float64), v.astype(np.float64)),
                {}, TypeError, "not supported"),
    "mixed dtypes": (lambda q, k, v: (q.astype(np.float16), k, v), {}, TypeError, "one dtype"),
    "NaN input": (lambda q, k, v: (np.where(q > 2, np.nan, q).astype(q.dtype), k, v), {}, ValueError, "NaN"),
    "inf input": (lambda q, k, v: (q, np.where(k > 2, np.inf, k).astype(k.dtype), v), {}, ValueError, "inf"),
    "window < -1": (lambda q, k, v: (q, k, v), {"window": (-3, 0)}, ValueError, "below -1"),
    "window not a pair": (lambda q, k, v: (q, k, v), {"window": 4}, TypeError, "pair"),
    "unknown config": (lambda q, k, v: (q, k, v), {"config": {"Br": 64}}, ValueError, "unknown config key"),
    "causal not bool": (lambda q, k, v: (q, k, v), {"causal": "yes"}, TypeError, "causal"),
    "list input": (lambda q, k, v: (q.tolist(), k, v), {}, TypeError, "NumPy arrays"),
    "mixed kinds": (lambda q, k, v: (cuda.to_device(q), k, v), {}, TypeError, "same kind"),
    "scale not finite": (lambda q, k, v: (q, k, v), {"scale": float("nan")}, ValueError, "scale"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_input_is_refused_with_a_clear_error(case, monkeypatch):
    transform, kwargs, error, message = BAD[case]
    launched = []
    monkeypatch.setattr(workbench.harness.runner, "run", lambda *a, **k: launched.append(a))
    with pytest.raises(error, match=message):
        workbench.attention(*transform(*inputs()), kernel="naive", **kwargs)
    assert not launched


def test_non_contiguous_device_array_is_refused():
    q, k, v = inputs()
    dq, dk, dv = (cuda.to_device(x)[:, :, ::2, :] for x in (q, k, v))  # every other row: strided
    assert not dq.is_c_contiguous()
    with pytest.raises(ValueError, match="contiguous"):
        workbench.attention(dq, dk, dv, kernel="naive")


def test_noncontiguous_numpy_is_accepted_as_a_copy():
    q, k, v = inputs()
    qt = np.asfortranarray(q)
    o = workbench.attention(qt, k, v, kernel="naive", causal=True, config=TINY)
    np.testing.assert_allclose(o, reference.attention(q, k, v, causal=True)[0], atol=1e-5, rtol=1e-4)
