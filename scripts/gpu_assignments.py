"""GPU check of the course assignments' grader (issues 7, 17 and 18).

    python scripts/gpu_assignments.py OUT_DIR [NAMES]   (on a machine with a CUDA GPU)

NAMES (comma-separated) grades those assignments only (default: all of them).

1. Every assignment: release a student folder, fill it with the reference solution, grade it
   (JSON). Expected: every test passes and the performance credit is full (the submission is the
   reference's code, r = t_submission / t_reference ≈ 1 ≤ 1.2).
2. Every assignment filled with its second solution, written from the hints alone
   (tests/data/assignments/NAME-second.py): every test passes (performance credit: measured).
3. The naive-softmax stub as released: on a GPU a kernel's `raise` does not reach the host, so the
   NaN-poisoned outputs must fail every test (0 points, no performance credit).
4. A deliberately slow but correct online-softmax solution
   (tests/data/assignments/online-softmax-slow.py: O normalised after every tile, divisions in the
   innermost loop): every test passes and the performance credit is partial (1.2 / r of the
   points, r > 1.2).
5. Attacks (tests/data/assignments/attack-*.py, appended to the filled online-softmax): the
   fingerprint cache (host reads of a few elements of q, k, v) must score 0 with "the host read";
   the escape probe, graded with the static rules off, must score 0 and report "escaped: none"
   (the worker's isolation and audit hook on a GPU machine: CUDA's files, NVVM, the driver).

Grades use the course seed (workbench.course.assignments.COURSE_SEED) unless
WORKBENCH_COURSE_SEED is set. Writes OUT_DIR/assignments.json (every grade in full, with
provenance) after each grade and prints a summary table last. Exit status 1 when an expectation
above fails.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout, installed or not

DATA = ROOT / "tests" / "data" / "assignments"
SLOW = DATA / "online-softmax-slow.py"


def summarize(label, r, expect) -> dict:
    perf = r["performance"]
    correct = sum(t["points"] for t in r["tests"])
    row = {"label": label, "expect": expect, "tests_passed": sum(t["passed"] for t in r["tests"]),
           "tests": len(r["tests"]), "correctness": correct,
           "correctness_max": sum(t["max_points"] for t in r["tests"]),
           "submission_ms": perf.get("submission_ms"), "reference_ms": perf.get("reference_ms"),
           "ratio": perf.get("ratio"), "credit": perf.get("credit"),
           "perf_points": perf.get("points"), "perf_max": perf.get("max_points"),
           "points": r["points"], "max_points": r["max_points"],
           "worker_exit": (r.get("worker") or {}).get("exit")}
    full = row["tests_passed"] == row["tests"]
    said = "\n".join(m for t in r["tests"] for m in t["messages"])
    if expect == "full":
        row["ok"] = full and perf.get("measured") and perf["credit"] == 1.0
    elif expect == "correct":
        row["ok"] = full and perf.get("measured")
    elif expect == "partial":
        row["ok"] = full and perf.get("measured") and 0.0 < perf["credit"] < 1.0
    elif expect.startswith("zero:"):  # 0 points, and every test says the phrase after "zero:"
        row["ok"] = r["points"] == 0 and all(expect[5:] in "\n".join(t["messages"]) for t in r["tests"])
    else:  # "zero"
        row["ok"] = r["points"] == 0
    row["said"] = said[:300]
    return row


def attack(A, folder, name):
    """Append tests/data/assignments/attack-NAME.py to a filled online-softmax folder."""
    path = folder / "online.py"
    text = (DATA / f"attack-{name}.py").read_text()
    text = text.replace("@PROJECT@", str(ROOT)).replace("@OUTSIDE@", str(folder.parent / "outside.txt"))
    path.write_text(path.read_text() + "\n\n" + text)


def main(out_dir, names=None) -> int:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    import workbench
    from workbench.course import assignments as A
    from workbench.harness.device import provenance

    if workbench.mode() != "gpu":
        print("warning: no GPU; the simulator grades correctness only (no performance credit)",
              file=sys.stderr)
    work = out / "work"
    seed = A.default_seed()
    doc = {"provenance": provenance(), "seed": seed,
           "formula": f"credit = 1 if r <= {A.FULL_CREDIT_RATIO} else {A.FULL_CREDIT_RATIO} / r, "
                      f"r = t_submission / t_reference (medians; the reference timed before and "
                      f"after the submission, averaged)",
           "rows": [], "grades": []}
    chosen = [a for a in A.ASSIGNMENTS if names is None or a.name in names]
    runs = [(f"{a.name}: reference", a.name, "reference", "full", True) for a in chosen]
    runs += [(f"{a.name}: second", a.name, DATA / f"{a.name}-second.py", "correct", True) for a in chosen]
    runs += [("naive-softmax: stub", "naive-softmax", None, "zero", True),
             ("online-softmax: slow", "online-softmax", SLOW, "partial", True),
             ("attack: fingerprint cache", "online-softmax", "fingerprint-cache", "zero:the host read", True),
             ("attack: escapes (no rules)", "online-softmax", "escapes", "zero:escaped: none;", False)]
    started = time.perf_counter()
    for label, name, solution, expect, rules in runs:
        folder = A.release(name, work / label.replace(": ", "-").replace(" ", "-"), force=True)
        if isinstance(solution, str) and solution != "reference":  # an attack on the filled reference
            A.fill(folder)
            attack(A, folder, solution)
        elif solution is not None:
            A.fill(folder, None if solution == "reference" else solution)
        t0 = time.perf_counter()
        r = A.grade(folder, seed=seed, rules=rules)
        print(f"{label}: {r['points']:.2f} / {r['max_points']} in {time.perf_counter() - t0:.0f} s",
              flush=True)
        doc["grades"].append({"label": label, **r})
        doc["rows"].append(summarize(label, r, expect))
        doc["seconds"] = round(time.perf_counter() - started, 1)
        (out / "assignments.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")

    print(f"\n{doc['provenance'].get('device')}, grade seed {seed}, {doc['seconds']} s")
    print(f"{'grade':<30} {'tests':>6} {'correct':>9} {'t_sub ms':>9} {'t_ref ms':>9} {'r':>6} "
          f"{'credit':>7} {'perf':>8} {'total':>10}  ok")
    for row in doc["rows"]:
        def num(x, fmt):
            return format(x, fmt) if isinstance(x, (int, float)) else "-"
        ref_ms = sum(row["reference_ms"]) / len(row["reference_ms"]) if row["reference_ms"] else None
        print(f"{row['label']:<30} {row['tests_passed']:>3}/{row['tests']:<2} "
              f"{num(row['correctness'], '.2f'):>5}/{row['correctness_max']:<3} "
              f"{num(row['submission_ms'], '.3f'):>9} {num(ref_ms, '.3f'):>9} {num(row['ratio'], '.2f'):>6} "
              f"{num(row['credit'], '.2f'):>7} {num(row['perf_points'], '.2f'):>4}/{row['perf_max']!s:<3} "
              f"{row['points']:>6.2f}/{row['max_points']:<3}  {'yes' if row['ok'] else 'NO'}")
    return 0 if all(row["ok"] for row in doc["rows"]) else 1


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2].split(",") if len(sys.argv) == 3 else None))
