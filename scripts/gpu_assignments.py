"""GPU check of the course assignments' grader (issue 7).

    python scripts/gpu_assignments.py OUT_DIR [NAMES]   (on a machine with a CUDA GPU; ~3-4 min)

NAMES (comma-separated) grades the reference of those assignments only (default: all of them).

1. Every assignment: release a student folder, fill it with the reference solution, grade it
   (JSON). Expected: every test passes and the performance credit is full (the submission is the
   reference's code, r = t_submission / t_reference ≈ 1 ≤ 1.2).
2. The naive-softmax stub as released: on a GPU a kernel's `raise` does not reach the host, so the
   NaN-poisoned outputs must fail every test (0 points, no performance credit).
3. A deliberately slow but correct online-softmax solution
   (tests/data/assignments/online-softmax-slow.py: O normalised after every tile, divisions in the
   innermost loop): every test passes and the performance credit is partial (1.2 / r of the
   points, r > 1.2).

Writes OUT_DIR/assignments.json (every grade in full, with provenance) after each grade and prints
a summary table last. Exit status 1 when an expectation above fails.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout, installed or not

SEED = 7  # the grade seed: hidden shapes and inputs (fixed, so a re-run grades the same tests)
SLOW = ROOT / "tests" / "data" / "assignments" / "online-softmax-slow.py"


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
           "worker_s": (r.get("worker") or {}).get("seconds")}
    full = row["tests_passed"] == row["tests"]
    if expect == "full":
        row["ok"] = full and perf.get("measured") and perf["credit"] == 1.0
    elif expect == "partial":
        row["ok"] = full and perf.get("measured") and 0.0 < perf["credit"] < 1.0
    else:  # "zero"
        row["ok"] = r["points"] == 0
    return row


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
    doc = {"provenance": provenance(), "seed": SEED,
           "formula": f"credit = 1 if r <= {A.FULL_CREDIT_RATIO} else {A.FULL_CREDIT_RATIO} / r, "
                      f"r = t_submission / t_reference (medians; the reference timed before and "
                      f"after the submission, averaged)",
           "rows": [], "grades": []}
    runs = [(f"{a.name}: reference", a.name, "reference", "full") for a in A.ASSIGNMENTS
            if names is None or a.name in names]
    runs += [("naive-softmax: stub", "naive-softmax", None, "zero"),
             ("online-softmax: slow", "online-softmax", SLOW, "partial")]
    started = time.perf_counter()
    for label, name, solution, expect in runs:
        folder = A.release(name, work / label.replace(": ", "-"), force=True)
        if solution is not None:
            A.fill(folder, None if solution == "reference" else solution)
        t0 = time.perf_counter()
        r = A.grade(folder, seed=SEED)
        print(f"{label}: {r['points']:.2f} / {r['max_points']} in {time.perf_counter() - t0:.0f} s",
              flush=True)
        doc["grades"].append({"label": label, **r})
        doc["rows"].append(summarize(label, r, expect))
        doc["seconds"] = round(time.perf_counter() - started, 1)
        (out / "assignments.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")

    print(f"\n{doc['provenance'].get('device')}, grade seed {SEED}, {doc['seconds']} s")
    print(f"{'grade':<26} {'tests':>6} {'correct':>9} {'t_sub ms':>9} {'t_ref ms':>9} {'r':>6} "
          f"{'credit':>7} {'perf':>8} {'total':>10}  ok")
    for row in doc["rows"]:
        def num(x, fmt):
            return format(x, fmt) if isinstance(x, (int, float)) else "-"
        ref_ms = sum(row["reference_ms"]) / len(row["reference_ms"]) if row["reference_ms"] else None
        print(f"{row['label']:<26} {row['tests_passed']:>3}/{row['tests']:<2} "
              f"{num(row['correctness'], '.2f'):>5}/{row['correctness_max']:<3} "
              f"{num(row['submission_ms'], '.3f'):>9} {num(ref_ms, '.3f'):>9} {num(row['ratio'], '.2f'):>6} "
              f"{num(row['credit'], '.2f'):>7} {num(row['perf_points'], '.2f'):>4}/{row['perf_max']!s:<3} "
              f"{row['points']:>6.2f}/{row['max_points']:<3}  {'yes' if row['ok'] else 'NO'}")
    return 0 if all(row["ok"] for row in doc["rows"]) else 1


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2].split(",") if len(sys.argv) == 3 else None))
