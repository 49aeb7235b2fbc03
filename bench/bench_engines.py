"""Train + aggregate per round: a plain per-client loop vs the reference engine vs the batched engine.

    python bench/bench_engines.py --out bench/results/engines.json     # full table + scaling curve
    python bench/bench_engines.py --table mlp:100 --methods fedrolex --no-scaling   # one entry
    python bench/bench_engines.py --quick                              # tiny sizes: the script runs
    python bench/bench_engines.py --table cnn:200 --no-scaling --out bench/results/engines.json --merge
                                                                       # remeasure one entry in place
    python bench/bench_engines.py --table preresnet:50 --contenders plain,reference,batched,vmapped \
        --scaling-case preresnet --scaling 50,200   # PreResNet-18: its row, the vmapped path, peak RSS

Cases and contenders: bench/engine_cases.py (real MNIST-5k and Synthetic data; fedbrb, fedrolex,
heterofl; `stacked` is the batched engine with train.cpu_trainer = "stacked", every model step-major
in batched torch ops, where `batched` trains ReLU chains client-major in the numba kernel;
`--contenders ...,vmapped` adds the batched engine on the functional forward alone, the path of a
family without a hand-written stacked forward). Every table entry runs in a fresh
process holding all contenders, timed interleaved (plain, reference, batched, plain, ...) for
`--repeats` rounds after one warm-up each; best and median are reported, ratios use the best. The
plain loop and the reference engine are timed on at most `--max-timed` clients and scaled linearly
to the round's count (their cost is a sum over clients). Around every entry the same-run matmul
peak and copy bandwidth are measured; an entry where either moved by more than 15% is marked
noisy, and a run with a noisy entry is not a result (rerun it on a quieter machine).

Scaling curve (MLP case, fedrolex; `--scaling-case` picks another): 10, 100, 1,000, 10,000 clients
per round, each point in a fresh process: seconds per round, client-updates/s, the process's peak
RSS over one batched round (`max_clients_per_step` bounds it), and the ratio to the plain loop.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the bench modules, also when spawned

from engine_cases import CONTENDERS, METHODS, contender, make_case  # noqa: E402
from interleave import Timings, interleaved  # noqa: E402
from machine_check import NOISE_TOLERANCE, NoiseCheck, host_cpu, measure_speed  # noqa: E402

from fedbrb_fast.outputs import atomic_write_text  # noqa: E402

TABLE = "mlp:100,mlp:1000,cnn:50,cnn:200,synthetic:100,preresnet:50"
SCALING = "10,100,1000,10000"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timing_row(name: str, t: Timings, timed: int, clients: int) -> dict[str, Any]:
    scale = clients / timed
    return {"contender": name, "timed_clients": timed, "best_s": t.best * scale, "median_s": t.median * scale,
            "client_updates_per_s": clients / (t.best * scale), "phases_s": {k: v * scale for k, v in t.phases.items()},
            "raw_seconds": t.seconds}


def measure_entry(case_name: str, clients: int, methods: list[str], contenders: list[str], repeats: int,
                  max_timed: int, threads: int, tiny: bool, max_clients_per_step: int) -> list[dict[str, Any]]:
    """One table entry in this (fresh) process: every method, all contenders interleaved."""
    torch.set_num_threads(threads)
    case = make_case(case_name, clients, tiny=tiny)
    rows = []
    for method in methods:
        before = measure_speed()
        timed = {name: min(clients, max_timed) if name not in ("batched", "stacked", "vmapped") else clients
                 for name in contenders}
        runs = {name: contender(name, case, method, range(timed[name]), max_clients_per_step=max_clients_per_step)
                for name in contenders}
        times = interleaved(runs, repeats)
        check = NoiseCheck(before, measure_speed())
        row: dict[str, Any] = {"case": case_name, "clients": clients, "method": method, "repeats": repeats,
                               "noise": check.as_dict(),
                               "contenders": {n: timing_row(n, times[n], timed[n], clients) for n in contenders}}
        c = row["contenders"]
        for a, b in (("batched", "plain"), ("batched", "reference"), ("reference", "plain"),
                     ("batched", "stacked"), ("batched", "vmapped")):
            if a in c and b in c:
                row[f"{a}_vs_{b}"] = c[b]["best_s"] / c[a]["best_s"]
        gflop = case.training_gflop(range(clients))
        row["training_gflop"] = gflop
        for name in ("batched", "stacked"):
            if name in c:
                train = c[name]["phases_s"].get("train", 0.0) + c[name]["phases_s"].get("gather", 0.0)
                row[f"{name}_train_gflops"] = gflop / train if train else None
                row[f"{name}_train_of_peak"] = gflop / train / before.matmul_gflops if train else None
        rows.append(row)
    return rows


def measure_scaling_point(case_name: str, clients: int, repeats: int, max_timed: int, threads: int, tiny: bool,
                          max_clients_per_step: int) -> dict[str, Any]:
    """One point of the scaling curve in this (fresh) process; peak RSS is read after one batched
    round, before the plain loop runs."""
    torch.set_num_threads(threads)
    case = make_case(case_name, clients, tiny=tiny)
    setup_rss = peak_rss_mb()
    batched = contender("batched", case, "fedrolex", range(clients), max_clients_per_step=max_clients_per_step)
    batched()
    round_rss = peak_rss_mb()
    timed = min(clients, max_timed)
    before = measure_speed()
    times = interleaved({"plain": contender("plain", case, "fedrolex", range(timed)), "batched": batched}, repeats)
    check = NoiseCheck(before, measure_speed())
    plain = timing_row("plain", times["plain"], timed, clients)
    bat = timing_row("batched", times["batched"], clients, clients)
    return {"case": case_name, "clients": clients, "method": "fedrolex", "max_clients_per_step": max_clients_per_step,
            "seconds_per_round": bat["best_s"], "median_seconds_per_round": bat["median_s"],
            "client_updates_per_s": bat["client_updates_per_s"], "plain_seconds_per_round": plain["best_s"],
            "plain_timed_clients": timed, "batched_vs_plain": plain["best_s"] / bat["best_s"],
            "setup_rss_mb": setup_rss, "peak_rss_mb": round_rss, "noise": check.as_dict(), "batched": bat,
            "plain": plain}


def merged(old: dict[str, Any], rows: list[dict[str, Any]],
           points: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The rows and points of an earlier result file, those measured again on the same vector ISA
    replaced (a row of another host's ISA stays: the compiled kernels differ)."""
    def key(r: dict[str, Any]) -> tuple[Any, ...]:
        return r["case"], r["clients"], r["method"], r.get("vector_isa")

    new_rows = {key(r) for r in rows}
    new_points = {point_key(p) for p in points}
    kept_rows = [r for r in old.get("rows", []) if key(r) not in new_rows]
    kept_points = [p for p in old.get("scaling", []) if point_key(p) not in new_points]
    return kept_rows + rows, sorted(kept_points + points, key=point_key)


