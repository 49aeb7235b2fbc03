"""The Flower integration on a layout with a segmented channel group (tests/segmented_family.py;
docs/algorithm.md#segments): plans travel as one window per group and its segments, nodes rebuild
the expanded index sets, and a whole run equals the project's own rounds."""

import pytest
import torch
from flower_grid import InProcessGrid, task_identity
from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict
from segmented_family import HEAD_DIM, HEADS, SegmentedNet
from test_flower_strategy import (
    NODES,
    STRATEGIES,
    NodesGrid,
    assert_params_close,
    mixed_width,
    project_aggregation,
    trained_reply,
)

from fedbrb_fast.aggregation import ClientUpdate, aggregate, rule_for_method
from fedbrb_fast.integrations.flower import PlanRecord, make_client_app
from fedbrb_fast.models import extract
from fedbrb_fast.plans import ClientPlan, make_round_plans, sample_clients, shear_coefficients
from fedbrb_fast.seeding import STREAM_TRAIN, torch_generator
from fedbrb_fast.training import LocalTraining, train_client

pytestmark = pytest.mark.usefixtures(task_identity.__name__)

MODEL = SegmentedNet(6, 5)
LAYOUT = MODEL.layout
LOCAL = LocalTraining(epochs=1, batch_size=4, lr=0.05, momentum=0.9, weight_decay=5e-4)


@pytest.fixture
def global_params():
    return MODEL.init(torch.Generator().manual_seed(0))


def strategy(method, **kwargs):
    kwargs = {"width": mixed_width, "num_blocks": 4, "fraction_train": 0.75, **kwargs}
    return STRATEGIES[method](LAYOUT, **kwargs)


@pytest.mark.parametrize("method", sorted(STRATEGIES))
def test_nodes_get_plans_with_segments_and_the_sub_models_they_describe(method, global_params):
    s = strategy(method)
    messages = list(s.configure_train(3, ArrayRecord(global_params), ConfigRecord(), NodesGrid(NODES)))
    nodes = sorted(NODES)
    chosen = [nodes[i] for i in sample_clients(2, len(nodes), 6, seed=0)]
    plans = make_round_plans(method, 2, [nodes.index(n) for n in chosen], [mixed_width(n) for n in chosen],
                             group_sizes=LAYOUT.group_sizes, num_blocks=4, seed=0, shear=shear_coefficients(LAYOUT),
                             group_segments=LAYOUT.group_segments)
    for msg, plan in zip(messages, plans, strict=True):
        config = msg.content["config"]
        assert config["plan-segments"] == [1, HEADS, 1]
        record = PlanRecord.from_config(config)
        assert record.sizes[1] == len(plan.indices[1]) // HEADS  # one window per segment of d channels
        assert all(torch.equal(a, b) for a, b in zip(record.indices(), plan.indices, strict=True))
        sent = msg.content["arrays"].to_torch_state_dict()
        expected = extract(global_params, LAYOUT, plan.indices)
        assert all(torch.equal(sent[k], expected[k]) for k in expected)


@pytest.mark.parametrize("method", sorted(STRATEGIES))
@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_aggregate_train_equals_the_reference_on_segments(method, backend, global_params):
    s = strategy(method, aggregation_backend=backend)
    messages = list(s.configure_train(1, ArrayRecord(global_params), ConfigRecord(), NodesGrid(NODES)))
    replies = [trained_reply(m, seed) for seed, m in enumerate(messages)]
    arrays, metrics = s.aggregate_train(1, replies)
    assert_params_close(arrays, project_aggregation(s, method, global_params, messages, replies))
    assert metrics["replies-ok"] == len(replies)


def node_data(partition: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + partition)
    return torch.randn(10, 6, generator=g), torch.randint(0, 5, (10,), generator=g)


def load_data(context: Context) -> tuple[torch.Tensor, torch.Tensor]:
    return node_data(int(context.node_config["partition-id"]))


def test_a_node_trains_its_segmented_sub_model_as_the_reference_does(global_params):
    s = strategy("fedbrb")
    message = list(s.configure_train(1, ArrayRecord(global_params), ConfigRecord(), NodesGrid(NODES)))[1]
    partition = sorted(NODES).index(message.metadata.dst_node_id)
    context = Context(run_id=1, node_id=message.metadata.dst_node_id, node_config={"partition-id": partition},
                      state=RecordDict(), run_config={})
    reply = make_client_app(MODEL, load_data, local=LOCAL)(message, context)
    plan = PlanRecord.from_config(message.content["config"])
    x, y = node_data(partition)
    expected = train_client(MODEL, extract(global_params, LAYOUT, plan.indices()), x, y, beta=plan.width, hp=LOCAL,
                            generator=torch_generator(0, STREAM_TRAIN, 0, partition))
    got = reply.content.array_records["arrays"].to_torch_state_dict()
    assert got["q.weight"].shape[0] == HEADS * plan.sizes[1]  # every head, each with its window of channels
    assert all(torch.equal(got[k], expected.params[k]) for k in expected.params)


