"""Bootstrap confidence intervals over prompts, from stored per-prompt metric values (REFERENCE §8).

Nothing here runs a model: the intervals resample the per-prompt metric values a faithfulness evaluation has
already stored (``m(C)``, ``m(N)`` and ``m(empty)`` on every prompt), so a callable metric costs nothing more.
Prompts are resampled *jointly* (prompt i's three values stay together), the statistic is recomputed on each
resample and the interval is the percentile interval of those statistics.

* :class:`Interval`: a frozen ``(lo, hi, level, n_boot, seed)``.
* :func:`resample_indices`: the ``(n_boot, n)`` index draws, seeded (a private generator; the global RNG is
  untouched). Every function below draws through it, so the same seed gives the same resamples everywhere.
* :func:`bootstrap_interval`: any statistic of a resampled index set.
* :func:`faithfulness_interval` / :func:`faithfulness_intervals`: MIB's ``f = (mean C - mean empty) / (mean N -
  mean empty)`` for one circuit / for a stack of circuits on the same prompts.
* :func:`cpr_cmd_interval`: CPR and CMD (areas under the faithfulness curve, REFERENCE §6) with their intervals.

A one-sided lower bound at confidence ``c`` is the ``lo`` of the two-sided interval at ``level = 2c - 1``
(:func:`lower_bound_level`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from circuitfind.errors import ConfigError, ShapeError, check_int

__all__ = [
    "Interval",
    "bootstrap_interval",
    "cpr_cmd_interval",
    "faithfulness_interval",
    "faithfulness_intervals",
    "lower_bound_level",
    "resample_indices",
]


@dataclass(frozen=True)
class Interval:
    """A percentile bootstrap interval.

    Attributes:
        lo: lower end (NaN when no resample gave a finite statistic).
        hi: upper end.
        level: two-sided coverage, e.g. 0.95.
        n_boot: number of resamples.
        seed: seed of the resampling.
    """

    lo: float
    hi: float
    level: float
    n_boot: int
    seed: int

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict with the five fields.

        Example:
            >>> Interval(0.7, 0.9, 0.95, 1000, 0).to_dict()
            {'lo': 0.7, 'hi': 0.9, 'level': 0.95, 'n_boot': 1000, 'seed': 0}
        """
        return asdict(self)

    def contains(self, value: float) -> bool:
        """Whether ``lo <= value <= hi``.

        Example:
            >>> Interval(0.7, 0.9, 0.95, 1000, 0).contains(0.8)
            True
        """
        return self.lo <= value <= self.hi

    def __str__(self) -> str:
        return f"[{self.lo:.3f}, {self.hi:.3f}]"


def _check_options(n_boot: Any, level: Any, seed: Any) -> None:
    check_int(n_boot, "n_boot", what="bootstrap resamples")
    if isinstance(level, bool) or not isinstance(level, numbers.Real) or not 0 < float(level) < 1:
        raise ConfigError(f"level (the interval's coverage) must be a number in (0, 1), e.g. 0.95; got {level!r}")
    check_int(seed, "seed", minimum=None)


def lower_bound_level(confidence: float) -> float:
    """The two-sided level whose ``lo`` is the one-sided lower bound at ``confidence`` (``2c - 1``).

    Example:
        >>> round(lower_bound_level(0.9), 6)
        0.8
    """
    ok = not isinstance(confidence, bool) and isinstance(confidence, numbers.Real) and 0.5 < confidence < 1
    if not ok:
        raise ConfigError(f"confidence must be a number in (0.5, 1), e.g. 0.9; got {confidence!r}")
    return 2 * float(confidence) - 1


def resample_indices(n: int, n_boot: int, seed: int) -> Tensor:
    """``(n_boot, n)`` long indices drawn uniformly with replacement from ``0..n-1``, seeded.

    Example:
        >>> idx = resample_indices(5, 3, seed=0)
        >>> tuple(idx.shape), bool((idx == resample_indices(5, 3, seed=0)).all())
        ((3, 5), True)
    """
    check_int(n, "n", what="prompts to resample")
    _check_options(n_boot, 0.5, seed)
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randint(0, n, (n_boot, n), generator=gen)


