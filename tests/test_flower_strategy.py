"""The Flower strategies on constructed Messages (no Ray): what they send, and that their
aggregation equals the project's own on the same updates, with bad replies counted and skipped."""

import math
from collections.abc import Iterable

import numpy as np
import pytest
import torch
from flower_grid import task_identity
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedbrb_fast.aggregation import ClientUpdate, aggregate, rule_for_method
from fedbrb_fast.integrations.flower import FedBRB, FedRolex, HeteroFL, PlanRecord
from fedbrb_fast.integrations.flower.node_numbering import NodeNumbering
from fedbrb_fast.models import MLP, PreResNet, Transformer, extract
from fedbrb_fast.plans import make_round_plans, sample_clients, shear_coefficients

pytestmark = pytest.mark.usefixtures(task_identity.__name__)

STRATEGIES = {"fedbrb": FedBRB, "fedrolex": FedRolex, "heterofl": HeteroFL}
NODES = [901, 17, 4242, 73, 5, 3100, 64, 12]  # arbitrary ids; clients are numbered in sorted order


class NodesGrid(Grid):
    """A Grid that only lists its nodes: what sampling needs; it carries no messages."""

    def __init__(self, nodes: Iterable[int]) -> None:
        self.nodes = list(nodes)

    def get_node_ids(self) -> Iterable[int]:
        return self.nodes

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        raise AssertionError("a strategy with node-order numbering sent messages through the grid")

    def set_run(self, run: Run) -> None:  # pragma: no cover
        raise NotImplementedError

    @property
    def run(self) -> Run:  # pragma: no cover
        raise NotImplementedError

    def create_message(self, *args: object, **kwargs: object) -> Message:  # pragma: no cover
        raise NotImplementedError

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:  # pragma: no cover
        raise NotImplementedError

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:  # pragma: no cover
        raise NotImplementedError


MODELS = {"mlp": lambda: MLP(20, [16, 8], 5, norm="bn"), "preresnet18": lambda: PreResNet(2, [4, 8, 8, 4], 5),
          "transformer": lambda: Transformer(5, context=4, dim=16, heads=2, mlp=8, layers=1)}
ARCHS = ["mlp", pytest.param("preresnet18", marks=pytest.mark.slow),
         pytest.param("transformer", marks=pytest.mark.slow)]  # with `indirect=["model"]`


@pytest.fixture
def model(request):
    """The MLP, or the family a test names through indirect parametrization."""
    return MODELS[getattr(request, "param", "mlp")]()


@pytest.fixture
def global_params(model):
    return model.init(torch.Generator().manual_seed(0))


def mixed_width(node):
    return 0.5 if node % 2 else 0.25


def make_strategy(method, model, **kwargs):
    kwargs.setdefault("width", mixed_width)
    kwargs.setdefault("num_blocks", 4)
    kwargs.setdefault("fraction_train", 0.75)
    return STRATEGIES[method](model.layout, **kwargs)


def trained_reply(msg, seed, *, examples=None, tensors=None, error=None):
    """A reply as a ClientApp would send it: the received sub-model moved a little."""
    if error is not None:
        return Message(Error(code=1, reason=error), reply_to=msg)
    if tensors is None:
        gen = torch.Generator().manual_seed(seed)
        sub = msg.content["arrays"].to_torch_state_dict()
        tensors = {k: v + 0.1 * torch.randn(v.shape, generator=gen) for k, v in sub.items()}
    arrays = ArrayRecord({k: Array(np.asarray(v)) for k, v in tensors.items()})
    metrics = MetricRecord({"num-examples": examples if examples is not None else 10 + seed, "train-loss": 1.0 + seed})
    return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)


def project_aggregation(strategy, method, global_params, messages, replies, server_round=1, lam=0.5):
    """fedbrb_fast's reference aggregation of the same updates (client = sorted node position)."""
    order = {n: i for i, n in enumerate(sorted(NODES))}
    plans = {m.metadata.dst_node_id: PlanRecord.from_config(m.content["config"]).indices() for m in messages}
    updates = [ClientUpdate(client=order[r.metadata.src_node_id],
                            weight=float(r.content["metrics"]["num-examples"]),
                            indices=plans[r.metadata.src_node_id],
                            params=dict(r.content["arrays"].to_torch_state_dict())) for r in replies]
    rule = rule_for_method(method, lam, strategy.num_blocks)
    return aggregate(global_params, strategy.layout, updates, rule, backend="reference").params


