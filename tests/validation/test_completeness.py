"""Completeness and minimality (validation/completeness.py, the IOI paper's definitions) on the planted model of
tests/validation/planted.py: zero for the full graph, the missing backup head found, the planted useless node
flagged, the probe budget kept."""

from __future__ import annotations

import pytest

from circuitfind.engine.patchable import PatchableModel
from circuitfind.validation.completeness import completeness, minimality
from tests.validation.planted import BACKUP, MOVER, USELESS, planted_spec, planted_task, without


@pytest.fixture(scope="module")
def pm() -> PatchableModel:
    return PatchableModel(planted_spec())


def test_planted_model_is_what_the_docstring_says(pm):
    from circuitfind.evaluate.circuits import faithfulness_many

    masks = [without(pm, BACKUP), without(pm, MOVER), without(pm, MOVER, BACKUP)]
    rows = faithfulness_many(pm, masks, planted_task(), metric="logit_diff", ablation="mean")
    assert rows[0]["metric_full"] == pytest.approx(2.0, abs=1e-5)  # 2 * (1 - 0) on every prompt
    f = [r["faithfulness"] for r in rows]
    assert f[0] == pytest.approx(1.0, abs=1e-5) and f[1] == pytest.approx(1.0, abs=1e-5)  # either one alone
    assert f[2] == pytest.approx(0.0, abs=1e-5)  # both gone: nothing left


def test_completeness_is_zero_for_the_full_graph_as_circuit(pm):
    res = completeness(pm, pm.graph.full_mask(), planted_task(), metric="logit_diff", probes=60, seed=0)
    assert res["max_gap"] == 0.0
    assert res["probes_used"] <= 60 and len(res["probes"]) >= 5
    kinds = {p["kind"] for p in res["probes"]}
    assert {"empty", "heads of layer 0", "heads of layer 1", "MLPs", "random", "greedy"} <= kinds


def test_completeness_flags_the_circuit_without_its_backup_head(pm):
    circuit = without(pm, BACKUP)
    res = completeness(pm, circuit, planted_task(), metric="logit_diff", probes=40, seed=0)
    empty = next(p for p in res["probes"] if p["kind"] == "empty")
    assert empty["gap"] == pytest.approx(0.0, abs=1e-5)  # faithful: F(C) = F(M)
    # removing the mover: from the model, the backup takes over (2.0); from the circuit, nothing is left (the
    # mean-ablated mover keeps 2 * (mean share of a minus that of b) = 0 on this balanced prompt set)
    assert res["max_gap"] == pytest.approx(2.0, abs=1e-4)
    assert MOVER in res["worst"]["nodes"] and BACKUP not in res["worst"]["nodes"]
    assert res["worst"]["f_model"] == pytest.approx(2.0, abs=1e-4)
    assert res["max_gap_f"] == pytest.approx(1.0, abs=1e-4)


def test_completeness_takes_head_classes(pm):
    res = completeness(pm, without(pm, BACKUP), planted_task(), metric="logit_diff", probes=12,
                       classes={"movers": [MOVER], "absent": [BACKUP]})  # fmt: skip
    kinds = [p["kind"] for p in res["probes"]]
    assert "class movers" in kinds and "class absent" not in kinds  # the backup is not in this circuit
    mover = next(p for p in res["probes"] if p["kind"] == "class movers")
    assert mover["nodes"] == [MOVER] and mover["gap"] == pytest.approx(2.0, abs=1e-4)


def test_minimality_flags_the_planted_useless_node_and_finds_the_backups_need(pm):
    res = minimality(pm, pm.graph.full_mask(), planted_task(), metric="logit_diff", probes=60, seed=0)
    assert USELESS in res["below_threshold"] and "a1.h1" in res["below_threshold"]
    assert MOVER not in res["below_threshold"] and BACKUP not in res["below_threshold"]
    # alone (K empty) either is useless; with the other removed it carries the whole logit difference
    assert res["nodes"][MOVER]["score"] == pytest.approx(2.0, abs=1e-4)
    assert BACKUP in res["nodes"][MOVER]["k"]
    assert res["nodes"][USELESS]["score"] == pytest.approx(0.0, abs=1e-6)
    assert res["probes_used"] <= 60


def test_probe_budget_is_kept_and_reported(pm):
    # 8 masks: the two references, then K empty for 3 of the 6 nodes (one base mask + 3); nothing fits after
    res = minimality(pm, pm.graph.full_mask(), planted_task(), metric="logit_diff", probes=8, seed=0)
    assert res["probes_used"] == 8 and res["probe_budget"] == 8
    assert sorted(r["tried"] for r in res["nodes"].values()) == [0, 0, 0, 1, 1, 1]
    untried = [n for n, r in res["nodes"].items() if r["tried"] == 0]
    assert not set(untried) & set(res["below_threshold"])


def test_completeness_reads_the_head_classes_json_layout(pm):
    classes = {"classes": {"name_mover": "..."}, "members": {"name_mover": [MOVER], "induction": []}}
    res = completeness(pm, without(pm, BACKUP), planted_task(), metric="logit_diff", probes=8, classes=classes)
    assert [p["kind"] for p in res["probes"]][:2] == ["empty", "class name_mover"]
