# Attack (issue 18): no kernel at all. launch() reads q, k and v element by element (on a GPU each
# read is a copy to the host), computes attention in NumPy on the host, and writes O and LSE back
# element by element. Its results are right; before the isolated grader it scored 18 of 18.
# The grader must refuse every call: the host read device memory, and no kernel was launched.
# Appended to a released online-softmax folder filled with the reference (it replaces launch()).


def launch(problem, config, q, k, v, o, lse, gpu):
    """Attention on the host, through device-array indexing."""
    if not gpu.live:  # the harness plans the launches first, with placeholder arrays
        return
    batch, heads, n_q, dim = q.shape
    lo, hi = problem.visible_range()
    for b in range(batch):
        for h in range(heads):
            hk = h // problem.group
            for i in range(n_q):
                row = np.array([q[b, h, i, d] for d in range(dim)], np.float64)
                keys = range(int(lo[i]), int(hi[i]))
                if not len(keys):
                    for d in range(dim):
                        o[b, h, i, d] = 0
                    lse[b, h, i] = -np.inf
                    continue
                kk = np.array([[k[b, hk, j, d] for d in range(dim)] for j in keys], np.float64)
                vv = np.array([[v[b, hk, j, d] for d in range(dim)] for j in keys], np.float64)
                s = kk @ row * problem.scale
                m = s.max()
                p = np.exp(s - m)
                out = p @ vv / p.sum()
                for d in range(dim):
                    o[b, h, i, d] = out[d]
                lse[b, h, i] = m + np.log(p.sum())