def assert_params_close(record, expected):
    got = record.to_torch_state_dict()
    assert set(got) == set(expected)
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=1e-5, atol=1e-6, msg=k)


# -- what the server sends ------------------------------------------------------------------------
@pytest.mark.parametrize("model", ARCHS, indirect=True)
@pytest.mark.parametrize("method", sorted(STRATEGIES))
def test_configure_train_sends_each_node_its_sub_model_and_plan(method, model, global_params):
    strategy = make_strategy(method, model)
    messages = list(strategy.configure_train(3, ArrayRecord(global_params), ConfigRecord({"lr": 0.1}),
                                             NodesGrid(NODES)))
    nodes = sorted(NODES)
    chosen = [nodes[i] for i in sample_clients(2, len(nodes), 6, seed=0)]  # int(8 * 0.75) = 6
    assert [m.metadata.dst_node_id for m in messages] == chosen
    plans = make_round_plans(method, 2, [nodes.index(n) for n in chosen], [mixed_width(n) for n in chosen],
                             group_sizes=model.layout.group_sizes, num_blocks=4, seed=0,
                             shear=shear_coefficients(model.layout), group_segments=model.layout.group_segments)
    for msg, plan in zip(messages, plans, strict=True):
        assert msg.metadata.message_type == MessageType.TRAIN
        config = msg.content["config"]
        assert config["lr"] == 0.1 and config["server-round"] == 3
        record = PlanRecord.from_config(config)
        assert record.method == method and record.width == plan.width
        assert all(torch.equal(a, b) for a, b in zip(record.indices(), plan.indices, strict=True))
        expected = extract(global_params, model.layout, plan.indices)
        sent = msg.content["arrays"].to_torch_state_dict()
        assert set(sent) == set(expected)
        assert all(torch.equal(sent[k], expected[k]) for k in expected)


def test_sampling_honours_the_minimum_and_the_round(model, global_params):
    strategy = make_strategy("fedrolex", model, fraction_train=0.1, min_train_nodes=3)
    first = [m.metadata.dst_node_id for m in strategy.configure_train(1, ArrayRecord(global_params), ConfigRecord(),
                                                                      NodesGrid(NODES))]
    second = [m.metadata.dst_node_id for m in strategy.configure_train(2, ArrayRecord(global_params), ConfigRecord(),
                                                                       NodesGrid(NODES))]
    assert len(first) == len(second) == 3
    assert first != second  # a fresh draw per round


# -- aggregation equals the project's ---------------------------------------------------------------
@pytest.mark.parametrize("model", ARCHS, indirect=True)
@pytest.mark.parametrize("method", sorted(STRATEGIES))
@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_aggregate_train_equals_project_aggregation(method, backend, model, global_params):
    strategy = make_strategy(method, model, aggregation_backend=backend)
    messages = list(strategy.configure_train(1, ArrayRecord(global_params), ConfigRecord(), NodesGrid(NODES)))
    replies = [trained_reply(m, seed) for seed, m in enumerate(messages)]
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert_params_close(arrays, project_aggregation(strategy, method, global_params, messages, replies))
    assert metrics["replies-ok"] == len(replies) and metrics["replies-failed"] == 0
    weights = [10 + s for s in range(len(replies))]
    assert metrics["num-examples"] == sum(weights)
    assert math.isclose(metrics["train-loss"], sum(w * (1 + s) for s, w in enumerate(weights)) / sum(weights))
    assert strategy.reports[1].backend == backend


