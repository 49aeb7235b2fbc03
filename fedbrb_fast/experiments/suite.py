"""Experiment suites: one TOML file names a base config, scenarios, methods, FedBRB variants and
seeds; `expand_runs` turns it into validated run configs before anything runs.

A suite file:

    name, description, seeds = [0, 1, 2], methods = [...], coverage_scenario = "..."
    convergence = "..."  how the suite judges that the curves flattened (optional; the report prints
                         it beside the judgement it computes, convergence.DEFAULT_CONVERGENCE_RULE)
    diagnose = true      measure every run's final global model (experiments/diagnostics.py; optional)
    [base]           a full experiment config (the schema of fedbrb_fast/configs/default.toml)
    [[scenarios]]    name, set = ["key=value", ...]   overrides on top of base
    [[variants]]     name, set = [...], scenarios = [...] (optional: where it runs; default all)
    [roles]          which arms play which part in the claims and the reading (optional)
    [quick]          seeds and overrides of the `--quick` smoke variant

Each run's config is base <- scenario.set <- arm.set <- quick.set (with --quick) <- seed.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..config import ConfigError, ExperimentConfig, apply_overrides, config_from_dict
from ..methods import METHODS, Method
from .convergence import DEFAULT_CONVERGENCE_RULE

SAFE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"  # names become folder names
Name = Annotated[str, Field(pattern=SAFE_NAME, max_length=80)]


class SuiteError(ConfigError):
    """An invalid suite; raised before any run starts, naming the suite entry and field."""


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScenarioEntry(_Entry):
    name: Name
    set: list[str] = Field(default_factory=list)


class VariantEntry(_Entry):
    name: Name
    set: list[str] = Field(min_length=1)
    scenarios: list[str] | None = Field(None, min_length=1, description="scenarios it runs in; default all")


class Roles(_Entry):
    """Arms the report compares. Each is checked against what its config really does."""

    lam_zero: str | None = None  # block-wise rolling alone
    lam_constant: str | None = None
    lam_decay: str | None = None
    diagonal: str | None = None  # no shear: the coverage ablation
    smallest_only: str | None = None  # claim (ii): FedBRB where every client has the smallest width
    tiled_init: str | None = None  # FedBRB from the tiled init (docs/algorithm.md#tiled-init)


class QuickEntry(_Entry):
    seeds: list[Annotated[int, Field(ge=0)]] | None = Field(None, min_length=1)
    set: list[str] = Field(default_factory=lambda: ["rounds=2"])


class SuiteFile(_Entry):
    name: Name
    description: str = ""
    seeds: list[Annotated[int, Field(ge=0)]] = Field(min_length=1)
    methods: list[Method] = Field(min_length=1)
    coverage_scenario: str | None = None
    convergence: str = Field(DEFAULT_CONVERGENCE_RULE, min_length=1,
                             description="how the suite judges that the accuracy curves flattened")
    diagnose: bool = Field(False, description="measure every run's final global model (experiments/diagnostics.py)")
    base: dict[str, Any]
    scenarios: list[ScenarioEntry] = Field(min_length=1)
    variants: list[VariantEntry] = Field(default_factory=list)
    roles: Roles = Field(default_factory=Roles)
    quick: QuickEntry = Field(default_factory=QuickEntry)

    @model_validator(mode="after")
    def _names(self) -> SuiteFile:
        problems = []
        named: list[tuple[str, list[str]]] = [
            ("seeds", [str(s) for s in self.seeds]), ("methods", list(self.methods)),
            ("scenarios", [s.name for s in self.scenarios]), ("variants", [v.name for v in self.variants])]
        for label, values in named:
            repeated = sorted({v for v in values if values.count(v) > 1})
            if repeated:
                problems.append(f"{label}: repeated {repeated}")
        scenario_names = {s.name for s in self.scenarios}
        arm_names: set[str] = set(self.methods)
        for i, v in enumerate(self.variants):
            if v.name in METHODS:
                problems.append(f"variants[{i}] {v.name!r}: a variant may not take a method's name")
            unknown = sorted(set(v.scenarios or ()) - scenario_names)
            if unknown:
                problems.append(f"variants[{i}] {v.name!r}.scenarios: unknown scenarios {unknown}")
            arm_names.add(v.name)
        for role, arm in self.roles.model_dump().items():
            if arm is not None and arm not in arm_names:
                problems.append(f"roles.{role}: {arm!r} is neither a method nor a variant of this suite")
        if self.coverage_scenario is not None and self.coverage_scenario not in scenario_names:
            problems.append(f"coverage_scenario: unknown scenario {self.coverage_scenario!r}")
        if problems:
            raise ValueError("; ".join(problems))
        return self


@dataclass(frozen=True)
class Arm:
    """A method, or a FedBRB variant: one row of the results table."""

    name: str
    kind: Literal["method", "variant"]
    overrides: tuple[str, ...]
    scenarios: tuple[str, ...] | None  # None: every scenario

    def runs_in(self, scenario: str) -> bool:
        return self.scenarios is None or scenario in self.scenarios


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    source: Path
    seeds: tuple[int, ...]
    scenarios: tuple[ScenarioEntry, ...]
    arms: tuple[Arm, ...]
    roles: dict[str, str]
    coverage_scenario: str
    base: dict[str, Any]
    quick: QuickEntry
    convergence: str = DEFAULT_CONVERGENCE_RULE
    diagnose: bool = False

    def seeds_for(self, quick: bool) -> tuple[int, ...]:
        return tuple(self.quick.seeds or self.seeds[:1]) if quick else self.seeds


@dataclass(frozen=True)
class RunSpec:
    scenario: str
    arm: str
    seed: int
    config: ExperimentConfig

    @property
    def relative_dir(self) -> Path:
        return Path(self.scenario) / self.arm / f"seed{self.seed}"


@dataclass(frozen=True)
class RunOutcome:
    spec: RunSpec
    summary: dict[str, Any]
    rows: list[dict[str, Any]]
    reused: bool  # finished by an earlier invocation
    shared_with: RunSpec | None = None  # the run with the same result_key whose result this is


def load_suite(path: str | Path) -> Suite:
    path = Path(path)
    if not path.is_file():
        raise SuiteError(f"suite file {str(path)!r} does not exist")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise SuiteError(f"suite {str(path)!r}: not valid TOML: {exc}") from None
    try:
        spec = SuiteFile.model_validate(raw)
    except ValidationError as exc:
        raise SuiteError(f"suite {str(path)!r}: invalid suite:\n  " + "\n  ".join(_problems(exc))) from None
    arms = tuple(Arm(m, "method", (f"method.name={m}",), None) for m in spec.methods) + tuple(
        Arm(v.name, "variant", tuple(v.set), tuple(v.scenarios) if v.scenarios else None) for v in spec.variants)
    return Suite(name=spec.name, description=spec.description, source=path, seeds=tuple(spec.seeds),
                 scenarios=tuple(spec.scenarios), arms=arms,
                 roles={k: v for k, v in spec.roles.model_dump().items() if v is not None},
                 coverage_scenario=spec.coverage_scenario or spec.scenarios[0].name, base=spec.base, quick=spec.quick,
                 convergence=spec.convergence, diagnose=spec.diagnose)


def _problems(exc: ValidationError) -> list[str]:
    """`field: reason (got value)` per error; the value tells which list entry is wrong."""
    out = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            out.append(f"{loc}: unknown key")
            continue
        msg = err["msg"].removeprefix("Value error, ")
        got = f" (got {err['input']!r})" if err["type"] not in ("missing", "value_error") else ""
        out.append(f"{loc}: {msg}{got}" if loc else msg)
    return out


def expand_runs(suite: Suite, out_root: str | Path, *, quick: bool = False) -> list[RunSpec]:
    """Every (scenario, arm, seed) as a validated config whose output_dir is its run folder.
    Raises SuiteError naming the first bad entry; nothing has run at that point."""
    root = Path(out_root) / suite.name
    _resolve(suite, "[base]", [])  # a broken base would otherwise surface as every run's error
    runs = []
    for scenario in suite.scenarios:
        for arm in suite.arms:
            if not arm.runs_in(scenario.name):
                continue
            for seed in suite.seeds_for(quick):
                where = f"scenario {scenario.name!r}, {arm.kind} {arm.name!r}, seed {seed}"
                overrides = [*scenario.set, *arm.overrides, *(suite.quick.set if quick else ()), f"seed={seed}"]
                cfg = _resolve(suite, where, overrides)
                run = RunSpec(scenario.name, arm.name, seed, cfg)
                # Name and folder are bookkeeping, not part of what is validated.
                cfg = cfg.model_copy(update={"name": f"{suite.name}/{scenario.name}/{arm.name}",
                                             "output_dir": str(root / run.relative_dir)})
                runs.append(RunSpec(scenario.name, arm.name, seed, cfg))
    _check_shared_data(suite, runs)
    _check_roles(suite, runs)
    _check_coverage(suite, runs)
    return runs


def _resolve(suite: Suite, where: str, overrides: list[str]) -> ExperimentConfig:
    try:
        return config_from_dict(apply_overrides(suite.base, overrides))
    except ConfigError as exc:
        raise SuiteError(f"suite {str(suite.source)!r}, {where}: {exc}") from None


def data_key(cfg: ExperimentConfig) -> tuple:
    """Everything that decides a run's federated data (dataset, split, partition)."""
    return cfg.seed, cfg.clients.num_clients, tuple(sorted(cfg.data.model_dump().items()))


