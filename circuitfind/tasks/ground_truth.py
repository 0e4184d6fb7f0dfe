"""Ground-truth circuits of GPT-2 small (IOI and greater-than), as edge names of our graph.

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

from itertools import product

from circuitfind.errors import ConfigError
from circuitfind.graph import Graph

__all__ = [
    "GREATER_THAN_HEADS",
    "GREATER_THAN_MLPS",
    "IOI_HEADS",
    "greater_than_ground_truth",
    "ioi_ground_truth",
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


def _head(layer: int, head: int) -> str:
    return f"a{layer}.h{head}"


def _head_inputs(heads: tuple[Head, ...], channels: str) -> list[tuple[int, str]]:
    """(layer, receiver name) of each channel of each head."""
    return [(layer, f"{_head(layer, h)}<{c}>") for (layer, h), c in product(heads, channels)]


class _EdgeSet:
    """Collects edge names, keeping only those the graph has (the 'receiver above sender' rule)."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.names: set[str] = set()

    def add(self, sender: str, receiver: str) -> None:
        s, r = self.graph.sender_index(sender), self.graph.receiver_index(receiver)
        if self.graph.edge_mask[s, r]:
            self.names.add(f"{sender}->{receiver}")


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
    mlps = [f"m{layer}" for layer in range(graph.n_layers)]
    circuit = [hd for heads in IOI_HEADS.values() for hd in heads]
    for sender in ["input", *mlps]:  # input and MLPs among themselves and to the logits
        for receiver in [*mlps, "logits"]:
            out.add(sender, receiver)
    for mlp, (_, receiver) in product(mlps, _head_inputs(tuple(circuit), "qkv")):
        out.add(mlp, receiver)
    for (layer, h), mlp in product(circuit, mlps):
        out.add(_head(layer, h), mlp)
    for src, dst, channels in _IOI_CONNECTIONS:
        senders = ["input", *mlps] if src == "input" else [_head(*hd) for hd in IOI_HEADS[src]]
        receivers = [*mlps, "logits"] if dst == "output" else [r for _, r in _head_inputs(IOI_HEADS[dst], channels)]
        for sender, receiver in product(senders, receivers):
            out.add(sender, receiver)
    return out.names


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
    early_mlps = [f"m{layer}" for layer in GREATER_THAN_MLPS["early"]]
    late_mlps = [f"m{layer}" for layer in GREATER_THAN_MLPS["late"]]

    def inputs(heads: tuple[Head, ...], channels: str = "qkv") -> list[str]:
        return [r for _, r in _head_inputs(heads, channels)]

    def outputs(heads: tuple[Head, ...]) -> list[str]:
        return [_head(*hd) for hd in heads]

    pairs: list[tuple[list[str], list[str]]] = [
        (["input"], inputs(early01 + early0305) + early_mlps),
        (outputs(mid) + late_mlps, ["logits"]),
        (early_mlps, early_mlps),
        (late_mlps, late_mlps),
        (outputs(early01), early_mlps),
        (outputs(early01), inputs(mid)),
        (outputs(early0305), inputs(mid)),
        (early_mlps, inputs(mid)),
        (outputs(mid), late_mlps),
    ]
    last_mid = max(layer for layer, _ in mid)
    pairs.append(([f"m{layer}" for layer in range(last_mid)], [f"m{layer}" for layer in range(last_mid)]))
    for layer, h in mid:
        pairs.append(([f"m{m}" for m in range(layer)], [f"{_head(layer, h)}<q>"]))
    for senders, receivers in pairs:
        for sender, receiver in product(senders, receivers):
            out.add(sender, receiver)
    return out.names
