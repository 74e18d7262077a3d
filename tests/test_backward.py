"""The backward pass: the float64 reference against finite differences, then the flash2_bwd rung
(simulator, tiny tiles) against the reference over odd shapes, masks, GQA and dtypes."""

import numpy as np
import pytest

import workbench  # noqa: F401  (selects the simulator before anything imports Numba)
from workbench import Problem, reference
from workbench.api import training
from workbench.harness import verify

# --------------------------------------------------------------------------------------------------
# The reference against central differences of L = Σ O ∘ G (so ∂L/∂O = G = dO)
# --------------------------------------------------------------------------------------------------
FD_CASES = [
    Problem(1, 2, 2, 5, 5, 3),
    Problem(1, 4, 2, 4, 6, 3, causal=True),  # GQA: dK, dV summed over the group
    Problem(2, 2, 1, 6, 3, 2, causal=True),  # Nq > Nkv: the first rows see no key
    Problem(1, 2, 1, 5, 7, 3, window=(1, 2), scale=0.8),
]


def _loss(p, q, k, v, g):
    o, _ = reference.attention(q, k, v, causal=p.causal, window=p.window, scale=p.scale)
    return float((o * g).sum())


@pytest.mark.parametrize("p", FD_CASES, ids=lambda p: p.describe())
def test_reference_gradients_match_finite_differences(p):
    rng = np.random.default_rng(5)
    q, k, v = (x.astype(np.float64) for x in p.make_inputs(seed=3))
    g = rng.standard_normal(p.q_shape)
    dq, dk, dv = reference.attention_backward(q, k, v, g, causal=p.causal, window=p.window, scale=p.scale)
    eps = 1e-6
    for x, grad in ((q, dq), (k, dk), (v, dv)):
        fd = np.zeros_like(x)
        for idx in np.ndindex(x.shape):
            keep = x[idx]
            x[idx] = keep + eps
            up = _loss(p, q, k, v, g)
            x[idx] = keep - eps
            down = _loss(p, q, k, v, g)
            x[idx] = keep
            fd[idx] = (up - down) / (2 * eps)
        np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)
        assert np.abs(grad).max() > 1e-3  # not vacuously zero


def test_rows_that_see_nothing_get_zero_gradient():
    p = Problem(1, 1, 1, 5, 2, 4, causal=True)  # rows 0..2 see no key
    q, k, v = p.make_inputs(seed=1)
    g = np.ones(p.q_shape)
    dq, _, _ = reference.attention_backward(q, k, v, g, causal=True)
    assert not dq[0, 0, :3].any() and dq[0, 0, 3:].any()


# --------------------------------------------------------------------------------------------------
# The rung against the reference (simulator: tiny problems, SIM_CONFIG tiles)
# --------------------------------------------------------------------------------------------------
RUNG_CASES = [
    Problem(1, 2, 2, 13, 13, 16, "float32"),
    Problem(1, 2, 1, 11, 19, 16, "float32", causal=True),  # GQA, Nq < Nkv
    Problem(1, 2, 1, 19, 9, 16, "float16", causal=True),  # MQA, rows that see nothing
    Problem(1, 1, 1, 17, 17, 32, "float16", window=(3, 1)),
    Problem(2, 2, 1, 7, 7, 16, "float32", window=(2, -1)),
]


@pytest.mark.parametrize("p", RUNG_CASES, ids=lambda p: p.describe().replace(" ", "_"))
def test_backward_rung_matches_float64(p):
    report = training.check_backward(p, seed=RUNG_CASES.index(p) + 40)
    assert report.passed, str(report)


