"""matplotlib's pyplot for figures written to files; matplotlib is the optional 'plots' extra."""

from __future__ import annotations

from types import ModuleType

from ..optional import require


def pyplot(what: str) -> ModuleType:
    """pyplot on the Agg backend, or MissingExtraError naming the 'plots' extra that `what` needs."""
    matplotlib = require("matplotlib", what)
    matplotlib.use("Agg")  # files only; no display on servers or CI
    return require("matplotlib.pyplot", what)
