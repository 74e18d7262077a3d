"""Course assignments: student versions of the rungs, hidden tests, and a grader that is hard to fool.

    python -m workbench.course.assignments list
    python -m workbench.course.assignments release naive-softmax --out DIR    # the student's folder
    python -m workbench.course.assignments grade DIR [--json]                  # public + hidden tests
    python -m workbench.course.assignments fill DIR [--from FILE]              # instructor: fill the stubs
    python -m workbench.course.assignments validate                            # instructor: self-check

Student versions follow nbgrader's conventions. In the reference rung sources
(workbench/kernels/*.py) `### BEGIN SOLUTION` / `### END SOLUTION` comments mark what a student
writes; a marker may name its assignment (`### BEGIN SOLUTION causal-skip`) where one source serves
two. `release` copies the rung module, replaces each of the assignment's regions by
`# YOUR CODE HERE` and `raise NotImplementedError()`, keeps every other region's code, and writes a
README with the task and public tests that plain `pytest` runs in the folder. Hidden tests never
go into the folder: their shapes and all seeds are drawn when grading.

Grading (`grade DIR`), in order:
1. Rules, read from the source without running it: imports only math, functools, numpy, numba,
   workbench.kernels.common, workbench.kernels.warp and workbench.harness.runner; no reference
   (workbench.reference, another rung's module, torch), no file access, no host copies, no
   streams, no introspection.
2. The submission runs in a worker subprocess with a time limit (a crash, exit() or a hang costs
   the tests not finished, never the grader), through the same runner as the rungs, at the
   reference rung's tiles. The worker never holds the float64 truth: it draws the inputs from the
   seeds it is given, runs the submission with NaN-poisoned outputs, copies the inputs back to see
   whether they were written, and hands everything to the grader, which judges it with
   `workbench.harness.verify.judge` (errors against float64, unwritten elements, two launches
   bitwise equal, inputs untouched). While the submission runs, importing a forbidden module from
   it fails (an import guard, beside the static rules).
3. Tests: public (the released shapes, fresh seeds), hidden (lengths that are not tile multiples,
   Nq ≠ Nkv, GQA, float16, masks and another tile configuration, all drawn from the grade seed),
   and `repeat`: the submission is called again and again on the same arrays (on a GPU: the timed
   calls), each output poisoned before and compared bitwise with the first after, then new inputs
   are written into the same arrays and the output is judged again (a cached result fails).
4. Performance, on a GPU only and only when every test passes: the submission and the reference
   rung are timed in the worker (`timing.time_call`, L2 flushed, median; the reference once before
   and once after the submission, averaged) on the assignment's timing problem. With
   r = t_submission / t_reference, the credit is 1 for r ≤ 1.2 and 1.2 / r beyond, times the
   assignment's performance points.
"""

from __future__ import annotations

import argparse
import ast
import builtins
import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import os
import re
import secrets
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
        teaches="the FA2 inner loop on a CTA's tile: row max across the threads of a row, base-2 "
                "exponentials, rescaling without dividing, partial row sums added once at the end",
        task="Write the two softmax parts of the `flash2` kernel. Region 1 (once per KV tile): "
             "for each of the thread's RM rows r = tr + TR·a, m_new = max(m[a], the TC partial "
             "maxima in red[r, :]); alpha = 2^(m[a] - m_new) (a row still at -inf uses 0 in place "
             "of m_new so that exp2 stays finite); P = 2^(s - m_new) into p_ij[r, tc + TC·c]; "
             "l[a] = alpha·l[a] + rowsum of the thread's own keys; acc[a, :] *= alpha. Region 2 "
             "(once, at the end): l of row r is the sum of the TC partial sums in red[r, :]; for "
             "rows inside Nq write O = acc / l to the thread's columns and, from the thread with "
             "tc == 0, LSE = ln2·(m + log2 l); a row that saw no key: O = 0, LSE = -inf.",
        hints=("for my RM rows: m_new from red, alpha = 2^(m - m_new), P = 2^(S - m_new) into p_ij, "
               "l, acc *= alpha",
               "for my RM rows: l = Σ_w red[r, w]; O = acc / l (my columns), LSE = ln2·(m + log2 l) "
               "from tc == 0; a row that saw no key: O = 0, LSE = -inf"),
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
- repeat: the same arrays called again and again, then new inputs in the same arrays
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
  the same arrays.

## Grading

