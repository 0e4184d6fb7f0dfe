"""Position-aware edges (``by_position=True``): the engine's (S, R, T) masks, per-position scores, the cut over
position-edges, template labels and the file format.

Slow paths: :func:`tests.reference_forward.reference_forward` (a per-receiver Python loop that shares nothing
with the engine) takes an (S, R, T, 1) mask as it is, and autograd through the patched forward gives the
gradient with respect to every position-edge.
"""

from __future__ import annotations

import pytest
import torch

import circuitfind as cf
from circuitfind.algorithms import EapOptions, run_eap, run_eap_ig
from circuitfind.engine.patchable import PatchableModel
from circuitfind.errors import ConfigError, ShapeError, TaskError
from circuitfind.selection.cuts import prune_dangling
from circuitfind.tasks import Task
from circuitfind.tasks.templates import template_groups, template_labels
from tests.models_tiny import FAMILIES, VOCAB, randomize_biases
from tests.reference_forward import assert_close, reference_forward
from tests.toy_problems import NAMES, PMS, loss_at, problem_of

N, T = 4, 6


def _aligned_task(pm: PatchableModel, seed: int = 0) -> Task:
    """Prompts of one length (no padding), the model's own top tokens as answer and wrong answer."""
    g = torch.Generator().manual_seed(seed)
    clean, corrupt = torch.randint(1, VOCAB, (2, N, T), generator=g)
    am, last = torch.ones(N, T, dtype=torch.long), torch.full((N,), T - 1)
    with torch.no_grad():
        full, zero = pm.graph.full_mask(), pm.ablation("zero")
        top_clean = pm.forward(clean, zero, full, positions=last).argmax(-1, keepdim=True)
        second = pm.forward(corrupt, zero, full, positions=last).topk(2, dim=-1).indices
    wrong = torch.where(second[:, :1] == top_clean, second[:, 1:], second[:, :1])
    labels = [("BOS", "A", "B", "C", "D", "END")] * N
    return Task("aligned", clean, corrupt, am, last, top_clean, wrong, position_labels=labels)


TASKS = {name: _aligned_task(PMS[name]) for name in NAMES}


def _models():
    out = {}
    for name, make in FAMILIES.items():
        m = make()
        randomize_biases(m)
        out[name] = PatchableModel(m)
    return out


MODELS = _models()


# --- the engine ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_position_masks_match_the_slow_reference_and_the_2d_forward(name):
    pm = MODELS[name]
    g = pm.graph
    gen = torch.Generator().manual_seed(1)
    clean, corrupt = torch.randint(0, VOCAB, (2, 3, T), generator=gen)
    abl = pm.ablation("resample", corrupt)
    mask3 = (torch.rand(g.n_senders, g.n_receivers, T, generator=gen) < 0.5) & g.edge_mask[..., None]
    with torch.no_grad():
        out = pm.forward(clean, abl, mask3)
        ref = reference_forward(pm.spec, g, clean, abl.outputs, mask3.float().unsqueeze(-1))
        assert_close(out, ref)
        # a mask constant over positions is the 2-D mask
        mask2 = (torch.rand(g.n_senders, g.n_receivers, generator=gen) < 0.5) & g.edge_mask
        flat = pm.forward(clean, abl, mask2)
        assert torch.allclose(pm.forward(clean, abl, mask2[..., None].expand(-1, -1, T)), flat, atol=1e-5)
        # all kept: the model's logits; none kept: the corrupted run
        hf = pm.module(clean).logits
        assert torch.allclose(pm.forward(clean, abl, g.full_mask()[..., None].expand(-1, -1, T).clone()), hf, atol=1e-4)
        corrupted = pm.module(corrupt).logits
        none = torch.zeros(g.n_senders, g.n_receivers, T, dtype=torch.bool)
        assert torch.allclose(pm.forward(clean, abl, none), corrupted, atol=1e-4)
        # a stack (K, S, R, T) is the masks one by one, answer positions and vocab columns included
        stack = torch.stack([mask3, ~mask3])
        last, vocab = torch.full((3,), T - 1), torch.tensor([1, 5])
        many = pm.forward(clean, abl, stack, positions=last, vocab=vocab)
        assert torch.allclose(many[1], pm.forward(clean, abl, ~mask3, positions=last, vocab=vocab), atol=1e-5)
        assert torch.allclose(many[0], out[:, -1, vocab], atol=1e-5)


