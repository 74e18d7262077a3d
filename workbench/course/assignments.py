"""Course assignments: student versions of the rungs, hidden tests, and a grader no submission can fool.

    python -m workbench.assignments list
    python -m workbench.assignments release naive-softmax --out DIR    # the student's folder
    python -m workbench.assignments grade DIR [--json] [--gradescope results.json]
    python -m workbench.assignments grade-all SUBMISSIONS --csv grades.csv    # one folder each
    python -m workbench.assignments fill DIR [--from FILE]              # instructor: fill the stubs
    python -m workbench.assignments validate                            # instructor: self-check

Student versions follow nbgrader's conventions. In the reference rung sources
(workbench/kernels/*.py) `### BEGIN SOLUTION` / `### END SOLUTION` comments mark what a student
writes; a marker may name its assignment (`### BEGIN SOLUTION causal-skip`) where one source serves
two. `release` copies the rung module, replaces each of the assignment's regions by
`# YOUR CODE HERE` and `raise NotImplementedError()`, keeps every other region's code, and writes a
README with the task and public tests that plain `pytest` runs in the folder. Hidden tests never
go into the folder: their shapes and all seeds are drawn from the grade seed when grading.

Points are a function of the submission and the grade seed alone (on a GPU the performance points
are measured times, so they vary a little). The default seed is COURSE_SEED, fixed, so a grade is
reproducible; the environment variable WORKBENCH_COURSE_SEED or `--seed` replaces it. Anyone can
compute the hidden tests of a known seed, so a course grades with its own seed, the same for every
student, kept private until the grades are out.

Grading (`grade DIR`), in order:
1. Rules, read from the source without running it: imports only math, functools, numpy, numba
   (numba.cuda), workbench.kernels.common / warp / tiles / hardware / contract and
   workbench.harness.runner; no reference, no file access, no host copies, no streams, no
   introspection, no private (`._x`) or machinery attributes (`.importlib`, `.builtins`, `.sys`, …).
2. The submission runs in an isolated worker process that cannot reach the reference: its
   `sys.path` holds only a student build of the package (`student_build`: the modules a submission
   may import and the worker needs, every solution region stripped; no rung, no float64 reference,
   no grader), its working folder is an empty temporary folder, an audit hook refuses reading
   outside the build and Python's own files, writing outside its folder, starting processes,
   signals, sockets and frame or object-graph introspection by the submission, and where the OS
   allows it runs under limits on CPU time, memory and file size. Nothing about the tests is on
   disk: the grader hands each test's inputs over a pipe just in time (the worker never sees a seed
   or the next test) and reads the outputs back over a pipe, each message validated (its names,
   dtypes and shapes); a malformed, truncated or missing result scores 0 and says why, and never
   stops the grader. A crash, exit() or hang costs the tests not finished, never the grader.
3. Kernels must do the work. Before the submission is imported the worker wraps Numba's kernel
   launches and every way to read device memory on the host (in the simulator: `copy_to_host`,
   indexing, NumPy's views and methods of a device array, NumPy arrays passed to a kernel; on a
   GPU: every device-to-host copy), and counts them while the submission's `launch()` runs on the
   grader's arrays. A call that read device memory on the host, or launched no kernel, fails its
   test (so host computation, and caches keyed by a host fingerprint of the inputs, score 0).
4. Tests, each run at the reference rung's tiles and judged in the grader against float64 with
   `workbench.harness.verify` (errors, unwritten elements, two launches bitwise equal, inputs
   untouched): public (the released shapes, fresh seeds), hidden (lengths that are not tile
   multiples, Nq ≠ Nkv, GQA, float16, masks and another tile configuration), and `repeat`: the
   submission called again and again on the same arrays (on a GPU: the timed calls), each output
   poisoned before and compared bitwise with the first after; then new inputs written into the
   same arrays; then new shapes in new arrays (each sent only after the previous result came
   back), so no cached result survives.
5. Performance, on a GPU only and only when every test before `repeat` passed: the submission is
   timed in the worker (`timing.time_call`, L2 flushed, median) and the reference rung in the
   grader's process, once before and once after the worker, averaged, on the assignment's timing
   problem. With r = t_submission / t_reference, the credit is 1 for r ≤ 1.2 and 1.2 / r beyond,
   times the assignment's performance points.
"""

from __future__ import annotations

import argparse
import ast
import builtins
import contextlib
import csv
import dataclasses
import functools
import hashlib
import importlib.util
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from workbench.problem import Problem

MANIFEST = "assignment.json"
STUB = "# YOUR CODE HERE"
RAISE = "raise NotImplementedError()"
PUBLIC_SEED = 1000  # the student's copy runs public test i with seed PUBLIC_SEED + i
COURSE_SEED = 20260917  # the default grade seed (see the module docstring: courses use their own)
SEED_VARIABLE = "WORKBENCH_COURSE_SEED"  # ... given here, e.g. in a Gradescope autograder
REPEAT_CALLS = 3  # calls after the first in the simulator's repeat test (on a GPU: the timed ones)
FULL_CREDIT_RATIO = 1.2  # t_submission / t_reference at or under this earns full performance credit
WEIGHTS = {"public": 1, "hidden": 2, "repeat": 1}  # points per test, times the assignment's scale


def _p(batch, heads, kv_heads, seq_q, seq_kv, head_dim, dtype="float32", causal=False, window=None):
    return Problem(batch, heads, kv_heads, seq_q, seq_kv, head_dim, dtype, causal, window)


@dataclass(frozen=True)
class Assignment:
    name: str
    rung: str  # the reference rung; its module is what the student edits
    tag: str | None  # the marker tag of this assignment's regions (None: plain markers)
    title: str
    teaches: str
    task: str  # the README's task paragraph
    hints: tuple  # one line per region: what goes there (written into the stub)
    scale: int  # correctness points per test weight (WEIGHTS)
    perf_points: int  # on a GPU, for speed against the reference rung
    public: tuple  # public problems (in the student's copy, with fixed seeds)
    hidden_masks: tuple  # the three hidden tests' masks: dicts of Problem(causal=, window=)
    dims: tuple  # head dims the hidden tests draw from: (simulator, GPU)
    sim_lengths: tuple  # (lo, hi): hidden sequence lengths in the simulator
    sim_config: dict  # tiles in the simulator: small, so tiny problems cover several tiles
    gpu_alt_config: dict  # the "other tiles" hidden test on a GPU (simulator: the rung's SIM_CONFIG)
    perf: Problem  # the GPU timing problem (also the repeat test's problem there)

    @property
    def correctness_points(self) -> int:
        return self.scale * (len(self.public) * WEIGHTS["public"] + 3 * WEIGHTS["hidden"]
                             + WEIGHTS["repeat"])

    @property
    def module_file(self) -> str:
        return f"{self.rung}.py"
CAUSAL = {"causal": True}
ASSIGNMENTS = (
    Assignment(
        name="naive-softmax", rung="naive", tag=None,
        title="A numerically safe row softmax (naive rung, kernel `softmax`)",
        teaches="softmax as three passes over a row: max, sum of exp(s - max), normalise; LSE; "
                "rows the mask hides completely",
        task="Write the body of the `softmax` kernel: one thread owns row i of the score matrix S "
             "(masked scores are -inf). Find the row's max m, the sum l of exp(S - m), overwrite S "
             "with exp(S - m) / l, and write lse[b, h, i] = m + log(l). A row whose scores are all "
             "-inf sees no key: its P is all zeros and its LSE is -inf. Keep the arithmetic in "
             "float32 (a bare Python float such as -math.inf is float64).",
        hints=("row i of S -> softmax in place (m, l, P = exp(S - m) / l), lse[b, h, i] = m + log(l); "
               "a row of -inf: P = 0, LSE = -inf",),
        scale=1, perf_points=1,
        public=(_p(1, 2, 1, 7, 7, 8, causal=True), _p(1, 1, 1, 6, 9, 8, "float16")),
        hidden_masks=({}, CAUSAL, {"window": (2, 1)}),
        dims=((8,), (64, 40)), sim_lengths=(5, 10),
        sim_config={"block_xy": 4, "block_rows": 4}, gpu_alt_config={"block_xy": 8, "block_rows": 64},
        perf=_p(2, 8, 8, 1024, 1024, 64),
    ),
    Assignment(
        name="tiled-qk", rung="tiled", tag=None,
        title="S = Q Kᵀ with shared-memory tiles (tiled rung, kernel `scores`)",
        teaches="data reuse through shared memory: tile loads, zero padding at the edges, the two "
                "barriers of a tiled matrix product",
        task="Write the loop of the `scores` kernel that accumulates acc = Q[i] · K[j] over the "
             "head dimension in steps of `tile`: each thread loads one element of a Q tile "
             "(q_tile[ty, tx] = Q[i0 + ty, d0 + tx]) and one of a K tile (k_tile[ty, tx] = "
             "K[j0 + ty, d0 + tx]), zero outside the matrices; a barrier; acc += the tile's "
             "products; a barrier before the next step overwrites the tiles. The head dimension "
             "need not be a multiple of the tile.",
        hints=("for each step d0 of the head dimension: load q_tile and k_tile (zeros outside), "
               "syncthreads, acc += Σ_c q_tile[ty, c] · k_tile[tx, c], syncthreads",),
        scale=1, perf_points=6,
        public=(_p(1, 2, 1, 7, 7, 6, causal=True), _p(1, 1, 1, 6, 9, 10, "float16")),
        hidden_masks=({}, CAUSAL, {"window": (2, 1)}),
        dims=((6, 10), (64, 40)), sim_lengths=(5, 10),
        sim_config={"tile": 4, "softmax_threads": 4}, gpu_alt_config={"tile": 8, "softmax_threads": 64},
        perf=_p(2, 8, 8, 1024, 1024, 64),
    ),
    Assignment(
        name="online-softmax", rung="online", tag=None,
        title="The online softmax recurrence (online rung)",
        teaches="one fused pass: running max m and sum l, rescaling by alpha = exp(m_old - m_new), "
                "normalising once at the end; no N² buffer",
        task="Write the online-softmax update of the `online` kernel for one K/V tile (region 1) "
             "and the final normalisation (region 2). Region 1: m_new = max(m, the tile's row max "
             "from tile_scores); if m_new is still -inf the row has seen no key yet (leave m, l, "
             "acc); otherwise alpha = exp(m - m_new), P = exp(s - m_new) (store it in p_t[c, tx]), "
             "l = alpha·l + rowsum(P), acc = alpha·acc + P V_j, m = m_new. Region 2: for a row "
             "i < Nq write O = acc / l and LSE = m + log(l); a row that saw no key gets O = 0 and "
             "LSE = -inf. `reference.online_attention` is the same recurrence in NumPy.",
        hints=("the update for K_j, V_j: m_new (tile_scores), alpha, P into p_t, l, acc, m",
               "row i < Nq: O = acc / l, LSE = m + log(l); a row that saw no key: O = 0, LSE = -inf"),
        scale=2, perf_points=2,
        public=(_p(1, 2, 1, 7, 7, 8, causal=True), _p(1, 1, 1, 6, 9, 16, "float16")),
        hidden_masks=({}, CAUSAL, {"window": (2, 1)}),
        dims=((8, 16), (64, 128)), sim_lengths=(5, 14),
        sim_config={"Br": 4, "Bc": 4}, gpu_alt_config={"Br": 32, "Bc": 8},
        perf=_p(2, 16, 16, 2048, 2048, 64),
    ),
    Assignment(
        name="flash2", rung="flash2", tag=None,
        title="FlashAttention-2's softmax update and final normalisation (flash2 rung)",
        teaches="the FA2 inner loop on a CTA's tile: a row's max shared by the threads of the row "
                "(warp shuffles), base-2 exponentials, rescaling without dividing, each thread's "
                "partial row sum added across the row's lanes once at the end",
        task="Write the two softmax parts of the `flash2` kernel. Thread (tr, tc) owns RM rows of "
             "the block (row tr + TR·a, a < RM) and RN keys of each (tc + TC·c, c < RN); the TC "
             "threads of a row are lanes of one warp. Before region 1 the tile engine has put your "
             "micro-tile of S (base-2 units, -inf where masked) in s[a, c] and the max of each of "
             "your rows over the whole tile in row_max_[a] (a shuffle butterfly across the row's "
             "lanes: every lane of the row holds the same value). Region 1 (once per KV tile), "
             "for each of your rows: m_new = max(m[a], row_max_[a]); alpha = 2^(m[a] - m_new) "
             "and P = 2^(s[a, c] - m_new), where a row still at -inf uses 0 in place of m_new so "
             "that exp2 stays finite; P goes to p_ij[tr + TR·a, tc + TC·c]; l[a] = alpha·l[a] + "
             "the sum of your RN values of P (each lane keeps the sum over its own keys); "
             "acc[a, :] *= alpha; m[a] = m_new. Region 2 (once, at the end, after segment_sum "
             "has added each row's partial sums across its lanes, so l[a] is the whole row's "
             "sum): for each of your rows inside Nq (row = i0 + tr + TR·a < n_q) write O = acc / l "
             "to your columns with store_row(o, b, h, row, acc, a, 1 / l) and, from the lane with "
             "tc == 0, LSE = ln2·(m + log2 l); a row that saw no key (l = 0) gets O = 0 and "
             "LSE = -inf.",
        hints=("for my RM rows: m_new = max(m[a], row_max_[a]) (0 stands in for m_new while it is "
               "-inf), alpha = 2^(m - m_new), P = 2^(s - m_new) into p_ij[tr + TR·a, tc + TC·c], "
               "l[a] = alpha·l[a] + Σ_c P, acc[a, :] *= alpha, m[a] = m_new",
               "for my RM rows inside Nq: O = acc / l with store_row (l is already the row's sum "
               "over its lanes), LSE = ln2·(m + log2 l) from tc == 0; a row that saw no key "
               "(l = 0): O = 0, LSE = -inf"),
        scale=2, perf_points=7,
        public=(_p(1, 2, 1, 13, 13, 16, causal=True), _p(1, 1, 1, 9, 14, 16, "float16")),
        hidden_masks=({}, CAUSAL, {"window": (2, 1)}),
        dims=((16, 32), (64, 128)), sim_lengths=(5, 19),
        sim_config={}, gpu_alt_config={"Br": 32, "Bc": 32, "RM": 2, "RN": 4},
        perf=_p(2, 16, 16, 2048, 2048, 64),
    ),
    Assignment(
        name="causal-skip", rung="flash2", tag="causal-skip",
        title="Skipping fully masked KV tiles (flash2 rung, variant)",
        teaches="which KV tiles a CTA's query rows can see under causal and window masks, "
                "bottom-right alignment (shift = Nkv - Nq), rows that see nothing",
        task="Compute the range of KV tiles j_start ≤ j < j_end that CTA's query rows i0 … i_last "
             "need. Row i sees keys first_key(i, shift, left) … last_key(i, shift, right), clamped "
             "to [0, Nkv); both ends grow with i, so the block sees one run of keys, from its "
             "first row's first key (key_lo) to its last row's last key (key_hi, one past). The "
             "tiles are Bc keys wide; when no key is visible, j_end = j_start. Skipping too much "
             "fails the tests; skipping too little is correct but slow (GPU performance credit).",
        hints=("key_lo, key_hi: the keys rows i0 … i_last see together; j_start, j_end: the KV "
               "tiles covering them (j_end = j_start when there are none)",),
        scale=1, perf_points=6,
        public=(_p(1, 2, 1, 13, 13, 16, causal=True), _p(1, 1, 1, 17, 11, 16, window=(3, 0))),
        hidden_masks=(CAUSAL, {"window": (4, 0)}, {"window": (2, 3)}),
        dims=((16, 32), (64, 128)), sim_lengths=(5, 23),
        sim_config={}, gpu_alt_config={"Br": 32, "Bc": 32, "RM": 2, "RN": 4},
        perf=_p(2, 16, 16, 2048, 2048, 64, causal=True),
    ),
)


