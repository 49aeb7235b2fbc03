"""Optional packages: each belongs to an extra of pyproject.toml; using a missing one fails with a
message naming the extra, and NVTX ranges and backend 'auto' do without (tested beside them)."""

from __future__ import annotations

import importlib
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
import tomli_w
import torch
from aggregation_rounds import NUM_BLOCKS, make_round
from typer.testing import CliRunner

from fedbrb_fast.aggregation import AggregationError, AggregationRule, aggregate
from fedbrb_fast.cli import app
from fedbrb_fast.config import config_from_dict
from fedbrb_fast.data import load_dataset
from fedbrb_fast.optional import EXTRAS, MissingExtraError, available, require
from fedbrb_fast.outputs import plot_accuracy
from fedbrb_fast.runner import compare_methods

PYPROJECT = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
OPTIONAL = PYPROJECT["project"]["optional-dependencies"]


def hide(monkeypatch: pytest.MonkeyPatch, *packages: str) -> None:
    """Make `packages` (and their loaded submodules) unimportable, as if not installed."""
    for package in packages:
        for name in [n for n in sys.modules if n == package or n.startswith(package + ".")] + [package]:
            monkeypatch.setitem(sys.modules, name, None)


def forget(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    """Drop our own modules from the import cache so that importing them runs them again."""
    for name in modules:
        monkeypatch.delitem(sys.modules, name, raising=False)


def hint(what: str, extra: str) -> str:
    return f"^{re.escape(what)} needs the {extra!r} extra: pip install 'fedbrb-fast\\[{extra}\\]'$"


def requirement_name(requirement: str) -> str:
    return re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower()


def test_every_optional_module_belongs_to_an_extra_that_installs_it():
    distributions = packages_distributions()
    for module, extra in EXTRAS.items():
        names = {requirement_name(r) for r in OPTIONAL[extra]}
        assert {d.lower() for d in distributions[module]} & names, (module, extra, OPTIONAL[extra])
    core = {requirement_name(r) for r in PYPROJECT["project"]["dependencies"]}
    assert core == {"torch", "numpy", "pydantic", "tomli-w", "typer", "tqdm", "safetensors"}
    dev_extras = next(r for r in OPTIONAL["dev"] if r.startswith("fedbrb-fast["))
    assert set(dev_extras[len("fedbrb-fast["):-1].split(",")) == set(EXTRAS.values())  # make installs them all


@pytest.mark.parametrize("module", sorted(EXTRAS))
def test_require_names_the_extra_of_a_missing_package(monkeypatch, module):
    assert available(module)
    hide(monkeypatch, module)
    assert not available(module) and not available(f"{module}.sub")
    with pytest.raises(MissingExtraError, match=hint("this part", EXTRAS[module])) as info:
        require(f"{module}.sub" if module != "nvtx" else module, "this part")
    assert isinstance(info.value, ImportError) and isinstance(info.value.__cause__, ModuleNotFoundError)


@pytest.mark.parametrize("dataset,package", [("digits", "sklearn"), ("mnist1d", "mnist1d")])
def test_a_dataset_without_its_package_names_the_datasets_extra(monkeypatch, dataset, package):
    hide(monkeypatch, package)
    with pytest.raises(MissingExtraError, match=hint(f"dataset {dataset!r}", "datasets")):
        load_dataset(dataset, seed=0)


def test_plots_need_the_plots_extra_and_compare_says_so_before_any_work(monkeypatch, tmp_path, tiny_cfg_dict):
    hide(monkeypatch, "matplotlib")
    with pytest.raises(MissingExtraError, match=hint("the accuracy plot (accuracy.png)", "plots")):
        plot_accuracy({"fedbrb": [{"round": 1, "accuracy": 0.5}]}, tmp_path / "accuracy.png", title="t")
    cfg = config_from_dict(tiny_cfg_dict)
    with pytest.raises(MissingExtraError, match=hint("the accuracy plot (accuracy.png)", "plots")):
        compare_methods(cfg, ["fedbrb", "heterofl"])
    assert not (tmp_path / "accuracy.png").exists() and not Path(cfg.output_dir).exists()


def test_the_cli_names_the_missing_extra_before_any_work(monkeypatch, tmp_path, tiny_cfg_dict):
    f = tmp_path / "cfg.toml"
    f.write_text(tomli_w.dumps(tiny_cfg_dict))
    hide(monkeypatch, "matplotlib")
    result = CliRunner().invoke(app, ["compare", str(f), "--methods", "fedbrb,fd"])
    assert result.exit_code == 2
    assert result.stderr == ("error: the accuracy plot (accuracy.png) needs the 'plots' extra: "
                             "pip install 'fedbrb-fast[plots]'\n")
    assert not Path(tiny_cfg_dict["output_dir"]).exists()


def test_flower_integration_needs_the_flower_extra(monkeypatch):
    hide(monkeypatch, "flwr")
    forget(monkeypatch, "fedbrb_fast.integrations.flower")
    with pytest.raises(MissingExtraError, match=hint("fedbrb_fast.integrations.flower", "flower")):
        importlib.import_module("fedbrb_fast.integrations.flower")


def test_triton_parts_need_the_triton_extra(monkeypatch):
    from fedbrb_fast.engines import BatchedEngine

    hide(monkeypatch, "triton")
    forget(monkeypatch, *[n for n in sys.modules if n.startswith("fedbrb_fast.kernels.")
                          and n != "fedbrb_fast.kernels.aggregation"])
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # on the CPU too, only the missing package stands in the way
    layout, params, updates = make_round("mlp", "fedbrb")
    missing = ("aggregation backend 'triton' is not available: the triton aggregation backend needs the 'triton' "
               "extra: pip install 'fedbrb-fast[triton]'")
    with pytest.raises(AggregationError, match=f"^{re.escape(missing)}$"):
        aggregate(params, layout, updates, AggregationRule("broadcast", 0.3, NUM_BLOCKS), backend="triton")
    with pytest.raises(MissingExtraError, match=hint("fedbrb_fast.kernels.aggregation_triton", "triton")):
        importlib.import_module("fedbrb_fast.kernels.aggregation_triton")
    with pytest.raises(MissingExtraError, match=hint("the Triton grouped GEMM", "triton")):
        BatchedEngine(linear_backend="triton", device="cpu")
    assert BatchedEngine(linear_backend="torch").linear_backend == "torch"  # the default needs no triton
    assert aggregate(params, layout, updates, AggregationRule("overlap"), backend="auto").backend in ("numba", "torch")
    assert torch.isfinite(aggregate(params, layout, updates, AggregationRule("overlap")).params["out.weight"]).all()


@pytest.mark.parametrize("module", ["numba", "scipy"])
def test_client_major_training_needs_numba_and_scipy_else_auto_trains_step_major(monkeypatch, module):
    from fedbrb_fast.engines import BatchedEngine

    assert BatchedEngine().client_major
    hide(monkeypatch, module)
    assert not BatchedEngine().client_major and not BatchedEngine(cpu_trainer="stacked").client_major
