"""Edge scores and circuits scored without a model: ROC/AUC against a ground truth, CPR/CMD, top-k masks.

Pure tensor math; :mod:`circuitfind.evaluate` runs the model and feeds these functions.

* :func:`roc_points` / :func:`auc`: ROC of a continuous score over edges (every threshold) and its area.
* :func:`roc_from_circuits`: ROC of a sweep of discrete circuits (e.g. ACDC at several thresholds), the way
  the ACDC paper draws it: one (FPR, TPR) point per circuit, sorted by FPR, with (0, 0) and (1, 1) added.
* :func:`top_k_masks` and :func:`cpr_cmd`: the MIB circuit-size sweep (REFERENCE §6). Circuits are the top
  k% of edges for k in :data:`MIB_FRACTIONS`; CPR is the area under faithfulness f over the fraction axis
  (trapezoids on a linear axis; higher is better), CMD the area under ``|1 - f|`` (0 is best).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from circuitfind.errors import ConfigError, ShapeError
from circuitfind.selection.cuts import edge_ranking, n_of_fraction

__all__ = ["MIB_FRACTIONS", "auc", "cpr_cmd", "roc_from_circuits", "roc_points", "top_k_masks"]

MIB_FRACTIONS: tuple[float, ...] = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
"""The MIB circuit sizes: fractions of the graph's edges (0.1% .. 100%)."""


def roc_points(scores: Tensor, truth: Tensor) -> tuple[Tensor, Tensor]:
    """ROC curve of ``scores`` (higher = more likely in the circuit) against ``truth``, over every threshold.

    Tied scores enter together (one diagonal step), so the curve does not depend on the order of ties.

    Args:
        scores: ``(n_edges,)`` float scores (any shape; flattened).
        truth: ``(n_edges,)`` bool, True for ground-truth edges (same shape as ``scores``).

    Returns:
        ``(fpr, tpr)``: float64 tensors of equal length, from (0, 0) to (1, 1), FPR non-decreasing.

    Raises:
        ShapeError: shapes differ, or NaN scores.
        ConfigError: ``truth`` has no positive or no negative.

    Example:
        >>> fpr, tpr = roc_points(torch.tensor([0.9, 0.8, 0.1]), torch.tensor([True, False, False]))
        >>> fpr.tolist(), tpr.tolist()
        ([0.0, 0.0, 0.5, 1.0], [0.0, 1.0, 1.0, 1.0])
    """
    scores, truth = _flat_pair(scores, truth)
    if bool(torch.isnan(scores).any()):
        raise ShapeError("scores contain NaN; replace them (e.g. torch.nan_to_num) before computing a ROC")
    n_pos, n_neg = _class_sizes(truth)
    order = edge_ranking(torch.ones(scores.shape, dtype=torch.bool), scores)  # best first, ties by position
    s, t = scores[order], truth[order]
    tp = torch.cumsum(t.double(), 0)  # (n,)
    fp = torch.cumsum((~t).double(), 0)  # (n,)
    # keep the last index of each run of tied scores: a threshold admits all ties at once
    last = torch.ones_like(t)
    last[:-1] = s[1:] != s[:-1]
    zero = torch.zeros(1, dtype=torch.float64)
    return torch.cat([zero, fp[last] / n_neg]), torch.cat([zero, tp[last] / n_pos])


def auc(fpr: Tensor, tpr: Tensor, *, pessimistic: bool = False) -> float:
    """Area under a ROC curve given as points sorted by FPR.

    Args:
        fpr: ``(P,)`` false-positive rates, non-decreasing.
        tpr: ``(P,)`` true-positive rates.
        pessimistic: trapezoids (False, the default) or the ACDC paper's "pessimistic" staircase, where each
            rise of TPR counts only from its FPR onwards: ``sum((1 - fpr[i]) * (tpr[i] - tpr[i-1]))``.

    Returns:
        the area, a float in [0, 1] for a curve from (0, 0) to (1, 1).

    Example:
        >>> auc(torch.tensor([0.0, 0.5, 1.0]), torch.tensor([0.0, 0.5, 1.0]))
        0.5
    """
    fpr, tpr = _flat_pair(fpr.double(), tpr.double())
    if fpr.numel() < 2:
        raise ShapeError(f"a ROC curve needs at least 2 points; got {fpr.numel()}")
    if bool((fpr[1:] < fpr[:-1]).any()):
        raise ShapeError("fpr must be sorted (non-decreasing); sort the points by FPR first")
    if pessimistic:
        return float(((1 - fpr[1:]) * (tpr[1:] - tpr[:-1])).sum())
    return float(torch.trapezoid(tpr, fpr))


