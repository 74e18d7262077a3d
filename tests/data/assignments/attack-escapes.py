# Attack (issue 18), graded with the static rules switched off (grade(..., rules=False)) to show
# that the worker's isolation holds by itself: when the module loads, it tries every way out it
# knows, through Numba's own modules (numba.cuda imports importlib), and launch() reports which
# worked. Before the isolated grader the first ones handed in the reference and read the hidden
# tests' plan. Expected: "escaped: none" (and finite resource limits).
# Appended to a released online-softmax folder filled with the reference; the test replaces
# @PROJECT@ (the checkout) and @OUTSIDE@ (a file outside the worker's folder).

PROJECT, OUTSIDE = "@PROJECT@", "@OUTSIDE@"
_imp = cuda.importlib.import_module  # (the static rules refuse `.importlib`: switched off here)
_os, _sys = _imp("os"), _imp("sys")


def _read(path):
    with _imp("builtins").open(path, "rb") as f:
        return f.read()


def _write(path):
    with _imp("builtins").open(path, "w") as f:
        f.write("escaped")


def _results_fd():
    """The worker's pipe to the grader (its number is on the worker's command line)."""
    return int(_sys.argv[_sys.argv.index("--results-fd") + 1])


def _editable_reference():
    """Reinstall an editable install's import hook, then import the reference through it."""
    site = [p for p in _sys.path if p.endswith("site-packages")]
    for name in _os.listdir(site[0]):
        if name.startswith("__editable__") and name.endswith("_finder.py"):
            _imp(name[:-3]).install()
    return _imp("workbench.reference").attention


ESCAPES = {
    "import the reference rung": lambda: _imp("workbench.kernels.online").launch,
    "import the float64 reference": lambda: _imp("workbench.reference").attention,
    "reach a rung through the package": lambda: _imp("workbench.kernels").online,
    "import the grader": lambda: _imp("workbench.course.assignments").grade,
    "import the editable install's reference": _editable_reference,
    "read the rung's source": lambda: _read(PROJECT + "/workbench/kernels/online.py"),
    "read the tests' solutions": lambda: _read(PROJECT + "/tests/data/assignments/online-softmax-slow.py"),
    "list the grader's folder": lambda: _os.listdir(".."),
    "read the grader's folder": lambda: _read("../logs/stderr.txt"),
    "read the grader's command line": lambda: _read(f"/proc/{_os.getppid()}/cmdline"),
    "write outside its folder": lambda: _write(OUTSIDE),
    "open the results pipe": lambda: _imp("builtins").open(_results_fd(), "wb"),
    "start a process": lambda: _os.system("true"),
    "start a subprocess": lambda: _imp("subprocess").run(["true"]),
    "signal the grader": lambda: _os.kill(_os.getppid(), 0),
    "walk the object graph": lambda: _imp("gc").get_objects(),
    "read frames": lambda: _sys._getframe(0).f_back,
    "open a socket": lambda: _imp("socket").socket(),
    "raise its CPU limit": lambda: _imp("resource").setrlimit(0, (-1, -1)),
}
ESCAPED = []
for _name, _try in ESCAPES.items():
    try:
        _try()
        ESCAPED.append(_name)
    except Exception:  # noqa: BLE001 - refused, as it must be
        pass
_resource = _imp("resource")
LIMITS = {n: _resource.getrlimit(getattr(_resource, f"RLIMIT_{n}"))[0] for n in ("CPU", "AS", "FSIZE")}


def launch(problem, config, q, k, v, o, lse, gpu):
    raise RuntimeError(f"escaped: {', '.join(ESCAPED) or 'none'}; limits: "
                       + " ".join(f"{n}={v}" for n, v in LIMITS.items()))
