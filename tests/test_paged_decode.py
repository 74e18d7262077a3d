"""The paged decode rung (kernels/paged_decode.py) against float64 on the gathered cache, in the
simulator: shuffled physical blocks, partial last blocks, NaN in every cache slot no sequence owns
and in the table entries past each sequence's blocks, GQA/MQA, causal with several new tokens,
windows, the shortest lengths (Nq), head dims whose rows are not a power of two of 16-byte chunks,
float16 / bfloat16 / float32; plus its split plan, and a compile check for sm_90 (no spills,
16-byte loads in the SASS) in a subprocess with the simulator off."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import workbench  # noqa: F401  (selects the simulator before anything imports Numba)
from workbench.api.inference import DecodeProblem, make_decode_inputs, reference_decode
from workbench.dtypes import to_bits
from workbench.harness import verify
from workbench.kernels import paged_decode as rung

SIM = {**rung.DEFAULT_CONFIG, **rung.SIM_CONFIG}


class Launcher:
    """The two calls a rung makes of its launcher, done directly."""

    def empty(self, shape, dtype):
        from numba import cuda

        return cuda.device_array(shape, dtype)

    def launch(self, kernel, grid, block, *args):
        kernel[grid, block](*args)


def problem(batch, heads, kv_heads, nq, d, block, lens, dtype="float16", **kw):
    need = sum(-(-n // block) for n in lens)
    return DecodeProblem(batch, heads, kv_heads, nq, d, block, need + 2,
                         max(-(-n // block) for n in lens) + 1, tuple(lens), dtype, **kw)


def check(p, seed, config=None):
    """Run the rung twice on NaN-poisoned outputs; judge O and LSE against float64."""
    from numba import cuda

    cfg = {**SIM, **(config or {})}
    q, kc, vc, table, lens = make_decode_inputs(p, seed)  # NaN in unowned slots, shuffled blocks
    ref_o, ref_lse = reference_decode(p, q, kc, vc, table, lens)
    dev = [cuda.to_device(to_bits(np.ascontiguousarray(x))) for x in (q, kc, vc, table, lens)]
    io = np.uint16 if p.dtype == "bfloat16" else p.dtype
    report = verify.Report("paged_decode", p, seed)
    outs = []
    for _ in range(2):
        o = cuda.to_device(np.full(p.q_shape, 0x7FC0 if p.dtype == "bfloat16" else np.nan, io))
        lse = cuda.to_device(np.full(p.lse_shape, np.nan, np.float32))
        rung.launch(p, cfg, *dev, o, lse, Launcher())
        out = o.copy_to_host()
        outs.append((out.view(np.dtype("bfloat16")) if p.dtype == "bfloat16" else out,
                     lse.copy_to_host()))
    (o1, l1), (o2, l2) = outs
    if o1.tobytes() != o2.tobytes() or l1.tobytes() != l2.tobytes():
        report.failures.append("two launches on the same inputs differ bitwise (a race?)")
    return verify.compare(report, o1, l1, ref_o, ref_lse), rung.split_plan(p, cfg)


CASES = [
    # GQA, lengths 37 and 20 (partial last blocks), block 16, several splits per sequence
    (problem(2, 4, 2, 1, 16, 16, (37, 20)), {}),
    # MQA, 3 new tokens (causal), block 5; D = 24 is 3 chunks: a lane group of 4 with an idle lane
    (problem(1, 2, 1, 3, 24, 5, (17,)), {}),
    # a window, not causal, float32, D = 40 (10 chunks of 4 floats: 16 lanes, 6 idle)
    (problem(1, 2, 2, 2, 40, 8, (19,), "float32", causal=False, window=(5, 2)), {}),
    # bfloat16, D = 8 (one chunk: 32 lane groups a warp), block 64, odd context
    (problem(2, 2, 1, 1, 8, 64, (70, 33), "bfloat16"), {"split_keys": 32}),
    # a sequence of one token beside longer ones (splits with no key), block 3, 2 steps a split
    (problem(3, 2, 1, 1, 32, 3, (1, 8, 45)), {"unroll": 1}),
    # D = 128 at the default unroll (4): 8 keys a step, several steps a split, the block walk
    # wrapping (block 5)
    (problem(1, 4, 2, 1, 128, 5, (61,)), {"unroll": rung.DEFAULT_CONFIG["unroll"]}),
    # 2 warps merged through shared memory; 3 heads a group × 2 tokens = 6 rows in 2 row blocks
    (problem(1, 3, 1, 2, 64, 16, (29,)), {"threads": 64, "split_keys": 16}),
    # the shortest length, Nq: token 0 of sequence 0 (length 3, 3 new tokens) sees one key
    (problem(2, 2, 2, 3, 16, 4, (3, 9)), {}),
    # block size 1; unroll 1; one split of 3 steps (the kernel writes O itself, no combine)
    (problem(1, 2, 1, 1, 64, 1, (9,)), {"unroll": 1, "split_keys": 64}),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0].describe().replace(" ", "_"))
def test_paged_decode_matches_float64(case):
    p, config = case
    report, _ = check(p, seed=CASES.index(case) + 11, config=config)
    assert report.passed, str(report)


def test_cases_cover_the_paths():
    """The cases above take both paths (split + combine, and one split), and splits of several
    steps (the block walk and the block-table prefetch)."""
    plans = [rung.split_plan(p, {**SIM, **c}) for p, c in CASES]
    steps = [per // rung.step_keys(p, {**SIM, **c}) for (p, c), (_, per) in zip(CASES, plans)]
    assert max(s for s, _ in plans) >= 3 and min(s for s, _ in plans) == 1
    assert sum(n >= 2 for n in steps) >= 3, steps


def test_lane_layout_every_head_dim():
    """A lane group covers each row's 16-byte chunks once, for every D in HEAD_DIMS and dtype."""
    for D in rung.HEAD_DIMS:
        for size in (2, 4):
            chunks, lk, cpl, epc = rung.lane_layout(D, size)
            assert chunks * epc == D and chunks * 16 == D * size
            assert lk & (lk - 1) == 0 and lk <= 32 and lk * cpl >= chunks > lk * (cpl - 1)


