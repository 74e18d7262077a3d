# Attack (issue 18): Numba's own modules import importlib and builtins (numba.cuda imports
# importlib), so the allowed `from numba import cuda` reaches any module by name. Before the
# isolated grader this imported the reference rung (18 of 18). The rules refuse `.importlib`;
# without the rules, the worker's build holds no rung (ModuleNotFoundError in every test).
# Appended to a released online-softmax folder filled with the reference (it replaces launch()).


def launch(problem, config, q, k, v, o, lse, gpu):
    rung = cuda.importlib.import_module("workbench.kernels.online")
    return rung.launch(problem, config, q, k, v, o, lse, gpu)
