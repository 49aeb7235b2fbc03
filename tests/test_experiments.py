import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import tomli_w
import torch
from test_data_files import make_cifar10
from typer.testing import CliRunner

import fedbrb_fast.engines.simulation as simulation_module
import fedbrb_fast.experiments.execute as execute_module
from fedbrb_fast.cli import app
from fedbrb_fast.config import MLPConfig, config_from_dict
from fedbrb_fast.experiments import (
    SuiteError,
    expand_runs,
    load_suite,
    mean_curve,
    mean_std,
    ordering_verdicts,
    overall,
    replay_coverage,
    run_suite,
    smallest_only_verdicts,
    tally,
)
from fedbrb_fast.experiments.coverage import planning_layout
from fedbrb_fast.experiments.reading import fedbrb_standing, lam_effect
from fedbrb_fast.experiments.report import claims_section
from fedbrb_fast.outputs import OutputDirError, read_metrics
from fedbrb_fast.plans import ClientPlan, element_coverage, layout_coverage, make_round_plans, sample_clients

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "suites"
PNG = b"\x89PNG"
cli = CliRunner()


def tiny_suite_dict():
    """Two scenarios (one width, a mix) on scikit-learn digits; a full run takes a few seconds."""
    return {
        "name": "tiny",
        "description": "test suite",
        "seeds": [0, 1],
        "methods": ["fedbrb", "fedrolex", "heterofl", "fedavg"],
        "coverage_scenario": "w4",
        "base": {
            "rounds": 2,
            "data": {"dataset": "digits", "partition": "iid"},
            "model": {"arch": "mlp", "hidden": [16, 16], "norm": "bn"},
            "clients": {"num_clients": 8, "per_round": 4, "widths": ["1/4"]},
            "train": {"local_epochs": 1, "batch_size": 16, "lr": 0.05},
            "eval": {"every": 1, "batch_size": 512},
            "checkpoint": {"every": 0},
        },
        "scenarios": [
            {"name": "w4", "set": ["clients.widths=['1/4']"]},
            {"name": "mix", "set": ["clients.widths=['1/2','1/4']", "clients.proportions=[1,1]"]},
        ],
        "variants": [
            {"name": "lam0", "set": ["method.name=fedbrb", "method.lam=0"]},
            {"name": "small", "set": ["method.name=fedbrb", "clients.widths=['1/4']", "clients.proportions=[1]"],
             "scenarios": ["mix"]},
        ],
        "roles": {"lam_zero": "lam0", "lam_constant": "fedbrb", "smallest_only": "small"},
    }


def write_suite(tmp_path, raw, name="suite.toml"):
    path = tmp_path / name
    path.write_text(tomli_w.dumps(raw))
    return path


# --- loading and validation: every error names the entry and field, before any run ------------


@pytest.mark.parametrize("change, expected", [
    (lambda r: r.update(colour="red"), ["colour", "unknown key"]),
    (lambda r: r.update(methods=["fedbrb", "fedprox"]), ["methods", "fedprox"]),
    (lambda r: r["scenarios"][1].update(set=["clients.widths"]), ["scenario 'mix'", "clients.widths", "key=value"]),
    (lambda r: r["scenarios"][0].update(set=["train.lrr=0.1"]), ["scenario 'w4'", "train.lrr", "unknown key"]),
    (lambda r: r["variants"][0].update(set=["method.lam=2"]), ["variant 'lam0'", "method.lam"]),
    (lambda r: r["variants"][1].update(scenarios=["nope"]), ["variants[1]", "nope"]),
    (lambda r: r["variants"][0].update(name="fd"), ["variants[0]", "method's name"]),
    (lambda r: r["roles"].update(lam_zero="fedbrb"), ["roles.lam_zero", "method.lam = 0"]),
    (lambda r: r["roles"].update(smallest_only="lam0"), ["roles.smallest_only", "clients.widths"]),
    (lambda r: r["variants"][0]["set"].append("data.partition='shards'"), ["'lam0' changes the data"]),
    (lambda r: r["base"]["train"].update(lr=-1), ["[base]", "train.lr"]),
    (lambda r: r["scenarios"][0]["set"].append("model.hidden=[16]"), ["coverage_scenario 'w4'", "two hidden"]),
])
def test_invalid_suite_is_refused_before_any_run(tmp_path, change, expected):
    raw = tiny_suite_dict()
    change(raw)
    path = write_suite(tmp_path, raw)
    with pytest.raises(SuiteError) as err:
        expand_runs(load_suite(path), tmp_path / "runs")
    for text in expected:
        assert text in str(err.value)
    res = cli.invoke(app, ["suite", str(path), "--out", str(tmp_path / "runs")])
    assert res.exit_code == 2 and expected[0] in res.output
    assert not (tmp_path / "runs").exists()