def result_key(cfg: ExperimentConfig) -> str:
    """Everything that decides a run's result: runs with equal keys compute the same thing and run
    once. fedavg trains the whole model on every client (docs/algorithm.md#extraction), so the client widths play no
    part in it: scenarios that differ only in widths share its run."""
    raw = cfg.model_dump(mode="json", exclude={"name", "output_dir"})
    if cfg.method.name == "fedavg":
        del raw["clients"]["widths"], raw["clients"]["proportions"]
    return json.dumps(raw, sort_keys=True)


def _check_shared_data(suite: Suite, runs: list[RunSpec]) -> None:
    """Every arm of a (scenario, seed) must train on identical data, or the comparison is void."""
    first: dict[tuple[str, int], RunSpec] = {}
    for run in runs:
        ref = first.setdefault((run.scenario, run.seed), run)
        if data_key(run.config) != data_key(ref.config):
            raise SuiteError(f"suite {str(suite.source)!r}, scenario {run.scenario!r}: {run.arm!r} changes the data "
                             f"(data.*, clients.num_clients or seed) that {ref.arm!r} uses; every arm of a scenario "
                             "must see the same data")


def _check_roles(suite: Suite, runs: list[RunSpec]) -> None:
    """The report's reading trusts the roles, so each role's config must do what the role says."""
    for role, arm in suite.roles.items():
        for run in (r for r in runs if r.arm == arm):
            problem = _role_problem(role, run.config, _scenario_widths(runs, run))
            if problem:
                raise SuiteError(f"suite {str(suite.source)!r}, roles.{role} = {arm!r} in scenario "
                                 f"{run.scenario!r}: {problem}")


