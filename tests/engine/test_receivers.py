"""Receiver-input arithmetic (engine/receivers.py) against sums written out row by row, on small float64 tensors."""

from __future__ import annotations

import pytest
import torch

from circuitfind.engine.receivers import distinct_columns, mix_onto

S = (2, 3, 4)  # (B, T, D) of every row


def _written_out(x0, parts):
    """``x0[c] + sum_parts sum_s w[s, c] * rows[s]`` with Python loops: ``(C, *S)``."""
    C = parts[0][1].shape[1]
    out = []
    for c in range(C):
        acc = x0[c if x0.shape[0] > 1 else 0].expand(S).clone()
        for rows, w in parts:
            for s in range(rows.shape[0]):
                acc = acc + w[s, c] * rows[s]
        out.append(acc)
    return torch.stack(out)


def _weights(n, C, kind, gen):
    """``(n, C)`` weights: kind picks which of mix_onto's branches the sum takes."""
    w = torch.ones(n, C, dtype=torch.float64)
    if kind == "mostly kept":  # from the total: a few rows differ from one (removed or a float)
        w[1, 0], w[3, C - 1], w[4, :] = 0.0, 0.5, 0.0
    elif kind == "mostly removed":  # from the kept rows, densely
        w = (torch.rand(n, C, generator=gen) < 0.4).double()
        w[:, 0] = 0.0
    elif kind == "few kept rows":  # so few rows take part that they are gathered
        w = torch.zeros(n, C, dtype=torch.float64)
        w[5, :] = torch.rand(C, generator=gen, dtype=torch.float64)
        w[17, 1 % C] = -0.75
    elif kind == "few removed rows":  # gathered from the total side
        w[9, 0] = 0.0
        w[20, C - 1] = 0.3
    elif kind == "none kept":
        w = torch.zeros(n, C, dtype=torch.float64)
    return w


KINDS = ["all kept", "mostly kept", "mostly removed", "few kept rows", "few removed rows", "none kept"]


@pytest.mark.parametrize("C", [1, 9, 27])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("x0_cols", ["one", "per column"])
def test_mix_onto_is_the_written_out_sum(C, kind, x0_cols):
    gen = torch.Generator().manual_seed(C)
    n0, n1 = 2, 22  # two parts (the prefix senders and those of this pass)
    rows = [torch.randn(n, *S, generator=gen, dtype=torch.float64) for n in (n0, n1)]
    w = _weights(n0 + n1, C, kind, gen)
    parts = [(rows[0], w[:n0]), (rows[1], w[n0:])]
    x0 = torch.randn(1 if x0_cols == "one" else C, 1, 3, 4, generator=gen, dtype=torch.float64)  # broadcast B
    total = (rows[0].sum(0) + rows[1].sum(0)).unsqueeze(0)
    want = _written_out(x0, parts)
    for known_total in (total, None):
        got = mix_onto(x0, parts, known_total)
        assert got.shape[1:] == S and got.shape[0] in (1, C)
        diff = float((got.expand(C, *S) - want).abs().max())
        assert diff <= 1e-12, f"{kind}, total {'known' if known_total is not None else 'unknown'}: {diff:.3g}"


def test_mix_onto_leaves_its_inputs_unchanged():
    """The cached partial inputs it starts from are read, never written (they serve every later test)."""
    gen = torch.Generator().manual_seed(0)
    rows = torch.randn(6, *S, generator=gen, dtype=torch.float64)
    x0 = torch.randn(3, *S, generator=gen, dtype=torch.float64)
    w = torch.ones(6, 3, dtype=torch.float64)
    w[2, 1] = 0.0
    before = x0.clone()
    mix_onto(x0, [(rows, w)], rows.sum(0, keepdim=True))
    mix_onto(x0, [(rows, torch.zeros(6, 3, dtype=torch.float64))], None)
    assert torch.equal(x0, before)


def test_distinct_columns_groups_the_receivers_that_agree():
    w = torch.tensor([[[1.0, 0.0, 1.0, 1.0], [1.0, 1.0, 1.0, 0.5]]])  # (K=1, n=2, C=4): columns 0 and 2 agree
    first, which = distinct_columns(w)
    assert which[0] == which[2] and len({int(which[0]), int(which[1]), int(which[3])}) == 3
    assert sorted(first.tolist()) == [0, 1, 3]  # the first column of each group
    for c in range(4):
        assert torch.equal(w[:, :, int(first[which[c]])], w[:, :, c])
    assert distinct_columns(w[:, :, [0, 1, 3]]) is None  # all differ: nothing to share
    stacked = torch.cat([w, w.flip(2)])  # (K=2): columns agree only when they agree under every mask
    assert distinct_columns(stacked) is None
    by_position = torch.ones(1, 2, 3, 5)  # (K, n, C, T): position masks
    by_position[0, 1, 2, 4] = 0.0
    first, which = distinct_columns(by_position)
    assert which[0] == which[1] != which[2] and sorted(first.tolist()) == [0, 2]
