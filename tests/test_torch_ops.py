"""workbench's kernels as PyTorch operators (workbench/api/torch_ops.py). Without torch these tests
skip; the fake (meta) implementations run on any machine with torch; the rest needs a CUDA GPU."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import workbench  # noqa: E402,F401  (selects the simulator or the GPU before Numba loads)
from workbench.api import torch_ops  # noqa: E402

gpu = pytest.mark.skipif(not torch.cuda.is_available() or workbench.mode() != "gpu",
                         reason="needs a CUDA GPU (and NUMBA_ENABLE_CUDASIM unset)")


def test_fake_implementations_give_shapes_without_running():
    q = torch.empty(2, 8, 33, 64, device="meta", dtype=torch.float16)
    k = torch.empty(2, 2, 40, 64, device="meta", dtype=torch.float16)
    o, lse = torch.ops.workbench.attention(q, k, k, True, -1, -1, None)
    assert o.shape == q.shape and o.dtype == q.dtype and o.device.type == "meta"
    assert lse.shape == (2, 8, 33) and lse.dtype == torch.float32
    dq, dk, dv = torch.ops.workbench.attention_backward(o, q, k, k, o, lse, True, -1, -1, None)
    assert dq.shape == q.shape and dk.shape == k.shape and dv.shape == k.shape
    cache = torch.empty(9, 2, 16, 64, device="meta", dtype=torch.float16)
    table = torch.empty(2, 4, device="meta", dtype=torch.int32)
    lens = torch.empty(2, device="meta", dtype=torch.int32)
    o, lse = torch.ops.workbench.decode(q[:, :, :1], cache, cache, table, lens, True, -1, -1, None)
    assert o.shape == (2, 8, 1, 64) and o.dtype == q.dtype and lse.shape == (2, 8, 1)


def test_sdpa_refuses_what_it_does_not_do():
    q = torch.empty(1, 4, 8, 16, device="meta")
    k = torch.empty(1, 2, 8, 16, device="meta")
    with pytest.raises(ValueError, match="attn_mask"):
        torch_ops.scaled_dot_product_attention(q, q, q, attn_mask=torch.empty(8, 8, device="meta"))
    with pytest.raises(ValueError, match="dropout"):
        torch_ops.scaled_dot_product_attention(q, q, q, dropout_p=0.1)
    with pytest.raises(ValueError, match="enable_gqa"):
        torch_ops.scaled_dot_product_attention(q, k, k)


def _inputs(dtype=torch.float16, b=2, h=8, hkv=2, n=197, d=64, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(b, h, n, d, device="cuda", dtype=dtype, generator=g)
    k = torch.randn(b, hkv, n, d, device="cuda", dtype=dtype, generator=g)
    v = torch.randn(b, hkv, n, d, device="cuda", dtype=dtype, generator=g)
    return q, k, v


@gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_opcheck(dtype):
    q, k, v = _inputs(dtype)
    for x in (q, k, v):
        x.requires_grad_()  # opcheck then also checks the registered autograd
    torch.library.opcheck(torch.ops.workbench.attention.default, (q, k, v, True, -1, -1, None))


def _paged(dtype=torch.float16, b=3, h=8, hkv=2, d=64, block=16, seed=1):
    """A paged cache with shuffled physical blocks, and the contiguous K, V it holds."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    lens = torch.tensor([37, 1, 64][:b], dtype=torch.int32, device="cuda")
    per_seq = -(-64 // block)
    perm = torch.randperm(b * per_seq, generator=torch.Generator().manual_seed(seed)).to("cuda")
    table = perm.reshape(b, per_seq).to(torch.int32)
    k_cache = torch.randn(b * per_seq, hkv, block, d, device="cuda", dtype=dtype, generator=g)
    v_cache = torch.randn(b * per_seq, hkv, block, d, device="cuda", dtype=dtype, generator=g)
    q = torch.randn(b, h, 1, d, device="cuda", dtype=dtype, generator=g)
    return q, k_cache, v_cache, table, lens


@gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_decode_opcheck_and_float64(dtype):
    q, kc, vc, table, lens = _paged(dtype)
    torch.library.opcheck(torch.ops.workbench.decode.default, (q, kc, vc, table, lens, True, -1, -1, None))
    o, _ = torch.ops.workbench.decode(q, kc, vc, table, lens, True, -1, -1, None)
    for b in range(q.shape[0]):  # each sequence against float64 on its gathered cache
        n = int(lens[b])
        blocks = table[b].long()
        k = kc[blocks].permute(1, 0, 2, 3).reshape(kc.shape[1], -1, kc.shape[3])[:, :n]
        v = vc[blocks].permute(1, 0, 2, 3).reshape(vc.shape[1], -1, vc.shape[3])[:, :n]
        ref, _ = workbench.reference.attention(*(x.double().cpu().numpy()[None] for x in (q[b], k, v)),
                                               causal=True)
        assert np.abs(o[b].double().cpu().numpy() - ref[0]).max() < 2e-2


@gpu
def test_matches_float64_through_sdpa_signature():
    q, k, v = _inputs()
    o = torch_ops.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    ref, _ = workbench.reference.attention(*(x.double().cpu().numpy() for x in (q, k, v)), causal=True)
    assert np.abs(o.double().cpu().numpy() - ref).max() < 2e-2


@gpu
def test_launches_on_the_callers_stream():
    """The inputs are produced on a side stream; a launch on another stream would read them before
    they are written (the producer is made slow on purpose)."""
    q, k, v = _inputs(n=1024)
    side = torch.cuda.Stream()
    big = torch.randn(8192, 8192, device="cuda")
    expected = torch_ops.scaled_dot_product_attention(q * 2, k, v, enable_gqa=True)
    torch.cuda.synchronize()
    with torch.cuda.stream(side):
        for _ in range(4):
            big = big @ big / 8192  # keeps the side stream busy
        q2 = q * 2
        out = torch_ops.scaled_dot_product_attention(q2, k, v, enable_gqa=True)
    torch.cuda.synchronize()
    assert torch.equal(out, expected)


@gpu
def test_cuda_graph_replays_bitwise():
    q, k, v = _inputs()
    static = [x.clone() for x in (q, k, v)]
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):  # warm-up outside the capture (compiles, plans)
        torch_ops.scaled_dot_product_attention(*static, enable_gqa=True)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = torch_ops.scaled_dot_product_attention(*static, enable_gqa=True)
    eager = torch_ops.scaled_dot_product_attention(*static, enable_gqa=True)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, eager)