def test_fedbrb_lam_follows_the_round(model, global_params):
    strategy = make_strategy("fedbrb", model, lam=lambda r: 0.25 * r)
    for server_round in (1, 3):
        messages = list(strategy.configure_train(server_round, ArrayRecord(global_params), ConfigRecord(),
                                                 NodesGrid(NODES)))
        replies = [trained_reply(m, seed) for seed, m in enumerate(messages)]
        arrays, _ = strategy.aggregate_train(server_round, replies)
        assert_params_close(arrays, project_aggregation(strategy, "fedbrb", global_params, messages, replies,
                                                        server_round, lam=0.25 * server_round))


def test_uniform_weighting_ignores_the_reported_examples(model, global_params):
    strategy = make_strategy("heterofl", model, weighting="uniform")
    messages = list(strategy.configure_train(1, ArrayRecord(global_params), ConfigRecord(), NodesGrid(NODES)))
    replies = [trained_reply(m, seed, examples=1) for seed, m in enumerate(messages)]
    uneven = [trained_reply(m, seed, examples=1 + 50 * seed) for seed, m in enumerate(messages)]
    a, _ = strategy.aggregate_train(1, replies)
    strategy.configure_train(1, ArrayRecord(global_params), ConfigRecord(), NodesGrid(NODES))
    b, _ = strategy.aggregate_train(1, uneven)
    assert_params_close(b, a.to_torch_state_dict())


# -- bad replies are counted and skipped --------------------------------------------------------------
def bad_replies(messages):
    """One of each failure, on messages[1:]; messages[0] and the last two stay good."""
    m = messages
    sub = m[2].content["arrays"].to_torch_state_dict()
    missing = {k: v for k, v in sub.items() if k != "out.bias"}
    sub3 = m[3].content["arrays"].to_torch_state_dict()
    wrong_shape = {k: (v[:-1] if k == "hidden0.weight" else v) for k, v in sub3.items()}
    ints = {k: v.to(torch.int32) for k, v in m[4].content["arrays"].to_torch_state_dict().items()}
    return {
        "error": trained_reply(m[1], 1, error="out of memory"),
        "missing": trained_reply(m[2], 2, tensors=missing),
        "shape": trained_reply(m[3], 3, tensors=wrong_shape),
        "dtype": trained_reply(m[4], 4, tensors=ints),
        "weight": trained_reply(m[5], 5, examples=-3),
    }


def test_failed_and_malformed_replies_are_counted_and_never_averaged_in(model, global_params):
    strategy = make_strategy("fedbrb", model, fraction_train=1.0)
    messages = list(strategy.configure_train(1, ArrayRecord(global_params), ConfigRecord(), NodesGrid(NODES)))
    good = [trained_reply(m, seed) for seed, m in enumerate(messages) if seed in (0, 6)]
    bad = bad_replies(messages)
    nan = trained_reply(messages[7], 7)
    nan.content["arrays"]["hidden1.bias"] = Array(np.full(nan.content["arrays"]["hidden1.bias"].shape, np.nan,
                                                          dtype=np.float32))
    to_stranger = Message(content=messages[0].content, message_type=MessageType.TRAIN, dst_node_id=123456)
    stranger = trained_reply(to_stranger, 9)  # a node that was never sampled
    arrays, metrics = strategy.aggregate_train(1, [good[0], *bad.values(), good[1], nan, stranger])
    assert_params_close(arrays, project_aggregation(strategy, "fedbrb", global_params, messages, good))
    assert (metrics["replies-ok"], metrics["replies-failed"], metrics["replies-malformed"],
            metrics["updates-non-finite"]) == (2, 1, 5, 1)
    report = strategy.reports[1]
    reasons = " | ".join(report.malformed.values())
    for expected in ("missing ['out.bias']", "hidden0.weight", "int32", "positive finite", "not sampled"):
        assert expected in reasons
    assert "out of memory" in report.failed[messages[1].metadata.dst_node_id]
    assert "hidden1.bias" in report.non_finite[messages[7].metadata.dst_node_id]


