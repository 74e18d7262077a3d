"""Writes the course's notebooks (00-*.ipynb … 06-*.ipynb) from the cells below, without outputs.

    python notebooks/build.py          # rewrite every notebook
    python notebooks/build.py --check  # exit 1 if a committed notebook differs from what this writes

The .ipynb files are the deliverable (open them in Jupyter); this file is where they are edited, so
that a change is one reviewable diff and the notebooks stay free of outputs. Every code cell uses
the package (workbench.*) and never copies a kernel: kernels are shown with workbench.course.helpers.show.

Each notebook runs top to bottom in the simulator (no GPU: tiny sizes, committed H100 data from
figures/h100/) and on a GPU (real sizes, measured live); tests/test_notebooks.py runs them all.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent


def md(text: str):
    return nbformat.v4.new_markdown_cell(textwrap.dedent(text).strip("\n"))


def code(text: str):
    return nbformat.v4.new_code_cell(textwrap.dedent(text).strip("\n"))


SETUP = code("""
    import numpy as np
    import matplotlib.pyplot as plt

    import workbench
    from workbench import Problem, reference
    from workbench.course import helpers as course
    from workbench.course import diagrams
    from workbench.harness.verify import check

    SIM = course.simulator()  # no GPU: Numba's CUDA simulator, tiny sizes, committed H100 data
    print(course.banner())
