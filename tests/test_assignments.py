"""Course assignments: release → fill → grade round trip, the instructor's validate for every
assignment, and adversarial submissions, each caught by the grader with a message a student can act
on. The submissions start from the released online-softmax folder filled with the reference (the
cheapest rung in the simulator) and change one thing each. Grades use a fixed grade seed, so the
hidden shapes are the same on every run. The attacks of issue 18 (a submission that reaches the
reference, computes on the host, caches, or attacks the grader) are in test_grader_attacks.py."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from workbench.course import assignments as A

SEED = 20261125  # the grade seed: hidden shapes and every input are drawn from it
SLOW = Path(__file__).parent / "data" / "assignments" / "online-softmax-slow.py"


def submission(tmp_path, *changes, name="online-softmax"):
    """The released folder, filled with the reference's regions, then each (old, new) applied."""
    folder = A.release(name, tmp_path / name)
    A.fill(folder)
    path = folder / A.get(name).module_file
    text = path.read_text()
    for old, new in changes:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    path.write_text(text)
    return folder


def failing(result) -> dict:
    return {t["name"]: "\n".join(t["messages"]) for t in result["tests"] if not t["passed"]}


# --- release and fill -------------------------------------------------------------------------


@pytest.mark.parametrize("a", A.ASSIGNMENTS, ids=lambda a: a.name)
def test_release_stubs_exactly_the_assignments_regions(a, tmp_path):
    folder = A.release(a.name, tmp_path / a.name)
    text = (folder / a.module_file).read_text()
    assert "### BEGIN SOLUTION" not in text and "### END SOLUTION" not in text
    assert A.stubs_left(folder / a.module_file) == len(a.hints)
    assert "from ." not in text and "from workbench.kernels.common import" in text
    assert not A.rule_violations(folder / a.module_file)  # the reference obeys the rules
    assert {p.name for p in folder.iterdir()} == {a.module_file, "README.md", "test_public.py",
                                                 "pytest.ini", A.MANIFEST}
    readme = (folder / "README.md").read_text()
    assert a.title in readme and "hidden" in readme and str(A.FULL_CREDIT_RATIO) in readme
    for hint in a.hints:  # each stub says what goes there
        assert f"{A.STUB}: {' '.join(hint.split()[:3])}" in text
    A.fill(folder)
    assert (folder / a.module_file).read_text() == A.complete_source(a)
    with pytest.raises(FileExistsError, match="--force"):
        A.release(a.name, folder)


def test_fill_refuses_a_solution_with_the_wrong_number_of_regions(tmp_path):
    folder = A.release("flash2", tmp_path / "f")
    one = tmp_path / "one.py"
    one.write_text("### BEGIN SOLUTION\npass\n### END SOLUTION\n")
    with pytest.raises(ValueError, match="found 2 stub"):
        A.fill(folder, one)


def test_hidden_tests_are_drawn_from_the_grade_seed_and_avoid_public_shapes():
    a = A.get("online-softmax")
    one, two = A.plan_tests(a, 1, simulator=True), A.plan_tests(a, 2, simulator=True)
    assert [t.to_json() for t in one] == [t.to_json() for t in A.plan_tests(a, 1, simulator=True)]
    assert [t.seed for t in one] != [t.seed for t in two]
    public = {n for p in a.public for n in (p.seq_q, p.seq_kv)}
    for seed in range(20):
        for t in A.plan_tests(a, seed, simulator=True):
            if t.kind == "hidden":
                assert t.problem.seq_q % 4 and t.problem.seq_kv % 4
                assert not {t.problem.seq_q, t.problem.seq_kv} & public
    assert sum(t.points for t in one) == a.correctness_points


def test_performance_credit_formula():
    a = A.get("flash2")
    meta = {"timing": {"median_ms": 2.4}, "reference_ms": [0.9, 1.1]}
    slow = A.performance(a, meta, gate=True)
    assert slow["ratio"] == pytest.approx(2.4) and slow["credit"] == pytest.approx(0.5)
    assert slow["points"] == pytest.approx(a.perf_points / 2, abs=0.01)
    meta["timing"]["median_ms"] = 1.15
    assert A.performance(a, meta, gate=True)["points"] == a.perf_points
    gated = A.performance(a, meta, gate=False)
    assert gated["points"] == 0 and "correctness gates" in gated["reason"]


# --- the round trip and validate ----------------------------------------------------------------


