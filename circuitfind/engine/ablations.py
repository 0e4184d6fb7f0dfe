"""What a removed edge carries: the ablation kinds and the ablated outputs of every sender.

:meth:`PatchableModel.ablation <circuitfind.engine.patchable.PatchableModel.ablation>` builds them;
:func:`circuitfind.problem.ablation_for` picks the prompts they are built from for a task.

Example:
    >>> from circuitfind.engine.ablations import Ablation
    >>> Ablation.parse("Mean")
    <Ablation.MEAN: 'mean'>
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from torch import Tensor

from circuitfind.errors import ConfigError

__all__ = ["AblatedOutputs", "Ablation"]


class Ablation(enum.Enum):
    """What a removed edge carries instead of its sender's live output."""

    RESAMPLE = "resample"
    """The sender's output on the paired corrupted prompt (the default and the most robust)."""
    MEAN = "mean"
    """The sender's mean output over a reference batch (per position when lengths agree)."""
    ZERO = "zero"
    """Zero; biases that belong to no single node (attention output biases) stay."""

    @classmethod
    def parse(cls, value: Ablation | str) -> Ablation:
        try:
            return value if isinstance(value, Ablation) else cls(str(value).lower())
        except ValueError:
            raise ConfigError(f"unknown ablation {value!r}; expected one of {[a.value for a in cls]}") from None


@dataclass(frozen=True)
class AblatedOutputs:
    """The ablated output of every sender and the per-group residual sums they form.

    Attributes:
        kind: how they were made.
        outputs: ``(S, B', T', D)`` with ``B'`` in {1, B} and ``T'`` in {1, T} (broadcast over the batch).
        bases: ``(G, B', T', D)``, one per receiver group (attention inputs of a layer, MLP input of a layer,
            logits): constant biases plus the sum of the group's upstream ablated outputs.
    """

    kind: Ablation
    outputs: Tensor
    bases: Tensor

    def select(self, rows: slice, batch: int) -> AblatedOutputs:
        """The ablation of prompts ``rows`` of a batch of ``batch`` prompts (broadcast ones stay as they are)."""

        def pick(t: Tensor) -> Tensor:  # (N, B'|B, T', D)
            return t[:, rows] if t.shape[1] == batch else t

        return AblatedOutputs(self.kind, pick(self.outputs), pick(self.bases))
