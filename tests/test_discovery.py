"""``discover`` with the scoring and hybrid methods: cuts, dangling-edge pruning, the hybrid's guarantee, bad input.

Every faithfulness here is recomputed independently: the logit difference written out by hand on logits from
``pm.forward`` (:func:`tests.toy_problems.logit_diff_faithfulness`), on the prompts discovery used.
"""

from __future__ import annotations

import pytest
import torch

import circuitfind as cf
from circuitfind.algorithms import EapOptions, HybridOptions, run_eap, run_eap_ig
from circuitfind.engine.patchable import PatchableModel
from circuitfind.errors import ConfigError
from circuitfind.selection.cuts import above_threshold, prune_dangling, top_n
from circuitfind.tasks import Task
from tests.models_tiny import VOCAB, randomize_biases, tiny_gpt2
from tests.toy_problems import NAMES, PMS, logit_diff_faithfulness, natural_task, problem_of

TASKS = {name: natural_task(PMS[name]) for name in NAMES}


def _discover(name: str, **kwargs) -> cf.Circuit:
    return cf.discover(PMS[name], TASKS[name], metric="logit_diff", progress=False, **kwargs)


def _faith(name: str, mask: torch.Tensor, ablation: str = "resample") -> float:
    return logit_diff_faithfulness(PMS[name], TASKS[name], mask, ablation)


def _logits(problem, mask: torch.Tensor) -> torch.Tensor:
    p = problem
    with torch.no_grad():
        return p.pm.forward(p.clean_ids, p.ablated, mask, attention_mask=p.attention_mask, positions=p.positions)


