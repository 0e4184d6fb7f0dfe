"""Float64 tiny models of the three families, toy tasks on them, and the slow-path loss and faithfulness that
the attribution and discovery tests check the methods against."""

from __future__ import annotations

import torch

from circuitfind.engine.patchable import PatchableModel
from circuitfind.problem import prepare_problem
from circuitfind.tasks import Task
from tests.models_tiny import FAMILIES, VOCAB, in_float64, randomize_biases

N, T = 5, 8
NAMES = sorted(FAMILIES)


def toy_task(seed: int = 0) -> Task:
    """Random clean and corrupted prompts, one right-padded, with random answer and wrong-answer ids."""
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(1, VOCAB, (N, T), generator=g)
    corrupt = torch.randint(1, VOCAB, (N, T), generator=g)
    am = torch.ones(N, T, dtype=torch.long)
    am[1, 6:] = 0  # one right-padded prompt: its answer position is earlier
    answers = torch.randint(1, VOCAB, (N, 1), generator=g)
    wrong = torch.randint(1, VOCAB, (N, 1), generator=g)
    return Task("toy", clean, corrupt, am, am.sum(1) - 1, answers, wrong)


def natural_task(pm: PatchableModel, seed: int = 0) -> Task:
    """:func:`toy_task` with the model's own top token on each clean prompt as the answer and its top token on
    the corrupted prompt as the wrong answer: the full model beats the empty circuit, as on a real task."""
    t = toy_task(seed)
    with torch.no_grad():
        full = pm.graph.full_mask()
        zero = pm.ablation("zero")
        clean = pm.forward(t.clean_ids, zero, full, attention_mask=t.attention_mask, positions=t.answer_pos)
        corrupt = pm.forward(t.corrupted_ids, zero, full, attention_mask=t.attention_mask, positions=t.answer_pos)
    answers = clean.argmax(-1, keepdim=True)  # (N, 1)
    second = corrupt.topk(2, dim=-1).indices  # (N, 2)
    wrong = torch.where(second[:, :1] == answers, second[:, 1:], second[:, :1])
    return Task("natural", t.clean_ids, t.corrupted_ids, t.attention_mask, t.answer_pos, answers, wrong)


def _pm(make) -> PatchableModel:
    model = make(init=0.2)  # large weights: every edge matters to the loss, no score is trivially zero
    randomize_biases(model)
    return PatchableModel(in_float64(model))


PMS = {name: _pm(make) for name, make in FAMILIES.items()}


def problem_of(name: str, metric: str = "logit_diff", ablation: str = "resample", task: Task | None = None):
    return prepare_problem(PMS[name], task or toy_task(), metric=metric, ablation=ablation)[0]


def loss_at(problem, mask: torch.Tensor, ablated=None) -> torch.Tensor:
    """The loss of the patched forward with ``mask`` (bool or float; autograd kept): the slow path."""
    p = problem
    logits = p.pm.forward(
        p.clean_ids,
        p.ablated if ablated is None else ablated,
        mask,
        attention_mask=p.attention_mask,
        positions=p.positions,
        vocab=p.vocab,
    )
    return p.loss(logits.unsqueeze(0))[0]


def logit_diff_faithfulness(pm: PatchableModel, task: Task, mask: torch.Tensor, ablation: str = "resample") -> float:
    """MIB's ``(m(C) - m(empty)) / (m(N) - m(empty))`` with the logit difference written out by hand, from
    ``pm.forward`` on every prompt of ``task`` (one answer and one wrong answer per prompt)."""
    if ablation == "resample":
        abl = pm.ablation("resample", task.corrupted_ids, task.attention_mask)
    else:
        abl = pm.ablation(ablation, task.clean_ids, task.attention_mask)
    rows = torch.arange(len(task.clean_ids))

    def metric(m: torch.Tensor) -> float:
        with torch.no_grad():
            logits = pm.forward(task.clean_ids, abl, m, attention_mask=task.attention_mask, positions=task.answer_pos)
        return float((logits[rows, task.answers[:, 0]] - logits[rows, task.wrong_answers[:, 0]]).mean())

    full, empty = metric(pm.graph.full_mask()), metric(torch.zeros_like(pm.graph.edge_mask))
    return (metric(mask) - empty) / (full - empty)


# --- the slow twins of the attribution tests: autograd and finite differences through pm.forward ---------------
def mask_grad(problem, mask: torch.Tensor) -> torch.Tensor:
    """``d loss / d mask`` ``(S, R)`` by autograd through ``pm.forward`` at the float mask ``mask``."""
    m = mask.detach().double().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss_at(problem, m), m)
    return grad


def uniform(problem, a: float, input_scale: float = 1.0) -> torch.Tensor:
    """The float mask of :class:`Point` ``(a, input_scale)``: every edge ``a``, the input's edges ``a * c``."""
    m = problem.pm.graph.full_mask().double() * a
    m[0] *= input_scale
    return m


def some_edges(graph, n: int, seed: int = 0) -> list[tuple[int, int]]:
    """``n`` random edges, plus one into a q, one into an MLP and one into the logits (all receiver kinds)."""
    edges = graph.edge_mask.nonzero()
    picked = edges[torch.randperm(len(edges), generator=torch.Generator().manual_seed(seed))[:n]].tolist()
    for r in (graph.head_receiver(1, 2, "q"), graph.mlp_receiver(1), graph.logits_receiver):
        picked.append([int(graph.edge_mask[:, r].nonzero()[-1]), r])
    return [tuple(e) for e in picked]


def central_difference(problem, at: torch.Tensor, edge: tuple[int, int], h: float = 1e-4) -> float:
    up, down = at.clone(), at.clone()
    up[edge] += h
    down[edge] -= h
    with torch.no_grad():
        return float(loss_at(problem, up) - loss_at(problem, down)) / (2 * h)


def assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, rel: float) -> None:
    """Equal up to ``rel`` times the largest expected magnitude (entries near 0 are compared absolutely)."""
    scale = float(expected.abs().max())
    assert scale > 0, "the reference is all zeros: the test would prove nothing"
    err = float((actual - expected).abs().max())
    assert err <= rel * scale, f"max difference {err:.3g} > {rel:g} x {scale:.3g}"


def aligned_task(pm: PatchableModel, seed: int = 0, n: int = 4, t: int = 6) -> Task:
    """``n`` prompts of one length ``t`` (no padding), labelled BOS A B C D END, the model's own top tokens as
    answer and wrong answer: the task of the position-aware tests (``by_position=True``)."""
    g = torch.Generator().manual_seed(seed)
    clean, corrupt = torch.randint(1, VOCAB, (2, n, t), generator=g)
    am, last = torch.ones(n, t, dtype=torch.long), torch.full((n,), t - 1)
    with torch.no_grad():
        full, zero = pm.graph.full_mask(), pm.ablation("zero")
        top_clean = pm.forward(clean, zero, full, positions=last).argmax(-1, keepdim=True)
        second = pm.forward(corrupt, zero, full, positions=last).topk(2, dim=-1).indices
    wrong = torch.where(second[:, :1] == top_clean, second[:, 1:], second[:, :1])
    labels = [("BOS", "A", "B", "C", "D", "END")] * n
    return Task("aligned", clean, corrupt, am, last, top_clean, wrong, position_labels=labels)
