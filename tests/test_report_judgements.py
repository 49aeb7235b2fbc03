"""The report's judgements computed from suite summaries: headroom (fedavg − fedavg_small) and the
claims over the scenarios with enough of it, whether each curve flattened, the own-update share
beside every lam, and wall times (with summaries that predate a field)."""

import copy
from typing import Any

import pytest
from test_experiments import constructed_summary, scenario, stat, tiny_suite_dict, write_suite

from fedbrb_fast.experiments import expand_runs, load_suite, ordering_verdicts, smallest_only_verdicts
from fedbrb_fast.experiments.claims import unknown_headroom, with_headroom
from fedbrb_fast.experiments.convergence import (
    CONVERGENCE_MAX_CHANGE_POINTS,
    CONVERGENCE_TAIL_FRACTION,
    DEFAULT_CONVERGENCE_RULE,
    judge_curve,
    judge_scenario,
)
from fedbrb_fast.experiments.diagnostics_report import (
    diagnostics_reading,
    diagnostics_section,
    value,
    why_fedbrb_trails,
)
from fedbrb_fast.experiments.formatting import describe_method, share
from fedbrb_fast.experiments.headroom import HEADROOM_MIN_POINTS, has_headroom, headroom_points
from fedbrb_fast.experiments.reading import bounds, lam_effect, lower_bound_passes, variant_effects
from fedbrb_fast.experiments.report import (
    BUDGET_MINUTES,
    claims_section,
    convergence_section,
    headroom_section,
    render,
    results_table,
    within_budget,
)
from fedbrb_fast.experiments.stats import arm_result
from fedbrb_fast.experiments.suite import RunOutcome, SuiteError
from fedbrb_fast.experiments.summary import build_summary

BASE = {"fedrolex": 0.80, "heterofl": 0.70, "fd": 0.60, "fedavg": 0.95}


def fedbrb(lam, schedule="constant", lam_end=0.0):
    return {"name": "fedbrb", "lam": lam, "lam_schedule": schedule, "lam_end": lam_end, "schedule": "shear"}


# --- headroom --------------------------------------------------------------------------------------


def test_headroom_is_fedavg_minus_fedavg_small_in_points():
    assert HEADROOM_MIN_POINTS == 10
    sc = scenario("s", "iid", {"fedavg": 0.95, "fedavg_small": 0.80})
    assert headroom_points(sc) == pytest.approx(15.0)
    assert headroom_points(scenario("s", "iid", {"fedavg": 0.95})) is None  # no fedavg_small: unknown
    assert headroom_points(scenario("s", "iid", {"fedavg_small": 0.95})) is None
    sc["results"]["fedavg_small"]["final_accuracy"] = {"mean": None, "std": None, "n": 0, "missing": 3}
    assert headroom_points(sc) is None  # every seed failed: unknown, never zero


@pytest.mark.parametrize("upper, lower, counts", [
    (0.60, 0.50, True),  # exactly 10 points (9.999999999999998 in floats) counts
    (0.599, 0.50, False),
    (0.95, 0.10, True),
    (0.50, 0.60, False),  # the small model ahead: negative headroom
])
def test_at_least_ten_points_of_headroom(upper, lower, counts):
    assert has_headroom(headroom_points(scenario("s", "iid", {"fedavg": upper, "fedavg_small": lower}))) is counts
    assert not has_headroom(None)


def headroom_summary():
    """constructed_summary's three scenarios, with fedavg_small set so that 'clear' has 15 pts of
    headroom, 'fails' 10 and 'noisy' 5; plus 'bare', where fedavg_small did not run (unknown)."""
    s = constructed_summary()
    for sc, small in zip(s["scenarios"], (0.80, 0.85, 0.90), strict=True):
        sc["results"]["fedavg_small"] = {"final_accuracy": stat(small, 0.01), "seconds": stat(1.0, 0.0),
                                         "curve": {"round": [1], "mean": [small], "std": [0.01]}}
    # (i) holds clearly, (ii) beats every baseline clearly; but headroom is unknown
    s["scenarios"].append(scenario("bare", "iid", {**BASE, "fedbrb": 0.90, "lam0": 0.85, "small": 0.85}))
    s["arms"].append({"name": "fedavg_small", "kind": "method", "method": {"name": "fedavg_small"}})
    return s