# --- cuts ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("target", [0.6, 0.9])
def test_target_gives_the_smallest_faithful_cut(name, target):
    circuit = _discover(name, method="eap-ig", target=target, select="train")  # the rule before validation
    g = PMS[name].graph
    k, probes = circuit.stats["k"], circuit.stats["probes"]
    assert circuit.stats["reached"]
    assert _faith(name, circuit.mask) >= target
    # the cut is the top k of EAP-IG (5 steps) with dangling edges pruned, recomputed here
    scores = run_eap_ig(problem_of(name, "logit_diff", task=TASKS[name]), EapOptions(steps=5)).scores
    assert torch.equal(circuit.mask, prune_dangling(g, top_n(g, scores, k)))
    # ... and the next smaller probe, k - 1, falls short (bisection ends on adjacent probes)
    assert k > 1, "the toy task is too easy to show a failing probe"
    smaller = [p for p in probes if p["k"] == k - 1]
    assert len(smaller) == 1 and smaller[0]["faithfulness"] < target
    f_smaller = _faith(name, prune_dangling(g, top_n(g, scores, k - 1)))
    assert f_smaller == pytest.approx(smaller[0]["faithfulness"], abs=1e-6) and f_smaller < target
    # every probe's recorded faithfulness is the exact one
    for p in probes[:4]:
        assert _faith(name, prune_dangling(g, top_n(g, scores, p["k"]))) == pytest.approx(p["faithfulness"], abs=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_n_edges_and_threshold_cut_the_ranking(name):
    g = PMS[name].graph
    scores = run_eap(problem_of(name, "logit_diff", task=TASKS[name])).scores
    for n in (1, 7, 40):
        circuit = _discover(name, method="eap", n_edges=n)
        assert circuit.n_edges <= n
        assert torch.equal(circuit.mask, prune_dangling(g, top_n(g, scores, n)))
    tau = float(scores[g.edge_mask].quantile(0.8))
    circuit = _discover(name, method="eap", threshold=tau)
    assert torch.equal(circuit.mask, prune_dangling(g, above_threshold(g, scores, tau)))
    assert circuit.stats["selected_before_pruning"] == int(above_threshold(g, scores, tau).sum())


# --- dangling edges ------------------------------------------------------------------------------------------
def _cuts(name: str, problem) -> list[torch.Tensor]:
    g = PMS[name].graph
    scores = run_eap(problem).scores
    return [top_n(g, scores, n) for n in (5, 15, 40, 100)]


@pytest.mark.parametrize("name", NAMES)
def test_pruning_dangling_edges_leaves_the_patched_logits_unchanged(name):
    g = PMS[name].graph
    p = problem_of(name, "logit_diff", task=TASKS[name])
    dropped = 0
    for mask in _cuts(name, p):
        pruned = prune_dangling(g, mask)
        dropped += int(mask.sum() - pruned.sum())
        torch.testing.assert_close(_logits(p, pruned), _logits(p, mask), rtol=0, atol=1e-10)
    assert dropped > 0, "nothing was pruned: the test proves nothing"


@pytest.mark.parametrize("name", NAMES)
def test_mean_ablation_needs_from_input_false(name):
    """Under mean ablation a node no kept path from the input reaches still computes f(mean inputs), not
    mean(f(inputs)): its diff is not zero, so dropping its edges (``from_input=True``) changes the logits.
    Dropping only the edges that reach no logits stays exact."""
    g = PMS[name].graph
    p = problem_of(name, "logit_diff", ablation="mean", task=TASKS[name])
    changed = dropped = 0
    for mask in _cuts(name, p):
        reachable = prune_dangling(g, mask, from_input=False)
        dropped += int(mask.sum() - reachable.sum())
        torch.testing.assert_close(_logits(p, reachable), _logits(p, mask), rtol=0, atol=1e-10)
        also_from_input = prune_dangling(g, mask, from_input=True)
        if not torch.equal(also_from_input, reachable):
            changed += float((_logits(p, also_from_input) - _logits(p, mask)).abs().max()) > 1e-4
    assert dropped > 0, "no edge reaching no logits was pruned: the test proves nothing"
    assert changed > 0, "from_input pruning never changed the logits under mean ablation"
    # discover knows: under mean ablation its cuts prune with from_input=False
    n = 15
    circuit = cf.discover(
        PMS[name], TASKS[name], method="eap", n_edges=n, metric="logit_diff", ablation="mean", progress=False
    )
    assert torch.equal(circuit.mask, prune_dangling(g, top_n(g, run_eap(p).scores, n), from_input=False))


# --- hybrid --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_hybrid_meets_its_target(name):
    target = 0.8
    circuit = _discover(name, method="hybrid", target=target)
    stats = circuit.stats
    f = _faith(name, circuit.mask)
    assert f >= target and stats["reached"]
    assert stats["faithfulness"] == pytest.approx(f, abs=1e-6)
    stages = {p["stage"] for p in stats["probes"]}
    assert {"candidates", "pruned"} <= stages
    assert circuit.n_edges <= stats["candidates"] < PMS[name].graph.n_edges
    pruned = next(p for p in stats["probes"] if p["stage"] == "pruned")
    assert stats["pruned_edges"] == pruned["n_edges_after_prune"]


@pytest.mark.parametrize("name", NAMES)
def test_hybrid_repair_adds_edges_back_when_pruning_undershoots(name):
    target = 0.8
    circuit = _discover(name, method="hybrid", target=target, threshold=1e9)  # ACDC removes every candidate
    stats = circuit.stats
    pruned = next(p for p in stats["probes"] if p["stage"] == "pruned")
    assert stats["pruned_edges"] == 0 and pruned["faithfulness"] < target
    assert stats["added_back"] > 0 and stats["reached"]
    assert any(p["stage"] == "repair" for p in stats["probes"])
    assert _faith(name, circuit.mask) >= target
    assert circuit.n_edges <= stats["candidates"]


# --- bad input -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [0, 1.5, -1, True, "0.8", float("nan")])
@pytest.mark.parametrize("method", ["eap-ig", "hybrid", "acdc"])
def test_target_outside_zero_one_is_refused(bad, method):
    with pytest.raises(ConfigError, match="target"):
        _discover("gpt2", method=method, target=bad)
    with pytest.raises(ConfigError, match="target"):
        HybridOptions(target=bad)


@pytest.mark.parametrize("bad", [0, -3, True, 2.0, "5"])
def test_n_edges_must_be_a_positive_int(bad):
    with pytest.raises(ConfigError, match="n_edges"):
        _discover("gpt2", method="eap", n_edges=bad)


def test_n_edges_beyond_the_graph_is_refused():
    n = PMS["gpt2"].graph.n_edges
    assert _discover("gpt2", method="eap", n_edges=n).n_edges <= n
    with pytest.raises(ConfigError, match=f"between 1 and {n}"):
        _discover("gpt2", method="eap", n_edges=n + 1)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "5"])
@pytest.mark.parametrize("method", ["eap-ig", "eap-ig-mask", "eap-ig-act", "hybrid"])
def test_steps_must_be_a_positive_int(bad, method):
    with pytest.raises(ConfigError, match="steps"):
        _discover("gpt2", method=method, steps=bad)
    with pytest.raises(ConfigError, match="steps"):
        run_eap_ig(problem_of("gpt2"), EapOptions(steps=bad))


def test_steps_none_is_the_methods_default():
    assert _discover("gpt2", method="eap-ig", n_edges=5).config["steps"] == 5  # integration steps
    assert _discover("gpt2", method="edge-pruning", n_edges=5, steps=None).config["steps"] == 200  # training steps


def test_unknown_method_is_refused():
    for bad in ("eap_ig", "EAP", "integrated-gradients", ""):
        with pytest.raises(ConfigError, match="unknown method"):
            _discover("gpt2", method=bad)