def get(name) -> Assignment:
    for a in ASSIGNMENTS:
        if a.name == name:
            return a
    raise ValueError(f"unknown assignment {name!r}; choose one of {[a.name for a in ASSIGNMENTS]}")


# --- solution regions -------------------------------------------------------------------------

_BEGIN = re.compile(r"^(\s*)### BEGIN SOLUTION(?:\s+(\S+))?\s*$")
_END = re.compile(r"^\s*### END SOLUTION\s*$")
_RELATIVE = re.compile(r"^(\s*)from (\.+)([\w.]*) import ", re.M)


@dataclass(frozen=True)
class Region:
    tag: str | None
    indent: str
    begin: int  # line index of the BEGIN marker
    end: int  # line index of the END marker
    body: str  # the code between the markers, dedented


def regions(text: str, where: str = "source") -> list[Region]:
    """Every `### BEGIN SOLUTION [tag]` … `### END SOLUTION` region of `text`, in order."""
    found, open_ = [], None
    lines = text.splitlines()
    for n, line in enumerate(lines):
        if m := _BEGIN.match(line):
            if open_ is not None:
                raise ValueError(f"{where}:{n + 1}: BEGIN SOLUTION inside the region opened at line "
                                 f"{open_[0] + 1}; close it with ### END SOLUTION first")
            open_ = (n, m.group(1), m.group(2))
        elif _END.match(line):
            if open_ is None:
                raise ValueError(f"{where}:{n + 1}: END SOLUTION with no BEGIN SOLUTION before it")
            begin, indent, tag = open_
            body = textwrap.dedent("\n".join(lines[begin + 1:n]) + "\n")
            found.append(Region(tag, indent, begin, n, body))
            open_ = None
    if open_ is not None:
        raise ValueError(f"{where}:{open_[0] + 1}: BEGIN SOLUTION is never closed")
    return found


def _indented(body: str, indent: str) -> list[str]:
    return [indent + line if line.strip() else "" for line in body.rstrip("\n").split("\n")]


def _absolute_imports(text: str) -> str:
    """`from .common import x` -> `from workbench.kernels.common import x`: the student's copy is
    loaded from a file, outside the package."""
    def absolute(m):
        package = "workbench.kernels".split(".")
        base = package[:len(package) - (len(m.group(2)) - 1)]
        name = ".".join(base + ([m.group(3)] if m.group(3) else []))
        return f"{m.group(1)}from {name} import "
    return _RELATIVE.sub(absolute, text)


def rung_source(a: Assignment) -> str:
    from workbench.kernels import get as get_rung

    return Path(get_rung(a.rung).module.__file__).read_text()


def student_source(a: Assignment, text: str | None = None) -> str:
    """The rung's source with `a`'s regions replaced by stubs and every other marker removed."""
    text = rung_source(a) if text is None else text
    lines = text.splitlines()
    mine = [r for r in regions(text, a.module_file) if r.tag == a.tag]
    if len(mine) != len(a.hints):
        raise ValueError(f"{a.module_file} has {len(mine)} regions for {a.name!r}, its definition "
                         f"describes {len(a.hints)}")
    out, n, k = [], 0, 0
    for r in regions(text, a.module_file):
        out += lines[n:r.begin]
        if r.tag == a.tag:
            hint = textwrap.wrap(f"{STUB}: {a.hints[k]}", 99 - len(r.indent) - 2,
                                 subsequent_indent="  ")
            out += [f"{r.indent}{hint[0]}"] + [f"{r.indent}# {line}" for line in hint[1:]]
            out.append(f"{r.indent}{RAISE}")
            k += 1
        else:
            out += lines[r.begin + 1:r.end]
        n = r.end + 1
    out += lines[n:]
    return _absolute_imports("\n".join(out) + "\n")


def complete_source(a: Assignment) -> str:
    """The rung's source as a filled-in student copy must read: markers gone, imports absolute."""
    text = rung_source(a)
    return _absolute_imports("\n".join(line for line in text.splitlines()
                                       if not (_BEGIN.match(line) or _END.match(line))) + "\n")


_STUB_AT = re.compile(rf"^([ \t]*){re.escape(STUB)}.*\n(?:\1#.*\n)*\1{re.escape(RAISE)}[ \t]*\n", re.M)


def fill_text(text: str, bodies: list[str]) -> str:
    """Replace the stubs of a student copy, in order, by `bodies` (re-indented to each stub)."""
    stubs = list(_STUB_AT.finditer(text))
    if len(stubs) != len(bodies):
        raise ValueError(f"found {len(stubs)} stub(s) ('{STUB}' + '{RAISE}'), but the solution has "
                         f"{len(bodies)} region(s)")
    out, n = [], 0
    for m, body in zip(stubs, bodies):
        out += [text[n:m.start()], "\n".join(_indented(body, m.group(1))) + "\n"]
        n = m.end()
    return "".join(out + [text[n:]])


# --- release, fill ----------------------------------------------------------------------------


def _test_file(a: Assignment) -> str:
    cases = "\n".join(f"- public-{i + 1}: {p.describe()}, seed {PUBLIC_SEED + i}"
                      for i, p in enumerate(a.public))
    names = [f"public-{i + 1}" for i in range(len(a.public))] + ["repeat"]
    return f'''"""Public tests of assignment {a.name!r}: run `pytest` in this folder.

The cases (the grader runs them with fresh seeds, beside hidden tests of other shapes):
{cases}
- repeat: the same arrays called again and again, then new inputs in the same arrays, then new
  shapes
"""

from pathlib import Path

import pytest

from workbench.course.assignments import public_check

HERE = Path(__file__).resolve().parent


def test_rules():
    """What a submission may import and call (the grader reads these rules from the source)."""
    messages = public_check(HERE, "rules")
    assert not messages, "\\n".join(messages)


@pytest.mark.parametrize("case", {names!r})
def test_public(case):
    messages = public_check(HERE, case)
    assert not messages, "\\n".join(messages)
'''


def _readme(a: Assignment) -> str:
    hints = "\n".join(f"{i + 1}. {h}" for i, h in enumerate(a.hints))
    public = "\n".join(f"- `public-{i + 1}`: {p.describe()}" for i, p in enumerate(a.public))
    return f"""# Assignment `{a.name}`: {a.title}

**Points:** {a.correctness_points} for correctness; on a GPU {a.perf_points} more for speed.
**Teaches:** {a.teaches}.

## Your task

{textwrap.fill(a.task, 100)}

Edit `{a.module_file}` where it says `{STUB}` (and delete the `{RAISE}` below it):

{hints}

The module's docstring explains the whole rung; the rest of the file is given and works.

## Testing

    pytest

runs the public tests in this folder: the shapes below with fixed seeds, in Numba's CUDA simulator
when there is no GPU (tiny sizes, slow), and the rules test.

{public}
- `repeat`: the kernel called again and again on the same arrays, then on new inputs written into
  the same arrays, then on new shapes in new arrays.

## Grading

`python -m workbench.assignments grade FOLDER` runs the public tests with fresh seeds and three
hidden tests whose shapes and seeds are drawn from the grade seed (lengths that are not tile
multiples, Nq ≠ Nkv, grouped heads, float16, masks, other tile sizes), at the reference rung's tile
sizes, in a separate process that sees only your module and the modules it may import (not the
reference, not the other rungs), in an empty folder, with time, memory and file-size limits; each
test's inputs arrive just in time. Each test fills O and LSE with NaN before each launch, launches
twice (the two results must agree bit for bit), checks that q, k and v are unchanged, and compares
with a float64 NumPy reference (float32: relative error ≤ 2e-5 and |err| ≤ 1e-5 + 1e-4·|ref| per
element; float16: 2e-3 and 1e-3 + 4e-3·|ref|). A call of your `launch()` that reads device memory
on the host (`copy_to_host`, indexing a device array, NumPy on it) or launches no kernel fails its
test: the kernels must do the work. `repeat` calls your rung again and again on the same arrays,
then on new inputs written into the same arrays, then on new shapes. Points: a public test
{WEIGHTS["public"] * a.scale}, a hidden test {WEIGHTS["hidden"] * a.scale}, repeat {WEIGHTS["repeat"] * a.scale}.

{textwrap.fill(f"On a GPU, when every test passes, your rung and the reference are timed on "
               f"{a.perf.describe()}: with r = your time / the reference's, you get all "
               f"{a.perf_points} performance points for r ≤ {FULL_CREDIT_RATIO}, and "
               f"{FULL_CREDIT_RATIO} / r of them beyond. Every timed call's output is checked too.", 100)}

## Rules

Import only `math`, `functools`, `numpy`, `numba` (`from numba import cuda, float32`, …),
`workbench.kernels.common`, `workbench.kernels.warp`, `workbench.kernels.tiles`,
`workbench.kernels.hardware`, `workbench.kernels.contract` and `workbench.harness.runner` (with
`from … import …`). Not allowed: the reference (`workbench.reference`, the rung modules in
`workbench.kernels`, torch), files, host copies (`copy_to_host`, `to_device`), streams,
`eval`/`exec`/`getattr` and friends, private attributes (`x._y`) and the machinery's modules
(`.importlib`, `.builtins`, `.sys`, `.os`, …). Kernels must not write q, k or v, and must give the
same result however often they are called.
"""


def release(name: str, out, force: bool = False) -> Path:
    """Write the student's folder for assignment `name`: the stubbed module, README.md,
    test_public.py, pytest.ini and the manifest. Refuses to overwrite a module unless `force`."""
    a = get(name)
    out = Path(out)
    module = out / a.module_file
    if module.exists() and not force:
        raise FileExistsError(f"{module} exists (a student's work?); pass --force to overwrite it")
    text = student_source(a)
    out.mkdir(parents=True, exist_ok=True)
    module.write_text(text)
    (out / "README.md").write_text(_readme(a))
    (out / "test_public.py").write_text(_test_file(a))
    (out / "pytest.ini").write_text("[pytest]\n")  # this folder is pytest's root, whatever is above
    manifest = {"assignment": a.name, "module": a.module_file, "rung": a.rung,
                "rung_sha256": hashlib.sha256(rung_source(a).encode()).hexdigest()}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return out


def _manifest(folder, required: bool = True) -> dict:
    path = Path(folder) / MANIFEST
    if not path.exists() and not required:
        return {}
    if not path.exists():
        raise ValueError(f"{folder} has no {MANIFEST}: is it a folder made by "
                         f"`python -m workbench.assignments release NAME --out {folder}`? (or pass --assignment NAME)")
    return json.loads(path.read_text())


def _module_path(folder, a: Assignment) -> Path:
    path = Path(folder) / a.module_file
    if not path.is_file():
        raise ValueError(f"{path} is missing: the submission is the file {a.module_file} in {folder}")
    return path


def solution_bodies(solution=None, a: Assignment | None = None) -> list[str]:
    """The region bodies to fill in: the reference rung's for `a` (solution None), or those of a
    file that holds `### BEGIN SOLUTION` / `### END SOLUTION` regions, in order."""
    if solution is None:
        return [r.body for r in regions(rung_source(a), a.module_file) if r.tag == a.tag]
    return [r.body for r in regions(Path(solution).read_text(), str(solution))]


def fill(folder, solution=None, assignment: str | None = None) -> Path:
    """Fill the stubs of a released folder with the reference's solution (or `solution`'s)."""
    a = get(assignment or _manifest(folder)["assignment"])
    path = _module_path(folder, a)
    path.write_text(fill_text(path.read_text(), solution_bodies(solution, a)))
    return path


# --- rules: what a submission may import and call -------------------------------------------

