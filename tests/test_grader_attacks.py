"""The grader against a hostile student (issue 18). Each attack is a submission in
tests/data/assignments/attack-*.py, appended to a released online-softmax folder filled with the
reference, and scores 0 with the reason named. Attacks that the static rules stop are also graded
with the rules switched off, to show that the isolated worker holds by itself; the grader never
crashes on a malformed result from its worker (tested on crafted messages, and by a submission
that writes into the worker's pipe)."""

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from workbench.course import assignments as A

SEED = 20261125  # the grade seed of these tests (hidden shapes and inputs are drawn from it)
DATA = Path(__file__).parent / "data" / "assignments"
PROJECT = Path(__file__).resolve().parents[1]


def attacked(tmp_path, attack, **placeholders):
    """A released online-softmax folder, filled with the reference, with attack-`attack`.py
    appended (its @NAME@ placeholders replaced)."""
    folder = A.release("online-softmax", tmp_path / "online-softmax")
    A.fill(folder)
    path = folder / "online.py"
    text = (DATA / f"attack-{attack}.py").read_text()
    for name, value in placeholders.items():
        text = text.replace(f"@{name}@", str(value))
    path.write_text(path.read_text() + "\n\n" + text)
    return folder


def messages(result) -> dict:
    return {t["name"]: "\n".join(t["messages"]) for t in result["tests"]}


# --- kernels must do the work -------------------------------------------------------------------


@pytest.mark.parametrize("attack, phrases", [
    ("host-indexing", ["the host read", "indexing a device array on the host", "launched no kernel"]),
    ("fingerprint-cache", ["the host read", "indexing a device array on the host"]),
    ("patches-numpy", ["the output is all zeros"]),
])
def test_attack_past_the_rules_scores_zero_with_the_reason(attack, phrases, tmp_path):
    folder = attacked(tmp_path, attack)
    assert A.rule_violations(folder / "online.py") == []  # nothing in the source gives it away
    result = A.grade(folder, seed=SEED)
    assert result["points"] == 0 and result["worker"]["exit"] == 0
    for name, text in messages(result).items():
        for phrase in phrases:
            assert phrase in text, (name, text)


def test_the_host_computation_is_right_and_only_the_host_rule_catches_it(tmp_path):
    """Judged in this process, where nothing watches the host, the attack passes: its answer is
    right, so the grader's 0 comes from the rule that kernels do the work."""
    assert A.public_check(attacked(tmp_path, "host-indexing"), "public-1") == []


# --- the reference is out of reach --------------------------------------------------------------


@pytest.mark.parametrize("attack, rule, error", [
    ("reference-by-attributes", "binds the package `workbench`",
     "AttributeError (online.py line"),
    ("numba-importlib", "`.importlib` is not allowed",
     "ModuleNotFoundError (online.py line"),
])
def test_reaching_the_reference_is_refused_and_out_of_reach(attack, rule, error, tmp_path):
    folder = attacked(tmp_path, attack)
    refused = A.grade(folder, seed=SEED)
    assert refused["points"] == 0 and refused["worker"] is None  # the rules: never started
    assert all(rule in text for text in messages(refused).values())
    unruled = A.grade(folder, seed=SEED, rules=False)  # the worker's build holds no rung
    assert unruled["points"] == 0
    for text in messages(unruled).values():
        assert error in text and "workbench.kernels" in text and "online" in text, text


def test_the_worker_isolation_holds_without_the_rules(tmp_path):
    """Every way out the escape probe knows is refused inside the worker, and it runs under
    resource limits (see attack-escapes.py for the list)."""
    outside = tmp_path / "outside.txt"
    result = A.grade(attacked(tmp_path, "escapes", PROJECT=PROJECT, OUTSIDE=outside), seed=SEED, rules=False)
    assert result["points"] == 0 and not outside.exists()
    for text in messages(result).values():
        assert "escaped: none;" in text, text
        limits = dict(kv.split("=") for kv in text.split("limits: ")[1].split()[:3])
        assert all(int(v) > 0 for v in limits.values()), limits  # (RLIM_INFINITY is -1)


