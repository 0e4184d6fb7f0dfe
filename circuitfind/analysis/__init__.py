"""Analysis of a model's heads, usable on its own and behind the circuit explorer.

* :func:`head_roles` scores every head on previous-token, duplicate-token and induction attention (repeated
  random tokens), copying (its OV circuit through the unembedding) and direct effect on a task: a
  :class:`HeadRoles` table, one row per head (columns in :data:`COLUMNS`).
* :func:`head_classes` classifies heads on an IOI task by path patching, as the IOI paper did by hand (name
  movers, negative and backup name movers, S-inhibition, induction, duplicate-token, previous-token): a
  :class:`HeadClasses` table of measures, class scores and classes (:mod:`circuitfind.analysis.head_classes`).
* :func:`attention_patterns` and :func:`direct_effects` are the per-prompt views behind them.

Example:
    >>> from circuitfind.analysis import head_roles
    >>> roles = head_roles(pm, task, length=3)  # pm: a tiny model (the default model: cf.load_model())
    >>> [row["head"] for row in roles.rows()], sorted(roles.scores) == sorted(COLUMNS)
    (['a0.h0', 'a0.h1'], True)
"""

from __future__ import annotations

from circuitfind.analysis.activations import CleanRun, attention_patterns, clean_run, direct_effects, logit_diff_of
from circuitfind.analysis.head_classes import CLASSES, ClassThresholds, HeadClasses, head_classes
from circuitfind.analysis.path_patching import PathPatcher
from circuitfind.analysis.roles import COLUMNS, HeadRoles, copying_scores, head_roles, repeated_tokens

__all__ = [
    "CLASSES",
    "COLUMNS",
    "ClassThresholds",
    "CleanRun",
    "HeadClasses",
    "HeadRoles",
    "PathPatcher",
    "attention_patterns",
    "clean_run",
    "copying_scores",
    "direct_effects",
    "head_classes",
    "head_roles",
    "logit_diff_of",
    "repeated_tokens",
]