def test_position_masks_are_checked():
    pm = MODELS[NAMES[0]]
    g = pm.graph
    ids = torch.randint(0, VOCAB, (2, T))
    abl = pm.ablation("resample", ids)
    with pytest.raises(ShapeError, match="one position per token"):
        pm.forward(ids, abl, torch.ones(g.n_senders, g.n_receivers, T + 1))


# --- scores ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_position_scores_sum_to_the_position_free_scores_and_are_the_gradients(name):
    problem = problem_of(name, task=TASKS[name])
    g = problem.pm.graph
    plain = run_eap(problem).scores
    by_pos = run_eap(problem, EapOptions(by_position=True))
    assert by_pos.position_scores.shape == (g.n_senders, g.n_receivers, T)
    assert torch.allclose(by_pos.position_scores.sum(-1), plain, atol=1e-9, rtol=0)
    assert torch.allclose(by_pos.scores, plain, atol=1e-9, rtol=0)
    # independently: autograd through the patched forward with an (S, R, T) float mask
    mask = g.full_mask()[..., None].expand(-1, -1, T).double().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss_at(problem, mask), mask)
    assert torch.allclose(by_pos.position_scores, -grad * g.edge_mask[..., None], atol=1e-9, rtol=0)
    assert (by_pos.position_scores[..., 0] != by_pos.position_scores[..., -1]).any()  # positions differ
    ig = run_eap_ig(problem, EapOptions(steps=3, by_position=True))
    assert torch.allclose(ig.position_scores.sum(-1), run_eap_ig(problem, EapOptions(steps=3)).scores, atol=1e-9)


# --- discover ----------------------------------------------------------------------------------------------------
def _faith3(pm, task, mask3) -> float:
    """Faithfulness of an (S, R, T) mask, the logit difference written out by hand."""
    abl = pm.ablation("resample", task.corrupted_ids)
    rows = torch.arange(len(task))
    g = pm.graph

    def metric(m):
        with torch.no_grad():
            logits = pm.forward(task.clean_ids, abl, m, positions=task.answer_pos)
        return float((logits[rows, task.answers[:, 0]] - logits[rows, task.wrong_answers[:, 0]]).mean())

    full = g.full_mask()[..., None].expand(-1, -1, T).clone()
    return (metric(mask3) - metric(~full)) / (metric(full) - metric(~full))


@pytest.mark.parametrize("name", NAMES[:1])
def test_discover_by_position_cuts_the_top_position_edges(name):
    pm, task = PMS[name], TASKS[name]
    g = pm.graph
    circuit = cf.discover(pm, task, method="eap", by_position=True, n_edges=40, metric="logit_diff", progress=False)
    scores = run_eap(problem_of(name, task=task), EapOptions(by_position=True)).position_scores
    # the top 40 position-edges by score, dangling ones dropped on the projection
    top = torch.zeros(scores.numel(), dtype=torch.bool)
    ranked = torch.where(g.edge_mask[..., None], scores, torch.tensor(float("-inf"))).flatten()
    top[torch.argsort(ranked, descending=True, stable=True)[:40]] = True
    top = top.view(scores.shape)
    want = top & prune_dangling(g, top.any(-1))[..., None]
    assert torch.equal(circuit.position_mask, want) and int(want.sum()) > 0
    assert circuit.position_labels == task.position_labels[0] and circuit.config["by_position"] is True
    assert torch.equal(circuit.mask, want.any(-1))
    assert circuit.recovered == pytest.approx(_faith3(pm, task, want), abs=1e-6)
    f = cf.evaluate.faithfulness(pm, circuit, task, metric="logit_diff")["faithfulness"]
    assert f == pytest.approx(_faith3(pm, task, want), abs=1e-6)
    names = circuit.position_edge_names
    assert len(names) == int(want.sum()) and all("@" in n for n in names)


