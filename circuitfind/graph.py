"""The computational graph of a transformer: senders, receivers and the edges between them.

Convention (REFERENCE §1, the MIB / EAP-IG naming):

* senders: ``input`` (embeddings), every head's output ``a{L}.h{H}``, every MLP's output ``m{L}``;
* receivers: every head's ``<q>``, ``<k>``, ``<v>`` input, every MLP's input ``m{L}``, and ``logits``;
* an edge runs from every sender to every receiver downstream of it in the residual stream.

Senders and receivers are laid out densely so that masks and scores are ``(S, R)`` tensors:

* sender index: ``input`` = 0; head ``(l, h)`` = ``1 + l*(H+1) + h``; MLP ``l`` = ``1 + l*(H+1) + H``.
* receiver index: layer ``l`` occupies ``l*(3H+1) ...``: first the H ``<q>``, then H ``<k>``, then H ``<v>``,
  then the MLP; ``logits`` is last.

Because senders are ordered by position in the residual stream, the senders upstream of any receiver are a
prefix ``0 .. n_upstream(r)``; the patched forward relies on this.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from functools import cached_property

import torch

from circuitfind.errors import ConfigError, ShapeError

__all__ = ["Edge", "Graph", "Node", "NodeKind", "Receiver", "is_position_mask", "position_edge_name"]


class NodeKind(enum.Enum):
    """What a node of the graph is."""

    INPUT = "input"
    """Token (and position) embeddings; a sender only."""
    HEAD = "head"
    """One attention head; sends its output, receives on q, k and v."""
    MLP = "mlp"
    """One MLP; sends its output and receives its input."""
    LOGITS = "logits"
    """The final residual stream (before the final norm); a receiver only."""


class Channel(enum.Enum):
    """Which input of an attention head a receiver is."""

    Q = "q"
    """The query input."""
    K = "k"
    """The key input."""
    V = "v"
    """The value input."""


@dataclass(frozen=True, order=True)
class Node:
    """A node of the graph. ``layer`` and ``head`` are -1 where they do not apply."""

    kind: NodeKind
    layer: int = -1
    head: int = -1

    @property
    def name(self) -> str:
        """``input``, ``a{L}.h{H}``, ``m{L}`` or ``logits``."""
        if self.kind is NodeKind.INPUT:
            return "input"
        if self.kind is NodeKind.HEAD:
            return f"a{self.layer}.h{self.head}"
        if self.kind is NodeKind.MLP:
            return f"m{self.layer}"
        return "logits"

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Receiver:
    """The input of a node that edges arrive at: a head's q/k/v, an MLP's input, or the logits."""

    node: Node
    channel: Channel | None = None

    @property
    def name(self) -> str:
        """``a{L}.h{H}<q>`` for head inputs, else the node's name."""
        if self.channel is None:
            return self.node.name
        return f"{self.node.name}<{self.channel.value}>"

    def __str__(self) -> str:
        return self.name


def _edge_name(sender: str, receiver: str) -> str:
    """The one place an edge name is spelled: ``{sender}->{receiver}``."""
    return f"{sender}->{receiver}"


def position_edge_name(edge: str, label: str) -> str:
    """The name of an edge at one position: ``a0.h1->a3.h7<q>@END`` (``label``: the template's position label).

    Example:
        >>> position_edge_name("a0.h1->logits", "S2")
        'a0.h1->logits@S2'
    """
    return f"{edge}@{label}"


def is_position_mask(graph: Graph, mask: object) -> bool:
    """Whether ``mask`` is a position-aware mask ``(S, R, T)`` or ``(K, S, R, T)`` of ``graph`` (a plain mask is
    ``(S, R)`` or ``(K, S, R)``; the two never share a shape, as ``S < R``).

    Example:
        >>> g = Graph(1, 1)
        >>> is_position_mask(g, torch.ones(g.n_senders, g.n_receivers, 4)), is_position_mask(g, g.full_mask())
        (True, False)
    """
    if not isinstance(mask, torch.Tensor) or mask.dim() not in (3, 4):
        return False
    lead = tuple(mask.shape[-3:-1])
    return lead == (graph.n_senders, graph.n_receivers)


