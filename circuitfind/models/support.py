"""The table of support: every ``model_type`` the adapter registry handles, with a named reference model of each
and the size of that model's graph. Computed from the registry (nothing is loaded), so it cannot drift from it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from circuitfind.graph import Graph
from circuitfind.models import ADAPTERS, REFERENCES

__all__ = ["SupportRow", "support_markdown", "support_row", "support_table"]


@dataclass(frozen=True)
class SupportRow:
    """One supported ``model_type`` and the graph of its reference model.

    Attributes:
        model_type: ``config.model_type`` as transformers writes it.
        adapter: the adapter module under ``circuitfind/models/``.
        summary: the first line of that module's docstring (what the family is, what it handles).
        reference: the reference model's Hugging Face id.
        n_layers, n_heads, parallel: its shape, as far as the graph goes.
        n_senders, n_receivers, n_edges: its graph's size.
    """

    model_type: str
    adapter: str
    summary: str
    reference: str
    n_layers: int
    n_heads: int
    parallel: bool
    n_senders: int
    n_receivers: int
    n_edges: int


def support_row(model_type: str) -> SupportRow:
    """The :class:`SupportRow` of one supported ``model_type``.

    Example:
        >>> support_row("gpt2").n_edges
        32491
    """
    ref = REFERENCES[model_type]
    module = sys.modules[ADAPTERS[model_type].__module__]
    graph = Graph(ref.n_layers, ref.n_heads, parallel=ref.parallel)
    return SupportRow(
        model_type=model_type,
        adapter=module.__name__.rsplit(".", 1)[-1],
        summary=(module.__doc__ or "").strip().splitlines()[0].rstrip("."),
        reference=ref.name,
        n_layers=ref.n_layers,
        n_heads=ref.n_heads,
        parallel=ref.parallel,
        n_senders=graph.n_senders,
        n_receivers=graph.n_receivers,
        n_edges=graph.n_edges,
    )


def support_table() -> list[SupportRow]:
    """Every supported ``model_type``, in name order.

    Example:
        >>> "gemma2" in [row.model_type for row in support_table()]
        True
    """
    return [support_row(t) for t in sorted(ADAPTERS)]


def support_markdown(rows: list[SupportRow] | None = None) -> str:
    """The table as Markdown (the README's "Supported models" table is this text).

    Example:
        >>> support_markdown().splitlines()[0].startswith("| model_type")
        True
    """
    rows = support_table() if rows is None else rows
    lines = [
        "| model_type | adapter | reference model | layers x heads | senders | receivers | edges |",
        "|---|---|---|---|---:|---:|---:|",
    ]
    for r in rows:
        shape = f"{r.n_layers} x {r.n_heads}" + (" (parallel)" if r.parallel else "")
        lines.append(
            f"| `{r.model_type}` | `{r.adapter}` | {r.reference} | {shape} | {r.n_senders:,} | "
            f"{r.n_receivers:,} | {r.n_edges:,} |"
        )
    return "\n".join(lines)
