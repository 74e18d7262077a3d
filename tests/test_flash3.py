"""flash3 (rung 7, Hopper: wgmma, TMA, mbarriers, warp specialization) on this machine and on a GPU.

With no GPU (the default tier):
- the simulator refuses it, with the reason, before any input is made (check_config; compare's
  verify suite reports the same line);
- it compiles for sm_90a (a subprocess with the simulator off, as test_compile.py): the linker's
  report (registers, spills: none), no "wgmma serialized" warning, and the SASS (nvdisasm) holds
  the Hopper instructions: HGMMA (wgmma), UTMALDG (TMA loads), SYNCS (mbarrier), USETMAXREG
  (setmaxnreg) and the named barriers of the ping-pong, at D = 64 and 128 in float16; bfloat16 and
  the simpler schedules (ONE_ROLE, IN_ORDER) in the slow tier.
On a GPU (marked gpu): every schedule against float64 over odd N, Nq ≠ Nkv, GQA/MQA, causal,
window, N = 1, D 64/128, float16 and bfloat16.

FP8 (e4m3): the API's checks before any launch and the verifier's FP8 rule (float64 on the
dequantised inputs) run here, the rule fed a NumPy model of the kernel's rounding and perturbations
just inside and just outside its bounds; the sm_90a compile (QGMMA, no spills) is in the slow tier;
the FP8 verify cases are marked gpu.
"""

import json
import os
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

import workbench
from workbench import dtypes, reference
from workbench import Problem
from workbench.harness import runner
from workbench.kernels import flash3, get

SCRIPT = r"""
import json, os, re, sys
os.environ["NUMBA_ENABLE_CUDASIM"] = "0"
from numba import cuda
from cuda.core import Linker, LinkerOptions, ObjectCode
from workbench.problem import Problem
from workbench.harness import runner
from workbench.kernels import get

rung = get("flash3")
cc = rung.module.CC
arch = "sm_%d%d%s" % cc
out = []
for spec in json.loads(sys.argv[2]):
    p = Problem(2, 32, 8, 1000, 1000, spec["D"], spec["dtype"], causal=True)
    cfg = runner.check_config(rung, p, spec["config"])
    (launch,) = runner.plan(rung, p, cfg)
    kernel = launch.kernel
    opts = {k: v for k, v in (kernel.targetoptions or {}).items() if k in ("fastmath", "launch_bounds")}
    objs, _ = cuda.compile_all(kernel.py_func, launch.argtypes, device=False, abi="numba",
                               output="ltoir", cc=cc, **opts)
    linker = Linker(*[o if isinstance(o, ObjectCode) else ObjectCode.from_ltoir(o) for o in objs],
                    options=LinkerOptions(arch=arch, link_time_optimization=True, verbose=True))
    cubin = linker.link("cubin")
    log = linker.get_info_log()
    m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads"
                  r"[\s\S]*?Used (\d+) registers", log)
    row = {**spec, "threads": launch.threads, "shared": launch.shared, "log": log,
           "registers": int(m[4]), "stack_bytes": int(m[1]), "spill_bytes": int(m[2]) + int(m[3])}
    from workbench.bench.resources import nvdisasm_path
    if nvdisasm_path() is not None:
        from numba.cuda.codegen import run_nvdisasm
        sass = run_nvdisasm(cubin, ["-c"])
        row["sass"] = {op: len(re.findall(r"\b" + re.escape(op), sass)) for op in
                       ("HGMMA", "QGMMA", "UTMALDG", "SYNCS", "USETMAXREG", "BAR.SYNC", "BAR.ARV", "LDL",
                        "STL", "PRMT")}
        row["setmaxnreg"] = [int(x, 16) for x in re.findall(r"USETMAXREG\.\S+(?: \S+,)? (0x[0-9a-f]+)", sass)]
        row["max_register"] = max(int(r) for r in re.findall(r"\bR(\d+)\b", sass))
    out.append(row)
json.dump(out, open(sys.argv[1], "w"))
"""

DEFAULT = {"warp_specialized": flash3.SPECIALIZED, "pingpong": flash3.PINGPONG,
           "intra_overlap": flash3.OVERLAP}
ONE_ROLE = {"warp_specialized": flash3.ONE_ROLE, "pingpong": flash3.TOGETHER,
            "intra_overlap": flash3.IN_ORDER}
IN_ORDER = {"intra_overlap": flash3.IN_ORDER}


