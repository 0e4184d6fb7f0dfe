"""The tracr tasks: ACDC's data and metric for the packaged compiled RASP programs.

:func:`tracr_setup` loads a tracr model (:mod:`circuitfind.models.tracr`) and builds the task ACDC runs on it
and the L2 metric (:func:`circuitfind.metrics.output_mse`) bound to the full model's outputs. Which ground truth
to score against lives beside the other ground truths: :func:`circuitfind.tasks.ground_truth.tracr_ground_truth`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from circuitfind.engine.patchable import PatchableModel
from circuitfind.errors import ConfigError
from circuitfind.metrics import output_mse
from circuitfind.models.tracr import TRACR_MODELS, TracrTokenizer, load_tracr
from circuitfind.tasks.base import Task

__all__ = ["TracrSetup", "tracr_setup"]

_DEFAULT_SEQUENCES = {"reverse": None, "proportion": 64}  # None = every sequence
_ALPHABETS = {"reverse": (("a", "b", "c"), 3), "proportion": (("w", "x", "y", "z"), 4)}  # (tokens, length)


@dataclass(frozen=True)
class TracrSetup:
    """A tracr model with the task and metric ACDC runs on.

    Attributes:
        name: ``reverse`` or ``proportion``.
        pm: the patchable model.
        task: one prompt per (input sequence, output position); no held-out split.
        metric: :func:`~circuitfind.metrics.output_mse` bound to the full model's outputs on ``task``.
        meta: the fixture's metadata (vocabularies, ground truths...).
    """

    name: str
    pm: PatchableModel
    task: Task
    metric: Callable[[Tensor], Tensor]
    meta: dict[str, Any]


def _derangement(n: int, gen: torch.Generator) -> Tensor:
    """A random permutation without fixed points (every prompt is paired with another one)."""
    if n < 2:
        raise ConfigError(f"resample pairs need at least 2 input sequences; got {n}")
    while True:
        perm = torch.randperm(n, generator=gen)
        if not bool((perm == torch.arange(n)).any()):
            return perm


def _sequences(name: str, n_sequences: int | None, gen: torch.Generator) -> list[list[str]]:
    """Every input sequence of the program, or a seeded sample of ``n_sequences`` of them (in order)."""
    alphabet, length = _ALPHABETS[name]
    seqs = [list(s) for s in itertools.product(alphabet, repeat=length)]
    n = _DEFAULT_SEQUENCES[name] if n_sequences is None else n_sequences
    if n is None:
        return seqs
    if not 2 <= n <= len(seqs):
        raise ConfigError(f"n_sequences for tracr-{name} must be in 2..{len(seqs)}; got {n}")
    pick = torch.randperm(len(seqs), generator=gen)[:n].sort().values
    return [seqs[i] for i in pick]


def tracr_setup(name: str, *, n_sequences: int | None = None, seed: int = 0) -> TracrSetup:
    """Load a packaged tracr model and build the task ACDC runs on (as in ``acdc/tracr_task/utils.py``).

    Inputs. ``reverse``: every sequence of 3 tokens over {a, b, c} after BOS (27 sequences, 4 positions each,
    the length ACDC used; ACDC took only the 6 permutations). ``proportion``: a sample of the 256 sequences of
    4 tokens over {w, x, y, z} (64 by default; ACDC used 50). The corrupted input of sequence ``i`` is another
    sequence of the set (a random pairing without fixed points), as ACDC paired them.

    One prompt per (sequence, output position): the engine's metrics read one position per prompt, and tracr
    writes an output at every non-BOS position, so each prompt reads one of them (``answer_pos`` = that
    position) and the metric averages over all of them -- exactly ACDC's metric over ``logits[:, 1:]``.

    Metric: :func:`~circuitfind.metrics.output_mse` against the full model (ACDC's ``l2``). KL is not used:
    reverse's outputs are one-hot values rather than logits (ACDC's code refuses KL for it) and proportion's
    output is one number.

    Args:
        name: ``reverse`` or ``proportion`` (a ``tracr-`` prefix is accepted).
        n_sequences: how many input sequences (a seeded sample); None = the default above.
        seed: seeds the sample and the pairing.

    Raises:
        ConfigError: an unknown program, or ``n_sequences`` out of range.

    Example:
        >>> setup = tracr_setup("reverse")
        >>> len(setup.task), setup.task.seq_len
        (81, 4)
    """
    name = name.removeprefix("tracr-")
    if name not in TRACR_MODELS:
        raise ConfigError(f"unknown tracr model {name!r}; expected one of {', '.join(TRACR_MODELS)}")
    spec, meta = load_tracr(name)
    pm = PatchableModel(spec)
    gen = torch.Generator().manual_seed(int(seed))
    seqs = _sequences(name, n_sequences, gen)
    ids = TracrTokenizer(meta).encode(seqs)  # (N, T)
    corrupted = ids[_derangement(len(seqs), gen)]  # (N, T)
    n_pos = ids.shape[1] - 1  # outputs at positions 1..T-1
    clean_ids = ids.repeat_interleave(n_pos, dim=0)  # (N * P, T)
    positions = torch.arange(1, n_pos + 1).repeat(len(seqs))  # (N * P,)
    none = torch.zeros(len(positions), 0, dtype=torch.long)  # no answer tokens: only model-based metrics
    task = Task(
        name=f"tracr-{name}",
        clean_ids=clean_ids,
        corrupted_ids=corrupted.repeat_interleave(n_pos, dim=0),  # (N * P, T)
        attention_mask=torch.ones_like(clean_ids),
        answer_pos=positions,
        answers=none,
        wrong_answers=none,
        seed=seed,
    )
    with torch.no_grad():
        ref = pm.forward(clean_ids, pm.ablation("zero"), pm.graph.full_mask(), positions=positions)  # (B, V)
    return TracrSetup(name, pm, task, output_mse(ref), meta)
