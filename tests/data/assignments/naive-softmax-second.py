# A second solution of assignment naive-softmax, written from the hint alone (not from the
# reference): the three passes, exp(S - m) kept in S and multiplied by 1 / l at the end.
# tests/test_grading_exports.py grades it; it must get every point.

### BEGIN SOLUTION
row_max = float32(-math.inf)
j = 0
while j < n_kv:
    x = s[b, h, i, j]
    if x > row_max:
        row_max = x
    j += 1
if row_max == float32(-math.inf):  # the mask hides every key: P = 0, LSE = -inf
    for j in range(n_kv):
        s[b, h, i, j] = float32(0.0)
    lse[b, h, i] = float32(-math.inf)
else:
    total = float32(0.0)
    for j in range(n_kv):
        e = float32(math.exp(s[b, h, i, j] - row_max))
        s[b, h, i, j] = e
        total += e
    inv_total = float32(1.0) / total
    for j in range(n_kv):
        s[b, h, i, j] = s[b, h, i, j] * inv_total
    lse[b, h, i] = row_max + float32(math.log(total))
### END SOLUTION