def compile_specs(tmp_path, groups):
    """Each group of specs compiled in its own subprocess (at once: one kernel is ~10 s of CPU)."""
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0"}
    procs = []
    for i, specs in enumerate(groups):
        out = tmp_path / f"flash3-{i}.json"
        procs.append((out, subprocess.Popen([sys.executable, "-c", SCRIPT, str(out), json.dumps(specs)],
                                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                            text=True)))
    rows = []
    for out, proc in procs:
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err[-4000:]
        rows += json.loads(out.read_text())
    return rows


def check_compiled(row):
    where = f"flash3 {row['dtype']} D={row['D']} {row['config']}"
    assert row["spill_bytes"] == 0 and row["stack_bytes"] == 0, (where, row["log"][-2000:])
    assert "serialized" not in row["log"] and "Potential Performance Loss" not in row["log"], \
        (where, row["log"][-2000:])
    assert row["shared"] > 48 * 1024 or row["D"] == 64  # dynamic shared memory, above 48 KiB at D = 128
    sass = row.get("sass")
    if sass is None:
        pytest.skip("nvdisasm is not installed (pip install 'cuda-toolkit[nvdisasm]'): SASS not checked")
    spec = row["config"].get("warp_specialized", flash3.SPECIALIZED) == flash3.SPECIALIZED
    fp8 = row["dtype"] == flash3.FP8
    mma, other = ("QGMMA", "HGMMA") if fp8 else ("HGMMA", "QGMMA")  # e4m3 wgmma is QGMMA in SASS
    assert sass[mma] > 0 and sass[other] == 0 and sass["UTMALDG"] > 0 and sass["SYNCS"] > 0, (where, sass)
    assert sass["LDL"] == 0 and sass["STL"] == 0, (where, sass)
    if fp8:  # V_j's transpose: 8 byte permutes a 4×4 block
        assert sass["PRMT"] >= 8, (where, sass)
    regs = ([flash3.PRODUCER_REGS_FP8, flash3.CONSUMER_REGS_FP8] if fp8
            else [flash3.PRODUCER_REGS, flash3.CONSUMER_REGS])
    if spec:  # the producer gives registers back, the consumers take them
        assert sass["USETMAXREG"] == 2, (where, sass)
        assert sorted(row["setmaxnreg"]) == regs, (where, row)
        assert row["threads"] == 384 and row["registers"] == 168, (where, row["registers"])
    else:
        assert sass["USETMAXREG"] == 0 and row["threads"] == 256, (where, sass)
    if row["config"].get("pingpong", flash3.PINGPONG) == flash3.PINGPONG and spec:
        assert sass["BAR.SYNC"] > 0 and sass["BAR.ARV"] > 0, (where, sass)


def test_simulator_refuses_flash3_with_the_reason():
    if workbench.mode() != "simulator":
        pytest.skip("simulator only")
    with pytest.raises(ValueError, match=r"cannot run in the simulator: the simulator cannot link "
                                         r"CUDA C\+\+ \(hopper.cu\) and has no wgmma"):
        runner.check_config(get("flash3"), Problem(1, 2, 2, 64, 64, 64, "float16"))


def test_needs_and_rules():
    """Dynamic shared memory as declared (Q, 2 stages of K and V, the barriers, 1 KiB of alignment
    slack); the rules refuse what the kernel cannot do."""
    p = Problem(1, 2, 2, 64, 64, 128, "float16")
    n = flash3.needs(p, flash3.DEFAULT_CONFIG)
    assert n.dynamic_shared and n.shared_bytes == 2 * 128 * 128 * 5 + 8 * 7 + 1024
    assert n.head_dims == (64, 128) and n.dtypes == ("float16", "bfloat16", "float8_e4m3fn")
    assert all(n.rules.values())
    # FP8: Q, K, V's landing buffers and V_jᵀ (one byte an element), one more barrier per stage
    p8 = Problem(1, 2, 2, 64, 64, 128, "float8_e4m3fn")
    n8 = flash3.needs(p8, flash3.DEFAULT_CONFIG)
    assert n8.shared_bytes == 128 * 128 * 7 + 8 * 9 + 1024 and all(n8.rules.values())
    for bad in ({"Bc": 64}, {"stages": 1}, {"warp_specialized": flash3.ONE_ROLE, "pingpong": flash3.TOGETHER}):
        assert not all(flash3.needs(p8, {**flash3.DEFAULT_CONFIG, **bad}).rules.values()), bad
    for bad in ({"Br": 64}, {"Bc": 96}, {"stages": 5}, {"stages": 1}, {"pingpong": flash3.PINGPONG,
                                                        "warp_specialized": flash3.ONE_ROLE}):
        assert not all(flash3.needs(p, {**flash3.DEFAULT_CONFIG, **bad}).rules.values()), bad


