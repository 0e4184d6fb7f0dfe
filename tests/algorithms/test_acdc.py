"""ACDC: the fast path equals the plain sequential path; threshold semantics; resume; bad input."""

from __future__ import annotations

import math

import pytest
import torch

import circuitfind as cf
from circuitfind.algorithms import AcdcOptions, SenderOrder, run_acdc_fast, run_acdc_plain
from circuitfind.algorithms.acdc import FastEvaluator, receiver_order, sender_order
from circuitfind.engine.patchable import PatchableModel
from circuitfind.errors import ConfigError, TaskError
from circuitfind.evaluate.scores import auc, roc_from_circuits
from circuitfind.graph import Graph
from circuitfind.problem import prepare_problem
from circuitfind.tasks import Task
from circuitfind.tasks.ground_truth import tracr_ground_truth
from circuitfind.tasks.tracr import tracr_setup
from tests.models_tiny import VOCAB, randomize_biases, tiny_gpt2, tiny_llama, tiny_neox
from tests.toy_problems import loss_at
from tests.toy_tasks import random_task

N, T = 5, 8


def _task(seed: int = 0, metric: str = "logit_diff") -> Task:
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(1, VOCAB, (N, T), generator=g)
    corrupt = torch.randint(1, VOCAB, (N, T), generator=g)
    am = torch.ones(N, T, dtype=torch.long)
    am[1, 6:] = 0  # one right-padded prompt: its answer position is earlier
    pos = am.sum(1) - 1
    answers = torch.randint(1, VOCAB, (N, 1), generator=g)
    wrong = torch.randint(1, VOCAB, (N, 1), generator=g)
    return Task("toy", clean, corrupt, am, pos, answers, wrong, metric=metric)


def _model(make):
    m = make(init=0.2)
    randomize_biases(m)
    return m


MODELS = {"gpt2": _model(tiny_gpt2), "llama": _model(tiny_llama), "neox": _model(tiny_neox)}


def _problem(name: str, metric: str = "kl", ablation: str = "resample"):
    pm = PatchableModel(MODELS[name])
    return prepare_problem(pm, _task(), metric=metric, ablation=ablation)[0]


def _assert_same(a, b):
    assert torch.equal(a.mask, b.mask), f"kept sets differ: {int(a.mask.sum())} vs {int(b.mask.sum())}"
    assert torch.equal(a.effects.isnan(), b.effects.isnan()), "different edges were tested"
    diff = torch.nan_to_num(a.effects - b.effects).abs().max().item()
    assert diff <= 1e-5, f"effects differ by {diff}"
    assert a.edges_tested == b.edges_tested
    strip = [{k: v for k, v in e.items() if k not in ("loss", "elapsed_s")} for e in a.trace]
    assert strip == [{k: v for k, v in e.items() if k not in ("loss", "elapsed_s")} for e in b.trace]
    assert [e["loss"] for e in a.trace] == pytest.approx([e["loss"] for e in b.trace], abs=1e-5)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize(
    "metric,tau,absolute,order",
    [
        ("kl", 0.002, False, "normal"),
        ("kl", 0.02, False, "reverse"),
        ("logit_diff", 0.01, False, "normal"),
        ("logit_diff", 0.05, True, "normal"),
        ("logit_diff", 0.0, False, "reverse"),
    ],
)
def test_fast_equals_plain(name, metric, tau, absolute, order):
    problem = _problem(name, metric)
    opts = AcdcOptions(threshold=tau, absolute=absolute, sender_order=SenderOrder(order), batch_size=4)
    plain = run_acdc_plain(problem, opts)
    fast = run_acdc_fast(problem, opts)
    _assert_same(plain, fast)
    assert fast.forward_passes < plain.forward_passes