`python -m workbench.course.assignments grade FOLDER` runs the public tests with fresh seeds and three
hidden tests whose shapes and seeds are drawn when grading (lengths that are not tile multiples,
Nq ≠ Nkv, grouped heads, float16, masks, other tile sizes), in a separate process with a time
limit, at the reference rung's tile sizes. Each test fills O and LSE with NaN before each launch,
launches twice (the two results must agree bit for bit), checks that q, k and v are unchanged,
and compares with a float64 NumPy reference (float32: relative error ≤ 2e-5 and
|err| ≤ 1e-5 + 1e-4·|ref| per element; float16: 2e-3 and 1e-3 + 4e-3·|ref|). Points: a public
test {WEIGHTS["public"] * a.scale}, a hidden test {WEIGHTS["hidden"] * a.scale}, repeat {WEIGHTS["repeat"] * a.scale}.

{textwrap.fill(f"On a GPU, when every test passes, your rung and the reference are timed in the "
               f"same process on {a.perf.describe()}: with r = your time / the reference's, you "
               f"get all {a.perf_points} performance points for r ≤ {FULL_CREDIT_RATIO}, and "
               f"{FULL_CREDIT_RATIO} / r of them beyond. Every timed call's output is checked too.", 100)}

## Rules

Import only `math`, `functools`, `numpy`, `numba` (and its submodules),
`workbench.kernels.common`, `workbench.kernels.warp` and `workbench.harness.runner`. Not allowed:
the reference (`workbench.reference`, the rung modules in `workbench.kernels`, torch), files,
host copies (`copy_to_host`, `to_device`), streams, `eval`/`exec`/`getattr` and friends. Kernels
must not write q, k or v, and must give the same result however often they are called.
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


def _manifest(folder) -> dict:
    path = Path(folder) / MANIFEST
    if not path.exists():
        raise ValueError(f"{folder} has no {MANIFEST}: is it a folder made by "
                         f"`python -m workbench.course.assignments release NAME --out {folder}`?")
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

ALLOWED_IMPORTS = ("math", "functools", "numpy", "numba", "workbench.kernels.common",
                   "workbench.kernels.warp", "workbench.kernels.tiles", "workbench.kernels.hardware",
                   "workbench.kernels.contract", "workbench.harness.runner")
# warp: shuffle helpers; tiles: the shared tile engine; hardware: launch bounds; contract: Needs
FORBIDDEN_NAMES = {
    "__import__": "imports by name", "eval": "running generated code", "exec": "running generated code",
    "compile": "running generated code", "open": "file access (saved outputs, the grader's files)",
    "globals": "introspection", "locals": "introspection", "vars": "introspection",
    "getattr": "attribute access by name", "setattr": "attribute access by name",
    "delattr": "attribute access by name", "breakpoint": "the debugger", "input": "reading stdin",
}
FORBIDDEN_ATTRS = {
    **dict.fromkeys(("copy_to_host", "copy_to_device", "to_device", "device_array",
                     "device_array_like", "pinned_array", "mapped_array", "managed_array",
                     "as_cuda_array", "from_cuda_array_interface"),
                    "host copies and allocations outside the launcher (compute on the GPU, "
                    "allocate scratch with gpu.empty)"),
    **dict.fromkeys(("stream", "external_stream", "default_stream", "per_thread_default_stream",
                     "legacy_default_stream", "event"),
                    "streams and events (launch through gpu.launch, on the stream being timed)"),
    **dict.fromkeys(("load", "save", "savez", "fromfile", "tofile", "loadtxt", "genfromtxt",
                     "memmap", "modules"), "file access and module tables"),
}


def import_problem(name: str) -> str | None:
    """Why a submission may not import `name` (None: it may)."""
    if any(name == ok or name.startswith(ok + ".") for ok in ALLOWED_IMPORTS):
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
                f"import only workbench.kernels.common, workbench.kernels.warp and "
                f"workbench.harness.runner")
    if parts[0] in ("torch", "cupy", "jax", "scipy", "tensorflow"):
        return f"{name} would compute attention for you; write the kernel yourself"
    return f"{name} is not needed by a kernel; a submission may import only {', '.join(ALLOWED_IMPORTS)}"


def _from_import_problems(module: str, names) -> list[str]:
    """`from module import names`: fine when `module` is allowed, or when it is a package above an
    allowed module and every name is allowed (`from workbench.kernels import common`)."""
    why = import_problem(module)
    if why is None:
        return []
    if any(ok.startswith(module + ".") for ok in ALLOWED_IMPORTS):
        return [w for n in names if (w := import_problem(f"{module}.{n}"))]
    return [why]


