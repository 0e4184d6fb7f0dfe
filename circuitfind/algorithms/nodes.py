"""Node-level scores (``level="node"``): heads, MLPs and the input scored as units.

Removing a node removes all its outgoing edges (:meth:`Graph.without_nodes <circuitfind.graph.Graph.without_nodes>`,
the one definition): its ablated output goes to every receiver.

* Gradient methods (``eap``, ``eap-ig``, ``eap-ig-mask``): a node gate ``g_s`` that scales every outgoing edge
  of ``s`` at once has ``d loss / d g_s = sum_r d loss / d mask[s, r]``, so the first-order node score is exactly
  the sum of the node's outgoing edge scores (:func:`node_scores_of_edges`).
* ``exact``: one patched forward per node, ``loss(without node s) - loss(full)``
  (:func:`circuitfind.algorithms.exact.run_exact_nodes`), restarting at the node's own layer from cached
  activations (the input node: a full forward), in the order of :func:`node_layers`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from circuitfind.graph import Graph

__all__ = ["node_layers", "node_scores_of_edges"]


def node_scores_of_edges(graph: Graph, scores: Tensor) -> Tensor:
    """``(S,)`` float64: each sender's outgoing edge scores summed (the first-order node score).

    Example:
        >>> g = Graph(1, 1)
        >>> node_scores_of_edges(g, g.full_mask().double()).tolist()  # edges out of input, a0.h0, m0
        [5.0, 2.0, 1.0]
    """
    return torch.where(graph.edge_mask, scores.double().cpu(), 0.0).sum(dim=1)


def node_layers(graph: Graph) -> list[tuple[int, list[int]]]:
    """``(layer, senders)`` groups in scoring order: each layer's heads and MLP restart at that layer; the input
    node (layer -1) needs a full forward.

    Example:
        >>> node_layers(Graph(2, 1))
        [(-1, [0]), (0, [1, 2]), (1, [3, 4])]
    """
    out = [(-1, [graph.input_sender])]
    for layer in range(graph.n_layers):
        out.append((layer, [graph.head_sender(layer, h) for h in range(graph.n_heads)] + [graph.mlp_sender(layer)]))
    return out
