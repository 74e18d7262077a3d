# A second solution of assignment online-softmax, written from the hints alone (not from the
# reference): the tile's P summed as it is stored, the rescale folded into the P V loop.
# tests/test_grading_exports.py grades it; it must get every point.

### BEGIN SOLUTION
tile_max = tile_scores(q_t, k_j, s, i, j0, n_kv, shift, scale, left, right)
m_new = m if m > tile_max else tile_max
if m_new != NEG_INF:  # a row that has seen no key yet keeps m, l and acc as they are
    alpha = math.exp(m - m_new)
    tile_sum = float32(0.0)
    for c in range(Bc):
        p_t[c, tx] = math.exp(s[c] - m_new)
        tile_sum += p_t[c, tx]
    l = l * alpha + tile_sum
    for d in range(D):
        total = acc[d] * alpha
        for c in range(Bc):
            total += p_t[c, tx] * v_j[c, d]
        acc[d] = total
    m = m_new
### END SOLUTION

### BEGIN SOLUTION
if i < n_q:
    if l > float32(0.0):
        for d in range(D):
            o[b, h, i, d] = acc[d] / l
        lse[b, h, i] = m + math.log(l)
    else:  # the row saw no key
        for d in range(D):
            o[b, h, i, d] = float32(0.0)
        lse[b, h, i] = NEG_INF
### END SOLUTION
