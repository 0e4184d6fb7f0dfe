"""Ground-truth circuits, as edge names of our graph: GPT-2 small's IOI and greater-than, and tracr's.

Edge names are built through :class:`~circuitfind.graph.Graph` (indices in, names out), never spelled here.
The tracr models carry their circuits in their fixtures; :func:`tracr_ground_truth` picks the one to score an
ablation against.

These are the edge sets the ACDC paper (Conmy et al. 2023) scores ROC curves against, rebuilt from the facts
of its reference code (``acdc/ioi/utils.py``, ``acdc/greaterthan/utils.py``) in our naming: ``Graph(12, 12)``,
sequential blocks, ``input`` = token + position embedding (ACDC's ``blocks.0.hook_resid_pre``), ``logits`` =
the final residual stream (ACDC's ``blocks.11.hook_resid_post``).

How the counts relate to ACDC's. ACDC's graph has two kinds of edges ours does not: one ``hook_q_input ->
hook_q`` edge per head and per q/k/v inside each head (a "direct computation" edge, counted in its totals;
REFERENCE §1: 32,491 + 432 = 32,923), and "placeholder" edges (``hook_q -> hook_result``, ``mlp_in ->
mlp_out``) that its edge counts leave out. The ground truths mark the internal q/k/v edges of every circuit
head present, so

* IOI: ACDC counts 1,041 = **963** edges here + 78 internal (26 circuit heads x 3);
* greater-than: ACDC counts 262 = **235** edges here + 27 internal (9 circuit heads x 3).

Nothing else differs: every other ACDC edge is a sender/receiver pair of our graph, with the same embedding
node, so the sets map one to one. :func:`ioi_ground_truth` and :func:`greater_than_ground_truth` return
exactly those 963 and 235 edges; the tests assert both counts and re-enact ACDC's construction to compare.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import product
from typing import Any

from circuitfind.engine.ablations import Ablation
from circuitfind.errors import ConfigError
from circuitfind.graph import Graph

__all__ = [
    "GREATER_THAN_HEADS",
    "GREATER_THAN_MLPS",
    "IOI_HEADS",
    "greater_than_ground_truth",
    "ioi_ground_truth",
    "tracr_ground_truth",
]

Head = tuple[int, int]

IOI_HEADS: dict[str, tuple[Head, ...]] = {
    "name mover": ((9, 9), (10, 0), (9, 6)),
    "backup name mover": ((10, 10), (10, 6), (10, 2), (10, 1), (11, 2), (9, 7), (9, 0), (11, 9)),
    "negative name mover": ((10, 7), (11, 10)),
    "s-inhibition": ((7, 3), (7, 9), (8, 6), (8, 10)),
    "induction": ((5, 5), (5, 8), (5, 9), (6, 9)),
    "duplicate token": ((0, 1), (0, 10), (3, 0)),
    "previous token": ((2, 2), (4, 11)),
}
"""The 26 IOI circuit heads by class (Wang et al. 2022), as (layer, head)."""

# (sender class, receiver class, receiver channels); "input" = embedding and every MLP, "output" = logits
# and every MLP. An edge is kept only where the graph has it (receiver downstream of sender).
_IOI_CONNECTIONS: tuple[tuple[str, str, str], ...] = (
    ("input", "previous token", "qkv"),
    ("input", "duplicate token", "qkv"),
    ("input", "s-inhibition", "q"),
    ("input", "negative name mover", "kv"),
    ("input", "name mover", "kv"),
    ("input", "backup name mover", "kv"),
    ("previous token", "induction", "kv"),
    ("induction", "s-inhibition", "kv"),
    ("duplicate token", "s-inhibition", "kv"),
    ("s-inhibition", "negative name mover", "q"),
    ("s-inhibition", "name mover", "q"),
    ("s-inhibition", "backup name mover", "q"),
    ("negative name mover", "output", ""),
    ("name mover", "output", ""),
    ("backup name mover", "output", ""),
)

GREATER_THAN_HEADS: dict[str, tuple[Head, ...]] = {
    "early 0.1": ((0, 1),),
    "early 0.3/0.5": ((0, 3), (0, 5)),
    "mid": ((5, 5), (6, 1), (6, 9), (7, 10), (8, 11), (9, 1)),
}
"""The 9 greater-than circuit heads (Hanna et al. 2023) by group, as (layer, head)."""

GREATER_THAN_MLPS: dict[str, tuple[int, ...]] = {"early": (0, 1, 2, 3), "late": (8, 9, 10, 11)}
"""The greater-than circuit MLPs by group."""


def _check_graph(graph: Graph | None) -> Graph:
    if graph is None:
        return Graph(n_layers=12, n_heads=12)
    if (graph.n_layers, graph.n_heads, graph.parallel) != (12, 12, False):
        raise ConfigError(
            "the IOI and greater-than ground truths are circuits of GPT-2 small: they need Graph(12, 12) "
            f"with sequential blocks; got {graph.describe()}"
        )
    return graph


def _head_outputs(graph: Graph, heads: Iterable[Head]) -> list[int]:
    """Sender indices of the heads."""
    return [graph.head_sender(layer, h) for layer, h in heads]


def _head_inputs(graph: Graph, heads: Iterable[Head], channels: str = "qkv") -> list[int]:
    """Receiver indices of each channel (``q``, ``k``, ``v``) of each head."""
    return [graph.head_receiver(layer, h, c) for (layer, h), c in product(heads, channels)]


class _EdgeSet:
    """Collects (sender, receiver) indices, keeping only the graph's edges (the 'receiver above sender' rule)."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.pairs: set[tuple[int, int]] = set()

    def add(self, senders: Iterable[int], receivers: Iterable[int]) -> None:
        """Every edge from one of ``senders`` to one of ``receivers`` that the graph has."""
        for s, r in product(senders, receivers):
            if self.graph.edge_mask[s, r]:
                self.pairs.add((s, r))

    def names(self) -> set[str]:
        return {self.graph.edge_name(s, r) for s, r in self.pairs}