@pytest.mark.parametrize("method", ["eap", "eap-ig", "eap-ig-mask", "exact"])
@pytest.mark.parametrize(
    "two", [{"threshold": 0.1, "n_edges": 5}, {"threshold": 0.1, "target": 0.8}, {"n_edges": 5, "target": 0.8}]
)
def test_a_scoring_method_takes_one_cut(method, two):
    with pytest.raises(ConfigError, match="one of threshold, n_edges or target"):
        _discover("gpt2", method=method, **two)


def test_hybrid_takes_no_n_edges():
    with pytest.raises(ConfigError, match="n_edges"):
        _discover("gpt2", method="hybrid", n_edges=5)


# --- what discover records: each metric of the HF model's logits at every prompt's own answer position ----------
# The full circuit is the clean run and, under resample ablation, the empty circuit is the corrupted run
# (REFERENCE §2), so both recorded values can be computed by hand from HF's logits.
N, T = 3, 6
MASK = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0]])  # right padding
POS = torch.tensor([5, 3, 4])  # each prompt's last real token
ANSWERS = torch.tensor([[7, -1], [8, 9], [10, -1]])
WRONG = torch.tensor([[11, 12, 13], [14, -1, -1], [15, 16, -1]])


def _ids(seed: int) -> torch.Tensor:
    return torch.randint(1, VOCAB, (N, T), generator=torch.Generator().manual_seed(seed)) * MASK


def _at_answers(model, ids: torch.Tensor) -> torch.Tensor:
    """``(N, V)``: HF's logits at each prompt's answer position."""
    with torch.no_grad():
        logits = model(ids, attention_mask=MASK, position_ids=(MASK.cumsum(-1) - 1).clamp(min=0)).logits
    return torch.stack([logits[n, POS[n]] for n in range(N)])


def _valid(row: torch.Tensor) -> list[int]:
    return [int(i) for i in row if i >= 0]


def _logit_diff(logits: torch.Tensor) -> float:
    return sum(float(logits[n, _valid(ANSWERS[n])].mean() - logits[n, _valid(WRONG[n])].mean()) for n in range(N)) / N


def _prob_diff(logits: torch.Tensor) -> float:
    probs = logits.softmax(-1)
    return sum(float(probs[n, _valid(ANSWERS[n])].sum() - probs[n, _valid(WRONG[n])].sum()) for n in range(N)) / N


def _kl(clean: torch.Tensor, circuit: torch.Tensor) -> float:
    p, q = clean.log_softmax(-1), circuit.log_softmax(-1)
    return float((p.exp() * (p - q)).sum(-1).mean())


@pytest.mark.parametrize("metric", ["kl", "logit_diff", "prob_diff"])
def test_recorded_metric_values_are_the_hf_logits_metrics(metric):
    model = tiny_gpt2(init=0.2)
    randomize_biases(model)
    clean, corrupted = _ids(0), _ids(1)
    task = Task("toy", clean, corrupted, MASK, POS, ANSWERS, WRONG)
    full, corrupt = _at_answers(model, clean), _at_answers(model, corrupted)
    by_hand = {
        "kl": (0.0, _kl(full, corrupt)),
        "logit_diff": (_logit_diff(full), _logit_diff(corrupt)),
        "prob_diff": (_prob_diff(full), _prob_diff(corrupt)),
    }[metric]
    pm = PatchableModel(model)
    one_edge = torch.zeros_like(pm.graph.full_mask())
    one_edge[pm.graph.edge_index("m2->logits")] = True
    circuit = cf.discover(pm, task, method="exact", candidates=one_edge, n_edges=1, metric=metric, progress=False)
    assert abs(by_hand[1] - by_hand[0]) > 1e-3  # the corruption really moves the metric
    assert (circuit.metric_full, circuit.metric_empty) == pytest.approx(by_hand, rel=1e-4, abs=1e-6)


def test_a_validated_cut_binds_a_per_prompt_metric_to_each_fold():
    """tracr's L2 metric holds one reference row per prompt: the validated cut's folds (and the hybrid's
    validation figure) bind it to their own prompts through ``subset`` (it crashed with a shape mismatch before).
    Each fold gets the reference rows of its own prompts."""
    from circuitfind.metrics import OutputMSE
    from circuitfind.tasks.tracr import tracr_setup

    s = tracr_setup("proportion", n_sequences=16, seed=0)
    assert isinstance(s.metric, OutputMSE)
    bound: list[int] = []
    original = OutputMSE.subset

    def spy(self, idx):
        bound.append(len(idx))
        out = original(self, idx)
        assert torch.equal(out.reference, self.reference[idx])
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(OutputMSE, "subset", spy)
        for method in ("eap-ig", "hybrid"):
            bound.clear()
            c = cf.discover(s.pm, s.task, method=method, metric=s.metric, ablation="zero", target=0.8, progress=False)
            assert c.stats["validation"]["n_prompts"] == len(s.task.train())
            assert bound and all(0 < b < len(s.task.train()) for b in bound), (method, bound)
