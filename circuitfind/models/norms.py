"""Norms split into their parts, so that a residual component can be normed with another vector's scale.

Every norm the supported families use has the form ``f(x) = linear(x) / scale(x) + bias`` per position along
the last axis: LayerNorm (``linear`` centres and multiplies by the weight, ``scale`` is the standard deviation),
RMSNorm (``linear`` multiplies by the weight, ``scale`` is the root mean square), and the identity of models
without norms. Direct logit attribution freezes ``scale`` at the full run's value, so that the normed
components of a residual stream add up to its normed sum minus the bias; :func:`frozen_norm` gives that map.
Knowing which module is which norm is architecture knowledge, so it lives here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from circuitfind.errors import UnsupportedModelError

__all__ = ["NormParts", "NormThenLinear", "frozen_norm", "split_norm"]

Fn = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class NormParts:
    """A norm ``f(x) = linear(x) / scale(x) + bias``.

    Attributes:
        linear: ``(..., D) -> (..., D)``, linear in ``x`` (no bias).
        scale: ``(..., D) -> (..., 1)``, the per-position divisor.
        bias: ``(D,)`` or None.
    """

    linear: Fn
    scale: Fn
    bias: Tensor | None


@dataclass(frozen=True)
class NormThenLinear:
    """A norm followed by a linear map without bias (OPT's final norm and ``project_out``), still split-able:
    ``linear(norm(x)) = linear(norm.linear(x)) / norm.scale(x) + linear(norm.bias)``."""

    norm: Fn
    linear: nn.Linear

    def __call__(self, x: Tensor) -> Tensor:
        return self.linear(self.norm(x))


def _layer_norm(norm: nn.LayerNorm) -> NormParts:
    w = norm.weight

    def linear(x: Tensor) -> Tensor:
        centred = x - x.mean(-1, keepdim=True)
        return centred if w is None else centred * w

    def scale(x: Tensor) -> Tensor:
        return (x.var(-1, keepdim=True, unbiased=False) + norm.eps).sqrt()

    return NormParts(linear, scale, norm.bias)


def _rms_norm(weight: Tensor | None, eps: float) -> NormParts:
    def linear(x: Tensor) -> Tensor:
        return x if weight is None else x * weight

    def scale(x: Tensor) -> Tensor:
        return (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()

    return NormParts(linear, scale, None)


def _identity_parts() -> NormParts:
    return NormParts(lambda x: x, lambda x: torch.ones_like(x[..., :1]), None)


def _candidates(norm: Fn) -> list[NormParts]:
    """The splits ``norm`` might have, from its type and attributes; :func:`split_norm` keeps the one that
    reproduces it. RMSNorms come with or without Gemma's ``(1 + weight)``, which no attribute tells apart."""
    if isinstance(norm, NormThenLinear) and norm.linear.bias is None:
        lin = norm.linear
        return [
            NormParts(lambda x, p=p: lin(p.linear(x)), p.scale, None if p.bias is None else lin(p.bias))
            for p in _candidates(norm.norm)
        ]
    if isinstance(norm, nn.LayerNorm):
        return [_layer_norm(norm)]
    weight = getattr(norm, "weight", None)
    eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", None))
    if isinstance(norm, nn.Module) and isinstance(weight, Tensor) and isinstance(eps, float | int):
        return [_rms_norm(weight, float(eps)), _rms_norm(1 + weight, float(eps))]
    if isinstance(norm, nn.RMSNorm):  # torch's RMSNorm without a weight
        return [_rms_norm(None, norm.eps if norm.eps is not None else torch.finfo(torch.float32).eps)]
    return [_identity_parts()]


def _reproduces(norm: Fn, parts: NormParts, width: int, like: Tensor | None) -> bool:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, width, generator=gen) * 3
    if like is not None:
        x = x.to(like.device, like.dtype)
    with torch.no_grad():
        want = norm(x)
        got = parts.linear(x) / parts.scale(x) + (0 if parts.bias is None else parts.bias)
    return want.shape == got.shape and torch.allclose(want.double(), got.double(), rtol=1e-3, atol=1e-4)


def split_norm(norm: Fn, width: int) -> NormParts:
    """The parts of a norm of a supported family (LayerNorm, RMSNorm with ``weight`` or ``1 + weight``, identity),
    checked to reproduce the norm on a probe.

    Args:
        norm: the norm (a module, or a function for models without norms).
        width: the width ``D`` it normalises.

    Raises:
        UnsupportedModelError: no known split reproduces it.

    Example:
        >>> ln = torch.nn.LayerNorm(4)
        >>> parts = split_norm(ln, 4)
        >>> x = torch.randn(2, 4)
        >>> torch.allclose(parts.linear(x) / parts.scale(x) + parts.bias, ln(x), atol=1e-6)
        True
    """
    inner = norm.norm if isinstance(norm, NormThenLinear) else norm
    like = next(inner.parameters(), None) if isinstance(inner, nn.Module) else None  # the probe's dtype and device
    for parts in _candidates(norm):
        if _reproduces(norm, parts, width, like):
            return parts
    raise UnsupportedModelError(
        f"cannot split the norm {type(norm).__name__} into a linear part and a per-position scale; circuitfind "
        "knows LayerNorm, RMSNorm (weight or 1 + weight) and the identity. Add the norm to "
        "circuitfind/models/norms.py."
    )


def frozen_norm(norm: Fn, reference: Tensor) -> Fn:
    """``c -> linear(c) / scale(reference)``: the norm of ``reference``'s components with its scale frozen.

    The components of ``reference`` ``(..., D)`` (any vectors that sum to it) map to vectors that sum to
    ``norm(reference) - bias``; this is how direct logit attribution splits a final residual stream.

    Args:
        norm: the norm module (e.g. ``spec.final_norm``).
        reference: ``(..., D)``, the vector whose scale is used; components must broadcast against it.

    Example:
        >>> ln = torch.nn.LayerNorm(4)
        >>> a, b = torch.randn(4), torch.randn(4)
        >>> f = frozen_norm(ln, a + b)
        >>> torch.allclose(f(a) + f(b) + ln.bias, ln(a + b), atol=1e-6)
        True
    """
    parts = split_norm(norm, reference.shape[-1])
    s = parts.scale(reference)  # (..., 1)
    return lambda c: parts.linear(c) / s