def test_gradient_check_can_fail():
    """The judge catches a gradient off by a little in a few elements, and an unwritten one."""
    p = Problem(1, 2, 1, 9, 9, 16, "float32", causal=True)
    q, k, v, do = verify.make_grad_inputs(p, seed=3)
    pairs = verify.sample_kv_heads(p, None, 3)
    ref = verify.sampled_gradients(p, q, k, v, do, pairs)
    ok = verify.compare_gradients(verify.Report("ref", p, 3, kind="backward"), ref, ref)
    assert ok.passed
    bad = {n: x.copy() for n, x in ref.items()}
    bad["dk"][0, 0, 4, :3] *= 1.01
    report = verify.compare_gradients(verify.Report("bad", p, 3, kind="backward"), bad, ref)
    assert not report.passed and all(f.startswith("dk") for f in report.failures), str(report)
    bad["dq"][0, 1, 2, 0] = np.nan
    report = verify.compare_gradients(verify.Report("nan", p, 3, kind="backward"), bad, ref)
    assert any(f.startswith("dq") for f in report.failures)


def test_check_backward_is_the_one_verifier():
    """check_backward is verify.check of the backward rung: same inputs, same report."""
    p = RUNG_CASES[0]
    a = training.check_backward(p, seed=5)
    b = verify.check("flash2_bwd", p, seed=5)
    assert a.kind == b.kind == "backward" and a.passed and b.passed
    assert a.errors == b.errors and set(a.errors) == {"dq", "dk", "dv"}
    d = a.as_dict()
    assert d["deterministic"] and d["bitwise_required"] and d["tolerance"] == vars(verify.GRAD_TOLERANCE["float32"])
    assert a.rel_fro == max(e["rel_fro"] for e in a.errors.values()) and "rel_fro" not in d


def test_backward_validation():
    p = Problem(1, 2, 1, 8, 8, 16)
    q, k, v = p.make_inputs(0)
    o, lse = workbench.attention(q, k, v, return_lse=True)
    do = np.ones_like(q)
    with pytest.raises(ValueError, match="do"):
        training.backward(q, k, v, o, lse, do[:, :, :4])
    with pytest.raises(ValueError, match="lse"):
        training.backward(q, k, v, o, lse[:, :, :4], do)
    with pytest.raises(TypeError, match="dtype"):
        training.backward(q, k, v, o, lse, do.astype(np.float16))
    with pytest.raises(ValueError, match="head_dim"):
        training.backward(*(np.ones((1, 2, 8, 12), np.float32) for _ in range(4)),
                          np.zeros((1, 2, 8), np.float32), np.ones((1, 2, 8, 12), np.float32))
    with pytest.raises(ValueError, match="unknown config"):
        training.backward(q, k, v, o, lse, do, config={"Bx": 4})


def test_backward_function_matches_float64():
    """The public function (validation, then the runner) on NumPy arrays, GQA and causal."""
    p = Problem(1, 2, 1, 10, 12, 16, "float32", causal=True)
    q, k, v, do = verify.make_grad_inputs(p, seed=21)
    o, lse = workbench.attention(q, k, v, causal=True, return_lse=True)
    got = training.backward(q, k, v, o, lse, do, causal=True)
    ref = reference.attention_backward(q, k, v, do, causal=True)
    for g, r in zip(got, ref):
        assert g.shape == r.shape and g.dtype == np.float32
        np.testing.assert_allclose(g, r, rtol=1e-3, atol=1e-4 * np.sqrt(np.mean(r ** 2)))


@pytest.mark.gpu
@pytest.mark.skipif(workbench.mode() != "gpu", reason="needs a CUDA GPU (and torch)")
def test_autograd_function_matches_sdpa_gradients():
    torch = pytest.importorskip("torch")
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    p = Problem(2, 4, 2, 70, 70, 32, "float32", causal=True)
    q, k, v, do = verify.make_grad_inputs(p, seed=9)
    grads = []
    for fn in (lambda a, b, c: training.flash_attention(a, b, c, causal=True),
               lambda a, b, c: sdpa(a, b, c, is_causal=True, enable_gqa=True)):
        t = [torch.tensor(x, device="cuda", requires_grad=True) for x in (q, k, v)]
        fn(*t).backward(torch.tensor(do, device="cuda"))
        grads.append([x.grad.cpu().numpy() for x in t])
    for ours, theirs in zip(*grads):
        np.testing.assert_allclose(ours, theirs, rtol=1e-3, atol=1e-4)