def rule_violations(path) -> list[str]:
    """Read the submission's source (never running it) and list what breaks the rules."""
    path = Path(path)
    try:
        tree = ast.parse(path.read_text(), filename=str(path))
    except SyntaxError as exc:
        return [f"{path.name}:{exc.lineno}: syntax error: {exc.msg}"]
    found = []
    for node in ast.walk(tree):
        where = f"{path.name}:{getattr(node, 'lineno', '?')}: "
        if isinstance(node, ast.Import):
            found += [where + why for alias in node.names if (why := import_problem(alias.name))]
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
        elif isinstance(node, ast.Attribute):
            if node.attr.startswith("__") and node.attr.endswith("__"):
                found.append(where + f"`.{node.attr}` is not allowed in a submission (introspection)")
            elif node.attr in FORBIDDEN_ATTRS:
                found.append(where + f"`.{node.attr}` is not allowed in a submission "
                                     f"({FORBIDDEN_ATTRS[node.attr]})")
    return sorted(set(found), key=lambda s: (int(s.split(":")[1]) if s.split(":")[1].isdigit() else 0, s))


def stubs_left(path) -> int:
    return len(_STUB_AT.findall(Path(path).read_text()))


# --- loading and running a submission (the worker's side) -------------------------------------

SUBMISSION_MODULE = "workbench_submission"


@contextlib.contextmanager
def import_guard(module_name: str = SUBMISSION_MODULE):
    """While active, an import made by module `module_name` that breaks the rules is an
    ImportError (the static rules can be dodged; this catches what gets past them at run time)."""
    original = builtins.__import__

    def guarded(name, globals=None, locals=None, fromlist=(), level=0):
        if globals is not None and globals.get("__name__") == module_name:
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


def _save(out: Path, index: int, arrays: dict, meta: dict):
    if arrays:
        np.savez(out / f"{index}.npz", **arrays)
    (out / f"{index}.json").write_text(json.dumps(meta))


def run_check(rung, test) -> tuple[dict, dict]:
    """Two poisoned launches on the test's inputs: arrays for the grader, and what was noticed."""
    from workbench.harness import verify

    launched = verify.launch_poisoned(rung, test.problem, test.config,
                                      *test.problem.make_inputs(test.seed))
    (o0, l0), (o1, l1) = launched.outputs
    return ({"o0": o0, "l0": l0, "o1": o1, "l1": l1},
            {"inputs_changed": launched.inputs_changed})


def _time_reference(ref, test, q, k, v) -> float:
    from numba import cuda

    from workbench.harness import runner, timing

    p = test.problem
    dq, dk, dv = (cuda.to_device(x) for x in (q, k, v))
    do, dlse = cuda.device_array(p.q_shape, p.dtype), cuda.device_array(p.lse_shape, np.float32)
    pool = runner.Pool()
    t = timing.time_call(lambda: runner.run(ref, p, test.config, dq, dk, dv, do, dlse, pool))
    del dq, dk, dv, do, dlse, pool
    runner.release_memory()
    return t.median_ms


