"""Model families by `model.arch`: the one place that maps a [model] section to a family."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ..config import FamilyConfig
from .family import ModelFamily

C = TypeVar("C", bound=FamilyConfig)

# (its [model] section, input shape, number of classes) -> the global model
FamilyBuilder = Callable[[C, tuple[int, ...], int], ModelFamily]


@dataclass(frozen=True)
class FamilyEntry(Generic[C]):
    config_type: type[C]
    build: FamilyBuilder[C]


FAMILIES: dict[str, FamilyEntry[Any]] = {}


def register_family(arch: str, config_type: type[C], build: FamilyBuilder[C]) -> None:
    """Make `model.arch = arch` build with `build`; an arch is registered once."""
    if arch in FAMILIES:
        raise ValueError(f"model family {arch!r} is already registered")
    FAMILIES[arch] = FamilyEntry(config_type, build)


def registered_archs() -> tuple[str, ...]:
    return tuple(FAMILIES)


def build_family(model: FamilyConfig, input_shape: tuple[int, ...], num_classes: int) -> ModelFamily:
    entry = FAMILIES.get(model.arch)
    if entry is None:
        raise ValueError(f"model.arch: no model family {model.arch!r} is registered "
                         f"(registered: {', '.join(repr(a) for a in FAMILIES)})")
    if not isinstance(model, entry.config_type):
        raise TypeError(f"model.arch: family {model.arch!r} takes a {entry.config_type.__name__}, "
                        f"got a {type(model).__name__}")
    return entry.build(model, input_shape, num_classes)