def roc_from_circuits(
    kept_masks: Sequence[Tensor], truth: Tensor, edge_mask: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """ROC points of a sweep of discrete circuits (one point per circuit), as the ACDC paper builds it.

    Args:
        kept_masks: circuits as bool masks, each the shape of ``truth`` (``(S, R)`` or ``(n_edges,)``).
        truth: bool mask of the ground-truth edges.
        edge_mask: bool mask of the edges that exist (``graph.edge_mask``); entries outside it are ignored in
            both masks. ``None`` = every entry is an edge.

    Returns:
        ``(fpr, tpr)`` float64, sorted by FPR then TPR, starting at (0, 0) and ending at (1, 1).

    Example:
        >>> truth = torch.tensor([True, True, False, False])
        >>> fpr, tpr = roc_from_circuits([torch.tensor([True, False, False, False])], truth)
        >>> fpr.tolist(), tpr.tolist()
        ([0.0, 0.0, 1.0], [0.0, 0.5, 1.0])
    """
    truth = _bool(truth, "truth")
    exists = torch.ones_like(truth) if edge_mask is None else _bool(edge_mask, "edge_mask")
    if exists.shape != truth.shape:
        raise ShapeError(f"edge_mask has shape {tuple(exists.shape)} but truth has {tuple(truth.shape)}")
    truth = truth & exists
    n_pos, n_neg = _class_sizes(truth[exists])
    points = [(0.0, 0.0), (1.0, 1.0)]
    for i, mask in enumerate(kept_masks):
        mask = _bool(mask, f"kept_masks[{i}]")
        if mask.shape != truth.shape:
            raise ShapeError(f"kept_masks[{i}] has shape {tuple(mask.shape)} but truth has {tuple(truth.shape)}")
        kept = mask.to(truth.device) & exists
        points.append((int((kept & ~truth).sum()) / n_neg, int((kept & truth).sum()) / n_pos))
    points.sort()
    pts = torch.tensor(points, dtype=torch.float64)  # (P, 2)
    return pts[:, 0], pts[:, 1]


def top_k_masks(
    scores: Tensor, edge_mask: Tensor, fractions: Sequence[float] = MIB_FRACTIONS, *, absolute: bool = False
) -> list[Tensor]:
    """Circuits made of the top ``k`` fraction of existing edges by score, one per fraction.

    Each circuit keeps ``max(1, round(k * n_edges))`` edges (:func:`~circuitfind.selection.n_of_fraction`) of
    :func:`~circuitfind.selection.edge_ranking`: ties are broken by position, so the circuits are nested. Rank by
    signed score for CPR, by absolute score for CMD. With a :class:`~circuitfind.graph.Graph` at hand,
    :func:`~circuitfind.selection.top_fraction` gives one such circuit.

    Args:
        scores: ``(S, R)`` float scores; entries outside ``edge_mask`` are ignored.
        edge_mask: ``(S, R)`` bool, the edges that exist (``graph.edge_mask``).
        fractions: fractions of the existing edges, each in (0, 1].
        absolute: rank by ``|score|`` instead of the signed score.

    Returns:
        one ``(S, R)`` bool mask per fraction, on ``scores``' device.

    Example:
        >>> s = torch.tensor([[3.0, -5.0], [1.0, 2.0]])
        >>> [m.sum().item() for m in top_k_masks(s, torch.ones(2, 2, dtype=torch.bool), (0.25, 0.5, 1.0))]
        [1, 2, 4]
    """
    order = edge_ranking(edge_mask, scores, absolute=absolute)  # (E,)
    masks = []
    for k in fractions:
        flat = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)  # (S*R,)
        flat[order[: n_of_fraction(k, order.numel())]] = True
        masks.append(flat.view(scores.shape))
    return masks


def cpr_cmd(faithfulness_at_k: Sequence[float], fractions: Sequence[float] = MIB_FRACTIONS) -> tuple[float, float]:
    """CPR and CMD: areas under ``f`` and under ``|1 - f|`` over the fraction axis (trapezoids, linear axis).

    Args:
        faithfulness_at_k: faithfulness ``f(C_k) = (m(C_k) - m(empty)) / (m(full) - m(empty))`` of the circuit
            of each fraction, in the order of ``fractions``.
        fractions: the circuit sizes as fractions of the edges, increasing (default :data:`MIB_FRACTIONS`).

    Returns:
        ``(cpr, cmd)``. With the default fractions the axis spans 0.001 .. 1, so f = 1 everywhere gives
        CPR = 0.999 and CMD = 0.

    Example:
        >>> cpr_cmd([1.0] * 10)
        (0.999, 0.0)
    """
    f = torch.as_tensor(list(faithfulness_at_k), dtype=torch.float64)
    x = torch.as_tensor(list(fractions), dtype=torch.float64)
    if f.shape != x.shape or f.numel() < 2:
        raise ShapeError(
            f"need one faithfulness value per fraction (at least 2); got {f.numel()} values for {x.numel()} fractions"
        )
    if bool((x[1:] <= x[:-1]).any()):
        raise ConfigError(f"fractions must be strictly increasing; got {x.tolist()}")
    if not bool(torch.isfinite(f).all()):
        raise ShapeError(f"faithfulness values must be finite; got {f.tolist()}")
    cpr = float(torch.trapezoid(f, x))
    cmd = float(torch.trapezoid((1 - f).abs(), x))
    return round(cpr, 12), round(cmd, 12)


def _flat_pair(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    if a.shape != b.shape:
        raise ShapeError(f"expected tensors of one shape; got {tuple(a.shape)} and {tuple(b.shape)}")
    return a.detach().flatten().cpu(), b.detach().flatten().cpu()


def _bool(mask: Tensor, name: str) -> Tensor:
    if not isinstance(mask, Tensor):
        raise ShapeError(f"{name} must be a bool tensor; got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise ShapeError(f"{name} must have dtype torch.bool; got {mask.dtype}. Convert with .bool()")
    return mask


def _class_sizes(truth: Tensor) -> tuple[int, int]:
    truth = _bool(truth, "truth")
    n_pos = int(truth.sum())
    n_neg = truth.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ConfigError(
            f"a ROC needs both ground-truth edges and other edges; got {n_pos} positives and {n_neg} negatives"
        )
    return n_pos, n_neg