def test_fast_evaluator_losses_before_start_layer_are_full_forwards():
    # before start_layer() the evaluator has no visited layer: candidates run from the embedding (this passed
    # start_layer=None to the forward, which cannot restart at None)
    p = _problem("gpt2")
    g = p.pm.graph
    masks = torch.stack([g.full_mask(), g.mask_of(g.edge_names[: g.n_edges // 2])])  # (2, S, R)
    with torch.no_grad():
        want = torch.stack([loss_at(p, m) for m in masks]).double()
    got = FastEvaluator(p, masks=2).losses(masks).double()
    assert float((want[0] - want[1]).abs()) > 1e-3  # the two masks differ in loss
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)



@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_batch_size_does_not_change_the_result(batch_size):
    problem = _problem("gpt2", "logit_diff")
    ref = run_acdc_plain(problem, AcdcOptions(threshold=0.01))
    _assert_same(ref, run_acdc_fast(problem, AcdcOptions(threshold=0.01, batch_size=batch_size)))


def test_mean_and_zero_ablation_fast_equals_plain():
    for ablation in ("mean", "zero"):
        problem = _problem("llama", "kl", ablation)
        opts = AcdcOptions(threshold=0.01, batch_size=4)
        _assert_same(run_acdc_plain(problem, opts), run_acdc_fast(problem, opts))


def test_threshold_zero_keeps_exactly_the_edges_whose_removal_hurts():
    state = run_acdc_fast(_problem("gpt2", "logit_diff"), AcdcOptions(threshold=0.0))
    tested = ~state.effects.isnan()
    kept = state.mask & tested
    assert torch.equal(kept, tested & (state.effects >= 0))
    assert int(tested.sum()) > 0 and int(kept.sum()) > 0 and int((tested & ~state.mask).sum()) > 0


def test_infinite_threshold_keeps_nothing():
    state = run_acdc_fast(_problem("neox"), AcdcOptions(threshold=math.inf))
    assert int(state.mask.sum()) == 0


def test_orders_follow_the_reference():
    g = Graph(2, 3)
    names = [g.receivers[r].name for r in receiver_order(g)][:9]
    assert names == ["logits", "m1", "a1.h2<v>", "a1.h1<v>", "a1.h0<v>", "a1.h2<k>", "a1.h1<k>", "a1.h0<k>", "a1.h2<q>"]
    senders = [g.senders[s].name for s in sender_order(g, g.logits_receiver)]
    assert senders[:5] == ["m1", "a1.h2", "a1.h1", "a1.h0", "m0"] and senders[-1] == "input"
    rev = [g.senders[s].name for s in sender_order(g, g.mlp_receiver(1), SenderOrder.REVERSE)]
    assert rev == ["input", "a0.h0", "a0.h1", "a0.h2", "m0", "a1.h0", "a1.h1", "a1.h2"]


def test_dead_nodes_are_skipped_untested():
    state = run_acdc_fast(_problem("gpt2"), AcdcOptions(threshold=0.05))
    g = Graph(3, 4)
    for layer in range(3):
        for h in range(4):
            s = g.head_sender(layer, h)
            if not state.mask[s].any():  # no outgoing edge left: all inputs removed, none tested
                for ch in "qkv":
                    r = g.head_receiver(layer, h, ch)
                    assert not state.mask[:, r].any()
                    assert state.effects[:, r].isnan().all()


def test_discover_metrics_agree_with_the_patched_forward():
    model = MODELS["gpt2"]
    task = _task()
    circuit = cf.discover(model, task, threshold=0.01, metric="logit_diff", progress=False)
    pm = PatchableModel(model)
    abl = pm.ablation("resample", task.corrupted_ids, task.attention_mask)
    rows = torch.arange(N)

    def ld(mask):
        with torch.no_grad():
            lg = pm.forward(task.clean_ids, abl, mask, attention_mask=task.attention_mask)[rows, task.answer_pos]
        return float((lg[rows, task.answers[:, 0]] - lg[rows, task.wrong_answers[:, 0]]).mean())

    assert circuit.metric_full == pytest.approx(ld(pm.graph.full_mask()), abs=1e-5)
    assert circuit.metric_empty == pytest.approx(ld(torch.zeros_like(pm.graph.full_mask())), abs=1e-5)
    assert circuit.metric_circuit == pytest.approx(ld(circuit.mask), abs=1e-5)
    assert circuit.stats["edges_tested"] > 0 and circuit.stats["forward_passes"] > 0
    assert circuit.config["threshold"] == 0.01

    # the drift trace: one entry per layer of receivers, logits first, ending at the circuit itself
    trace = circuit.stats["trace"]
    assert [e["layer"] for e in trace] == list(range(pm.graph.n_layers, -1, -1))
    assert trace[-1]["metric"] == pytest.approx(circuit.metric_circuit, abs=1e-5)
    assert trace[-1]["edges_kept"] == circuit.n_edges and trace[-1]["edges_tested"] == circuit.stats["edges_tested"]
    assert trace[-1]["receivers_done"] == pm.graph.n_receivers
    kept = [e["edges_kept"] for e in trace]
    assert kept == sorted(kept, reverse=True) and kept[0] <= pm.graph.n_edges
    assert trace[0]["receivers_done"] == 1  # the logits receiver alone
    only_logits = pm.graph.full_mask()
    only_logits[:, -1] = circuit.mask[:, -1]
    # after the logits receiver the subgraph is the full graph minus the removed edges into the logits
    assert trace[0]["metric"] == pytest.approx(ld(only_logits), abs=1e-5)


def test_logit_diff_on_answer_columns_equals_the_full_vocabulary_metric():
    """discover() unembeds only the answer tokens for logit difference; a callable on full logits agrees."""
    model, task = MODELS["llama"], _task()
    task.answers[0] = torch.tensor([task.wrong_answers[1, 0]])  # a token that is right here and wrong elsewhere
    rows = torch.arange(N)

    def neg_logit_diff(lg):  # (B, V) full vocabulary; a loss to minimise
        return -(lg[rows, task.answers[:, 0]] - lg[rows, task.wrong_answers[:, 0]]).mean()

    fast = cf.discover(model, task, threshold=0.01, metric="logit_diff", progress=False)
    full = cf.discover(model, task, threshold=0.01, metric=neg_logit_diff, progress=False)
    assert fast.n_edges == full.n_edges and torch.equal(fast.mask, full.mask)
    tested = ~fast.scores.isnan()
    assert torch.equal(tested, ~full.scores.isnan())
    assert torch.allclose(fast.scores[tested], full.scores[tested], atol=1e-5)


def test_plain_method_through_discover_matches_fast():
    model, task = MODELS["llama"], _task()
    a = cf.discover(model, task, threshold=0.01, progress=False)
    b = cf.discover(model, task, threshold=0.01, method="acdc-plain", progress=False)
    assert torch.equal(a.mask, b.mask)


def test_resume_after_interruption_gives_the_same_circuit(tmp_path, monkeypatch):
    import circuitfind.algorithms.checkpoint as ckpt_mod

    model, task = MODELS["neox"], _task()
    full = cf.discover(model, task, threshold=0.01, progress=False)
    ckpt = tmp_path / "run.ckpt"
    monkeypatch.setattr(ckpt_mod, "CHECKPOINT_EVERY_S", 0.0)
    calls = {"n": 0}
    original = ckpt_mod.Checkpointer.update

    def interrupting_update(self, state):
        original(self, state)
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt

    monkeypatch.setattr(ckpt_mod.Checkpointer, "update", interrupting_update)
    with pytest.raises(KeyboardInterrupt):
        cf.discover(model, task, threshold=0.01, progress=False, checkpoint=ckpt)
    assert ckpt.exists()
    monkeypatch.setattr(ckpt_mod.Checkpointer, "update", original)
    resumed = cf.discover(model, task, threshold=0.01, progress=False, checkpoint=ckpt, resume=True)
    assert torch.equal(resumed.mask, full.mask)
    assert torch.equal(resumed.scores.isnan(), full.scores.isnan())
    assert torch.nan_to_num(resumed.scores - full.scores).abs().max() <= 1e-6
    assert [e["edges_kept"] for e in resumed.stats["trace"]] == [e["edges_kept"] for e in full.stats["trace"]]


def test_resume_refuses_a_checkpoint_of_another_run(tmp_path):
    model, task = MODELS["gpt2"], _task()
    ckpt = tmp_path / "run.ckpt"
    cf.discover(model, task, threshold=0.01, progress=False, checkpoint=ckpt)
    with pytest.raises(cf.errors.CheckpointError, match="different run"):
        cf.discover(model, task, threshold=0.02, progress=False, checkpoint=ckpt, resume=True)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"threshold": -0.1}, ConfigError, "threshold"),
        ({"threshold": float("nan")}, ConfigError, "threshold"),
        ({"threshold": "high"}, ConfigError, "threshold"),
        ({"method": "magic"}, ConfigError, "unknown method"),
        ({"metric": "accuracy"}, ConfigError, "unknown metric"),
        ({"ablation": "gaussian"}, ConfigError, "unknown ablation"),
        ({"sender_order": "random"}, ConfigError, "sender_order"),
    ],
)
def test_bad_options_raise_clear_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        cf.discover(MODELS["gpt2"], _task(), progress=False, **{"threshold": 0.01, **kwargs})


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"batch_size": True}, r"batch_size .*must be a positive integer.*True"),
        ({"batch_size": 0}, r"batch_size .*must be a positive integer.*0"),
        ({"absolute": "no"}, r"absolute must be True or False; got 'no'"),
    ],
)
def test_bad_option_types_are_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        cf.discover(tiny_gpt2(), random_task(), progress=False, **kwargs)

