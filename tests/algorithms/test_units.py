"""Cuts over nodes and position-edges (algorithms/units.py), through ``discover(by_position=True)``: the top
position-edges by score (ranked by hand), the smallest faithful top-k for a target, the file format keeping the
positions, prompts that do not align refused. Faithfulness is written out by hand on ``pm.forward``'s logits."""

from __future__ import annotations

import pytest
import torch

import circuitfind as cf
from circuitfind.algorithms import EapOptions, run_eap
from circuitfind.errors import ConfigError, TaskError
from circuitfind.selection.cuts import prune_dangling
from circuitfind.tasks import Task
from circuitfind.tasks.templates import template_groups, template_labels
from tests.toy_problems import NAMES, PMS, aligned_task, problem_of

T = 6  # tokens per prompt of aligned_task
TASKS = {name: aligned_task(PMS[name]) for name in NAMES[:1]}


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