def test_expansion_orders_overrides_and_names_folders(tmp_path):
    runs = expand_runs(load_suite(write_suite(tmp_path, tiny_suite_dict())), tmp_path / "runs")
    # 2 scenarios x (4 methods + lam0) x 2 seeds, plus `small` in mix only.
    assert len(runs) == 2 * 5 * 2 + 2
    mix_small = next(r for r in runs if r.arm == "small" and r.seed == 1)
    # the variant's overrides come after the scenario's
    assert mix_small.config.clients.widths == [0.25] and mix_small.config.seed == 1
    assert Path(mix_small.config.output_dir) == tmp_path / "runs" / "tiny" / "mix" / "small" / "seed1"
    assert {r.config.method.lam for r in runs if r.arm == "lam0"} == {0.0}
    quick = expand_runs(load_suite(EXAMPLES / "synthetic_mlp.toml"), tmp_path / "q", quick=True)
    assert {r.seed for r in quick} == {0} and {r.config.rounds for r in quick} == {3}


ABLATION_SUITES = ("mnist1d_mlp_ablations.toml", "mnist1d_mlp_ablations_dir.toml")  # fewer methods, by design
# Fitted to 30 minutes on one thread: what each leaves out, and the words its description names it with.
REDUCED_SUITES = {"mnist5k_cnn.toml": {"fd": "Federated Dropout", "diagonal": "(diagonal)"},
                  "mnist5k_preresnet18_multistep.toml": {"fd": "Federated Dropout", "diagonal": "(diagonal)",
                                                         "smallest_only": "smallest-width",
                                                         "seed 2": "2 seeds (0 and 1), not 3"},
                  "shakespeare_transformer_multistep.toml": {"fd": "Federated Dropout", "lam_decay": "only lam = 0",
                                                   "diagonal": "only lam = 0", "smallest_only": "claim-(ii)"},
                  "shakespeare_transformer_local5.toml": {"fd": "Federated Dropout", "diagonal": "(diagonal)",
                                                "smallest_only": "claim-(ii)",
                                                "seed 2": "2 seeds (0 and 1), not 3"}}
METHOD_NAMES = ("fedbrb", "fedrolex", "heterofl", "fd", "fedavg_small", "fedavg")
ROLE_NAMES = {"lam_zero", "lam_constant", "lam_decay", "diagonal", "smallest_only"}


@pytest.mark.parametrize("path", sorted(p for p in EXAMPLES.glob("*.toml") if p.name not in ABLATION_SUITES),
                         ids=lambda p: p.name)
def test_example_suites_are_valid(tmp_path, path):
    suite = load_suite(path)
    runs = expand_runs(suite, tmp_path)
    left_out = REDUCED_SUITES.get(path.name, {})
    assert {r.seed for r in runs} == ({0, 1} if "seed 2" in left_out else {0, 1, 2})
    for method in METHOD_NAMES:
        assert any(r.arm == method for r in runs) != (method in left_out), method
    assert set(suite.roles) == ROLE_NAMES - set(left_out)  # (a role is never named "seed 2")
    for what, words in left_out.items():  # a reduced suite says what it left out
        assert words in suite.description, what
    assert {r.config.train.engine for r in runs} == {"batched"}


def assert_gn_is_mnist1d_mlp_long(runs, scenario, tmp_path):
    """An ablation suite's scenario gn runs the methods exactly as mnist1d_mlp_long's `scenario`."""
    long = {r.arm: r.config for r in expand_runs(load_suite(EXAMPLES / "mnist1d_mlp_long.toml"), tmp_path / "l")
            if r.scenario == scenario and r.seed == 0}
    gn = {r.arm: r.config for r in runs if r.scenario == "gn" and r.seed == 0}
    for method in ("fedbrb", "heterofl", "fedavg_small", "fedavg"):
        assert gn[method].model_copy(update={"name": "", "output_dir": ""}) == long[method].model_copy(
            update={"name": "", "output_dir": ""}), method