def test_bad_tasks_raise_clear_errors():
    model = MODELS["gpt2"]
    t = _task()
    with pytest.raises(TaskError):
        cf.discover(model, {"clean_ids": t.clean_ids[:0], "corrupted_ids": t.corrupted_ids[:0]}, progress=False)
    with pytest.raises(TaskError):  # clean and corrupted of different lengths
        cf.discover(model, {"clean_ids": t.clean_ids, "corrupted_ids": t.corrupted_ids[:, :-1]}, progress=False)
    with pytest.raises(TaskError, match="tokenizer"):
        cf.discover(model, {"clean": ["a b"], "corrupted": ["c d"]}, progress=False)


# --- on the tracr models, against their compiled circuits ------------------------------------------------------
# ACDC recovers the compiled circuits of the tracr models (the ACDC paper reports AUC 1.0 for both).
#
# Zero ablation: ACDC finds exactly ``ground_truth_acdc`` (the RASP data flow plus the auxiliary edges whose
# zeroing matters) at every threshold of the sweep but the top one, so AUC = 1.
#
# Resample ablation pairs each input with another input of the same length, at the same positions. Whatever is
# the same in both -- positions (``indices``) and, for reverse, the length -- cannot be changed by resampling,
# so the edges that carry only that are invisible to it, whatever the threshold. ACDC then finds exactly the
# input-dependent part of ``ground_truth`` and nothing else (no false positive), which caps the AUC against the
# full data flow: 2 of 8 edges for reverse (AUC 0.625), 3 of 5 for proportion (AUC 0.8).
THRESHOLDS = (1e-3, 1e-2)
SEQUENCES = {"reverse": None, "proportion": 16}  # reverse: all 27 inputs; proportion: a sample (speed)

