"""Node-level circuits (``level="node"``): exact and first-order node scores, the cut over nodes, the file format.

The slow path everywhere: a node is removed by clearing its row of the (S, R) mask by hand (every outgoing edge
ablated) and running the plain patched forward (:func:`tests.toy_problems.loss_at`).
"""

from __future__ import annotations

import math

import pytest
import torch

import circuitfind as cf
from circuitfind.algorithms import EapOptions, ExactOptions, run_eap, run_exact
from circuitfind.algorithms.units import node_cut
from circuitfind.errors import ConfigError
from circuitfind.graph import Graph
from circuitfind.selection.cuts import prune_dangling
from tests.toy_problems import NAMES, PMS, logit_diff_faithfulness, loss_at, natural_task, problem_of

TASKS = {name: natural_task(PMS[name]) for name in NAMES}


def _removed(graph, nodes) -> torch.Tensor:
    """The full mask with the rows of ``nodes`` cleared by hand."""
    mask = graph.full_mask()
    for s in nodes:
        mask[s, :] = False
    return mask


@pytest.mark.parametrize("name", NAMES)
def test_exact_node_scores_equal_removing_each_nodes_outgoing_edges(name):
    problem = problem_of(name, task=TASKS[name])
    g = problem.pm.graph
    full = float(loss_at(problem, g.full_mask()))
    want = torch.tensor(
        [float(loss_at(problem, _removed(g, [s]))) - full for s in range(g.n_senders)], dtype=torch.float64
    )
    got = run_exact(problem, ExactOptions(level="node")).node_scores
    assert got.shape == (g.n_senders,) and want.abs().min() > 1e-6  # every node matters: no trivial zero
    assert torch.allclose(got, want.double(), atol=1e-9, rtol=0)
    batched = run_exact(problem, ExactOptions(level="node", batch_size=3))
    assert torch.allclose(batched.node_scores, want.double(), atol=1e-9, rtol=0)
    assert bool(batched.scores[g.edge_mask].isnan().all())  # no edge was scored


@pytest.mark.parametrize("name", NAMES)
def test_eap_node_score_is_the_gradient_of_a_gate_on_the_nodes_output(name):
    problem = problem_of(name, task=TASKS[name])
    g = problem.pm.graph
    gate = torch.ones(g.n_senders, dtype=torch.float64, requires_grad=True)
    loss = loss_at(problem, g.full_mask().double() * gate[:, None])  # the gate scales every outgoing edge
    (grad,) = torch.autograd.grad(loss, gate)
    result = run_eap(problem, EapOptions(level="node"))
    assert torch.allclose(result.node_scores, -grad, atol=1e-9, rtol=0)
    assert (-grad).abs().max() > 1e-3
    # and a finite difference of the gate: closing it a little changes the loss by eps times the node score
    eps, s = 1e-6, int(result.node_scores.abs().argmax())
    closed = torch.ones(g.n_senders, dtype=torch.float64)
    closed[s] = 1 - eps
    with torch.no_grad():
        delta = float(loss_at(problem, g.full_mask().double() * closed[:, None]) - loss)
    assert delta / eps == pytest.approx(float(result.node_scores[s]), rel=1e-4)


@pytest.mark.parametrize("name", NAMES[:1])
def test_discover_node_level_cuts_the_top_nodes_and_removes_the_rest_as_units(name):
    pm, task = PMS[name], TASKS[name]
    g = pm.graph
    circuit = cf.discover(pm, task, method="exact", level="node", n_nodes=4, metric="logit_diff", progress=False)
    problem = problem_of(name, task=task)
    full = float(loss_at(problem, g.full_mask()))
    by_hand = torch.tensor(
        [float(loss_at(problem, _removed(g, [s]))) - full for s in range(g.n_senders)], dtype=torch.float64
    )
    top = torch.argsort(by_hand, descending=True)[:4].tolist()
    assert circuit.level == "node" and circuit.config["level"] == "node" and circuit.config["n_nodes"] == 4
    assert torch.allclose(circuit.node_scores.double(), by_hand.double(), atol=1e-5)
    assert set(circuit.node_mask.nonzero().flatten().tolist()) <= set(top)
    # the circuit's edges behave exactly as removing every other node from the full model
    removed = [s for s in range(g.n_senders) if s not in top]
    f_nodes = logit_diff_faithfulness(pm, task, _removed(g, removed))
    assert logit_diff_faithfulness(pm, task, circuit.mask) == pytest.approx(f_nodes, abs=1e-9)
    assert circuit.recovered == pytest.approx(f_nodes, abs=1e-6)
    # it holds the induced edges (both ends kept), pruned
    kept = torch.zeros(g.n_senders, dtype=torch.bool)
    kept[top] = True
    on = torch.cat([kept, torch.ones(1, dtype=torch.bool)])
    induced = kept[:, None] & on[g.receiver_nodes][None, :] & g.edge_mask
    assert torch.equal(circuit.mask, prune_dangling(g, induced))
    assert bool(circuit.scores[g.edge_mask].isnan().all())  # exact node scores: no edge scored


