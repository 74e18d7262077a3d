"""The GPT-2 demo's CPU-testable parts: the paged cache's bookkeeping (driven as the demo drives it:
a prompt written, then tokens appended one at a time, each step decoded by the decode rung and
compared with float64 on the contiguous K/V), argument checks, and the plain refusal without torch."""

import numpy as np
import pytest

import workbench  # noqa: F401  (selects the simulator before anything imports Numba)
from workbench import reference
from workbench.demos import gpt2 as demo_gpt2
from workbench.api.inference import decode
from workbench.demos.gpt2 import PagedBook


def test_paged_book_drives_the_decode_rung_like_the_demo():
    """B=2, H=2 (D=16), block 4: a 6-token prompt, then 3 generated tokens, each written to its
    slot and attended by the decode rung over the shuffled pool, against float64 every step."""
    rng = np.random.default_rng(3)
    B, H, D, bs, prompt, steps = 2, 2, 16, 4, 6, 3
    capacity = prompt + steps
    blocks = PagedBook.blocks_for(capacity, bs)
    book = PagedBook(B, B * blocks + 3, bs, blocks, seed=1)
    for b in range(B):
        book.reserve(b, capacity)
    assert sorted(book.table.ravel().tolist()) == sorted(set(book.table.ravel().tolist()))  # no block twice
    assert not all(np.all(np.diff(row) == 1) for row in book.table)  # shuffled, not in order
    k = rng.standard_normal((B, H, capacity, D)).astype(np.float32)
    v = rng.standard_normal((B, H, capacity, D)).astype(np.float32)
    kc = np.full((book.num_blocks, H, bs, D), np.nan, np.float32)  # unused slots poisoned
    vc = kc.copy()
    blk, off = book.slots(0, prompt)
    kc[blk, :, off] = k[:, :, :prompt].transpose(0, 2, 1, 3)  # the demo's prefill write
    vc[blk, :, off] = v[:, :, :prompt].transpose(0, 2, 1, 3)
    for pos in range(prompt, capacity):
        blk, off = book.slots(pos, pos + 1)
        kc[blk[:, 0], :, off[0, 0]] = k[:, :, pos]  # the demo's per-step write
        vc[blk[:, 0], :, off[0, 0]] = v[:, :, pos]
        q = rng.standard_normal((B, H, 1, D)).astype(np.float32)
        lens = np.full(B, pos + 1, np.int32)
        got = decode(q, kc, vc, book.table, lens)
        ref, _ = reference.attention(q, k[:, :, : pos + 1], v[:, :, : pos + 1], causal=True)
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def test_paged_book_refuses_what_it_cannot_hold():
    book = PagedBook(2, 3, 4, 2, seed=0)
    book.reserve(0, 8)  # two blocks
    with pytest.raises(ValueError, match="max_blocks"):
        book.reserve(1, 9)
    with pytest.raises(ValueError, match="out of blocks"):
        book.reserve(1, 5)  # needs two, one is left
    assert book.owned[1] == 1  # it took the one there was
    with pytest.raises(ValueError, match="reserve first"):
        book.slots(0, 5)
    mine = set(book.table[0, :2].tolist())
    book.release(0)
    assert (book.table[0] == -1).all() and mine <= set(book.free)
    book.reserve(1, 5)  # now there are blocks again
    assert book.owned[1] == 2
    with pytest.raises(ValueError, match="block_size must be an integer >= 1"):
        PagedBook(1, 4, 0, 2)


@pytest.mark.parametrize("argv", [["--contexts", "0"], ["--batch", "-1"], ["--tokens", "x"],
                                  ["--block-size", "0"]])
def test_arguments_are_checked(argv, capsys):
    with pytest.raises(SystemExit):
        demo_gpt2.parse_args(argv)
    err = capsys.readouterr().err
    assert "must be >= 1" in err or "not an integer" in err


def test_without_torch_on_a_gpu_it_says_so(tmp_path, capsys):
    torch, why = demo_gpt2._torch_or_reason()
    if torch is not None:
        pytest.skip("torch sees a GPU here")
    assert demo_gpt2.main(["--out", str(tmp_path)]) == 2
    assert "needs torch and a CUDA GPU" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing written