def _check_coverage(suite: Suite, runs: list[RunSpec]) -> None:
    """The coverage figure needs a weight between two channel groups (coverage.OUT_GROUP, IN_GROUP)."""
    for run in (r for r in runs if r.scenario == suite.coverage_scenario):
        if len(run.config.model.group_sizes) < 2:
            raise SuiteError(f"suite {str(suite.source)!r}, coverage_scenario {suite.coverage_scenario!r} "
                             f"({run.arm}): the coverage figure needs at least two hidden groups (model.hidden)")


def _scenario_widths(runs: list[RunSpec], run: RunSpec) -> list[float]:
    """The client widths the methods (not the variants) use in this run's scenario."""
    return next((r.config.clients.widths for r in runs if r.scenario == run.scenario and r.arm in METHODS),
                run.config.clients.widths)


def _role_problem(role: str, cfg: ExperimentConfig, scenario_widths: list[float]) -> str | None:
    m = cfg.method
    if m.name != "fedbrb":
        return f"method.name is {m.name!r}, not 'fedbrb'"
    checks = {
        "lam_zero": (m.lam == 0 and m.lam_schedule == "constant", "needs method.lam = 0 with a constant schedule"),
        "lam_constant": (m.lam > 0 and m.lam_schedule == "constant" and m.schedule == "shear",
                         "needs method.lam > 0, lam_schedule 'constant' and schedule 'shear'"),
        "lam_decay": (m.lam_schedule != "constant" and m.lam > m.lam_end and m.schedule == "shear",
                      "needs a decaying lam (lam_schedule linear/cosine, lam > lam_end) and schedule 'shear'"),
        "diagonal": (m.schedule == "diagonal", "needs method.schedule = 'diagonal'"),
        "tiled_init": (m.init == "tiled", "needs method.init = 'tiled'"),
        "smallest_only": (len(set(scenario_widths)) > 1 and cfg.clients.widths == [min(scenario_widths)],
                          f"needs clients.widths = [{min(scenario_widths):g}] in a scenario with several widths "
                          f"({scenario_widths})"),
    }
    ok, why = checks[role]
    return None if ok else why

