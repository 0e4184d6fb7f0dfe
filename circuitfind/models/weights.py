"""The weights of every node of the graph, read from a model's :class:`~circuitfind.models.spec.ArchSpec`.

What belongs to a node:

* a head ``a{L}.h{H}``: its own slices of ``W_Q``, ``W_K``, ``W_V``, ``W_O`` and of the q/k/v biases, and the
  parameters of the block's attention norm (shared by the block's heads, so a change there shows in each of
  them). With grouped-query attention the spec repeats the shared key/value weights for every query head, so a
  change of a shared k/v weight is attributed to every query head of its group.
* an MLP ``m{L}``: the parameters of the MLP module and of its norm.
* ``input``: the embedding table as the adapter's ``embed`` reads it, every token at position 0 (token plus
  first position embedding); later position embeddings are not compared.

The adapters build the spec; this module only reads it, so it knows no architecture.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from circuitfind.models.spec import ArchSpec

__all__ = ["node_weights"]


def _params(fn: Callable | None) -> list[Tensor]:
    """The parameters of a module (or of the module a bound method belongs to); none for plain functions."""
    owner = fn if isinstance(fn, nn.Module) else getattr(fn, "__self__", None)
    return [p.detach() for p in owner.parameters()] if isinstance(owner, nn.Module) else []


def node_weights(spec: ArchSpec) -> list[list[Tensor]]:
    """The weight tensors of every sender, in the graph's sender order (``input``, per layer its heads, its MLP).

    Args:
        spec: a model's spec (``PatchableModel(model).spec``).

    Returns:
        entry ``i`` belongs to sender ``i`` of the graph (``graph.sender_names[i]``); tensors are detached.

    Example:
        >>> w = node_weights(pm.spec)
        >>> len(w) == pm.graph.n_senders, [tuple(t.shape) for t in w[pm.graph.head_sender(0, 1)][:2]]  # W_Q, W_K
        (True, [(8, 4), (8, 4)])
    """
    out: list[list[Tensor]] = [[]]
    if spec.vocab_size is not None:
        with torch.no_grad():
            ids = torch.arange(spec.vocab_size, device=spec.layers[0].attn.W_Q.device)[None]
            out[0] = [spec.embed(ids, torch.zeros_like(ids))[0].detach()]  # (V, D)
    for lay in spec.layers:
        a = lay.attn
        norm = _params(lay.attn_norm)
        for h in range(spec.n_heads):
            own = [a.W_Q[h], a.W_K[h], a.W_V[h], a.W_O[h]]
            own += [b[h] for b in (a.b_Q, a.b_K, a.b_V) if b is not None]
            out.append([t.detach() for t in own] + norm)
        out.append(_params(lay.mlp) + _params(lay.mlp_norm))
    return out
