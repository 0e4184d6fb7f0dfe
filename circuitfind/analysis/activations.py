"""What a clean run shows about each head: its attention patterns and its direct effect on the logits.

:func:`clean_run` is the unpatched model computed block by block from its :class:`~circuitfind.models.spec.ArchSpec`
(architecture-neutral), keeping every head's attention pattern and every sender's output; the tests hold it to
the patched forward's :meth:`~circuitfind.engine.patchable.PatchableModel.sender_outputs` and to the HF model's own
attentions and logits.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from circuitfind.engine.attention import attention_biases, attention_probs, head_outputs, project_qkv, rotary_tables
from circuitfind.engine.patchable import PatchableModel
from circuitfind.models.norms import frozen_norm

__all__ = ["CleanRun", "attention_patterns", "clean_run", "direct_effects", "logit_diff_of"]


@dataclass(frozen=True)
class CleanRun:
    """What one unpatched forward pass shows.

    Attributes:
        patterns: ``(L, B, H, T, T)`` attention probabilities (layer, prompt, head, query, key).
        outputs: ``(S, B, P, D)`` every sender's output (``input``, heads, MLPs in the graph's order) at the
            requested positions (``P = 1``) or at all of them (``P = T``).
        final: ``(B, P, D)`` the final residual stream there (the sum of the outputs plus constant biases).
    """

    patterns: Tensor
    outputs: Tensor
    final: Tensor


def clean_run(
    pm: PatchableModel,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    positions: Tensor | None = None,
    *,
    n_blocks: int | None = None,
) -> CleanRun:
    """One plain forward pass through the model's spec that keeps every head's pattern and every sender's output.

    This is the unpatched model computed block by block, without the per-receiver inputs of the patched forward
    (an order of magnitude cheaper); the tests check it against :meth:`PatchableModel.sender_outputs` and the HF
    model's own attentions and logits.

    Args:
        pm: the model.
        input_ids: ``(B, T)``.
        attention_mask: ``(B, T)``, 1 for real tokens.
        positions: ``(B,)``: keep outputs only at one position per prompt; None keeps all.
        n_blocks: compute only the first ``n_blocks`` blocks (``final`` is then the residual stream after them).

    Example:
        >>> run = clean_run(pm, torch.tensor([[1, 2, 3]]))
        >>> run.outputs.shape, run.patterns.shape  # (S, B, T, D), (L, B, H, T, T)
        (torch.Size([4, 1, 3, 8]), torch.Size([1, 1, 2, 3, 3]))
    """
    spec, dev = pm.spec, pm.device
    ids = input_ids.to(dev)
    B, T = ids.shape
    am = torch.ones_like(ids) if attention_mask is None else attention_mask.to(dev)
    pos_ids = (am.long().cumsum(-1) - 1).clamp(min=0)
    rows = torch.arange(B, device=dev)

    def keep(x: Tensor) -> Tensor:  # (..., B, T, D) -> (..., B, P, D)
        return x if positions is None else x[..., rows, positions.to(dev), :].unsqueeze(-2)

    layers = spec.layers[:n_blocks]
    with torch.no_grad():
        rot = rotary_tables(pm.spec, pos_ids, pm.dtype)
        bias = attention_biases(pm.spec, am, 1, layers, dtype=pm.dtype, device=pm.device)
        x = spec.embed(ids, pos_ids)  # (B, T, D)
        outputs, patterns = [keep(x)[None]], []
        for lay in layers:
            # the patched forward's own steps, with every receiver of the layer reading the same residual
            q, k, v = project_qkv(lay, lay.attn_norm(x)[None, None])  # (1, B, H, T, E) each
            probs = attention_probs(pm.spec, lay, q, k, rot, bias[lay.sliding_window])  # (1, B, H, T, T)
            heads = head_outputs(lay, probs @ v)[0]  # (H, B, T, D)
            attn_out = heads.sum(0) + (0 if lay.attn.b_O is None else lay.attn.b_O)
            mlp = lay.mlp(lay.mlp_norm(x if spec.parallel else x + attn_out))  # (B, T, D)
            x = x + attn_out + mlp
            patterns.append(probs[0])
            outputs += [keep(heads), keep(mlp)[None]]
    return CleanRun(torch.stack(patterns), torch.cat(outputs), keep(x))


def attention_patterns(pm: PatchableModel, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """Attention probabilities of every head on a clean run.

    Args:
        pm: the model.
        input_ids: ``(B, T)`` token ids.
        attention_mask: ``(B, T)``, 1 for real tokens (right or left padding).

    Returns:
        ``(L, B, H, T, T)`` (layer, prompt, head, query, key), each query row summing to 1.

    Example:
        >>> attention_patterns(pm, torch.tensor([[1, 2, 3]])).shape
        torch.Size([1, 1, 2, 3, 3])
    """
    return clean_run(
        pm, input_ids, attention_mask, positions=torch.zeros(input_ids.shape[0], dtype=torch.long)
    ).patterns


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
    norm's scale frozen at the full run's value, and the unembedding (before any final logit soft cap): the
    effect is the logit difference (mean correct minus mean wrong answer logit) that this alone contributes. The
    effects of all senders plus that of the constant biases add up to the full model's logit difference.

    Args:
        pm: the model.
        task: a :class:`~circuitfind.tasks.Task` with answers.

    Returns:
        ``(S, N)``: sender (``input``, heads, MLPs in the graph's order) by prompt.

    Example:
        >>> de = direct_effects(pm, task)
        >>> de.shape, de[pm.graph.head_sender(0, 1)].shape  # (senders, prompts); one head's effect per prompt
        (torch.Size([4, 3]), torch.Size([3]))
    """
    spec = pm.spec
    task = task.to(pm.device)
    run = clean_run(pm, task.clean_ids, task.attention_mask, task.answer_pos)
    with torch.no_grad():
        outs, final = run.outputs[:, :, 0], run.final[:, 0]  # (S, N, D), (N, D)
        normed = frozen_norm(spec.final_norm, final)(outs)  # (S, N, D)
        valid = torch.cat([task.answers.flatten(), task.wrong_answers.flatten()])
        cols = torch.unique(valid[valid >= 0])  # (C,)
        index = torch.full((int(cols.max()) + 1 if len(cols) else 1,), -1, dtype=torch.long, device=pm.device)
        index[cols] = torch.arange(len(cols), device=pm.device)
        linear = dataclasses.replace(spec, final_softcap=None)  # a soft cap would make the parts not add up
        zero = linear.logits(torch.zeros_like(normed[:1]), cols)  # the unembedding's own bias, if any
        logits = linear.logits(normed, cols) - zero  # (S, N, C)

        def local(ids: Tensor) -> Tensor:
            return torch.where(ids >= 0, index[ids.clamp(min=0)], ids)

        return logit_diff_of(logits, local(task.answers), local(task.wrong_answers))  # (S, N)
