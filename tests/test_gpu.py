"""What only a real GPU shows: CUDA arrays from torch and CuPy, the peers, timing and memory.
Skipped in simulator mode."""

import numpy as np
import pytest

import workbench
from workbench import Problem, reference
from workbench.harness import memory, peers, runner, timing, verify

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(workbench.mode() != "gpu", reason="needs a CUDA GPU")]

P = Problem(2, 8, 2, 200, 333, 64, "float16", causal=True)


def test_torch_and_cupy_arrays_in_same_kind_out():
    torch = pytest.importorskip("torch")
    cupy = pytest.importorskip("cupy")
    q, k, v = P.make_inputs(1)
    ref, _ = reference.attention(q, k, v, causal=True)
    for lib in (torch, cupy):
        args = [torch.as_tensor(x, device="cuda") if lib is torch else cupy.asarray(x) for x in (q, k, v)]
        o = workbench.attention(*args, kernel="flash2", causal=True)
        assert type(o) is type(args[0])
        host = o.cpu().numpy() if lib is torch else cupy.asnumpy(o)
        report = verify.compare(verify.Report("flash2", P, 1), host, None, ref, None)
        assert report.passed, report.failures


@pytest.mark.parametrize("name", peers.NAMES)
def test_peers_are_verified_or_not_applicable(name):
    pytest.importorskip("torch")
    pytest.importorskip("cupy")
    from numba import cuda

    p = Problem(1, 4, 4, 256, 256, 64, "float16", causal=True)
    q, k, v = p.make_inputs(2)
    ref, _ = reference.attention(q, k, v, causal=True)
    try:
        fn = peers.build(name, p, *(cuda.to_device(x) for x in (q, k, v)))
    except peers.NotApplicable:
        pytest.skip(f"{name} cannot run this problem here")
    report = verify.compare(verify.Report(name, p, 2), peers.to_numpy(fn()), None, ref, None)
    assert report.passed, report.failures


def test_timing_and_memory_of_a_real_call():
    from numba import cuda

    rung = workbench.kernels.get("naive")
    p = Problem(1, 4, 4, 512, 512, 64)
    cfg = runner.check_config(rung, p)
    arrays = [cuda.to_device(x) for x in p.make_inputs(3)]
    o = cuda.device_array(p.q_shape, np.float32)
    lse = cuda.device_array(p.lse_shape, np.float32)
    first = runner.run(rung, p, cfg, *arrays, o, lse)
    cuda.synchronize()
    mem = memory.account(rung, p, cfg, first)
    assert mem.counted_bytes == mem.model_bytes
    assert mem.driver_bytes >= mem.model_bytes - 2 * 2**20  # the driver counts in 2 MiB pages
    t = timing.time_call(lambda: runner.run(rung, p, cfg, *arrays, o, lse), repeat=5)
    assert len(t.samples_ms) == 5 and 0 < t.p20_ms <= t.median_ms <= t.p80_ms
