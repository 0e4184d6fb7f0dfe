"""``edge-pruning``: learned edge masks (Bhaskar et al. 2024) with hard-concrete gates (Louizos et al. 2018, L0).

One gate per edge, ``z = clamp(sigmoid((log u - log(1 - u) + log_alpha) / beta) * (zeta - gamma) + gamma, 0, 1)``
with ``u ~ U(0, 1)`` (``beta = 2/3, gamma = -0.1, zeta = 1.1``), so a gate is exactly 0 or 1 with positive
probability and ``P(z != 0) = sigmoid(log_alpha - beta log(-gamma / zeta))``. A removed edge carries its sender's
ablated value (interchange ablation with the corrupted run under resample ablation), a kept one its live value,
in each receiver's own sum (:mod:`circuitfind.algorithms.gated_forward`). Each step minimises

    objective(circuit) + l1 * c + l2 * c**2,      c = E[open gates] / budget_t - 1

over the gate logits (Adam, ``lr``), and maximises it over ``l1, l2`` (the Lagrangian that enforces the
sparsity), where ``budget_t`` falls geometrically from the expected open gates at the start to the budget over
the first ``warmup`` of the steps. The objective: the problem's loss (``discover``'s metric: KL, a task metric
negated, tracr's L2), or KL from the full model whatever the metric.

The circuit is the top ``n_edges`` gate logits, then dangling edges pruned (so at most ``n_edges``). Every
``eval_every`` steps that mask (always at the budget) is evaluated exactly, without noise; the best by the training
objective is kept, and it is what the run returns, also when interrupted (Ctrl-C). Scores are the
kept gate logits (higher = more important), so ``discover``'s ``n_edges`` cut returns exactly that mask and its
``target`` cut searches their ranking. Deterministic from ``seed``. Each step is one forward-backward over all
prompts through the live part of the sampled mask; warm-starting from EAP-IG scores keeps it sparse from the start.
"""

from __future__ import annotations

import enum
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from circuitfind.algorithms.base import (
    MethodOptions,
    MethodResult,
    NullProgress,
    Progress,
    RunContext,
    ScoreResult,
)
from circuitfind.algorithms.eap import EapOptions
from circuitfind.algorithms.eap_ig import run_eap_ig
from circuitfind.algorithms.gated_forward import gated_forward
from circuitfind.algorithms.nodes import node_scores_of_edges
from circuitfind.algorithms.units import check_level, node_cut
from circuitfind.engine.ablations import Ablation
from circuitfind.errors import ConfigError, check_int, check_optional_int
from circuitfind.problem import Faithfulness, Problem
from circuitfind.selection.cuts import edge_ranking, prune_dangling, top_n

__all__ = ["EdgePruning", "EdgePruningOptions", "Objective", "run", "expected_open", "run_edge_pruning", "sample_gates"]

BETA, GAMMA, ZETA = 2.0 / 3.0, -0.1, 1.1  # the hard-concrete's temperature and stretch (Louizos et al.)


class Objective(enum.Enum):
    """What the gates are trained to minimise."""

    LOSS = "loss"
    """The problem's loss: ``discover``'s metric (KL by default; a task metric negated; tracr's L2)."""
    KL = "kl"
    """KL(full model || circuit) at the answer positions, whatever the metric."""