def point_key(point: dict[str, Any]) -> tuple[str, int]:
    """A scaling point's case (points of older files are the MLP's) and clients per round."""
    return point.get("case", "mlp"), point["clients"]


def in_fresh_process(fn: Any, *args: Any) -> Any:
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"{'case':9} {'clients':>7} {'method':8} {'plain s':>8} {'ref s':>8} {'batched s':>9} {'vs plain':>8} "
          f"{'vs ref':>7} {'vs stack':>8} {'vs vmap':>7} {'train of peak':>13} {'drift':>6}")
    for r in rows:
        c = r["contenders"]

        def best(name: str, c: dict[str, Any] = c) -> str:
            return f"{c[name]['best_s']:.3f}" if name in c else "-"

        ratio = f"{r['batched_vs_plain']:.1f}x" if "batched_vs_plain" in r else "-"
        vs_ref = f"{r['batched_vs_reference']:.1f}x" if "batched_vs_reference" in r else "-"
        vs_vmap = f"{r['batched_vs_vmapped']:.1f}x" if "batched_vs_vmapped" in r else "-"
        vs_stack = f"{r['batched_vs_stacked']:.2f}x" if "batched_vs_stacked" in r else "-"
        peak = f"{100 * r['batched_train_of_peak']:.0f}%" if r.get("batched_train_of_peak") else "-"
        flag = " NOISY" if r["noise"]["noisy"] else ""
        print(f"{r['case']:9} {r['clients']:7d} {r['method']:8} {best('plain'):>8} {best('reference'):>8} "
              f"{best('batched'):>9} {ratio:>8} {vs_ref:>7} {vs_stack:>8} {vs_vmap:>7} {peak:>13} "
              f"{100 * r['noise']['drift']:5.0f}%{flag}")


def print_scaling(points: list[dict[str, Any]]) -> None:
    print(f"\n{'case':9} {'clients':>7} {'s/round':>8} {'updates/s':>9} {'plain s':>8} {'vs plain':>8} "
          f"{'peak RSS MB':>11} {'drift':>6}")
    for p in points:
        flag = " NOISY" if p["noise"]["noisy"] else ""
        print(f"{point_key(p)[0]:9} {p['clients']:7d} {p['seconds_per_round']:8.3f} {p['client_updates_per_s']:9.0f} "
              f"{p['plain_seconds_per_round']:8.2f} {p['batched_vs_plain']:7.1f}x {p['peak_rss_mb']:11.0f} "
              f"{100 * p['noise']['drift']:5.0f}%{flag}")


