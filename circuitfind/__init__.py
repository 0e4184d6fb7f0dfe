"""circuitfind: automated circuit discovery on Hugging Face transformers models.

Example:
    >>> import circuitfind as cf
    >>> model, tok = cf.load_model()  # doctest: +SKIP
    >>> circuit = cf.discover(model, "ioi", tokenizer=tok, threshold=0.05)  # doctest: +SKIP
    >>> open("circuit.dot", "w").write(circuit.to_dot())  # doctest: +SKIP
"""

from __future__ import annotations

from circuitfind import errors
from circuitfind.circuit import Circuit
from circuitfind.discovery import discover
from circuitfind.engine.ablations import Ablation
from circuitfind.engine.patchable import PatchableModel
from circuitfind.errors import CircuitfindError
from circuitfind.graph import Edge, Graph, Node
from circuitfind.models import load_model
from circuitfind.tasks import Task

__all__ = [
    "Ablation",
    "Circuit",
    "CircuitfindError",
    "Edge",
    "Graph",
    "Hypothesis",
    "Node",
    "PatchableModel",
    "Task",
    "analysis",
    "diff",
    "discover",
    "errors",
    "evaluate",
    "load_model",
    "scrub",
    "stability",
    "sweep",
]


def __getattr__(name: str):
    # evaluate pulls in more of the package, sweep the sweep runner (Ray itself only when a sweep runs)
    if name == "evaluate":
        import importlib

        return importlib.import_module("circuitfind.evaluate")
    if name == "analysis":  # head roles and classes, two-model diffs
        import importlib

        return importlib.import_module("circuitfind.analysis")
    if name == "diff":
        from circuitfind.compare import diff

        return diff
    if name == "sweep":
        from circuitfind.sweeps import sweep

        return sweep
    if name == "stability":  # validation: discovery rerun on bootstrap resamples of the prompts
        from circuitfind.validation.stability import stability

        return stability
    if name in ("Hypothesis", "scrub"):  # causal scrubbing, imported on first use
        from circuitfind import scrubbing

        return getattr(scrubbing, name)
    raise AttributeError(f"module 'circuitfind' has no attribute {name!r}")