def test_release_fill_grade_round_trip_through_the_command_line(tmp_path, capsys):
    folder = tmp_path / "student"
    assert A.main(["release", "online-softmax", "--out", str(folder)]) == 0
    assert A.main(["fill", str(folder)]) == 0
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
                           cwd=folder, capture_output=True, text=True, timeout=300)
    assert tests.returncode == 0 and "4 passed" in tests.stdout, tests.stdout + tests.stderr
    capsys.readouterr()
    assert A.main(["grade", str(folder), "--json", "--seed", str(SEED)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["passed"] and result["points"] == result["max_points"] == 18
    assert [t["kind"] for t in result["tests"]] == ["public"] * 2 + ["hidden"] * 3 + ["repeat"]


@pytest.mark.parametrize("name", [a.name for a in A.ASSIGNMENTS])
def test_validate_every_assignment(name):
    results = A.validate([name], seed=SEED)
    assert [r["assignment"] for r in results] == [name]
    for r in results:
        assert r["ok"], (r["assignment"], r["problems"])
        assert r["stub"]["points"] == 0 and r["reference"]["points"] == r["reference"]["max_points"]
        for t in r["stub"]["tests"]:
            assert "NotImplementedError" in t["messages"][0], t


def test_the_slow_solution_is_correct(tmp_path):
    folder = A.release("online-softmax", tmp_path / "slow")
    A.fill(folder, SLOW)
    assert A.public_check(folder, "public-1") == []
    assert A.public_check(folder, "public-2") == []


# --- adversarial submissions -------------------------------------------------------------------

O_WRITE = "                o[b, h, i, d] = acc[d] * inv_l\n"
LSE_WRITE = "            lse[b, h, i] = m + math.log(l) if l > float32(0) else NEG_INF\n"
LAUNCH = "def launch(problem, config, q, k, v, o, lse, gpu):\n    p = problem\n"
LAST_LINE = "               q, k, v, o, lse, np.float32(p.scale), p.group, left, right)\n"

MEMO = '''
_launch, _saved = launch, {}


@cuda.jit
def _copy(src_o, src_l, dst_o, dst_l):
    i = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    b, h = cuda.blockIdx.y // src_o.shape[1], cuda.blockIdx.y % src_o.shape[1]
    if i < src_o.shape[2]:
        for d in range(src_o.shape[3]):
            dst_o[b, h, i, d] = src_o[b, h, i, d]
        dst_l[b, h, i] = src_l[b, h, i]


def launch(problem, config, q, k, v, o, lse, gpu):
    """The same q as last time? Copy the saved result instead of computing it: fast when timed."""
    grid = (-(-problem.seq_q // 32), problem.batch * problem.heads)
    if id(q) in _saved:
        _, saved_o, saved_l = _saved[id(q)]
        gpu.launch(_copy, grid, 32, saved_o, saved_l, o, lse)
        return
    _launch(problem, config, q, k, v, o, lse, gpu)
    saved_o, saved_l = gpu.empty(o.shape, o.dtype), gpu.empty(lse.shape, lse.dtype)
    gpu.launch(_copy, grid, 32, o, lse, saved_o, saved_l)
    _saved[id(q)] = (q, saved_o, saved_l)  # (q kept alive, so its id is not reused)
'''

SKIP = '''
_launch, _seen = launch, {}


def launch(problem, config, q, k, v, o, lse, gpu):
    """Called on these arrays before? Then O is already there: skip the work (fast when timed)."""
    if (id(q), id(o)) not in _seen:
        _seen[id(q), id(o)] = (q, o)  # (kept alive, so their ids are not reused)
        _launch(problem, config, q, k, v, o, lse, gpu)
'''

ADVERSARIAL = {
    # name: (changes, the tests that must fail: "all" or a kind, a phrase in their messages)
    "returns zeros": ([(O_WRITE, "                o[b, h, i, d] = float32(0)\n")],
                      "all", "the output is all zeros"),
    "mutates its inputs": ([(LSE_WRITE, LSE_WRITE + "            q[b, h, i, 0] = float32(0)\n")],
                           "all", "wrote its input q"),
    "writes part of the output": ([("        if i < n_q:  #", "        if i < n_q and i < Br:  #")],
                                  "all", "were never written"),
    "hard-codes the public tests' Nkv": (
        [("max(m, tile_scores(q_t, k_j, s, i, j0, n_kv,", "max(m, tile_scores(q_t, k_j, s, i, j0, 9,")],
        "hidden", "does your code assume the public tests' shapes"),
    "times a cached result": ([(LAST_LINE, LAST_LINE + MEMO)],
                              "repeat", "Does your code reuse a result from an earlier call?"),
    "exits the process": ([(LAUNCH, LAUNCH.replace("    p = problem\n", "    raise SystemExit(0)\n"))],
                          "all", "the grading process ended (exit status 0)"),
}


@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_adversarial_submission_is_caught(name, tmp_path):
    changes, which, phrase = ADVERSARIAL[name]
    result = A.grade(submission(tmp_path, *changes), seed=SEED)
    failed = failing(result)
    if which == "hidden":  # passes what it was written for, fails some of what it was not:
        # hidden tests, and the repeat test's new shapes
        kinds = {t["kind"] for t in result["tests"] if t["name"] in failed}
        assert "hidden" in kinds and kinds <= {"hidden", "repeat"}, failed
        assert "new shapes" in failed.get("repeat", "new shapes")
        failed = {n: m for n, m in failed.items() if n.startswith("hidden")}
    else:
        assert set(failed) == {t["name"] for t in result["tests"] if which in ("all", t["kind"])}
    if name == "exits the process":  # said where it happened; the tests after it never ran
        assert phrase in failed["public-1"] and "not run: test public-1 ended the process" in failed["repeat"]
    else:
        for test, messages in failed.items():
            assert phrase in messages, (test, messages)
    assert result["points"] < result["max_points"]


def test_a_hang_is_stopped_by_the_time_limit(tmp_path):
    folder = submission(tmp_path, (LAUNCH, LAUNCH.replace("    p = problem\n", "    while True:\n        pass\n")))
    result = A.grade(folder, seed=SEED, timeout=8)
    assert result["points"] == 0 and result["worker"]["timed_out"]
    messages = "\n".join(m for t in result["tests"] for m in t["messages"])
    assert "stopped after 8 s (an endless loop" in messages


STATIC = {
    "runs the reference rung": (
        [(LAUNCH, "from workbench.kernels import online as rung\n\n\n" + LAUNCH.replace(
            "    p = problem\n", "    return rung.launch(problem, config, q, k, v, o, lse, gpu)\n"))],
        "workbench.kernels.online is a reference rung"),
    "calls the float64 reference": (
        [(LAUNCH, "from workbench.reference import attention\n\n\n" + LAUNCH)],
        "workbench.reference is the float64 reference"),
    "imports by name": ([(LAUNCH, LAUNCH + "    __import__('workbench.kernels.online')\n")],
                        "`__import__` is not allowed"),
    "computes on the host": ([(LAUNCH, LAUNCH + "    q.copy_to_host()\n")], "host copies"),
    "reads saved outputs": ([(LAUNCH, LAUNCH + "    np.load('expected.npy')\n")], "file access"),
}


@pytest.mark.parametrize("name", list(STATIC))
def test_rule_breaking_submission_is_refused_before_it_runs(name, tmp_path):
    changes, phrase = STATIC[name]
    result = A.grade(submission(tmp_path, *changes), seed=SEED)
    assert result["points"] == 0 and result["worker"] is None  # never started
    for t in result["tests"]:
        assert t["messages"][0].startswith("not run: the submission breaks the rules")
        assert any(phrase in m and "online.py:" in m for m in t["messages"]), t["messages"]


def test_import_guard_stops_what_gets_past_the_rules():
    scope = {"__name__": A.SUBMISSION_MODULE}
    with A.import_guard():
        exec("import numpy\nfrom numba import cuda\nfrom workbench.kernels import common", scope)
        with pytest.raises(ImportError, match="is a reference rung"):
            exec("from workbench.kernels import online", scope)
        with pytest.raises(ImportError, match="float64 reference"):
            exec("import workbench.reference", scope)
        exec("import workbench.reference", {"__name__": "someone_else"})  # only the submission
    exec("from workbench.kernels import online", scope)  # the guard is gone again


# --- what only a GPU runs, exercised here with a stand-in for the CUDA-event timer -------------


def test_gpu_plans_fit_the_h100_limits():
    from workbench.harness import runner
    from workbench.kernels import get as get_rung

    for a in A.ASSIGNMENTS:
        for t in A.plan_tests(a, SEED, simulator=False):
            runner.check_config(get_rung(a.rung), t.problem, t.config)  # ValueError if not
            if t.kind == "hidden":
                assert t.problem.seq_q > 64 and t.problem.seq_q % 4  # past one tile, not a multiple


def fake_time_call(fn, *, setup=None, repeat=5, **_):
    """time_call's protocol (setup before every call, warm-up included) without CUDA events."""
    from workbench.harness.timing import summarize

    for _ in range(repeat):
        if setup is not None:
            setup()
        fn()
    return summarize([1.0, 1.1, 0.9])


@pytest.mark.parametrize("name, passes, phrase", [
    ("reference", True, None),
    ("times a cached result", False, "reuse a result from an earlier call"),
    ("skips repeated calls", False, "output values never written (still NaN)")])
def test_timed_repeat_verifies_every_call_and_times_the_reference(name, passes, phrase, tmp_path,
                                                                  monkeypatch):
    from workbench.harness import runner, timing
    from workbench.kernels import get as get_rung

    monkeypatch.setattr(timing, "time_call", fake_time_call)
    a = A.get("online-softmax")
    cheat = {"times a cached result": ADVERSARIAL["times a cached result"][0],
             "skips repeated calls": [(LAST_LINE, LAST_LINE + SKIP)]}
    folder = submission(tmp_path, *cheat.get(name, []))
    ref = get_rung(a.rung)
    config = runner.merged_config(ref, a.sim_config)
    test = A.Test("repeat", "repeat", A._p(1, 2, 1, 9, 9, 8, causal=True), 3, config, 2, seed2=4)
    name_ = f"{A.SUBMISSION_MODULE}_timed_{name.replace(' ', '_')}"
    with A.import_guard(name_):
        rung = A.load_submission(folder / a.module_file, name_)
        arrays, meta = A.run_repeat(rung, test, ref=ref, timer=A.cuda_timer)
    assert meta["calls"] == 6 and len(meta["reference_ms"]) == 2 and meta["timing"]["median_ms"] == 1.0
    messages = A.judge(test, arrays, meta)
    perf = A.performance(a, meta, gate=not messages)
    if passes:
        assert messages == [] and perf["credit"] == 1.0 and perf["points"] == a.perf_points
    else:
        assert any(phrase in m for m in messages), messages
        assert perf["points"] == 0
