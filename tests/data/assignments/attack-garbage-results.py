# Attack (issue 18), graded with the static rules switched off (grade(..., rules=False)): the
# submission writes into the worker's channel to the grader. Before the isolated grader it could
# overwrite its own result file, and the grader crashed reading it. Now results travel over a
# pipe: launch() writes a forged message (claiming a result for the test, with wrong shapes) and
# then garbage into it. Expected: the grader does not crash; the test scores 0 with "unreadable
# result", the tests after it are not run.
# Appended to a released online-softmax folder filled with the reference (it wraps launch()).

_compute = launch
_imp = cuda.importlib.import_module  # (the static rules refuse `.importlib`: switched off here)
_os, _sys, _json = _imp("os"), _imp("sys"), _imp("json")


def launch(problem, config, q, k, v, o, lse, gpu):
    if gpu.live:
        fd = int(_sys.argv[_sys.argv.index("--results-fd") + 1])
        head = _json.dumps({"type": "result", "test": "public-1", "step": "check",
                            "meta": {"inputs_changed": {}}, "arrays": [["o0", "<f4", [1]]]}).encode()
        _os.write(fd, b"WBG1" + len(head).to_bytes(4, "little") + head + b"\0" * 4 + b"garbage" * 100)
    return _compute(problem, config, q, k, v, o, lse, gpu)