def run_repeat(rung, test, ref=None) -> tuple[dict, dict]:
    """The repeat test: a first call, then more on the same arrays (timed when `ref` is given,
    with the reference rung timed before and after), each output poisoned before its call and
    compared bitwise with the first after it; then new inputs in the same arrays, one more call."""
    from numba import cuda

    from workbench.harness import runner, timing, verify

    p = test.problem
    q, k, v = p.make_inputs(test.seed)
    meta = {}
    if ref is not None:
        meta["reference_ms"] = [_time_reference(ref, test, q, k, v)]
    dq, dk, dv = (cuda.to_device(x) for x in (q, k, v))
    do, dlse = cuda.device_array(p.q_shape, p.dtype), cuda.device_array(p.lse_shape, np.float32)
    nan_o, nan_l = np.full(p.q_shape, np.nan, p.dtype), np.full(p.lse_shape, np.nan, np.float32)
    pool = runner.Pool()

    def poison():
        do.copy_to_device(nan_o)
        dlse.copy_to_device(nan_l)

    def call():
        runner.run(rung, p, test.config, dq, dk, dv, do, dlse, pool)

    poison()
    call()
    cuda.synchronize()
    first = do.copy_to_host(), dlse.copy_to_host()
    calls, mismatches = [1], []

    def check_previous():
        o, lse = do.copy_to_host(), dlse.copy_to_host()
        if calls[0] > 1 and (o.tobytes() != first[0].tobytes() or lse.tobytes() != first[1].tobytes()):
            unwritten = int(np.isnan(o).sum() + np.isnan(lse).sum())
            differ = int(np.count_nonzero(o.view(f"u{o.itemsize}") != first[0].view(f"u{o.itemsize}"))
                         + np.count_nonzero(lse.view("u4") != first[1].view("u4")))
            mismatches.append((calls[0], unwritten, differ))

    def setup():
        check_previous()
        poison()
        calls[0] += 1

    if ref is not None:
        meta["timing"] = timing.time_call(call, setup=setup).as_dict()
    else:
        for _ in range(REPEAT_CALLS):
            setup()
            call()
    cuda.synchronize()
    check_previous()
    meta.update(calls=calls[0], mismatches=mismatches[:5], mismatched_calls=len(mismatches),
                inputs_changed={n: (c, x.size) for n, d, x in (("q", dq, q), ("k", dk, k), ("v", dv, v))
                                if (c := verify.changed_elements(d, x))})
    q2, k2, v2 = p.make_inputs(test.seed2)
    for d, x in ((dq, q2), (dk, k2), (dv, v2)):
        d.copy_to_device(x)
    poison()
    call()
    cuda.synchronize()
    again = do.copy_to_host(), dlse.copy_to_host()
    meta["inputs_changed_after_new"] = {n: (c, x.size) for n, d, x in
                                        (("q", dq, q2), ("k", dk, k2), ("v", dv, v2))
                                        if (c := verify.changed_elements(d, x))}
    del dq, dk, dv, do, dlse, pool
    runner.release_memory()
    if ref is not None:
        meta["reference_ms"].append(_time_reference(ref, test, q, k, v))
    return {"o0": first[0], "l0": first[1], "o_new": again[0], "l_new": again[1]}, meta


def worker(plan_path):
    """The grading subprocess: load the submission, run every test, write the results."""
    plan = json.loads(Path(plan_path).read_text())
    out = Path(plan["out"])
    progress = out / "progress"
    from workbench.harness import device, runner  # (the package's import chose simulator or GPU)
    from workbench.kernels import get as get_rung

    ref = get_rung(plan["rung"])  # held before the submission is loaded
    tests = [Test.from_json(t) for t in plan["tests"]]
    path = plan["module"]
    with import_guard():
        progress.write_text("load")
        try:
            rung = load_submission(path)
        except Exception as exc:
            (out / "load.json").write_text(json.dumps({"error": describe_error(exc, path)}))
            return
        healthy = True  # no error, nothing unwritten so far: the repeat test may be timed
        for i, test in enumerate(tests):
            progress.write_text(test.name)
            try:
                runner.check_config(rung, test.problem, test.config)
                if test.kind == "repeat":
                    timed = plan["timed"] and healthy and not device.simulator()
                    arrays, meta = run_repeat(rung, test, ref if timed else None)
                else:
                    arrays, meta = run_check(rung, test)
                    healthy &= not any(np.isnan(a).any() for a in arrays.values())
            except Exception as exc:
                healthy = False
                arrays, meta = {}, {"error": describe_error(exc, path)}
            _save(out, i, arrays, meta)
    progress.write_text("done")


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

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "problem": dataclasses.asdict(self.problem)}

    @classmethod
    def from_json(cls, d) -> Test:
        return cls(**{**d, "problem": Problem(**d["problem"])})


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
    """Every test of a grade run, all drawn from `seed` (fresh at each grade unless given)."""
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
    if simulator:
        p0 = a.public[0]
        repeat = Problem(1, 1, 1, 6, 6, p0.head_dim, "float32", p0.causal, p0.window)
        tests.append(Test("repeat", "repeat", repeat, next(seeds), main, WEIGHTS["repeat"] * a.scale,
                          seed2=next(seeds)))
    else:
        tests.append(Test("repeat", "repeat", a.perf, next(seeds), main, WEIGHTS["repeat"] * a.scale,
                          seed2=next(seeds), heads=4))
    return tests


