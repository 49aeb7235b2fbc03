"""The engine benchmark's baseline is honest: the plain per-client loop (bench/plain_loop.py)
computes the same aggregated model as the reference engine, and the benchmark script runs."""

from __future__ import annotations

import dataclasses
import json
import sys
from functools import partial
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

from engine_cases import ROUND, SEED, make_case  # noqa: E402
from interleave import interleaved  # noqa: E402
from machine_check import MachineSpeed, NoiseCheck  # noqa: E402
from plain_loop import plain_round  # noqa: E402

from fedbrb_fast.aggregation import aggregate  # noqa: E402
from fedbrb_fast.engines import BatchedEngine, ReferenceEngine  # noqa: E402
from fedbrb_fast.profiling import PhaseTimer  # noqa: E402


@pytest.mark.parametrize("method", ["fedbrb", "fedrolex", "heterofl"])
# PreResNet rounds take about a second each here: slow.
@pytest.mark.parametrize("case_name", ["mlp", "cnn", "synthetic", pytest.param("preresnet", marks=pytest.mark.slow)])
def test_plain_loop_aggregates_the_reference_engines_model(case_name, method):
    case = make_case(case_name, 8, tiny=True)
    plans = case.plans(method, range(5))
    plain = plain_round(case.model, case.params, case.data, plans, case.hp, case.rule(method), seed=SEED,
                        round_idx=ROUND)
    ref = _reference_round(case, plans, method)
    for name, p in ref.items():
        assert not torch.equal(p, case.params[name]) or name.startswith("norm"), name  # the round trained
        assert torch.allclose(plain[name], p, atol=1e-5, rtol=1e-4), (name, (plain[name] - p).abs().max())
    # the engines in float64: float32 rounding grows chaotically over the CNN's local steps (6e-4 for
    # cnn-heterofl, where float64 agrees to 2e-16), so the arithmetic is compared where it is exact
    wide = _as_float64(case)
    ref64 = _reference_round(wide, plans, method)
    batched = BatchedEngine().train_round(wide.context(), plans, wide.params, PhaseTimer())
    fast = aggregate(wide.params, wide.model.layout, batched.updates, wide.rule(method), backend="auto").params
    for name, p in ref64.items():
        assert torch.allclose(fast[name], p, atol=1e-9, rtol=1e-9), (name, (fast[name] - p).abs().max())


def _reference_round(case, plans, method):
    trained = ReferenceEngine().train_round(case.context(), plans, case.params, PhaseTimer())
    return aggregate(case.params, case.model.layout, trained.updates, case.rule(method)).params


def _as_float64(case):
    data = dataclasses.replace(case.data, x_train=case.data.x_train.double(), x_test=case.data.x_test.double())
    return dataclasses.replace(case, params={k: v.double() for k, v in case.params.items()}, data=data)


def test_noise_check_flags_a_drift_over_15_percent():
    quiet = NoiseCheck(MachineSpeed(100.0, 20.0), MachineSpeed(90.0, 21.0))
    assert not quiet.noisy and quiet.drift == pytest.approx(0.1)
    assert NoiseCheck(MachineSpeed(100.0, 20.0), MachineSpeed(100.0, 16.0)).noisy
    assert NoiseCheck(MachineSpeed(100.0, 20.0), MachineSpeed(120.0, 20.0)).noisy


def test_interleaved_runs_contenders_in_turn():
    calls: list[str] = []
    def run(name: str) -> dict[str, float]:
        calls.append(name)
        return {"train": 1.0}

    runs = {name: partial(run, name) for name in "abc"}
    times = interleaved(runs, 3)
    assert calls == list("abc") * 4  # warm-up, then three interleaved repetitions
    assert all(len(t.seconds) == 3 and t.phases == {"train": 1.0} for t in times.values())