ALLOWED_IMPORTS = ("math", "functools", "numpy", "numba", "numba.cuda", "numba.types",
                   "workbench.kernels.common", "workbench.kernels.warp", "workbench.kernels.tiles",
                   "workbench.kernels.hardware", "workbench.kernels.contract",
                   "workbench.harness.runner")
# warp: shuffle helpers; tiles: the shared tile engine; hardware: launch bounds; contract: Needs
FORBIDDEN_NAMES = {
    "__import__": "imports by name", "eval": "running generated code", "exec": "running generated code",
    "compile": "running generated code", "open": "file access (saved outputs, the grader's files)",
    "globals": "introspection", "locals": "introspection", "vars": "introspection",
    "getattr": "attribute access by name", "setattr": "attribute access by name",
    "delattr": "attribute access by name", "breakpoint": "the debugger", "input": "reading stdin",
}
_MACHINERY = "the machinery behind the kernels, not a kernel's business (a module reached through another)"
_FRAMES = "introspection of frames, code and the object graph"
FORBIDDEN_ATTRS = {
    **dict.fromkeys(("copy_to_host", "copy_to_device", "to_device", "device_array",
                     "device_array_like", "pinned_array", "mapped_array", "managed_array", "pinned",
                     "mapped", "as_cuda_array", "from_cuda_array_interface", "ctypes"),
                    "host copies and allocations outside the launcher (compute on the GPU, "
                    "allocate scratch with gpu.empty)"),
    **dict.fromkeys(("stream", "external_stream", "default_stream", "per_thread_default_stream",
                     "legacy_default_stream", "event"),
                    "streams and events (launch through gpu.launch, on the stream being timed)"),
    **dict.fromkeys(("load", "save", "savez", "fromfile", "tofile", "loadtxt", "genfromtxt",
                     "memmap", "modules"), "file access and module tables"),
    **dict.fromkeys(("importlib", "builtins", "sys", "os", "gc", "ctypeslib", "inspect",
                     "subprocess", "operator", "io", "pathlib", "shutil", "socket", "pickle",
                     "marshal", "runpy", "threading", "weakref", "signal", "tempfile", "traceback",
                     "resource", "simulator", "cudadrv", "devicearray", "kernelapi", "driver",
                     "dispatcher", "core", "course", "reference", "api", "harness", "kernels",
                     "verify", "testing"), _MACHINERY),
    **dict.fromkeys(("f_back", "f_globals", "f_locals", "f_builtins", "f_code", "tb_frame",
                     "tb_next", "gi_frame", "gi_code", "cr_frame", "ag_frame", "co_code",
                     "func_globals"), _FRAMES),
}


def import_problem(name: str) -> str | None:
    """Why a submission may not import `name` (None: it may)."""
    if name in ALLOWED_IMPORTS:
        return None
    parts = name.split(".")
    if parts[:2] == ["workbench", "kernels"] and len(parts) > 2:
        return (f"{name} is a reference rung: running it hands in the reference's output, not your "
                f"kernel's. Write the kernel yourself")
    if parts[:2] == ["workbench", "reference"]:
        return (f"{name} is the float64 reference the grader checks against: a submission must "
                f"compute attention on the GPU itself")
    if parts[0] == "workbench":
        return (f"{name} is the course's own code (it runs the reference rungs); a submission may "
                f"import only {', '.join(m for m in ALLOWED_IMPORTS if m.startswith('workbench'))}")
    if parts[0] in ("torch", "cupy", "jax", "scipy", "tensorflow"):
        return f"{name} would compute attention for you; write the kernel yourself"
    if parts[0] in ("numba", "numpy"):
        return (f"{name} is the machinery behind the kernels; a kernel needs only "
                f"`from numba import cuda, float32` (and friends) and numpy")
    return f"{name} is not needed by a kernel; a submission may import only {', '.join(ALLOWED_IMPORTS)}"


def _is_module(name: str) -> bool:
    """Whether `name` is an importable module (without importing it, beyond its parents)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError, AttributeError):
        return False


def _from_import_problems(module: str, names) -> list[str]:
    """`from module import names`: fine when `module` is allowed and no name is a module that is
    not (`from numba import core`) or a forbidden attribute, or when `module` is a package above
    allowed modules and every name is one of them (`from workbench.kernels import common`)."""
    why = import_problem(module)
    if why is None:
        found = []
        for n in names:
            if n in FORBIDDEN_ATTRS or (n.startswith("_") and n != "*"):
                found.append(f"`from {module} import {n}`: "
                             f"{FORBIDDEN_ATTRS.get(n, 'a private name (the machinery of a module)')}")
            elif _is_module(f"{module}.{n}") and (w := import_problem(f"{module}.{n}")):
                found.append(w)
        return found
    if any(ok.startswith(module + ".") for ok in ALLOWED_IMPORTS):
        return [w for n in names if (w := import_problem(f"{module}.{n}"))]
    return [why]


def rule_violations(path) -> list[str]:
    """Read the submission's source (never running it) and list what breaks the rules."""
    path = Path(path)
    try:
        tree = ast.parse(path.read_text(), filename=str(path))
    except (SyntaxError, ValueError, UnicodeDecodeError) as exc:
        return [f"{path.name}:{getattr(exc, 'lineno', '?')}: syntax error: {getattr(exc, 'msg', exc)}"]
    found = []
    for node in ast.walk(tree):
        where = f"{path.name}:{getattr(node, 'lineno', '?')}: "
        if isinstance(node, ast.Import):
            for alias in node.names:
                if why := import_problem(alias.name):
                    found.append(where + why)
                elif "." in alias.name and alias.asname is None:
                    found.append(where + f"`import {alias.name}` binds the package "
                                 f"`{alias.name.split('.')[0]}` and through it every module loaded: "
                                 f"write `from {alias.name.rsplit('.', 1)[0]} import "
                                 f"{alias.name.rsplit('.', 1)[1]}`")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                found.append(where + "a relative import; write the absolute name (e.g. "
                             "`from workbench.kernels.common import visible`)")
            else:
                found += [where + why for why in _from_import_problems(node.module,
                                                                         [a.name for a in node.names])]
        elif isinstance(node, ast.Name) and node.id in FORBIDDEN_NAMES:
            found.append(where + f"`{node.id}` is not allowed in a submission "
                                 f"({FORBIDDEN_NAMES[node.id]})")
        elif isinstance(node, ast.Name) and node.id.startswith("__") and node.id.endswith("__"):
            found.append(where + f"`{node.id}` is not allowed in a submission (introspection)")
        elif isinstance(node, ast.Attribute):
            if node.attr.startswith("__") and node.attr.endswith("__"):
                found.append(where + f"`.{node.attr}` is not allowed in a submission (introspection)")
            elif node.attr.startswith("_"):
                found.append(where + f"`.{node.attr}` is not allowed in a submission (a private "
                                     f"attribute: the machinery's insides, not a kernel's business)")
            elif node.attr in FORBIDDEN_ATTRS:
                found.append(where + f"`.{node.attr}` is not allowed in a submission "
                                     f"({FORBIDDEN_ATTRS[node.attr]})")
    return sorted(set(found), key=lambda s: (int(s.split(":")[1]) if s.split(":")[1].isdigit() else 0, s))


def stubs_left(path) -> int:
    return len(_STUB_AT.findall(Path(path).read_text()))


# --- the student build: all the grading worker can import ---------------------------------------

# The modules a submission may import and the worker needs; the build holds these and what they
# import from the package, minus what must stay out of a submission's reach (below).
BUILD_ROOTS = ("workbench.kernels.common", "workbench.kernels.warp", "workbench.kernels.tiles",
               "workbench.kernels.hardware", "workbench.kernels.contract", "workbench.harness.runner",
               "workbench.harness.device", "workbench.harness.timing", "workbench.problem",
               "workbench.dtypes", "workbench.target", "workbench.sim", "workbench.sim.warps")
NOT_IN_BUILD = ("workbench.reference", "workbench.api", "workbench.course", "workbench.bench",
                "workbench.demos", "workbench.harness.verify", "workbench.harness.peers")
WORKER_SCRIPT = "grading_worker.py"  # this module, copied into the build and run as a script
_BUILD_INIT = '''"""A student build of workbench, made by the grader (workbench.course.assignments.student_build):
only the modules a submission may import and the grading worker needs. No rung, no reference."""

from workbench.target import mode, select_mode  # noqa: F401

if select_mode() == "simulator":
    from workbench.sim import install as _install_simulator

    _install_simulator()
'''


def _package_dir() -> Path:
    return Path(__file__).resolve().parents[1]  # workbench/ (this file is workbench/course/...)


def _module_file(name: str) -> Path | None:
    """The source file of package module `name` (None: not a module of the package)."""
    path = _package_dir().joinpath(*name.split(".")[1:])
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


def _package_imports(path: Path, name: str) -> set[str]:
    """The package modules (and names that may be modules) that the source at `path` imports,
    inside functions too."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found |= {module} | {f"{module}.{a.name}" for a in node.names}
    return {n for n in found if n.split(".")[0] == "workbench"}


def _outside_build(name: str) -> bool:
    """Modules a submission must not reach: the reference, the rungs, the grader, the API."""
    from workbench import kernels

    rungs = kernels.of_kind(None) if hasattr(kernels, "of_kind") else kernels.LADDER
    return (name == "workbench" or any(name == p or name.startswith(p + ".") for p in NOT_IN_BUILD)
            or name in {f"workbench.kernels.{r.name}" for r in rungs})


def build_modules() -> dict[str, Path]:
    """The package modules of the student build, by name: BUILD_ROOTS, their packages and what
    they import, minus what is outside the build (a lazy import of one of those, in a function
    the worker never calls, fails if it is ever called: nothing can reach them)."""
    todo, found = list(BUILD_ROOTS), {}
    while todo:
        name = todo.pop()
        if name in found or _outside_build(name):
            continue
        path = _module_file(name)
        if path is None:
            continue  # a name imported from a module, not a module
        found[name] = path
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(2, len(parts))]  # its packages
        todo += sorted(_package_imports(path, name))
    return dict(sorted(found.items()))


def strip_solutions(text: str, where: str = "source") -> str:
    """`text` with every `### BEGIN SOLUTION` region, whatever its tag, replaced by a raise."""
    lines, out, n = text.splitlines(), [], 0
    for r in regions(text, where):
        out += lines[n:r.begin] + [f"{r.indent}{RAISE}  # a solution region: not in the student build"]
        n = r.end + 1
    return "\n".join(out + lines[n:]) + "\n"


def student_build(dest) -> Path:
    """Write the student build into the folder `dest`: a package `workbench` holding only
    build_modules() (solution regions stripped, a top-level __init__ that only selects the
    simulator), and the grading worker script. The grader puts `dest` alone on the worker's
    sys.path."""
    dest = Path(dest)
    package = dest / "workbench"
    for name, path in build_modules().items():
        rel = Path(*name.split(".")[1:])
        target = package / rel / "__init__.py" if path.name == "__init__.py" else package / rel.with_suffix(".py")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(strip_solutions(path.read_text(), str(path)))
    (package / "__init__.py").write_text(_BUILD_INIT)
    for folder in package.rglob("*"):
        if folder.is_dir() and not (folder / "__init__.py").exists():
            (folder / "__init__.py").write_text("")
    shutil.copyfile(Path(__file__).resolve(), dest / WORKER_SCRIPT)
    return dest


# --- the worker's side: loading and running a submission ---------------------------------------
# (The grading worker is this module run as a script from the student build, `python -I -B
# BUILD/grading_worker.py _worker`: the code below may use only the standard library, NumPy, Numba
# and the build's modules. The student's own public tests run it in their process.)

SUBMISSION_MODULE = "workbench_submission"


_RUNTIME_OWN = ("numpy", "numba", "llvmlite", "math", "functools")


@contextlib.contextmanager
def import_guard(module_name: str = SUBMISSION_MODULE):
    """While active, an import made by module `module_name` that breaks the rules is an
    ImportError (the static rules can be dodged; this catches what gets past them at run time)."""
    original = builtins.__import__

    def guarded(name, globals=None, locals=None, fromlist=(), level=0):
        # (NumPy's and Numba's C code import their own modules lazily, with the caller's globals:
        # those are theirs, not the submission's; the static rules read what the source imports.)
        if (globals is not None and globals.get("__name__") == module_name
                and name.split(".")[0] not in _RUNTIME_OWN):
            if level:
                why = "a relative import; write the absolute name"
            else:
                whys = _from_import_problems(name, fromlist) if fromlist else [import_problem(name)]
                why = next((w for w in whys if w), None)
            if why:
                raise ImportError(f"not allowed: {why}")
        return original(name, globals, locals, fromlist, level)

    builtins.__import__ = guarded
    try:
        yield
    finally:
        builtins.__import__ = original


def load_submission(path, module_name: str = SUBMISSION_MODULE):
    """A Rung whose module is the file at `path` (the guard must already be active)."""
    from workbench.kernels import Rung

    path = Path(path).resolve()
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # Numba looks kernels' modules up by name
    spec.loader.exec_module(module)
    missing = [n for n in ("DEFAULT_CONFIG", "needs", "launch") if not hasattr(module, n)]
    if missing:
        raise AttributeError(f"{path.name} has no {', '.join(missing)}: keep the rung's "
                             f"DEFAULT_CONFIG, needs() and launch() (only fill in the stubs)")
    return Rung(0, f"submission:{path.stem}", "", module)


def describe_error(exc: BaseException, path) -> str:
    """One line a student can act on: the error and where in their file it happened."""
    name = Path(path).name
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename).name == name]
    where = f" ({name} line {frames[-1].lineno})" if frames else ""
    if isinstance(exc, NotImplementedError):
        return (f"NotImplementedError{where}: a solution region is still the stub "
                f"('{STUB}' + '{RAISE}'): fill it in")
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}{where}: {text[0] if text else ''}"[:500]


class HostAccess:
    """What a submission's launch() does on the host while it runs: kernels launched, and bytes of
    device memory read on the host (each call is a `window`). Counting needs `watch_host` (the
    grading worker installs it before the submission is imported); without it nothing is counted
    and `take()` says so (watched: False)."""

    def __init__(self):
        self.installed = False  # watch_host ran
        self.armed = False  # the submission may be running (sticky notes count from here)
        self.watching = False  # inside a window
        self.sticky = {}  # things noticed once that taint every later call
        self._reset()

    def _reset(self):
        self.calls, self.launches, self.min_launches, self.current = 0, 0, None, 0
        self.read_bytes, self.reads = 0, {}

    @contextlib.contextmanager
    def window(self):
        """One call of the submission's launch()."""
        self.current, self.watching = 0, True
        try:
            yield self
        finally:
            self.watching = False
            self.calls += 1
            self.launches += self.current
            self.min_launches = self.current if self.min_launches is None else min(self.min_launches, self.current)

    def launched(self):
        if self.watching:
            self.current += 1

    def read(self, what: str, nbytes):
        if self.watching:
            self.read_bytes += int(nbytes)
            self.reads[what] = self.reads.get(what, 0) + int(nbytes)

    def note(self, what: str):
        if self.armed:
            self.sticky[what] = self.sticky.get(what, 0) + 1

    def take(self) -> dict:
        """The summary since the last take (JSON), then a fresh count."""
        summary = {"watched": self.installed, "calls": self.calls, "launches": self.launches,
                   "min_launches": self.min_launches or 0, "read_bytes": self.read_bytes,
                   "reads": dict(self.reads), "sticky": dict(self.sticky)}
        self._reset()
        return summary


