"""The decode rung (split-KV over a paged cache) against float64 on the gathered cache: odd block
tables (shuffled, non-contiguous physical blocks, partial last blocks, block sizes that do not divide
the lengths, spare blocks and table entries poisoned), GQA/MQA, several new tokens, masks; the
validation of block tables before any launch (NumPy inputs, errors="raise") and on the device
(device inputs: flags and NaN, never an out-of-bounds read); the 16-byte alignment check; an FP8
cache against float64 on the dequantised cache."""

import numpy as np
import pytest

import workbench  # noqa: F401  (selects the simulator before anything imports Numba)
from workbench import reference
from workbench.api.inference import (DecodeError, DecodeErrors, DecodeProblem, check_decode, decode,
                                     make_decode_inputs, paged_cache, reference_decode)


def problem(batch, heads, kv_heads, nq, d, block, lens, dtype="float32", **kw):
    need = sum(-(-n // block) for n in lens)
    return DecodeProblem(batch, heads, kv_heads, nq, d, block, need + 2,
                         max(-(-n // block) for n in lens) + 1, tuple(lens), dtype, **kw)


CASES = [
    problem(2, 4, 2, 1, 16, 4, (13, 6)),  # GQA, lengths 13 (partial last block) and 6
    problem(2, 4, 1, 3, 16, 5, (11, 17), "float16"),  # MQA, 3 new tokens, block 5
    problem(1, 2, 2, 2, 32, 8, (19,), causal=False, window=(5, -1)),
    problem(3, 2, 1, 1, 16, 3, (1, 8, 20), "float16"),  # a sequence of one token; many splits
]


@pytest.mark.parametrize("p", CASES, ids=lambda p: p.describe().replace(" ", "_"))
def test_decode_matches_float64_on_gathered_cache(p):
    report = check_decode(p, seed=CASES.index(p) + 3)
    assert report.passed, str(report)


def test_paged_cache_is_shuffled_and_gathers_back():
    rng = np.random.default_rng(0)
    k = rng.standard_normal((2, 1, 10, 4))
    kc, _, table = paged_cache(k, k, (10, 7), 4, seed=1)
    assert not np.array_equal(table[0, :3], np.sort(table[0, :3]))  # not in physical order
    assert np.isnan(kc[table[0, 2], :, 2:]).all()  # the partial last block's tail is poison
    back = reference.gather_paged(kc, table, np.array([10, 7]))
    np.testing.assert_array_equal(back[0], k[0])
    np.testing.assert_array_equal(back[1, :, :7], k[1, :, :7])


def test_block_size_one_and_contiguous_table_agree():
    """The same keys in a shuffled pool of blocks of 1 token and a contiguous one: same answer."""
    p = problem(1, 2, 1, 1, 16, 1, (9,))
    q, kc, vc, table, lens = make_decode_inputs(p, seed=2)
    o1 = decode(q, kc, vc, table, lens)
    k = reference.gather_paged(kc, table, lens).astype(np.float32)
    v = reference.gather_paged(vc, table, lens).astype(np.float32)
    kc2, vc2, table2 = paged_cache(k, v, (9,), 16, shuffle=False, spare_blocks=0, extra_table=0)
    o2 = decode(q, kc2, vc2, table2, lens)
    np.testing.assert_allclose(o1, o2, rtol=1e-5, atol=1e-6)


def test_decode_validation():
    p = problem(2, 2, 1, 1, 16, 4, (5, 9))
    q, kc, vc, table, lens = make_decode_inputs(p, seed=0)
    bad = table.copy()
    bad[1, 2] = p.num_blocks  # a physical block past the pool
    with pytest.raises(ValueError, match=r"block_table\[1, 2\]"):
        decode(q, kc, vc, bad, lens)
    with pytest.raises(ValueError, match="capacity"):
        decode(q, kc, vc, table, np.array([5, 4 * table.shape[1] + 1], np.int32))
    with pytest.raises(ValueError, match=">= 1"):
        decode(q, kc, vc, table, np.array([0, 9], np.int32))
    with pytest.raises(TypeError, match="int32"):
        decode(q, kc, vc, table.astype(np.int64), lens)
    with pytest.raises(ValueError, match="multiple of kv_heads"):
        decode(np.ones((2, 3, 1, 16), np.float32), np.ones((7, 2, 4, 16), np.float32),
               np.ones((7, 2, 4, 16), np.float32), table, lens)
    with pytest.raises(ValueError, match="seq_lens must be"):
        decode(q, kc, vc, table, lens[:1])
    # Entries past a sequence's last used block are never read, so they may hold anything.
    assert table[0, -1] >= p.num_blocks
    decode(q, kc, vc, table, lens)


def test_training_inference_and_model_claims():
    from workbench.bench import benchmark_page

    train = benchmark_page.claims_for("seed-training")
    assert {(c.batch, c.seq) for c in train} == {(4, 2048), (8, 2048), (4, 4096), (8, 4096), (2, 8192)}
    oom = [c for c in train if c.value is None]
    assert [(c.batch, c.seq, c.note) for c in oom] == [(8, 4096, "OOM"), (8, 4096, "Enabled")]
    inf = benchmark_page.claims_for("seed-inference")
    assert [c.seq for c in inf if c.column.startswith("Flash")] == [512, 2048, 4096, 8192, 16384]
    models = benchmark_page.claims_for("seed-models")
    assert {(c.heads, c.head_dim) for c in models} == set(
        (h, d) for h, _, d in benchmark_page.MODEL_SHAPES.values())


# --- device-side checks: device block tables and lengths are never copied to the host ----------
def _on_device(*arrays):
    from numba import cuda

    return [cuda.to_device(np.ascontiguousarray(x)) for x in arrays]


def _judge(p, seed, o, lse, rows=slice(None)):
    """verify.compare of O, LSE (host arrays of sequences `rows`) against float64 on the gathered
    cache of make_decode_inputs(p, seed)."""
    from workbench.harness import verify

    q, kc, vc, table, lens = make_decode_inputs(p, seed)
    ref_o, ref_lse = reference_decode(p, q, kc, vc, table, lens)
    return verify.compare(verify.Report("paged_decode", p, seed), o, lse, ref_o[rows],
                          None if lse is None else ref_lse[rows])


def test_device_checks_flag_bad_blocks_and_nan_their_sequences():
    """Device inputs, one split per sequence: a block id past the pool and a negative one (reads
    outside the cache without the check: the simulator raises on them, so this test would fail)
    give NaN O and LSE for those sequences and BAD_BLOCK in their flags; the good sequence's
    results are exact and bitwise those of a call with a good table."""
    p = problem(3, 2, 1, 1, 16, 4, (13, 6, 9))
    q, kc, vc, table, lens = make_decode_inputs(p, seed=5)
    one = {"split_keys": 64}
    errors = DecodeErrors(4)
    dq, dkc, dvc, dtable, dlens = _on_device(q, kc, vc, table, lens)
    good_o, good_lse = decode(dq, dkc, dvc, dtable, dlens, errors=errors, config=one, return_lse=True)
    good_o, good_lse = good_o.copy_to_host(), good_lse.copy_to_host()
    assert _judge(p, 5, good_o, good_lse).passed
    assert errors.codes().tolist() == [0, 0, 0, 0]
    bad = table.copy()
    bad[1, 1] = p.num_blocks + 5
    bad[2, 0] = -1
    o, lse = decode(dq, dkc, dvc, _on_device(bad)[0], dlens, errors=errors, config=one, return_lse=True)
    o, lse = o.copy_to_host(), lse.copy_to_host()
    assert np.isnan(o[1:]).all() and np.isnan(lse[1:]).all()
    assert o[0].tobytes() == good_o[0].tobytes() and lse[0].tobytes() == good_lse[0].tobytes()
    assert errors.codes().tolist() == [0, DecodeErrors.BAD_BLOCK, DecodeErrors.BAD_BLOCK, 0]
    with pytest.raises(DecodeError, match="sequence 1: a block id outside the cache; sequence 2"):
        errors.check()
    assert not errors.any()  # check() cleared them


def test_device_checks_reach_the_combine():
    """Two splits per sequence (planned for the table's capacity, 24 keys): sequence 1's bad
    block is in its second split only; its first split's partial is fine, the combine still
    makes all of its O and LSE NaN. Sequence 0 (keys in both splits) is exact."""
    p = problem(2, 1, 1, 1, 16, 4, (21, 18))
    q, kc, vc, table, lens = make_decode_inputs(p, seed=8)
    from workbench.kernels import paged_decode

    planned = DecodeProblem(2, 1, 1, 1, 16, 4, p.num_blocks, p.max_blocks, (4 * p.max_blocks,) * 2,
                            "float32")
    assert paged_decode.split_plan(planned, {**paged_decode.DEFAULT_CONFIG,
                                             **paged_decode.SIM_CONFIG}) == (2, 16)
    bad = table.copy()
    bad[1, 4] = p.num_blocks  # keys 16..17: the second split
    errors = DecodeErrors(2)
    o, lse = decode(*_on_device(q, kc, vc, bad, lens), errors=errors, return_lse=True)
    o, lse = o.copy_to_host(), lse.copy_to_host()
    assert np.isnan(o[1]).all() and np.isnan(lse[1]).all()
    assert _judge(p, 8, o[:1], lse[:1], rows=slice(0, 1)).passed
    assert errors.codes().tolist() == [0, DecodeErrors.BAD_BLOCK]


def test_device_checks_flag_bad_lengths():
    """A length past the table's capacity (the table row would be read past its end), one below
    Nq, and one past max_seq_len: BAD_LENGTH, NaN; errors='raise' checks on the host instead."""
    p = problem(3, 1, 1, 2, 16, 4, (9, 6, 7))
    q, kc, vc, table, lens = make_decode_inputs(p, seed=6)
    dev = _on_device(q, kc, vc, table)
    errors = DecodeErrors(3)
    cap = 4 * table.shape[1]
    one = {"split_keys": 64}  # (one split: the combine's 128 threads are slow in the simulator)
    o = decode(*dev, _on_device(np.array([9, cap + 1, 1], np.int32))[0], errors=errors,
               config=one).copy_to_host()
    assert np.isfinite(o[0]).all() and np.isnan(o[1:]).all()
    assert errors.codes().tolist() == [0, DecodeErrors.BAD_LENGTH, DecodeErrors.BAD_LENGTH]
    errors.clear()
    o = decode(*dev, _on_device(lens)[0], errors=errors, max_seq_len=8, config=one).copy_to_host()
    assert errors.codes().tolist() == [DecodeErrors.BAD_LENGTH, 0, 0]  # 9 > max_seq_len
    assert np.isnan(o[0]).all() and _judge(p, 6, o[1:], None, rows=slice(1, None)).passed
    with pytest.raises(ValueError, match=r"seq_lens\[1\] = .* over the block table's capacity"):
        decode(*dev, _on_device(np.array([9, cap + 1, 1], np.int32))[0], errors="raise")


def test_alignment_is_checked_before_any_launch():
    """A cache view that does not start on a 16-byte boundary: ValueError from validate()."""
    from numba import cuda

    from workbench.api.inference import validate

    p = problem(1, 2, 1, 1, 16, 4, (6,))
    q, kc, vc, table, lens = make_decode_inputs(p, seed=7)
    flat = cuda.to_device(np.zeros(kc.size + 1, kc.dtype))
    shifted = flat[1:].reshape(kc.shape)  # 4 bytes past a boundary
    shifted.copy_to_device(kc)
    dq, dvc, dtable, dlens = _on_device(q, vc, table, lens)
    with pytest.raises(ValueError, match="k_cache must start on a 16-byte boundary"):
        validate(dq, shifted, dvc, dtable, dlens)
    validate(dq, _on_device(kc)[0], dvc, dtable, dlens)  # a fresh allocation is aligned