def test_the_ablation_suite_varies_the_norm_scaler_and_init_around_mnist1d_mlp_long(tmp_path):
    suite = load_suite(EXAMPLES / "mnist1d_mlp_ablations.toml")
    runs = expand_runs(suite, tmp_path)
    assert_gn_is_mnist1d_mlp_long(runs, "iid_w8", tmp_path)
    assert suite.diagnose and suite.roles == {"tiled_init": "fedbrb_tiled"}
    models = {r.scenario: r.config.model for r in runs if r.arm == "fedavg"}
    norms = {name: (m.norm, m.norm_groups) for name, m in models.items() if isinstance(m, MLPConfig)}
    assert norms == {"gn": ("gn", 4), "ln": ("gn", 1), "bn": ("bn", 4), "none": ("none", 4)}
    assert {r.scenario for r in runs if not r.config.model.scaler} == {"gn", "none"}
    assert {r.arm for r in runs if r.config.method.init == "tiled"} == {"fedbrb_tiled", "fedbrb_tiled_noscaler"}
    assert {r.seed for r in runs} == {0, 1, 2} and len(runs) == 3 * (7 + 5 + 5 + 8)


def test_the_dirichlet_ablation_suite_is_mnist1d_mlp_long_dir_with_the_classifier_scaler(tmp_path):
    suite = load_suite(EXAMPLES / "mnist1d_mlp_ablations_dir.toml")
    runs = expand_runs(suite, tmp_path)
    assert_gn_is_mnist1d_mlp_long(runs, "dir0.3_w8", tmp_path)
    assert suite.diagnose and {r.config.data.partition for r in runs} == {"dirichlet"}
    scaled = {(r.scenario, r.arm) for r in runs if isinstance(r.config.model, MLPConfig) and
              r.config.model.classifier_scaler}
    assert scaled == {("gn", "fedbrb_clfscaler"), ("gn", "fedbrb_tiled_clfscaler")}
    assert {r.seed for r in runs} == {0, 1, 2} and len(runs) == 3 * (9 + 8)


# --- statistics --------------------------------------------------------------------------------


def test_mean_std_is_the_sample_std_and_skips_missing_values():
    s = mean_std([0.5, 0.7, 0.9])
    assert s["mean"] == pytest.approx(0.7) and s["std"] == pytest.approx(0.2) and s["n"] == 3
    s = mean_std([0.4, None, float("nan")])
    assert s["mean"] == 0.4 and s["std"] == 0.0 and s["n"] == 1 and s["missing"] == 2
    assert mean_std([None])["mean"] is None


def test_mean_curve_keeps_rounds_every_seed_evaluated():
    a: list[dict[str, float | None]] = [{"round": 1, "accuracy": 0.2}, {"round": 2, "accuracy": None},
                                        {"round": 3, "accuracy": 0.6}]
    b: list[dict[str, float | None]] = [{"round": 1, "accuracy": 0.4}, {"round": 2, "accuracy": 0.5},
                                        {"round": 3, "accuracy": 0.8}]
    curve = mean_curve([a, b])
    assert curve["round"] == [1, 3]
    assert curve["mean"] == pytest.approx([0.3, 0.7])
    assert curve["std"] == pytest.approx([math.sqrt(0.02), math.sqrt(0.02)])


# --- coverage replay ---------------------------------------------------------------------------


def coverage_cfg(method, **changes):
    raw = {"rounds": 4, "data": {"dataset": "digits"}, "model": {"hidden": [16, 8]},
           "clients": {"num_clients": 12, "per_round": 8, "widths": ["1/4"]}, "method": {"name": method, **changes}}
    return config_from_dict(raw)


@pytest.mark.parametrize("method, changes, expected", [
    # 4 rounds x 8 clients = 32 consecutive roll counters = 2 x K^2: every tile exactly twice.
    ("fedbrb", {}, torch.full((4, 4), 2)),
    ("fedbrb", {"schedule": "diagonal"}, torch.diag(torch.full((4,), 8))),  # 32 plans over 4 diagonal tiles
    ("heterofl", {}, torch.nn.functional.pad(torch.tensor([[32]]), (0, 3, 0, 3))),  # always the first tile
    ("fedavg", {}, torch.full((4, 4), 32)),
])
def test_replayed_coverage_counts_by_hand(method, changes, expected):
    cov = replay_coverage(coverage_cfg(method, **changes))
    assert torch.equal(cov.whole_tiles, expected)
    assert torch.allclose(cov.tile_means(), expected.double())  # block-aligned plans train tiles whole


