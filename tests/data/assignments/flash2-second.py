# A second solution of assignment flash2, written from the hints alone (not from the reference),
# for the default path (the tile's row max from the engine's warp shuffles in row_max_, each
# lane's partial l added across the row's lanes by segment_sum before region 2).
# tests/test_grading_exports.py grades it; it must get every point.

### BEGIN SOLUTION
for a in range(RM):
    m_old = m[a]
    m_new = row_max_[a] if row_max_[a] > m_old else m_old
    base = float32(0.0) if m_new == NEG_INF else m_new  # exp2 of -inf - -inf would be NaN
    alpha = math.exp2(m_old - base)
    mine = float32(0.0)
    r = tr + TR * a
    for c in range(RN):
        p = math.exp2(s[a, c] - base)
        p_ij[r, tc + TC * c] = p
        mine += p
    l[a] = l[a] * alpha + mine
    for x in range(DT):
        acc[a, x] = acc[a, x] * alpha
    m[a] = m_new
### END SOLUTION

### BEGIN SOLUTION
for a in range(RM):
    row = i0 + tr + TR * a
    if row < n_q:
        seen = l[a] > float32(0.0)
        store_row(o, b, h, row, acc, a, float32(1.0) / l[a] if seen else float32(0.0))
        if tc == 0:
            lse[b, h, row] = LN2 * (m[a] + math.log2(l[a])) if seen else NEG_INF
### END SOLUTION
