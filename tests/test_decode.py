"""The decode rung (split-KV over a paged cache) against float64 on the gathered cache: odd block
tables (shuffled, non-contiguous physical blocks, partial last blocks, block sizes that do not divide
the lengths, spare blocks and table entries poisoned), GQA/MQA, several new tokens, masks; and the
validation of block tables before any launch."""

import numpy as np
import pytest

import workbench  # noqa: F401  (selects the simulator before anything imports Numba)
from workbench import reference
from workbench.api.inference import DecodeProblem, check_decode, decode, make_decode_inputs, paged_cache


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