def test_split_plan_fills_the_gpu():
    """At the default config: splits a whole number of steps covering the context; the CTAs fill
    at least 90 % of one wave of SMs × ctas_per_sm when the context allows that many splits, and
    several waves are never left with a nearly empty last one."""
    cfg = rung.DEFAULT_CONFIG
    for b, hkv, h, ctx in [(1, 8, 32, 32768), (1, 32, 32, 512), (8, 8, 32, 8192), (64, 32, 32, 4096),
                           (1, 1, 4, 131072), (3, 2, 16, 1000), (64, 8, 32, 16384), (16, 8, 32, 65536)]:
        p = DecodeProblem(b, h, hkv, 1, 128, 64, 1, -(-ctx // 64), (ctx,) * b)
        splits, per = rung.split_plan(p, cfg)
        Br, blocks = rung.row_blocks(p, cfg)
        slots = rung.sm_count() * rung.ctas_per_sm(Br, cfg["threads"], 128, "float16")
        ctas = b * hkv * blocks * splits
        assert splits * per >= ctx > (splits - 1) * per
        assert per % rung.step_keys(p, cfg) == 0 and splits <= rung.MAX_SPLITS
        most = b * hkv * blocks * min(rung.MAX_SPLITS, ctx // cfg["split_keys"])
        if most >= slots:
            waves = ctas / slots
            assert waves / np.ceil(waves) >= 0.9, (b, hkv, ctx, splits, waves)
        else:  # less than a wave even with the shortest splits: splits near the shortest
            step = rung.step_keys(p, cfg)
            shortest = -(-max(cfg["split_keys"], -(-ctx // rung.MAX_SPLITS)) // step) * step
            assert per <= 2 * shortest, (b, hkv, ctx, splits, per)
        assert rung.workspace_bytes(p, cfg) == (4 * splits * b * h * 129 if splits > 1 else 8) + 4 * b


COMPILE = textwrap.dedent("""
    import json, re, sys
    import numpy as np
    from numba import cuda, types, typeof
    from numba.np.numpy_support import from_dtype
    from cuda.core import Linker, LinkerOptions, ObjectCode
    from workbench.api.inference import DecodeProblem
    from workbench.kernels import paged_decode as rung

    class Placeholder:
        def __init__(self, shape, dtype):
            self.shape, self.dtype = tuple(shape), np.dtype(dtype)
            self._numba_type_ = types.Array(from_dtype(self.dtype), len(self.shape), "C")

    class Plan:
        def __init__(self):
            self.launches = []
        def empty(self, shape, dtype):
            return Placeholder(shape, dtype)
        def launch(self, kernel, grid, block, *args):
            self.launches.append((kernel, tuple(typeof(a) for a in args)))

    try:
        from numba.cuda.codegen import run_nvdisasm
        from cuda import pathfinder
        has_sass = pathfinder.find_nvidia_binary_utility("nvdisasm") is not None
    except Exception:
        has_sass = False
    rows = []
    for dtype, D, group, fp8 in [("float16", 64, 4, 0), ("float16", 128, 4, 0), ("float16", 256, 4, 0),
                                 ("float16", 128, 1, 0), ("bfloat16", 128, 4, 0),
                                 ("float16", 64, 4, 1), ("float16", 128, 4, 1), ("bfloat16", 256, 4, 1),
                                 ("float16", 128, 1, 1)]:
        cache = rung.FP8 if fp8 else None
        p = DecodeProblem(1, 8 * group, 8, 1, D, 16, 4096, 2048, (32768,), dtype, cache_dtype=cache)
        io = np.uint16 if dtype == "bfloat16" else dtype
        plan = Plan()
        scales = (Placeholder((8,), np.float32), Placeholder((8,), np.float32)) if fp8 else ()
        rung.launch_with(p, rung.DEFAULT_CONFIG, Placeholder(p.q_shape, io),
                    Placeholder(p.cache_shape, np.uint8 if fp8 else io),
                    Placeholder(p.cache_shape, np.uint8 if fp8 else io), Placeholder((1, 2048), np.int32),
                    Placeholder((1,), np.int32), Placeholder(p.q_shape, io),
                    Placeholder(p.lse_shape, np.float32), plan, kv_scales=scales)
        for kernel, argtypes in plan.launches:
            opts = {k: v for k, v in kernel.targetoptions.items() if k in ("fastmath", "launch_bounds")}
            ltoirs, _ = cuda.compile_all(kernel.py_func, argtypes, device=False, abi="numba",
                                         output="ltoir", cc=(9, 0), **opts)
            linker = Linker(*[ObjectCode.from_ltoir(b) for b in ltoirs],
                            options=LinkerOptions(arch="sm_90", link_time_optimization=True, verbose=True))
            cubin = linker.link("cubin")
            log = linker.get_info_log()
            m = re.search(r"(\\d+) bytes stack frame, (\\d+) bytes spill stores, (\\d+) bytes spill "
                          r"loads.*?Used (\\d+) registers.*?(\\d+) bytes smem", log, re.S)
            sass = run_nvdisasm(cubin, ["-c"]) if has_sass else None
            rows.append({"kernel": kernel.py_func.__name__, "dtype": dtype, "D": D, "group": group, "fp8": fp8,
                         "stack": int(m[1]), "spills": int(m[2]) + int(m[3]), "registers": int(m[4]),
                         "smem": int(m[5]), "declared_smem": rung.needs(p, rung.DEFAULT_CONFIG).shared_bytes,
                         "ldg128": None if sass is None else sass.count("LDG.E.128")})
    json.dump(rows, open(sys.argv[1], "w"))
""")


def test_compiles_for_sm90_without_spills(tmp_path):
    out = tmp_path / "usage.json"
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0"}
    proc = subprocess.run([sys.executable, "-c", COMPILE, str(out)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert {r["D"] for r in rows} == {64, 128, 256}
    for r in rows:
        assert r["spills"] == 0 and r["stack"] == 0, r
        assert r["smem"] <= 48 * 1024, r
        if r["kernel"] == "paged_decode_split":
            assert r["smem"] <= r["declared_smem"], r
            # every K and V chunk a lane reads is one 16-byte load (unroll keys × K, V)
            assert r["ldg128"] is None or r["ldg128"] >= 2 * rung.DEFAULT_CONFIG["unroll"], r


# --- FP8 (e4m3) cache -----------------------------------------------------------------------------
def test_e4m3x4_is_exact():
    """Every e4m3 code in every byte of a word decodes to ml_dtypes.float8_e4m3fn's number (/ 2^8),
    NaN codes to NaN."""
    import ml_dtypes

    decode = getattr(rung.e4m3x4, "py_func", rung.e4m3x4)
    codes = np.arange(256, dtype=np.uint8)
    want = codes.view(ml_dtypes.float8_e4m3fn).astype(np.float32)
    for pos in range(4):
        others = (codes.astype(np.uint32) * 37 + 11) & 0xFF  # the other bytes: other codes
        words = others * 0x01010101
        words = (words & ~np.uint32(0xFF << (8 * pos))) | (codes.astype(np.uint32) << (8 * pos))
        got = np.array([decode(np.uint32(w)) for w in words], np.float32) * rung.E4M3_UNIT
        np.testing.assert_array_equal(got[:, pos], want)
        np.testing.assert_array_equal(got[:, (pos + 1) % 4], want[others])


def _fp8_check(p, seed, config=None, as_ml_dtypes=False):
    """decode with an e4m3 cache (quantize_cache of make_decode_inputs' cache) against float64 on
    the dequantised cache, judged with the tolerance of q's dtype: the kernel's arithmetic on the
    cached numbers is float32, as with any cache dtype (the scale folds in with one float32
    rounding). Also returns the error against the unquantised cache (what e4m3 costs)."""
    import ml_dtypes

    from workbench.api.inference import decode, dequantize_cache, quantize_cache

    q, kc, vc, table, lens = make_decode_inputs(p, seed)
    k8, v8, ks, vs = quantize_cache(kc, vc)
    if as_ml_dtypes:
        k8, v8 = k8.view(ml_dtypes.float8_e4m3fn), v8.view(ml_dtypes.float8_e4m3fn)
    fp = DecodeProblem(*[getattr(p, f) for f in ("batch", "heads", "kv_heads", "seq_q", "head_dim",
                                                  "block_size", "num_blocks", "max_blocks", "seq_lens",
                                                  "dtype", "causal", "window", "scale")],
                       cache_dtype=rung.FP8)
    o, lse = decode(q, k8, v8, table, lens, k_scale=ks, v_scale=vs, causal=p.causal, window=p.window,
                    config={**SIM, **(config or {})}, return_lse=True)
    ref_o, ref_lse = reference_decode(p, q, dequantize_cache(k8, ks), dequantize_cache(v8, vs), table, lens)
    report = verify.compare(verify.Report("paged_decode", fp, seed), o, lse, ref_o, ref_lse)
    exact_o, _ = reference_decode(p, q, kc, vc, table, lens)
    cost = np.linalg.norm(ref_o - exact_o) / np.linalg.norm(exact_o)
    return report, cost


def test_fp8_cache_matches_float64_on_the_dequantised_cache():
    """GQA, partial last blocks, several splits; float16 q and O, codes as uint8."""
    report, cost = _fp8_check(problem(2, 4, 2, 1, 16, 4, (13, 6)), seed=21)
    assert report.passed, str(report)
    assert 1e-3 < cost < 0.1  # e4m3 keeps 3 mantissa bits: a few % of O, not nothing, not noise


def test_fp8_cache_bfloat16_window_several_tokens():
    """bfloat16 q and O, ml_dtypes.float8_e4m3fn codes, Nq = 2 causal in a window, D = 32, one split."""
    report, _ = _fp8_check(problem(1, 2, 1, 2, 32, 8, (19,), "bfloat16", window=(5, -1)), seed=22,
                           config={"split_keys": 64}, as_ml_dtypes=True)
    assert report.passed, str(report)


def test_fp8_cache_is_validated():
    from workbench.api.inference import decode, quantize_cache

    p = problem(1, 2, 1, 1, 16, 4, (6,))
    q, kc, vc, table, lens = make_decode_inputs(p, seed=3)
    k8, v8, ks, vs = quantize_cache(kc, vc)
    with pytest.raises(ValueError, match="needs k_scale and v_scale"):
        decode(q, k8, v8, table, lens)
    with pytest.raises(ValueError, match=r"k_scale must be \(1,\) float32"):
        decode(q, k8, v8, table, lens, k_scale=np.ones(2, np.float32), v_scale=vs)
    with pytest.raises(TypeError, match="e4m3 codes"):
        decode(q, kc, vc, table, lens, k_scale=ks, v_scale=vs)
    q24 = np.ones((1, 2, 1, 24), np.float16)
    c24 = np.zeros((kc.shape[0], 1, 4, 24), np.uint8)
    with pytest.raises(ValueError, match="multiple of 16"):
        decode(q24, c24, c24, table, lens, k_scale=ks, v_scale=vs)


def test_fp8_cache_bytes_are_half_of_float16s():
    from workbench.problem import DecodeProblem

    shape = dict(batch=2, heads=4, kv_heads=2, seq_q=1, seq_lens=(20, 9), head_dim=16, block_size=8,
                 num_blocks=6, max_blocks=3, dtype="float16")
    p16, p8 = DecodeProblem(**shape), DecodeProblem(**shape, cache_dtype="float8_e4m3fn")
    assert p8.cache_bytes_read() * 2 == p16.cache_bytes_read() == 2 * 2 * 16 * 2 * 29
    cache16 = 2 * 6 * 2 * 8 * 16 * 2
    assert p16.io_bytes() - p8.io_bytes() == cache16 // 2 - 8 * 2  # (the FP8 cache's scales)