@pytest.mark.parametrize("method", ["fedbrb", "fedrolex", "fd"])
def test_replayed_coverage_is_what_the_simulation_planned(monkeypatch, method):
    """Record the plans a real run hands out and count them; the replay must agree exactly."""
    planned: list[ClientPlan] = []

    def recording(*args, **kwargs):
        plans = make_round_plans(*args, **kwargs)
        planned.extend(plans)
        return plans

    make_round_plans = simulation_module.make_round_plans
    monkeypatch.setattr(simulation_module, "make_round_plans", recording)
    cfg = coverage_cfg(method).model_copy(update={"rounds": 2})
    sim = simulation_module.Simulation(cfg)
    while not sim.finished:
        sim.run_round()
    cov = replay_coverage(cfg)
    by_hand = element_coverage(planned, 1, 0, 8, 16)
    assert torch.equal(cov.elements, by_hand)
    assert torch.allclose(cov.tile_means(), by_hand.view(4, 2, 4, 4).double().mean(dim=(1, 3)))


def preresnet_coverage_cfg(method="fedbrb", rounds=4):
    """PreResNet-18 at widths [4, 4, 4, 4], K = 2: 4 rounds x 4 clients = 16 roll counters = 2 x K^3."""
    raw = {"rounds": rounds, "data": {"dataset": "digits"}, "model": {"arch": "preresnet18", "widths": [4, 4, 4, 4]},
           "clients": {"num_clients": 8, "per_round": 4, "widths": ["1/2"]}, "method": {"name": method}}
    return config_from_dict(raw)


def test_replayed_coverage_rolls_preresnet18_with_the_layouts_shear():
    """Every tile of every tensor trained over K^3 counters with the layout's shear; the chain
    coefficients (c_g = g) would leave the tiles of the shortcut between streams 0 and 4 untrained
    (c difference 4 = 0 mod K)."""
    cfg = preresnet_coverage_cfg()
    cov = replay_coverage(cfg)
    assert cov.notes == []
    assert torch.equal(cov.whole_tiles, torch.full((2, 2), 4))  # conv1 of the first block: K^3 / K^2 x 2 periods
    layout = planning_layout(cfg)
    chain_plans = [p for t in range(cfg.rounds) for p in make_round_plans(
        "fedbrb", t, sample_clients(t, 8, 4, cfg.seed), [0.5] * 4, group_sizes=layout.group_sizes, num_blocks=2,
        seed=cfg.seed)]
    missed = layout_coverage(chain_plans, layout, 2).notes()
    assert any(line.startswith("stage1.block0.shortcut.weight") for line in missed), missed
    assert replay_coverage(preresnet_coverage_cfg("heterofl")).notes  # the first block only, always


# --- running a suite ---------------------------------------------------------------------------