# Runs the whole script in a subprocess (about 40 s).
@pytest.mark.slow
def test_benchmark_script_runs_and_writes_json(tmp_path):
    from bench_engines import main

    out = tmp_path / "engines.json"
    result = main(["--quick", "--table", "mlp:4", "--methods", "fedrolex", "--scaling", "4", "--repeats", "1",
                   "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["rows"] == json.loads(json.dumps(result["rows"]))
    assert all(r["vector_isa"] in ("AVX-512", "AVX2", "AVX", "NEON", "SSE", "unknown") and r["cpu"]
               for r in saved["rows"])
    row = saved["rows"][0]
    assert set(row["contenders"]) == {"plain", "reference", "batched", "stacked"}
    assert row["batched_vs_stacked"] > 0
    assert row["batched_vs_plain"] > 0 and "noisy" in row["noise"]
    point = saved["scaling"][0]
    assert point["clients"] == 4 and point["peak_rss_mb"] >= point["setup_rss_mb"] > 0


def test_markdown_prints_every_row_and_point_of_a_result_file(tmp_path, capsys):
    from bench_engines import main

    timing = {"best_s": 2.0}
    row = {"case": "mlp", "clients": 100, "method": "fedbrb", "batched_vs_plain": 16.25, "batched_vs_reference": 9.5,
           "batched_vs_stacked": 1.625, "batched_train_of_peak": 0.375, "noise": {"drift": 0.06},
           "contenders": {"plain": timing, "reference": timing, "batched": {"best_s": 0.123}}}
    point = {"clients": 10000, "seconds_per_round": 7.2, "client_updates_per_s": 1389.0,
             "plain_seconds_per_round": 108.9, "batched_vs_plain": 15.2, "peak_rss_mb": 803.4, "noise": {"drift": 0.1}}
    path = tmp_path / "engines.json"
    noisy = {**row, "method": "fedrolex", "noise": {"drift": 0.2}}
    other_case = {**point, "case": "preresnet", "clients": 200, "peak_rss_mb": 700.0}
    path.write_text(json.dumps({"rows": [row, {**row, "method": "heterofl", "vector_isa": "AVX2"}, noisy],
                                "scaling": [point, {**point, "clients": 100, "noise": {"drift": 0.3}}, other_case]}))
    main(["--markdown", str(path)])
    lines = capsys.readouterr().out.splitlines()
    captions = [i for i, line in enumerate(lines) if line.startswith("Scaling curve, ")]
    assert [lines[i] for i in captions] == ["Scaling curve, mlp case (fedrolex):",
                                            "Scaling curve, preresnet case (fedrolex):"]
    assert lines[captions[1] + 4] == "| 200 | 7.200 | 1389 | 108.90 | **15.2x** | 700 | 10% |"
    assert "| mlp | 100 | fedbrb | 2.000 | 2.000 | 0.123 | **16.2x** | 9.5x | 1.62x | 38% | 6% | unrecorded |" in lines
    assert sum(line.startswith("| mlp | 100 |") for line in lines) == 2  # the noisy row is not a result
    assert any(line.startswith("| mlp | 100 | heterofl |") and line.endswith("| AVX2 |") for line in lines)
    assert "| 10,000 | 7.200 | 1389 | 108.90 | **15.2x** | 803 | 10% |" in lines
    assert not any(line.startswith("| 100 |") for line in lines)
    assert sum("1 noisy entries (drift over 15%) left out" in line for line in lines) == 2


def test_merge_replaces_only_the_entries_measured_again():
    from bench_engines import merged

    old = {"rows": [{"case": "mlp", "clients": 100, "method": m, "v": 1} for m in ("fedbrb", "heterofl")],
           "scaling": [{"clients": 10, "v": 1}, {"clients": 1000, "v": 1}]}
    again = [{"case": "mlp", "clients": 100, "method": "fedbrb", "v": 2}]
    other_host = {"case": "mlp", "clients": 100, "method": "heterofl", "v": 2, "vector_isa": "AVX2"}
    rows, points = merged(old, [*again, other_host], [{"case": "mlp", "clients": 100, "v": 2},
                                                      {"case": "preresnet", "clients": 10, "v": 2}])
    # a row measured on another vector ISA replaces nothing: the compiled kernels differ
    assert sorted((r["method"], r["v"], r.get("vector_isa")) for r in rows) == [
        ("fedbrb", 2, None), ("heterofl", 1, None), ("heterofl", 2, "AVX2")]
    # points of older files (no case) are the MLP's; a point of another case replaces nothing
    assert [(p.get("case", "mlp"), p["clients"], p["v"]) for p in points] == [
        ("mlp", 10, 1), ("mlp", 100, 2), ("mlp", 1000, 1), ("preresnet", 10, 2)]


@pytest.mark.slow  # measures the machine's peak twice (a few seconds)
def test_cpu_kernel_benchmark_times_each_kernel_against_its_reference_and_writes_json(tmp_path):
    from bench_cpu_kernels import main

    from fedbrb_fast.kernels import cpu_library
    from fedbrb_fast.kernels.causal_attention_cpu import HEAD_DIMS

    if any(cpu_library.unavailable(s) for s in ("causal_attention_cpu.cpp", "layer_norm_cpu.cpp", "bias_gelu_cpu.cpp")):
        pytest.skip("compiled CPU kernels unavailable")
    out = tmp_path / "cpu_kernels.json"
    result = main(["--quick", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["rows"] == json.loads(json.dumps(result["rows"]))
    assert saved["vector_isa"] in ("AVX-512", "AVX2", "AVX", "NEON", "SSE", "unknown") and saved["cpu"]
    passes = ("forward", "forward+backward")
    assert {(r["shape"][-1] // 9, r["pass"]) for r in saved["rows"] if r["kernel"] == "attention"} == {
        (d, p) for d in (2, 4, 8, 16) for p in passes}
    assert {(r["kernel"], r["pass"]) for r in saved["rows"]} == {
        (k, p) for k in ("attention", "layer_norm", "layer_norm_and_shift", "bias_gelu") for p in passes}
    for row in saved["rows"]:
        lanes = row["kernel"] != "attention" or row["shape"][-1] // 9 in HEAD_DIMS
        assert ("kernel_vs_reference" in row) == lanes
        assert row["reference_best_s"] > 0 and "drift" in saved["noise"]


@pytest.mark.parametrize(("flags", "isa"), [("fpu avx avx2 avx512f", "AVX-512"), ("fpu sse2 avx avx2 fma", "AVX2"),
                                            ("fp asimd evtstrm", "NEON"), ("fpu sse sse2", "SSE")])
def test_the_host_record_names_the_widest_vector_isa(monkeypatch, tmp_path, flags, isa):
    import machine_check

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n")
    monkeypatch.setattr(machine_check, "Path", lambda _path: cpuinfo)
    assert machine_check.host_cpu() == {"cpu": "Some CPU", "vector_isa": isa}
