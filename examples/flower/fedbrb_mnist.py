"""FedBRB (or FedRolex / HeteroFL) on the 5,000 MNIST digits with 20 Flower SuperNodes in Flower's
simulation engine: every node holds a width-1/8 sub-model of a 784-[256,256]-10 MLP.

    python examples/flower/fedbrb_mnist.py [--method fedbrb] [--rounds 30] [--nodes 20] [--out runs/flower]

Writes results.json (per-round global accuracy and the strategy's reply counts) and accuracy.png.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation
from tqdm.auto import tqdm

from fedbrb_fast.config import load_config
from fedbrb_fast.engines import build_federated_data
from fedbrb_fast.integrations.flower import client_app_from_config, global_evaluate_fn, strategy_from_config
from fedbrb_fast.models import build_model, initial_params
from fedbrb_fast.outputs import atomic_write_text, plot_accuracy


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", choices=["fedbrb", "fedrolex", "heterofl"], default="fedbrb")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--nodes", type=int, default=20, help="SuperNodes, one data partition each")
    p.add_argument("--per-round", type=int, default=10, help="nodes that train each round")
    p.add_argument("--width", default="1/8", help="every node's width: 1/4, 1/8 or 1/16")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/flower")
    return p.parse_args(argv)


MNIST_SCENARIO = ("data.dataset='mnist5k'", "data.partition='shards'", "data.shards_per_client=2",
                  "model.norm='bn'", "train.lr=0.02", "train.lr_schedule='constant'", "train.lr_milestones=[]",
                  "eval.every=1")


def experiment_config(args: argparse.Namespace):
    """MNIST-5k, 2 label shards per client, a static-BN MLP, on the embedded default config,
    sized to the simulated nodes; validated before anything starts. `fedbrb-fast run` on this
    config computes the same rounds."""
    return load_config(None, [*MNIST_SCENARIO, f"clients.num_clients={args.nodes}",
                              f"clients.per_round={args.per_round}", f'clients.widths=["{args.width}"]',
                              f'method.name="{args.method}"', f"seed={args.seed}", f"rounds={args.rounds}"])


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    cfg = experiment_config(args)
    data = build_federated_data(cfg)
    model = build_model(cfg, data.input_shape, data.num_classes)
    client_app = client_app_from_config(cfg, model)  # node partition-id k is client k
    strategy = strategy_from_config(cfg, model)  # the simulation's sampling, plans and schedules
    history: list[Mapping[str, Any]] = []
    server_app = ServerApp()

    @server_app.main()
    def server(grid: Grid, context: Context) -> None:
        evaluate_global = global_evaluate_fn(model, data.x_test, data.y_test, cfg.eval.batch_size)
        with tqdm(total=args.rounds, desc=f"flower {args.method}", unit="round") as bar:
            def evaluate_and_record(server_round: int, arrays: ArrayRecord):
                metrics = evaluate_global(server_round, arrays)
                report = strategy.reports.get(server_round)
                history.append({"round": server_round, "accuracy": metrics["accuracy"], "loss": metrics["loss"],
                                **(report.metrics() if report else {})})
                if server_round:
                    bar.update(1)
                    bar.set_postfix(acc=f"{100 * metrics['accuracy']:.1f}%")
                return metrics

            strategy.start(grid=grid, initial_arrays=ArrayRecord(initial_params(cfg, model)),
                           num_rounds=args.rounds, evaluate_fn=evaluate_and_record)

    logging.getLogger("flwr").setLevel(logging.WARNING)
    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=args.nodes,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"include_dashboard": False, "log_to_driver": False}})
    if len(history) != args.rounds + 1:
        raise SystemExit(f"the simulation stopped after {max(len(history) - 1, 0)} of {args.rounds} rounds")
    out = Path(args.out)
    result = {"method": args.method, "nodes": args.nodes, "width": args.width, "rounds": args.rounds,
              "final_accuracy": history[-1]["accuracy"], "history": history}
    atomic_write_text(out / "results.json", json.dumps(result, indent=2) + "\n")
    plot_accuracy({f"{args.method} (Flower)": history}, out / "accuracy.png",
                  title=f"Flower simulation: {args.nodes} nodes, width {args.width}, MNIST-5k")
    print(f"\n{'round':>5}  {'accuracy':>8}  {'updates':>7}  {'failed':>6}")
    rows = history[:: max(1, args.rounds // 10)]
    for row in rows + ([history[-1]] if rows[-1] is not history[-1] else []):
        print(f"{row['round']:>5}  {100 * row['accuracy']:>7.1f}%  {row.get('replies-ok', '—'):>7}  "
              f"{row.get('replies-failed', '—'):>6}")
    print(f"\nfinal accuracy {100 * result['final_accuracy']:.1f}%  ->  {out / 'results.json'}, {out / 'accuracy.png'}")
    return result


if __name__ == "__main__":
    main()