def ioi_ground_truth(graph: Graph | None = None) -> set[str]:
    """The IOI circuit of GPT-2 small as ACDC's reference builds it: 963 edges of ``Graph(12, 12)``.

    Contents (each edge only where the receiver is downstream of the sender):

    * the group connections of Wang et al. between the 26 heads of :data:`IOI_HEADS` (REFERENCE §4), where
      "input" is ``input`` and every MLP, and "output" is ``logits`` and every MLP;
    * every MLP-to-MLP edge, ``input`` to every MLP, every MLP to ``logits``, and ``input -> logits``;
    * every MLP into every q, k and v of every circuit head;
    * every circuit head into every MLP (of its own layer and later).

    The last three items are not spelled out in the paper: ACDC's code starts from the full graph restricted
    to the circuit heads and removes only head-to-head, embedding-to-head and head-to-logits edges, so all
    edges between MLPs, embedding and logits and all edges between MLPs and circuit heads stay in. With its 78
    internal q/k/v edges (26 heads x 3) this is ACDC's count of 1,041; see the module docstring.

    Args:
        graph: ``Graph(12, 12)`` (the default); any other graph raises :class:`ConfigError`.

    Example:
        >>> edges = ioi_ground_truth()
        >>> len(edges), "a9.h9->logits" in edges
        (963, True)
    """
    graph = _check_graph(graph)
    out = _EdgeSet(graph)
    mlp_out = [graph.mlp_sender(layer) for layer in range(graph.n_layers)]
    mlp_in = [graph.mlp_receiver(layer) for layer in range(graph.n_layers)]
    sources, sinks = [graph.input_sender, *mlp_out], [*mlp_in, graph.logits_receiver]  # "input" and "output"
    circuit = [hd for heads in IOI_HEADS.values() for hd in heads]
    out.add(sources, sinks)  # input and MLPs among themselves and to the logits
    out.add(mlp_out, _head_inputs(graph, circuit))
    out.add(_head_outputs(graph, circuit), mlp_in)
    for src, dst, channels in _IOI_CONNECTIONS:
        senders = sources if src == "input" else _head_outputs(graph, IOI_HEADS[src])
        receivers = sinks if dst == "output" else _head_inputs(graph, IOI_HEADS[dst], channels)
        out.add(senders, receivers)
    return out.names()


