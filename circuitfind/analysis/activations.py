"""What a clean run shows about each head: its attention patterns and its direct effect on the logits.

Both read the live outputs of every sender (:meth:`PatchableModel.sender_outputs`, the same exact forward that
discovery patches) and rebuild the residual stream from them: the input of block ``l`` is the sum of the
outputs of the senders below it plus the constant biases that belong to no node, and the final residual stream
is the sum of all of them. Nothing here knows an architecture.
"""

from __future__ import annotations

import torch
from torch import Tensor

from circuitfind.models.norms import frozen_norm
from circuitfind.patching import PatchableModel

__all__ = ["attention_patterns", "direct_effects", "logit_diff_of"]


def attention_patterns(pm: PatchableModel, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """Attention probabilities of every head on a clean run.

    Args:
        pm: the model.
        input_ids: ``(B, T)`` token ids.
        attention_mask: ``(B, T)``, 1 for real tokens (right or left padding).

    Returns:
        ``(L, B, H, T, T)`` (layer, prompt, head, query, key), each query row summing to 1.

    Example:
        >>> attention_patterns(pm, torch.tensor([[1, 2, 3]])).shape  # doctest: +SKIP
        torch.Size([2, 1, 4, 3, 3])
    """
    g = pm.graph
    with torch.no_grad():
        outs = pm.sender_outputs(input_ids, attention_mask)  # (S, B, T, D)
        bases = pm.ablation("zero").bases  # (G, 1, 1, D): the biases below each group of receivers
        running = torch.zeros_like(outs[0])  # (B, T, D): sum of the outputs of the senders below the layer
        patterns = []
        for layer in range(g.n_layers):
            running = running + outs[g.senders_before(layer - 1) if layer else 0 : g.senders_before(layer)].sum(0)
            patterns.append(pm.attention_pattern(layer, bases[2 * layer] + running, attention_mask))
    return torch.stack(patterns)  # (L, B, H, T, T)


def logit_diff_of(logits: Tensor, answers: Tensor, wrong: Tensor) -> Tensor:
    """Per prompt: mean logit of the valid (``>= 0``) ``answers`` minus that of ``wrong``.

    Args:
        logits: ``(..., B, V)``.
        answers: ``(B, A)`` ids padded with -1.
        wrong: ``(B, W)`` ids padded with -1 (``W`` may be 0).

    Returns:
        ``(..., B)``.

    Example:
        >>> logit_diff_of(torch.tensor([[1.0, 5.0, 2.0]]), torch.tensor([[1]]), torch.tensor([[0, 2]])).tolist()
        [3.5]
    """

    def mean_of(ids: Tensor) -> Tensor:
        valid = (ids >= 0).to(logits.dtype)  # (B, A)
        idx = ids.clamp(min=0).expand(*logits.shape[:-1], ids.shape[-1])  # (..., B, A)
        return (logits.gather(-1, idx) * valid).sum(-1) / valid.sum(-1).clamp(min=1)

    return mean_of(answers) - mean_of(wrong)


def direct_effects(pm: PatchableModel, task) -> Tensor:
    """Every sender's direct effect on the task's logit difference, per prompt.

    A sender's output at the answer position goes straight to the logits through the final norm, with the
    norm's scale frozen at the full run's value, and the unembedding: the effect is the logit difference (mean
    correct minus mean wrong answer logit) that this alone contributes. The effects of all senders plus that of
    the constant biases add up to the full model's logit difference.

    Args:
        pm: the model.
        task: a :class:`~circuitfind.tasks.Task` with answers.

    Returns:
        ``(S, N)``: sender (``input``, heads, MLPs in the graph's order) by prompt.

    Example:
        >>> de = direct_effects(pm, task)  # doctest: +SKIP
        >>> de[pm.graph.head_sender(9, 6)].mean()  # doctest: +SKIP
    """
    spec = pm.spec
    task = task.to(pm.device)
    rows = torch.arange(len(task), device=pm.device)
    with torch.no_grad():
        outs = pm.sender_outputs(task.clean_ids, task.attention_mask)[:, rows, task.answer_pos]  # (S, N, D)
        const = pm.ablation("zero").bases[-1].reshape(1, -1)  # (1, D): biases that belong to no node
        final = outs.sum(0) + const  # (N, D): the final residual stream at the answer positions
        normed = frozen_norm(spec.final_norm, final)(outs)  # (S, N, D)
        valid = torch.cat([task.answers.flatten(), task.wrong_answers.flatten()])
        cols = torch.unique(valid[valid >= 0])  # (C,)
        index = torch.full((int(cols.max()) + 1 if len(cols) else 1,), -1, dtype=torch.long, device=pm.device)
        index[cols] = torch.arange(len(cols), device=pm.device)
        zero = spec.logits(torch.zeros_like(normed[:1]), cols)  # the unembedding's own bias, if any
        logits = spec.logits(normed, cols) - zero  # (S, N, C)

        def local(ids: Tensor) -> Tensor:
            return torch.where(ids >= 0, index[ids.clamp(min=0)], ids)

        return logit_diff_of(logits, local(task.answers), local(task.wrong_answers))  # (S, N)
