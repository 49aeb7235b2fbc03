"""Arrays of other libraries through DLPack (CuPy, JAX, ...), and the csrc/ kernels compiled by NVRTC.

Without a GPU, CuPy imports but cannot create an array: the DLPack path is tested with a stand-in
library (numpy memory behind DLPack only), NVRTC compiles the kernels for sm_90 where libnvrtc is
installed, and backend "cupy" must say why it cannot run. Launching the kernels on CuPy arrays is
the GPU check's job (bench/gpu, family `cupy`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from aggregation_rounds import NUM_BLOCKS, make_round
from test_aggregation_public_api import portable, sliced_axes

from fedbrb_fast.aggregation import AggregationError, AggregationRule, Update, aggregate, aggregate_arrays
from fedbrb_fast.aggregation.array_types import array_type_of, as_tensor, library_of

RULE = AggregationRule("broadcast", lam=0.3, num_blocks=NUM_BLOCKS)


class DlpackOnly:
    """An array that torch knows only through DLPack, as it knows CuPy's (numpy memory behind it)."""

    def __init__(self, data: np.ndarray) -> None:
        self.data = data

    def __dlpack__(self, **kwargs: Any) -> Any:
        return self.data.__dlpack__(**kwargs)

    def __dlpack_device__(self) -> tuple[int, int]:
        return self.data.__dlpack_device__()


class ForeignArray(DlpackOnly):
    """... of a library with an array-API namespace, as JAX's arrays are."""

    def __array_namespace__(self) -> type[ForeignNamespace]:
        return ForeignNamespace


class ForeignNamespace:
    @staticmethod
    def from_dlpack(x: Any) -> ForeignArray:
        return ForeignArray(np.from_dlpack(x))


def foreign(u: Update) -> Update:
    return Update(u.weight, {k: ForeignArray(v) for k, v in u.tensors.items()}, u.slices,
                  {k: ForeignArray(v) for k, v in u.masks.items()}, u.client)


def test_dlpack_arrays_are_shared_and_the_result_comes_back_in_their_library():
    layout, params, updates = make_round("cnn", "fedbrb", label_mask=True)
    expected = aggregate(params, layout, updates, RULE)
    global_arrays = {k: ForeignArray(v.numpy()) for k, v in params.items()}
    got = aggregate_arrays(global_arrays, [foreign(portable(u, layout, as_window=False)) for u in updates], RULE,
                           sliced=sliced_axes(layout), backend="torch")
    assert got.included == expected.included
    for name, value in expected.params.items():
        assert isinstance(got.params[name], ForeignArray)
        np.testing.assert_allclose(got.params[name].data, value.numpy(), atol=1e-5)
    some = next(iter(global_arrays.values()))
    assert library_of(some) == __name__.split(".")[-1]
    assert as_tensor(some).data_ptr() == some.data.ctypes.data  # read in place, no copy


def test_mixed_array_libraries_are_refused_before_any_work():
    params = {"w": np.zeros((4, 3), np.float32), "b": ForeignArray(np.zeros(4, np.float32))}
    with pytest.raises(AggregationError, match="mix array libraries"):
        aggregate_arrays(params, [Update(1.0, {"w": np.ones((4, 3), np.float32), "b": np.ones(4, np.float32)})],
                         AggregationRule("overlap"), backend="torch")
    assert array_type_of([torch.zeros(2), np.zeros(2)]).library == "numpy"  # torch mixes with anything
    assert array_type_of([torch.zeros(2)]).library == "torch"


def test_an_array_that_torch_cannot_import_is_named():
    class Broken(ForeignArray):
        def __dlpack__(self, **kwargs: Any) -> Any:
            raise BufferError("no DLPack for you")

    with pytest.raises(AggregationError, match="Broken array .* could not be shared with torch through DLPack"):
        as_tensor(Broken(np.zeros(2)))


def test_cupy_results_come_back_through_cupy_from_dlpack():
    cupy = pytest.importorskip("cupy", reason="the cupy extra is not installed")
    from fedbrb_fast.aggregation.array_types import dlpack_importer

    # cupy.ndarray cannot be created without a GPU; its library's importer is found by its module.
    fake = type("ndarray", (DlpackOnly,), {"__module__": "cupy._core.core"})
    assert dlpack_importer(fake(np.zeros(1))) is cupy.from_dlpack


def test_backend_cupy_without_a_gpu_says_why(monkeypatch):
    pytest.importorskip("cupy", reason="the cupy extra is not installed")
    from fedbrb_fast.aggregation.backends import unavailable_reason
    from fedbrb_fast.aggregation.backends.cupy_kernels import nvrtc_kernels

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the GPU check runs backend cupy")
    assert "needs a CUDA GPU" in (unavailable_reason("cupy", torch.device("cpu")) or "")
    # Past the torch check (as on a machine whose torch sees a GPU that CuPy cannot use), CuPy's own
    # failure is reported.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    nvrtc_kernels.cache_clear()
    reason = unavailable_reason("cupy", torch.device("cuda"))
    assert reason is not None and reason.startswith("compiling the csrc/ kernels with NVRTC (CuPy) failed")


@pytest.mark.slow  # over 1 s: runs in make test, not make test-fast
def test_the_kernels_compile_with_nvrtc_for_sm90():
    pytest.importorskip("cupy", reason="the cupy extra is not installed")
    from fedbrb_fast.aggregation.backends.cupy_kernels import compile_for_arch, instance_names

    try:
        cubin, lowered = compile_for_arch(90)
    except Exception as exc:  # the library loader raises its own types
        if "libnvrtc" in str(exc):
            pytest.skip(f"libnvrtc is not installed (pip install 'nvidia-cuda-nvrtc==13.0.*'): {exc}")
        raise
    assert cubin[:4] == b"\x7fELF"
    assert set(lowered) == set(instance_names()) and len(lowered) == 12
    assert all(name.startswith("_ZN6fedbrb") for name in lowered.values())