@pytest.mark.parametrize("d", [128, pytest.param(64, marks=pytest.mark.slow)])
def test_compiles_for_sm90a_with_hopper_instructions(d, tmp_path):
    """D = 128 in the default tier (tests/test_compile.py also compiles flash3 at D = 64 and 128 for
    its registers, spills and shared memory); D = 64's SASS in the slow tier."""
    rows = compile_specs(tmp_path, [[{"D": d, "dtype": "float16", "config": DEFAULT}]])
    assert {r["D"] for r in rows} == {d}
    for row in rows:
        check_compiled(row)


@pytest.mark.slow
def test_compiles_bf16_and_the_simpler_schedules(tmp_path):
    groups = [[{"D": d, "dtype": "bfloat16", "config": DEFAULT},
               {"D": d, "dtype": "float16", "config": ONE_ROLE},
               {"D": d, "dtype": "float16", "config": IN_ORDER}] for d in (64, 128)]
    for row in compile_specs(tmp_path, groups):
        check_compiled(row)


@pytest.mark.slow
def test_compiles_fp8_for_sm90a(tmp_path):
    """FP8 at D = 64 and 128: k32 wgmma (QGMMA, no HGMMA), V's transpose (PRMT), 40/232 registers
    by setmaxnreg, no spills, no serialisation warning."""
    rows = compile_specs(tmp_path, [[{"D": d, "dtype": "float8_e4m3fn", "config": DEFAULT}] for d in (64, 128)])
    assert {r["D"] for r in rows} == {64, 128}
    for row in rows:
        check_compiled(row)


# --- FP8: the API's checks and the verifier's rule (no GPU needed) ---------------------------------

F8 = ml_dtypes.float8_e4m3fn


def test_quantize_fp8_per_tensor_saturating():
    x = np.random.default_rng(3).standard_normal((2, 3, 50, 64), dtype=np.float32)
    codes, scale = workbench.quantize_fp8(x)
    assert codes.dtype == F8 and codes.shape == x.shape and scale.dtype == np.float32
    assert scale == np.float32(np.abs(x).max() / 448)
    back = dtypes.dequantize_fp8(codes, scale)
    # e4m3 keeps 3 mantissa bits: each value within half an ulp (2⁻⁴ relative) or the subnormal step
    assert np.all(np.abs(back - x) <= np.abs(x) * 2.0 ** -4 + float(scale) * 2.0 ** -10)
    assert float(np.abs(back).max()) == pytest.approx(float(np.abs(x).max()), rel=1e-6)
    sat, _ = workbench.quantize_fp8(x)  # the amax element maps to 448 exactly, nothing to NaN
    assert np.isfinite(sat.astype(np.float32)).all()
    zeros, s0 = workbench.quantize_fp8(np.zeros((4, 4), np.float32))
    assert s0 == 1 and not zeros.astype(np.float32).any()
    assert dtypes.to_bits(codes).dtype == np.uint8 and dtypes.from_bits(codes.view(np.uint8), "float8_e4m3fn").dtype == F8


def test_fp8_api_checks_before_any_launch():
    x = np.random.default_rng(0).standard_normal((1, 2, 64, 64), dtype=np.float32)
    q8, s = workbench.quantize_fp8(x)
    with pytest.raises(ValueError, match=r"need descale=\(q_descale, k_descale, v_descale\)"):
        workbench.attention(q8, q8, q8, kernel="flash3")
    with pytest.raises(ValueError, match=r"kernel 'flash2' takes dtypes .* not 'float8_e4m3fn'.*flash3"):
        workbench.attention(q8, q8, q8, kernel="flash2", descale=(s, s, s))
    with pytest.raises(TypeError, match="descale must be"):
        workbench.attention(q8, q8, q8, kernel="flash3", descale=(s, s))
    with pytest.raises(TypeError, match="k_descale must be a real number"):
        workbench.attention(q8, q8, q8, kernel="flash3", descale=(s, "1", s))
    with pytest.raises(ValueError, match=r"v_descale = .* must be finite and > 0"):
        workbench.attention(q8, q8, q8, kernel="flash3", descale=(s, s, 0.0))
    with pytest.raises(ValueError, match="descale is for FP8"):
        workbench.attention(x, x, x, kernel="flash3", descale=(1.0, 1.0, 1.0))
    with pytest.raises(TypeError, match="uint8, which is not taken for FP8 codes"):
        u = q8.view(np.uint8)
        workbench.attention(u, u, u, kernel="flash3", descale=(s, s, s))
    if workbench.mode() == "simulator":  # valid FP8 inputs: refused for the simulator, not the dtype
        with pytest.raises(ValueError, match="cannot run in the simulator"):
            workbench.attention(q8, q8, q8, kernel="flash3", descale=(s, s, s))
    p = Problem(1, 2, 2, 64, 64, 64, "float8_e4m3fn", descale=(np.float32(0.5), 1, np.array([2.0])))
    assert p.descale == (0.5, 1.0, 2.0) and p.out_dtype == "float16" and p.itemsize == 1
    assert p.min_bytes() == 64 * 64 * 2 * (1 + 2) + 2 * 64 * 64 * 2 * 1 + 2 * 64 * 4
    (o_arg,) = [a for a in flash3.ARGS if a.name == "o"]
    assert o_arg.device_dtype(p) == np.float16 and o_arg.device_dtype(Problem(dtype="bfloat16")) == np.uint16