@gpu
def test_gradients_match_sdpa():
    q, k, v = (x.requires_grad_() for x in _inputs(n=129))
    o = torch_ops.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    o.float().square().sum().backward()
    grads = [x.grad.clone() for x in (q, k, v)]
    for x in (q, k, v):
        x.grad = None
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    ref.float().square().sum().backward()
    for ours, theirs in zip(grads, (q.grad, k.grad, v.grad)):
        rel = (ours.float() - theirs.float()).norm() / theirs.float().norm()
        assert rel < 5e-3, rel


def test_integration_models_train_alike_on_the_cpu(tmp_path):
    """bench/torch_integration's model and loop (the GPU run compares workbench's attention with
    SDPA's under torch.compile): on the CPU with SDPA twice, the same seed gives the same curve
    near ln(vocab), another attention of the same maths a curve within rounding, and the figure draws."""
    import torch.nn.functional as F

    from workbench.bench import torch_integration as ti

    small = dict(seq=32, batch=4, d_model=64, heads=2, vocab=64)
    a = ti.train(F.scaled_dot_product_attention, steps=6, device="cpu", compile=False, autocast=False, **small)
    b = ti.train(F.scaled_dot_product_attention, steps=6, device="cpu", compile=False, autocast=False, **small)
    assert a == b and all(abs(x - np.log(64)) < 1.0 for x in a)  # random tokens: about ln(vocab)

    def naive(q, k, v, is_causal):  # a different attention: a different (still finite) curve
        s = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
        s = s.masked_fill(torch.ones_like(s, dtype=torch.bool).triu(1), float("-inf"))
        return s.softmax(-1) @ v

    c = ti.train(naive, steps=6, device="cpu", compile=False, autocast=False, **small)
    assert max(abs(x - y) / y for x, y in zip(a, c)) < 1e-3  # the same maths, other rounding
    data = {"provenance": {"device": "cpu"}, "compile": {"losses": {"x": a, "y": c}},
            "overhead": [{"shape": "tiny", "workbench": {"host_us": 2.0}, "sdpa": {"host_us": 1.0}}]}
    ti.plot(data, tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 1000
