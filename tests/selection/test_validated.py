"""The validated cut: sizes checked only on prompts the scores never saw, the stable-size search, adding back
negative edges (two-sided faithfulness), and ``select="train"`` as before.

The cross-fit is recomputed here from the public API: each fold's scores from ``discover`` on that fold alone,
its top-k circuits pruned with ``prune_dangling``, and the logit difference on the other fold written out by hand
on logits from ``pm.forward``.
"""

from __future__ import annotations

import pytest
import torch

import circuitfind as cf
from circuitfind.errors import ConfigError
from circuitfind.graph import Graph
from circuitfind.selection.cuts import prune_dangling, top_n
from circuitfind.selection.validated import add_back, fold_indices, smallest_stable
from circuitfind.tasks import Task
from tests.toy_problems import PMS, natural_task

PM = PMS["gpt2"]


def _planted() -> Task:
    """10 prompts of two kinds, interleaved: even prompts from one random draw, odd ones from another, so that the
    two folds' rankings, and each fold's faithfulness curve, differ."""
    a, b = natural_task(PM, 0), natural_task(PM, 1)

    def mix(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.stack([(x if i % 2 == 0 else y)[i // 2] for i in range(10)])

    fields = ("clean_ids", "corrupted_ids", "attention_mask", "answer_pos", "answers", "wrong_answers")
    return Task("planted", *(mix(getattr(a, f), getattr(b, f)) for f in fields))


TASK = _planted()
TARGET = 0.6


def _per_prompt(task: Task, mask: torch.Tensor) -> torch.Tensor:
    """``(B,)`` logit difference of each prompt, by hand, under resample ablation."""
    abl = PM.ablation("resample", task.corrupted_ids, task.attention_mask)
    with torch.no_grad():
        logits = PM.forward(task.clean_ids, abl, mask, attention_mask=task.attention_mask, positions=task.answer_pos)
    rows = torch.arange(len(task))
    return (logits[rows, task.answers[:, 0]] - logits[rows, task.wrong_answers[:, 0]]).double()


def _discover(task: Task, **kwargs) -> cf.Circuit:
    return cf.discover(PM, task, **{"method": "eap-ig", "metric": "logit_diff", "progress": False, **kwargs})


@pytest.fixture(scope="module")
def cross_fit():
    """The validation faithfulness of size k, recomputed from the folds' own scores: f(k) pooled over prompts."""
    g, n = PM.graph, len(TASK)
    folds = fold_indices(n)
    assert len(folds) == 4 and sorted(torch.cat(folds).tolist()) == list(range(n))  # a partition, 4 folds
    checks = [TASK.subset(idx) for idx in folds]
    # each fold's ranking is scored on every prompt outside it
    rest = [TASK.subset([i for i in range(n) if i not in idx.tolist()]) for idx in folds]
    scores = [_discover(t, n_edges=1).scores for t in rest]
    full = torch.cat([_per_prompt(t, g.full_mask()) for t in checks])
    empty = torch.cat([_per_prompt(t, torch.zeros_like(g.edge_mask)) for t in checks])

    def f(k: int) -> float:
        c = torch.cat([_per_prompt(t, prune_dangling(g, top_n(g, s, k))) for t, s in zip(checks, scores, strict=True)])
        return float((c.mean() - empty.mean()) / (full.mean() - empty.mean()))

    return f


def test_validated_cut_checks_sizes_only_on_prompts_the_scores_never_saw(cross_fit):
    train = _discover(TASK, target=TARGET, select="train")
    val = _discover(TASK, target=TARGET)  # select="validate" is the default
    k0, probes = val.stats["k_crossing"], val.stats["validation"]["probes"]
    k = val.stats["k"]
    assert k == min(PM.graph.n_edges, 2 * k0)  # the margin: twice the crossing
    assert val.stats["select"] == "validate" and val.config["select"] == "validate"
    # every probe's validation figure is the cross-fit recomputed by hand (none used a fold's own prompts)
    for p in probes:
        assert p["faithfulness"] == pytest.approx(cross_fit(p["k"]), abs=1e-9), p["k"]
    # the planted disagreement: the train rule's size fails on the validation prompts, so the answers differ
    assert cross_fit(train.stats["k"]) < TARGET <= cross_fit(k0) and k0 != train.stats["k"]
    # k0 is the smallest probed size that passes with every larger probe passing too; a size within 5% below it
    # (bisection's tolerance) was probed and failed
    by_k = {p["k"]: p["faithfulness"] for p in probes}
    assert all(f >= TARGET for kk, f in by_k.items() if kk >= k0)
    assert max(kk for kk, f in by_k.items() if kk < k0 and f < TARGET) >= min(k0 - 1, 0.95 * k0)
    assert val.stats["validation"]["faithfulness"] == pytest.approx(cross_fit(k), abs=1e-9)
    # the circuit is the top k of the scores on all discovery prompts, pruned; its f on them is reported
    g = PM.graph
    assert torch.equal(val.mask, prune_dangling(g, top_n(g, val.scores.double(), k)))
    full, empty, mine = (_per_prompt(TASK, m).mean() for m in (g.full_mask(), torch.zeros_like(g.edge_mask), val.mask))
    assert val.stats["faithfulness"] == pytest.approx(float((mine - empty) / (full - empty)), abs=1e-9)
    lo, hi = val.stats["validation"]["ci"]
    assert lo <= val.stats["validation"]["faithfulness"] <= hi


def test_confidence_chooses_by_the_lower_bound(cross_fit):
    point = _discover(TASK, target=TARGET)
    sure = _discover(TASK, target=TARGET, confidence=0.75)
    k0 = sure.stats["k_crossing"]
    chosen = next(p for p in sure.stats["validation"]["probes"] if p["k"] == k0)
    assert chosen["ci_level"] == pytest.approx(0.5) and chosen["decision"] == chosen["ci"][0] >= TARGET
    assert k0 >= point.stats["k_crossing"]
    assert all(p["decision"] >= TARGET for p in sure.stats["validation"]["probes"] if p["k"] >= k0)


def test_select_train_reproduces_the_cut_on_the_scoring_prompts():
    # the rule before validation, by hand: bisection probes on all discovery prompts, k - 1 falls short
    circuit = _discover(TASK, target=TARGET, select="train")
    g, k = PM.graph, circuit.stats["k"]
    full, empty = (_per_prompt(TASK, m).mean() for m in (g.full_mask(), torch.zeros_like(g.edge_mask)))

    def f(mask: torch.Tensor) -> float:
        return float((_per_prompt(TASK, mask).mean() - empty) / (full - empty))

    scores = circuit.scores.double()
    assert torch.equal(circuit.mask, prune_dangling(g, top_n(g, scores, k)))
    assert f(circuit.mask) >= TARGET > f(prune_dangling(g, top_n(g, scores, k - 1)))
    assert "validation" not in circuit.stats and circuit.config["select"] == "train"


def test_hybrid_keeps_its_guarantee_and_reports_the_cross_fitted_figure():
    circuit = _discover(TASK, method="hybrid", target=TARGET)
    g = PM.graph
    full, empty, mine = (
        _per_prompt(TASK, m).mean() for m in (g.full_mask(), torch.zeros_like(g.edge_mask), circuit.mask)
    )
    assert float((mine - empty) / (full - empty)) >= TARGET  # the guarantee, on the discovery prompts
    folds = fold_indices(len(TASK))
    checks = [TASK.subset(idx) for idx in folds]
    rest = [TASK.subset([i for i in range(len(TASK)) if i not in idx.tolist()]) for idx in folds]
    masks = [_discover(t, method="hybrid", target=TARGET, select="train").mask for t in rest]
    c = torch.cat([_per_prompt(t, m) for t, m in zip(checks, masks, strict=True)])
    n = torch.cat([_per_prompt(t, g.full_mask()) for t in checks])
    e = torch.cat([_per_prompt(t, torch.zeros_like(g.edge_mask)) for t in checks])
    val = circuit.stats["validation"]
    assert val["faithfulness"] == pytest.approx(float((c.mean() - e.mean()) / (n.mean() - e.mean())), abs=1e-9)
    assert val["fold_edges"] == [int(m.sum()) for m in masks]


def test_too_few_prompts_for_two_folds_fall_back_to_the_train_rule_and_say_so():
    small = TASK.subset([0, 1, 2])
    circuit = _discover(small, target=TARGET)
    assert circuit.config["select"] == "train" and "too few" in circuit.config["select_note"]
    assert "validation" not in circuit.stats


# --- the search ----------------------------------------------------------------------------------------------
def test_smallest_stable_skips_a_spike_that_does_not_hold():
    # passes at 16 only by a spike (fails at 32); the curve holds from 41 on
    calls: list[int] = []

    def passes(k: int) -> bool:
        calls.append(k)
        return k == 16 or k >= 41

    assert smallest_stable(passes, lo=1, hi=1000, first=8, confirm=2) == (41, True)
    assert calls[:5] == [8, 16, 32, 64, 128]  # galloping ends after two passing sizes in a row


def test_smallest_stable_on_a_monotone_curve_is_the_first_passing_size():
    for answer in (1, 7, 8, 9, 100, 1000):
        assert smallest_stable(lambda k, a=answer: k >= a, lo=1, hi=1000, first=8, confirm=2) == (answer, True)
    assert smallest_stable(lambda k: False, lo=1, hi=50, first=8, confirm=2) == (50, False)
    # with a tolerance bisection stops within 5% of the answer, on a passing size
    k, found = smallest_stable(lambda k: k >= 700, lo=1, hi=5000, first=16, confirm=2, tol=0.05)
    assert found and 700 <= k <= 700 / 0.95


# --- two-sided: adding back negative edges -------------------------------------------------------------------
def _slow_add_back(g: Graph, mask: torch.Tensor, scores: torch.Tensor, m: int) -> torch.Tensor:
    """Most negative excluded edge first, each once; kept when prune_dangling keeps it in mask + edge."""
    mask = prune_dangling(g, mask)
    cand = [(float(scores[s, r]), s, r) for s, r in (g.edge_mask & ~mask & (scores < 0)).nonzero().tolist()]
    added = 0
    for _, s, r in sorted(cand, key=lambda c: c[0]):
        if added == m:
            break
        trial = mask.clone()
        trial[s, r] = True
        if prune_dangling(g, trial)[s, r]:
            mask, added = prune_dangling(g, trial), added + 1
    return mask


@pytest.mark.parametrize("seed", range(6))
def test_add_back_matches_pruning_each_candidate(seed):
    g = Graph(n_layers=3, n_heads=2)
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(g.n_senders, g.n_receivers, generator=gen, dtype=torch.float64)
    mask = prune_dangling(g, top_n(g, scores, 12))
    for m in (1, 3, 10, 10_000):  # the last: more than there are candidates (the loop still ends)
        fast = add_back(g, mask, scores, m, from_input=True)
        assert torch.equal(fast, _slow_add_back(g, mask, scores, m)), m
        assert torch.equal(prune_dangling(g, fast), fast) and bool((fast >= mask).all())


def test_band_adds_back_negative_edges_until_the_circuit_stops_over_recovering():
    # at target 1.0 the train cut of the planted task over-recovers (f 1.05): upper 1.015 needs edges added back
    free = _discover(TASK, target=1.0, select="train")
    upper = 1.015
    assert free.stats["faithfulness"] > upper
    banded = _discover(TASK, band=(1.0, upper), select="train")
    g, m = PM.graph, banded.stats["m"]
    full, empty, mine = (
        _per_prompt(TASK, x).mean() for x in (g.full_mask(), torch.zeros_like(g.edge_mask), banded.mask)
    )
    f = float((mine - empty) / (full - empty))
    assert m >= 1 and banded.stats["in_band"] and 1.0 <= f <= upper
    assert banded.stats["faithfulness"] == pytest.approx(f, abs=1e-9)
    # the circuit is the train cut plus the m most negative edges that survive pruning; m - 1 was too few
    assert torch.equal(banded.mask, _slow_add_back(g, free.mask, free.scores.double(), m))
    probes = {p["m"]: p["faithfulness"] for p in banded.stats["probes"] if p.get("stage") == "band"}
    assert probes[m] <= upper and (m == 1 or probes[m - 1] > upper)
    assert banded.stats["k"] == free.stats["k"]


def test_band_that_no_addition_reaches_keeps_the_nearest_and_says_so():
    from circuitfind.selection.validated import band_on_train

    g = Graph(n_layers=1, n_heads=1)
    s = torch.zeros(g.n_senders, g.n_receivers, dtype=torch.float64)
    for name, v in (("input->logits", -3.0), ("input->a0.h0<q>", -2.0), ("a0.h0->logits", -1.0)):
        s[g.edge_index(name)] = v
    base = g.mask_of(["input->m0", "m0->logits"])
    f_of = {2: 1.5, 3: 1.3, 4: 1.4, 5: 1.6}  # by edges kept: never reaches 1.25, nearest with one edge added
    mask, m, ok = band_on_train(g, s, base, lambda x: f_of[int(x.sum())], 1.25, lower=0.8)
    assert (m, ok, int(mask.sum())) == (1, False, 3)


def test_fold_and_option_errors_say_what_to_do():
    with pytest.raises(ConfigError, match="select='train'"):
        fold_indices(3)
    with pytest.raises(ConfigError, match="select must be one of"):
        _discover(TASK, target=TARGET, select="holdout")
    with pytest.raises(ConfigError, match="band"):
        _discover(TASK, band=(0.8, 0.9))
    with pytest.raises(ConfigError, match="confidence"):
        _discover(TASK, target=TARGET, confidence=1.5)
    with pytest.raises(ConfigError, match="band"):
        _discover(TASK, n_edges=5, band=(0.8, 1.25))