def _judge_outputs(test, seed, outputs, inputs_changed):
    from workbench.harness import verify

    q, k, v, pairs, ref_o, ref_lse = verify.truth(test.problem, seed, test.heads)
    launched = verify.Launches(outputs=outputs, inputs_changed=inputs_changed)
    report = verify.judge(verify.Report(test.name, test.problem, seed), launched, pairs, ref_o, ref_lse)
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


def judge(test: Test, arrays: dict, meta: dict) -> list[str]:
    """What is wrong with a test's result (empty: it passed)."""
    if "error" in meta:
        return [meta["error"]]
    if test.kind != "repeat":
        outputs = [(arrays["o0"], arrays["l0"]), (arrays["o1"], arrays["l1"])]
        return _judge_outputs(test, test.seed, outputs, meta["inputs_changed"])[1]
    msgs = []
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
    report_new, new = _judge_outputs(test, test.seed2, [(arrays["o_new"], arrays["l_new"])],
                                     meta["inputs_changed_after_new"])
    if new:
        hint = (" Does your code reuse a result from an earlier call?" if report.passed else "")
        msgs.append(f"new inputs written into the same arrays, one more call:{hint}")
        msgs += [f"  {m}" for m in new]
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


def _run_worker(plan: dict, work: Path, timeout: float) -> dict:
    """Start the worker, wait at most `timeout` s; returns how it ended."""
    plan_path = work / "plan.json"
    plan_path.write_text(json.dumps(plan))
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    with open(work / "stdout.txt", "wb") as so, open(work / "stderr.txt", "wb") as se:
        proc = subprocess.Popen([sys.executable, "-m", "workbench.course.assignments", "_worker", str(plan_path)],
                                cwd=work, env=env, stdout=so, stderr=se, start_new_session=True)
        try:
            code, timed_out = proc.wait(timeout=timeout), False
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            code, timed_out = proc.wait(), True
    stderr = (work / "stderr.txt").read_bytes()[-2000:].decode(errors="replace")
    return {"exit": code, "timed_out": timed_out, "stderr_tail": stderr}


def default_timeout(simulator: bool) -> float:
    return 600.0 if simulator else 300.0


def grade(folder, assignment: str | None = None, seed: int | None = None,
          timeout: float | None = None) -> dict:
    """Grade the submission in `folder`: a dict with per-test points and messages, performance
    and the total (see the module docstring for what runs)."""
    from workbench.harness import device

    folder = Path(folder)
    manifest = _manifest(folder)
    a = get(assignment or manifest["assignment"])
    path = _module_path(folder, a)
    simulator = device.simulator()
    seed = secrets.randbits(31) if seed is None else int(seed)
    timeout = default_timeout(simulator) if timeout is None else float(timeout)
    tests = plan_tests(a, seed, simulator)
    notes = []
    if manifest.get("rung_sha256") not in (None, hashlib.sha256(rung_source(a).encode()).hexdigest()):
        notes.append("the reference rung changed since this folder was released")
    if left := stubs_left(path):
        notes.append(f"{left} solution region(s) still hold the stub")
    results, metas, run = {}, {}, None
    violations = rule_violations(path)
    if violations:
        for t in tests:
            results[t.name] = ["not run: the submission breaks the rules:"] + violations
    else:
        with tempfile.TemporaryDirectory(prefix="grade-") as work:
            work = Path(work)
            plan = {"module": str(path.resolve()), "rung": a.rung, "out": str(work),
                    "timed": a.perf_points > 0, "tests": [t.to_json() for t in tests]}
            started = time.perf_counter()
            run = _run_worker(plan, work, timeout)
            run["seconds"] = round(time.perf_counter() - started, 2)
            results, metas = _collect(work, tests, run, timeout)
    rows, all_passed, repeat_meta = [], True, {}
    public_ok = all(not results[t.name] for t in tests if t.kind == "public")
    for t in tests:
        msgs = results[t.name]
        ran = not any(m.startswith(("not run", "not finished")) for m in msgs)
        if msgs and t.kind == "hidden" and public_ok and ran:
            msgs = [f"this hidden test ({t.problem.describe()}) fails while the public ones pass: "
                    f"does your code assume the public tests' shapes, tiles or seeds?"] + msgs
        passed = not msgs
        all_passed &= passed
        if t.kind == "repeat" and run is not None:
            repeat_meta = metas.get(t.name, {})
        rows.append({"name": t.name, "kind": t.kind, "problem": t.problem.describe(),
                     "config": t.config, "seed": t.seed, "passed": passed,
                     "points": t.points if passed else 0.0, "max_points": t.points, "messages": msgs})
    perf = None
    if not simulator:
        perf = performance(a, repeat_meta, all_passed)
    points = sum(r["points"] for r in rows) + (perf["points"] if perf else 0.0)
    max_points = sum(r["max_points"] for r in rows) + (a.perf_points if perf else 0)
    return {"assignment": a.name, "rung": a.rung, "module": str(path), "mode": device.mode(),
            "seed": seed, "tests": rows,
            "performance": perf or {"measured": False, "reason": "simulator: no timing, not graded",
                                    "max_points": 0},
            "points": round(points, 2), "max_points": max_points, "passed": all_passed,
            "notes": notes, "worker": run}


