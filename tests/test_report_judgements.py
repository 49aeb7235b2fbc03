"""The report's judgements computed from suite summaries: headroom (fedavg − fedavg_small) and the
claims over the scenarios with enough of it, whether each curve flattened, the own-update share
beside every lam, and wall times (with summaries that predate a field)."""

import copy

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
from fedbrb_fast.experiments.formatting import describe_method, share
from fedbrb_fast.experiments.headroom import HEADROOM_MIN_POINTS, has_headroom, headroom_points
from fedbrb_fast.experiments.reading import bounds, lam_effect
from fedbrb_fast.experiments.report import claims_section, convergence_section, headroom_section, render, results_table
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
