"""Analysis of a model's heads, usable on its own and behind the circuit explorer.

* :func:`head_roles` scores every head on previous-token, duplicate-token and induction attention (repeated
  random tokens), copying (its OV circuit through the unembedding) and direct effect on a task: a
  :class:`HeadRoles` table, one row per head (columns in :data:`COLUMNS`).
* :func:`attention_patterns` and :func:`direct_effects` are the per-prompt views behind them.

Example:
    >>> import circuitfind as cf
    >>> from circuitfind.analysis import head_roles
    >>> model, tok = cf.load_model()  # doctest: +SKIP
    >>> roles = head_roles(cf.PatchableModel(model), bos=tok.bos_token_id)  # doctest: +SKIP
    >>> roles.top("induction", 3)  # doctest: +SKIP
"""

from __future__ import annotations

from circuitfind.analysis.activations import CleanRun, attention_patterns, clean_run, direct_effects, logit_diff_of
from circuitfind.analysis.roles import COLUMNS, HeadRoles, copying_scores, head_roles, repeated_tokens

__all__ = [
    "COLUMNS",
    "CleanRun",
    "HeadRoles",
    "attention_patterns",
    "clean_run",
    "copying_scores",
    "direct_effects",
    "head_roles",
    "logit_diff_of",
    "repeated_tokens",
]