def test_duplicate_replies_and_silent_nodes(model, global_params):
    strategy = make_strategy("fedrolex", model, fraction_train=1.0)
    messages = list(strategy.configure_train(1, ArrayRecord(global_params), ConfigRecord(), NodesGrid(NODES)))
    good = [trained_reply(m, seed) for seed, m in enumerate(messages[:4])]
    twice = trained_reply(messages[4], 40)
    failed_then_ok = [trained_reply(messages[5], 50, error="lost"), trained_reply(messages[5], 51)]
    arrays, metrics = strategy.aggregate_train(1, [*good, twice, trained_reply(messages[4], 41), *failed_then_ok])
    assert_params_close(arrays, project_aggregation(strategy, "fedrolex", global_params, messages, good))
    report = strategy.reports[1]
    for m in messages[4:6]:  # each node lands in exactly one outcome
        assert "more than one reply" in report.malformed[m.metadata.dst_node_id]
    assert {n: r for n, r in report.failed.items()} == {m.metadata.dst_node_id: "no reply" for m in messages[6:]}
    assert metrics["replies-ok"] == 4


def test_a_round_without_usable_updates_keeps_the_model(model, global_params):
    strategy = make_strategy("heterofl", model)
    messages = list(strategy.configure_train(1, ArrayRecord(global_params), ConfigRecord(), NodesGrid(NODES)))
    arrays, metrics = strategy.aggregate_train(1, [trained_reply(m, 0, error="crash") for m in messages])
    assert arrays is None  # Strategy.start keeps the current global model
    assert metrics["replies-ok"] == 0 and metrics["replies-failed"] == len(messages)


# -- evaluation -----------------------------------------------------------------------------------
def test_evaluation_is_off_by_default_and_sends_sub_models_when_asked(model, global_params):
    assert list(make_strategy("fedbrb", model).configure_evaluate(1, ArrayRecord(global_params), ConfigRecord(),
                                                                  NodesGrid(NODES))) == []
    strategy = make_strategy("fedbrb", model, fraction_evaluate=0.5)
    messages = list(strategy.configure_evaluate(1, ArrayRecord(global_params), ConfigRecord(), NodesGrid(NODES)))
    assert len(messages) == 4 and all(m.metadata.message_type == MessageType.EVALUATE for m in messages)
    replies = [Message(RecordDict({"metrics": MetricRecord({"num-examples": n, "eval-acc": acc})}), reply_to=m)
               for m, n, acc in zip(messages, (10, 30, 20, 5), (0.5, 0.7, 0.9, 0.1), strict=True)]
    replies[3] = Message(Error(code=1, reason="lost"), reply_to=messages[3])
    metrics = strategy.aggregate_evaluate(1, replies)
    assert metrics["eval-acc"] == pytest.approx((10 * 0.5 + 30 * 0.7 + 20 * 0.9) / 60)
    assert (metrics["replies-ok"], metrics["replies-failed"]) == (3, 1)