@dataclass(frozen=True)
class EdgePruning(MethodOptions):
    """Edge pruning as a method object (name ``"edge-pruning"``); ``EdgePruningOptions`` is the same class.

    Attributes:
        n_edges: the budget: the circuit keeps the top ``n_edges`` gates. None: ``density`` of the edges.
        n_nodes: at ``level="node"``: the budget in nodes (``n_edges`` is taken as the node budget there too when
            this is None, as :func:`run_edge_pruning` always did).
        density: the budget as a fraction of the edges when ``n_edges`` is None (``discover``'s ``target`` cut).
        steps: training steps (each one forward-backward over all prompts).
        lr: Adam's learning rate on the gate logits.
        seed: seeds the gates' noise (the run is deterministic from it).
        warm_start: start the gate logits from EAP-IG scores (the top ``pool * n_edges`` edges open).
        warm_steps: EAP-IG's integration steps for the warm start.
        pool: open edges at the start of a warm start, in budgets.
        objective: see :class:`Objective`.
        warmup: fraction of the steps over which the budget falls to ``n_edges``.
        lambda_lr: the Lagrange multipliers' ascent rate.
        eval_every: steps between exact evaluations of the top-``n_edges`` mask.
        init_logit: the gate logit of an edge at the start; a warm start's closed edges start at ``-3 * init_logit``.
        level: ``"edge"``, or ``"node"``: one gate per sender node, applied to its whole outgoing row; the budget
            ``n_edges`` then counts nodes and the result carries ``node_scores`` (the node gate logits).

    Example:
        >>> EdgePruning(n_edges=20, lr=0.05).implied_cut()  # the budget is the cut discover makes
        {'n_edges': 20}
    """

    n_edges: int | None = None
    n_nodes: int | None = None
    density: float = 0.01
    steps: int = 200
    lr: float = 0.1
    seed: int = 0
    warm_start: bool = False
    warm_steps: int = 5
    pool: float = 10.0
    objective: Objective = Objective.LOSS
    warmup: float = 0.8
    lambda_lr: float = 0.01
    eval_every: int = 10
    init_logit: float = 3.0
    level: str = "edge"

    def __post_init__(self) -> None:
        check_level(self.level)
        n = check_optional_int(self.n_nodes, "n_nodes", what="the budget of kept nodes")
        if n is not None and self.level != "node":
            raise ConfigError("n_nodes is the budget at level='node': pass level='node' with it (or n_edges for edges)")
        if n is not None and self.n_edges is not None:
            raise ConfigError("at level='node' the budget counts nodes: pass n_nodes, not both n_nodes and n_edges")
        if not isinstance(self.warm_start, bool):
            raise ConfigError(f"warm_start must be True or False; got {self.warm_start!r}")
        for name in ("steps", "warm_steps", "eval_every", "seed"):
            check_int(getattr(self, name), f"edge-pruning {name}", minimum=0 if name == "seed" else 1)
        check_optional_int(self.n_edges, "n_edges", what="the budget of kept edges")
        for name, lo, hi in (("density", 0, 1), ("warmup", 0, 1), ("lr", 0, math.inf), ("lambda_lr", 0, math.inf)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo < v <= hi:
                raise ConfigError(f"edge-pruning {name} must be a number in ({lo}, {hi}]; got {v!r}")
        if not isinstance(self.objective, Objective):
            raise ConfigError(
                f"objective must be an Objective ({[o.value for o in Objective]}); got {self.objective!r}"
            )

    @property
    def budget(self) -> int | None:
        """The kept units asked for (nodes at ``level="node"``), or None: ``density`` of them."""
        return self.n_nodes if self.n_nodes is not None else self.n_edges

    def implied_cut(self) -> dict[str, Any]:
        if self.budget is None:
            return {}
        return {"n_nodes" if self.level == "node" else "n_edges": self.budget}


EdgePruningOptions = EdgePruning  # the name before method objects


def run(problem: Problem, options: EdgePruning, context: RunContext) -> MethodResult:
    """The registry's entry for ``edge-pruning``: :func:`run_edge_pruning`.

    Example:
        >>> run(problem, EdgePruning(n_edges=3, steps=4, eval_every=2), RunContext()).stats["budget"]
        3
    """
    return run_edge_pruning(problem, options, context.progress)


def sample_gates(log_alpha: Tensor, generator: torch.Generator) -> Tensor:
    """Hard-concrete gates in [0, 1] (exactly 0 or 1 with positive probability), one per logit.

    Example:
        >>> z = sample_gates(torch.tensor([-20.0, 0.0, 20.0]), torch.Generator().manual_seed(0))
        >>> z[0].item(), z[2].item()  # a very closed gate and a very open one
        (0.0, 1.0)
    """
    u = torch.rand(log_alpha.shape, generator=generator, dtype=log_alpha.dtype, device=log_alpha.device)
    u = u.clamp(1e-6, 1 - 1e-6)
    s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / BETA)
    return (s * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)


def expected_open(log_alpha: Tensor) -> Tensor:
    """``P(gate != 0)`` per logit (the expected L0 norm is their sum).

    Example:
        >>> round(float(expected_open(torch.tensor(0.0))), 3)  # sigmoid(-beta log(-gamma / zeta))
        0.832
    """
    return torch.sigmoid(log_alpha - BETA * math.log(-GAMMA / ZETA))