@pytest.mark.slow  # a whole suite
def test_suite_shares_data_and_runs_resume(tmp_path, monkeypatch):
    builds = []
    real_build = execute_module.load_data

    def counting_build(cfg):
        builds.append(cfg.seed)
        return real_build(cfg)

    monkeypatch.setattr(execute_module, "load_data", counting_build)
    suite = load_suite(write_suite(tmp_path, tiny_suite_dict()))
    summary = run_suite(suite, tmp_path / "runs", command="test", show_progress=False)
    assert builds == [0, 1]  # once per seed: every arm of both scenarios (same data, other widths) shares it
    root = tmp_path / "runs" / "tiny"
    assert summary["runs"] == 22 and summary["runs_shared"] == 2 and summary["runs_reused"] == 0
    # fedavg ignores the client widths: the mix scenario shares the w4 run
    assert json.loads((root / "mix" / "fedavg" / "seed0" / "same_as.json").read_text())["same_as"] == \
        "../../../w4/fedavg/seed0"
    by_name = {s["name"]: s for s in summary["scenarios"]}
    assert by_name["mix"]["results"]["fedavg"]["final_accuracy"] == by_name["w4"]["results"]["fedavg"]["final_accuracy"]
    assert by_name["mix"]["results"]["fedavg"]["shared_from"] == ["w4"]
    # the summary's numbers are the runs' numbers
    finals = [json.loads((root / "w4" / "heterofl" / f"seed{k}" / "summary.json").read_text())["final_accuracy"]
              for k in (0, 1)]
    assert by_name["w4"]["results"]["heterofl"]["final_accuracy"]["values"] == finals
    assert "small" not in by_name["w4"]["results"] and "small" in by_name["mix"]["results"]

    builds.clear()
    again = run_suite(suite, tmp_path / "runs", command="test", show_progress=False)
    assert again["runs_reused"] == 20 and builds == []  # nothing ran, no data loaded
    assert again["scenarios"] == summary["scenarios"]

    raw = tiny_suite_dict()
    raw["base"]["train"]["lr"] = 0.01  # a different config must not pass for the old result, nor replace it silently
    changed = load_suite(write_suite(tmp_path, raw))
    before = tree_digest(root)
    with pytest.raises(OutputDirError, match="hold runs of another config.*--overwrite"):
        run_suite(changed, tmp_path / "runs", command="test", show_progress=False)
    assert tree_digest(root) == before and builds == []
    changed_summary = run_suite(changed, tmp_path / "runs", command="test", show_progress=False, overwrite=True)
    assert changed_summary["runs_reused"] == 0
    assert read_metrics(root / "w4" / "fedbrb" / "seed0" / "metrics.jsonl")[0]["lr"] == 0.01