def greater_than_ground_truth(graph: Graph | None = None) -> set[str]:
    """The greater-than circuit of GPT-2 small as ACDC's reference builds it: 235 edges of ``Graph(12, 12)``.

    Groups: heads 0.1; heads 0.3, 0.5; early MLPs 0-3; mid heads 5.5, 6.1, 6.9, 7.10, 8.11, 9.1; late MLPs
    8-11. Edges (each only where the receiver is downstream of the sender, a head feeding its own layer's MLP
    included):

    * ``input`` into q, k, v of heads 0.1, 0.3, 0.5 and into the early MLPs (13);
    * the mid heads and late MLPs into ``logits`` (10);
    * early MLPs among themselves, late MLPs among themselves (6 + 6);
    * 0.1 -> early MLPs (4); 0.1 -> mid heads' q, k, v (18); 0.3, 0.5 -> mid heads' q, k, v (36);
      early MLPs -> mid heads' q, k, v (72); mid heads -> late MLPs (23);
    * every MLP into every later MLP up to layer 8 (the 36 edges among MLPs 0-8, 30 of them new), and every
      MLP below a mid head into its q (41, 17 of them new): ACDC adds these because Hanna et al. patch the
      mid heads' query inputs with clean MLP outputs.

    That is 235 edges; with its 27 internal q/k/v edges (9 heads x 3) it is ACDC's count of 262.

    Args:
        graph: ``Graph(12, 12)`` (the default); any other graph raises :class:`ConfigError`.

    Example:
        >>> edges = greater_than_ground_truth()
        >>> len(edges), "m3->a9.h1<q>" in edges
        (235, True)
    """
    graph = _check_graph(graph)
    out = _EdgeSet(graph)
    g = GREATER_THAN_HEADS
    early01, early0305, mid = g["early 0.1"], g["early 0.3/0.5"], g["mid"]
    early_out = [graph.mlp_sender(layer) for layer in GREATER_THAN_MLPS["early"]]
    early_in = [graph.mlp_receiver(layer) for layer in GREATER_THAN_MLPS["early"]]
    late_out = [graph.mlp_sender(layer) for layer in GREATER_THAN_MLPS["late"]]
    late_in = [graph.mlp_receiver(layer) for layer in GREATER_THAN_MLPS["late"]]
    out.add([graph.input_sender], _head_inputs(graph, early01 + early0305) + early_in)
    out.add(_head_outputs(graph, mid) + late_out, [graph.logits_receiver])
    out.add(early_out, early_in)
    out.add(late_out, late_in)
    out.add(_head_outputs(graph, early01), early_in)
    out.add(_head_outputs(graph, early01 + early0305), _head_inputs(graph, mid))
    out.add(early_out, _head_inputs(graph, mid))
    out.add(_head_outputs(graph, mid), late_in)
    last_mid = max(layer for layer, _ in mid)
    out.add([graph.mlp_sender(m) for m in range(last_mid)], [graph.mlp_receiver(m) for m in range(last_mid)])
    for layer, h in mid:
        out.add([graph.mlp_sender(m) for m in range(layer)], [graph.head_receiver(layer, h, "q")])
    return out.names()


def tracr_ground_truth(meta: dict[str, Any], ablation: Ablation | str) -> tuple[str, list[str]]:
    """Which of a tracr fixture's ground truths to score ACDC against under ``ablation``, and its edges.

    * resample / mean: ``ground_truth``, the RASP data flow. The auxiliary edges (``ground_truth_aux``) carry
      only input-independent values ('one', BOS attention), which resampling cannot change.
    * zero: ``ground_truth_acdc``, the circuit ACDC's reference code scores its zero-ablation runs against;
      it is ``ground_truth`` plus the auxiliary edges whose zeroing changes the output (for reverse:
      ``input->a0.h0<v>`` and ``input->m0``; ``ground_truth`` + all of ``ground_truth_aux`` would also count
      three edges whose zeroing changes nothing).

    Args:
        meta: the fixture's metadata (:func:`circuitfind.models.tracr.load_tracr`'s second value).
        ablation: the ablation the circuits were found with.

    Returns:
        the key of the ground truth in ``meta`` and its edge names.

    Example:
        >>> from circuitfind.models.tracr import load_tracr
        >>> tracr_ground_truth(load_tracr("reverse")[1], "zero")[0]
        'ground_truth_acdc'
    """
    kind = Ablation.parse(ablation)
    key = "ground_truth_acdc" if kind is Ablation.ZERO else "ground_truth"
    return key, list(meta[key])
