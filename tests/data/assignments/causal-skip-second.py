# A second solution of assignment causal-skip, written from the hint alone (not from the
# reference): the visible keys of the first and last row, clamped, then the tiles covering them.
# tests/test_grading_exports.py grades it; it must get every point.

### BEGIN SOLUTION
key_lo = first_key(i0, shift, left)
if key_lo < 0:
    key_lo = 0
key_hi = last_key(i_last, shift, right) + 1
if key_hi > n_kv:
    key_hi = n_kv
if key_hi <= key_lo:  # no key visible to any row of the block
    j_start = 0
    j_end = 0
else:
    j_start = key_lo // Bc
    j_end = -(-key_hi // Bc)
### END SOLUTION
