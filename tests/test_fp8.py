"""FP8 e4m3 storage emulation: the code table, rounding, and the error it brings to decode."""

import numpy as np

from workbench.demos import fp8


def test_e4m3_table_and_round_trip():
    t = fp8.DECODE_TABLE
    assert t[0x7E] == 448.0 and t[0x08] == 2.0 ** -6 and t[0x01] == 2.0 ** -9  # max, min normal, min sub
    assert np.isnan(t[0x7F]) and np.isnan(t[0xFF]) and t[0x80] == 0.0
    finite = t[~np.isnan(t)]
    codes, s = fp8.encode(finite, scale=1.0)
    np.testing.assert_array_equal(fp8.decode(codes, s), finite)  # every e4m3 number is exact


def test_encode_rounds_to_nearest_with_per_tensor_scale():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(10000).astype(np.float32) * 3
    codes, s = fp8.encode(x)
    assert s == np.float32(np.abs(x).max() / 448)
    y = fp8.decode(codes, s)
    # nearest: no e4m3 value (times the scale) is closer to x than the one chosen
    grid = fp8.DECODE_TABLE[~np.isnan(fp8.DECODE_TABLE)] * s
    best = np.abs(x[:, None] - grid[None, :]).min(axis=1)
    np.testing.assert_allclose(np.abs(x - y), best, rtol=0, atol=1e-7)
    rel = np.abs(x - y) / np.abs(x)
    assert rel[np.abs(x) > 64 * s].max() <= 2.0 ** -4 + 1e-6  # 3 mantissa bits: half an ulp
    assert fp8.storage_bytes(x.shape) == x.size + 4
