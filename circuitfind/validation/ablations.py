"""Ablation sensitivity: one circuit judged under resample, mean and zero ablation, and the circuits each
ablation finds (REFERENCE §8; the ACDC paper reports all three, and its circuits differ between them).

:func:`ablation_sensitivity` evaluates the given circuit on the task's held-out prompts under every ablation
(faithfulness with its interval: ``m(N)`` and ``m(empty)`` are those of that ablation), reruns discovery with the
same options under each ablation the circuit was not found with, and compares the circuits by Jaccard index.
"""

from __future__ import annotations

from typing import Any

import torch

from circuitfind.circuit import Circuit
from circuitfind.discovery import discover
from circuitfind.engine.ablations import Ablation
from circuitfind.engine.patchable import resolve_model
from circuitfind.tasks import resolve_task
from circuitfind.validation.heldout import heldout_rows

__all__ = ["ABLATIONS", "ablation_sensitivity", "jaccard"]

ABLATIONS = tuple(a.value for a in Ablation)  # resample, mean, zero


def jaccard(a: torch.Tensor, b: torch.Tensor) -> float:
    """``|A & B| / |A | B|`` of two bool masks (1.0 when both are empty).

    Example:
        >>> jaccard(torch.tensor([True, True, False]), torch.tensor([True, False, True]))
        0.3333333333333333
    """
    a, b = a.bool().cpu(), b.bool().cpu()
    union = int((a | b).sum())
    return int((a & b).sum()) / union if union else 1.0


def ablation_sensitivity(
    model: Any,
    circuit: Circuit,
    task: Any,
    *,
    method: str | None = None,
    ablations: tuple[str, ...] = ABLATIONS,
    tokenizer: Any = None,
    **discover_options: Any,
) -> dict[str, Any]:
    """The circuit under every ablation, and the circuit every ablation finds.

    Args:
        model: a :class:`PatchableModel`, a transformers model, or a name.
        circuit: the circuit (its ``config`` names the method, metric and ablation it was found with).
        task: the task: discovery reruns on its train split, evaluations use its held-out split (else all prompts).
        method: the method to rerun (default: the circuit's).
        ablations: which to compare (default all three).
        tokenizer: for tasks given by name.
        discover_options: the options discovery reran with (``target``, ``n_edges``, ``steps``...); the metric
            defaults to the circuit's.

    Returns:
        ``{ablation: {"faithfulness", "ci", "n_prompts", "found_n_edges", "found_faithfulness", "found_ci",
        "jaccard"}}`` plus ``"found_with"`` (the circuit's own ablation) and ``"jaccard_pairs"`` (``"a|b"`` ->
        Jaccard of the circuits ``a`` and ``b`` found). ``faithfulness``: the given circuit under that ablation;
        ``found_*``: the circuit discovered under it, evaluated under it; ``jaccard``: its overlap with the given.

    Example:
        >>> res = ablation_sensitivity(pm, circuit, task, n_edges=5, progress=False)
        >>> sorted(k for k in res if k in ABLATIONS), res["resample"]["jaccard"]
        (['mean', 'resample', 'zero'], 1.0)
    """
    pm, tokenizer = resolve_model(model, tokenizer)
    task = resolve_task(task, tokenizer)
    own = Ablation.parse(circuit.config.get("ablation", "resample")).value
    method = method or circuit.config.get("method", "eap-ig")
    metric = discover_options.pop("metric", circuit.config.get("metric", "kl"))
    discover_options.setdefault("progress", False)
    found = {own: circuit.mask.bool().cpu()}
    out: dict[str, Any] = {"found_with": own}
    for abl in ablations:
        name = Ablation.parse(abl).value
        if name not in found:
            found[name] = discover(pm, task, method=method, metric=metric, ablation=name, **discover_options).mask
        given, new = heldout_rows(pm, [circuit.mask, found[name]], task, metric=metric, ablation=name)
        out[name] = {
            "faithfulness": given["faithfulness"],
            "ci": given["ci"],
            "n_prompts": given["n_prompts"],
            "found_n_edges": int(found[name].sum()),
            "found_faithfulness": new["faithfulness"],
            "found_ci": new["ci"],
            "jaccard": jaccard(found[name], found[own]),
        }
    names = list(found)
    out["jaccard_pairs"] = {
        f"{a}|{b}": jaccard(found[a], found[b]) for i, a in enumerate(names) for b in names[i + 1 :]
    }
    return out