def _percentile(stats: Tensor, level: float, n_boot: int, seed: int) -> Interval:
    """The percentile interval of the finite bootstrap statistics ``(n_boot,)``."""
    finite = stats[torch.isfinite(stats)].double()
    if finite.numel() == 0:
        return Interval(math.nan, math.nan, float(level), n_boot, seed)
    alpha = (1 - float(level)) / 2
    q = torch.quantile(finite, torch.tensor([alpha, 1 - alpha], dtype=torch.float64))
    return Interval(float(q[0]), float(q[1]), float(level), n_boot, seed)


def bootstrap_interval(
    statistic: Callable[[Tensor], float], n: int, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> Interval:
    """Percentile interval of ``statistic`` over ``n_boot`` resampled index sets of ``0..n-1``.

    Resamples whose statistic is NaN or infinite (e.g. a zero denominator) are left out of the percentiles.

    Args:
        statistic: maps ``(n,)`` long indices (a resample of the prompts) to a float.
        n: number of prompts.
        n_boot: number of resamples.
        level: two-sided coverage in (0, 1).
        seed: seed of :func:`resample_indices`.

    Returns:
        an :class:`Interval`.

    Example:
        >>> x = torch.tensor([1.0, 2.0, 3.0, 4.0])
        >>> ci = bootstrap_interval(lambda i: float(x[i].mean()), 4, n_boot=200, seed=0)
        >>> 1.0 <= ci.lo < 2.5 < ci.hi <= 4.0
        True
    """
    _check_options(n_boot, level, seed)
    idx = resample_indices(n, n_boot, seed)
    stats = torch.tensor([float(statistic(row)) for row in idx], dtype=torch.float64)
    return _percentile(stats, level, n_boot, seed)


def _as_values(name: str, values: Any) -> Tensor:
    t = torch.as_tensor(values).detach().cpu()
    if t.is_complex() or t.dtype == torch.bool:
        raise ShapeError(f"{name} must hold real per-prompt metric values; got dtype {t.dtype}")
    return t.double()


def _check_rows(circuits: Any, full: Any, empty: Any) -> tuple[Tensor, Tensor, Tensor]:
    """``(K, n)``, ``(n,)``, ``(n,)`` float64 per-prompt values, or a :class:`ShapeError`."""
    c, nf, ne = _as_values("circuit", circuits), _as_values("full", full), _as_values("empty", empty)
    if nf.dim() != 1 or ne.dim() != 1 or nf.numel() == 0 or nf.shape != ne.shape:
        raise ShapeError(
            "full and empty must be 1-D per-prompt metric values of the same length (one value per prompt); got "
            f"shapes {tuple(nf.shape)} and {tuple(ne.shape)}"
        )
    if c.dim() != 2 or c.shape[1] != nf.shape[0]:
        raise ShapeError(
            f"circuit values must be one value per prompt ({nf.shape[0]} prompts, like full and empty); got shape "
            f"{tuple(c.shape)}. Pass the per-prompt values, e.g. faithfulness(...)['per_prompt']['circuit']."
        )
    return c, nf, ne


def _ratio(c: Tensor, nf: Tensor, ne: Tensor, idx: Tensor) -> Tensor:
    """Faithfulness of every circuit on every resample: ``(K, n), (n,), (n,), (B, n) -> (K, B)``."""
    e = ne[idx].mean(-1)  # (B,)
    span = nf[idx].mean(-1) - e  # (B,)
    return (c[:, idx].mean(-1) - e) / span  # (K, B); a zero span gives inf/NaN, left out of the percentiles


def faithfulness_intervals(
    circuits: Any, full: Any, empty: Any, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> list[Interval]:
    """:func:`faithfulness_interval` of each row of ``circuits`` (``(K, n)``), all on the same resamples.

    Example:
        >>> cis = faithfulness_intervals([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], [2.0, 2.0, 4.0], [0.0, 0.0, 0.0])
        >>> [(ci.lo, ci.hi) for ci in cis][1]
        (0.0, 0.0)
    """
    _check_options(n_boot, level, seed)
    c, nf, ne = _check_rows(circuits, full, empty)
    stats = _ratio(c, nf, ne, resample_indices(nf.shape[0], n_boot, seed))  # (K, B)
    return [_percentile(row, level, n_boot, seed) for row in stats]


def faithfulness_interval(
    circuit: Any, full: Any, empty: Any, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> Interval:
    """Bootstrap interval of MIB's faithfulness ``(mean C - mean empty) / (mean N - mean empty)`` over prompts.

    Args:
        circuit: ``(n,)`` the metric on each prompt with the circuit (1-D tensor, array or list).
        full: ``(n,)`` the metric on each prompt with every edge kept.
        empty: ``(n,)`` the metric on each prompt with every edge ablated.
        n_boot: number of resamples.
        level: two-sided coverage in (0, 1).
        seed: seed of the resampling (same seed, same interval).

    Returns:
        an :class:`Interval` (NaN ends when every resample has ``mean N == mean empty``).

    Raises:
        ShapeError: the three are not 1-D of one length.
        ConfigError: bad ``n_boot``, ``level`` or ``seed``.

    Example:
        >>> ci = faithfulness_interval([0.8, 0.9, 0.7, 0.8], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0])
        >>> 0.7 <= ci.lo <= 0.8 <= ci.hi <= 0.9, ci.level
        (True, 0.95)
    """
    c = _as_values("circuit", circuit)
    if c.dim() != 1:
        raise ShapeError(f"circuit must be 1-D per-prompt metric values; got shape {tuple(c.shape)}")
    return faithfulness_intervals(c[None], full, empty, n_boot=n_boot, level=level, seed=seed)[0]


def _areas(f: Tensor, fractions: Tensor) -> Tensor:
    """Trapezoid area under ``f (K, B)`` over ``fractions (K,)`` -> ``(B,)``."""
    dx = (fractions[1:] - fractions[:-1])[:, None]  # (K-1, 1)
    return ((f[1:] + f[:-1]) / 2 * dx).sum(0)


def cpr_cmd_interval(
    signed: Any,
    absolute: Any,
    full: Any,
    empty: Any,
    fractions: Sequence[float],
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[Interval, Interval]:
    """Intervals of CPR (area under f of the signed-rank circuits) and CMD (area under ``|1 - f|`` of the
    absolute-rank circuits), every circuit's faithfulness recomputed on the same resamples.

    Args:
        signed: ``(K, n)`` per-prompt values of the top-``fractions[k]`` circuits by signed score.
        absolute: ``(K, n)`` the same by absolute score.
        full, empty: ``(n,)`` per-prompt values of the full model and the empty circuit.
        fractions: the ``K`` circuit sizes as fractions of the edges, increasing.
        n_boot, level, seed: as in :func:`faithfulness_interval`.

    Returns:
        ``(cpr_interval, cmd_interval)``.

    Example:
        >>> cpr, cmd = cpr_cmd_interval([[0.0, 0.0], [2.0, 2.0]], [[0.0, 0.0], [2.0, 2.0]], [2.0, 2.0],
        ...                             [0.0, 0.0], [0.0, 1.0], n_boot=10)
        >>> (cpr.lo, cpr.hi), (cmd.lo, cmd.hi)
        ((0.5, 0.5), (0.5, 0.5))
    """
    _check_options(n_boot, level, seed)
    s, nf, ne = _check_rows(signed, full, empty)
    a, _, _ = _check_rows(absolute, full, empty)
    x = torch.as_tensor(list(fractions), dtype=torch.float64)
    if x.dim() != 1 or x.numel() != s.shape[0] or x.numel() != a.shape[0] or x.numel() < 2:
        raise ShapeError(
            f"fractions must give one size per circuit row (>= 2); got {x.numel()} fractions for {s.shape[0]} "
            f"signed and {a.shape[0]} absolute rows"
        )
    idx = resample_indices(nf.shape[0], n_boot, seed)
    cpr = _areas(_ratio(s, nf, ne, idx), x)
    cmd = _areas((1 - _ratio(a, nf, ne, idx)).abs(), x)
    return _percentile(cpr, level, n_boot, seed), _percentile(cmd, level, n_boot, seed)