def _collect(work: Path, tests, run, timeout):
    """Read the worker's results; explain the tests it never finished."""
    results, metas = {}, {}
    load = work / "load.json"
    if load.exists():
        err = json.loads(load.read_text())["error"]
        return {t.name: [f"not run: your module failed to load: {err}"] for t in tests}, metas
    progress = (work / "progress").read_text() if (work / "progress").exists() else "load"
    if run["timed_out"]:
        why = (f"stopped after {timeout:.0f} s (an endless loop, or threads waiting at a barrier "
               f"that not all of them reach?)")
    else:
        tail = [line for line in run["stderr_tail"].splitlines() if line.strip()][-1:]
        why = (f"the grading process ended (exit status {run['exit']}): your code crashed or "
               f"exited the process" + (f" [{tail[0][:200]}]" if tail else ""))
    if progress == "load":
        return {t.name: [f"not run: while your module was loading, {why}"] for t in tests}, metas
    for i, t in enumerate(tests):
        meta_path = work / f"{i}.json"
        if meta_path.exists():
            meta = json.loads(meta_path.read_text())
            npz = work / f"{i}.npz"
            arrays = dict(np.load(npz)) if npz.exists() else {}
            metas[t.name] = meta
            try:
                results[t.name] = judge(t, arrays, meta)
            except (KeyError, ValueError) as exc:  # not what the worker writes
                results[t.name] = [f"unreadable results ({exc}): were the grader's files changed?"]
        elif t.name == progress:
            results[t.name] = [f"not finished: {why}"]
        else:
            results[t.name] = [f"not run: test {progress} "
                               f"{'was stopped' if run['timed_out'] else 'ended the process'}"]
    return results, metas


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
                test = Test("repeat", "repeat", problem, PUBLIC_SEED, config, 0, seed2=PUBLIC_SEED + 1)
                runner.check_config(rung, problem, config)
                arrays, meta = run_repeat(rung, test)
            else:
                i = int(case.split("-")[1]) - 1
                test = Test(case, "public", a.public[i], PUBLIC_SEED + i, config, 0)
                runner.check_config(rung, test.problem, config)
                arrays, meta = run_check(rung, test)
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
    parser = argparse.ArgumentParser(prog="python -m workbench.course.assignments", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the assignments, their points and what each teaches")
    p = sub.add_parser("release", help="write a student's folder")
    p.add_argument("name")
    p.add_argument("--out", required=True)
    p.add_argument("--force", action="store_true", help="overwrite an existing module")
    p = sub.add_parser("fill", help="fill a folder's stubs with the reference solution (or --from FILE)")
    p.add_argument("folder")
    p.add_argument("--from", dest="solution", help="a file of ### BEGIN/END SOLUTION regions")
    p = sub.add_parser("grade", help="grade a student's folder")
    p.add_argument("folder")
    p.add_argument("--json", action="store_true")
    p.add_argument("--seed", type=int, help="the grade seed (default: fresh); hidden shapes and all "
                                            "inputs are drawn from it")
    p.add_argument("--timeout", type=float, help="seconds for the submission's process")
    p.add_argument("--assignment", help="grade as this assignment (default: the folder's manifest)")
    p = sub.add_parser("validate", help="reference passes everything, stub fails everything")
    p.add_argument("names", nargs="*")
    p.add_argument("--json", action="store_true")
    p.add_argument("--seed", type=int)
    p.add_argument("--timeout", type=float)
    p = sub.add_parser("_worker")
    p.add_argument("plan")
    args = parser.parse_args(argv)
    try:
        if args.command == "_worker":
            worker(args.plan)
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
            print(json.dumps(r, indent=1, default=str)) if args.json else _print_grade(r)
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