@pytest.mark.slow  # over 1 s: two rounds of six nodes' training per method
@pytest.mark.parametrize("method", sorted(STRATEGIES))
def test_a_flower_run_equals_the_projects_rounds(method, global_params):
    """Strategy plus ClientApp over two rounds against plans, local training and the reference
    aggregation run by hand (client = partition = sorted node position)."""
    nodes = sorted(NODES)
    s = strategy(method)
    grid = InProcessGrid(make_client_app(MODEL, load_data, local=LOCAL), {n: i for i, n in enumerate(nodes)})
    result = s.start(grid=grid, initial_arrays=ArrayRecord(global_params), num_rounds=2)

    params = global_params
    for t in range(2):
        clients = sample_clients(t, len(nodes), 6, seed=0)
        plans = make_round_plans(method, t, clients, [mixed_width(nodes[c]) for c in clients],
                                 group_sizes=LAYOUT.group_sizes, num_blocks=4, seed=0,
                                 shear=shear_coefficients(LAYOUT), group_segments=LAYOUT.group_segments)
        updates = []
        for plan in plans:
            x, y = node_data(plan.client)
            trained = train_client(MODEL, extract(params, LAYOUT, plan.indices), x, y, beta=plan.width, hp=LOCAL,
                                   generator=torch_generator(0, STREAM_TRAIN, t, plan.client))
            updates.append(ClientUpdate(plan.client, float(len(y)), plan.indices, trained.params))
        params = aggregate(params, LAYOUT, updates, rule_for_method(method, 0.5, 4)).params
    assert_params_close(result.arrays, params)


def test_a_node_refuses_a_plan_for_other_segments(global_params):
    message = next(iter(strategy("fedbrb").configure_train(1, ArrayRecord(global_params), ConfigRecord(),
                                                           NodesGrid(NODES))))
    unsegmented = SegmentedNet(6, 5, heads=1, head_dim=HEADS * HEAD_DIM)  # the same group sizes, one segment
    assert unsegmented.layout.group_sizes == LAYOUT.group_sizes
    context = Context(run_id=1, node_id=1, node_config={"partition-id": 0}, state=RecordDict(), run_config={})
    with pytest.raises(ValueError, match=r"plan for channel groups \(16, 32, 24\) of \(1, 4, 1\) segments, this "
                                         r"model has \(16, 32, 24\) of \(1, 1, 1\)"):
        make_client_app(unsegmented, load_data, local=LOCAL)(message, context)


# -- the plan record ------------------------------------------------------------------------------
def test_plan_records_round_trip_and_default_to_one_segment():
    plan = make_round_plans("fedrolex", 5, [0], [0.5], group_sizes=LAYOUT.group_sizes, num_blocks=4, seed=0,
                            group_segments=LAYOUT.group_segments)[0]
    record = PlanRecord.of("fedrolex", plan, LAYOUT.group_sizes, LAYOUT.group_segments)
    assert record.starts == (5, 5, 5) and record.sizes == (8, 4, 12) and record.segments == (1, HEADS, 1)
    again = PlanRecord.from_config(record.to_config())
    assert again == record and all(torch.equal(a, b) for a, b in zip(again.indices(), plan.indices, strict=True))
    old = {k: v for k, v in record.to_config().items() if k != "plan-segments"}  # a sender before segments
    assert PlanRecord.from_config({**old, "plan-starts": [5, 5, 5], "plan-sizes": [8, 16, 12]}).segments == (1, 1, 1)


@pytest.mark.parametrize("change,match", [
    ({"plan-segments": [1, 4]}, "differ in length"),
    ({"plan-segments": [1, 5, 1]}, r"plan-segments \[1, 5, 1\] do not split channel groups \[16, 32, 24\]"),
    ({"plan-segments": [1, 0, 1]}, "do not split"),
    ({"plan-starts": [0, 8, 0]}, r"plan out of range: .* of \[16, 8, 24\]"),  # a start outside the segment
    ({"plan-sizes": [8, 9, 12]}, "plan out of range"),
])
def test_plan_records_with_bad_segments_are_refused(change, match):
    good = {"plan-method": "heterofl", "plan-width": 0.5, "plan-starts": [0, 0, 0], "plan-sizes": [8, 4, 12],
            "plan-group-sizes": [16, 32, 24], "plan-segments": [1, 4, 1]}
    with pytest.raises(ValueError, match=match):
        PlanRecord.from_config({**good, **change})


def test_a_plan_that_differs_between_segments_is_not_sent_as_a_window():
    head = torch.tensor([0, 1, 8, 9, 16, 17, 26, 27])  # the last head takes other channels
    plan = ClientPlan(0, 0.25, (torch.arange(4), head, torch.arange(6)))
    with pytest.raises(ValueError, match="not a window"):
        PlanRecord.of("heterofl", plan, LAYOUT.group_sizes, LAYOUT.group_segments)