def e4m3(x):
    return np.clip(x, -448, 448).astype(np.float32).astype(F8).astype(np.float64)


def fp8_model(q8, k8, v8, descale, scale, causal, Bc=128):
    """flash3's FP8 arithmetic in NumPy, one head: S from the codes' products times c = log2(e)·
    scale·q_descale·k_descale; per Bc tile P = e4m3(2^(c·S − c·m + 8)) (saturating), l the float32
    sum of the unrounded 2⁸·P; O = v_descale · Σ P V / l, rounded to float16; LSE in float32."""
    sq, sk, sv = descale
    qf, kf, vf = (x.astype(np.float64) for x in (q8, k8, v8))
    c = np.float32(np.log2(np.e) * scale * sq * sk)
    n, nk = qf.shape[0], kf.shape[0]
    m, l, o = np.full(n, -np.inf), np.zeros(n), np.zeros((n, vf.shape[1]))
    for j0 in range(0, nk, Bc):
        s = (qf @ kf[j0:j0 + Bc].T).astype(np.float32)
        if causal:
            s = np.where(np.arange(j0, min(j0 + Bc, nk))[None] <= np.arange(n)[:, None] + nk - n, s, -np.inf)
        m_new = np.maximum(m, s.max(1))
        cm = c * np.where(np.isfinite(m_new), m_new, 0)
        alpha = np.exp2(c * m - cm)
        p = np.exp2((c * s - (cm - 8)[:, None]).astype(np.float32))
        l, o, m = alpha * l + p.sum(1), alpha[:, None] * o + e4m3(p) @ vf[j0:j0 + Bc], m_new
    lse = (c * m + np.log2(l) - 8) * np.log(2)
    return (o * sv / l[:, None]).astype(np.float16).astype(np.float64), lse


def test_fp8_rule_judges_against_the_dequantised_inputs():
    """The verifier's FP8 rule, fed synthetic results: the NumPy model of the kernel passes (its
    RMSE reported beside the max error); the reference is the dequantised inputs' (not the float32
    draws'); perturbations just inside each bound pass, just outside fail."""
    from workbench.harness import verify

    p = Problem(1, 2, 2, 200, 300, 64, "float8_e4m3fn", causal=True)
    tol = verify.TOLERANCE["float8_e4m3fn"]
    q8, k8, v8, scaled = verify.fp8_inputs(p, seed=5)
    assert q8.dtype == F8 and scaled.descale is not None and scaled.descale[0] != 1.0
    exact = verify.dequantized(scaled, q8, k8, v8)
    ref_o, ref_lse = reference.attention(*exact, causal=True, scale=p.scale)
    _, _, _, pairs, t_o, t_lse = verify.truth(p, 5, None)
    assert np.array_equal(t_o[:, 0], ref_o[0]) and np.array_equal(t_lse[:, 0], ref_lse[0])
    model = [fp8_model(q8[0, h], k8[0, h], v8[0, h], scaled.descale, p.scale, True) for h in range(2)]
    out = np.stack([m[0] for m in model])[None]
    lse = np.stack([m[1] for m in model])[None]

    def judged(o, lse_):
        return verify.compare(verify.Report("flash3", scaled, 5), o, lse_, ref_o, ref_lse)

    rep = judged(out, lse)
    assert rep.passed, str(rep)
    assert 5e-3 < rep.rel_fro < tol.rel_fro / 1.5 and 0 < rep.rmse < rep.max_abs  # P's rounding shows
    assert "rmse=" in str(rep) and rep.as_dict()["rmse"] == rep.rmse
    # the float32 draws (before quantisation) are not what the kernel was given: far off
    draws = dataclasses_replace(p).make_inputs(5)
    raw_o, _ = reference.attention(*draws, causal=True, scale=p.scale)
    assert verify.compare(verify.Report("flash3", scaled, 5), out, None, raw_o, ref_lse).rel_fro > rep.rel_fro
    # rel-Frobenius: a smooth relative error of 0.9× / 1.1× the bound
    wiggle = np.random.default_rng(1).choice([-1.0, 1.0], ref_o.shape)
    for k, ok in ((0.9, True), (1.1, False)):
        o = ref_o + k * tol.rel_fro * np.abs(ref_o) * wiggle * np.linalg.norm(ref_o) / np.linalg.norm(ref_o * wiggle)
        r = judged(o, ref_lse)
        assert r.passed == ok and (ok or "relative Frobenius" in r.failures[0]), (k, str(r))
    # one element: 0.9× / 1.1× its bound atol·rms(row) + rtol·|ref|
    i = (0, 1, 150, 7)
    bound = tol.atol * np.sqrt((ref_o[i[:3]] ** 2).mean()) + tol.rtol * abs(ref_o[i])
    for k, ok in ((0.9, True), (1.1, False)):
        o = ref_o.copy()
        o[i] += k * bound
        r = judged(o, ref_lse)
        assert r.passed == ok and (ok or "elements off by more than" in r.failures[0]), (k, str(r))
    for k, ok in ((0.9, True), (1.1, False)):
        lse_ = ref_lse.copy()
        lse_[0, 0, 3] += k * tol.lse_atol
        assert judged(ref_o, lse_).passed == ok, k