def test_claims_are_counted_again_over_the_headroom_scenarios():
    s = headroom_summary()
    first = ordering_verdicts(s)
    assert {v.scenario: v.headroom for v in first} == pytest.approx({"clear": 15, "fails": 10, "noisy": 5,
                                                                     "bare": None})
    assert [v.scenario for v in with_headroom(first)] == ["clear", "fails"]
    assert [v.scenario for v in unknown_headroom(first)] == ["bare"]
    text = claims_section([s])
    # (i): holds in clear, noisy, bare (3 of 4); of the headroom scenarios clear and fails, in clear only
    assert "the order holds in 3 of 4 scenarios" in text
    assert ("**over the scenarios with at least 10 pts of headroom: holds in some scenarios** — holds in 1 of 2 "
            "headroom scenarios (1 beyond one std)") in text
    assert ("1 scenario(s) have unknown headroom (fedavg or fedavg_small missing) and are left out of that count: "
            "made_up/bare") in text
    assert "| made_up | clear | non-IID | +15.0 pts | 90.0% |" in text
    assert "| made_up | bare | IID | unknown | 90.0% |" in text
    # (ii): holds in clear, fails, bare; of the headroom scenarios in both
    second = smallest_only_verdicts(s)
    assert [v.scenario for v in with_headroom(second)] == ["clear", "fails"]
    assert ("**over the scenarios with at least 10 pts of headroom: holds** — holds in 2 of 2 headroom scenarios "
            "(1 beyond one std)") in text
    assert "| made_up | noisy | +5.0 pts | 70.0% |" in text


def test_no_headroom_scenario_is_said_so():
    s = headroom_summary()
    for sc in s["scenarios"]:
        sc["results"]["fedavg_small"] = copy.deepcopy(sc["results"]["fedavg"])  # headroom 0 everywhere
    assert "no scenario with at least 10 pts of headroom tested it" in claims_section([s])


def test_headroom_shown_per_scenario_and_across_suites():
    s = headroom_summary()
    assert results_table(s).splitlines()[-1] == ("| headroom (fedavg − fedavg_small) | +15.0 pts | +10.0 pts | "
                                                 "+5.0 pts | unknown | |")
    text = headroom_section([s])
    assert "2 of 4 scenarios have at least 10 pts of headroom; 1 unknown." in text
    assert "| made_up | clear | shards | {1/4, 1/8, 1/16} | 95.0 ± 1.0 | 80.0 ± 1.0 | +15.0 pts | yes |" in text
    assert "| made_up | noisy | iid | {1/4, 1/8, 1/16} | 95.0 ± 2.0 | 90.0 ± 1.0 | +5.0 pts | no |" in text
    assert "| made_up | bare | iid | {1/4, 1/8, 1/16} | 95.0 ± 1.0 | — | unknown | unknown |" in text
    reading = bounds(s)
    assert ("In the 2 scenarios with at least 10 pts of headroom, where the large model matters, FedBRB is higher "
            "than fedavg_small in 2 (2 beyond one std).") in reading


# --- convergence -----------------------------------------------------------------------------------


def curve(rounds, means):
    return {"round": list(rounds), "mean": list(means), "std": [0.0] * len(means)}


def test_convergence_rule_constants():
    assert (CONVERGENCE_TAIL_FRACTION, CONVERGENCE_MAX_CHANGE_POINTS) == (0.2, 1.0)
    assert "under 1 point" in DEFAULT_CONVERGENCE_RULE and "last 20% of the rounds" in DEFAULT_CONVERGENCE_RULE