def run_edge_pruning(
    problem: Problem, opts: EdgePruningOptions | None = None, progress: Progress | None = None
) -> ScoreResult:
    """Learn a mask of ``n_edges`` edges; scores are the kept gate logits.

    Example:
        >>> result = run_edge_pruning(problem, EdgePruningOptions(n_edges=3, steps=20, eval_every=5))
        >>> result.scores.shape, result.stats["mask_edges"] <= 3
        (torch.Size([4, 8]), True)
    """
    opts = opts or EdgePruningOptions()
    g = problem.pm.graph
    units, what = (g.n_senders, "nodes") if opts.level == "node" else (g.n_edges, "edges")
    budget = opts.budget if opts.budget is not None else max(1, round(opts.density * units))
    if budget > units:
        raise ConfigError(f"the budget must be at most {units:,} (this graph's {what}); got {budget:,}")
    progress = progress or NullProgress()
    trainer = _Trainer(problem, opts, budget, progress)
    interrupted = False
    try:
        trainer.train()
    except KeyboardInterrupt:  # keep the best mask so far
        interrupted = True
    return trainer.result(interrupted)


@dataclass
class _Best:
    step: int = -1
    objective: float = math.inf
    logits: Tensor | None = None
    faithfulness: float = math.nan


@dataclass
class _Trainer:
    """The state of one training run."""

    problem: Problem
    opts: EdgePruningOptions
    budget: int
    progress: Progress
    history: list[dict[str, Any]] = field(default_factory=list)
    best: _Best = field(default_factory=_Best)
    step: int = 0

    def __post_init__(self) -> None:
        p, g = self.problem, self.problem.pm.graph
        self.node = self.opts.level == "node"
        self.edges = g.edge_mask.flatten().nonzero().squeeze(1).to(p.pm.device)  # (E,) flat edge indices
        self.from_input = getattr(p.ablated, "kind", None) is Ablation.RESAMPLE
        self.faith = Faithfulness(p)
        self.log_alpha = self._initial_logits().requires_grad_(True)  # (E,) or (S,) nodes, float64
        self.lambdas = torch.zeros(2, dtype=torch.float64)
        self.optimizer = torch.optim.Adam([self.log_alpha], lr=self.opts.lr)
        self.generator = torch.Generator(device=p.pm.device).manual_seed(self.opts.seed)
        self.start_open = float(expected_open(self.log_alpha.detach()).sum())
        self.full_logprobs = None
        if self.opts.objective is Objective.KL:
            with torch.no_grad():
                full = p.pm.spec.logits(gated_forward(p, g.full_mask().to(torch.float64)), None)
            self.full_logprobs = F.log_softmax(full.double(), dim=-1)

    def _initial_logits(self) -> Tensor:
        o, g = self.opts, self.problem.pm.graph
        E = g.n_senders if self.node else int(self.edges.numel())
        if not o.warm_start:
            return torch.full((E,), o.init_logit, dtype=torch.float64, device=self.edges.device)
        edge_scores = run_eap_ig(self.problem, EapOptions(steps=o.warm_steps)).scores
        scores = node_scores_of_edges(g, edge_scores) if self.node else edge_scores.flatten()[self.edges.cpu()]
        rank = torch.empty(E, dtype=torch.float64)
        order = edge_ranking(torch.ones(E, dtype=torch.bool), scores.double().cpu())  # best first, NaN last
        rank[order] = torch.arange(E, dtype=torch.float64)
        pool = min(E, max(1, round(o.pool * self.budget)))
        # the pool opens (its EAP-IG order kept as a small tilt), the rest starts firmly closed
        logits = torch.where(rank < pool, o.init_logit + 1.0 - rank / pool, torch.tensor(-3.0 * o.init_logit))
        return logits.to(self.edges.device)

    def gates(self, z: Tensor) -> Tensor:
        """``(S, R)`` gates from one value per edge, or per node for its whole row (zero off the edges)."""
        g = self.problem.pm.graph
        if self.node:
            return z[:, None] * g.edge_mask.to(z.device, z.dtype)
        return z.new_zeros(g.n_senders * g.n_receivers).index_copy(0, self.edges, z).view(g.n_senders, g.n_receivers)

    def objective(self, gates: Tensor) -> Tensor:
        p = self.problem
        h = gated_forward(p, gates)  # (B, D)
        if self.full_logprobs is None:
            return p.loss(p.pm.spec.logits(h, p.vocab).unsqueeze(0))[0]
        logprobs = F.log_softmax(p.pm.spec.logits(h, None).double(), dim=-1)
        return F.kl_div(logprobs, self.full_logprobs, log_target=True, reduction="batchmean")

    def budget_at(self, step: int) -> float:
        """The expected open gates allowed at ``step``: geometric from the start to the budget over warmup."""
        frac = min(1.0, step / max(1.0, self.opts.warmup * self.opts.steps))
        return math.exp(math.log(self.start_open) + frac * (math.log(self.budget) - math.log(self.start_open)))

    def train(self) -> None:
        o = self.opts
        self.t0 = time.perf_counter()
        self.progress.set_description(f"edge pruning ({self.budget:,} edges)")
        self.progress.reset(total=o.steps)
        while self.step < o.steps:
            self.train_step()
            self.step += 1
            if self.step % o.eval_every == 0 or self.step == o.steps:
                self.evaluate()
            self.progress.update(1)

    def train_step(self) -> None:
        self.optimizer.zero_grad()
        z = sample_gates(self.log_alpha, self.generator)  # (E,)
        task = self.objective(self.gates(z))
        c = expected_open(self.log_alpha).sum() / self.budget_at(self.step) - 1.0
        l1, l2 = self.lambdas
        (task + l1 * c + l2 * c * c).backward()
        self.optimizer.step()
        with torch.no_grad():  # gradient ascent on the multipliers
            self.lambdas += self.opts.lambda_lr * torch.stack([c.detach(), c.detach() ** 2]).cpu()
        self.last = {"loss": float(task.detach()), "open": float(expected_open(self.log_alpha.detach()).sum())}

    def mask(self, log_alpha: Tensor) -> Tensor:
        """The circuit of gate logits: their top ``budget``, dangling edges pruned (``(S, R)`` bool, CPU)."""
        if self.node:
            graph = self.problem.pm.graph
            return node_cut(graph, log_alpha.detach().cpu(), None, n=self.budget, from_input=self.from_input).mask
        kept = top_n(self.problem.pm.graph, self.gates(log_alpha.detach()).cpu(), self.budget)
        return prune_dangling(self.problem.pm.graph, kept, from_input=self.from_input)

    def evaluate(self) -> None:
        """The exact objective and faithfulness of the current top-``budget`` mask; the best is kept once the
        budget is reached."""
        mask = self.mask(self.log_alpha)
        with torch.no_grad():
            objective = float(self.objective(mask.to(torch.float64)))
        f = self.faith(mask)
        row = {"step": self.step, "objective": objective, "faithfulness": f, "edges": int(mask.sum()), **self.last}
        self.history.append(row)
        if self.best.logits is None or objective < self.best.objective:  # every evaluated mask is at the budget
            self.best = _Best(self.step, objective, self.log_alpha.detach().clone(), f)
        self.progress.set_postfix(
            loss=f"{self.last['loss']:.4g}", open=f"{self.last['open']:.0f}", f=f"{f:.3f}", refresh=False
        )

    def result(self, interrupted: bool) -> ScoreResult:
        best_logits = self.best.logits
        if best_logits is None:  # interrupted before the first evaluation: the gates as they are
            best_logits = self.log_alpha.detach().clone()
            self.best = _Best(self.step, math.nan, best_logits, math.nan)
        g = self.problem.pm.graph
        logits = self.gates(best_logits).cpu()
        scores = torch.where(g.edge_mask, logits, torch.zeros_like(logits))
        mask = self.mask(best_logits)
        node_scores = best_logits.cpu() if self.node else None
        stats = {
            "level": self.opts.level,
            "budget": self.budget,
            "steps": self.opts.steps,
            "steps_run": self.step,
            "best_step": self.best.step,
            "interrupted": interrupted,
            "mask_edges": int(mask.sum()),
            "train_s": time.perf_counter() - getattr(self, "t0", time.perf_counter()),
            "trained_faithfulness": self.faith(mask),  # exact, of the mask returned
            "objective": self.best.objective,
            "lambdas": self.lambdas.tolist(),
            "history": self.history,
            "seed": self.opts.seed,
            "warm_start": self.opts.warm_start,
        }
        return ScoreResult(scores, stats, node_scores=node_scores)
