"""Grading for instructors (issue 17): a grade is a function of the submission and the seed (the
default seed is the fixed course seed); `--gradescope` writes Gradescope's results.json, checked
against its schema written out below; `grade-all` writes a CSV of a whole class, read back here;
and each assignment's stubs, filled with a second solution written from the hints alone
(tests/data/assignments/*-second.py), get every point."""

import csv
import json
from pathlib import Path

from workbench.course import assignments as A

SEED = 20261125
DATA = Path(__file__).parent / "data" / "assignments"

# Gradescope's autograder output (https://gradescope-autograders.readthedocs.io, "Autograder
# specifications": results.json), as far as the grader writes it; "extra" keys are refused here so
# that a typo cannot hide.
VISIBILITY = {"enum": ["hidden", "after_due_date", "after_published", "visible"]}
GRADESCOPE_SCHEMA = {
    "type": "object",
    "required": ["score", "tests"],
    "additionalProperties": False,
    "properties": {
        "score": {"type": "number"},
        "max_score": {"type": "number"},
        "output": {"type": "string"},
        "visibility": VISIBILITY,
        "stdout_visibility": VISIBILITY,
        "execution_time": {"type": "number"},
        "tests": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "score", "max_score", "output", "visibility"],
                "additionalProperties": False,
                "properties": {
                    "name": {"type": "string"},
                    "score": {"type": "number"},
                    "max_score": {"type": "number"},
                    "status": {"enum": ["passed", "failed"]},
                    "output": {"type": "string"},
                    "visibility": VISIBILITY,
                    "number": {"type": "string"},
                    "tags": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}
TYPES = {"object": dict, "array": list, "string": str, "number": (int, float)}


def schema_errors(value, schema, where="$") -> list[str]:
    """The ways `value` breaks `schema` (the JSON Schema keywords used above)."""
    errors = []
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} not in {schema['enum']}")
    if "type" in schema:
        ok = isinstance(value, TYPES[schema["type"]]) and not isinstance(value, bool)
        if not ok:
            return errors + [f"{where}: {type(value).__name__}, not {schema['type']}"]
    if isinstance(value, dict):
        errors += [f"{where}: no {key!r}" for key in schema.get("required", []) if key not in value]
        props = schema.get("properties", {})
        for key, item in value.items():
            if key in props:
                errors += schema_errors(item, props[key], f"{where}.{key}")
            elif schema.get("additionalProperties") is False:
                errors.append(f"{where}: unexpected {key!r}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += schema_errors(item, schema["items"], f"{where}[{i}]")
    return errors


def test_the_schema_check_can_fail():
    assert schema_errors({"score": 1, "tests": []}, GRADESCOPE_SCHEMA) == []
    bad = {"score": "1", "tests": [{"name": "x", "score": 1, "max_score": 1, "output": "",
                                    "visibility": "soon", "extra": 1}]}
    assert len(schema_errors(bad, GRADESCOPE_SCHEMA)) == 3


def no_rescale(tmp_path):
    """The issue's wrong online-softmax submission: acc is not rescaled when the max grows (before,
    it scored 4, 0, 0, 2, 0, 4, 0 of 18 with grade seeds 1–7, and the default seed was fresh)."""
    folder = A.release("online-softmax", tmp_path / "no-rescale")
    A.fill(folder)
    path = folder / "online.py"
    text = path.read_text()
    assert text.count("acc[d] *= alpha\n") == 1
    path.write_text(text.replace("acc[d] *= alpha\n", "acc[d] *= float32(1)\n"))
    return folder


def test_a_grade_is_a_function_of_the_submission_and_the_seed(tmp_path, capsys):
    folder = no_rescale(tmp_path)
    results_json = tmp_path / "results" / "results.json"
    assert A.main(["grade", str(folder), "--json", "--seed", str(SEED), "--gradescope", str(results_json)]) == 0
    first = capsys.readouterr().out
    again = A.grade(folder, seed=SEED)
    assert first == json.dumps(again, indent=1, default=str) + "\n"  # the same JSON, byte for byte
    assert not again["passed"] and again["seed"] == SEED

    gradescope = json.loads(results_json.read_text())
    assert schema_errors(gradescope, GRADESCOPE_SCHEMA) == []
    assert gradescope["score"] == again["points"] and gradescope["max_score"] == again["max_points"]
    assert [t["score"] for t in gradescope["tests"]] == [t["points"] for t in again["tests"]]
    assert sum(t["max_score"] for t in gradescope["tests"]) == again["max_points"]
    visibility = {t["name"].split()[0]: t["visibility"] for t in gradescope["tests"]}
    assert visibility == {"public-1": "visible", "public-2": "visible", "hidden-1": "after_due_date",
                          "hidden-2": "after_due_date", "hidden-3": "after_due_date", "repeat": "visible"}
    failed = [t for t in gradescope["tests"] if t["status"] == "failed"]
    assert failed and all(t["score"] == 0 and t["output"] for t in failed)


def test_the_default_seed_is_the_course_seed(monkeypatch):
    monkeypatch.delenv(A.SEED_VARIABLE, raising=False)
    assert A.default_seed() == A.COURSE_SEED
    monkeypatch.setenv(A.SEED_VARIABLE, "77")
    assert A.default_seed() == 77
    monkeypatch.setenv(A.SEED_VARIABLE, "seventy")
    try:
        A.default_seed()
    except ValueError as exc:
        assert A.SEED_VARIABLE in str(exc)
    else:
        raise AssertionError("a seed that is no integer must be refused")


def test_grade_all_writes_a_csv_and_every_second_solution_gets_every_point(tmp_path, monkeypatch, capsys):
    """One class: each assignment filled with its second solution, an untouched stub and a folder
    that is no submission; graded with the default seed, read back from the CSV."""
    monkeypatch.delenv(A.SEED_VARIABLE, raising=False)
    klass = tmp_path / "class"
    for a in A.ASSIGNMENTS:
        folder = A.release(a.name, klass / f"{a.name}-second")
        A.fill(folder, DATA / f"{a.name}-second.py")
        assert A.stubs_left(folder / a.module_file) == 0
    A.release("naive-softmax", klass / "a-stub")
    (klass / "b-not-a-submission").mkdir()
    out = tmp_path / "grades.csv"
    assert A.main(["grade-all", str(klass), "--csv", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out

    with open(out, newline="") as f:
        rows = {row["submission"]: row for row in csv.DictReader(f)}
    assert list(rows) == sorted(p.name for p in klass.iterdir())
    tests = ["public-1", "public-2", "hidden-1", "hidden-2", "hidden-3", "repeat"]
    for a in A.ASSIGNMENTS:
        row = rows[f"{a.name}-second"]
        assert (row["assignment"], row["seed"], row["passed"], row["error"]) == (a.name, str(A.COURSE_SEED), "True", ""), row
        assert float(row["points"]) == float(row["max_points"]) == a.correctness_points
        assert sum(float(row[t]) for t in tests) == float(row["points"])  # the columns add up
    stub = rows["a-stub"]
    assert (float(stub["points"]), stub["max_points"], stub["passed"]) == (0.0, "9", "False")
    assert all(float(stub[t]) == 0 for t in tests)
    broken = rows["b-not-a-submission"]
    assert float(broken["points"]) == 0 and A.MANIFEST in broken["error"] and broken["max_points"] == ""