@pytest.mark.parametrize("rounds, means, expected", [
    # every 10 rounds to 150: the last 20% is rounds 120 -> 150
    (range(10, 160, 10), [0.01 * r / 10 for r in range(10, 160, 10)], (3.0, 120, 150, False)),
    (range(10, 160, 10), [0.5] * 11 + [0.500, 0.503, 0.506, 0.509], (0.9, 120, 150, True)),
    (range(10, 160, 10), [0.5] * 11 + [0.500, 0.505, 0.505, 0.490], (-1.0, 120, 150, False)),  # a fall counts too
    ((16, 32, 48, 64), (0.2, 0.5, 0.60, 0.605), (0.5, 48, 64, True)),  # 0.8 * 64 = 51.2: from round 48
    ((20, 40, 60), (0.2, 0.3, 0.35), (5.0, 40, 60, False)),
])
def test_convergence_judged_by_hand(rounds, means, expected):
    c = judge_curve(curve(rounds, means))
    assert (c.change_points, c.from_round, c.to_round) == pytest.approx(expected[:3])
    assert c.known and c.flattened is expected[3]


@pytest.mark.parametrize("rounds, means", [
    ((150,), (0.5,)),  # one evaluation
    ((130, 150), (0.4, 0.5)),  # nothing at or before round 120 to compare with
    ((100, 150), (None, 0.5)),  # every seed failed at round 100
])
def test_convergence_unknown_without_a_start_of_the_window(rounds, means):
    c = judge_curve(curve(rounds, means))
    assert not c.known and not c.flattened


def converging_summary():
    s = headroom_summary()
    rounds = [10, 20, 30, 40, 50]
    for sc in s["scenarios"]:
        for result in sc["results"].values():
            final = result["final_accuracy"]["mean"]
            result["curve"] = curve(rounds, [final] * 5)  # flat
    clear = s["scenarios"][0]["results"]
    clear["fedbrb"]["curve"] = curve(rounds, [0.5, 0.6, 0.7, 0.8, 0.9])  # +10 pts from round 40 to 50
    clear["heterofl"]["curve"] = curve(rounds, [0.7, 0.7, 0.7, 0.72, 0.70])  # -2 pts
    clear["fd"]["curve"] = curve([50], [0.6])  # one evaluation: unknown
    return s


def test_report_names_the_arms_that_had_not_flattened():
    s = converging_summary()
    judged = judge_scenario(s["scenarios"][0])
    assert {a for a, c in judged.items() if c.known and not c.flattened} == {"fedbrb", "heterofl"}
    text = convergence_section(s)
    assert "The suite states no rule (its summary predates the field); judged by the default: " in text
    assert ("| clear | 40→50 | 5 of 7 | fedbrb +10.0 pts, heterofl -2.0 pts; too few evaluations to judge: fd |"
            in text)
    assert "| fails | 40→50 | 8 of 8 | none |" in text
    table = results_table(s)
    assert "| fedbrb | **90.0 ± 1.0** † | 90.0 ± 1.0 |" in table  # not flattened in clear only
    assert "| fd | 60.0 ± 1.0 |" in table  # unknown is not marked
    s["convergence"] = DEFAULT_CONVERGENCE_RULE
    assert f"Rule: {DEFAULT_CONVERGENCE_RULE}." in convergence_section(s)
    s["convergence"] = "the last 100 rounds change the mean by under 2 points"
    text = convergence_section(s)
    assert 'The suite states: "the last 100 rounds change the mean by under 2 points". Judged here' in text


def test_suite_states_its_convergence_rule(tmp_path):
    raw = tiny_suite_dict()
    assert load_suite(write_suite(tmp_path, raw)).convergence == DEFAULT_CONVERGENCE_RULE
    raw["convergence"] = "flat when the last 30% of rounds move under 0.5 points"
    assert load_suite(write_suite(tmp_path, raw)).convergence == raw["convergence"]
    raw["convergence"] = ""
    with pytest.raises(SuiteError, match="convergence"):
        load_suite(write_suite(tmp_path, raw))


