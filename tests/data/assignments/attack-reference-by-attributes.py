# Attack (issue 18): `workbench.kernels.common` is a module a submission may import, but the
# statement `import workbench.kernels.common` binds the name `workbench`: the package, whose
# attributes reach every module loaded in the process. Before the isolated grader the reference
# rung was loaded there, and this handed in its output (18 of 18). The rules refuse the statement
# and the attribute chain; without the rules, the worker's build holds no rung to reach
# (AttributeError in every test).
# Appended to a released online-softmax folder filled with the reference (it replaces launch()).

import workbench.kernels.common  # noqa: E402


def launch(problem, config, q, k, v, o, lse, gpu):
    return workbench.kernels.online.launch(problem, config, q, k, v, o, lse, gpu)
