"""Memory traffic counted in the simulator (workbench.traffic): exact byte counts for the naive and
online rungs against formulas derived here from each kernel's algorithm, at small odd sizes."""

import json

import numpy as np
import pytest

import workbench
from workbench import Problem

pytestmark = pytest.mark.skipif(workbench.mode() != "simulator", reason="simulator only")

from numba import cuda, float32  # noqa: E402


@cuda.jit
def _reverse_via_shared(x, out):
    buf = cuda.shared.array(16, float32)
    t = cuda.threadIdx.x
    buf[t] = x[t]
    cuda.syncthreads()
    out[t] = buf[15 - t] * float32(2)
    if t == 0:
        out[16:18] = buf[0:2]  # 2 global writes; the view buf[0:2] is copied by NumPy, not indexed


def test_counting_a_hand_written_kernel():
    from numba.cuda.simulator import kernel as simkernel

    from workbench.sim.traffic import counting

    original = simkernel.FakeCUDAKernel.__call__
    x = cuda.to_device(np.arange(16, dtype=np.float32))
    out = cuda.device_array(18, np.float32)
    with counting() as rec:
        _reverse_via_shared[1, 16](x, out)
    assert simkernel.FakeCUDAKernel.__call__ is original  # counting is off again
    (launch,) = rec.launches
    assert launch["kernel"] == "_reverse_via_shared" and launch["block"] == [16, 1, 1]
    assert (launch["global"]["x"]["read"], launch["global"]["x"]["written"]) == (64, 0)
    assert (launch["global"]["out"]["read"], launch["global"]["out"]["written"]) == (0, 16 * 4 + 2 * 4)
    # buf: 16 element writes, 16 element reads; the slice buf[0:2] is a view (copied by numpy)
    assert launch["shared"]["buf"]["written"] == 64 and launch["shared"]["buf"]["read"] == 64
    np.testing.assert_array_equal(out.copy_to_host()[:16], np.arange(16)[::-1] * 2)


def _per_launch(t):
    return {(launch["kernel"], name): (a["read"], a["written"])
            for launch in t.launches for name, a in launch["global"].items()}


@pytest.mark.parametrize("causal, dtype", [(False, "float32"), (True, "float32"), (False, "float16")])
def test_naive_traffic_is_exactly_its_formula(causal, dtype):
    B, H, Hkv, Nq, Nkv, D = 1, 2, 1, 11, 13, 5
    p = Problem(B, H, Hkv, Nq, Nkv, D, dtype, causal)
    e = np.dtype(dtype).itemsize  # Q, K, V, O; S and LSE are float32
    # scores: one thread per (i, j); a visible pair reads a Q row and a K row (D each) and writes
    # S[i, j]; a masked pair only writes -inf. Bottom-right causal: i sees j <= i + Nkv - Nq.
    visible = sum(min(Nkv, i + Nkv - Nq + 1) for i in range(Nq)) if causal else Nq * Nkv
    pairs = B * H * Nq * Nkv
    # softmax: per row, three passes read S (max, sum, normalise), one writes P over S, + LSE
    # pv: one thread per (i, d) reads a P row and a V column (Nkv each), writes O[i, d]
    want = {
        ("scores", "q"): (B * H * visible * D * e, 0),
        ("scores", "k"): (B * H * visible * D * e, 0),
        ("scores", "s"): (0, pairs * 4),
        ("softmax", "s"): (3 * pairs * 4, pairs * 4),
        ("softmax", "lse"): (0, B * H * Nq * 4),
        ("pv", "p"): (B * H * Nq * D * Nkv * 4, 0),
        ("pv", "v"): (B * H * Nq * D * Nkv * e, 0),
        ("pv", "o"): (0, B * H * Nq * D * e),
    }
    t = workbench.traffic("naive", p)
    assert _per_launch(t) == want
    assert t.by_array()["s"] == (3 * pairs * 4 + B * H * Nq * D * Nkv * 4, 2 * pairs * 4)  # S and P
    assert (t.shared_read, t.shared_written) == (0, 0)


