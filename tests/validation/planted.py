"""A transformer built by hand for the validation tests, where the answers are known by construction.

The planted model (2 layers x 2 heads, no norms, MLPs that output 0) reads prompts ``[a, b]`` whose answer is
``a`` (wrong answer ``b``). Both real heads attend from the last position to position 0:

* ``a0.h0``, the mover, copies ``a`` into a block ``N1`` that the unembedding reads;
* ``a1.h0``, the backup, copies ``a`` minus what ``a0.h0`` wrote at position 0 into a block ``N2`` that the
  unembedding reads too. With the mover live it outputs exactly 0; with the mover removed (under any ablation)
  it outputs ``a`` minus the mover's ablated value, so the model's logits do not change: a perfect backup.
* ``a0.h1`` and ``a1.h1`` are all-zero heads (planted useless nodes), and so are the MLPs.

Hence, with mean ablation: the circuit without the backup has faithfulness 1 but is incomplete (removing the
mover from it loses the logit difference, removing it from the model does not); in the full graph, the mover
and the backup each look useless alone (K empty) and are needed once the other is removed.
"""
from __future__ import annotations

import itertools

import torch
from torch import nn

from circuitfind.engine.patchable import PatchableModel
from circuitfind.models.spec import ArchSpec, AttentionWeights, LayerSpec
from circuitfind.tasks import Task

V = 6  # tokens
E_, N1, N2 = slice(0, V), slice(V, 2 * V), slice(2 * V, 3 * V)
ONE, P0 = 3 * V, 3 * V + 1
D = 3 * V + 2
SHARP = 30.0  # attention logit on position 0: the leak to position 1 is e^-30
MOVER, USELESS, BACKUP = "a0.h0", "a0.h1", "a1.h0"


def planted_spec() -> ArchSpec:
    w = {n: torch.zeros(2, 2, D, V) for n in "QKV"}
    w_o = torch.zeros(2, 2, V, D)
    eye = torch.eye(V)
    for layer in (0, 1):  # head 0 of each layer attends from every position to position 0
        w["Q"][layer, 0, ONE, 0] = 1.0
        w["K"][layer, 0, P0, 0] = SHARP
        w["V"][layer, 0, E_, :] = eye
    w_o[0, 0, :, N1] = eye  # the mover writes a into N1
    w["V"][1, 0, N1, :] = -eye  # the backup reads a minus the mover's copy (at position 0)
    w_o[1, 0, :, N2] = eye

    def zero_mlp(x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)

    layers = tuple(
        LayerSpec(AttentionWeights(*(w[n][i] for n in "QKV"), w_o[i]), nn.Identity(), nn.Identity(), zero_mlp, 1.0)
        for i in range(2)
    )

    def embed(ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(*ids.shape, D)
        out[..., E_] = nn.functional.one_hot(ids, V).float()
        out[..., ONE] = 1.0
        out[..., P0] = (position_ids == 0).float()
        return out

    def unembed(x: torch.Tensor) -> torch.Tensor:
        return 2.0 * (x[..., N1] + x[..., N2])

    return ArchSpec(n_layers=2, n_heads=2, d_model=D, d_head=V, layers=layers, embed=embed,
                    final_norm=nn.Identity(), unembed=unembed, vocab_size=V, n_outputs=V, max_positions=4)  # fmt: skip


def planted_task(n_train: int | None = None) -> Task:
    pairs = list(itertools.permutations(range(V), 2))  # 30 prompts [a, b], a != b: every token 5 times each way
    clean = torch.tensor(pairs)
    corrupted = torch.tensor([[(a + 1) % V, b] if (a + 1) % V != b else [(a + 2) % V, b] for a, b in pairs])
    n = len(pairs)
    return Task("planted", clean, corrupted, torch.ones_like(clean), torch.full((n,), 1), clean[:, :1],
                clean[:, 1:2], n_train=n_train)  # fmt: skip



def without(pm: PatchableModel, *names: str) -> torch.Tensor:
    g = pm.graph
    return g.without_nodes(g.full_mask(), [g.sender_index(n) for n in names])

