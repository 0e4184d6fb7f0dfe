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

__all__ = ["NormParts", "frozen_norm", "split_norm"]

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


def split_norm(norm: Fn) -> NormParts:
    """The parts of a norm module of a supported family (LayerNorm, RMSNorm, identity).

    Raises:
        UnsupportedModelError: the norm is none of those.

    Example:
        >>> parts = split_norm(torch.nn.LayerNorm(4))
        >>> x = torch.randn(2, 4)
        >>> torch.allclose(parts.linear(x) / parts.scale(x) + parts.bias, torch.nn.LayerNorm(4)(x), atol=1e-6)
        True
    """
    if isinstance(norm, nn.LayerNorm):
        return _layer_norm(norm)
    if isinstance(norm, nn.RMSNorm):
        return _rms_norm(norm.weight, norm.eps if norm.eps is not None else torch.finfo(torch.float32).eps)
    if isinstance(norm, nn.Module) and hasattr(norm, "variance_epsilon") and hasattr(norm, "weight"):
        return _rms_norm(norm.weight, norm.variance_epsilon)  # transformers' Llama / Mistral / Qwen2 RMSNorm
    if isinstance(norm, nn.Identity) or getattr(norm, "__name__", "") == "_identity":
        return _identity_parts()
    raise UnsupportedModelError(
        f"cannot split the norm {type(norm).__name__} into linear part and scale; circuitfind knows LayerNorm, "
        "RMSNorm and the identity. Add the norm to circuitfind/models/norms.py."
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
    parts = split_norm(norm)
    s = parts.scale(reference)  # (..., 1)
    return lambda c: parts.linear(c) / s
