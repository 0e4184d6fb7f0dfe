"""Path patching as edge-mask patching: the effect of removing chosen edges of every sender, batched.

Removing the edges ``s -> r`` (``r`` in a set of receivers) from a base mask replaces ``s``'s output in those
receivers' inputs only by its ablated output (REFERENCE §2); everything downstream of them is recomputed. The
effect of sender ``s`` is ``m(base) - m(base minus s -> R)``: positive when the paths support the metric.

Candidates run on ACDC's :class:`~circuitfind.algorithms.acdc.FastEvaluator` (exact, restarting from cached
activations): a sender whose removed edges all go into one layer restarts there (a head's direct effect, its
edges into the logits, restarts at the logits); otherwise at the sender's own layer. Up to ``batch`` candidates
are stacked per pass.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

import torch
from torch import Tensor

from circuitfind.algorithms.acdc import FastEvaluator, Problem

__all__ = ["PathPatcher"]


class PathPatcher:
    """Metric values of a prepared task under masks, and path effects of many senders at once.

    Args:
        problem: from :func:`circuitfind.discovery.prepare_problem` (its loss is the metric to minimise).
        batch: candidate masks stacked per forward pass.
        progress: an object with ``update(n)`` (a tqdm bar), or None.

    Example:
        >>> pp = PathPatcher(problem)
        >>> g = pm.graph
        >>> fx = pp.effects(g.full_mask(), [g.head_sender(0, 0)], [g.logits_receiver])
        >>> fx.shape, bool(torch.isnan(fx[0]))  # one value per sender; input was not asked for
        (torch.Size([4]), True)
    """

    def __init__(self, problem: Problem, *, batch: int = 8, progress=None) -> None:
        self.problem, self.batch, self.progress = problem, batch, progress
        self.graph = problem.pm.graph

    def loss(self, mask: Tensor) -> float:
        """The problem's loss under one ``(S, R)`` mask (a full forward)."""
        return FastEvaluator(self.problem, mask, masks=1).loss_full

    def effects(self, base: Tensor, senders: Sequence[int], receivers: Sequence[int]) -> Tensor:
        """``(S,)``: for each sender in ``senders``, the loss change when its edges into ``receivers`` leave ``base``.

        ``loss(base minus s -> receivers) - loss(base)``: for a task metric (loss = minus the metric) this is
        ``m(base) - m(candidate)``. NaN for senders not asked for, and for those with no edge of ``base`` into
        any of the receivers.
        """
        g = self.graph
        out = torch.full((g.n_senders,), math.nan, dtype=torch.float64)
        plan = self._plan(base, senders, receivers)
        if not plan:
            return out
        ev = FastEvaluator(self.problem, base, masks=self.batch)
        for start, items in sorted(plan.items()):
            ev.start_layer(start, base)
            for i in range(0, len(items), self.batch):
                chunk = items[i : i + self.batch]
                masks = base.unsqueeze(0).repeat(len(chunk), 1, 1)  # (K, S, R)
                for j, (s, rs) in enumerate(chunk):
                    masks[j, s, rs] = False
                losses = ev.losses(masks).double()
                for j, (s, _) in enumerate(chunk):
                    out[s] = float(losses[j]) - ev.loss_full
                if self.progress is not None:
                    self.progress.update(len(chunk))
        return out

    def _plan(self, base: Tensor, senders: Sequence[int], receivers: Sequence[int]) -> dict[int, list]:
        """Start layer -> ``[(sender, its receivers still in base)]`` (see the module docstring)."""
        g = self.graph
        present = base.bool().cpu() & g.edge_mask
        plan: dict[int, list] = defaultdict(list)
        r_all = torch.as_tensor(list(receivers), dtype=torch.long)
        for s in senders:
            rs = r_all[present[s, r_all]] if len(r_all) else r_all
            if len(rs) == 0:
                continue
            layers = {g.receiver_layer(int(r)) for r in rs}
            own = g.senders[s].layer if g.senders[s].layer >= 0 else 0
            start = layers.pop() if len(layers) == 1 else own
            plan[start].append((s, rs))
        return plan

    def n_candidates(self, base: Tensor, senders: Sequence[int], receivers: Sequence[int]) -> int:
        """How many candidate masks :meth:`effects` would evaluate (for progress bars)."""
        return sum(len(v) for v in self._plan(base, senders, receivers).values())