""")

NOTEBOOKS: dict[str, list] = {}

# ==================================================================================================
NOTEBOOKS["00-mental-model"] = [
    md("""
    # 00 — The problem and the mental model

    This course climbs a ladder of attention kernels written in Numba CUDA, from attention exactly
    as it is written on paper to FlashAttention-2, and measures every step. Each notebook teaches one
    rung or one idea: a short explanation, a picture, the kernel's source *as it is in the package*
    (never a copy), a correctness check against float64 NumPy, a measurement, and 2–3 exercises.

    **Two modes.** Without a GPU, `import workbench` switches on Numba's CUDA simulator: every CUDA
    thread becomes a Python thread, so the same kernels run on the CPU, slowly, at tiny sizes, and
    are checked exactly as on a GPU. No time is measured there; the notebooks show the numbers
    measured on an H100 instead (committed under `figures/h100/`, each file with its device, date
    and command) and say so. On a GPU, the same cells run at real sizes and measure live.

    This notebook builds the mental model the rest needs: what attention computes, where its N²
    lives, how many FLOPs and bytes each phase costs, what the GPU's memory hierarchy looks like,
    and how to run, check and measure things here.
    """),
    SETUP,
    md("""
    ## 1. Attention in NumPy

    One head of attention takes N queries, N keys and N values, each a row of D numbers — matrices
    Q, K, V of shape N × D — and computes

    $$S = \\text{scale}\\cdot QK^\\top \\quad(N\\times N),\\qquad P = \\text{softmax}_\\text{rows}(S),\\qquad O = PV \\quad(N\\times D)$$

    with scale = 1/√D. Row i of S scores query i against every key; softmax turns the row into
    weights that sum to 1; row i of O is the weighted average of the value rows. In a model there
    are B sequences (batch) and H heads, so the arrays are (B, H, N, D) and the same thing happens
    for each of the B·H (batch, head) pairs. Here it is, three lines of NumPy:
    """),
    code("""
    rng = np.random.default_rng(0)
    N, D = 6, 4
    q, k, v = (rng.standard_normal((N, D)) for _ in range(3))

    s = q @ k.T / np.sqrt(D)                      # S: N × N scores
    p = np.exp(s - s.max(axis=1, keepdims=True))  # subtract each row's max m: exp never overflows
    p /= p.sum(axis=1, keepdims=True)             # divide by the row's sum l: rows of P sum to 1
    o = p @ v                                     # O: N × D
    print("S", s.shape, " P", p.shape, " O", o.shape, " row sums of P:", p.sum(axis=1).round(12))
    """),
    md("""
    Subtracting the row max m changes nothing mathematically (it cancels in the division) but keeps
    every exponent ≤ 0, so `exp` cannot overflow: in float32, e^89 is already infinite. The kernels
    also keep, per row, LSE = m + log l (l the row's sum of e^(s−m)), the log of the softmax's
    normaliser, which a backward pass needs.

    `workbench.reference.attention` is this computation in float64, with masks and multi-head
    shapes: the truth every kernel is checked against.
    """),
    code("""
    o_ref, lse_ref = reference.attention(q[None, None], k[None, None], v[None, None])  # (B=1, H=1, N, D)
    print("max |NumPy above - reference|:", np.abs(o_ref[0, 0] - o).max())
    print("LSE = m + log(l):", np.allclose(lse_ref[0, 0], s.max(1) + np.log(np.exp(s - s.max(1, keepdims=True)).sum(1))))
    """),
    md("""
    ## 2. Where the N² lives

    Q, K, V and O grow like N (N·D numbers per head). S and P grow like N²: N·N numbers per head.
    Written as three separate steps, attention has to *store* S (then P) somewhere between the
    steps, and for long sequences that matrix dwarfs everything else:
    """),
    code("""
    for n in (512, 2048, 8192, 32768):
        p = Problem(batch=8, heads=32, seq_q=n, head_dim=64, dtype="float16")
        s_bytes = 4 * p.batch * p.heads * p.seq_q * p.seq_kv  # one float32 score matrix per (batch, head)
        print(f"N = {n:6d}   Q, K, V, O, LSE: {p.io_bytes() / 2**30:7.2f} GiB    S (float32): {s_bytes / 2**30:9.2f} GiB")
    diagrams.bytes_vs_seq(batch=8, heads=32, head_dim=64, dtype="float16")
    plt.show()
    """),
    md("""
    At 32K tokens, one score matrix for the batch is 1 TiB — no GPU holds it. FlashAttention's whole
    point is to never store S: compute it a tile at a time, on chip, and fold each tile into the
    output at once (notebook 03 shows how that is possible for a softmax).

    ## 3. FLOPs and bytes of each phase

    A GPU kernel is limited by one of two budgets: arithmetic (FLOP/s) or traffic to device memory
    (bytes/s). A useful first model: time ≥ max(FLOPs / peak FLOP/s, bytes / bandwidth). The ratio
    FLOPs / bytes of a computation is its *arithmetic intensity*; where it is below the GPU's
    *ridge point* (peak FLOP/s ÷ bandwidth) the kernel waits on memory, above it on arithmetic.

    `workbench.bench.traffic_model.phases` counts each phase of unfused attention: its FLOPs (2·D per visible
    pair for QKᵀ and again for PV; ~5 per pair for the softmax) and the fewest bytes it could move
    (every operand read once, every result written once). The ceilings are the ones we measured on
    the H100 (cuBLAS SGEMM in float32, and a device-memory copy), kept in `workbench.bench.plots.MEASURED_PEAKS`.
    """),
    code("""
    from workbench.bench import plots
    from workbench.bench import traffic_model

    peak_tflops, peak_gbps = plots.MEASURED_PEAKS["h100"]
    ridge = peak_tflops * 1e12 / (peak_gbps * 1e9)
    print(f"H100 (measured): {peak_tflops} TFLOP/s float32, {peak_gbps:,.0f} GB/s -> ridge point {ridge:.0f} FLOP/byte\\n")

    problem = Problem(batch=8, heads=32, seq_q=4096, head_dim=64, dtype="float32")
    print(f"{problem.describe()}")
    print(f"{'phase':16s} {'GFLOP':>8s} {'GB moved':>9s} {'FLOP/B':>8s} {'floor ms':>9s}  bound by")
    for ph in traffic_model.phases(problem):
        t_flop = ph.flops / (peak_tflops * 1e12) * 1e3
        t_byte = ph.min_bytes / (peak_gbps * 1e9) * 1e3
        print(f"{ph.name:16s} {ph.flops / 1e9:8.0f} {ph.min_bytes / 1e9:9.2f} {ph.intensity:8.1f} "
              f"{max(t_flop, t_byte):9.1f}  {'memory' if t_byte > t_flop else 'compute'}")
    """),
    md("""
    Read the table from the top. The two matrix products do 2·N²·D FLOPs each, but they also write
    or read the N² matrix, so their intensity is only about D/2 — near the ridge. The softmax does
    almost no arithmetic per byte: it is pure memory traffic. Run one after the other, the three
    phases cannot beat the sum of their floors. The fused forward does the same FLOPs but moves only
    Q, K, V, O and LSE: its intensity is about N / itemsize (1020 FLOP/byte here), far above the
    ridge, so it can be compute-bound. That floor is what the ladder climbs towards.

    ## 4. The GPU, in one page

    A CUDA **kernel** is a function that many **threads** run at once, each on its own piece of the
    data. Threads come in **blocks** (also called CTAs, cooperative thread arrays) of up to 1024
    threads; a **grid** of blocks covers the problem. Each thread reads its coordinates from
    `cuda.blockIdx`, `cuda.blockDim` and `cuda.threadIdx`. A block runs on one **SM** (streaming
    multiprocessor; the H100 has 132) in groups of 32 threads called **warps**, which execute in
    lockstep. In Numba a kernel is a Python function decorated with `@cuda.jit`, launched as
    `kernel[grid, block](arguments)`.

    Where data lives decides how fast a kernel is:

    - **registers**: private to a thread, the operands of every instruction;
    - **shared memory**: per block, on the SM, shared by the block's threads (Numba: `cuda.shared.array`,
      at most 48 KiB per block declared statically); threads wait for each other at a barrier,
      `cuda.syncthreads()`, before reading what others wrote;
    - **L2 cache**: on chip, shared by all SMs;
    - **device memory** (HBM): the 80 GB where arrays live between kernels, the slowest level.

    The smallest kernel of the ladder, rung 1's O = PV: thread (d, i) of the grid computes one
    element of O, reading a row of P and a column of V straight from device memory.
    """),
    code("""
    from workbench.kernels import naive

    course.show(naive.pv)
    """),
    code("""
    hbm = None if SIM else course.copy_bandwidth_gbps()  # on a GPU: a 1 GiB device-to-device copy, timed now
    levels = course.hierarchy(hbm)
    for lv in levels:
        print(f"{lv['name']:20s} {diagrams.human_bytes(lv['capacity']):>9s}  {lv['scope']:45s} {lv['bandwidth']}")
    diagrams.memory_hierarchy(levels)
    plt.show()
    """),
    md("""
    The numbers to keep in mind: an SM has 228 KiB of shared memory and 256 KiB of registers,
    while a single score matrix at N = 4096 is 64 MiB per head. Every rung of the ladder is a
    different answer to "which of these numbers stays on chip, and how often does it travel?".

    ## 5. How to run things here

    `workbench.attention` is the whole API: q of shape (B, H, Nq, D), k and v of shape
    (B, Hkv, Nkv, D), a rung's name, and options (`causal`, `window`, `config` for tile sizes).
    `workbench.LADDER` lists the rungs in course order, each with its one-line lesson.
    """),
    code("""
    print("mode:", workbench.mode(), "-", workbench.harness.device.mode_reason())
    for rung in workbench.LADDER:
        print(f"{rung.index}  {rung.name:7s} {rung.lesson}")
    """),
    code("""
    # A problem that suits the mode: tiny in the simulator (each CUDA thread is a Python thread).
    problem = Problem(batch=1, heads=2, seq_q=16, head_dim=16) if SIM else Problem(batch=1, heads=8, seq_q=1024, head_dim=64)
    q, k, v = problem.make_inputs(seed=0)
    o = workbench.attention(q, k, v, kernel="flash2")
    o_ref, _ = reference.attention(q, k, v)
    print(problem.describe(), "->", o.shape, o.dtype, " max |error| vs float64:", np.abs(o - o_ref).max())
    """),
    md("""
    A single comparison can be lucky. `workbench.harness.verify.check(kernel, problem)` is the
    ladder's one correctness rule: fresh random inputs, outputs poisoned with NaN before each launch
    (an element a kernel forgets to write stays NaN), two launches that must agree bit for bit (a
    difference means a race), and errors against float64 within a stated tolerance (float32:
    relative Frobenius error ≤ 2e-5). It returns a report:
    """),
    code("""
    for name in ("naive", "flash2"):
        print(check(name, problem, seed=1))
    """),
    md("""
    Measuring: `course.measure(kernels, problems)` runs the harness's `compare.run_point` on each —
    verify, then (on a GPU) time with CUDA events (median of several runs, L2 flushed before each)
    and measure peak device memory. In the simulator it verifies and reports the memory model only,
    so below, without a GPU, the table shows the H100 measurements of the whole ladder at the seed
    configuration instead (`figures/h100/ladder.json`).
    """),
    code("""
    if SIM:
        data = course.committed("ladder")
        print(course.source_line(data))
        points = course.select(data["points"], dtype="float32", seq_q=4096)
    else:
        points = course.measure(["naive", "tiled", "online", "flash2"], [Problem(8, 32, 32, 1024, 1024, 64, "float32")])
        course.record("00-mental-model", points)
    print(course.table(points))
    """),
    md("""
    Set the table against section 3. At N = 4096 the fused forward's compute floor in float32 is
    about 21 ms; the naive rung is far above every floor (it re-reads its operands from device
    memory many times over, notebook 01), and flash2 gets within a small factor of the floor.
    The next notebooks walk up the ladder one rung at a time.

    ## Exercises

    1. With `traffic_model.phases`, find the sequence length N at which the N² score matrix makes up more
       than 90 % of the bytes of the S = QKᵀ phase (B=8, H=32, D=64, float32). Predict it first:
       S is 4·N² bytes per head, Q and K are 2·N·D·4.
    2. The fused forward's intensity is `problem.flops() / problem.min_bytes()`. Predict how it
       changes when D goes from 64 to 128 at N = 4096, and when the dtype goes from float32 to
       float16; check.
    3. One attention layer of Llama-2-7B at 32K context is B=1, H=32, D=128. How many GiB would its
       float32 score matrix take, and does it fit in the H100's 80 GB? (Use `Problem` and the
       formula from section 2.)
    """),
]

# ==================================================================================================
NOTEBOOKS["01-naive"] = [
    md("""
    # 01 — Rung 1, naive: attention as written

    The first rung does exactly what notebook 00 wrote in NumPy, one CUDA kernel per line:

    1. `scores`: S = scale·QKᵀ, one thread per element (i, j) of S;
    2. `softmax`: P = softmax(S) in place, one thread per row;
    3. `pv`: O = PV, one thread per element (i, d) of O.

    S lives in device memory between the kernels: B·H·N² float32 numbers. Nothing is clever here on
    purpose — this is the baseline every later rung is measured against, and it shows both costs
    that the ladder removes: operands re-read from device memory by neighbouring threads (rung 2
    fixes that) and the N² buffer (rung 3).
    """),
    SETUP,
    code("""
    from workbench.bench import plots
    from workbench.harness import memory, runner
    from workbench.kernels import get, naive

    rung = get("naive")
    print(rung)
    """),
    md("""
    ## The code

    Here is the whole module as it is in the package: the docstring, the three kernels, and
    `launch`, which the harness calls. Things to look for:

    - each kernel computes its thread's coordinates from `blockIdx`, `blockDim` and `threadIdx`,
      and returns early when they fall outside the matrix (grids are rounded up to whole blocks);
    - `blockIdx.z` (or `.y`) numbers the (batch, head) pairs; query head h reads key/value head
      `h // group` (grouped-query attention, notebook 06);
    - `visible(i, j, ...)` is the mask (causal, sliding window; notebook 06) — a masked score is −∞,
      so its probability is 0;
    - every sum is accumulated in float32 (`float32(0)`, never a bare Python float, which would
      silently turn the kernel into float64 arithmetic);
    - `launch` asks `gpu.empty` for the N² buffer S, then launches the three kernels through
      `gpu.launch(kernel, grid, block, *args)`.
    """),
    code("""
    course.show(naive)
    """),
    md("""
    ## Which block computes what

    The launch plan comes from the harness: `runner.plan` runs the rung's `launch` with placeholder
    arrays and records every kernel's grid and block without launching anything (this is how a bad
    configuration becomes a `ValueError` before any launch). The picture draws that plan on a small
    problem, with 8×8-thread blocks so the tiles are visible.
    """),
    code("""
    pic = Problem(1, 1, 1, 40, 40, 24)
    config = {"block_xy": 8, "block_rows": 16}
    for launch in runner.plan(rung, pic, runner.check_config(rung, pic, config)):
        blocks = int(np.prod(launch.grid))
        print(f"{launch.name:8s} grid {launch.grid} x block {launch.block}: {blocks} blocks, {blocks * launch.threads} threads")
    diagrams.naive_launches(pic, config)
    plt.show()
    """),
    md("""
    Note the threads past the matrix edge (40 is not a multiple of 8): they exist, and the
    `if i >= n_q or j >= n_kv: return` lines keep them from writing out of bounds.

    ## Run it and check it

    In the simulator the sizes are tiny, but the kernels, the launch and the check are the same as
    on a GPU. First by hand, against the float64 reference, then with the harness's check (fresh
    inputs, NaN-poisoned outputs, two launches compared bit for bit):
    """),
    code("""
    problem = Problem(1, 2, 2, 16, 16, 16) if SIM else Problem(1, 8, 8, 1024, 1024, 64)
    q, k, v = problem.make_inputs(seed=0)
    o, lse = workbench.attention(q, k, v, kernel="naive", return_lse=True)
    o_ref, lse_ref = reference.attention(q, k, v)
    print(problem.describe(), " max |O error|:", np.abs(o - o_ref).max(), " max |LSE error|:", np.abs(lse - lse_ref).max())
    print(check("naive", problem, seed=1))
    print(check("naive", Problem(1, 1, 1, 13, 21, 16, causal=True) if SIM else Problem(1, 8, 8, 1000, 2049, 64, causal=True), seed=2))  # Nq != Nkv, causal
    """),
    md("""
    ## The N² buffer

    `naive.workspace_bytes` is the memory model of the rung's scratch: one float32 score matrix.
    `harness.memory.model_bytes` adds the call's own arrays (Q, K, V, O, LSE). On a GPU the harness
    also *measures* peak memory, and the two agree (see the table at the end).
    """),
    code("""
    for n in (1024, 4096, 16384, 32768):
        p = Problem(8, 32, 32, n, n, 64, "float32")
        cfg = naive.DEFAULT_CONFIG
        print(f"N = {n:6d}: Q, K, V, O, LSE {p.io_bytes() / 2**30:6.2f} GiB + S {naive.workspace_bytes(p, cfg) / 2**30:8.2f} GiB"
              f" = {memory.model_bytes(rung, p, cfg) / 2**30:8.2f} GiB")
    """),
    md("""
    ## The traffic

    Memory is one cost; traffic is the other. Thread (i, j) of `scores` reads row i of Q and row j
    of K; so does every other thread — each row of Q is read N times, once per key. `pv` reads a
    row of P and a column of V per output element, so P is read D times. `workbench.bench.traffic_model.requested`
    counts what the kernels' loads and stores ask of device memory, before any cache:
    """),
    code("""
    from workbench.bench import traffic_model

    p = Problem(8, 32, 32, 4096, 4096, 64, "float32")
    asked = traffic_model.requested("naive", p)
    for array, n_bytes in asked.items():
        print(f"{array:5s} {n_bytes / 1e9:10.2f} GB")
    print(f"total {sum(asked.values()) / 1e9:10.2f} GB, {sum(asked.values()) / p.min_bytes():.0f}x the "
          f"{p.min_bytes() / 1e9:.2f} GB that the problem needs")
    """),
    md("""
    Thousands of times the minimum. The L1 and L2 caches catch much of it on a real GPU (threads of a
    block read the same rows at about the same time), which is why the measured time below is not
    thousands of times the floor — but it is far from the 51.6 TFLOP/s the H100 does in float32.

    ## Measure (GPU) or load (no GPU)
    """),
    code("""
    if SIM:
        data = course.committed("ladder")
        print(course.source_line(data))
        points = course.select(data["points"], kernel="naive", dtype="float32")
    else:
        points = course.measure(["naive"], [Problem(8, 32, 32, n, n, 64, "float32") for n in (512, 1024, 2048)])
        course.record("01-naive", points)
        data = {"provenance": workbench.harness.device.provenance(), "suite": "01-naive", "points": points}
    print(course.table(points))
    import tempfile
    course.show_png(plots.time_vs_seq(data | {"points": points}, f"{tempfile.mkdtemp()}/naive-time.png"))
    """),
    md("""
    Time grows like N² (doubling N quadruples it), and the rate is about 1 TFLOP/s, a fiftieth of
    what the chip can do. Peak memory equals the model: the score matrix is the memory.

    ## Exercises

    1. Change `block_xy` to 4 in `config` above and predict the grid of `scores` for the 40 × 40
       picture problem; check with `runner.plan`. What limits `block_xy` from above? (Try 64 and
       read the `ValueError`.)
    2. How many times does `scores` read each element of K (no mask)? Predict from the kernel, then
       check: `traffic_model.requested("naive", p)["K"]` divided by the bytes of K.
    3. With `causal=True`, which threads of `scores` skip the dot product? Predict the Q traffic of
       a causal N = 4096 problem as a fraction of the full one, and check with
       `Problem(...).visible_pairs()` and `traffic_model.requested`.
    """),
]

# ==================================================================================================
NOTEBOOKS["02-tiled"] = [
    md("""
    # 02 — Rung 2, tiled: reuse through shared memory

    In rung 1, the T threads that compute S[i, j], S[i, j+1], …, S[i, j+T−1] all read row i of Q
    from device memory, each for itself. Rung 2 keeps the same three kernels and the same N²
    buffer, and changes one thing: a block of T × T threads first copies a T × T *tile* of each
    operand into shared memory — one element per thread — waits at a barrier, and then every
    thread reads what it needs from the tile. Each element fetched from device memory now serves T
    threads. This is the classic tiled matrix product.
    """),
    SETUP,
    code("""
    from workbench.bench import traffic_model
    from workbench.harness import runner
    from workbench.kernels import get, tiled

    rung = get("tiled")
    print(rung)
    """),
    md("""
    ## The picture

    The block that owns a T × T tile of S (T queries × T keys) needs rows i0…i0+T−1 of Q and rows
    j0…j0+T−1 of K, all D columns of each. It walks D in steps of T: at each step its T² threads
    load one T × T tile of Q and one of K (one element each), barrier, T multiply-adds each from
    shared memory, barrier, next step.
    """),
    code("""
    diagrams.tiled_step(n_q=32, n_kv=32, head_dim=24, T=8, block=(1, 2))
    plt.show()
    """),
    md("""
    ## The code

    `scores_kernel(tile)` builds the kernel for one tile size: shared arrays need shapes known when
    the kernel is compiled, so each tile size is its own compiled kernel (cached). Look for the two
    `cuda.syncthreads()` per step — the first so no thread reads a tile before it is complete, the
    second so no thread overwrites it while another still reads — and the K tile padded to T + 1
    columns (its reads go down a column; unpadded, they would all hit a few of shared memory's 32
    banks and queue up).
    """),
    code("""
    course.show(tiled.scores_kernel)
    """),
    md("""
    The softmax becomes a block per row whose threads stride over the row and combine their partial
    max and sum through a tree in shared memory; `pv` is tiled like `scores`. The rung's `needs`
    declares the shared memory its largest kernel uses, and the harness refuses configurations over
    the device's limits before any launch:
    """),
    code("""
    course.show(tiled.needs, numbers=False)
    p = Problem(8, 32, 32, 4096, 4096, 64)
    for t in (4, 8, 16, 32, 64):
        cfg = {"tile": t, "softmax_threads": 128}
        try:
            runner.check_config(rung, p, cfg)
            print(f"tile {t:2d}: {t * t:4d} threads per block, {tiled.needs(p, cfg).shared_bytes:6d} bytes of shared memory: ok")
        except ValueError as err:
            print(f"tile {t:2d}: ValueError: {err}")
    """),
    md("""
    ## Traffic: naive against tiled

    `traffic_model.requested` counts, per array, the bytes each rung's loads and stores ask for. The heat
    map shows how many times each array crosses the bus: Q, K and V now travel N/T times instead of
    N times (T = 16 at the GPU's default). S/P barely improves: it is still written as S, read three
    times and written again as P by the softmax, and read ⌈D/T⌉ times by `pv` (rung 1: D times).
    That N² traffic is rung 3's target.
    """),
    code("""
    diagrams.traffic_table(Problem(8, 32, 32, 4096, 4096, 64, "float32"), rungs=("naive", "tiled"))
    plt.show()
    """),
    md("""
    ## Check it

    Any tile size must give the same answer (within float32 rounding): the tests of the package run
    the simulator's small tiles, and here two more, on a length that is not a multiple of the tile.
    """),
    code("""
    problem = Problem(1, 1, 1, 13, 13, 16) if SIM else Problem(1, 8, 8, 1023, 1023, 64)
    for cfg in ({"tile": 4, "softmax_threads": 4}, {"tile": 8, "softmax_threads": 8}) if SIM else ({"tile": 8}, {"tile": 32}):
        print(cfg, check("tiled", problem, seed=3, config=cfg))
    """),
    md("""
    ## Measure (GPU) or load (no GPU)
    """),
    code("""
    if SIM:
        data = course.committed("ladder")
        print(course.source_line(data))
        points = course.select(data["points"], kernel=("naive", "tiled"), dtype="float32")
    else:
        points = course.measure(["naive", "tiled"], [Problem(8, 32, 32, n, n, 64, "float32") for n in (512, 1024, 2048)])
        course.record("02-tiled", points)
    print(course.table(points))
    for n in sorted({pt["seq_q"] for pt in points}):
        a, b = course.ms(points, "naive", seq_q=n), course.ms(points, "tiled", seq_q=n)
        if a and b:
            print(f"N = {n:5d}: tiled is {a / b:.1f}x faster than naive")
    """),
    md("""
    Several times faster, but not T² or even T times: the caches had already absorbed part of
    naive's re-reads, and the N² buffer's traffic, which tiling does not touch, is now most of what
    is left.

    ## Exercises

    1. Predict the shared memory of the `scores` kernel at tile 12 (a Q tile and a padded K tile
       of float32), then check with `tiled.needs(p, {"tile": 12, "softmax_threads": 128})`. Which
       kernel sets `shared_bytes` at tile 4?
    2. At tile 16 and N = 4096, how many times is each element of Q read? Compute ⌈N/T⌉ and
       compare with `traffic_model.requested("tiled", p)["Q"]` over the bytes of Q.
    3. Try `softmax_threads=6` in a config and read the error. Why does the tree reduction in the
       softmax kernel (`course.show(tiled.softmax_kernel)`) need a power of two?
    """),
]

# ==================================================================================================
NOTEBOOKS["03-online-softmax"] = [
    md("""
    # 03 — Rung 3, online softmax: one pass, no N² buffer

    Rungs 1 and 2 store S because a row's softmax needs the whole row: its max m and its sum l are
    known only after the last key. The *online softmax* removes that need: walk the keys in tiles,
    keep a running max and a running sum, and fix up what was accumulated whenever the max grows.
    With it, the three phases fuse into one kernel that never holds more than one tile of scores.
    """),
    SETUP,
    md("""
    ## Deriving the recurrence

    Take one query row with scores s₁…s_N and values v₁…v_N. The answer is
    o = Σⱼ e^(sⱼ−m) vⱼ / Σⱼ e^(sⱼ−m) for *any* constant m (it cancels); the max is used only so
    that no exponent is positive.

    Split the keys into two tiles A and B. After tile A alone keep
    m_A = max over A, l_A = Σ_A e^(sⱼ−m_A), õ_A = Σ_A e^(sⱼ−m_A) vⱼ.
    When tile B arrives, the new max is m = max(m_A, max over B). Everything in l_A and õ_A was
    computed relative to m_A; relative to m, each term is off by the same factor
    α = e^(m_A − m), so

    l = α·l_A + Σ_B e^(sⱼ−m),  õ = α·õ_A + Σ_B e^(sⱼ−m) vⱼ,

    and o = õ / l at the end. The same step applies to a third tile, and every tile after: that is
    the recurrence, with P_ij = e^(S_ij − m_new) for the tile:

    m_new = max(m, rowmax(S_ij)); α = e^(m − m_new); l = α·l + rowsum(P_ij); O = α·O + P_ij V_j; m = m_new.

    ## Checking it in NumPy

    Here it is on one row, tile by tile, against the softmax of the whole row:
    """),
    code("""
    rng = np.random.default_rng(0)
    n, d, Bc = 40, 4, 8
    s = 2 * rng.standard_normal(n) + np.linspace(0, 4, n)  # one row of scores (rising: the max moves)
    vals = rng.standard_normal((n, d))      # the value rows
    exact = np.exp(s - s.max()) / np.exp(s - s.max()).sum() @ vals

    m, l, o = -np.inf, 0.0, np.zeros(d)
    m_steps, l_steps, l_rescaled = [], [], []
    for j0 in range(0, n, Bc):
        tile, v_tile = s[j0:j0 + Bc], vals[j0:j0 + Bc]
        m_new = max(m, tile.max())
        alpha = np.exp(m - m_new)           # rescales what was accumulated under the old max
        p = np.exp(tile - m_new)
        l_rescaled.append(alpha * l)
        l = alpha * l + p.sum()
        o = alpha * o + p @ v_tile
        m = m_new
        m_steps.append(m)
        l_steps.append(l)
    print("online o / l:", (o / l).round(6))
    print("exact:       ", exact.round(6), " max difference", np.abs(o / l - exact).max())
    diagrams.running_max_sum(m_steps, l_steps, s.max(), np.exp(s - s.max()).sum(), Bc, l_rescaled)
    plt.show()
    """),
    md("""
    Every time the running max jumps, what was summed so far shrinks by α = e^(m_old − m_new) < 1
    (the hollow triangles) before the new tile's terms are added; after the last tile, m and l are
    exactly the whole row's. Forget the rescale and the answer is wrong:
    """),
    code("""
    m, l, o = -np.inf, 0.0, np.zeros(d)
    for j0 in range(0, n, Bc):
        tile, v_tile = s[j0:j0 + Bc], vals[j0:j0 + Bc]
        m = max(m, tile.max())
        p = np.exp(tile - m)
        l, o = l + p.sum(), o + p @ v_tile  # no alpha
    print("without the rescale, max difference:", np.abs(o / l - exact).max())
    """),
    md("""
    The package keeps this recurrence for whole (B, H, N, D) problems in
    `reference.online_attention` (float64, with masks): any tile size gives the reference's answer.
    """),
    code("""
    problem = Problem(1, 2, 2, 50, 50, 8, causal=True)
    q, k, v = problem.make_inputs(seed=0)
    o_ref, lse_ref = reference.attention(q, k, v, causal=True)
    for block_kv in (1, 7, 16, 50):
        o_on, lse_on = reference.online_attention(q, k, v, block_kv=block_kv, causal=True)
        print(f"block_kv {block_kv:2d}: max |O diff| {np.abs(o_on - o_ref).max():.1e}, max |LSE diff| {np.abs(lse_on - lse_ref).max():.1e}")
    """),
    md("""
    ## The kernel

    Rung 3 turns the recurrence into one kernel. The grid is (Tr, B·H): block (i, bh) owns the
    query block Q_i of Br rows, one thread per row. The block walks the Tc KV tiles K_j, V_j of Bc
    keys; all its threads load each tile into shared memory together (barrier), then each thread
    computes its row's Bc scores and applies the update above to its own m, l and O row, which stay
    in registers for the whole loop. Every block runs at once on different SMs; the numbers are the
    step at which a block computes each tile:
    """),
    code("""
    diagrams.schedule("online", n_q=32, n_kv=32, Br=8, Bc=8)
    plt.show()
    """),
    code("""
    from workbench.kernels import get, online

    rung = get("online")
    print(rung)
    course.show(online.build)
    """),
    md("""
    The names match the recurrence: `m`, `l`, `alpha`, `acc` (the unnormalised O), `m_new`; the
    division by l happens once, after the loop, together with LSE = m + log l. A row that has seen
    no key yet (possible under a mask) keeps m = −∞ and skips the update, so it never computes
    e^(−∞ − (−∞)).

    ## Shared memory and the tile sizes

    A block holds Q_iᵀ (D × Br), K_j and V_j (Bc × D each) and P_ijᵀ (Bc × Br) in shared memory,
    all float32. Br is also the number of threads. `online.shared_bytes` is the formula the
    harness checks against the 48 KiB static limit:
    """),
    code("""
    for D in (64, 128):
        cfg = online.DEFAULT_CONFIG
        print(f"D = {D:3d}, {cfg}: {online.shared_bytes(cfg['Br'], cfg['Bc'], D):6d} bytes of shared memory per block (limit 49152)")
    """),
    md("""
    ## Check it
    """),
    code("""
    cases = ([Problem(1, 2, 2, 21, 21, 16), Problem(1, 2, 1, 13, 29, 16, causal=True)] if SIM
             else [Problem(1, 8, 8, 1023, 1023, 64), Problem(1, 8, 2, 1000, 2049, 128, causal=True)])
    for p in cases:
        print(check("online", p, seed=4))
    """),
    md("""
    ## No N² anywhere

    The scratch the rung asks for (`workspace_bytes`) is zero: m and l live in registers, one
    tile's scores too. The memory of a call is just its inputs and outputs:
    """),
    code("""
    from workbench.harness import memory

    for n in (4096, 32768):
        p = Problem(8, 32, 32, n, n, 64, "float16")
        print(f"N = {n:5d}: naive {memory.model_bytes(get('naive'), p, {}) / 2**30:8.2f} GiB, "
              f"online {memory.model_bytes(rung, p, online.DEFAULT_CONFIG) / 2**30:6.2f} GiB")
    """),
    md("""
    ## Measure (GPU) or load (no GPU)
    """),
    code("""
    if SIM:
        data = course.committed("ladder")
        print(course.source_line(data))
        points = course.select(data["points"], kernel=("tiled", "online"), dtype="float32")
    else:
        points = course.measure(["tiled", "online"], [Problem(8, 32, 32, n, n, 64, "float32") for n in (1024, 2048)])
        course.record("03-online-softmax", points)
    print(course.table(points))
    """),
    md("""
    Faster than tiled *and* a fraction of the memory. K and V are still read once per query block
    (Tr times); rung 4 changes the loop order to read them once — and pays for it elsewhere.

    ## Exercises

    1. Change Bc in online's config to 16 and predict the shared memory at D = 64 and Br = 64,
       then check with `online.shared_bytes(64, 16, 64)` and with
       `runner.check_config(rung, Problem(head_dim=128), {"Br": 64, "Bc": 16})` (from
       `workbench.harness import runner`). What is the largest Bc that fits at D = 128?
    2. Rewrite the NumPy loop above in FlashAttention-1's form: keep o *normalised* after every
       tile (divide by the new l each step, rescaling the old o by α·l_old/l_new). Check it gives
       the same answer. Why is dividing once at the end cheaper?
    3. Run `reference.online_attention` with `block_kv=1` and with `block_kv` equal to N. Which of
       them is the classic three-pass softmax, and which is a purely streaming one?
    """),
]

# ==================================================================================================
NOTEBOOKS["04-flash1-vs-flash2"] = [
    md("""
    # 04 — Rungs 4 and 5: FlashAttention-1 against FlashAttention-2

    Both papers compute exactly the recurrence of notebook 03. They differ in *loop order* — which
    of the two loops (over query blocks i, over KV blocks j) is outside — and in how the work is
    spread over the GPU:

    ```
    FA1 (Dao et al. 2022, Algorithm 1)          FA2 (Dao 2023)
    for j = 1 … Tc:          # KV blocks        for i = 1 … Tr in parallel:  # a CTA per Q block
        load K_j, V_j                               load Q_i; m, l, O on chip
        for i = 1 … Tr:      # Q blocks             for j = 1 … Tc:          # KV blocks
            load Q_i, O_i, m_i, l_i  (HBM)              load K_j, V_j
            update O_i, m_i, l_i                        update m, l, O (no division)
            write O_i, m_i, l_i      (HBM)          O = O / l, LSE = m + log l; write O, LSE
    ```

    FA1 reads K and V from device memory once, but the running O, m, l of every query block must
    leave the chip between its visits and come back Tc times. FA2 keeps them on chip and reads K and
    V once per query block, and it has Tr times more independent blocks to spread over the SMs.
    """),
    SETUP,
    code("""
    from workbench.bench import plots
    from workbench.bench import traffic_model
    from workbench.harness import runner
    from workbench.kernels import flash1, flash2, get, online

    for name in ("online", "flash1", "flash2"):
        print(get(name))
    """),
    md("""
    ## Which CTA computes which tile, in which order
    """),
    code("""
    diagrams.loop_orders(n_q=32, n_kv=32, Br=8, Bc=8)
    plt.show()
    """),
    md("""
    ## The diff: online → flash1 is the loop swap

    Rung 4 was written as rung 3 with the loops swapped, so the diff of the two kernel functions
    *is* the lesson: the KV loop moves outside, the Q loop inside it, and O, m, l get a round trip
    through device memory (`o_acc`, `m_acc`, `l_acc`) at every KV block; the update takes the paper's
    form, with O normalised at each step.
    """),
    code("""
    cfg_sim = (8, 4, 16)  # Br, Bc, D: any sizes build the same source
    print(course.diff(course.kernel_function(online.build(*cfg_sim)), course.kernel_function(flash1.build(*cfg_sim))))
    """),
    md("""
    ## flash1 → flash2

    Rung 5 is a rewrite rather than an edit, so first the outline of each kernel — its loops,
    barriers, loads and stores — side by side:
    """),
    code("""
    keep = [r"^\\s*for (j|i0|j0)\\b", r"syncthreads\\(\\)", r"tile_scores\\(", r"^\\s*# (S = |O \\+= |m_new, alpha|O = O / l)", r"\\bload_(q|kv|tile|q_row)\\(", r"= (m_acc|l_acc|o_acc)\\[",
            r"^\\s+(o|lse|o_acc|m_acc|l_acc)\\[.*\\] =", r"^\\s*def (flash1|flash2)\\(", r"inv_l =", r"j_start =|j_end ="]
    k1 = course.kernel_function(flash1.build(8, 8, 16))
    k2 = course.kernel_function(flash2.build(8, 8, 16, 2, 2))
    print(course.side_by_side(course.skeleton(k1, keep), course.skeleton(k2, keep), names=("flash1", "flash2"), width=76))
    """),
    md("""
    What changed, and why (the module's docstring says more):

    - **loop order**: one Q block per CTA, KV tiles inside; O, m, l never leave the chip, so the
      `o_acc`/`m_acc`/`l_acc` round trips are gone, and Q is read once;
    - **normalise once**: the loop only rescales O by α; the division by l happens after the loop;
    - **skip masked tiles**: the loop runs over `j_start … j_end`, only the tiles the mask lets the
      block see (notebook 06);
    - **warps split the rows**: the CTA's threads form a grid; each computes a small RM × RN
      micro-tile of S and a slice of O in registers, so each value read from shared memory feeds
      several multiply-adds (register tiling); K_j and V_j share one shared buffer.

    The full diff of the two kernel functions, for reference:
    """),
    code("""
    print(course.diff(k1, k2, context=1))
    """),
    md("""
    ## Traffic

    What each loop order asks of device memory at the seed configuration (before caches; L2 serves
    part of online's and flash2's K/V re-reads, since the CTAs of a head read the same tiles at about
    the same time):
    """),
    code("""
    diagrams.traffic_table(Problem(8, 32, 32, 4096, 4096, 64, "float32"), rungs=("online", "flash1", "flash2"))
    plt.show()
    """),
    md("""
    ## Parallelism

    An H100 has 132 SMs. flash1 launches one CTA per (batch, head); flash2 one per (query block,
    batch, head). The launch plans, at the GPU's default tiles:
    """),
    code("""
    sms = workbench.harness.device.H100.sm_count
    for p in (Problem(8, 32, 32, 4096, 4096, 64), Problem(1, 8, 8, 8192, 8192, 64), Problem(1, 32, 32, 16384, 16384, 128)):
        for name, module in (("flash1", flash1), ("flash2", flash2)):
            r = get(name)
            (launch,) = runner.plan(r, p, dict(module.DEFAULT_CONFIG))
            ctas = int(np.prod(launch.grid))
            print(f"{p.describe():32s} {name}: {ctas:6d} CTAs of {launch.threads:3d} threads = {ctas / sms:6.1f} per SM")
    """),
    md("""
    At B = 1, H = 8, flash1 has 8 CTAs for 132 SMs: most of the GPU idles.

    ## Check both
    """),
    code("""
    cases = ([Problem(1, 2, 2, 24, 24, 16), Problem(1, 2, 1, 13, 29, 16, causal=True)] if SIM
             else [Problem(1, 8, 8, 1023, 1023, 64), Problem(1, 8, 2, 1000, 2049, 128, causal=True)])
    for name in ("flash1", "flash2"):
        for p in cases:
            print(check(name, p, seed=5))
    """),
    md("""
    ## Measure (GPU) or load (no GPU)

    The seed page claims FA2 is 2.3× faster than FA1 on an H100 (its versions table: 28.4 ms and
    12.5 ms at B=8, H=32, N=4096). Our rungs are not the papers' kernels (no tensor cores: Numba
    has no API for them), but the loop orders are theirs.
    """),
    code("""
    from workbench.bench import benchmark_page
    import tempfile

    page = claims.table("versions")
    print("page, forward ms:", {c: page.num("Forward time (ms)", c) for c in page.columns[1:]})
    if SIM:
        data = course.committed("seed-versions")
        print(course.source_line(data))
        points = data["points"]
    else:
        points = course.measure(["flash1", "flash2"], [Problem(8, 32, 32, n, n, 64, "float32") for n in (1024, 2048)])
        course.record("04-flash1-vs-flash2", points)
        data = {"provenance": workbench.harness.device.provenance(), "suite": "04-flash1-vs-flash2", "points": points}
    print(course.table(points))
    for n in sorted({pt["seq_q"] for pt in points}):
        for dtype in ("float32", "float16"):
            a, b = course.ms(points, "flash1", seq_q=n, dtype=dtype), course.ms(points, "flash2", seq_q=n, dtype=dtype)
            if a and b:
                print(f"N = {n}, {dtype}: flash2 is {a / b:.1f}x faster than flash1")
    if SIM:
        course.show_png(plots.bars(data, f"{tempfile.mkdtemp()}/versions-bars.png",
                                   plots.pick_claims(claims.claims_for("seed-versions"), "H100")))
    """),
    md("""
    flash1 is slower than rung 3 (notebook 03), which reads K/V many times: the O, m, l round trips,
    uncoalesced, cost far more than the K/V re-reads that L2 partly absorbs, and B·H CTAs leave SMs
    idle. flash2 is the fastest rung; the gap to SDPA's flash and cuDNN backends in the bars is
    mostly tensor cores and float16 arithmetic.

    ## Exercises

    1. Give flash1 `{"Br": 64, "Bc": 16}`. Predict how its Q and O/m/l traffic change
       (`traffic_model.requested("flash1", p, {"Br": 64, "Bc": 16})`) and whether the shared memory
       still fits at D = 128 (`flash1.shared_bytes`).
    2. Under `causal=True` at N = 4096, flash1 visits all Tr·Tc tiles. How many does flash2 compute?
       Use `diagrams.flash2_tile_kinds(p, 64, 32)` (0 = skipped).
    3. At D = 128, flash2 caps Br at 4096 // D. Use `flash2.tiles(p, flash2.DEFAULT_CONFIG)` to see
       the tiles, and compute the threads per CTA (TR·TC) and the shared memory
       (`flash2.shared_bytes`).
    """),
]

# ==================================================================================================
NOTEBOOKS["05-scaling-and-memory"] = [
    md("""
    # 05 — Scaling and memory: the seed page, reproduced and checked

    The project started from a page of FlashAttention benchmarks (`workbench.bench.benchmark_page` holds its tables
    exactly as written). This notebook puts its tables beside what we measured on an H100, redraws
    the figures from the committed data, and checks the page against itself and against physics:
    several of its numbers cannot be right.
    """),
    SETUP,
    code("""
    import tempfile
    import textwrap

    from workbench.bench import plots
    from workbench.bench import report
    from workbench.bench import benchmark_page
    from workbench.harness import memory
    from workbench.kernels import get

    def print_table(key):
        t = claims.table(key)
        print(f"{t.title}  [{t.key}]")
        for row in (t.columns, *t.rows):
            print("  " + " | ".join(f"{c:>12s}" for c in row))
        print()

    for key in ("h100-speed", "memory-standard", "memory-flash2", "versions"):
        print_table(key)
    """),
    md("""
    ## The page beside the H100

    The README's table, generated from `figures/h100/seed-speed.json` by `workbench.bench.report`: "Standard"
    is our naive rung and PyTorch's matmul-softmax-matmul, "Flash Attn 2" our flash2 rung and PyTorch
    SDPA's flash backend, FA3-class SDPA's cuDNN backend.
    """),
    code("""
    print(report.speed_table(str(course.figures_dir("h100"))))
    """),
    md("""
    ## The figures, redrawn from the committed data

    `workbench.bench.plots` draws from compare's JSON; here into a temporary folder (the committed PNGs in
    `figures/h100/` are the same drawings). Hollow markers on dotted lines are the page's claims.
    """),
    code("""
    tmp = tempfile.mkdtemp()
    drawings = (("seed-speed", plots.time_vs_seq), ("seed-memory", plots.memory_vs_seq),
                ("seed-scaling", plots.per_token))
    for suite, draw in drawings:
        data = course.committed(suite)
        print(course.source_line(data))
        claims = plots.pick_claims(claims.claims_for(suite), "H100")
        course.show_png(draw(data, f"{tmp}/{suite}.png", claims))
    """),
    md("""
    Three things to read off them: time grows like N² for every kernel, flash included (attention's
    FLOPs are N²; flash changes memory and traffic, not the FLOP count); memory grows like N² for
    the standard kernels and like N for flash, with the standard ones running out of the 80 GB;
    and per-token time is *not* constant for FA2, though per-token memory is.

    ## Where the page is wrong

    `claims.findings()` checks every table against its own arithmetic and against hardware facts
    (FLOPs from `Problem.flops`, the H100's datasheet peaks). Each finding starts with a verdict:
    """),
    code("""
    for text in claims.findings():
        print(textwrap.fill(text, 110, subsequent_indent="    "), end="\\n\\n")
    """),
    md("""
    Two of them by hand. The memory table's "Attention Matrix" at N = 512 is 8 MB; one float16 score
    matrix at B = 8, H = 32 is:
    """),
    code("""
    s_bytes = claims.score_matrix_bytes(8, 32, 512, 512, 2)
    print(f"{s_bytes / 2**20:.0f} MiB, {s_bytes / 2**20 / 8:.0f}x the page's 8 MB")
    flops = Problem(8, 32, 32, 4096, 4096, 64).flops()
    print(f"versions table: {flops:.3e} FLOP in 12.5 ms = {flops / 12.5e-3 / 1e12:.0f} TFLOP/s, the page says 420")
    """),
    md("""
    ## The memory model at the page's sizes

    Our memory model is the call's own arrays plus each rung's scratch, from the rung's
    `workspace_bytes` (naive: the N² matrix; flash2: nothing):
    """),
    code("""
    course.show(memory.model_bytes, numbers=False)
    course.show(get("naive").module.workspace_bytes, numbers=False)
    course.show(get("flash2").module.workspace_bytes, numbers=False)
    """),
    md("""
    At the page's rows, beside the page (in the simulator the rungs are first *verified* at a tiny
    size, which `measure` does):
    """),
    code("""
    tiny = [Problem(1, 2, 2, 16, 16, 16, "float16")] if SIM else []
    for pt in course.measure(["naive", "flash2"], tiny):
        print(f"{pt['kernel']:7s} {pt['problem']:30s} {pt['status']}")
    std, fa2 = claims.table("memory-standard"), claims.table("memory-flash2")
    print(f"\\n{'N':>6s} {'page Standard':>14s} {'naive model':>12s} {'page FA2':>9s} {'flash2 model':>13s}   (MiB; float16, B=8 H=32 D=64)")
    for n in std.seqs():
        p = Problem(8, 32, 32, n, n, 64, "float16")
        naive_mib = memory.model_bytes(get("naive"), p, {}) / 2**20
        fa2_mib = memory.model_bytes(get("flash2"), p, {}) / 2**20
        print(f"{n:6d} {claims.mib(std.cell(n, 'Total')):14,.0f} {naive_mib:12,.0f} {claims.mib(fa2.cell(n, 'Total')):9,.0f} {fa2_mib:13,.0f}")
    """),
    md("""
    ## Live (GPU)

    On a GPU, a slice of the page's memory table measured now — naive, flash2, PyTorch's standard
    attention and SDPA's flash backend at float16 — beside the committed H100 numbers.
    """),
    code("""
    if SIM:
        print("no GPU: nothing to measure live; the figures above are the committed H100 measurements")
    else:
        problems = [Problem(8, 32, 32, n, n, 64, "float16") for n in (512, 2048)]
        points = course.measure(["naive", "flash2"], problems) + course.measure_peers(["torch-standard", "sdpa-flash"], problems)
        course.record("05-scaling-and-memory", points)
        print(course.table(points))
        committed = course.committed("seed-memory")
        print("\\ncommitted:", course.source_line(committed))
        print(course.table(course.select(committed["points"], seq_q=(512, 2048), batch=8)))
    """),
    md("""
    ## Exercises

    1. The page's Attention Matrix cells are N²·32 bytes. Which (batch, heads, dtype) would make
       them right? (`claims.shapes_for_bytes_per_pair(32)`.) Are any of them the page's stated config?
    2. From `course.committed("seed-scaling")`, fit the exponent of time against N for naive and
       for flash2 with `claims.fit_exponent` (float16 points). What would "time per token is
       constant" require?
    3. In `figures/h100/seed-speed.json`, by what factor does SDPA's flash backend beat the page's
       FA2 times at each N? (`course.ms(points, "sdpa-flash", seq_q=n, dtype="float16")` and
       `claims.table("h100-speed").series("Flash Attn 2")`.)
    """),
]

# ==================================================================================================
NOTEBOOKS["06-variants"] = [
    md("""
    # 06 — Variants: causal, sliding window, GQA and MQA

    Three variations every real model uses, all in the ladder's kernels through two small ideas: a
    mask that says which keys a query sees, and a map from query heads to key/value heads. The
    interesting question is not whether a kernel can mask — every rung can — but whether it *skips
    the work* the mask removes.
    """),
    SETUP,
    code("""
    from workbench.bench import traffic_model
    from workbench.kernels import common, flash2, get
    """),
    md("""
    ## The mask

    With shift = Nkv − Nq, query i sees key j when i + shift − left ≤ j ≤ i + shift + right
    (`Problem`'s docstring; FlashAttention's convention). Causal sets right = 0: a query sees itself
    and the past, aligned bottom-right when Nq ≠ Nkv (the last query sees every key, as in decoding
    with a KV cache). A window (left, right) bounds both sides; −1 means unbounded.
    """),
    code("""
    course.show(Problem.visible_range, numbers=False)
    course.show(common.visible, numbers=False)
    """),
    md("""
    ## Causal, and why it halves the work

    A causal square problem sees N(N+1)/2 of the N² pairs, so it needs about half the FLOPs
    (`Problem.flops` counts visible pairs). flash2 computes, per CTA, the KV tiles from its first
    row's first key to its last row's last key (`j_start … j_end`) and never loads the rest; only
    tiles on the diagonal evaluate the mask at all. The picture: the visible pairs (dark) under
    flash2's tiles, on a small problem with 8 × 8 tiles.
    """),
    code("""
    diagrams.mask_tiles(Problem(1, 1, 1, 64, 64, 16, causal=True), 8, 8)
    diagrams.mask_tiles(Problem(1, 1, 1, 24, 64, 16, causal=True), 8, 8)
    plt.show()
    """),
    code("""
    for n in (512, 4096, 16384):
        full, causal = Problem(8, 32, 32, n, n, 64), Problem(8, 32, 32, n, n, 64, causal=True)
        Br, Bc = flash2.tiles(causal, flash2.DEFAULT_CONFIG)[:2]
        kinds = diagrams.flash2_tile_kinds(causal, Br, Bc)
        print(f"N = {n:5d}: causal FLOPs {causal.flops() / full.flops():.3f} of full; flash2 computes "
              f"{(kinds > 0).mean():.3f} of the tiles ({(kinds == 1).sum()} of them evaluate the mask)")
    """),
    md("""
    Rungs 1–4 apply the same mask but compute every tile (the masked scores become −∞, their
    probability 0): they do the full work and throw half away.

    ## Sliding window

    With window (w, 0) a query sees itself and the w keys before it. A CTA of Br rows needs about
    (Br + w)/Bc + 1 KV tiles, *whatever N is*: cost linear in N instead of quadratic.
    """),
    code("""
    diagrams.mask_tiles(Problem(1, 1, 1, 64, 64, 16, window=(12, 0)), 8, 8)
    plt.show()
    for n in (1024, 4096, 16384):
        p = Problem(8, 32, 32, n, n, 64, window=(256, 0))
        Br, Bc = flash2.tiles(p, flash2.DEFAULT_CONFIG)[:2]
        tiles = [je - js for js, je in traffic_model.flash2_tile_ranges(p, Br, Bc)]
        print(f"N = {n:5d}, window (256, 0): at most {max(tiles)} KV tiles per CTA of {Br} rows "
              f"((Br + w)/Bc + 1 = {(Br + 256) / Bc + 1:.0f}); K/V traffic {traffic_model.requested('flash2', p)['K'] / 1e9:.2f} GB")
    """),
    md("""
    ## GQA and MQA

    Multi-query (MQA) and grouped-query attention (GQA) give several query heads one key/value head:
    H query heads, Hkv key/value heads, query head h reads key/value head h // (H / Hkv). The K and V
    arrays (and a decoder's KV cache) shrink by H / Hkv; the FLOPs do not change.
    """),
    code("""
    diagrams.gqa_heads(heads=8, kv_heads=2)
    plt.show()
    for hkv in (32, 8, 1):
        p = Problem(8, 32, hkv, 4096, 4096, 128, "float16")
        kv = 2 * p.batch * p.kv_heads * p.seq_kv * p.head_dim * p.itemsize
        print(f"H = 32, Hkv = {hkv:2d}: K and V {kv / 2**20:6.0f} MiB, FLOPs {p.flops():.3e}")
    print()
    print(course.skeleton(flash2.build, [r"group"]))
    """),
    md("""
    In the kernels it is one line: `hk = h // group`, the key/value head the CTA's loads read. The
    saving in *traffic* comes from the L2 cache, which serves the group's repeated reads of the same
    K/V tiles; `traffic_model.requested` counts requests, so it does not show it.

    ## Check every variant
    """),
    code("""
    cases = ([Problem(1, 2, 2, 24, 24, 16, causal=True), Problem(1, 2, 2, 13, 29, 16, causal=True),
              Problem(1, 2, 2, 29, 13, 16, causal=True), Problem(1, 2, 2, 24, 24, 16, window=(5, 0)),
              Problem(1, 4, 2, 17, 17, 16), Problem(1, 4, 1, 17, 17, 32, "float16", causal=True)] if SIM
             else [Problem(1, 4, 4, 2048, 2048, 64, causal=True), Problem(1, 4, 4, 1000, 2049, 64, causal=True),
                   Problem(1, 4, 4, 2049, 1000, 64, causal=True), Problem(1, 4, 4, 2048, 2048, 64, window=(256, 0)),
                   Problem(1, 8, 2, 2048, 2048, 128), Problem(1, 8, 1, 2048, 2048, 128, "float16", causal=True)])
    for p in cases:
        print(check("flash2", p, seed=6))
    """),
    md("""
    (With Nq > Nkv under causal, the first Nq − Nkv queries see no key at all: the check requires
    O = 0 and LSE = −∞ for them.)

    ## Measure (GPU) or load (no GPU)

    flash2 at the seed configuration in float16: full, causal, a 256-key window, GQA (Hkv = 8) and
    MQA. Causal should take about half the full time, the window far less, GQA about the same.
    """),
    code("""
    variants = [Problem(8, 32, 32, 4096, 4096, 64, "float16"), Problem(8, 32, 32, 4096, 4096, 64, "float16", causal=True),
                Problem(8, 32, 32, 4096, 4096, 64, "float16", window=(256, 0)), Problem(8, 32, 8, 4096, 4096, 64, "float16"),
                Problem(8, 32, 1, 4096, 4096, 64, "float16")]
    if SIM:
        data = course.committed("06-variants")
        if data is None:
            print("no committed H100 measurement of the variants yet: scripts/run_notebooks.py writes it on a GPU "
                  "(06-variants.json), to be committed under figures/h100/. Predicted from the tile counts:")
            for p in variants:
                Br, Bc = flash2.tiles(p, flash2.DEFAULT_CONFIG)[:2]
                share = (diagrams.flash2_tile_kinds(p, Br, Bc) > 0).mean()
                print(f"  {p.describe():45s} tiles computed: {share:.3f} of the full problem's")
            points = []
        else:
            print(course.source_line(data))
            points = data["points"]
    else:
        points = course.measure(["flash2"], variants)
        course.record("06-variants", points)
    if points:
        print(course.table(points))
        base = points[0]["timing"]["median_ms"]
        for pt in points:
            print(f"{pt['problem']:45s} {pt['timing']['median_ms'] / base:.2f} of the full problem's time")
    """),
    md("""
    ## Exercises

    1. For causal at N = 4096 with flash2's default tiles (Br = 64, Bc = 32), predict the fraction
       of tiles computed (the diagonal's tiles count whole), then check with
       `diagrams.flash2_tile_kinds`.
    2. For window (256, 0), how many KV tiles does each CTA visit at N = 1024 and at N = 65536?
       Compare with the docstring's (Br + w)/Bc + 1.
    3. Under causal with Nq = 24, Nkv = 64 (the second picture), which query sees the most
       keys, and how many? Check with `Problem(...).visible_range()`. What would change with
       top-left alignment?
    """),
]


def notebook(cells) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                   "language_info": {"name": "python"}}
    for i, cell in enumerate(nb.cells):
        cell.id = f"c{i:02d}"  # stable ids: rebuilding gives the same file
    return nb


def render(name) -> str:
    return nbformat.writes(notebook(NOTEBOOKS[name]))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    stale = []
    for name in NOTEBOOKS:
        path = HERE / f"{name}.ipynb"
        text = render(name)
        if "--check" in argv:
            if not path.exists() or path.read_text() != text:
                stale.append(path.name)
        else:
            path.write_text(text)
            print(f"wrote {path.relative_to(HERE.parent)}")
    if stale:
        print(f"out of date (run python notebooks/build.py): {', '.join(stale)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
