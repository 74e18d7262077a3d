# A deliberately slow but correct solution of assignment online-softmax, for the GPU check of
# performance credit (scripts/gpu_assignments.py): it keeps O normalised after every K/V tile,
# as FlashAttention-1 does, O = (alpha·l / l_new)·O + Σ_c (P_c / l_new)·V_c, and it divides in the
# innermost loop: Bc·D + D IEEE divisions per row and tile (the compiler may not turn x / l into
# x·(1/l) without fast-math), where the reference divides D times per row, once, at the end.
# Fill a released folder with it: python -m workbench.course.assignments fill DIR --from THIS_FILE

### BEGIN SOLUTION
m_new = max(m, tile_scores(q_t, k_j, s, i, j0, n_kv, shift, scale, left, right))
if m_new > NEG_INF:  # else the row has seen no key yet: m, l, O stay -inf, 0, 0
    alpha = math.exp(m - m_new)
    l_tile = float32(0)
    for c in range(Bc):
        p = math.exp(s[c] - m_new)
        p_t[c, tx] = p
        l_tile += p
    l_new = alpha * l + l_tile
    for d in range(D):
        acc[d] = acc[d] * alpha * l / l_new  # O stays normalised (divided by l) after every tile
    for c in range(Bc):
        p = p_t[c, tx]
        for d in range(D):
            acc[d] += p * v_j[c, d] / l_new  # a division in the innermost loop: the slow part
    l = l_new
    m = m_new
### END SOLUTION

### BEGIN SOLUTION
if i < n_q:  # O is already normalised (zeros for a row that saw no key)
    for d in range(D):
        o[b, h, i, d] = acc[d]
    lse[b, h, i] = m + math.log(l) if l > float32(0) else NEG_INF
### END SOLUTION
