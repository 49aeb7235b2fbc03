"""A Flower ClientApp that trains (or evaluates) the sub-model it receives with the project's
reference local training, so a Flower node computes exactly what a simulated client computes."""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import Tensor

from ...models import ModelFamily
from ...seeding import STREAM_TRAIN, torch_generator
from ...training import LocalTraining, evaluate, train_client
from .node_numbering import client_id_reply
from .records import PlanRecord, array_record, config_int, decode_arrays, single_record, training_from_config

DataFn = Callable[[Context], tuple[Tensor, Tensor]]


def make_client_app(model: ModelFamily, load_data: DataFn, *, local: LocalTraining,
                    load_eval_data: DataFn | None = None, seed: int = 0, eval_batch_size: int = 1000,
                    arrayrecord_key: str = "arrays", configrecord_key: str = "config") -> ClientApp:
    """`model`: the global architecture (the same one the strategy's layout comes from).
    `load_data(context) -> (x, y)`: the node's training data. `local`: default hyper-parameters;
    the round's ConfigRecord may override them with "lr", "local-epochs", "batch-size",
    "momentum", "weight-decay". The data order is seeded by (seed, round, partition-id)."""
    app = ClientApp()

    def received(msg: Message) -> tuple[ConfigRecord, PlanRecord, dict[str, Tensor]]:
        config = single_record(msg.content.config_records, configrecord_key, "ConfigRecord")
        plan = PlanRecord.from_config(config)
        segments = tuple(model.layout.group_segments) or (1,) * len(model.layout.group_sizes)
        if plan.group_sizes != tuple(model.layout.group_sizes) or plan.segments != segments:
            raise ValueError(f"plan for channel groups {plan.group_sizes} of {plan.segments} segments, this model has "
                             f"{model.layout.group_sizes} of {segments}")
        record = single_record(msg.content.array_records, arrayrecord_key, "ArrayRecord")
        indices = plan.indices()
        params = decode_arrays(record, {s.name: model.layout.sub_shape(s, indices) for s in model.layout.params})
        return config, plan, params

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        config, plan, params = received(msg)
        hp = training_from_config(config, local)
        x, y = load_data(context)
        server_round = config_int(config, "server-round", 1)
        partition = int(context.node_config.get("partition-id", 0))
        result = train_client(model, params, x, y, beta=plan.width, hp=hp,
                              generator=torch_generator(seed, STREAM_TRAIN, server_round - 1, partition))
        metrics = MetricRecord({"num-examples": len(y), "train-loss": result.mean_loss})
        return Message(RecordDict({arrayrecord_key: array_record(result.params), "metrics": metrics}), reply_to=msg)

    @app.query("client_id")
    def client_id(msg: Message, context: Context) -> Message:
        """The node's client number for strategies with client_ids="reported": its partition-id."""
        return client_id_reply(msg, int(context.node_config["partition-id"]))

    @app.evaluate()
    def evaluate_sub_model(msg: Message, context: Context) -> Message:
        _, _, params = received(msg)
        x, y = (load_eval_data or load_data)(context)
        accuracy, loss = evaluate(model, params, x, y, eval_batch_size)
        metrics = MetricRecord({"num-examples": len(y), "eval-acc": accuracy, "eval-loss": loss})
        return Message(RecordDict({"metrics": metrics}), reply_to=msg)

    return app