def _caller_trusted(depth: int) -> bool:
    """Whether the code `depth` frames above the caller is Numba, the build's workbench or this
    worker (their reads of a device array are the machinery's, not the submission's)."""
    frame = sys._getframe(depth + 1)
    name = frame.f_globals.get("__name__", "") if frame is not None else ""
    return name in ("__main__", "numba") or name.startswith(("numba.", "workbench."))


_ARRAY_METADATA = frozenset(("shape", "strides", "ndim", "size", "itemsize", "dtype", "flags",
                             "nbytes", "alloc_size"))
_HOST_MEMORY = ("mapped_array", "pinned_array", "managed_array", "mapped", "pinned")


def watch_host(host: HostAccess, simulator: bool):
    """Wrap Numba's kernel launches and every way of reading device memory on the host so that
    `host` counts them (class- and module-level patches: in the grading worker, before the
    submission is imported; never in a process that runs anything else)."""
    from numba import cuda

    def sticky(f, name):
        def wrapper(*args, **kwargs):
            host.note(f"cuda.{name} (memory the host reads without a copy)")
            return f(*args, **kwargs)
        return wrapper

    for name in _HOST_MEMORY:
        if callable(getattr(cuda, name, None)):
            setattr(cuda, name, sticky(getattr(cuda, name), name))
    if simulator:
        _watch_simulator(host)
    else:
        _watch_gpu(host)
    host.installed = True


def _watch_simulator(host: HostAccess):
    """The simulator keeps device arrays in NumPy arrays (FakeCUDAArray._ary): reading them on
    the host is indexing, copy_to_host, NumPy's attributes and operators, or `._ary` itself; a
    kernel runs with the simulator's kernel context set."""
    from numba.cuda.simulator import kernel as sim_kernel
    from numba.cuda.simulator.cudadrv import devicearray as sim_array

    A = sim_array.FakeCUDAArray

    def on_host():
        return host.watching and sim_kernel._kernel_context is None

    call = sim_kernel.FakeCUDAKernel.__call__

    def launch(self, *args):
        if host.watching and not self._device and sim_kernel._kernel_context is None:
            host.launched()
            for x in args:
                if isinstance(x, np.ndarray) and x.ndim > 0:
                    host.read("a NumPy (host) array passed to a kernel", x.nbytes)
        return call(self, *args)

    getitem = A.__getitem__

    def __getitem__(self, idx):
        value = getitem(self, idx)
        if host.watching and sim_kernel._kernel_context is None and not isinstance(value, A):
            host.read("indexing a device array on the host (x[i])", getattr(value, "nbytes", 8))
        return value

    forward = A.__getattr__

    def __getattr__(self, name):
        if name not in _ARRAY_METADATA and on_host() and not _caller_trusted(1):
            host.read(f"NumPy on a device array on the host (.{name})", self.nbytes)
        return forward(self, name)

    def get_ary(self):
        d = self.__dict__
        ary = d["_wb_ary"] if "_wb_ary" in d else d["_ary"]
        if host.watching and sim_kernel._kernel_context is None and not _caller_trusted(1):
            host.read("the NumPy array behind a device array (._ary)", ary.nbytes)
        return ary

    def set_ary(self, value):
        self.__dict__["_wb_ary"] = value

    copy_to_host = A.copy_to_host

    def copy(self, ary=None, stream=0):
        if on_host():
            host.read("copy_to_host", self.nbytes)
        return copy_to_host(self, ary, stream)

    def operator(f, op):
        def wrapper(self, *args, **kwargs):
            if on_host() and not _caller_trusted(1):
                host.read(f"NumPy on a device array on the host ({op})", self.nbytes)
            return f(self, *args, **kwargs)
        return wrapper

    sim_kernel.FakeCUDAKernel.__call__ = launch
    A.__getitem__, A.__getattr__, A.copy_to_host = __getitem__, __getattr__, copy
    A._ary = property(get_ary, set_ary)
    for op in ("__str__", "__repr__", "__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__",
               "__add__", "__sub__", "__mul__", "__floordiv__", "__truediv__", "__mod__", "__pow__"):
        if op in vars(A):
            setattr(A, op, operator(vars(A)[op], op))


def _watch_gpu(host: HostAccess):
    """On a GPU every read of device memory by the host is a driver copy (copy_to_host, indexing,
    NumPy's __array__, NumPy arguments copied back after a launch) and every launch goes through
    the dispatcher's kernel objects."""
    from numba.cuda import dispatcher
    from numba.cuda.cudadrv import driver

    device_to_host = driver.device_to_host

    def counted_copy(dst, src, size, stream=0):
        if host.watching and sys._getframe(1).f_globals.get("__name__") != dispatcher.__name__:
            # (the dispatcher's own copies: a debug kernel's exception flag)
            host.read("a device-to-host copy (copy_to_host, indexing, NumPy on a device array)", size)
        return device_to_host(dst, src, size, stream)

    launch = dispatcher._Kernel.launch

    def counted_launch(self, *args, **kwargs):
        host.launched()
        return launch(self, *args, **kwargs)

    driver.device_to_host = counted_copy
    dispatcher._Kernel.launch = counted_launch


def _poisoned(shape, dtype) -> np.ndarray:
    """NaN in a device dtype (bfloat16 travels as uint16: NaN's bits)."""
    dtype = np.dtype(dtype)
    if dtype == np.uint16:
        return np.full(shape, 0x7FC0, np.uint16)
    return np.full(shape, np.nan, dtype)


def _nan_count(x) -> int:
    """NaN elements of a host copy of a device array (uint16: bfloat16 bits)."""
    if x.dtype == np.uint16:
        return int(np.count_nonzero(((x & 0x7F80) == 0x7F80) & ((x & 0x7F) != 0)))
    return int(np.isnan(x).sum())


def _changed(device_array, host_array) -> int:
    """Elements of `device_array` that differ bit for bit from `host_array`."""
    now = device_array.copy_to_host()
    bits = f"u{host_array.dtype.itemsize}"
    return int(np.count_nonzero(now.view(bits) != host_array.view(bits)))


def _inputs_changed(dev, host_arrays) -> dict:
    return {name: [c, int(x.size)] for name, d, x in zip("qkv", dev, host_arrays) if (c := _changed(d, x))}


def run_check(rung, problem, config, inputs, host: HostAccess | None = None, launches: int = 2):
    """`launches` launches of `rung` (config checked) on device copies of `inputs` (q, k, v as the
    device holds them: bfloat16 as uint16 bits), O and LSE poisoned with NaN before each. Returns
    the outputs as the device wrote them ({"o0", "l0", "o1", "l1"}) and what was noticed."""
    from numba import cuda

    from workbench.harness import runner

    host = host or HostAccess()
    host.take()
    ins = [np.ascontiguousarray(x) for x in inputs]
    dev = [cuda.to_device(x) for x in ins]
    arrays = {}
    for n in range(launches):
        do = cuda.to_device(_poisoned(problem.q_shape, ins[0].dtype))
        dlse = cuda.to_device(_poisoned(problem.lse_shape, np.float32))
        with host.window():
            runner.run(rung, problem, config, *dev, do, dlse)
        cuda.synchronize()
        arrays[f"o{n}"], arrays[f"l{n}"] = do.copy_to_host(), dlse.copy_to_host()
        del do, dlse  # the next launch gets fresh scratch, not this one's
        runner.release_memory()
    return arrays, {"inputs_changed": _inputs_changed(dev, ins), "host": host.take()}


class RepeatRun:
    """The repeat test, in the steps the grader feeds one at a time (each step's inputs arrive
    only after the previous step's outputs left):
    first:      a first call, then more on the same arrays (timed on a GPU), each output poisoned
                before and compared bitwise with the first after;
    new_inputs: new inputs written into the same arrays, one more call;
    new_shape:  a problem of other lengths, in new arrays, one call."""

    def __init__(self, rung, problem, config, host: HostAccess | None = None):
        self.rung, self.problem, self.config = rung, problem, config
        self.host = host or HostAccess()
        self.dev = self.do = self.dlse = self.pool = None

    def _poison(self):
        self.do.copy_to_device(self.nan[0])
        self.dlse.copy_to_device(self.nan[1])

    def _call(self):
        from workbench.harness import runner

        with self.host.window():
            runner.run(self.rung, self.problem, self.config, *self.dev, self.do, self.dlse, pool=self.pool)

    def first(self, inputs, calls: int = REPEAT_CALLS, timer=None):
        """`timer(fn, setup=...)` -> a dict with median_ms (a GPU's timed calls), or None."""
        from numba import cuda

        from workbench.harness import runner

        self.host.take()
        p = self.problem
        self.inputs = [np.ascontiguousarray(x) for x in inputs]
        self.dev = [cuda.to_device(x) for x in self.inputs]
        dtype = self.inputs[0].dtype
        self.do, self.dlse = cuda.device_array(p.q_shape, dtype), cuda.device_array(p.lse_shape, np.float32)
        self.nan = _poisoned(p.q_shape, dtype), _poisoned(p.lse_shape, np.float32)
        self.pool = runner.Pool()
        self._poison()
        self._call()
        cuda.synchronize()
        first = self.do.copy_to_host(), self.dlse.copy_to_host()
        count, mismatches = [1], []

        def check_previous():
            o, lse = self.do.copy_to_host(), self.dlse.copy_to_host()
            if count[0] > 1 and (o.tobytes() != first[0].tobytes() or lse.tobytes() != first[1].tobytes()):
                bits = f"u{o.itemsize}"
                unwritten = _nan_count(o) + _nan_count(lse)
                differ = int(np.count_nonzero(o.view(bits) != first[0].view(bits))
                             + np.count_nonzero(lse.view("u4") != first[1].view("u4")))
                mismatches.append([count[0], unwritten, differ])

        def setup():
            check_previous()
            self._poison()
            count[0] += 1

        meta = {}
        if timer is not None:
            meta["timing"] = timer(self._call, setup=setup)
        else:
            for _ in range(calls):
                setup()
                self._call()
        cuda.synchronize()
        check_previous()
        meta.update(calls=count[0], mismatches=mismatches[:5], mismatched_calls=len(mismatches),
                    inputs_changed=_inputs_changed(self.dev, self.inputs), host=self.host.take())
        return {"o0": first[0], "l0": first[1]}, meta

    def new_inputs(self, inputs):
        from numba import cuda

        self.host.take()
        self.inputs = [np.ascontiguousarray(x) for x in inputs]
        for d, x in zip(self.dev, self.inputs):
            d.copy_to_device(x)
        self._poison()
        self._call()
        cuda.synchronize()
        return ({"o_new": self.do.copy_to_host(), "l_new": self.dlse.copy_to_host()},
                {"inputs_changed_after_new": _inputs_changed(self.dev, self.inputs), "host": self.host.take()})

    def new_shape(self, problem, inputs):
        from workbench.harness import runner

        self.close()
        self.problem = problem
        runner.check_config(self.rung, problem, self.config)
        arrays, meta = run_check(self.rung, problem, self.config, inputs, self.host, launches=1)
        return ({"o_shape": arrays["o0"], "l_shape": arrays["l0"]},
                {"inputs_changed_shape": meta["inputs_changed"], "host": meta["host"]})

    def close(self):
        from workbench.harness import runner

        self.dev = self.do = self.dlse = self.pool = None
        runner.release_memory()


def cuda_timer(fn, setup=None) -> dict:
    """CUDA-event timing of `fn` (workbench.harness.timing.time_call) as a dict."""
    from workbench.harness import timing

    t = timing.time_call(fn, setup=setup)
    return t.as_dict() if hasattr(t, "as_dict") else dict(t)


def device_inputs(problem, seed) -> list:
    """q, k, v for `seed` as the device holds them (bfloat16 as uint16 bits)."""
    from workbench import dtypes

    return [dtypes.to_bits(x) for x in problem.make_inputs(seed)]


