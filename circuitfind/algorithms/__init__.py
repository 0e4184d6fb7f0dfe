"""Discovery methods, one module each, listed by name in :data:`METHODS`.

Three kinds, by what a method returns:

* ``circuit`` (ACDC): a circuit found by removing edges one test at a time, plus each tested edge's effect;
* ``scores`` (EAP, EAP-IG, exact): a score for every edge, cut into a circuit by ``discover``;
* ``hybrid``: attribution scores, then exact tests and a faithfulness guarantee.

Every score and effect is in the same unit: the loss change when the edge is removed (higher = more important);
``edge-pruning``'s scores are its learned gate logits (higher = more important too).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType

from circuitfind.algorithms.acdc import AcdcOptions, AcdcState, SenderOrder, run_acdc_fast, run_acdc_plain
from circuitfind.algorithms.eap import EapOptions, run_eap
from circuitfind.algorithms.eap_ig import run_eap_ig, run_eap_ig_mask
from circuitfind.algorithms.eap_ig_act import run_eap_ig_act
from circuitfind.algorithms.edge_pruning import EdgePruningOptions, run_edge_pruning
from circuitfind.algorithms.exact import ExactOptions, run_exact
from circuitfind.algorithms.hybrid import HybridOptions, run_hybrid
from circuitfind.problem import Problem

__all__ = [
    "METHODS",
    "AcdcOptions",
    "AcdcState",
    "EapOptions",
    "EdgePruningOptions",
    "ExactOptions",
    "HybridOptions",
    "Method",
    "MethodKind",
    "Problem",
    "SenderOrder",
    "run_acdc_fast",
    "run_acdc_plain",
    "run_eap",
    "run_eap_ig",
    "run_eap_ig_act",
    "run_edge_pruning",
    "run_eap_ig_mask",
    "run_exact",
    "run_hybrid",
]


class MethodKind(enum.Enum):
    """What a method returns."""

    CIRCUIT = "circuit"
    """A circuit and per-edge effects: ``run(problem, AcdcOptions, state=None, on_boundary=None) -> AcdcState``."""
    SCORES = "scores"
    """A score per edge: ``run(problem, options, progress=None) -> ScoreResult``."""
    HYBRID = "hybrid"
    """A circuit with a faithfulness guarantee: ``run(problem, HybridOptions, faithfulness, progress) ->
    HybridResult``."""


@dataclass(frozen=True)
class Method:
    """A registered method: its kind, its entry point and one line on what it does."""

    name: str
    kind: MethodKind
    run: Callable
    summary: str


METHODS: MappingProxyType[str, Method] = MappingProxyType(
    {
        m.name: m
        for m in (
            Method("acdc", MethodKind.CIRCUIT, run_acdc_fast, "ACDC, fast and exact"),
            Method("acdc-plain", MethodKind.CIRCUIT, run_acdc_plain, "ACDC, one full forward per edge (for checks)"),
            Method("eap", MethodKind.SCORES, run_eap, "edge attribution patching: one gradient"),
            Method("eap-ig", MethodKind.SCORES, run_eap_ig, "EAP-IG: gradients along the inputs, `steps` points"),
            Method("eap-ig-mask", MethodKind.SCORES, run_eap_ig_mask, "integrated gradients along the edge mask"),
            Method(
                "eap-ig-act",
                MethodKind.SCORES,
                run_eap_ig_act,
                "EAP-IG along each sender layer's outputs, `steps` each",
            ),
            Method(
                "edge-pruning", MethodKind.SCORES, run_edge_pruning, "learned hard-concrete edge masks (L0, Lagrangian)"
            ),
            Method("exact", MethodKind.SCORES, run_exact, "each edge's exact loss change when removed alone"),
            Method("hybrid", MethodKind.HYBRID, run_hybrid, "EAP-IG candidates, exact pruning, target guaranteed"),
        )
    }
)
"""Method name -> :class:`Method`."""