def test_summary_records_the_rule_and_run_times_without_counting_unrecorded_ones_as_zero(tmp_path):
    raw = tiny_suite_dict()
    raw["convergence"] = "a stated rule"
    suite = load_suite(write_suite(tmp_path, raw))
    specs = expand_runs(suite, tmp_path / "runs")
    rows = [{"round": 1, "accuracy": 0.5}, {"round": 2, "accuracy": 0.6}]
    outcomes = [RunOutcome(spec, {"final_accuracy": 0.6, "best_accuracy": 0.6,
                                  **({"seconds": {"total": 2.0}} if i else {})}, rows, reused=False)
                for i, spec in enumerate(specs)]
    summary = build_summary(suite, outcomes, quick=False, command="test", wall_seconds=99.0)
    assert summary["convergence"] == "a stated rule"
    assert summary["run_seconds"] == pytest.approx(2.0 * (len(specs) - 1)) and summary["runs_untimed"] == 1
    first = summary["scenarios"][0]["results"]["fedbrb"]["seconds"]
    assert first["missing"] == 1 and first["mean"] == 2.0  # the untimed run is missing, not 0 s


def test_arm_result_leaves_an_unrecorded_run_time_out():
    result = arm_result([{"final_accuracy": 0.5}, {"final_accuracy": 0.7, "seconds": {"total": 3.0}}], [[], []])
    assert result["seconds"]["mean"] == 3.0 and result["seconds"]["missing"] == 1


# --- the own-update share beside lam ---------------------------------------------------------------


@pytest.mark.parametrize("value, text", [(1 / 65, "1/65"), (1 / 257, "1/257"), (9 / 73, "12.3%"), (1.0, "1"),
                                         (0.0, "0"), (99 / 163, "60.7%")])
def test_share_reads_as_a_fraction_or_percentage(value, text):
    assert share(value) == text


@pytest.mark.parametrize("method, ks, text", [
    (fedbrb(0.5), [8], "fedbrb, lam=0.5 (own-update share 1/65 at K=8), shear"),
    (fedbrb(0.5), [16, 8, 8], "fedbrb, lam=0.5 (own-update share 1/65 at K=8, 1/257 at K=16), shear"),
    (fedbrb(0.0), [8, 16], "fedbrb, lam=0 (own-update share 1 at K=8, 16), shear"),
    (fedbrb(0.1), [8], "fedbrb, lam=0.1 (own-update share 12.3% at K=8), shear"),
    (fedbrb(0.5, "cosine"), [8], "fedbrb, lam 0.5→0 (cosine; own-update share 1/65→1 at K=8), shear"),
    (fedbrb(0.5), [], "fedbrb, lam=0.5, shear"),
    ({"name": "heterofl"}, [8], "heterofl"),
])
def test_describe_method_gives_the_own_update_share_beside_lam(method, ks, text):
    assert describe_method(method, ks) == text


def test_every_lam_the_report_names_has_its_share():
    s = converging_summary()
    s["arms"].append({"name": "decay", "kind": "variant", "method": fedbrb(0.5, "cosine"), "set": ["x=1"],
                      "scenarios": None})
    s["roles"]["lam_decay"] = "decay"
    for sc in s["scenarios"]:
        sc["results"]["decay"] = copy.deepcopy(sc["results"]["fedbrb"])
    s["scenarios"][3]["setup"]["num_blocks"] = 8
    text = render([full(s)], {}, command="fedbrb-fast report x")
    assert "- `lam0` [lam_zero]: fedbrb, lam=0 (own-update share 1 at K=8, 16), shear; `x=1`" in text
    assert ("- `decay` [lam_decay]: fedbrb, lam 0.5→0 (cosine; own-update share 1/65→1 at K=8, 1/257→1 at K=16), "
            "shear") in text
    assert "- `fedbrb` (the method row): fedbrb, lam=0.5 (own-update share 1/65 at K=8, 1/257 at K=16), shear" in text
    reading = " ".join(lam_effect(s))
    assert "fedbrb (fedbrb, lam=0.5 (own-update share 1/65 at K=8, 1/257 at K=16), shear)" in reading
    assert "lam=0.5, shear" not in text  # no lam without its share