def test_target_by_position_reaches_it_and_files_keep_the_positions(tmp_path):
    pm, task = PMS[NAMES[0]], TASKS[NAMES[0]]
    circuit = cf.discover(pm, task, method="eap-ig", by_position=True, target=0.7, metric="logit_diff", progress=False)
    assert circuit.stats["reached"] and _faith3(pm, task, circuit.position_mask) >= 0.7
    k = circuit.stats["k"]
    smaller = [p for p in circuit.stats["probes"] if p["k"] == k - 1]
    assert smaller and smaller[0]["faithfulness"] < 0.7
    back = cf.Circuit.load(circuit.save(tmp_path / "c.json"))
    assert torch.equal(back.position_mask, circuit.position_mask) and back.position_labels == circuit.position_labels
    on = pm.graph.edge_mask  # scores off the graph's edges are not stored (NaN when read back), as for edges
    assert torch.allclose(back.position_scores[on], circuit.position_scores[on])
    dot = circuit.to_dot()
    assert dot.count("@") == 2 * int(circuit.position_mask.sum())  # in each drawn edge's label and tooltip
    from circuitfind.viewer.payload import build_payload

    at = build_payload(circuit)["edges"]["at"]
    assert any(label in at[0].split(",") for label in circuit.position_labels)


def test_prompts_that_do_not_align_are_refused():
    pm, task = PMS[NAMES[0]], TASKS[NAMES[0]]
    mixed = [("BOS", "A", "B", "C", "D", "END")] * 2 + [("BOS", "B", "A", "C", "D", "END")] * 2
    other = Task("mixed", task.clean_ids, task.corrupted_ids, task.attention_mask, task.answer_pos, task.answers,
                 task.wrong_answers, position_labels=mixed)  # fmt: skip
    assert template_groups(other.position_labels) == [[0, 1], [2, 3]]
    with pytest.raises(TaskError, match="2 template groups"):
        cf.discover(pm, other, method="eap", by_position=True, n_edges=5, metric="logit_diff", progress=False)
    padded = Task("padded", task.clean_ids, task.corrupted_ids, task.attention_mask.clone(), task.answer_pos,
                  task.answers, task.wrong_answers)  # fmt: skip
    padded.attention_mask[1, -1] = 0
    with pytest.raises(TaskError, match="differ in length"):
        template_labels(padded)
    with pytest.raises(ConfigError, match="does not support by_position"):
        cf.discover(pm, task, method="exact", by_position=True, n_edges=5, metric="logit_diff", progress=False)


# --- template labels of the built-in tasks (the real tokenizer, no weights) -------------------------------------
def test_ioi_and_greater_than_label_their_positions(tok):
    from circuitfind.tasks import get_task

    ioi = get_task("ioi", tok, n=6, seed=0, template=0, order="ABBA")
    labels = template_labels(ioi)
    ids = ioi.clean_ids[0]
    assert labels[-1] == "END" and ids[labels.index("IO")] == ioi.answers[0, 0]
    assert ids[labels.index("S1")] == ids[labels.index("S2")] == ioi.wrong_answers[0, 0]
    assert labels.index("IO") < labels.index("S1") < labels.index("S2") < len(labels) - 1
    assert len(set(labels)) == len(labels)
    with pytest.raises(TaskError, match="template groups"):
        template_labels(get_task("ioi", tok, n=6, seed=0))
    baba = template_labels(get_task("ioi", tok, n=4, seed=1, template=0, order="BABA"))
    assert baba.index("S1") < baba.index("IO")
    gt = get_task("greater-than", tok, n=6, seed=0)
    labels = template_labels(gt)
    yy = labels.index("YY")
    assert bool((gt.clean_ids[:, yy] != gt.corrupted_ids[:, yy]).all()) and labels[-1] == "END"
    differ = (gt.clean_ids != gt.corrupted_ids).any(0).nonzero().flatten().tolist()
    assert all(labels[t].startswith("YY") for t in differ)