@pytest.mark.parametrize("name", NAMES[:1])
def test_node_target_cut_is_the_smallest_faithful_top_k(name):
    pm, task = PMS[name], TASKS[name]
    g = pm.graph
    circuit = cf.discover(pm, task, method="eap", level="node", target=0.6, metric="logit_diff", progress=False)
    k, probes = circuit.stats["k"], circuit.stats["probes"]
    assert circuit.stats["reached"] and logit_diff_faithfulness(pm, task, circuit.mask) >= 0.6
    order = torch.argsort(circuit.node_scores.double(), descending=True, stable=True)

    def f_of(n: int) -> float:
        return logit_diff_faithfulness(pm, task, _removed(g, order[n:].tolist()))

    assert f_of(k) >= 0.6 and k > 1 and f_of(k - 1) < 0.6
    assert [p for p in probes if p["k"] == k - 1][0]["faithfulness"] == pytest.approx(f_of(k - 1), abs=1e-6)
    # first order: the node scores are the sums of the edge scores the circuit also holds
    assert torch.allclose(circuit.node_scores, circuit.scores.nan_to_num().sum(1), atol=1e-4)


def test_node_circuit_file_round_trip_and_exports(tmp_path):
    pm, task = PMS[NAMES[0]], TASKS[NAMES[0]]
    circuit = cf.discover(pm, task, method="exact", level="node", n_nodes=5, metric="logit_diff", progress=False)
    back = cf.Circuit.load(circuit.save(tmp_path / "c.json"))
    assert back.level == "node" and torch.equal(back.node_mask, circuit.node_mask)
    assert torch.equal(back.mask, circuit.mask)
    assert torch.allclose(back.node_scores, circuit.node_scores)
    data = circuit.to_dict()
    kept = [n for n, e in data["nodes"].items() if e["in_graph"]]
    assert kept == [*(n for n, k in zip(pm.graph.sender_names, circuit.node_mask.tolist(), strict=True) if k), "logits"]
    # a file with nodes but no edges (EAP-IG's node level) is the same circuit
    no_edges = cf.Circuit.from_dict({"cfg": data["cfg"], "nodes": data["nodes"]})
    assert no_edges.level == "node" and torch.equal(prune_dangling(pm.graph, no_edges.mask), circuit.mask)
    assert "->" in circuit.to_dot() and circuit.to_networkx().number_of_edges() == circuit.n_edges
    assert f"{circuit.n_nodes} of {pm.graph.n_senders} nodes" in circuit.summary()
    assert math.isfinite(cf.evaluate.faithfulness(pm, circuit, task, metric="logit_diff")["faithfulness"])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"method": "acdc", "level": "node"}, "scoring method"),
        ({"method": "eap", "level": "node", "n_edges": 3}, "n_nodes"),
        ({"method": "eap", "n_nodes": 3}, "level='node'"),
        ({"method": "eap", "level": "nodes"}, "level must be one of"),
        ({"method": "eap", "level": "node", "n_nodes": 0}, "n_nodes must be"),
        ({"method": "eap", "level": "node", "n_nodes": 2, "target": 0.5}, "one of"),
    ],
)
def test_bad_node_options_are_refused(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        cf.discover(PMS[NAMES[0]], TASKS[NAMES[0]], metric="logit_diff", progress=False, **kwargs)


def test_a_target_cut_without_a_faithfulness_function_is_a_config_error():
    # it used to call None and fail as "'NoneType' object is not callable"
    g = Graph(1, 1)
    with pytest.raises(ConfigError, match="needs a faithfulness function"):
        node_cut(g, torch.tensor([3.0, 1.0, 2.0]), None, target=0.5)