def dataclasses_replace(p):
    import dataclasses

    return dataclasses.replace(p, dtype="float32")


# --- on a GPU -----------------------------------------------------------------------------------

GPU_CASES = [
    Problem(1, 4, 4, 1, 1, 64, "float16"),  # N = 1
    Problem(2, 8, 2, 97, 97, 64, "float16", causal=True),  # odd N, GQA
    Problem(1, 8, 1, 113, 203, 128, "bfloat16", causal=True),  # Nq < Nkv, MQA
    Problem(1, 8, 8, 203, 113, 64, "bfloat16"),  # Nq > Nkv
    Problem(1, 8, 2, 1025, 1025, 128, "float16", window=(256, 0)),  # window
    Problem(2, 4, 4, 300, 300, 128, "float16", window=(17, 5)),  # window with a right side
    Problem(1, 4, 4, 2048, 2048, 64, "bfloat16", causal=True),  # many tiles: the ring wraps
]
SCHEDULES = {"one_role": ONE_ROLE, "in_order": {**IN_ORDER, "pingpong": flash3.TOGETHER},
             "overlap": {"pingpong": flash3.TOGETHER}, "pingpong": IN_ORDER, "fa3": DEFAULT}


@pytest.mark.gpu
@pytest.mark.skipif(workbench.mode() != "gpu", reason="needs a Hopper GPU")
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("problem", GPU_CASES, ids=lambda p: p.describe().replace(" ", "_"))
def test_flash3_matches_float64_on_a_gpu(problem, schedule):
    from workbench.harness import verify

    report = verify.check("flash3", problem, seed=GPU_CASES.index(problem) + 7, config=SCHEDULES[schedule])
    assert report.passed, str(report)


FP8_CASES = [
    Problem(1, 4, 4, 1, 1, 64, "float8_e4m3fn"),  # N = 1
    Problem(2, 8, 2, 97, 97, 64, "float8_e4m3fn", causal=True),  # odd N, GQA
    Problem(1, 8, 1, 113, 203, 128, "float8_e4m3fn", causal=True),  # Nq < Nkv, MQA
    Problem(1, 8, 8, 203, 113, 64, "float8_e4m3fn"),  # Nq > Nkv
    Problem(2, 4, 4, 300, 300, 128, "float8_e4m3fn", window=(17, 5)),  # window
    Problem(1, 4, 4, 2048, 2048, 64, "float8_e4m3fn", causal=True),  # the ring wraps
    Problem(1, 4, 4, 4096, 4096, 128, "float8_e4m3fn"),  # long rows: the accumulation
]


@pytest.mark.gpu
@pytest.mark.skipif(workbench.mode() != "gpu", reason="needs a Hopper GPU")
@pytest.mark.parametrize("problem", FP8_CASES, ids=lambda p: p.describe().replace(" ", "_"))
def test_flash3_fp8_matches_float64_of_the_dequantised_inputs(problem):
    from workbench.harness import verify

    report = verify.check("flash3", problem, seed=FP8_CASES.index(problem) + 11)
    assert report.passed, str(report)
