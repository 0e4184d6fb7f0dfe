"""Completeness, minimality, stability and ablation sensitivity on a model built by hand, where the answers are
known by construction.

The planted model (2 layers x 2 heads, no norms, MLPs that output 0) reads prompts ``[a, b]`` whose answer is
``a`` (wrong answer ``b``). Both real heads attend from the last position to position 0:

* ``a0.h0``, the mover, copies ``a`` into a block ``N1`` that the unembedding reads;
* ``a1.h0``, the backup, copies ``a`` minus what ``a0.h0`` wrote at position 0 into a block ``N2`` that the
  unembedding reads too. With the mover live it outputs exactly 0; with the mover removed (under any ablation)
  it outputs ``a`` minus the mover's ablated value, so the model's logits do not change: a perfect backup.
* ``a0.h1`` and ``a1.h1`` are all-zero heads (planted useless nodes), and so are the MLPs.

Hence, with mean ablation: the circuit without the backup has faithfulness 1 but is incomplete (removing the
mover from it loses the logit difference, removing it from the model does not); in the full graph, the mover
and the backup each look useless alone (K empty) and are needed once the other is removed.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from circuitfind.engine.patchable import PatchableModel
from circuitfind.models.spec import ArchSpec, AttentionWeights, LayerSpec
from circuitfind.tasks import Task
from circuitfind.validation.completeness import completeness, minimality
from circuitfind.validation.stability import inclusion_frequency, mean_jaccard, stability, stable_core

V = 6  # tokens
E_, N1, N2 = slice(0, V), slice(V, 2 * V), slice(2 * V, 3 * V)
ONE, P0 = 3 * V, 3 * V + 1
D = 3 * V + 2
SHARP = 30.0  # attention logit on position 0: the leak to position 1 is e^-30
MOVER, USELESS, BACKUP = "a0.h0", "a0.h1", "a1.h0"


def _planted_spec() -> ArchSpec:
    w = {n: torch.zeros(2, 2, D, V) for n in "QKV"}
    w_o = torch.zeros(2, 2, V, D)
    eye = torch.eye(V)
    for layer in (0, 1):  # head 0 of each layer attends from every position to position 0
        w["Q"][layer, 0, ONE, 0] = 1.0
        w["K"][layer, 0, P0, 0] = SHARP
        w["V"][layer, 0, E_, :] = eye
    w_o[0, 0, :, N1] = eye  # the mover writes a into N1
    w["V"][1, 0, N1, :] = -eye  # the backup reads a minus the mover's copy (at position 0)
    w_o[1, 0, :, N2] = eye

    def zero_mlp(x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)

    layers = tuple(
        LayerSpec(AttentionWeights(*(w[n][i] for n in "QKV"), w_o[i]), nn.Identity(), nn.Identity(), zero_mlp, 1.0)
        for i in range(2)
    )

    def embed(ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(*ids.shape, D)
        out[..., E_] = nn.functional.one_hot(ids, V).float()
        out[..., ONE] = 1.0
        out[..., P0] = (position_ids == 0).float()
        return out

    def unembed(x: torch.Tensor) -> torch.Tensor:
        return 2.0 * (x[..., N1] + x[..., N2])

    return ArchSpec(n_layers=2, n_heads=2, d_model=D, d_head=V, layers=layers, embed=embed,
                    final_norm=nn.Identity(), unembed=unembed, vocab_size=V, n_outputs=V, max_positions=4)  # fmt: skip


def _task(n_train: int | None = None) -> Task:
    pairs = list(itertools.permutations(range(V), 2))  # 30 prompts [a, b], a != b: every token 5 times each way
    clean = torch.tensor(pairs)
    corrupted = torch.tensor([[(a + 1) % V, b] if (a + 1) % V != b else [(a + 2) % V, b] for a, b in pairs])
    n = len(pairs)
    return Task("planted", clean, corrupted, torch.ones_like(clean), torch.full((n,), 1), clean[:, :1],
                clean[:, 1:2], n_train=n_train)  # fmt: skip


@pytest.fixture(scope="module")
def pm() -> PatchableModel:
    return PatchableModel(_planted_spec())


def _without(pm: PatchableModel, *names: str) -> torch.Tensor:
    g = pm.graph
    return g.without_nodes(g.full_mask(), [g.sender_index(n) for n in names])


def test_planted_model_is_what_the_docstring_says(pm):
    from circuitfind.evaluate.circuits import faithfulness_many

    masks = [_without(pm, BACKUP), _without(pm, MOVER), _without(pm, MOVER, BACKUP)]
    rows = faithfulness_many(pm, masks, _task(), metric="logit_diff", ablation="mean")
    assert rows[0]["metric_full"] == pytest.approx(2.0, abs=1e-5)  # 2 * (1 - 0) on every prompt
    f = [r["faithfulness"] for r in rows]
    assert f[0] == pytest.approx(1.0, abs=1e-5) and f[1] == pytest.approx(1.0, abs=1e-5)  # either one alone
    assert f[2] == pytest.approx(0.0, abs=1e-5)  # both gone: nothing left


def test_completeness_is_zero_for_the_full_graph_as_circuit(pm):
    res = completeness(pm, pm.graph.full_mask(), _task(), metric="logit_diff", probes=60, seed=0)
    assert res["max_gap"] == 0.0
    assert res["probes_used"] <= 60 and len(res["probes"]) >= 5
    kinds = {p["kind"] for p in res["probes"]}
    assert {"empty", "heads of layer 0", "heads of layer 1", "MLPs", "random", "greedy"} <= kinds


def test_completeness_flags_the_circuit_without_its_backup_head(pm):
    circuit = _without(pm, BACKUP)
    res = completeness(pm, circuit, _task(), metric="logit_diff", probes=40, seed=0)
    empty = next(p for p in res["probes"] if p["kind"] == "empty")
    assert empty["gap"] == pytest.approx(0.0, abs=1e-5)  # faithful: F(C) = F(M)
    # removing the mover: from the model, the backup takes over (2.0); from the circuit, nothing is left (the
    # mean-ablated mover keeps 2 * (mean share of a minus that of b) = 0 on this balanced prompt set)
    assert res["max_gap"] == pytest.approx(2.0, abs=1e-4)
    assert MOVER in res["worst"]["nodes"] and BACKUP not in res["worst"]["nodes"]
    assert res["worst"]["f_model"] == pytest.approx(2.0, abs=1e-4)
    assert res["max_gap_f"] == pytest.approx(1.0, abs=1e-4)


def test_completeness_takes_head_classes(pm):
    res = completeness(pm, _without(pm, BACKUP), _task(), metric="logit_diff", probes=12,
                       classes={"movers": [MOVER], "absent": [BACKUP]})  # fmt: skip
    kinds = [p["kind"] for p in res["probes"]]
    assert "class movers" in kinds and "class absent" not in kinds  # the backup is not in this circuit
    mover = next(p for p in res["probes"] if p["kind"] == "class movers")
    assert mover["nodes"] == [MOVER] and mover["gap"] == pytest.approx(2.0, abs=1e-4)


def test_minimality_flags_the_planted_useless_node_and_finds_the_backups_need(pm):
    res = minimality(pm, pm.graph.full_mask(), _task(), metric="logit_diff", probes=60, seed=0)
    assert USELESS in res["below_threshold"] and "a1.h1" in res["below_threshold"]
    assert MOVER not in res["below_threshold"] and BACKUP not in res["below_threshold"]
    # alone (K empty) either is useless; with the other removed it carries the whole logit difference
    assert res["nodes"][MOVER]["score"] == pytest.approx(2.0, abs=1e-4)
    assert BACKUP in res["nodes"][MOVER]["k"]
    assert res["nodes"][USELESS]["score"] == pytest.approx(0.0, abs=1e-6)
    assert res["probes_used"] <= 60


def test_probe_budget_is_kept_and_reported(pm):
    # 8 masks: the two references, then K empty for 3 of the 6 nodes (one base mask + 3); nothing fits after
    res = minimality(pm, pm.graph.full_mask(), _task(), metric="logit_diff", probes=8, seed=0)
    assert res["probes_used"] == 8 and res["probe_budget"] == 8
    assert sorted(r["tried"] for r in res["nodes"].values()) == [0, 0, 0, 1, 1, 1]
    untried = [n for n, r in res["nodes"].items() if r["tried"] == 0]
    assert not set(untried) & set(res["below_threshold"])


# --- stability -------------------------------------------------------------------------------------------------
def test_inclusion_statistics_by_hand():
    from circuitfind.graph import Graph

    g = Graph(1, 1)
    a, b, c = (g.mask_of(e) for e in (["input->logits", "a0.h0->logits"], ["input->logits"],
                                      ["input->logits", "m0->logits"]))  # fmt: skip
    f = inclusion_frequency([a, b, c], g)
    assert float(f[g.edge_index("input->logits")]) == 1.0
    assert float(f[g.edge_index("a0.h0->logits")]) == pytest.approx(1 / 3)
    assert float(f.sum()) == pytest.approx(1 + 2 / 3)
    # pairs: (a, b) 1/2, (a, c) 1/3, (b, c) 1/2
    assert mean_jaccard([a, b, c], g) == pytest.approx((1 / 2 + 1 / 3 + 1 / 2) / 3)
    assert stable_core(f, 0.8).sum() == 1 and bool(stable_core(f, 0.3).sum() == 3)


def test_stability_frequencies_are_exact_on_a_deterministic_case(pm):
    # every prompt of this task is the same pair, so every resample is the same task and EAP's top 3 edges are
    # the same circuit each time: frequency exactly 1 on it, 0 elsewhere, Jaccard 1
    one = _task().subset([0] * 6)
    task = Task("same", one.clean_ids, one.corrupted_ids, one.attention_mask, one.answer_pos, one.answers,
                one.wrong_answers, n_train=4)  # fmt: skip
    from circuitfind.discovery import discover

    ref = discover(pm, task, method="eap", n_edges=3, metric="logit_diff", progress=False).mask
    st = stability(pm, task, method="eap", n_edges=3, metric="logit_diff", n_boot=4, progress=False)
    assert torch.equal(st.frequency, ref.double())
    assert st.jaccard_mean == 1.0 and torch.equal(st.core, ref)
    assert set(st.edge_frequency().values()) == {1.0} and len(st.core_edges) == int(ref.sum()) >= 2
    assert st.core_heldout["n_prompts"] == 2


def test_stability_frequencies_count_resamples(pm):
    # resample b is discovery on the prompts resample_indices(n, n_boot, seed)[b] of the train split
    task = _task(n_train=8)
    st = stability(pm, task, method="eap", n_edges=5, metric="logit_diff", n_boot=5, seed=3, progress=False)
    from circuitfind.discovery import discover
    from circuitfind.selection.bootstrap import resample_indices

    draws = resample_indices(8, 5, seed=3)
    assert torch.equal(st.resamples, draws)
    masks = [discover(pm, task.train().subset(r), method="eap", n_edges=5, metric="logit_diff",
                      progress=False).mask for r in draws]  # fmt: skip
    assert torch.equal(st.masks, torch.stack(masks))
    assert torch.allclose(st.frequency, torch.stack(masks).double().mean(0))


def test_stability_reproduces_from_the_seed(pm):
    task = _task(n_train=8)
    kw = {"method": "eap-ig", "steps": 2, "n_edges": 4, "metric": "logit_diff", "n_boot": 3, "progress": False}
    a, b, c = stability(pm, task, seed=1, **kw), stability(pm, task, seed=1, **kw), stability(pm, task, seed=2, **kw)
    assert torch.equal(a.masks, b.masks) and a.to_dict()["edge_frequency"] == b.to_dict()["edge_frequency"]
    assert not torch.equal(a.resamples, c.resamples)


def test_stability_in_forked_workers_matches_one_process(pm):
    task = _task(n_train=8)
    kw = {"method": "eap", "n_edges": 4, "metric": "logit_diff", "n_boot": 4, "seed": 0, "progress": False}
    assert torch.equal(stability(pm, task, workers=2, **kw).masks, stability(pm, task, **kw).masks)


def test_completeness_reads_the_head_classes_json_layout(pm):
    classes = {"classes": {"name_mover": "..."}, "members": {"name_mover": [MOVER], "induction": []}}
    res = completeness(pm, _without(pm, BACKUP), _task(), metric="logit_diff", probes=8, classes=classes)
    assert [p["kind"] for p in res["probes"]][:2] == ["empty", "class name_mover"]
