"""The CUDA C++ aggregation kernels compile for sm_90 with nvcc (and with NVRTC: test_aggregation_cupy.py);
they run only where a GPU exists (and in the GPU check, bench/gpu)."""

import importlib.util
import shutil
import subprocess
from importlib.resources import files

import pytest
import torch
from aggregation_rounds import NUM_BLOCKS, make_round, to_device

from fedbrb_fast.aggregation import AggregationRule, aggregate
from fedbrb_fast.aggregation.backends.cuda_backend import SOURCES

CSRC = files("fedbrb_fast.csrc")


def test_sources_ship_with_the_package():
    for name in (*SOURCES, "aggregation_kernels.h", "aggregation_device.cuh"):
        assert (CSRC / name).is_file(), name


@pytest.mark.slow  # nvcc
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc (CUDA toolkit) is not installed")
def test_kernels_compile_for_sm90(tmp_path):
    out = tmp_path / "aggregation_kernels.o"
    run = subprocess.run(["nvcc", "-arch=sm_90", "-O3", "-Werror", "all-warnings", "-c",
                          str(CSRC / "aggregation_kernels.cu"), "-o", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]
    symbols = subprocess.run(["nm", "-C", str(out)], capture_output=True, text=True).stdout
    for launcher in ("fedbrb_scatter_add", "fedbrb_apply"):
        assert f" T {launcher}" in symbols, launcher  # the C entry points the binding calls


@pytest.mark.gpu  # the extension is built and run only where a GPU exists
@pytest.mark.parametrize("arch", ["cnn", "preresnet18", "segmented", "transformer"])
def test_cuda_backend_matches_reference_on_gpu(arch):
    layout, params, updates = make_round(arch, "fedbrb", label_mask=True)
    rule = AggregationRule("broadcast", lam=0.3, num_blocks=NUM_BLOCKS)
    expected = aggregate(params, layout, updates, rule)
    on_gpu, moved = to_device(params, updates, "cuda")
    for backend in ("cuda", "triton") + (("cupy",) if importlib.util.find_spec("cupy") else ()):
        got = aggregate(on_gpu, layout, moved, rule, backend=backend)
        assert got.backend == backend
        for name in layout.names:
            assert torch.allclose(got.params[name].cpu(), expected.params[name], atol=1e-5), (backend, name)
