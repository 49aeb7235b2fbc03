"""The package's import graph: no cycles, not even through deferred (function-level) imports, and
only the adapter modules reach into kernels/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import fedbrb_fast

ROOT = Path(fedbrb_fast.__file__).parent
# The bridges to the optional GPU/JIT code in kernels/ (a top-level folder linked in as fedbrb_fast.kernels).
KERNEL_ADAPTERS = {
    "fedbrb_fast.aggregation.backends.torch_backend", "fedbrb_fast.aggregation.backends.triton_backend",
    "fedbrb_fast.engines.batched", "fedbrb_fast.training.batched",
    "fedbrb_fast.models.transformer_stacked",  # the CPU lanes attention kernel (falls back to torch's SDPA)
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in ROOT.rglob("*.py") if "kernels" not in p.relative_to(ROOT).parts[:1]}


def _resolve(module: str, is_package: bool, node: ast.ImportFrom | ast.Import, known: set[str]) -> set[str]:
    """The project modules an import statement loads (the named submodule where it is one)."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name in known}
    base_parts = module.split(".") if is_package else module.split(".")[:-1]
    if node.level:
        base_parts = base_parts[: len(base_parts) - node.level + 1]
    base = ".".join(base_parts + ([node.module] if node.module else [])) if node.level else (node.module or "")
    out = set()
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        out.add(sub if sub in known else base)
    return {m for m in out if m in known}


def _graph(include_deferred: bool) -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods) | _kernel_modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text())
        # deferred: imports inside functions and under TYPE_CHECKING, which can hide a cycle
        nodes = ast.walk(tree) if include_deferred else (n for n in tree.body if not _type_checking_block(n))
        edges: set[str] = set()
        for node in nodes:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges |= _resolve(name, path.name == "__init__.py", node, known)
        # importing a submodule first runs its package's __init__
        parent = name.rsplit(".", 1)[0]
        if parent != name and parent in mods and path.name != "__init__.py":
            edges.add(parent)
        graph[name] = edges - {name}
    return graph


def _type_checking_block(node: ast.stmt) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _kernel_modules() -> set[str]:
    folder = ROOT / "kernels"  # a link to the top-level kernels/, which rglob does not follow
    return {"fedbrb_fast.kernels"} | {f"fedbrb_fast.kernels.{p.stem}" for p in folder.glob("*.py")}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def _package_edges_removed(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """A package's __init__ re-exporting its submodules is not a cycle with a submodule that imports
    a sibling through the package: keep only edges that do not go from a module up to an ancestor."""
    return {n: {m for m in e if not n.startswith(m + ".")} for n, e in graph.items()}


@pytest.mark.parametrize("include_deferred", [False, True], ids=["module-level", "with-deferred"])
def test_no_import_cycles(include_deferred):
    cycle = _cycle(_package_edges_removed(_graph(include_deferred)))
    assert cycle is None, " -> ".join(cycle or [])


def test_only_adapters_import_kernels():
    offenders = sorted(n for n, edges in _graph(include_deferred=True).items()
                       if n not in KERNEL_ADAPTERS and any(e.startswith("fedbrb_fast.kernels") for e in edges))
    assert offenders == []


def test_the_cycle_finder_finds_cycles():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
