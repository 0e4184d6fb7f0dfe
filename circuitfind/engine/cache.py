"""The prefix cache: a forward's state below a layer, so that exact tests restart there (ACDC, exact scores,
path patching)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

__all__ = ["PrefixCache"]


@dataclass(frozen=True)
class PrefixCache:
    """Everything below ``start_layer``, so that a forward can restart there.

    Attributes:
        start_layer: the first block the forward computes.
        diffs: ``(S_pre, B, T, D)`` live-minus-ablated outputs of the senders below ``start_layer``.
        mask: ``(S, R)`` float mask those were computed under.
        partial: ``(R_after, B, T, D)``: for every receiver above ``start_layer``, its base plus the
            contributions of the senders below ``start_layer`` under ``mask``.
        start_inputs: ``(C, B, T, D)``: the same for the receivers *of* ``start_layer``, under ``start_mask``
            (``(S_pre, C)``); a forward adds only the rows where its mask differs, so candidates that change one
            edge there cost one row. :meth:`PatchableModel.refresh_cache` moves them to a newer mask.
    """

    start_layer: int
    diffs: Tensor
    mask: Tensor
    partial: Tensor
    start_inputs: Tensor
    start_mask: Tensor