# -- construction errors ----------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    ({"width": 0.3, "num_blocks": 4}, "multiple of 1/K"),
    ({"width": mixed_width, "num_blocks": None}, "num_blocks is needed"),
    ({"fraction_train": 1.5}, "fraction_train"),
    ({"aggregation_backend": "reference"}, "aggregation_backend"),
    ({"weighting": "bytes"}, "weighting"),
    ({"width": [0.25, 0.7], "num_blocks": 4}, "width[1]"),
])
def test_bad_strategy_arguments_fail_at_construction(model, kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        make_strategy("fedrolex", model, **kwargs)


def test_fedbrb_needs_groups_that_split_into_blocks():
    with pytest.raises(ValueError, match="do not split into K = 3 blocks"):
        FedBRB(MLP(20, [16, 8], 5).layout, width=1 / 3, num_blocks=3)


def test_a_global_model_that_does_not_fit_the_layout_is_refused(model, global_params):
    wrong = dict(global_params, **{"out.bias": torch.zeros(7)})
    with pytest.raises(ValueError, match="does not match the strategy's layout"):
        make_strategy("fedbrb", model).configure_train(1, ArrayRecord(wrong), ConfigRecord(), NodesGrid(NODES))


def test_per_client_widths_must_cover_every_node(model, global_params):
    strategy = make_strategy("heterofl", model, width=[0.25, 0.5], fraction_train=1.0)
    with pytest.raises(ValueError, match="only 2 widths were given"):
        strategy.configure_train(1, ArrayRecord(global_params), ConfigRecord(), NodesGrid(NODES))


def test_arrays_whose_bytes_contradict_their_metadata_are_refused(model, global_params):
    import io

    strategy = make_strategy("fedbrb", model, fraction_train=1.0)
    messages = list(strategy.configure_train(1, ArrayRecord(global_params), ConfigRecord(), NodesGrid(NODES)))

    def tampered(msg, seed, data_of):
        reply = trained_reply(msg, seed)
        arr = reply.content["arrays"]["hidden0.weight"]
        reply.content["arrays"]["hidden0.weight"] = Array(dtype=arr.dtype, shape=arr.shape, stype=arr.stype,
                                                          data=data_of(arr))
        return reply

    def npy(x):
        buf = io.BytesIO()
        np.save(buf, x, allow_pickle=False)
        return buf.getvalue()

    lies = [
        tampered(messages[1], 1, lambda a: npy(np.zeros(a.shape, dtype=np.int32))),       # says float32
        tampered(messages[2], 2, lambda a: npy(np.zeros((3, 3), dtype=np.float32))),      # says another shape
        tampered(messages[3], 3, lambda a: a.data[:-8]),                                   # truncated
        tampered(messages[4], 4, lambda a: b"not an npy file at all"),
    ]
    good = [trained_reply(messages[0], 0)]
    arrays, metrics = strategy.aggregate_train(1, good + lies)
    assert_params_close(arrays, project_aggregation(strategy, "fedbrb", global_params, messages, good))
    assert metrics["replies-malformed"] == 4
    assert all("hidden0.weight" in why for why in strategy.reports[1].malformed.values())


def test_a_round_whose_sums_overflow_keeps_the_model(model, global_params):
    strategy = make_strategy("fedbrb", model, fraction_train=1.0)
    messages = list(strategy.configure_train(1, ArrayRecord(global_params), ConfigRecord(), NodesGrid(NODES)))
    enormous = [trained_reply(m, s, tensors={k: torch.full(v.shape, 3e38) for k, v in
                                             m.content["arrays"].to_torch_state_dict().items()})
                for s, m in enumerate(messages)]
    arrays, metrics = strategy.aggregate_train(1, enormous)
    assert arrays is None and metrics["replies-ok"] == 0 and metrics["updates-non-finite"] == len(messages)
    assert all("overflowed" in why for why in strategy.reports[1].non_finite.values())


# -- hostile replies (Hypothesis) ---------------------------------------------------------------------
def hostile_reply(msg, draw, st):
    """A reply mangled in any of the ways a buggy or malicious node could."""
    sub = {k: v.clone() for k, v in msg.content["arrays"].to_torch_state_dict().items()}
    name = draw(st.sampled_from(sorted(sub)))
    kind = draw(st.sampled_from(["ok", "missing", "extra", "shape", "dtype", "value", "bytes", "error"]))
    if kind == "error":
        return Message(Error(code=1, reason="crashed"), reply_to=msg)
    if kind == "missing":
        sub.pop(name)
    elif kind == "extra":
        sub["intruder"] = torch.zeros(2)
    elif kind == "shape":
        sub[name] = torch.zeros(draw(st.integers(0, 3)), draw(st.integers(1, 3)))
    elif kind == "value":
        sub[name].view(-1)[0] = draw(st.sampled_from([math.nan, math.inf, -math.inf, 3e38, -1e30, 0.0]))
    arrays = ArrayRecord({k: Array(np.asarray(v)) for k, v in sub.items()})
    if kind == "dtype":
        arrays[name] = Array(np.asarray(sub[name]).astype(draw(st.sampled_from([np.int32, np.float16, np.float64]))))
    if kind == "bytes":
        a = arrays[name]
        arrays[name] = Array(dtype=a.dtype, shape=a.shape, stype=a.stype, data=draw(st.binary(max_size=64)))
    weight = draw(st.one_of(st.integers(-2, 1000), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                            st.just("many")))
    number = isinstance(weight, (int, float)) and not isinstance(weight, bool)  # what a MetricRecord holds
    metrics = MetricRecord({"num-examples": weight}) if number else ConfigRecord({"num-examples": weight})
    return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)