# the ground-truth edges that carry token information (the only ones resampling changes)
RESAMPLE_VISIBLE = {
    "reverse": {"input->a3.h0<v>", "a3.h0->logits"},  # reverse(i) = token at length-1-i, length fixed at 3
    "proportion": {"input->m0", "m0->a1.h0<v>", "a1.h0->logits"},  # q/k read only indices
}
RESAMPLE_AUC = {"reverse": 0.625, "proportion": 0.8}


@pytest.fixture(scope="module", params=sorted(SEQUENCES))
def tracr(request):
    return tracr_setup(request.param, n_sequences=SEQUENCES[request.param], seed=0)


def _sweep(tracr, ablation):
    circuits = [
        cf.discover(tracr.pm, tracr.task, threshold=t, metric=tracr.metric, ablation=ablation, progress=False)
        for t in THRESHOLDS
    ]
    key, truth = tracr_ground_truth(tracr.meta, ablation)
    g = tracr.pm.graph
    truth_mask = g.mask_of(truth)
    fpr, tpr = roc_from_circuits([c.mask for c in circuits], truth_mask, g.edge_mask)
    return circuits, truth_mask, auc(fpr, tpr)


def test_zero_ablation_recovers_the_circuit(tracr):
    circuits, truth, area = _sweep(tracr, "zero")
    found = [c for c in circuits if torch.equal(c.mask, truth)]
    print(f"tracr-{tracr.name} zero: AUC {area:.3f}; sizes {[c.n_edges for c in circuits]} vs {int(truth.sum())}")
    assert area >= 0.95
    assert found, f"no threshold recovered the circuit exactly: {[c.edge_names for c in circuits]}"


def test_resample_ablation_finds_the_input_dependent_part(tracr):
    circuits, truth, area = _sweep(tracr, "resample")
    print(f"tracr-{tracr.name} resample: AUC {area:.3f} against ground_truth")
    for c in circuits:
        assert not bool((c.mask & ~truth).any()), (
            f"false positives: {set(c.edge_names) - set(tracr.meta['ground_truth'])}"
        )
        assert set(c.edge_names) == RESAMPLE_VISIBLE[tracr.name]
    assert area == pytest.approx(RESAMPLE_AUC[tracr.name])