def time_reference(ref, problem, config, inputs, timer=None) -> float:
    """Median ms of the reference rung on `inputs` (in the grader's process, on a GPU)."""
    from numba import cuda

    from workbench.harness import runner

    arrays = [cuda.to_device(x) for x in inputs] + [cuda.device_array(problem.q_shape, inputs[0].dtype),
                                                    cuda.device_array(problem.lse_shape, np.float32)]
    pool = runner.Pool()
    t = (timer or cuda_timer)(lambda: runner.run(ref, problem, config, *arrays, pool=pool))
    arrays.clear()
    runner.release_memory()
    return float(t["median_ms"])


def run_repeat(rung, test, ref=None, timer=None) -> tuple[dict, dict]:
    """The whole repeat test in this process, inputs drawn from the test's seeds (the student's
    public test; the grader's own tests). With `ref` and `timer`, the calls are timed and the
    reference rung too, before and after (what the grader does on a GPU)."""
    run = RepeatRun(rung, test.problem, test.config)
    first_inputs = device_inputs(test.problem, test.seed)
    meta = {}
    if ref is not None:
        meta["reference_ms"] = [time_reference(ref, test.problem, test.config, first_inputs, timer)]
    arrays, m1 = run.first(first_inputs, timer=timer)
    hosts = [m1.pop("host")]
    meta.update(m1)
    new, m2 = run.new_inputs(device_inputs(test.problem, test.seed2))
    hosts.append(m2.pop("host"))
    arrays.update(new)
    meta.update(m2)
    if test.problem3 is not None:
        shape, m3 = run.new_shape(test.problem3, device_inputs(test.problem3, test.seed3))
        hosts.append(m3.pop("host"))
        arrays.update(shape)
        meta.update(m3)
    run.close()
    if ref is not None:
        meta["reference_ms"].append(time_reference(ref, test.problem, test.config, first_inputs, timer))
    meta["host"] = hosts
    return arrays, meta


# --- the wire between grader and worker -------------------------------------------------------
# A message: MAGIC, a 4-byte little-endian header length, a JSON header whose "arrays" lists
# [name, dtype, shape] for each array, then each array's bytes in that order. No pickle: the
# grader parses what an untrusted process wrote, and checks every field before it trusts it.

MAGIC = b"WBG1"
MAX_HEADER_BYTES = 1 << 20
WIRE_DTYPES = ("<f4", "<f2", "<u2")  # float32, float16, bfloat16 bits


class ProtocolError(Exception):
    """A message that is not what the protocol allows."""


class WorkerGone(Exception):
    """The other end closed its pipe."""


class WorkerTimeout(Exception):
    """The deadline passed while waiting for the other end."""


def encode_message(header: dict, arrays: dict | None = None) -> bytes:
    arrays = {n: np.ascontiguousarray(a) for n, a in (arrays or {}).items()}
    head = json.dumps({**header, "arrays": [[n, a.dtype.str, list(a.shape)] for n, a in arrays.items()]})
    head = head.encode()
    return b"".join([MAGIC, len(head).to_bytes(4, "little"), head] + [a.tobytes() for a in arrays.values()])


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes:
    chunks, left = [], n
    while left:
        if deadline is not None:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([fd], [], [], wait)[0]:
                raise WorkerTimeout()
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise WorkerGone(f"after {n - left} of {n} bytes")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _write_all(fd: int, data: bytes, deadline: float | None = None):
    view = memoryview(data)
    while view:
        if deadline is not None:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([], [fd], [], wait)[1]:
                raise WorkerTimeout()
        try:
            view = view[os.write(fd, view[:1 << 16]):]
        except BlockingIOError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            raise WorkerGone("the pipe is closed") from None


def _array_specs(header: dict, max_bytes: int) -> list:
    specs = header.get("arrays")
    if not isinstance(specs, list):
        raise ProtocolError("the header lists no arrays")
    out, names, total = [], set(), 0
    for spec in specs:
        if not (isinstance(spec, list) and len(spec) == 3 and isinstance(spec[0], str)
                and spec[1] in WIRE_DTYPES and isinstance(spec[2], list) and len(spec[2]) <= 6
                and all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 2**31 for n in spec[2])):
            raise ProtocolError(f"a malformed array description {str(spec)[:100]}")
        if spec[0] in names:
            raise ProtocolError(f"array {spec[0]!r} twice")
        names.add(spec[0])
        nbytes = int(np.prod(spec[2], dtype=np.int64)) * np.dtype(spec[1]).itemsize
        total += nbytes
        if total > max_bytes:
            raise ProtocolError(f"more array bytes than the test's outputs ({max_bytes})")
        out.append((spec[0], np.dtype(spec[1]), tuple(spec[2]), nbytes))
    return out


def read_message(fd: int, deadline: float | None = None, max_bytes: int = 1 << 40) -> tuple[dict, dict]:
    """One message from `fd`: (header, {name: read-only array}); ProtocolError when malformed."""
    magic = _read_exact(fd, 4, deadline)
    if magic != MAGIC:
        raise ProtocolError(f"a message starts with {MAGIC!r}, not {magic!r}")
    size = int.from_bytes(_read_exact(fd, 4, deadline), "little")
    if size > MAX_HEADER_BYTES:
        raise ProtocolError(f"a header of {size} bytes (at most {MAX_HEADER_BYTES})")
    try:
        header = json.loads(_read_exact(fd, size, deadline).decode())
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"the header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise ProtocolError("the header is not a JSON object")
    arrays = {}
    for name, dtype, shape, nbytes in _array_specs(header, max_bytes):
        arrays[name] = np.frombuffer(_read_exact(fd, nbytes, deadline), dtype=dtype).reshape(shape)
    return header, arrays


# --- the worker process: isolation and its loop --------------------------------------------------

_BLOCKED_EVENTS = frozenset((
    "os.system", "os.fork", "os.forkpty", "os.kill", "os.killpg", "os.posix_spawn", "os.spawn",
    "os.exec", "os.startfile", "pty.spawn", "signal.pthread_kill", "subprocess.Popen",
    "gc.get_objects", "gc.get_referrers", "gc.get_referents", "sys.addaudithook", "sys.settrace",
    "sys.setprofile", "sys._current_frames", "sys._current_exceptions", "resource.setrlimit",
    "resource.prlimit", "sqlite3.connect", "urllib.Request", "webbrowser.open", "ftplib.connect",
    "smtplib.connect", "poplib.connect", "imaplib.open", "nntplib.connect", "telnetlib.Telnet.open",
    "http.client.connect"))
_PATH_WRITE_EVENTS = frozenset((
    "os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.symlink", "os.link", "os.chmod",
    "os.chown", "os.truncate", "os.utime", "os.chflags", "os.lchflags", "os.lchmod", "os.lchown",
    "os.mkfifo", "os.mknod", "shutil.copyfile", "shutil.copymode", "shutil.copystat",
    "shutil.copytree", "shutil.move", "shutil.rmtree", "shutil.make_archive", "shutil.unpack_archive"))
_PATH_READ_EVENTS = frozenset(("os.listdir", "os.scandir", "glob.glob", "glob.glob/2"))
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


def _python_roots() -> set:
    """Where Python, NumPy, Numba and CUDA's files live (the worker reads them as it runs)."""
    import site
    import sysconfig

    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    roots |= {p for p in sysconfig.get_paths().values() if p}
    with contextlib.suppress(AttributeError):
        roots |= set(site.getsitepackages())
    for name in ("numpy", "numba", "llvmlite", "ml_dtypes", "numba_cuda", "nvidia", "cuda"):
        module = sys.modules.get(name)
        for where in getattr(module, "__path__", []) or []:
            roots.add(str(Path(where).parent))
    roots |= {p for p in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda") if p}
    roots |= {p for p in sys.path if p and os.path.isdir(p)}  # (the grader's, minus its checkout)
    with contextlib.suppress(Exception):  # where Numba found NVVM, libdevice and the CUDA libraries
        from numba.cuda.cuda_paths import get_cuda_paths

        roots |= {os.path.dirname(str(found.info)) for found in get_cuda_paths().values()
                  if getattr(found, "info", None)}
    return roots


def _lockdown(work, submission, deny, simulator: bool):
    """Install the worker's audit hook (it cannot be removed): reading is allowed in the build,
    the working folder and the system's and Python's own files, and refused in `deny` (the
    package's sources, the student's folder, the grader's folder; the most specific rule wins);
    writing only in the working folder; no processes, signals, sockets, frame or object-graph
    introspection by the submission, and (simulator) no C libraries loaded."""
    import threading

    @functools.lru_cache(maxsize=4096)
    def norm(p):
        return os.path.normpath(os.path.realpath(os.fsdecode(p)))

    build = str(Path(__file__).resolve().parent)
    allowed = {build, str(work), *_python_roots(), "/usr", "/lib", "/lib64", "/etc", "/sys",
               "/proc/self", f"/proc/{os.getpid()}", "/dev/null", "/dev/urandom", "/dev/shm"}
    rules = sorted([(norm(p), True) for p in allowed] + [(norm(p), False) for p in deny],
                   key=lambda r: (-len(r[0]), r[1]))  # most specific first; on a tie, refuse
    work, submission = norm(work), norm(submission)
    state = threading.local()

    def under(path, root):
        return path == root or path.startswith(root.rstrip(os.sep) + os.sep)

    def may_read(path):
        return next((ok for root, ok in rules if under(path, root)), False)

    def may_write(path):
        return under(path, work) or path == "/dev/null"

    def check(event, args):
        if event == "open":
            path, mode, flags = (list(args) + [None, None])[:3]
            if isinstance(path, int):
                return f"opening file descriptor {path}" if path > 2 else None
            p = norm(path)
            if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                    mode is None and isinstance(flags, int) and flags & _WRITE_FLAGS):
                return None if may_write(p) else f"writing {p} (only the working folder may be written)"
            return None if may_read(p) else f"reading {p} (outside the student build)"
        if event in _PATH_WRITE_EVENTS:
            bad = [norm(a) for a in args if isinstance(a, (str, bytes, os.PathLike)) and not may_write(norm(a))]
            return f"{event} on {bad[0]} (only the working folder may be changed)" if bad else None
        if event in _PATH_READ_EVENTS:
            path = args[0] if args else None
            if isinstance(path, (str, bytes, os.PathLike)) and not may_read(norm(path)):
                return f"listing {norm(path)} (outside the student build)"
            return None
        if event in _BLOCKED_EVENTS or event.startswith(("socket.", "subprocess.", "os.exec", "os.spawn")):
            return event
        if event == "ctypes.dlopen" and simulator:
            return "loading a C library"
        if event == "sys._getframe":
            caller = sys._getframe(2)  # check <- hook <- whoever called sys._getframe
            if caller is not None and norm(caller.f_code.co_filename) == submission:
                return "frame introspection"
        return None

    def hook(event, args):
        if getattr(state, "busy", False):
            return
        state.busy = True
        try:
            why = check(event, args)
        finally:
            state.busy = False
        if why:
            raise PermissionError(f"not allowed while grading: {why}")

    sys.addaudithook(hook)


def _limit_resources(cpu_s: int, memory_bytes: int, file_bytes: int):
    """CPU time, address space and file size limits, where the OS has them (not on Windows)."""
    try:
        import resource
    except ImportError:
        return
    for which, value in ((getattr(resource, "RLIMIT_CPU", None), cpu_s),
                         (getattr(resource, "RLIMIT_AS", None), memory_bytes),
                         (getattr(resource, "RLIMIT_FSIZE", None), file_bytes),
                         (getattr(resource, "RLIMIT_CORE", None), 0)):
        if which is None or value is None or (value <= 0 and which != getattr(resource, "RLIMIT_CORE", None)):
            continue
        with contextlib.suppress(ValueError, OSError):
            soft, hard = resource.getrlimit(which)
            extra = 5 if which == resource.RLIMIT_CPU else 0  # soft: SIGXCPU, then hard: SIGKILL
            cap = value + extra if hard == resource.RLIM_INFINITY else min(hard, value + extra)
            resource.setrlimit(which, (min(value, cap), cap))


def _forget_other_installs(build: Path):
    """An editable install of workbench adds an import hook that finds the real package; the
    worker imports only the student build."""
    def editable(x):
        return "__editable__" in str(getattr(x, "__module__", "")) or "__editable__" in type(x).__module__

    sys.meta_path[:] = [f for f in sys.meta_path if not editable(f)]
    sys.path_hooks[:] = [h for h in sys.path_hooks if not editable(h)]
    sys.path[:] = [p for p in sys.path if "__editable__" not in p]
    sys.path_importer_cache.clear()
    for name in [n for n in sys.modules if n.startswith("__editable__")]:
        del sys.modules[name]
    package = sys.modules["workbench"]  # (imported with this script, from the build first on sys.path)
    if not Path(package.__file__).resolve().is_relative_to(build.resolve()):
        raise SystemExit(f"grading worker: workbench comes from {package.__file__}, not the build")


