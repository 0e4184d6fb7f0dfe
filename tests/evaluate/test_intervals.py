"""Held-out faithfulness carries its per-prompt values, a bootstrap interval and a two-sided reading; CPR/CMD
carry intervals; the sweep store has the interval columns."""

from __future__ import annotations

import sqlite3

import pytest
import torch

import circuitfind as cf
from circuitfind.evaluate.circuits import cpr_cmd_of_scores, excluded_negative, faithfulness
from circuitfind.graph import Graph
from circuitfind.metrics import make_metric
from circuitfind.sweeps.store import COLUMNS, ResultsStore
from circuitfind.validation import faithfulness_interval
from tests.toy_problems import PMS, natural_task

PM = PMS["gpt2"]
TASK = natural_task(PM)


def _by_hand(mask: torch.Tensor) -> torch.Tensor:
    abl = PM.ablation("resample", TASK.corrupted_ids, TASK.attention_mask)
    with torch.no_grad():
        lg = PM.forward(TASK.clean_ids, abl, mask, attention_mask=TASK.attention_mask, positions=TASK.answer_pos)
    rows = torch.arange(len(TASK))
    return (lg[rows, TASK.answers[:, 0]] - lg[rows, TASK.wrong_answers[:, 0]]).double()


def test_per_prompt_values_are_the_logit_difference_of_each_prompt_and_the_interval_resamples_them():
    g = PM.graph
    circuit = cf.discover(PM, TASK, method="eap", n_edges=40, metric="logit_diff", progress=False)
    res = faithfulness(PM, circuit, TASK, metric="logit_diff", n_boot=500, seed=3)
    pp = res["per_prompt"]
    for key, mask in (("circuit", circuit.mask), ("full", g.full_mask()), ("empty", torch.zeros_like(g.edge_mask))):
        assert pp[key] == pytest.approx(_by_hand(mask).tolist(), abs=1e-9), key
    again = faithfulness_interval(pp["circuit"], pp["full"], pp["empty"], n_boot=500, seed=3)
    assert (res["ci"]["lo"], res["ci"]["hi"]) == pytest.approx((again.lo, again.hi), abs=1e-7)
    assert (
        res["ci"]["n_boot"] == 500
        and res["ci"]["seed"] == 3
        and res["ci"]["lo"] <= res["faithfulness"] <= res["ci"]["hi"]
    )
    f = res["faithfulness"]
    assert res["deviation"] == pytest.approx(abs(1 - f)) and res["over_recovery"] == (f > 1)


def test_a_callable_metric_gets_per_prompt_values_from_each_prompt_alone():
    def answer_logit(logits):  # (B, V) -> mean over prompts of the logit of token 3
        return logits[:, 3].mean()

    m = make_metric(answer_logit, higher_is_better=True)
    logits = torch.arange(24.0).view(1, 4, 6)  # (K, B, V)
    assert m.per_prompt(logits).tolist() == [[3.0, 9.0, 15.0, 21.0]]
    assert float(m.per_prompt(logits).mean()) == pytest.approx(float(m(logits)[0]))


def test_excluded_negative_lists_the_most_negative_edges_outside_the_circuit():
    g = Graph(n_layers=1, n_heads=1)
    s = torch.zeros(g.n_senders, g.n_receivers)
    values = {"input->logits": -3.0, "a0.h0->logits": -1.0, "input->m0": -5.0, "m0->logits": 2.0}
    for name, v in values.items():
        s[g.edge_index(name)] = v
    circuit = cf.Circuit(g, g.mask_of(["input->m0", "m0->logits"]), s)  # the -5 edge is inside
    assert excluded_negative(circuit) == [
        {"edge": "input->logits", "score": -3.0},
        {"edge": "a0.h0->logits", "score": -1.0},
    ]
    assert excluded_negative(circuit, n=1) == [{"edge": "input->logits", "score": -3.0}]


def test_cpr_cmd_have_intervals_around_them():
    scores = cf.discover(PM, TASK, method="eap", n_edges=5, metric="logit_diff", progress=False).scores
    res = cpr_cmd_of_scores(PM, scores, TASK, metric="logit_diff", fractions=[0.1, 0.5, 1.0], n_boot=200)
    for name in ("cpr", "cmd"):
        assert res[f"{name}_ci"]["lo"] <= res[name] + 1e-12 and res[name] <= res[f"{name}_ci"]["hi"] + 1e-12


def test_the_sweep_store_has_interval_columns_and_adds_them_to_an_older_store(tmp_path):
    for name in ("faithfulness_lo", "faithfulness_hi", "cpr_lo", "cpr_hi", "cmd_lo", "cmd_hi"):
        assert COLUMNS[name] == "REAL"
    path = tmp_path / "old.sqlite"
    old_cols = {k: v for k, v in COLUMNS.items() if not k.endswith(("_lo", "_hi"))}
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    conn.execute("INSERT INTO meta VALUES ('format_version', '1')")
    conn.execute(f"CREATE TABLE cells ({', '.join(f'{k} {v}' for k, v in old_cols.items())})")
    conn.commit()
    conn.close()
    with ResultsStore(path) as store:
        store.put({"cell_id": "a", "status": "done", "spec": "{}", "faithfulness": 0.9, "faithfulness_lo": 0.8})
        row = store.conn.execute("SELECT faithfulness_lo, faithfulness_hi FROM cells WHERE cell_id = 'a'").fetchone()
    assert row == (0.8, None)