# --- the whole report from a summary that predates these fields -------------------------------------


def full(s):
    """A summary with what render needs besides the results (an old one: no convergence rule,
    no count of untimed runs)."""
    s = copy.deepcopy(s)
    for a in s["arms"]:
        a.setdefault("set", ["x=1"])
        a.setdefault("scenarios", None)
    setup = {"dataset": "digits", "arch": "mlp", "hidden": [16, 16], "norm": "bn", "num_clients": 8, "per_round": 4,
             "rounds": 50, "local_epochs": 1, "batch_size": 16, "lr": 0.05, "lr_schedule": "constant",
             "momentum": 0.0, "weight_decay": 0.0, "engine": "reference", "eval_every": 10, "proportions": None}
    for sc in s["scenarios"]:
        sc["setup"] = {**setup, **sc["setup"]}
    return {**s, "version": 2, "description": "made up", "source": "x.toml", "quick": False,
            "command": "fedbrb-fast suite x.toml", "finished_at": "2026-01-01T00:00:00+00:00",
            "machine": {"platform": "p", "cpu_model": "c", "cpu_count": 2, "torch": "t", "torch_threads": 1},
            "wall_seconds": 600.0, "run_seconds": 540.0, "runs": 30, "runs_shared": 2, "seeds": [0, 1, 2]}


def test_the_report_renders_headroom_convergence_and_wall_time():
    s = full(converging_summary())
    text = render([s], {}, command="fedbrb-fast report x")
    assert "Wall time: 10.0 min for the invocation that wrote the summary; 9.0 min summed over its 28 computed runs." \
        in text
    assert "| made_up | 2026-01-01T00:00:00+00:00 | p, c | 2 | t (1) | 30 (2 shared) | 10.0 min | 9.0 min |" in text
    assert "| clear | shards | {1/4, 1/8, 1/16} | equal | 16 | +15.0 pts |" in text
    assert "## Headroom: where the large model matters" in text and "**Convergence.**" in text
    assert "holds in 1 of 2 headroom scenarios" in text


def test_wall_times_a_summary_lacks_read_not_recorded():
    old = full(converging_summary())
    del old["wall_seconds"], old["run_seconds"]
    newer = {**full(converging_summary()), "suite": "newer", "run_seconds": 540.0, "runs_untimed": 3}
    text = render([old, newer], {}, command="fedbrb-fast report x")
    assert "| 30 (2 shared) | not recorded | not recorded |" in text
    assert "Wall time: not recorded for the invocation that wrote the summary; not recorded summed" in text
    assert "| 10.0 min | 9.0 min (3 runs not recorded) |" in text
    assert "| all 2 suites | | | | | 60 | 10.0 min | 9.0 min |" in text


def test_a_suite_over_the_time_budget_is_marked():
    s = full(converging_summary())
    assert BUDGET_MINUTES == 30
    assert within_budget(s) == "yes"
    assert within_budget({**s, "wall_seconds": 66.1 * 60}) == "no (66.1 min)"
    # rewritten from reused runs: a short wall time, but its runs took their sum
    assert within_budget({**s, "wall_seconds": 40.0, "run_seconds": 63.8 * 60}) == "no (63.8 min)"
    assert within_budget({**s, "wall_seconds": 1800.0, "run_seconds": None}) == "yes"
    assert within_budget({k: v for k, v in s.items() if k not in ("wall_seconds", "run_seconds")}) == "not recorded"
    text = render([{**s, "wall_seconds": 66.1 * 60}], {}, command="fedbrb-fast report x")
    assert "| 66.1 min | 9.0 min | no (66.1 min) |" in text and "within 30 min |" in text


# --- the ablations: arms above the lower bound, variants against their method, diagnostics -------


