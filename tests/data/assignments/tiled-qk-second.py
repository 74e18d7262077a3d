# A second solution of assignment tiled-qk, written from the hint alone (not from the reference):
# the tiles loaded with a bounds test folded into one value, the product summed in a local.
# tests/test_grading_exports.py grades it; it must get every point.

### BEGIN SOLUTION
for d0 in range(0, dim, tile):
    d = d0 + tx
    qv = float32(0.0)
    if i < n_q and d < dim:
        qv = float32(q[b, h, i, d])
    q_tile[ty, tx] = qv
    kv = float32(0.0)
    if j0 + ty < n_kv and d < dim:
        kv = float32(k[b, h // group, j0 + ty, d])
    k_tile[ty, tx] = kv
    cuda.syncthreads()
    partial = float32(0.0)
    for c in range(tile):
        partial += q_tile[ty, c] * k_tile[tx, c]
    acc += partial
    cuda.syncthreads()
### END SOLUTION