def test_a_forged_result_scores_zero_and_the_grader_goes_on(tmp_path):
    result = A.grade(attacked(tmp_path, "garbage-results"), seed=SEED, rules=False)
    found = messages(result)
    assert result["points"] == 0 and result["worker"]["stopped"] == "protocol"
    assert found["public-1"].startswith("unreadable result: the grading process sent an unreadable result")
    assert {found[n] for n in found if n != "public-1"} == {"not run: test public-1 sent an unreadable result"}


# --- the static rules -----------------------------------------------------------------------------


@pytest.mark.parametrize("source, phrase", [
    ("import workbench.kernels.common\n", "binds the package `workbench`"),
    ("from numba import cuda\nf = cuda.importlib\n", "`.importlib` is not allowed"),
    ("import numpy as np\nb = np.core.builtins\n", "`.core` is not allowed"),
    ("from numba import core\n", "`from numba import core`"),
    ("import numba.cuda.simulator as s\n", "numba.cuda.simulator is the machinery"),
    ("from numpy import ctypeslib\n", "`from numpy import ctypeslib`"),
    ("def f(q):\n    return q._ary\n", "`._ary` is not allowed"),
    ("b = __builtins__\n", "`__builtins__` is not allowed"),
    ("def f(e):\n    return e.tb_frame.f_back\n", "introspection of frames"),
    ("from workbench.kernels.common import NEG_INF\nfrom numba import cuda, float32\n", None),
])
def test_static_rules(source, phrase, tmp_path):
    path = tmp_path / "online.py"
    path.write_text(source)
    found = "\n".join(A.rule_violations(path))
    assert (phrase in found) if phrase else not found, found


# --- the student build and the wire -------------------------------------------------------------


def test_the_student_build_holds_no_rung_no_reference_no_solution(tmp_path):
    from workbench.kernels import of_kind

    names = set(A.build_modules())
    assert {"workbench.kernels.common", "workbench.harness.runner", "workbench.problem"} <= names
    assert not names & {f"workbench.kernels.{r.name}" for r in of_kind(None)}
    assert not [n for n in names if n.startswith(("workbench.reference", "workbench.api", "workbench.course",
                                                  "workbench.harness.verify"))]
    build = A.student_build(tmp_path / "build")
    sources = {p.relative_to(build).as_posix(): p.read_text() for p in build.rglob("*.py")}
    assert A.WORKER_SCRIPT in sources and "workbench/__init__.py" in sources
    assert not [p for p, text in sources.items() if p != A.WORKER_SCRIPT and "### BEGIN SOLUTION" in text]
    marked = "x = 1\n    ### BEGIN SOLUTION tag\n    y = 2\n    ### END SOLUTION\nz = 3\n"
    assert A.strip_solutions(marked).splitlines()[1].strip().startswith("raise NotImplementedError()")


def _pipe_with(data: bytes) -> int:
    read_end, write_end = os.pipe()
    os.write(write_end, data)
    os.close(write_end)
    return read_end


def _message(header, payload=b"") -> bytes:
    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    return A.MAGIC + len(head).to_bytes(4, "little") + head + payload


@pytest.mark.parametrize("raw, phrase", [
    (b"XXXXsomething", "starts with"),
    (A.MAGIC + (2**30).to_bytes(4, "little"), "a header of"),
    (_message(b"not json"), "not JSON"),
    (_message([1, 2, 3]), "not a JSON object"),
    (_message({"type": "result"}), "lists no arrays"),
    (_message({"arrays": [["o0", "<f8", [2]]]}), "malformed array"),
    (_message({"arrays": [["o0", "<f4", [-2]]]}), "malformed array"),
    (_message({"arrays": [["o0", "<f4", [2]], ["o0", "<f4", [2]]]}), "twice"),
    (_message({"arrays": [["o0", "<f4", [10**6, 10**6]]]}), "more array bytes"),
])
def test_malformed_messages_are_refused(raw, phrase):
    fd = _pipe_with(raw)
    try:
        with pytest.raises(A.ProtocolError, match=phrase):
            A.read_message(fd, time.monotonic() + 5, max_bytes=1 << 20)
    finally:
        os.close(fd)