def worker_main(results_fd: int, cpu_s: int, memory_bytes: int, file_bytes: int) -> int:
    """The grading worker's loop (see the module docstring): requests on stdin, results on
    `results_fd`."""
    build = Path(__file__).resolve().parent
    sys.dont_write_bytecode = True
    _limit_resources(cpu_s, memory_bytes, file_bytes)
    _forget_other_installs(build)
    from numba import cuda

    from workbench.harness import device, runner

    simulator = device.simulator()
    if not simulator:
        cuda.current_context()  # the driver and the context, before the lockdown
    host = HostAccess()
    watch_host(host, simulator)

    def send(header, arrays=None):
        _write_all(results_fd, encode_message(header, arrays))

    header, _ = read_message(0)
    if header.get("type") != "load":
        raise SystemExit(f"grading worker: expected a load request, got {header.get('type')!r}")
    path = header["module"]
    _lockdown(Path.cwd(), path, header.get("deny", []), simulator)
    host.armed = True
    with import_guard():
        try:
            rung = load_submission(path)
        except Exception as exc:
            send({"type": "load_error", "error": describe_error(exc, path), "host": host.take()})
            return 0
        send({"type": "loaded"})
        repeat = None
        while True:
            header, arrays = read_message(0)
            step = header.get("type")
            if step == "done":
                return 0
            try:
                problem = Problem(**header["problem"])
                config = header["config"]
                inputs = [arrays[n] for n in "qkv"]
                if step == "check":
                    runner.check_config(rung, problem, config)
                    out, meta = run_check(rung, problem, config, inputs, host)
                elif step == "repeat-first":
                    runner.check_config(rung, problem, config)
                    repeat = RepeatRun(rung, problem, config, host)
                    out, meta = repeat.first(inputs, timer=cuda_timer if header.get("timed") else None)
                elif step == "repeat-new":
                    out, meta = repeat.new_inputs(inputs)
                elif step == "repeat-shape":
                    out, meta = repeat.new_shape(problem, inputs)
                    repeat.close()
                else:
                    raise ValueError(f"unknown request {step!r}")
            except Exception as exc:
                out, meta = {}, {"error": describe_error(exc, path), "host": host.take()}
                _settle_simulator_threads()
            send({"type": "result", "test": header.get("test"), "step": step, "meta": meta}, out)


def _settle_simulator_threads(wait_s: float = 5.0) -> None:
    """Wait for the threads a kernel that raised left running. Numba's simulator re-raises the first
    thread's exception at once and only flags the others to abort at their next barrier; until they
    get there they run device functions, and while they do, the module's `cuda` is the simulator's
    in-kernel stand-in, so the next test's `cuda.jit` in that module would fail (AttributeError: no
    'jit'). A thread that never reaches a barrier again is left after `wait_s`."""
    import threading

    deadline = time.monotonic() + wait_s
    for t in threading.enumerate():
        if type(t).__name__ == "BlockThread" and t is not threading.current_thread():
            t.join(max(0.0, deadline - time.monotonic()))


# --- tests and judging (the grader's side) -----------------------------------------------------


@dataclass(frozen=True)
class Test:
    name: str
    kind: str  # public, hidden or repeat
    problem: Problem
    seed: int
    config: dict  # the reference rung's tiles for this test (the submission must take them)
    points: float
    seed2: int | None = None  # repeat: the new inputs written into the same arrays
    heads: int | None = None  # compare this many (batch, head) pairs with float64 (None: all)
    problem3: Problem | None = None  # repeat: the new shapes, in new arrays
    seed3: int | None = None  # ... and their inputs

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "problem": dataclasses.asdict(self.problem),
                "problem3": self.problem3 and dataclasses.asdict(self.problem3)}

    @classmethod
    def from_json(cls, d) -> Test:
        return cls(**{**d, "problem": Problem(**d["problem"]),
                      "problem3": d.get("problem3") and Problem(**d["problem3"])})


def hidden_problems(a: Assignment, rng, simulator: bool) -> list[tuple[Problem, bool]]:
    """The three hidden problems (and whether each runs at the other tile configuration). Their
    lengths are no multiple of 4 (so no tile of 4, 8, 16, … divides them) and none of the public
    tests' lengths; the first has Nq ≠ Nkv."""
    lo, hi = a.sim_lengths if simulator else (65, 300)
    avoid = {n for p in a.public for n in (p.seq_q, p.seq_kv)}
    pool = [n for n in range(lo, hi + 1) if n % 4 and n not in avoid]
    n = [int(x) for x in rng.choice(pool, size=6)]
    if n[0] == n[1] and len(pool) > 1:
        n[1] = int(rng.choice([x for x in pool if x != n[0]]))
    dims = a.dims[0] if simulator else a.dims[1]
    d = [int(x) for x in rng.choice(dims, size=3)]
    m = a.hidden_masks
    return [
        (Problem(1, 2, 1, n[0], n[1], d[0], "float32", **m[0]), False),  # Nq != Nkv, GQA
        (Problem(1, 2, 2, n[2], n[3], d[1], "float16", **m[1]), False),
        (Problem(2, 1, 1, n[4], n[5], d[2], "float32", **m[2]), True),  # other tiles
    ]


def plan_tests(a: Assignment, seed: int, simulator: bool) -> list[Test]:
    """Every test of a grade run, all drawn from `seed`."""
    from workbench.harness import runner
    from workbench.kernels import get as get_rung

    ref = get_rung(a.rung)
    rng = np.random.default_rng(seed)
    seeds = iter(int(s) for s in rng.integers(1, 2**31 - 1, size=16))
    main = runner.merged_config(ref, a.sim_config if simulator else None)
    other = runner.merged_config(ref, None if simulator else a.gpu_alt_config)
    tests = [Test(f"public-{i + 1}", "public", p, next(seeds), main, WEIGHTS["public"] * a.scale)
             for i, p in enumerate(a.public)]
    tests += [Test(f"hidden-{i + 1}", "hidden", p, next(seeds), other if alt else main,
                   WEIGHTS["hidden"] * a.scale)
              for i, (p, alt) in enumerate(hidden_problems(a, rng, simulator))]
    p0 = a.public[0]
    if simulator:
        repeat = Problem(1, 1, 1, 6, 6, p0.head_dim, "float32", p0.causal, p0.window)
        lo, hi = a.sim_lengths
        pool = [n for n in range(lo, hi + 1) if n % 4 and n != 6]
        n3 = [int(x) for x in rng.choice(pool, size=2)]
        shape = Problem(1, 1, 1, n3[0], n3[1], p0.head_dim, "float32", p0.causal, p0.window)
        tests.append(Test("repeat", "repeat", repeat, next(seeds), main, WEIGHTS["repeat"] * a.scale,
                          seed2=next(seeds), problem3=shape, seed3=next(seeds)))
    else:
        p = a.perf
        cut = [int(x) for x in 2 * rng.integers(0, 100, size=2) + 1]  # odd: no tile multiple
        shape = Problem(p.batch, p.heads, p.kv_heads, p.seq_q - cut[0], p.seq_kv - cut[1], p.head_dim,
                        p.dtype, p.causal, p.window)
        tests.append(Test("repeat", "repeat", p, next(seeds), main, WEIGHTS["repeat"] * a.scale,
                          seed2=next(seeds), heads=4, problem3=shape, seed3=next(seeds)))
    return tests


def _judge_outputs(test, seed, outputs, inputs_changed, problem=None):
    from workbench import dtypes
    from workbench.harness import verify

    problem = problem or test.problem
    q, k, v, pairs, ref_o, ref_lse = verify.truth(problem, seed, test.heads)
    outputs = [(dtypes.from_bits(np.asarray(o), problem.dtype), np.asarray(lse)) for o, lse in outputs]
    launched = verify.Launches(outputs=outputs, inputs_changed=dict(inputs_changed))
    report = verify.judge(verify.Report(test.name, problem, seed), launched, pairs, ref_o, ref_lse)
    return report, explain(report, outputs[0][0], ref_o, pairs)


def explain(report, out, ref_o, pairs) -> list[str]:
    """The report's failures, led by the plain-words reading of the commonest mistakes."""
    msgs = []
    b, h = (np.array(x) for x in zip(*pairs))
    sampled = np.asarray(out)[b, h]
    if sampled.size and not np.isnan(sampled).any() and not sampled.any() and ref_o.any():
        msgs.append("the output is all zeros")
    if report.unwritten:
        msgs.append("the grader fills O and LSE with NaN before each launch and some were never "
                    "written: does every row and column get its value?")
    return msgs + list(report.failures)


def host_messages(summary, failed: bool = False) -> list[str]:
    """What a call's host-access summary (HostAccess.take) says is wrong (empty: nothing, or not
    watched: the student's own public tests). `failed`: the call raised (launching nothing is
    then no news)."""
    if not summary or not summary.get("watched"):
        return []
    msgs = []
    if summary["read_bytes"] or summary["reads"]:
        what = "; ".join(f"{w}: {n} bytes" for w, n in sorted(summary["reads"].items()))
        msgs.append(f"while your launch() ran, the host read {summary['read_bytes']} bytes of device "
                    f"memory ({what}): the kernels must do the work, and a call that copies data to "
                    f"the host scores 0")
    if summary["sticky"]:
        msgs.append(f"your module used memory that the host reads without a copy "
                    f"({', '.join(sorted(summary['sticky']))}): not allowed; use gpu.empty")
    if summary["calls"] and summary["min_launches"] == 0 and not failed:
        msgs.append("a call of your launch() launched no kernel: the output must be computed by "
                    "kernels on the GPU")
    return msgs


def _merged_host(summaries):
    """One summary for the calls of several steps (a list of HostAccess.take() dicts)."""
    if not isinstance(summaries, list):
        return summaries
    watched = [s for s in summaries if s and s.get("watched")]
    if not watched:
        return None
    merged = {"watched": True, "calls": 0, "launches": 0, "read_bytes": 0, "reads": {}, "sticky": {}}
    for s in watched:
        for key in ("calls", "launches", "read_bytes"):
            merged[key] += s[key]
        for key in ("reads", "sticky"):
            for what, n in s[key].items():
                merged[key][what] = merged[key].get(what, 0) + n
    merged["min_launches"] = min((s["min_launches"] for s in watched if s["calls"]), default=0)
    return merged


def judge(test: Test, arrays: dict, meta: dict) -> list[str]:
    """What is wrong with a test's result (empty: it passed)."""
    msgs = host_messages(_merged_host(meta.get("host")), failed="error" in meta)
    if "error" in meta:
        return msgs + [meta["error"]]
    if test.kind != "repeat":
        outputs = [(arrays["o0"], arrays["l0"]), (arrays["o1"], arrays["l1"])]
        return msgs + _judge_outputs(test, test.seed, outputs, meta["inputs_changed"])[1]
    report, first = _judge_outputs(test, test.seed, [(arrays["o0"], arrays["l0"])], {})
    msgs += [f"first call: {m}" for m in first]
    for call, unwritten, differ in meta["mismatches"]:
        msgs.append(f"call {call} on the same inputs: "
                    + (f"{unwritten} output values never written (still NaN); " if unwritten else "")
                    + f"{differ} values differ from call 1: a kernel's result must not depend on "
                      f"how often it was called")
    if meta["mismatched_calls"] > len(meta["mismatches"]):
        msgs.append(f"... {meta['mismatched_calls']} of {meta['calls'] - 1} repeated calls differ")
    for name, (n, size) in meta["inputs_changed"].items():
        msgs.append(f"after the repeated calls, input {name} had {n} of {size} elements changed: "
                    f"a kernel must leave q, k and v as it found them")
    hint = " Does your code reuse a result from an earlier call?" if report.passed else ""
    if "o_new" in arrays:
        _, new = _judge_outputs(test, test.seed2, [(arrays["o_new"], arrays["l_new"])],
                                meta["inputs_changed_after_new"])
        if new:
            msgs.append(f"new inputs written into the same arrays, one more call:{hint}")
            msgs += [f"  {m}" for m in new]
    if "o_shape" in arrays:
        _, shape = _judge_outputs(test, test.seed3, [(arrays["o_shape"], arrays["l_shape"])],
                                  meta["inputs_changed_shape"], problem=test.problem3)
        if shape:
            msgs.append(f"new shapes ({test.problem3.describe()}) in new arrays, one call:{hint}")
            msgs += [f"  {m}" for m in shape]
    return msgs


def performance(a: Assignment, meta: dict, gate: bool) -> dict:
    """Performance credit from the repeat test's timings (GPU)."""
    if "timing" not in meta:
        return {"measured": False, "points": 0.0, "max_points": a.perf_points,
                "reason": "not timed: a test failed before the timing" if not gate else "not timed"}
    t_sub = meta["timing"]["median_ms"]
    t_ref = float(np.mean(meta["reference_ms"]))
    ratio = t_sub / t_ref
    credit = 1.0 if ratio <= FULL_CREDIT_RATIO else FULL_CREDIT_RATIO / ratio
    points = round(a.perf_points * credit, 2) if gate else 0.0
    return {"measured": True, "submission_ms": t_sub, "reference_ms": meta["reference_ms"],
            "ratio": ratio, "credit": credit if gate else 0.0, "points": points,
            "max_points": a.perf_points, "timing": meta["timing"],
            "formula": f"credit = 1 if r <= {FULL_CREDIT_RATIO} else {FULL_CREDIT_RATIO} / r, "
                       f"r = t_submission / t_reference",
            **({} if gate else {"reason": "correctness gates performance: a test failed"})}


# --- running the worker (the grader's side) ---------------------------------------------------

WORKER_MEMORY = 8 << 30  # the worker's address space in the simulator (a GPU's context needs more)
WORKER_FILE_BYTES = 16 << 20  # the most a worker may write to any file (its stdout and stderr too)
_SIGNALS = {getattr(signal, n): why for n, why in (
    ("SIGXCPU", "it used up its CPU time limit"), ("SIGXFSZ", "it wrote more than the file size limit"),
    ("SIGKILL", "it was killed (out of memory?)"), ("SIGSEGV", "it crashed (segmentation fault)"),
    ("SIGABRT", "it aborted")) if hasattr(signal, n)}