def tree_digest(folder):
    """SHA-256 of every file under `folder`, by relative path."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow  # a whole suite
def test_quick_suite_and_report_through_the_cli(tmp_path):
    runs, docs = tmp_path / "runs", tmp_path / "docs"
    res = cli.invoke(app, ["suite", str(EXAMPLES / "synthetic_mlp.toml"), "--quick", "--out", str(runs)])
    assert res.exit_code == 0, res.output
    folder = runs / "synthetic_mlp"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["quick"] and summary["command"].endswith(f"synthetic_mlp.toml --quick --out {runs}")
    assert [s["name"] for s in summary["scenarios"]] == ["natural_w8", "natural_mix"]
    assert (folder / "natural_mix" / "fedbrb_smallest_only" / "seed0" / "metrics.jsonl").is_file()
    for png in ("accuracy_natural_w8.png", "accuracy_natural_mix.png", "coverage.png"):
        assert (folder / png).read_bytes()[:4] == PNG
    assert "| fedbrb_smallest_only | — |" in res.output

    res = cli.invoke(app, ["report", str(runs), "--out", str(docs / "results.md")])
    assert res.exit_code == 0, res.output
    text = (docs / "results.md").read_text()
    for link in ("results/synthetic_mlp_accuracy_natural_w8.png", "results/synthetic_mlp_coverage.png"):
        assert f"]({link})" in text and (docs / link).read_bytes()[:4] == PNG
    assert json.loads((docs / "results" / "synthetic_mlp.json").read_text()) == summary
    assert summary["command"] in text and f"fedbrb-fast report {runs} --out {docs / 'results.md'}" in text
    assert "--quick" in text and "say nothing about the methods" in text
    verdict = overall(ordering_verdicts(summary))
    assert f"**Verdict: {verdict}**" in text


def test_report_without_summaries_fails_clearly(tmp_path):
    res = cli.invoke(app, ["report", str(tmp_path), "--out", str(tmp_path / "r.md")])
    assert res.exit_code == 2 and "summary.json" in res.output and not (tmp_path / "r.md").exists()
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "summary.json").write_text('{"version": 0}')
    res = cli.invoke(app, ["report", str(tmp_path), "--out", str(tmp_path / "r.md")])
    assert res.exit_code == 2 and "rerun its `fedbrb-fast suite` command" in res.output


# --- claims and reading on constructed numbers -------------------------------------------------


def stat(mean, std):
    return {"mean": mean, "std": std, "n": 3, "missing": 0, "values": [mean] * 3}


def scenario(name, partition, finals, std=0.01):
    return {"name": name, "setup": {"partition": partition, "partition_label": partition,
                                    "widths": [0.25, 0.125, 0.0625], "num_blocks": 16},
            "results": {arm: {"final_accuracy": stat(m, std), "seconds": stat(1.0, 0.0),
                              "curve": {"round": [1], "mean": [m], "std": [std]}} for arm, m in finals.items()}}


def fedbrb_method(lam):
    return {"name": "fedbrb", "lam": lam, "lam_schedule": "constant", "lam_end": 0.0, "schedule": "shear"}


def constructed_summary():
    base = {"fedrolex": 0.80, "heterofl": 0.70, "fd": 0.60, "fedavg": 0.95}
    return {
        "suite": "made_up",
        "arms": [{"name": "fedbrb", "kind": "method", "method": fedbrb_method(0.5)}]
        + [{"name": a, "kind": "method", "method": {"name": a}} for a in base]
        + [{"name": "lam0", "kind": "variant", "method": fedbrb_method(0.0)},
           {"name": "small", "kind": "variant", "method": fedbrb_method(0.5)}],
        "roles": {"lam_zero": "lam0", "lam_constant": "fedbrb", "smallest_only": "small"},
        "scenarios": [
            # (i) holds clearly; (ii) beats every baseline clearly
            scenario("clear", "shards", {**base, "fedbrb": 0.90, "lam0": 0.85, "small": 0.85}),
            # (i) fails: fedrolex below heterofl; (ii) reaches heterofl (0.5 pts below, std 1 pt)
            scenario("fails", "dirichlet", {**base, "fedbrb": 0.90, "fedrolex": 0.65, "lam0": 0.92, "small": 0.695}),
            # (i) holds within noise; (ii) falls short of fedrolex
            scenario("noisy", "iid", {**base, "fedbrb": 0.805, "fedrolex": 0.80, "heterofl": 0.795, "lam0": 0.80,
                                      "small": 0.70}, std=0.02),
        ],
    }


def test_claim_one_verdicts_match_a_hand_computation():
    verdicts = {v.scenario: v for v in ordering_verdicts(constructed_summary())}
    assert (verdicts["clear"].holds, verdicts["clear"].clear) == (True, True)
    assert (verdicts["fails"].holds, verdicts["fails"].clear) == (False, False)
    assert (verdicts["noisy"].holds, verdicts["noisy"].clear) == (True, False)
    assert verdicts["fails"].pairs[1].diff == pytest.approx(-0.05)
    t = tally(list(verdicts.values()))
    assert (t.scenarios, t.holds, t.clear, t.non_iid, t.non_iid_holds, t.iid_holds) == (3, 2, 1, 2, 1, 1)
    assert overall(list(verdicts.values())) == "holds in some scenarios"
    assert overall([verdicts["fails"]]) == "does not hold" and overall([verdicts["clear"]]) == "holds"
    assert overall([]) == "untested"


def test_claim_two_verdicts_match_a_hand_computation():
    verdicts = {v.scenario: v for v in smallest_only_verdicts(constructed_summary())}
    assert [p.b for p in verdicts["clear"].pairs] == ["fedrolex", "heterofl", "fd"]
    assert (verdicts["clear"].holds, verdicts["clear"].clear) == (True, True)
    vs_hetero = verdicts["fails"].pairs[1]
    assert vs_hetero.b == "heterofl" and not vs_hetero.beats and vs_hetero.reaches  # 0.695 vs 0.70, std 0.01
    assert (verdicts["fails"].holds, verdicts["fails"].clear) == (True, False)
    assert not verdicts["noisy"].holds and not verdicts["noisy"].pairs[0].reaches  # 10 pts below fedrolex, std 2
    assert overall(list(verdicts.values())) == "holds in some scenarios"


def test_report_states_the_computed_verdicts():
    text = claims_section([constructed_summary()])
    assert "**Verdict: holds in some scenarios** — the order holds in 2 of 3 scenarios (1 of them" in text
    assert "| made_up | clear | non-IID | unknown | 90.0% | 80.0% | 70.0% | holds (beyond one std) |" in text
    assert "| made_up | fails | non-IID | unknown | 90.0% | 65.0% | 70.0% | does not hold |" in text
    assert "| made_up | noisy | IID | unknown | 80.5% | 80.0% | 79.5% | holds (within one std) |" in text
    assert "fedrolex 80.0%: falls short (-10.0 pts)" in text
    assert "heterofl 70.0%: reaches (-0.5 pts)" in text
    assert "it reaches or beats every baseline in 2 of 3 scenarios, and beats all of them beyond one std in 1" in text


def test_reading_is_computed_from_the_numbers():
    summary = constructed_summary()
    standing = fedbrb_standing(summary)
    assert standing[0].startswith("FedBRB has the best final accuracy among the small-to-large methods "
                                  "(fedbrb, fedrolex, heterofl, fd) in 3 of 3 scenarios")
    summary["scenarios"][2]["results"]["fd"]["final_accuracy"] = stat(0.85, 0.01)
    standing = fedbrb_standing(summary)
    assert "in 2 of 3 scenarios" in standing[0]
    assert standing[1] == "It is not ahead in 1 of 3: noisy (fd 85.0% vs 80.5%, -4.5 pts, beyond one std)."
    lam = lam_effect(summary)
    assert lam[1] == "fedbrb vs lam0: mean difference +1.2 pts; higher in 2 of 3 scenarios, beyond one std in 2."


@pytest.mark.slow  # a whole suite
def test_quick_preresnet18_suites_on_mnist5k_and_on_cifar10_files(tmp_path):
    """The PreResNet-18 suites run through the CLI: MNIST-5k as shipped, CIFAR-10 from binary files the
    test writes (the suite's data.root pointed at them); the coverage replay covers every tensor."""
    cifar = tmp_path / "cifar"
    make_cifar10(cifar / "cifar-10-batches-bin", np.random.default_rng(0), per_batch=600, n_test=50)
    suite = (EXAMPLES / "cifar10_preresnet18.toml").read_text()
    assert 'root = "data"' in suite
    (tmp_path / "cifar10_preresnet18.toml").write_text(suite.replace('root = "data"', f'root = "{cifar}"'))
    for path, name, n_test in ((EXAMPLES / "mnist5k_preresnet18.toml", "mnist5k_preresnet18", 250),
                               (tmp_path / "cifar10_preresnet18.toml", "cifar10_preresnet18", 50)):
        res = cli.invoke(app, ["suite", str(path), "--quick", "--out", str(tmp_path / "runs")])
        assert res.exit_code == 0, res.output
        summary = json.loads((tmp_path / "runs" / name / "summary.json").read_text())
        assert [s["name"] for s in summary["scenarios"]] == ["dir0.3_w8", "dir0.3_mix"]
        assert {s["setup"]["arch"] for s in summary["scenarios"]} == {"preresnet18"}
        notes = summary["coverage"]["notes"]
        assert notes["fedavg"] == [] and notes["heterofl"]  # one round of two clients: heterofl's first blocks only
        rows = read_metrics(tmp_path / "runs" / name / "dir0.3_w8" / "fedbrb" / "seed0" / "metrics.jsonl")
        assert len(rows) == 1 and rows[0]["accuracy"] is not None
        assert round(rows[0]["accuracy"] * n_test) == pytest.approx(rows[0]["accuracy"] * n_test)


@pytest.mark.slow  # a whole quick suite on the real plays
def test_quick_shakespeare_suite_reports_a_sampled_continuation_per_method(tmp_path):
    res = cli.invoke(app, ["suite", str(EXAMPLES / "shakespeare_transformer.toml"), "--quick", "--out",
                           str(tmp_path / "runs")])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "runs" / "shakespeare_transformer" / "summary.json").read_text())
    assert {s["setup"]["arch"] for s in summary["scenarios"]} == {"transformer"}
    samples = summary["samples"]
    assert samples["scenario"] == "natural_w8" and samples["prompt"].startswith("ROMEO.")
    assert set(samples["texts"]) == {"fedbrb", "fedrolex", "heterofl", "fd", "fedavg_small", "fedavg"}
    assert all(len(t) == 200 for t in samples["texts"].values())
    rows = read_metrics(tmp_path / "runs" / "shakespeare_transformer" / "natural_w8" / "fedbrb" / "seed0" /
                        "metrics.jsonl")
    assert rows[0]["perplexity"] == pytest.approx(math.exp(rows[0]["loss"]))
    res = cli.invoke(app, ["report", str(tmp_path / "runs"), "--out", str(tmp_path / "docs" / "results.md")])
    assert res.exit_code == 0, res.output
    text = (tmp_path / "docs" / "results.md").read_text()
    assert "What the final global models write" in text and f"prompt: {samples['prompt']}" in text