def test_a_truncated_or_silent_worker_is_noticed():
    fd = _pipe_with(_message({"arrays": [["o0", "<f4", [4]]]}, b"\0" * 7))  # 7 of 16 bytes
    with pytest.raises(A.WorkerGone):
        A.read_message(fd, time.monotonic() + 5)
    os.close(fd)
    read_end, write_end = os.pipe()  # open, but nothing comes
    with pytest.raises(A.WorkerTimeout):
        A.read_message(read_end, time.monotonic() + 0.2)
    os.close(read_end)
    os.close(write_end)
    fd = _pipe_with(_message({"type": "x", "arrays": []}) + _message({"type": "y", "arrays": []}))
    assert [A.read_message(fd, time.monotonic() + 5)[0]["type"] for _ in range(2)] == ["x", "y"]
    os.close(fd)


class FakeWorker:
    """Answers a request with a prepared (header, arrays); records what it was sent."""

    def __init__(self, header, arrays):
        self.reply, self.sent, self.killed = (header, arrays), None, False

    def request(self, header, arrays, max_bytes):
        self.sent = (header, arrays, max_bytes)
        return self.reply

    def kill(self):
        self.killed = True


def _valid_reply(test):
    p = test.problem
    arrays = {f"{x}{n}": np.zeros(s, np.float32) for n in "01"
              for x, s in (("o", p.q_shape), ("l", p.lse_shape))}
    host = {"watched": True, "calls": 2, "launches": 2, "min_launches": 1, "read_bytes": 0,
            "reads": {}, "sticky": {}}
    return {"type": "result", "test": test.name, "step": "check",
            "meta": {"inputs_changed": {}, "host": host}}, arrays


def _set(path, value):
    def change(header, arrays):
        *keys, last = path
        target = header
        for key in keys:
            target = target[key]
        target[last] = value
    return change


@pytest.mark.parametrize("change, phrase", [
    (_set(["test"], "public-2"), "expected the result of public-1"),
    (_set(["step"], "repeat-first"), "expected the result of public-1"),
    (_set(["meta"], []), "no valid host-access summary"),
    (_set(["meta", "host", "read_bytes"], -1), "no valid host-access summary"),
    (_set(["meta", "host", "reads"], {"x": "many"}), "no valid host-access summary"),
    (_set(["meta", "inputs_changed"], {"x": [1, 2]}), "'inputs_changed' is missing or malformed"),
    (_set(["meta", "inputs_changed"], {"q": [1]}), "'inputs_changed' is missing or malformed"),
    (_set(["meta", "error"], 3), "a malformed error report"),
    (lambda h, a: a.pop("l1"), "shapes/dtypes other than the test's outputs"),
    (lambda h, a: a.update(o0=np.zeros((1, 1, 1, 1), np.float32)), "shapes/dtypes other than"),
    (lambda h, a: a.update(o0=a["o0"].astype(np.float16)), "shapes/dtypes other than"),
    (lambda h, a: a.update(extra=np.zeros(1, np.float32)), "shapes/dtypes other than"),
])
def test_every_field_of_a_result_is_checked(change, phrase):
    test = A.plan_tests(A.get("online-softmax"), SEED, simulator=True)[0]
    header, arrays = _valid_reply(test)
    change(header, arrays)
    worker = FakeWorker(header, arrays)
    inputs = A.device_inputs(test.problem, test.seed)
    with pytest.raises(A._Stopped) as stopped:
        A._result(worker, "check", test, test.problem, inputs)
    assert stopped.value.kind == "protocol" and phrase in stopped.value.detail and worker.killed


def test_a_valid_result_is_judged_and_the_worker_never_sees_a_seed():
    test = A.plan_tests(A.get("online-softmax"), SEED, simulator=True)[0]
    worker = FakeWorker(*_valid_reply(test))
    meta, arrays = A._result(worker, "check", test, test.problem, A.device_inputs(test.problem, test.seed))
    assert not worker.killed and sorted(arrays) == ["l0", "l1", "o0", "o1"]
    sent, inputs, _ = worker.sent
    assert "seed" not in json.dumps(sent) and sorted(inputs) == ["k", "q", "v"]
    assert "the output is all zeros" in A.judge(test, arrays, meta)
    meta["host"]["reads"] = {"copy_to_host": 64}
    meta["host"]["read_bytes"] = 64
    assert any("the host read 64 bytes" in m for m in A.judge(test, arrays, meta))