def markdown(result: dict[str, Any]) -> str:
    """The result file as the Markdown tables docs/batched_engine.md carries: quiet entries only
    (a noisy one is not a result), with a count of those left out."""
    def quiet(entries: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
        kept = [e for e in entries if e["noise"]["drift"] <= NOISE_TOLERANCE]
        left = len(entries) - len(kept)
        return kept, (f"\n\n{left} noisy entries (drift over {NOISE_TOLERANCE:.0%}) left out; they stay in the "
                      f"result file.") if left else ""

    rows, rows_left = quiet(result["rows"])
    lines = ["| case | clients | method | plain s | reference s | batched s | batched vs plain | vs reference "
             "| vs step-major | training, % of matmul peak | drift | host vector ISA |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        c, peak = r["contenders"], r.get("batched_train_of_peak")
        vs_stack = f"{r['batched_vs_stacked']:.2f}x" if "batched_vs_stacked" in r else "-"
        ref_s, vs_ref = ((f"{c['reference']['best_s']:.3f}", f"{r['batched_vs_reference']:.1f}x") if "reference" in c
                         else ("-", "-"))  # an entry run without the reference engine
        lines.append(f"| {r['case']} | {r['clients']} | {r['method']} | {c['plain']['best_s']:.3f} "
                     f"| {ref_s} | {c['batched']['best_s']:.3f} | "
                     f"**{r['batched_vs_plain']:.1f}x** | {vs_ref} | {vs_stack} | "
                     f"{'-' if peak is None else f'{100 * peak:.0f}%'} | {100 * r['noise']['drift']:.0f}% "
                     f"| {r.get('vector_isa', 'unrecorded')} |")
    text = "\n".join(lines) + rows_left
    points, points_left = quiet(result.get("scaling", []))
    for case in dict.fromkeys(point_key(p)[0] for p in points):  # one table per case, in file order
        lines = [f"Scaling curve, {case} case (fedrolex):", "",
                 "| clients per round | s per round | client-updates/s | plain loop s (scaled) | batched vs plain "
                 "| peak RSS MB | drift |", "|---:|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {p['clients']:,} | {p['seconds_per_round']:.3f} | {p['client_updates_per_s']:.0f} | "
                  f"{p['plain_seconds_per_round']:.2f} | **{p['batched_vs_plain']:.1f}x** | {p['peak_rss_mb']:.0f} | "
                  f"{100 * p['noise']['drift']:.0f}% |" for p in points if point_key(p)[0] == case]
        text += "\n\n" + "\n".join(lines)
    return text + points_left


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="write the results as JSON here (atomically)")
    ap.add_argument("--table", default=TABLE, help="case:clients entries, comma-separated ('' for none)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--contenders", default="plain,reference,batched,stacked",
                    help=f"of {', '.join(CONTENDERS)} (stacked: the batched engine without the client-major "
                    "kernel; vmapped: without the stacked forward)")
    ap.add_argument("--scaling", default=SCALING, help="clients per round of the scaling curve")
    ap.add_argument("--scaling-case", default="mlp", help="the case of the scaling curve")
    ap.add_argument("--no-scaling", action="store_true")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--max-timed", type=int, default=200, help="clients the plain loop and reference engine run")
    ap.add_argument("--max-clients-per-step", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="tiny models and client counts: checks the script runs")
    ap.add_argument("--merge", action="store_true",
                    help="keep the entries of an existing --out file that this run does not measure")
    ap.add_argument("--markdown", type=Path, metavar="RESULT_JSON",
                    help="print an existing result file as Markdown tables and exit (measures nothing)")
    args = ap.parse_args(argv)
    if args.markdown:
        result = json.loads(args.markdown.read_text())
        print(markdown(result))
        return result
    if args.quick:
        args.table, args.scaling, args.max_timed = "mlp:6,cnn:4,synthetic:6,preresnet:4", "4,12", 4
        args.repeats = min(args.repeats, 2)
    methods, contenders = args.methods.split(","), args.contenders.split(",")
    entries = [(e.split(":")[0], int(e.split(":")[1])) for e in args.table.split(",") if e]
    rows: list[dict[str, Any]] = []
    for case_name, clients in entries:
        rows += in_fresh_process(measure_entry, case_name, clients, methods, contenders, args.repeats,
                                 args.max_timed, args.threads, args.quick, args.max_clients_per_step)
        print_table(rows[-len(methods):])
    points = [] if args.no_scaling else [
        in_fresh_process(measure_scaling_point, args.scaling_case, int(n), args.repeats, args.max_timed, args.threads,
                         args.quick, args.max_clients_per_step) for n in args.scaling.split(",")]
    print("\n")
    print_table(rows)
    if points:
        print_scaling(points)
    command = "python bench/bench_engines.py " + " ".join(argv if argv is not None else sys.argv[1:])
    for r in [*rows, *points]:
        r.update(command=command, threads=args.threads, **host_cpu())
    if args.merge and args.out and args.out.exists():
        rows, points = merged(json.loads(args.out.read_text()), rows, points)
    noisy = any(r["noise"]["noisy"] for r in rows) or any(p["noise"]["noisy"] for p in points)
    print("\nNOISY: another load changed the machine's speed during the run; do not report these figures."
          if noisy else "\nquiet: peak and bandwidth stayed within 15% around every measurement.")
    result = {"noisy": noisy, "machine": platform.processor() or platform.machine(),
              "torch": torch.__version__, "python": sys.version.split()[0], "quick": args.quick,
              "repeats": args.repeats, "max_timed": args.max_timed, "rows": rows, "scaling": points}
    if args.out:
        atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
