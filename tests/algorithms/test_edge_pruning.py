"""Edge pruning: the gated forward against the exact patched forward, the hard-concrete gate against its formula,
recovery of a tracr circuit under zero ablation, honest reported faithfulness, determinism and Ctrl-C."""

from __future__ import annotations

import math

import pytest
import torch

import circuitfind as cf
from circuitfind.algorithms import EdgePruningOptions, run_edge_pruning
from circuitfind.algorithms.edge_pruning import expected_open, sample_gates
from circuitfind.algorithms.gated_forward import gated_forward
from circuitfind.errors import ConfigError
from circuitfind.evaluate.circuits import faithfulness
from circuitfind.evaluate.scores import auc, roc_points
from circuitfind.problem import prepare_problem
from circuitfind.tasks.ground_truth import tracr_ground_truth
from circuitfind.tasks.tracr import tracr_setup
from tests.toy_problems import NAMES, loss_at, problem_of


def sparse_gates(graph, seed: int) -> torch.Tensor:
    """Random gates in (0, 1) on about half the edges, some exactly 1, two senders with every gate closed."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.rand(graph.n_senders, graph.n_receivers, generator=gen, dtype=torch.float64) * graph.edge_mask
    z[z < 0.5] = 0.0
    z[(z > 0.9)] = 1.0
    z[[graph.head_sender(1, 1), graph.mlp_sender(0)]] = 0.0
    return z


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("ablation", ["resample", "zero"])
def test_gated_forward_equals_the_patched_forward_in_value_and_gradient(name, ablation):
    p = problem_of(name, "logit_diff", ablation)
    g = p.pm.graph
    z = sparse_gates(g, 0).requires_grad_(True)
    ours = p.loss(p.pm.spec.logits(gated_forward(p, z), p.vocab).unsqueeze(0))[0]
    (grad,) = torch.autograd.grad(ours, z)
    ref_z = z.detach().clone().requires_grad_(True)
    ref = loss_at(p, ref_z)
    (ref_grad,) = torch.autograd.grad(ref, ref_z)
    assert float(ours.detach()) == pytest.approx(float(ref.detach()), rel=1e-10, abs=1e-12)
    open_ = z.detach() != 0
    assert float(ref_grad[open_].abs().max()) > 1e-3
    torch.testing.assert_close(grad[open_], ref_grad[open_], rtol=1e-8, atol=1e-12)
    # a closed gate gets the same gradient or 0 (its sender not computed): its hard-concrete clamp passes none anyway
    closed = grad[~open_]
    assert bool((torch.isclose(closed, ref_grad[~open_], rtol=1e-8, atol=1e-12) | (closed == 0)).all())
    assert not bool(grad[[g.head_sender(1, 1), g.mlp_sender(0)]].any())


def test_hard_concrete_gates_are_closed_with_the_stated_probability():
    logits = torch.tensor([-3.0, -1.0, 0.0, 1.5, 4.0], dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    z = torch.stack([sample_gates(logits, gen) for _ in range(20000)])  # (N, 5)
    assert float(z.min()) == 0.0 and float(z.max()) == 1.0
    open_rate = (z > 0).double().mean(0)
    # P(z > 0) = sigmoid(log_alpha - beta * log(-gamma / zeta)), written out with beta 2/3, gamma -0.1, zeta 1.1
    by_hand = 1 / (1 + torch.exp(-(logits - (2 / 3) * math.log(0.1 / 1.1))))
    torch.testing.assert_close(expected_open(logits), by_hand)
    torch.testing.assert_close(open_rate, by_hand, atol=0.012, rtol=0)
    # P(z = 1) = P(s > (1 - gamma) / (zeta - gamma)) = sigmoid(log_alpha - beta * logit(11 / 12))
    one = 1 / (1 + torch.exp(-(logits - (2 / 3) * math.log(11.0))))
    torch.testing.assert_close((z == 1).double().mean(0), one, atol=0.012, rtol=0)


@pytest.fixture(scope="module")
def proportion():
    setup = tracr_setup("proportion", n_sequences=16, seed=0)
    _, truth = tracr_ground_truth(setup.meta, "zero")
    return setup, setup.pm.graph.mask_of(truth)


def _prune(setup, truth, **kw):
    return cf.discover(
        setup.pm,
        setup.task,
        method="edge-pruning",
        n_edges=int(truth.sum()),
        metric=setup.metric,
        ablation="zero",
        progress=False,
        **kw,
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_recovers_the_tracr_circuit_under_zero_ablation(proportion, seed):
    setup, truth = proportion
    circuit = _prune(setup, truth, seed=seed)
    g = setup.pm.graph
    assert torch.equal(circuit.mask, truth), sorted(circuit.edge_names)
    fpr, tpr = roc_points(circuit.scores[g.edge_mask].double(), truth[g.edge_mask])
    assert auc(fpr, tpr) == 1.0
    # the reported faithfulness is the exact patched forward's on the returned mask (no held-out split: all prompts)
    exact = faithfulness(setup.pm, circuit.mask, setup.task, metric=setup.metric, ablation="zero")
    assert exact["split"] == "all"
    assert circuit.stats["trained_faithfulness"] == pytest.approx(exact["faithfulness"], abs=1e-6)
    assert circuit.stats["trained_faithfulness"] == pytest.approx(1.0, abs=1e-6)


def test_same_seed_same_mask_and_another_seed_other_gates(proportion):
    setup, truth = proportion
    a, b, c = (_prune(setup, truth, seed=s, steps=60) for s in (3, 3, 4))
    assert torch.equal(a.mask, b.mask) and torch.equal(a.scores, b.scores)
    assert not torch.equal(a.scores, c.scores)


@pytest.mark.parametrize("name", ["gpt2"])
def test_ctrl_c_keeps_the_best_mask_so_far(name):
    p = problem_of(name, "logit_diff")

    class Interrupt:
        total = n = 0

        def reset(self, total=None):
            self.total, self.n = total, 0

        def update(self, k=1):
            self.n += k
            if self.n == 25:
                raise KeyboardInterrupt

        def set_description(self, *a, **k):
            pass

        def set_postfix(self, *a, **k):
            pass

        def refresh(self):
            pass

    opts = EdgePruningOptions(n_edges=12, steps=100, eval_every=5)
    result = run_edge_pruning(p, opts, Interrupt())
    st = result.stats
    assert st["interrupted"] and st["steps_run"] == 25 and len(st["history"]) == 5
    best = min(st["history"], key=lambda h: h["objective"])
    assert st["best_step"] == best["step"] and st["objective"] == best["objective"]
    assert st["trained_faithfulness"] == pytest.approx(best["faithfulness"], abs=1e-9)
    # the returned scores' top 12 is the best mask: its exact loss is the best objective
    g = p.pm.graph
    from circuitfind.selection.cuts import prune_dangling, top_n

    mask = prune_dangling(g, top_n(g, result.scores, 12))
    with torch.no_grad():
        assert float(loss_at(p, mask)) == pytest.approx(best["objective"], rel=1e-9)


def test_the_lagrangian_brings_the_open_gates_to_the_budget():
    p = problem_of("llama", "kl")
    result = run_edge_pruning(p, EdgePruningOptions(n_edges=20, steps=120, eval_every=20, lambda_lr=0.1))
    first, last = result.stats["history"][0], result.stats["history"][-1]
    assert first["open"] > 150  # about every edge open at the start
    assert 10 < last["open"] < 30, last


def test_warm_start_opens_the_eap_ig_top_edges(proportion):
    setup, truth = proportion
    problem, _ = prepare_problem(setup.pm, setup.task, metric=setup.metric, ablation="zero")
    result = run_edge_pruning(problem, EdgePruningOptions(n_edges=5, steps=40, warm_start=True, pool=2.0))
    assert result.stats["warm_start"] and result.stats["history"][0]["open"] < 12  # 10 open, 13 firmly closed


def test_options_and_discover_refuse_bad_training_arguments(proportion):
    for bad in ({"steps": 0}, {"lr": 0}, {"lr": "fast"}, {"seed": -1}, {"density": 2.0}, {"n_edges": 0}):
        with pytest.raises(ConfigError):
            EdgePruningOptions(**bad)
    setup, truth = proportion
    for kw in ({"lr": 0.1}, {"seed": 1}, {"warm_start": True}):
        with pytest.raises(ConfigError, match="edge-pruning"):
            cf.discover(setup.pm, setup.task, method="eap", n_edges=3, metric=setup.metric, progress=False, **kw)


def test_node_level_gates_recover_the_circuit_nodes(proportion):
    """One gate per sender node (its whole row): the top nodes are the senders of the tracr circuit."""
    setup, truth = proportion
    nodes = truth.any(dim=1)
    circuit = cf.discover(
        setup.pm,
        setup.task,
        method="edge-pruning",
        level="node",
        n_nodes=int(nodes.sum()),
        metric=setup.metric,
        ablation="zero",
        progress=False,
    )
    assert torch.equal(circuit.node_mask, nodes)
    assert circuit.stats["level"] == "node" and circuit.stats["trained_faithfulness"] == pytest.approx(1.0, abs=1e-6)
    # a node's gate covers its whole row: the circuit holds only edges out of the kept nodes
    assert not bool(circuit.mask[~nodes].any())
