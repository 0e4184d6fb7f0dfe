"""Discovery methods, one module each, as frozen method objects behind one protocol, listed by name in :data:`METHODS`.

Every method is a frozen options dataclass (``ACDC(threshold=0.05)``, ``EAPIG(steps=5)``, ...) that
``circuitfind.discover`` takes as ``method=`` (or its name with keyword options), and one
``run(problem, options, context) -> MethodResult`` in the registry (:mod:`circuitfind.algorithms.registry`):

* ACDC (``acdc``, ``acdc-plain``) and the hybrid decide their circuit (``MethodResult.mask``) and return each
  tested edge's effect as its score;
* the scoring methods (EAP, EAP-IG, mask IG, EAP-IG-act, exact, edge pruning) return a score for every edge (and
  node or position-edge scores at ``level="node"`` / ``by_position=True``), cut into a circuit by ``discover``.

Every score and effect is in the same unit: the loss change when the edge is removed (higher = more important);
``edge-pruning``'s scores are its learned gate logits (higher = more important too).
"""

from __future__ import annotations

from circuitfind.algorithms.acdc import (
    ACDC,
    AcdcOptions,
    ACDCPlain,
    AcdcState,
    SenderOrder,
    run_acdc_fast,
    run_acdc_plain,
)
from circuitfind.algorithms.base import MethodOptions, MethodResult, RunContext, ScoreResult
from circuitfind.algorithms.eap import EAP, EapOptions, run_eap
from circuitfind.algorithms.eap_ig import EAPIG, EAPIGMask, run_eap_ig, run_eap_ig_mask
from circuitfind.algorithms.eap_ig_act import EAPIGAct, run_eap_ig_act
from circuitfind.algorithms.edge_pruning import EdgePruning, EdgePruningOptions, run_edge_pruning
from circuitfind.algorithms.exact import Exact, ExactOptions, run_exact
from circuitfind.algorithms.hybrid import Hybrid, HybridOptions, run_hybrid
from circuitfind.algorithms.registry import METHODS, Method, Plan, given_options, method_of, plan
from circuitfind.problem import Problem
from circuitfind.selection.rule import Cut

__all__ = [
    "ACDC",
    "EAP",
    "EAPIG",
    "METHODS",
    "ACDCPlain",
    "AcdcOptions",
    "AcdcState",
    "Cut",
    "EAPIGAct",
    "EAPIGMask",
    "EapOptions",
    "EdgePruning",
    "EdgePruningOptions",
    "Exact",
    "ExactOptions",
    "Hybrid",
    "HybridOptions",
    "Method",
    "MethodOptions",
    "MethodResult",
    "Plan",
    "Problem",
    "RunContext",
    "ScoreResult",
    "SenderOrder",
    "given_options",
    "method_of",
    "plan",
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
