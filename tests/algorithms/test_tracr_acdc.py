"""ACDC recovers the compiled circuits of the tracr models (the ACDC paper reports AUC 1.0 for both).

Zero ablation: ACDC finds exactly ``ground_truth_acdc`` (the RASP data flow plus the auxiliary edges whose
zeroing matters) at every threshold of the sweep but the top one, so AUC = 1.

Resample ablation pairs each input with another input of the same length, at the same positions. Whatever is
the same in both -- positions (``indices``) and, for reverse, the length -- cannot be changed by resampling,
so the edges that carry only that are invisible to it, whatever the threshold. ACDC then finds exactly the
input-dependent part of ``ground_truth`` and nothing else (no false positive), which caps the AUC against the
full data flow: 2 of 8 edges for reverse (AUC 0.625), 3 of 5 for proportion (AUC 0.8).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

import circuitfind as cf
from circuitfind.cli.plots import plot_reproduction
from circuitfind.evaluate.scores import auc, roc_from_circuits
from circuitfind.reproduce.paper import reproduce
from circuitfind.tasks.ground_truth import tracr_ground_truth
from circuitfind.tasks.tracr import tracr_setup

THRESHOLDS = (1e-3, 1e-2)
SEQUENCES = {"reverse": None, "proportion": 16}  # reverse: all 27 inputs; proportion: a sample (speed)

# the ground-truth edges that carry token information (the only ones resampling changes)
RESAMPLE_VISIBLE = {
    "reverse": {"input->a3.h0<v>", "a3.h0->logits"},  # reverse(i) = token at length-1-i, length fixed at 3
    "proportion": {"input->m0", "m0->a1.h0<v>", "a1.h0->logits"},  # q/k read only indices
}
RESAMPLE_AUC = {"reverse": 0.625, "proportion": 0.8}


@pytest.fixture(scope="module", params=sorted(SEQUENCES))
def setup(request):
    return tracr_setup(request.param, n_sequences=SEQUENCES[request.param], seed=0)


def _sweep(setup, ablation):
    circuits = [
        cf.discover(setup.pm, setup.task, threshold=t, metric=setup.metric, ablation=ablation, progress=False)
        for t in THRESHOLDS
    ]
    key, truth = tracr_ground_truth(setup.meta, ablation)
    g = setup.pm.graph
    truth_mask = g.mask_of(truth)
    fpr, tpr = roc_from_circuits([c.mask for c in circuits], truth_mask, g.edge_mask)
    return circuits, truth_mask, auc(fpr, tpr)


def test_task_layout(setup):
    task = setup.task
    n_pos = task.seq_len - 1
    assert len(task) % n_pos == 0 and task.answers.shape == (len(task), 0)
    assert task.answer_pos.tolist()[:n_pos] == list(range(1, n_pos + 1))  # one prompt per output position
    assert not bool((task.clean_ids == task.corrupted_ids).all(dim=1).any())  # every input paired with another
    full = setup.pm.forward(
        task.clean_ids, setup.pm.ablation("zero"), setup.pm.graph.full_mask(), positions=task.answer_pos
    )
    assert float(setup.metric(full)) == 0.0


def test_zero_ablation_recovers_the_circuit(setup):
    circuits, truth, area = _sweep(setup, "zero")
    found = [c for c in circuits if torch.equal(c.mask, truth)]
    print(f"tracr-{setup.name} zero: AUC {area:.3f}; sizes {[c.n_edges for c in circuits]} vs {int(truth.sum())}")
    assert area >= 0.95
    assert found, f"no threshold recovered the circuit exactly: {[c.edge_names for c in circuits]}"


def test_resample_ablation_finds_the_input_dependent_part(setup):
    circuits, truth, area = _sweep(setup, "resample")
    print(f"tracr-{setup.name} resample: AUC {area:.3f} against ground_truth")
    for c in circuits:
        assert not bool((c.mask & ~truth).any()), (
            f"false positives: {set(c.edge_names) - set(setup.meta['ground_truth'])}"
        )
        assert set(c.edge_names) == RESAMPLE_VISIBLE[setup.name]
    assert area == pytest.approx(RESAMPLE_AUC[setup.name])


def test_reproduce_writes_json_and_the_figure_is_drawn_from_it(tmp_path):
    res = reproduce("tracr-proportion", thresholds=[1e-2], out_dir=tmp_path, n_prompts=8, progress=False)
    assert res["runs"]["zero"]["auc"] == 1.0 and res["runs"]["zero"]["ground_truth"] == "ground_truth_acdc"
    assert res["json"] == str(tmp_path / "roc_tracr-proportion.json") and (tmp_path / res["json"]).is_file()
    assert not (tmp_path / "roc_tracr-proportion.png").exists()  # the library computes; drawing is asked for
    figure = plot_reproduction(res)
    if importlib.util.find_spec("matplotlib") is None:  # plot is an optional extra: without it, no figure
        assert figure is None
    else:
        assert figure == tmp_path / "roc_tracr-proportion.png" and figure.is_file()


def test_reproduce_subcommand(tmp_path, capsys):
    from circuitfind.cli.main import main

    argv = ["reproduce", "tracr-proportion", "--thresholds", "0.01", "--n-prompts", "4", "--out-dir", str(tmp_path)]
    assert main([*argv, "--no-progress"]) == 0
    assert "zero: AUC 1.000 vs ground_truth_acdc" in capsys.readouterr().out
    assert main(["reproduce", "ioi", "--model", "tracr-reverse"]) == 2  # a tracr model runs its own task