@pytest.mark.parametrize("config", [None, {"Br": 4, "Bc": 8}])
def test_online_traffic_is_exactly_its_formula(config):
    B, H, Hkv, Nq, Nkv, D = 1, 2, 1, 11, 13, 8
    p = Problem(B, H, Hkv, Nq, Nkv, D)
    t = workbench.traffic("online", p, config)
    Br, Bc = t.config["Br"], t.config["Bc"]
    Tr, Tc = -(-Nq // Br), -(-Nkv // Bc)
    e, blocks = 4, B * H * Tr
    # device memory: each Q row once; every block streams all of K and V (so Tr times per head);
    # O and LSE written once per row
    assert t.by_array() == {
        "Q": (B * H * Nq * D * e, 0),
        "K": (blocks * Nkv * D * e, 0),
        "V": (blocks * Nkv * D * e, 0),
        "O": (0, B * H * Nq * D * e),
        "LSE": (0, B * H * Nq * 4),
    }
    # shared memory (float32), per block: Q_i^T written once (Br x D, rows past Nq as zeros); per
    # KV tile: K_j, V_j written (Bc x D, zero-filled past Nkv), P_ij^T written and read (Br x Bc),
    # each thread reads its Q column (D), all of K_j (Bc x D) and all of V_j (Bc x D). Every tile
    # has a visible key for every row here (no mask), so no thread skips the update.
    assert t.shared_written == blocks * (Br * D + Tc * (2 * Bc * D + Br * Bc)) * 4
    assert t.shared_read == blocks * Tc * (Br * D + 2 * Br * Bc * D + Br * Bc) * 4
    shared = t.launches[0]["shared"]
    assert set(shared) == {"q_t", "k_j", "v_j", "p_t"}
    assert shared["k_j"]["written"] == blocks * Tc * Bc * D * 4


def test_flash1_reads_k_and_v_once_and_q_once_per_kv_block():
    """FA1's loop order, counted: K and V once per head, Q once per KV block (Tc times)."""
    B, H, Nq, Nkv, D = 1, 1, 9, 11, 16
    t = workbench.traffic("flash1", Problem(B, H, H, Nq, Nkv, D))
    Tc = -(-Nkv // t.config["Bc"])
    arrays = t.by_array()
    assert arrays["K"] == arrays["V"] == (B * H * Nkv * D * 4, 0)
    assert arrays["Q"] == (Tc * B * H * Nq * D * 4, 0)
    assert arrays["O"] == ((Tc - 1) * B * H * Nq * D * 4, Tc * B * H * Nq * D * 4)  # O in place


def test_traffic_refuses_bad_input_before_running():
    with pytest.raises(ValueError, match="unknown kernel"):
        workbench.traffic("nope", Problem(seq_q=8, head_dim=8))
    with pytest.raises(ValueError, match="head_dim"):
        workbench.traffic("online", Problem(seq_q=8, head_dim=12))


def test_cli_writes_json_csv_and_png(tmp_path):
    from workbench.bench.traffic_figure import main

    assert main(["--out", str(tmp_path), "--seq", "8", "12", "--dim", "16",
                 "--kernels", "naive,online"]) == 0
    data = json.loads((tmp_path / "traffic.json").read_text())
    assert data["provenance"]["device"].startswith("Numba CUDA simulator")
    assert [(p["rung"], p["problem"]["seq_q"]) for p in data["points"]] == [
        ("naive", 8), ("naive", 12), ("online", 8), ("online", 12)]
    naive8 = data["points"][0]
    assert naive8["global_read"] == workbench.traffic("naive", Problem(seq_q=8, head_dim=16)).global_read
    assert len((tmp_path / "traffic.csv").read_text().splitlines()) == 5
    assert (tmp_path / "traffic.png").stat().st_size > 10_000
