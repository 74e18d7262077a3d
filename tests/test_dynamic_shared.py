"""Dynamic shared memory above 48 KiB (kernels/hardware.allow_dynamic_shared, the runner's
`shared=` launches, Needs.dynamic_shared). The helper reaches into numba-cuda's internals for the
compiled kernel's driver handle, so these tests pin the path it takes; the GPU test launches a
kernel with 100 KiB of dynamic shared memory and checks every byte went through it."""

import os

import numpy as np
import pytest

import workbench
from workbench.harness import runner
from workbench.kernels import hardware
from workbench.kernels.contract import Needs

gpu = pytest.mark.skipif(workbench.mode() != "gpu", reason="needs a CUDA GPU")


def test_small_or_simulated_requests_need_nothing():
    hardware.allow_dynamic_shared(object(), 16 * 1024)  # <= 48 KiB: no driver call, any object


@pytest.mark.skipif(workbench.mode() == "gpu", reason="the simulator's path")
def test_the_simulator_has_no_limit_to_raise():
    hardware.allow_dynamic_shared(object(), 200 * 1024)


def test_opt_in_limit_is_hoppers():
    assert hardware.H100.smem_optin_per_block == hardware.H200.smem_optin_per_block == 227 * 1024
    assert hardware.H100.smem_static_per_block == 48 * 1024


def test_numba_internals_the_helper_reads_exist():
    """_raise_limit reads dispatcher.overloads → _Kernel._codelibrary → CUDACodeLibrary.get_cufunc:
    a numba-cuda upgrade that renames one of them fails here, not on a GPU."""
    import subprocess
    import sys

    probe = ("from numba.cuda.codegen import CUDACodeLibrary\n"
             "from numba.cuda.dispatcher import CUDADispatcher, _Kernel\n"
             "import inspect\n"
             "assert hasattr(CUDACodeLibrary, 'get_cufunc')\n"
             "assert hasattr(CUDADispatcher, 'specialize')\n"
             "assert 'self.overloads' in inspect.getsource(CUDADispatcher)\n"
             "assert 'self._codelibrary' in inspect.getsource(_Kernel)\n"
             "from cuda.bindings import driver\n"
             "driver.cuKernelSetAttribute, driver.CUfunction_attribute."
             "CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES\n")
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0"}  # (the simulator has no codegen module)
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def _rung(needs):
    class Module:
        DEFAULT_CONFIG = SIM_CONFIG = {}
        GPU_ONLY = None

        @staticmethod
        def needs(problem, config):
            return needs

        @staticmethod
        def launch(problem, config, *arrays_and_gpu):
            pass

    class Rung:
        name, kind, module = "probe", "forward", Module
        from workbench.kernels.contract import FORWARD as args

    return Rung


@pytest.mark.parametrize("dynamic, nbytes, ok", [
    (False, 48 * 1024, True), (False, 48 * 1024 + 1, False),
    (True, 100 * 1024, True), (True, 227 * 1024, True), (True, 227 * 1024 + 1, False)])
def test_check_config_applies_the_static_or_the_dynamic_limit(dynamic, nbytes, ok):
    rung = _rung(Needs(shared_bytes=nbytes, dynamic_shared=dynamic))
    p = workbench.Problem(seq_q=8, head_dim=8)
    if ok:
        runner._check_config(rung, p)
    else:
        with pytest.raises(ValueError, match="dynamic" if dynamic else "static"):
            runner._check_config(rung, p)


def test_the_plan_records_each_launchs_dynamic_shared_memory():
    from numba import cuda

    @cuda.jit
    def k(x):
        pass

    gpu = runner.Launcher(live=False)
    gpu.launch(k, 1, 32, np.zeros(4, np.float32), shared=64 * 1024)
    gpu.launch(k, 1, 32, np.zeros(4, np.float32))
    assert [launch.shared for launch in gpu.launches] == [64 * 1024, 0]


@gpu
def test_a_kernel_uses_100_kib_of_dynamic_shared_memory():
    from numba import cuda, float32

    @cuda.jit
    def reverse_through_shared(x, y):
        buf = cuda.shared.array(0, float32)
        n = x.shape[0]
        for i in range(cuda.threadIdx.x, n, cuda.blockDim.x):
            buf[i] = x[i]
        cuda.syncthreads()
        for i in range(cuda.threadIdx.x, n, cuda.blockDim.x):
            y[i] = buf[n - 1 - i]

    n = 100 * 1024 // 4
    x = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    dx, dy = cuda.to_device(x), cuda.device_array(n, np.float32)
    runner.Launcher(live=True, track_memory=False).launch(reverse_through_shared, 1, 256, dx, dy,
                                                          shared=4 * n)
    np.testing.assert_array_equal(dy.copy_to_host(), x[::-1])
    with pytest.raises(ValueError, match="opt-in limit"):
        hardware.allow_dynamic_shared(reverse_through_shared.specialize(dx, dy), 228 * 1024)