class _Stopped(Exception):
    """The worker stopped answering: kind is 'timeout', 'exit' or 'protocol'."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(kind, detail)
        self.kind, self.detail = kind, detail


def _worker_env(work: Path, simulator: bool) -> dict:
    keep = ("PATH", "LANG", "LC_ALL", "LD_LIBRARY_PATH", "CUDA_HOME", "CUDA_PATH", "CUDA_VISIBLE_DEVICES",
            "SYSTEMROOT")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.update({k: v for k, v in os.environ.items() if k.startswith("NUMBA_") and k != "NUMBA_ENABLE_CUDASIM"})
    env.update(HOME=str(work), TMPDIR=str(work), NUMBA_ENABLE_CUDASIM="1" if simulator else "0")
    return env


# `python -I` keeps the environment and the user's site out, and (3.11+) the script's folder off
# sys.path: the worker's sys.path is the build, then the grader's own entries (where its NumPy
# and Numba come from, e.g. a PYTHONPATH) minus the package's checkout, then Python's; the
# worker runs as __main__.
_BOOT = ("import json, runpy, sys; build = sys.argv.pop(1); paths = json.loads(sys.argv.pop(1)); "
         "sys.path[:] = [build] + paths + [p for p in sys.path if p not in paths]; "
         f"runpy.run_path(build + '/{WORKER_SCRIPT}', run_name='__main__')")


def _grader_paths(deny) -> list[str]:
    """The grader's sys.path entries the worker may have: existing folders outside `deny`."""
    def denied(p):
        return any(p == d or p.startswith(d.rstrip(os.sep) + os.sep) for d in deny)

    out = []
    for entry in sys.path:
        if not entry or "__editable__" in entry or not os.path.isdir(entry):
            continue
        p = os.path.realpath(entry)
        if not denied(p) and p not in out:
            out.append(p)
    return out


class _Worker:
    """The grading worker process and its two pipes, with one deadline for the whole run."""

    def __init__(self, build: Path, work: Path, logs: Path, timeout: float, simulator: bool, deny=()):
        self.deadline = time.monotonic() + timeout
        self.logs = logs
        read_end, write_end = os.pipe()
        paths = json.dumps(_grader_paths([os.path.realpath(d) for d in deny]))
        cmd = [sys.executable, "-I", "-B", "-c", _BOOT, str(build), paths, "_worker", "--results-fd",
               str(write_end), "--cpu", str(int(2 * timeout) + 30),
               "--memory", str(WORKER_MEMORY if simulator else 0), "--file-size", str(WORKER_FILE_BYTES)]
        with open(logs / "stdout.txt", "wb") as out, open(logs / "stderr.txt", "wb") as err:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=out, stderr=err, cwd=work,
                                         env=_worker_env(work, simulator), pass_fds=(write_end,),
                                         start_new_session=True)
        os.close(write_end)
        self.results = read_end
        os.set_blocking(self.proc.stdin.fileno(), False)

    def request(self, header: dict, arrays: dict | None, max_bytes: int) -> tuple[dict, dict]:
        """Send one request, read one answer (validated only as a message here)."""
        try:
            _write_all(self.proc.stdin.fileno(), encode_message(header, arrays), self.deadline)
            return read_message(self.results, self.deadline, max_bytes)
        except WorkerTimeout:
            self.kill()
            raise _Stopped("timeout") from None
        except WorkerGone:
            try:
                code = self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
                code = self.proc.wait()
            raise _Stopped("exit", str(code)) from None
        except ProtocolError as exc:
            self.kill()
            raise _Stopped("protocol", str(exc)) from None

    def finish(self):
        with contextlib.suppress(WorkerTimeout, WorkerGone, OSError):
            _write_all(self.proc.stdin.fileno(), encode_message({"type": "done"}), time.monotonic() + 5)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def close(self):
        if self.proc.poll() is None:
            self.kill()
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        with contextlib.suppress(OSError):
            os.close(self.results)

    def stderr_tail(self) -> str:
        return (self.logs / "stderr.txt").read_bytes()[-2000:].decode(errors="replace")


def _why_stopped(stop: _Stopped, timeout: float, tail: str) -> str:
    if stop.kind == "timeout":
        return (f"stopped after {timeout:.0f} s (an endless loop, or threads waiting at a barrier "
                f"that not all of them reach?)")
    if stop.kind == "protocol":
        return f"the grading process sent an unreadable result ({stop.detail[:200]})"
    code = int(stop.detail) if stop.detail.lstrip("-").isdigit() else None
    last = [line for line in tail.splitlines() if line.strip()][-1:]
    why = (f"the grading process ended (exit status {code}): your code crashed or exited the process"
           + (f"; {_SIGNALS[-code]}" if code is not None and code < 0 and -code in _SIGNALS else ""))
    return why + (f" [{last[0][:200]}]" if last else "")


def _request(step: str, test: Test, problem: Problem, **extra) -> dict:
    """What the worker learns about a test: its name, problem and tiles (never a seed)."""
    return {"type": step, "test": test.name, "problem": dataclasses.asdict(problem),
            "config": test.config, **extra}