def ablation_summary():
    """Two norms as scenarios: fedbrb below fedavg_small in both, its tiled variant above it in
    `ln` only, a scaler-off variant (no role) and the lam-zero role (covered by lam_effect)."""
    def diag(temperature, scale, coherence, sub, loss):
        d = {"test_loss": loss, "temperature": temperature, "loss_at_temperature": 1.2, "logit_scale": scale,
             "submodel_accuracy": sub, "tile_coherence": coherence}
        return {k: (stat(v, 0.01) if v is not None else {"mean": None, "std": None, "n": 0, "missing": 3})
                for k, v in d.items()}

    arms = [{"name": "fedbrb", "kind": "method", "method": fedbrb(0.5)},
            {"name": "fedavg_small", "kind": "method", "method": {"name": "fedavg_small"}},
            {"name": "fedavg", "kind": "method", "method": {"name": "fedavg"}},
            {"name": "fedbrb_noscaler", "kind": "variant", "method": fedbrb(0.5), "set": ["model.scaler=false"]},
            {"name": "lam0", "kind": "variant", "method": fedbrb(0.0), "set": ["method.lam=0"]},
            {"name": "tiled", "kind": "variant", "method": {**fedbrb(0.5), "init": "tiled"},
             "set": ["method.init='tiled'"]}]
    scenarios = [scenario("gn", "iid", {"fedbrb": 0.50, "fedavg_small": 0.56, "fedavg": 0.71,
                                        "fedbrb_noscaler": 0.52, "lam0": 0.40, "tiled": 0.55}),
                 scenario("ln", "iid", {"fedbrb": 0.56, "fedavg_small": 0.60, "fedavg": 0.71,
                                        "fedbrb_noscaler": 0.555, "lam0": 0.45, "tiled": 0.63})]
    s: dict[str, Any] = {"suite": "abl", "arms": arms, "roles": {"lam_zero": "lam0", "tiled_init": "tiled"},
                         "scenarios": scenarios}
    for sc in s["scenarios"]:
        sc["setup"]["num_blocks"] = 8
        r = sc["results"]
        r["fedbrb"]["diagnostics"] = diag(7.8, 8.2, 0.984, 0.502, 5.08)
        r["tiled"]["diagnostics"] = diag(9.5, 8.0, 0.999, 0.60, 6.5)
        r["fedbrb_noscaler"]["diagnostics"] = diag(8.0, 8.1, 0.985, 0.51, 5.3)
        r["fedavg_small"]["diagnostics"] = diag(1.6, None, None, None, 1.27)
        r["fedavg"]["diagnostics"] = diag(1.8, 6.0, 0.122, 0.14, 0.97)
    return s


def test_arms_above_the_lower_bound_are_named_per_scenario():
    (sentence,) = lower_bound_passes(ablation_summary())
    assert sentence == ("Arms above the lower bound fedavg_small (every arm but fedavg; final accuracy): gn: none "
                        "(closest tiled, -1.0 pts); ln: tiled +3.0 pts (beyond one std).")
    no_small = ablation_summary()
    no_small["arms"] = [a for a in no_small["arms"] if a["name"] != "fedavg_small"]
    for sc in no_small["scenarios"]:
        del sc["results"]["fedavg_small"]
    assert lower_bound_passes(no_small) == []


def test_variants_without_a_role_and_the_tiled_init_are_read_against_their_method():
    lines = variant_effects(ablation_summary())
    assert len(lines) == 2  # lam0 has a role of its own (lam_effect reads it)
    assert lines[0].startswith("fedbrb_noscaler − fedbrb (fedbrb, lam=0.5 (own-update share 1/65 at K=8), shear; "
                               "`model.scaler=false`): gn +2.0 pts (beyond one std); ln -0.5 pts (within one std); "
                               "mean +0.8 pts.")
    assert lines[1].startswith("tiled − fedbrb (fedbrb, lam=0.5 (own-update share 1/65 at K=8), shear, tiled init; "
                               "`method.init='tiled'`): gn +5.0 pts (beyond one std); ln +7.0 pts (beyond one std)")