@pytest.mark.slow  # Hypothesis
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(data=st.data(), method=st.sampled_from(sorted(STRATEGIES)))
def test_hostile_replies_never_crash_the_server_nor_reach_the_model(model, global_params, data, method):
    strategy = make_strategy(method, model, fraction_train=1.0)
    messages = list(strategy.configure_train(1, ArrayRecord(global_params), ConfigRecord(), NodesGrid(NODES)))
    replies = [hostile_reply(m, data.draw, st) for m in messages if data.draw(st.booleans())]
    replies += [hostile_reply(m, data.draw, st) for m in messages[:data.draw(st.integers(0, 2))]]  # duplicates
    arrays, metrics = strategy.aggregate_train(1, data.draw(st.permutations(replies)))
    report = strategy.reports[1]
    sampled = {m.metadata.dst_node_id for m in messages}
    outcomes = [set(report.included), set(report.failed), set(report.malformed), set(report.non_finite)]
    assert set().union(*outcomes) == sampled  # every sampled node is accounted for, once
    assert sum(len(o) for o in outcomes) == len(sampled)
    if arrays is None:
        assert not report.included
    else:
        new = arrays.to_torch_state_dict()
        assert {k: tuple(v.shape) for k, v in new.items()} == {k: tuple(v.shape) for k, v in global_params.items()}
        assert all(torch.isfinite(v).all() for v in new.values())


# -- node numbering -------------------------------------------------------------------------------------
class ReportingGrid(NodesGrid):
    """Nodes answer the client-id query with the given values (an Exception: an error reply)."""

    def __init__(self, answers):
        super().__init__(answers)
        self.answers, self.queries = answers, 0

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for msg in messages:
            assert msg.metadata.message_type == "query.client_id"
            self.queries += 1
            value = self.answers[msg.metadata.dst_node_id]
            replies.append(Message(Error(code=1, reason="no"), reply_to=msg) if value is Exception else
                           Message(RecordDict({"metrics": MetricRecord({"client-id": value})}), reply_to=msg))
        return replies


def test_reported_client_ids_number_the_nodes_and_bad_reports_go_last():
    numbering = NodeNumbering("reported", query_timeout=5)
    grid = ReportingGrid({50: 1, 10: 0, 70: 3, 30: Exception, 20: 1, 40: -2, 60: 2.5})
    # 20 reported 1 before 50 did (replies in sorted node order); 30, 40, 60 gave nothing usable
    assert numbering.ordered(grid, grid.nodes) == [10, 20, 70, 30, 40, 50, 60]
    assert [numbering.index(n) for n in (10, 20, 70, 30, 40, 50, 60)] == [0, 1, 3, 4, 5, 6, 7]
    assert numbering.node(3) == 70
    grid.answers[80] = 2  # a late node takes its free number; known nodes are not asked again
    assert numbering.ordered(grid, [*grid.nodes, 80])[:4] == [10, 20, 80, 70] and grid.queries == 8


def test_node_order_numbering_asks_nothing():
    numbering = NodeNumbering("node-order", query_timeout=5)
    assert numbering.ordered(NodesGrid([]), [30, 10, 20]) == [10, 20, 30]
    assert numbering.ordered(NodesGrid([]), [5, 30]) == [30, 5]  # 5 came later
    with pytest.raises(ValueError, match="client_ids"):
        NodeNumbering("by-name", query_timeout=5)


def test_local_training_round_trips_through_the_config_record():
    from fedbrb_fast.integrations.flower.records import training_config, training_from_config
    from fedbrb_fast.training import LocalTraining

    sent = LocalTraining(3, 16, 0.07, 0.5, 1e-3, clip_norm=9.0)
    node_default = LocalTraining(1, 10, 0.01, 0.9, 5e-4, clip_norm=2.0)
    got = training_from_config(ConfigRecord(training_config(sent)), node_default)
    assert got == LocalTraining(3, 16, 0.07, 0.5, 1e-3, clip_norm=2.0)  # clipping stays the node's own
    assert training_from_config(ConfigRecord(), node_default) == node_default
