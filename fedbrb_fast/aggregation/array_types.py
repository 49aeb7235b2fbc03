"""The caller's array library, and conversions between its arrays and torch tensors without copies.

torch tensors pass as they are, numpy arrays (and sequences) are shared through `torch.from_numpy`,
and any other array that speaks DLPack (CuPy, JAX, ...) is shared through `torch.from_dlpack`,
on whatever device it lives. Results go back in the caller's library the same ways: `.numpy()`,
or the library's own `from_dlpack`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .errors import AggregationError


def library_of(x: Any) -> str:
    """"torch", "numpy" (numpy arrays, scalars, lists) or the top-level module of a DLPack array's type."""
    if isinstance(x, Tensor):
        return "torch"
    if isinstance(x, (np.ndarray, np.generic)) or not hasattr(x, "__dlpack__"):
        return "numpy"
    return type(x).__module__.split(".")[0]


def as_tensor(x: Any) -> Tensor:
    """A torch view of `x`'s memory (a tensor built from a list is the one exception: it copies)."""
    library = library_of(x)
    if library == "torch":
        return x
    if library == "numpy":
        return torch.from_numpy(np.asarray(x))
    try:
        return torch.from_dlpack(x)
    except (BufferError, RuntimeError, TypeError, ValueError) as exc:
        raise AggregationError(f"a {type(x).__name__} array ({library}) could not be shared with torch through "
                               f"DLPack: {exc}") from exc


@dataclass(frozen=True)
class ArrayType:
    """How results go back to the caller: as torch tensors, numpy arrays or `library` arrays."""

    library: str
    from_dlpack: Callable[[Tensor], Any] | None = None

    def wrap(self, t: Tensor) -> Any:
        if self.library == "torch":
            return t
        if self.library == "numpy":
            return t.cpu().numpy()
        assert self.from_dlpack is not None
        return self.from_dlpack(t)


def array_type_of(values: Iterable[Any]) -> ArrayType:
    """The array type of a model's tensors: torch, unless some are numpy or DLPack arrays; one such
    library at most (torch tensors may mix with any)."""
    values = list(values)
    libraries = sorted({library_of(v) for v in values} - {"torch"})
    if len(libraries) > 1:
        raise AggregationError(f"the global parameters mix array libraries {libraries}; pass arrays of one library "
                               "(torch tensors may mix with any)")
    if not libraries or libraries[0] == "numpy":
        return ArrayType(libraries[0] if libraries else "torch")
    sample = next(v for v in values if library_of(v) == libraries[0])
    return ArrayType(libraries[0], dlpack_importer(sample))


def dlpack_importer(sample: Any) -> Callable[[Tensor], Any]:
    """`from_dlpack` of `sample`'s library: its array-API namespace's, or its top-level module's (CuPy)."""
    library = type(sample).__module__.split(".")[0]
    if hasattr(sample, "__array_namespace__"):
        namespace = sample.__array_namespace__()
    else:
        namespace = importlib.import_module(library)
    importer = getattr(namespace, "from_dlpack", None)
    if importer is None:
        raise AggregationError(f"{type(sample).__name__} arrays arrived through DLPack, but {library} has no "
                               "from_dlpack to return the result in")
    return importer