def test_diagnostics_are_tabled_per_scenario_and_read_for_fedbrb_and_the_bounds():
    s = ablation_summary()
    table = diagnostics_section(s)
    assert "Scenario `gn`:" in table and "Scenario `ln`:" in table
    assert ("| fedbrb | 50.0 ± 1.0 | 5.08 ± 0.01 | 7.80 ± 0.01 | 1.20 ± 0.01 | 8.20 ± 0.01 | 50.2 ± 1.0 | "
            "0.984 ± 0.010 |") in table
    assert "| fedavg_small | 56.0 ± 1.0 | 1.27 ± 0.01 | 1.60 ± 0.01 | 1.20 ± 0.01 | — | — | — |" in table
    assert "| lam0 |" not in table  # no diagnostics recorded for it
    why = why_fedbrb_trails(s)
    assert why == [
        "Why FedBRB does not pass fedavg_small: its global model is close to K x K copies of one width-1/K sub-model "
        "(tile coherence at least 0.95) and scores what its sub-models score (within one std) in gn (0.984; 50.0% vs "
        "50.2%) (coherence; global vs sub-model accuracy): a model no larger than fedavg_small's, so at best its "
        "equal.",  # not ln: 56.0% is more than one std from its sub-models' 50.2%
        "Its overconfidence is the classifier summing K equal blocks: its logits are K times as spread as its "
        "sub-models' (within 15% of K) in gn (8.20, temperature 7.80), ln (8.20, temperature 7.80).",
        "There, its sub-models against fedavg_small's accuracy: gn -5.8 pts, from the tiled init +4.0 pts (the tiled "
        "init removes the tiles' independent starting points, which broadcast never averages away).",
        "Global model below its own sub-models by more than one std (a K x K tiled model computes its sub-model's "
        "function only where a norm divides the K-fold sums out exactly, docs/algorithm.md#tiled-init): tiled in gn "
        "(55.0% vs 60.0%)."]
    lines = diagnostics_reading(s)
    assert lines[:4] == why
    lines = lines[4:]
    assert lines[0] == ("Calibration of fedbrb's global model (K = 8): fitted temperature gn 7.80, ln 7.80; logit "
                        "scale against its width-1/K sub-models gn 8.20, ln 8.20; test loss gn 5.08, ln 5.08, and at "
                        "the fitted temperature gn 1.20, ln 1.20.")
    assert lines[1].startswith("Calibration of tiled's global model")
    assert lines[2] == ("Tiles of fedbrb's global model: coherence gn 0.984, ln 0.984; its width-1/K sub-models reach "
                        "gn 50.2%, ln 50.2% against the global model's gn 50.0%, ln 56.0% (fedavg_small: gn 56.0%, "
                        "ln 60.0%).")
    # every FedBRB arm with diagnostics (lam0 has none)
    assert [line.split("'s")[0] for line in lines[2:5]] == ["Tiles of fedbrb", "Tiles of fedbrb_noscaler",
                                                             "Tiles of tiled"]
    assert len(lines) == 7
    assert lines[-2] == ("For reference, fedavg_small: fitted temperature gn 1.60, ln 1.60; test loss gn 1.27, ln "
                         "1.27.")
    assert lines[-1] == ("For reference, fedavg: fitted temperature gn 1.80, ln 1.80; test loss gn 0.970, ln 0.970; "
                         "tile coherence gn 0.122, ln 0.122.")
    assert value({"mean": 603.4, "std": 524.2, "n": 3}) == "603 ± 524" and value(None) == "—"
    assert value({"mean": 0.985, "std": 0.000706, "n": 3}) == "0.985 ± 0.001"
    assert value({"mean": 10.19, "std": 0.26, "n": 1}) == "10.2"
    plain = converging_summary()
    assert diagnostics_section(plain) == "" and diagnostics_reading(plain) == [] and why_fedbrb_trails(plain) == []
    wide = copy.deepcopy(s)  # a logit scale far from K is not called the classifier's sum
    for sc in wide["scenarios"]:
        sc["results"]["fedbrb"]["diagnostics"]["logit_scale"] = stat(5.0, 0.1)
    assert not any(line.startswith("Its overconfidence") for line in why_fedbrb_trails(wide))
