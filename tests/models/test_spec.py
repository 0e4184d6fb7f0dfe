"""The spec's quirk helpers (models/spec.py), pinned by hand on tiny tensors: GPT-J's interleaved rotation, the RMS
scale that multiplies a sum of head outputs, and OLMo-2's norm over the whole key/value projection."""

from __future__ import annotations

import torch

from circuitfind.models.spec import ProjectionNorm, RMSScale, rotate_every_two


def test_rotate_every_two_by_hand():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert torch.equal(rotate_every_two(x), torch.tensor([-2.0, 1.0, -4.0, 3.0]))


def test_rms_scale_times_the_sum_is_the_norm_by_hand():
    s = torch.tensor([3.0, 4.0])  # mean square 12.5
    scale = RMSScale(torch.tensor([0.5, -1.0]), eps=0.0, offset=1.0)(s)  # Gemma: (1 + w)
    expected = torch.tensor([1.5, 0.0]) / 12.5**0.5
    torch.testing.assert_close(scale, expected)
    head_a, head_b = torch.tensor([1.0, 1.0]), torch.tensor([2.0, 3.0])  # two heads summing to s
    torch.testing.assert_close(head_a * scale + head_b * scale, s * expected)


def test_projection_norm_by_hand():
    """Two key/value heads of width 1 shared by four query heads: one RMS over both heads' projections."""
    W = torch.tensor([[[1.0], [0.0]], [[0.0], [2.0]]])  # (G=2, D=2, E=1): head 0 reads x0, head 1 reads 2*x1
    norm = ProjectionNorm(torch.tensor([1.0, 10.0]), eps=0.0, W=W, group=2)
    x = torch.tensor([3.0, 2.0])  # projections (3, 4): RMS = sqrt(12.5)
    raw = torch.tensor([3.0, 3.0, 4.0, 4.0]).reshape(1, 1, 4, 1, 1)  # (K, B, H, T, E) after repeat_kv
    out = norm(raw, x.reshape(1, 1, 1, 1, 2), None)
    expected = torch.tensor([3.0, 3.0, 40.0, 40.0]) / 12.5**0.5
    torch.testing.assert_close(out.flatten(), expected)