def _is_count(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**62


def _valid_host(summary) -> bool:
    return (isinstance(summary, dict) and isinstance(summary.get("watched"), bool)
            and all(_is_count(summary.get(k)) for k in ("calls", "launches", "min_launches", "read_bytes"))
            and all(isinstance(summary.get(k), dict) and all(isinstance(w, str) and _is_count(n)
                                                             for w, n in summary[k].items())
                    for k in ("reads", "sticky")))


def _valid_changes(changes) -> bool:
    return isinstance(changes, dict) and all(
        n in ("q", "k", "v") and isinstance(c, list) and len(c) == 2 and all(map(_is_count, c))
        for n, c in changes.items())


_STEP_META = {  # per step: its meta fields and their checks (besides "host")
    "check": {"inputs_changed": _valid_changes},
    "repeat-first": {
        "calls": _is_count, "mismatched_calls": _is_count, "inputs_changed": _valid_changes,
        "mismatches": lambda m: isinstance(m, list) and len(m) <= 5 and all(
            isinstance(x, list) and len(x) == 3 and all(map(_is_count, x)) for x in m)},
    "repeat-new": {"inputs_changed_after_new": _valid_changes},
    "repeat-shape": {"inputs_changed_shape": _valid_changes},
}
_STEP_OUTPUTS = {"check": ("0", "1"), "repeat-first": ("0",), "repeat-new": ("_new",), "repeat-shape": ("_shape",)}


def _valid_timing(t) -> bool:
    return (isinstance(t, dict) and all(isinstance(t.get(k), (int, float)) and not isinstance(t.get(k), bool)
                                        and np.isfinite(t[k]) and t[k] > 0
                                        for k in ("median_ms", "p20_ms", "p80_ms")))


def _expected_outputs(step: str, problem: Problem) -> dict:
    from workbench import dtypes

    io = dtypes.device_dtype(problem.dtype)
    out = {}
    for suffix in _STEP_OUTPUTS[step]:
        out[f"o{suffix}"] = (tuple(problem.q_shape), io)
        out[f"l{suffix}"] = (tuple(problem.lse_shape), np.dtype(np.float32))
    return out


def _result(worker: _Worker, step: str, test: Test, problem: Problem, inputs, **extra) -> tuple[dict, dict]:
    """One step of a test in the worker: its (meta, arrays), every field checked (ProtocolError
    via _Stopped when anything is off: that test scores 0)."""
    expected = _expected_outputs(step, problem)
    limit = sum(int(np.prod(s)) * d.itemsize for s, d in expected.values())
    header, arrays = worker.request(_request(step, test, problem, **extra),
                                    dict(zip("qkv", inputs)), max_bytes=limit)

    def bad(why):
        worker.kill()
        return _Stopped("protocol", why)

    if header.get("type") != "result" or header.get("step") != step or header.get("test") != test.name:
        raise bad(f"expected the result of {test.name} ({step}), got {json.dumps(header)[:120]}")
    meta = header.get("meta")
    if not isinstance(meta, dict) or not _valid_host(meta.get("host")):
        raise bad("no valid host-access summary")
    if "error" in meta:
        if not isinstance(meta["error"], str) or arrays:
            raise bad("a malformed error report")
        return {"error": meta["error"][:500], "host": meta["host"]}, {}
    checks = _STEP_META[step]
    for key, ok in checks.items():
        if not ok(meta.get(key)):
            raise bad(f"field {key!r} is missing or malformed")
    if step == "repeat-first" and "timing" in meta and not _valid_timing(meta["timing"]):
        raise bad("field 'timing' is malformed")
    got = {n: (tuple(a.shape), a.dtype) for n, a in arrays.items()}
    if got != expected:
        raise bad(f"arrays {sorted(got)} with shapes/dtypes other than the test's outputs")
    clean = {k: meta[k] for k in (*checks, "host", "timing") if k in meta}
    return clean, dict(arrays)


def _run_repeat(worker: _Worker, a: Assignment, t: Test, simulator: bool, gate: bool) -> tuple[list, dict]:
    """The repeat test's three steps; on a GPU (gate: every test before passed) the worker times
    the submission and this process times the reference before and after it."""
    from workbench.kernels import get as get_rung

    timed = a.perf_points > 0 and not simulator and gate
    inputs = device_inputs(t.problem, t.seed)
    reference_ms = [time_reference(get_rung(a.rung), t.problem, t.config, inputs)] if timed else []
    meta, arrays, hosts = {}, {}, []
    steps = (("repeat-first", t.problem, inputs, {"timed": timed}),
             ("repeat-new", t.problem, None, {}), ("repeat-shape", t.problem3, None, {}))
    seeds = {"repeat-first": t.seed, "repeat-new": t.seed2, "repeat-shape": t.seed3}
    for step, problem, ins, extra in steps:
        ins = ins if ins is not None else device_inputs(problem, seeds[step])  # just in time
        m, out = _result(worker, step, t, problem, ins, **extra)
        hosts.append(m.pop("host"))
        if "error" in m:
            return judge(t, {}, {"error": f"{step.replace('repeat-', '')} step: {m['error']}", "host": hosts}), meta
        meta.update(m)
        arrays.update(out)
    if timed:
        reference_ms.append(time_reference(get_rung(a.rung), t.problem, t.config, inputs))
        meta["reference_ms"] = reference_ms
    meta["host"] = hosts
    return judge(t, arrays, meta), meta


def _submission_deny(folder: Path, tmp: Path) -> list[str]:
    """What the worker may not read: the package's sources (a checkout: its whole tree, with
    the tests' solutions and the experiments), the student's folder and the folder around it
    (other students' submissions), the grader's folder."""
    package = _package_dir()
    deny = [str(package), str(folder.resolve()), str(folder.resolve().parent), str(tmp)]
    if (package.parent / "pyproject.toml").exists():
        deny.append(str(package.parent))
    return deny


def _run_tests(a: Assignment, path: Path, folder: Path, tests: list, simulator: bool, timeout: float):
    """Every test in one worker: ({test: messages}, {test: meta}, how the worker ended)."""
    results, metas = {}, {}
    with tempfile.TemporaryDirectory(prefix="grade-") as tmp:
        tmp = Path(tmp)
        build = student_build(tmp / "build")
        module = build / "submission" / a.module_file
        module.parent.mkdir()
        shutil.copyfile(path, module)
        (tmp / "work").mkdir()
        (tmp / "logs").mkdir()
        deny = _submission_deny(folder, tmp)
        worker = _Worker(build, tmp / "work", tmp / "logs", timeout, simulator, deny)
        current, stop = None, None
        try:
            header, _ = worker.request({"type": "load", "module": str(module), "deny": deny}, None,
                                       max_bytes=0)
            if header.get("type") == "load_error" and isinstance(header.get("error"), str):
                err = header["error"][:500]
                results = {t.name: [f"not run: your module failed to load: {err}"] for t in tests}
                worker.finish()
            elif header.get("type") != "loaded":
                worker.kill()
                raise _Stopped("protocol", f"expected the module loaded, got {json.dumps(header)[:120]}")
            else:
                for t in tests:
                    current = t
                    if t.kind == "repeat":
                        gate = all(not results[x.name] for x in tests if x.kind != "repeat")
                        results[t.name], metas[t.name] = _run_repeat(worker, a, t, simulator, gate)
                    else:
                        meta, arrays = _result(worker, "check", t, t.problem, device_inputs(t.problem, t.seed))
                        metas[t.name] = meta
                        results[t.name] = judge(t, arrays, meta)
                worker.finish()
        except _Stopped as exc:
            stop = exc
        finally:
            worker.close()
        tail = worker.stderr_tail()
        run = {"exit": worker.proc.returncode, "timed_out": stop is not None and stop.kind == "timeout"}
        if stop is not None:
            run["stopped"] = stop.kind
            run["stderr_tail"] = tail
            why = _why_stopped(stop, timeout, tail)
            if current is None:
                results = {t.name: [f"not run: while your module was loading, {why}"] for t in tests}
            else:
                done = False
                for t in tests:
                    if t is current:
                        results[t.name] = ([f"unreadable result: {why}; this test scores 0"]
                                           if stop.kind == "protocol" else [f"not finished: {why}"])
                        done = True
                    elif done:
                        verb = {"timeout": "was stopped", "exit": "ended the process",
                                "protocol": "sent an unreadable result"}[stop.kind]
                        results[t.name] = [f"not run: test {current.name} {verb}"]
    return results, metas, run


def default_timeout(simulator: bool) -> float:
    return 600.0 if simulator else 300.0


def default_seed() -> int:
    """The grade seed when none is given: WORKBENCH_COURSE_SEED, else COURSE_SEED."""
    value = os.environ.get(SEED_VARIABLE, "").strip()
    if not value:
        return COURSE_SEED
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{SEED_VARIABLE}={value!r} is not an integer") from None


def grade(folder, assignment: str | None = None, seed: int | None = None,
          timeout: float | None = None, rules: bool = True) -> dict:
    """Grade the submission in `folder`: a dict with per-test points and messages, performance
    and the total (see the module docstring). The same submission and seed give the same dict
    (in the simulator; on a GPU the measured times vary). `rules=False` skips the static rules:
    only for the grader's own tests, which show that the worker's isolation holds by itself."""
    from workbench.harness import device

    folder = Path(folder)
    manifest = _manifest(folder, required=assignment is None)
    a = get(assignment or manifest["assignment"])
    path = _module_path(folder, a)
    simulator = device.simulator()
    seed = default_seed() if seed is None else int(seed)
    timeout = default_timeout(simulator) if timeout is None else float(timeout)
    tests = plan_tests(a, seed, simulator)
    notes = []
    if manifest.get("rung_sha256") not in (None, hashlib.sha256(rung_source(a).encode()).hexdigest()):
        notes.append("the reference rung changed since this folder was released")
    if left := stubs_left(path):
        notes.append(f"{left} solution region(s) still hold the stub")
    results, metas, run = {}, {}, None
    violations = rule_violations(path) if rules else []
    if violations:
        for t in tests:
            results[t.name] = ["not run: the submission breaks the rules:"] + violations
    else:
        results, metas, run = _run_tests(a, path, folder, tests, simulator, timeout)
    rows, all_passed = [], True
    public_ok = all(not results[t.name] for t in tests if t.kind == "public")
    for t in tests:
        msgs = results[t.name]
        ran = not any(m.startswith(("not run", "not finished", "unreadable")) for m in msgs)
        if msgs and t.kind == "hidden" and public_ok and ran:
            msgs = [f"this hidden test ({t.problem.describe()}) fails while the public ones pass: "
                    f"does your code assume the public tests' shapes, tiles or seeds?"] + msgs
        passed = not msgs
        all_passed &= passed
        rows.append({"name": t.name, "kind": t.kind, "problem": t.problem.describe(),
                     "config": t.config, "seed": t.seed, "passed": passed,
                     "points": t.points if passed else 0.0, "max_points": t.points, "messages": msgs})
    perf = None
    if not simulator:
        perf = performance(a, metas.get("repeat", {}), all_passed)
    points = sum(r["points"] for r in rows) + (perf["points"] if perf else 0.0)
    max_points = sum(r["max_points"] for r in rows) + (a.perf_points if perf else 0)
    return {"assignment": a.name, "rung": a.rung, "module": str(path), "mode": device.mode(),
            "seed": seed, "tests": rows,
            "performance": perf or {"measured": False, "reason": "simulator: no timing, not graded",
                                    "max_points": 0},
            "points": round(points, 2), "max_points": max_points, "passed": all_passed,
            "notes": notes, "worker": run}


# --- exports for instructors: Gradescope and a CSV of a whole class ------------------------------

GRADESCOPE_VISIBILITY = {"public": "visible", "repeat": "visible", "hidden": "after_due_date"}


def gradescope_results(r: dict) -> dict:
    """A grade as Gradescope's autograder results.json: score, max_score and one entry per test
    (name, score, max_score, status, output, visibility). Hidden tests' names and messages say
    their shapes, so students see them after the due date; public ones and repeat at once."""
    tests = [{"name": f"{t['name']} ({t['problem']})", "score": t["points"], "max_score": t["max_points"],
              "status": "passed" if t["passed"] else "failed",
              "output": "\n".join(t["messages"]) if t["messages"] else "passed",
              "visibility": GRADESCOPE_VISIBILITY[t["kind"]]} for t in r["tests"]]
    perf = r["performance"]
    if perf.get("max_points"):
        tests.append({"name": "performance", "score": perf.get("points", 0.0), "max_score": perf["max_points"],
                      "status": "passed" if perf.get("points") == perf["max_points"] else "failed",
                      "output": (f"{perf['submission_ms']:.3f} ms vs the reference's "
                                 f"{float(np.mean(perf['reference_ms'])):.3f} ms: r = {perf['ratio']:.2f}, "
                                 f"credit {perf['credit']:.2f}" if perf.get("measured") else "")
                      + (f" ({perf['reason']})" if perf.get("reason") else ""),
                      "visibility": "visible"})
    output = (f"{r['assignment']} ({r['rung']} rung), {r['mode']}, grade seed {r['seed']}: "
              f"{r['points']:.2f} / {r['max_points']}" + "".join(f"\nnote: {n}" for n in r["notes"]))
    return {"score": r["points"], "max_score": r["max_points"], "output": output,
            "visibility": "visible", "stdout_visibility": "hidden", "tests": tests}


def write_gradescope(r: dict, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(gradescope_results(r), indent=1) + "\n")
    return path


CSV_FIELDS = ("submission", "assignment", "seed", "points", "max_points", "passed", "error")


def grade_all(folder, csv_path=None, assignment: str | None = None, seed: int | None = None,
              timeout: float | None = None) -> list[dict]:
    """Grade every submission folder inside `folder` (sorted by name), one grade seed for all;
    write a CSV row per submission (CSV_FIELDS, then each test's points and "performance") when
    `csv_path` is given. A folder that cannot be graded gets a row with its error and 0 points."""
    seed = default_seed() if seed is None else int(seed)
    rows = []
    for sub in sorted(p for p in Path(folder).iterdir() if p.is_dir()):
        try:
            r = grade(sub, assignment=assignment, seed=seed, timeout=timeout)
        except (ValueError, OSError) as exc:
            rows.append({"submission": sub.name, "assignment": assignment or "", "seed": seed, "points": 0.0,
                         "max_points": "", "passed": False, "error": str(exc), "tests": {}})
            continue
        tests = {t["name"]: t["points"] for t in r["tests"]}
        if r["performance"].get("max_points"):
            tests["performance"] = r["performance"].get("points", 0.0)
        rows.append({"submission": sub.name, "assignment": r["assignment"], "seed": seed,
                     "points": r["points"], "max_points": r["max_points"], "passed": r["passed"],
                     "error": "", "tests": tests})
    if csv_path is not None:
        columns = list(dict.fromkeys(name for row in rows for name in row["tests"]))
        with open(csv_path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(list(CSV_FIELDS) + columns)
            for row in rows:
                writer.writerow([row[k] for k in CSV_FIELDS] + [row["tests"].get(c, "") for c in columns])
    return rows


def public_check(folder, case: str) -> list[str]:
    """The student's public tests, in the pytest process: 'rules', 'public-N' or 'repeat'.
    Returns what is wrong (empty: passed)."""
    from workbench.harness import device, runner
    from workbench.kernels import get as get_rung

    folder = Path(folder)
    a = get(_manifest(folder)["assignment"])
    path = _module_path(folder, a)
    violations = rule_violations(path)
    if case == "rules" or violations:
        return violations
    simulator = device.simulator()
    ref = get_rung(a.rung)
    config = runner.merged_config(ref, a.sim_config if simulator else None)
    name = f"{SUBMISSION_MODULE}_{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]}"
    with import_guard(name):
        try:
            rung = load_submission(path, name)
            if case == "repeat":
                p0 = a.public[0]
                problem = Problem(1, 1, 1, 6, 6, p0.head_dim, "float32", p0.causal, p0.window)
                shape = Problem(1, 2, 1, 7, 5, p0.head_dim, "float32", p0.causal, p0.window)
                test = Test("repeat", "repeat", problem, PUBLIC_SEED, config, 0, seed2=PUBLIC_SEED + 1,
                            problem3=shape, seed3=PUBLIC_SEED + 2)
                runner.check_config(rung, problem, config)
                arrays, meta = run_repeat(rung, test)
            else:
                i = int(case.split("-")[1]) - 1
                test = Test(case, "public", a.public[i], PUBLIC_SEED + i, config, 0)
                runner.check_config(rung, test.problem, config)
                arrays, meta = run_check(rung, test.problem, config, device_inputs(test.problem, test.seed))
        except Exception as exc:
            return [describe_error(exc, path)]
    return judge(test, arrays, meta)


# --- validate -----------------------------------------------------------------------------------


def validate(names=None, seed: int | None = None, timeout: float | None = None) -> list[dict]:
    """The instructor's check, per assignment: the released copy filled with the reference's
    regions is the rung's source again; it passes every test; the stub fails every test."""
    results = []
    for a in [get(n) for n in names] if names else ASSIGNMENTS:
        with tempfile.TemporaryDirectory(prefix=f"validate-{a.name}-") as tmp:
            folder = release(a.name, Path(tmp) / a.name)
            problems = []
            stub = grade(folder, seed=seed, timeout=timeout)
            passing_stub = [t["name"] for t in stub["tests"] if t["passed"]]
            if passing_stub:
                problems.append(f"the stub passes {passing_stub}")
            fill(folder)
            if (folder / a.module_file).read_text() != complete_source(a):
                problems.append("release + fill does not give back the rung's source")
            filled = grade(folder, seed=seed, timeout=timeout)
            failing = {t["name"]: t["messages"] for t in filled["tests"] if not t["passed"]}
            if failing:
                problems.append(f"the reference fails {failing}")
            results.append({"assignment": a.name, "ok": not problems, "problems": problems,
                            "reference": filled, "stub": stub})
    return results


# --- command line -------------------------------------------------------------------------------


def _print_grade(r: dict):
    print(f"{r['assignment']} ({r['rung']} rung) — {r['mode']}, grade seed {r['seed']}")
    width = max(len(t["problem"]) for t in r["tests"])
    for t in r["tests"]:
        verdict = "pass" if t["passed"] else "FAIL"
        print(f"  {t['name']:<9} {t['problem']:<{width}}  {t['points']:>5.2f} / {t['max_points']:<5.2f} {verdict}")
        for m in t["messages"][:6]:
            print(f"      {m}")
    perf = r["performance"]
    if perf.get("measured"):
        print(f"  performance: {perf['submission_ms']:.3f} ms vs reference "
              f"{np.mean(perf['reference_ms']):.3f} ms, r = {perf['ratio']:.2f}, "
              f"{perf['points']:.2f} / {perf['max_points']}" + (f" ({perf['reason']})" if "reason" in perf else ""))
    else:
        print(f"  performance: {perf.get('reason', 'not measured')}")
    for note in r["notes"]:
        print(f"  note: {note}")
    print(f"total {r['points']:.2f} / {r['max_points']}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workbench.assignments", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the assignments, their points and what each teaches")
    p = sub.add_parser("release", help="write a student's folder")
    p.add_argument("name")
    p.add_argument("--out", required=True)
    p.add_argument("--force", action="store_true", help="overwrite an existing module")
    p = sub.add_parser("fill", help="fill a folder's stubs with the reference solution (or --from FILE)")
    p.add_argument("folder")
    p.add_argument("--from", dest="solution", help="a file of ### BEGIN/END SOLUTION regions")
    seed_help = (f"the grade seed: hidden shapes and all inputs are drawn from it (default: "
                 f"${SEED_VARIABLE}, else {COURSE_SEED}; grade a course with its own, kept private)")
    p = sub.add_parser("grade", help="grade a student's folder")
    p.add_argument("folder")
    p.add_argument("--json", action="store_true")
    p.add_argument("--seed", type=int, help=seed_help)
    p.add_argument("--timeout", type=float, help="seconds for the submission's process")
    p.add_argument("--assignment", help="grade as this assignment (default: the folder's manifest)")
    p.add_argument("--gradescope", metavar="PATH", help="also write Gradescope's results.json there")
    p = sub.add_parser("grade-all", help="grade every submission folder in a folder, one seed for all")
    p.add_argument("folder")
    p.add_argument("--csv", required=True, metavar="OUT", help="one row per submission")
    p.add_argument("--seed", type=int, help=seed_help)
    p.add_argument("--timeout", type=float)
    p.add_argument("--assignment", help="grade every folder as this assignment")
    p = sub.add_parser("validate", help="reference passes everything, stub fails everything")
    p.add_argument("names", nargs="*")
    p.add_argument("--json", action="store_true")
    p.add_argument("--seed", type=int)
    p.add_argument("--timeout", type=float)
    p = sub.add_parser("_worker")  # the grading worker (run from the student build)
    p.add_argument("--results-fd", type=int, required=True)
    p.add_argument("--cpu", type=int, required=True)
    p.add_argument("--memory", type=int, required=True)
    p.add_argument("--file-size", type=int, required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "_worker":
            return worker_main(args.results_fd, args.cpu, args.memory, args.file_size)
        elif args.command == "list":
            print(f"{'assignment':<15} {'rung':<7} {'points':<16} {'regions':<8} teaches")
            for a in ASSIGNMENTS:
                pts = f"{a.correctness_points} + {a.perf_points} GPU"
                print(f"{a.name:<15} {a.rung:<7} {pts:<16} {len(a.hints):<8} {a.teaches}")
        elif args.command == "release":
            folder = release(args.name, args.out, force=args.force)
            print(f"released {args.name} to {folder}: edit {get(args.name).module_file}, run pytest there")
        elif args.command == "fill":
            print(f"filled {fill(args.folder, args.solution)}")
        elif args.command == "grade":
            r = grade(args.folder, assignment=args.assignment, seed=args.seed, timeout=args.timeout)
            if args.gradescope:
                write_gradescope(r, args.gradescope)
            print(json.dumps(r, indent=1, default=str)) if args.json else _print_grade(r)
        elif args.command == "grade-all":
            rows = grade_all(args.folder, args.csv, assignment=args.assignment, seed=args.seed,
                             timeout=args.timeout)
            for row in rows:
                print(f"{row['submission']:<24} {row['points']:>6.2f} / {row['max_points']!s:<4} "
                      + (f"error: {row['error']}" if row["error"] else ""))
            print(f"wrote {args.csv}: {len(rows)} submission(s)")
        elif args.command == "validate":
            results = validate(args.names or None, seed=args.seed, timeout=args.timeout)
            if args.json:
                print(json.dumps(results, indent=1, default=str))
            else:
                for r in results:
                    ref = r["reference"]
                    print(f"{r['assignment']:<15} {'ok' if r['ok'] else 'FAILED'}  reference "
                          f"{ref['points']:.2f} / {ref['max_points']}, stub {r['stub']['points']:.2f}"
                          + "".join(f"\n    {p}" for p in r["problems"]))
            return 0 if all(r["ok"] for r in results) else 1
    except (ValueError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