@dataclass(frozen=True)
class Edge:
    """One edge: a sender node into a receiver."""

    sender: Node
    receiver: Receiver

    @property
    def name(self) -> str:
        """``a0.h1->a3.h7<q>``, ``input->m0``, ``m11->logits``."""
        return _edge_name(self.sender.name, self.receiver.name)

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Graph:
    """The dense sender x receiver layout of one model's computational graph.

    Args:
        n_layers: number of transformer blocks.
        n_heads: number of query heads per block (GQA models: k and v receivers are given per query head).
        parallel: True for parallel attention/MLP blocks (GPT-NeoX, GPT-J): no ``a{L}.h{H} -> m{L}`` edge.

    Example:
        >>> g = Graph(n_layers=12, n_heads=12)
        >>> g.n_edges, g.n_senders, g.n_receivers
        (32491, 157, 445)
    """

    n_layers: int
    n_heads: int
    parallel: bool = False

    @classmethod
    def from_model(cls, model) -> Graph:
        """The graph of a transformers model (any supported family), a ``PatchableModel`` or an ``ArchSpec``.

        Example:
            >>> from transformers import GPT2Config, GPT2LMHeadModel
            >>> Graph.from_model(GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=3, n_embd=12))).n_edges
            75
        """
        graph = getattr(model, "graph", None)
        if isinstance(graph, Graph):  # a PatchableModel
            return graph
        from circuitfind.models import spec_for  # models import this module: resolve at call time

        spec = spec_for(model)
        return cls(spec.n_layers, spec.n_heads, parallel=spec.parallel)

    def __post_init__(self) -> None:
        if self.n_layers < 1 or self.n_heads < 1:
            raise ConfigError(
                f"a graph needs at least one layer and one head; got n_layers={self.n_layers}, n_heads={self.n_heads}"
            )

    # --- sizes -----------------------------------------------------------------------------------
    @property
    def senders_per_layer(self) -> int:
        return self.n_heads + 1

    @property
    def receivers_per_layer(self) -> int:
        return 3 * self.n_heads + 1

    @property
    def n_senders(self) -> int:
        return 1 + self.n_layers * self.senders_per_layer

    @property
    def n_receivers(self) -> int:
        return self.n_layers * self.receivers_per_layer + 1

    @cached_property
    def n_edges(self) -> int:
        return int(self.n_upstream.sum())

    # --- index arithmetic ------------------------------------------------------------------------
    @property
    def input_sender(self) -> int:
        """Index of the ``input`` sender (the embeddings): 0."""
        return 0

    def head_sender(self, layer: int, head: int) -> int:
        return 1 + layer * self.senders_per_layer + head

    def mlp_sender(self, layer: int) -> int:
        return 1 + layer * self.senders_per_layer + self.n_heads

    def senders_before(self, layer: int) -> int:
        """Number of senders strictly below ``layer`` (``input`` and all of layers ``< layer``)."""
        return 1 + layer * self.senders_per_layer

    def head_receiver(self, layer: int, head: int, channel: Channel | str) -> int:
        offset = {"q": 0, "k": 1, "v": 2}[Channel(channel).value]
        return layer * self.receivers_per_layer + offset * self.n_heads + head

    def mlp_receiver(self, layer: int) -> int:
        return layer * self.receivers_per_layer + 3 * self.n_heads

    @property
    def logits_receiver(self) -> int:
        return self.n_layers * self.receivers_per_layer

    def receivers_of_layer(self, layer: int) -> range:
        """Receiver indices of block ``layer`` (q, k, v of every head, then the MLP)."""
        start = layer * self.receivers_per_layer
        return range(start, start + self.receivers_per_layer)

    def receivers_from(self, layer: int) -> int:
        """Index of the first receiver at or above ``layer`` (``n_layers`` gives the logits)."""
        return layer * self.receivers_per_layer

    def receiver_layer(self, r: int) -> int:
        """Block a receiver belongs to; ``n_layers`` for the logits."""
        return r // self.receivers_per_layer

    # --- nodes and edges -------------------------------------------------------------------------
    @cached_property
    def senders(self) -> tuple[Node, ...]:
        nodes = [Node(NodeKind.INPUT)]
        for layer in range(self.n_layers):
            nodes += [Node(NodeKind.HEAD, layer, h) for h in range(self.n_heads)]
            nodes.append(Node(NodeKind.MLP, layer))
        return tuple(nodes)

    @cached_property
    def receivers(self) -> tuple[Receiver, ...]:
        out: list[Receiver] = []
        for layer in range(self.n_layers):
            for channel in Channel:
                out += [Receiver(Node(NodeKind.HEAD, layer, h), channel) for h in range(self.n_heads)]
            out.append(Receiver(Node(NodeKind.MLP, layer)))
        out.append(Receiver(Node(NodeKind.LOGITS, self.n_layers)))
        return tuple(out)

    @cached_property
    def n_upstream(self) -> torch.Tensor:
        """``(R,)`` long: receiver r's senders are exactly ``0 .. n_upstream[r]``."""
        counts = []
        for layer in range(self.n_layers):
            before = self.senders_before(layer)
            counts += [before] * (3 * self.n_heads)
            counts.append(before if self.parallel else before + self.n_heads)
        counts.append(self.n_senders)
        return torch.tensor(counts, dtype=torch.long)

    @cached_property
    def receiver_groups(self) -> torch.Tensor:
        """``(R,)`` long: the group of each receiver, i.e. the receivers that share one upstream prefix.

        Group ``2 l`` holds the q/k/v inputs of block ``l``, ``2 l + 1`` its MLP input and ``2 L`` the logits
        (``L = n_layers``); :attr:`n_groups` in all.

        Example:
            >>> Graph(n_layers=1, n_heads=1).receiver_groups.tolist()
            [0, 0, 0, 1, 2]
        """
        per_layer = [0] * (3 * self.n_heads) + [1]
        groups = [2 * layer + g for layer in range(self.n_layers) for g in per_layer]
        return torch.tensor(groups + [2 * self.n_layers], dtype=torch.long)

    @property
    def n_groups(self) -> int:
        return 2 * self.n_layers + 1

    @cached_property
    def edge_mask(self) -> torch.Tensor:
        """``(S, R)`` bool: True where an edge exists."""
        sender_idx = torch.arange(self.n_senders).unsqueeze(1)
        return sender_idx < self.n_upstream.unsqueeze(0)

    # --- names: the only place they are made; everything else asks the graph -------------------
    @cached_property
    def sender_names(self) -> tuple[str, ...]:
        """``(S,)`` names of the senders in index order."""
        return tuple(n.name for n in self.senders)

    @cached_property
    def receiver_names(self) -> tuple[str, ...]:
        """``(R,)`` names of the receivers in index order."""
        return tuple(r.name for r in self.receivers)

    @cached_property
    def node_names(self) -> tuple[str, ...]:
        """``(S + 1,)`` names of every node: the senders in index order, then ``logits``."""
        return (*self.sender_names, self.receivers[self.logits_receiver].node.name)

    @cached_property
    def receiver_nodes(self) -> torch.Tensor:
        """``(R,)`` long: the index in :attr:`node_names` of the node each receiver belongs to."""
        index = {name: i for i, name in enumerate(self.node_names)}
        return torch.tensor([index[r.node.name] for r in self.receivers], dtype=torch.long)

    @cached_property
    def edge_names(self) -> tuple[str, ...]:
        """``(E,)`` names of every edge, sender-major (the order of ``edge_mask.nonzero()``).

        Example:
            >>> Graph(1, 1).edge_names[:3]
            ('input->a0.h0<q>', 'input->a0.h0<k>', 'input->a0.h0<v>')
        """
        s_idx, r_idx = self.edge_mask.nonzero(as_tuple=True)  # (E,), (E,)
        senders, receivers = self.sender_names, self.receiver_names
        return tuple(_edge_name(senders[s], receivers[r]) for s, r in zip(s_idx.tolist(), r_idx.tolist(), strict=True))

    def edge_name(self, s: int, r: int) -> str:
        """The name of the edge from sender ``s`` to receiver ``r`` (indices).

        Example:
            >>> g = Graph(2, 2)
            >>> g.edge_name(g.head_sender(0, 1), g.head_receiver(1, 0, "q"))
            'a0.h1->a1.h0<q>'
        """
        return _edge_name(self.sender_names[s], self.receiver_names[r])

    def nodes_touched(self, mask: torch.Tensor) -> torch.Tensor:
        """``(S + 1,)`` bool over :attr:`node_names`: the nodes that send or receive a kept edge of ``mask``.

        Example:
            >>> g = Graph(2, 2)
            >>> on = g.nodes_touched(g.mask_of(["input->a1.h0<v>", "a1.h0->logits"]))
            >>> [g.node_names[i] for i in on.nonzero().flatten().tolist()]
            ['input', 'a1.h0', 'logits']
        """
        self.check_mask(mask)
        if mask.dim() != 2:
            raise ShapeError(f"nodes_touched takes one (senders, receivers) mask; got shape {tuple(mask.shape)}")
        kept = mask.bool().cpu() & self.edge_mask  # (S, R)
        on = torch.zeros(self.n_senders + 1, dtype=torch.bool)
        on[: self.n_senders] = kept.any(dim=1)
        on[self.receiver_nodes[kept.any(dim=0)]] = True
        return on

    @cached_property
    def _sender_index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.sender_names)}

    @cached_property
    def _receiver_index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.receiver_names)}

    def sender_index(self, name: str) -> int:
        try:
            return self._sender_index[name]
        except KeyError:
            raise ConfigError(
                f"unknown sender {name!r}; expected 'input', 'a{{L}}.h{{H}}' or 'm{{L}}' with "
                f"L < {self.n_layers} and H < {self.n_heads}"
            ) from None

    def receiver_index(self, name: str) -> int:
        try:
            return self._receiver_index[name]
        except KeyError:
            raise ConfigError(
                f"unknown receiver {name!r}; expected 'a{{L}}.h{{H}}<q|k|v>', 'm{{L}}' or 'logits' with "
                f"L < {self.n_layers} and H < {self.n_heads}"
            ) from None

    def edge(self, s: int, r: int) -> Edge:
        return Edge(self.senders[s], self.receivers[r])

    def edge_index(self, name: str) -> tuple[int, int]:
        """``(sender, receiver)`` indices of an edge name such as ``a0.h1->a3.h7<q>``."""
        sender, sep, receiver = name.partition("->")
        if not sep:
            raise ConfigError(f"edge names look like 'a0.h1->a3.h7<q>'; got {name!r}")
        s, r = self.sender_index(sender), self.receiver_index(receiver)
        if not self.edge_mask[s, r]:
            raise ConfigError(f"{name!r} is not an edge of this graph: {sender} is not upstream of {receiver}")
        return s, r

    def edges_of(self, mask: torch.Tensor) -> list[Edge]:
        """The edges where a ``(S, R)`` mask is true (non-edges ignored), in sender-major order."""
        self.check_mask(mask)
        keep = (mask.bool().cpu() & self.edge_mask).nonzero().tolist()
        return [self.edge(s, r) for s, r in keep]

    def mask_of(self, edges: list[str] | list[Edge]) -> torch.Tensor:
        """``(S, R)`` bool mask that is true on the given edges (names or :class:`Edge`)."""
        mask = torch.zeros(self.n_senders, self.n_receivers, dtype=torch.bool)
        for e in edges:
            s, r = self.edge_index(e.name if isinstance(e, Edge) else e)
            mask[s, r] = True
        return mask

    def without_nodes(self, mask: torch.Tensor, nodes: torch.Tensor | list[int]) -> torch.Tensor:
        """``mask`` with the given senders removed as nodes: every outgoing edge of each is dropped.

        Removing a node ablates its output to every receiver (the IOI paper's and MIB's node removal), so the
        node's row of the ``(S, R)`` mask is cleared. ``nodes`` are sender indices (a list, a long tensor, or an
        ``(S,)`` bool tensor); ``mask`` may be ``(S, R)`` or ``(K, S, R)``. A new mask is returned.

        Example:
            >>> g = Graph(2, 2)
            >>> m = g.without_nodes(g.full_mask(), [g.head_sender(0, 1)])
            >>> int(g.full_mask().sum() - m.sum()) == int(g.full_mask()[g.head_sender(0, 1)].sum())
            True
        """
        self.check_mask(mask)
        index = torch.as_tensor(nodes)
        if index.dtype == torch.bool:
            if tuple(index.shape) != (self.n_senders,):
                raise ShapeError(f"a bool node selection must have shape ({self.n_senders},); got {tuple(index.shape)}")
            index = index.nonzero().flatten()
        index = index.long().flatten()
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self.n_senders):
            raise ShapeError(f"node indices must be sender indices in [0, {self.n_senders}); got {index.tolist()}")
        out = mask.clone()
        out[..., index.to(mask.device), :] = False
        return out

    def induced_by_nodes(self, nodes: torch.Tensor) -> torch.Tensor:
        """``(S, R)`` bool: the edges of a node-level circuit, from sender ``s`` to receiver ``r`` where both ``s``
        and ``r``'s node are kept (``logits`` always is). ``nodes``: ``(S,)`` bool over the senders.

        Every other edge is removed, so each removed node's output reaches no receiver: exactly
        :meth:`without_nodes` of the removed nodes (edges into a removed node change nothing, as its output is
        ablated everywhere).

        Example:
            >>> g = Graph(1, 1)
            >>> on = torch.tensor([True, False, True])  # input, a0.h0, m0
            >>> [e.name for e in g.edges_of(g.induced_by_nodes(on))]
            ['input->m0', 'input->logits', 'm0->logits']
        """
        nodes = torch.as_tensor(nodes).bool().cpu()
        if tuple(nodes.shape) != (self.n_senders,):
            raise ShapeError(f"a node selection must have shape ({self.n_senders},) bool; got {tuple(nodes.shape)}")
        on = torch.cat([nodes, torch.ones(1, dtype=torch.bool)])  # (S + 1,): the logits are always kept
        return nodes[:, None] & on[self.receiver_nodes][None, :] & self.edge_mask

    def full_mask(self) -> torch.Tensor:
        """``(S, R)`` bool mask with every edge present."""
        return self.edge_mask.clone()

    def check_mask(self, mask: torch.Tensor) -> None:
        """Raise :class:`ShapeError` unless ``mask`` is ``(S, R)`` or ``(K, S, R)``."""
        want = (self.n_senders, self.n_receivers)
        if not isinstance(mask, torch.Tensor) or mask.dim() not in (2, 3) or tuple(mask.shape[-2:]) != want:
            found = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ShapeError(
                f"an edge mask must have shape (senders, receivers) = {want} or (K, {want[0]}, {want[1]}); "
                f"got {found}. Build one with graph.full_mask() or graph.mask_of(edge_names)."
            )

    def describe(self) -> str:
        kind = "parallel" if self.parallel else "sequential"
        return (
            f"{self.n_layers} layers x {self.n_heads} heads ({kind} blocks): "
            f"{self.n_senders} senders, {self.n_receivers} receivers, {self.n_edges:,} edges"
        )
