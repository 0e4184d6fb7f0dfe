"""Metrics on the logits at the answer positions, batched over stacked circuits.

Every metric maps logits ``(K, B, V)`` (K circuits evaluated at once, B prompts) to ``(K,)`` values, averaged
over prompts. :meth:`Metric.loss` turns a value into the quantity ACDC minimises: KL as it is, task metrics
negated (REFERENCE §3).
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from circuitfind.errors import ConfigError, MetricError, TaskError

__all__ = [
    "GAP_NOISE_FACTOR",
    "MetricKind",
    "Metric",
    "check_gap",
    "make_metric",
    "metric_site",
    "kl_divergence",
    "logit_diff",
    "OutputMSE",
    "output_mse",
    "prob_diff",
]


class MetricKind(enum.Enum):
    """The built-in metrics."""

    KL = "kl"
    """KL(full model || circuit) of the next-token distribution at the answer position (lower is better)."""
    LOGIT_DIFF = "logit_diff"
    """Mean logit of the correct answers minus mean logit of the wrong ones (higher is better)."""
    PROB_DIFF = "prob_diff"
    """Total probability of the correct answers minus that of the wrong ones (higher is better)."""


def _wide(t: Tensor) -> Tensor:
    """``t`` in at least float32: half precision is widened, float64 kept (finite differences on a float64 model
    need the metric in float64 too)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _gather_sum(values: Tensor, ids: Tensor) -> Tensor:
    """Sum of ``values (K, B, V)`` over the valid (>= 0) ids ``(B, A)`` of each prompt -> ``(K, B)``."""
    valid = (ids >= 0).to(values.dtype)  # (B, A)
    picked = values.gather(-1, ids.clamp(min=0).unsqueeze(0).expand(values.shape[0], -1, -1))  # (K, B, A)
    return (picked * valid).sum(-1)


def _gather_mean(values: Tensor, ids: Tensor) -> Tensor:
    """Mean of ``values (K, B, V)`` over the valid ids of each prompt -> ``(K, B)``."""
    return _gather_sum(values, ids) / (ids >= 0).sum(-1).clamp(min=1).to(values.dtype)


def kl_divergence(logits: Tensor, reference_logprobs: Tensor) -> Tensor:
    """``KL(reference || circuit)`` per circuit: ``(K, B, V), (B, V) -> (K,)``, mean over prompts."""
    return _kl_rows(logits, reference_logprobs).mean(-1)


def logit_diff(logits: Tensor, answers: Tensor, wrong: Tensor) -> Tensor:
    """``(K, B, V) -> (K,)``: mean over prompts of mean correct logit minus mean wrong logit."""
    return _logit_diff_rows(logits, answers, wrong).mean(-1)


def prob_diff(logits: Tensor, answers: Tensor, wrong: Tensor) -> Tensor:
    """``(K, B, V) -> (K,)``: mean over prompts of P(correct answers) minus P(wrong answers)."""
    return _prob_diff_rows(logits, answers, wrong).mean(-1)


# the same three, one value per prompt ``(K, B, V) -> (K, B)`` (what bootstrap intervals resample)
def _kl_rows(logits: Tensor, reference_logprobs: Tensor) -> Tensor:
    logp = F.log_softmax(_wide(logits), dim=-1)
    ref = reference_logprobs.to(logp.dtype)
    return (ref.exp() * (ref - logp)).sum(-1)


def _logit_diff_rows(logits: Tensor, answers: Tensor, wrong: Tensor) -> Tensor:
    return _gather_mean(_wide(logits), answers) - _gather_mean(_wide(logits), wrong)


def _prob_diff_rows(logits: Tensor, answers: Tensor, wrong: Tensor) -> Tensor:
    probs = F.softmax(_wide(logits), dim=-1)
    return _gather_sum(probs, answers) - _gather_sum(probs, wrong)


def output_mse(reference: Tensor) -> OutputMSE:
    """The ACDC paper's L2 metric for tracr models: mean squared error of the outputs against ``reference``.

    A custom metric (pass it as ``metric=``; it is minimised): tracr's outputs are values rather than logits, so
    KL does not apply (:func:`circuitfind.tasks.tracr.tracr_setup` binds it to the full model's outputs).

    Args:
        reference: ``(B, V)`` the full model's outputs at the prompts' answer positions.

    Returns:
        an :class:`OutputMSE`: a callable on logits ``(B, V)`` returning the mean over prompts and output entries
        of ``(logits - reference) ** 2`` (a loss to minimise; 0 for the full model).

    Example:
        >>> mse = output_mse(torch.tensor([[1.0, 0.0]]))
        >>> float(mse(torch.tensor([[0.0, 0.0]])))
        0.5
    """
    return OutputMSE(reference.detach().float())


class OutputMSE:
    """:func:`output_mse`'s metric: bound to one reference row per prompt, so it knows its rows.

    ``subset(idx)`` is the same metric on prompts ``idx`` only: what a run on part of the prompts (the folds of
    the validated cut, a bootstrap resample) binds. A custom callable bound to per-prompt data may offer the same
    ``subset`` method; without it such a callable only works on the prompts it was bound to.

    Example:
        >>> mse = output_mse(torch.tensor([[1.0], [3.0]]))
        >>> float(mse.subset(torch.tensor([1]))(torch.tensor([[0.0]])))  # prompt 1's reference only
        9.0
    """

    __name__ = "tracr_mse"

    def __init__(self, reference: Tensor) -> None:
        self.reference = reference  # (B, V)

    def __call__(self, logits: Tensor) -> Tensor:  # (B, V) -> ()
        return ((logits.float() - self.reference.to(logits.device)) ** 2).mean()

    def subset(self, idx: Tensor) -> OutputMSE:
        return OutputMSE(self.reference[idx.to(self.reference.device)])


@dataclass(frozen=True)
class Metric:
    """A metric bound to its task data.

    Attributes:
        name: ``kl``, ``logit_diff``, ``prob_diff`` or the callable's name.
        fn: logits ``(K, B, V)`` -> values ``(K,)``.
        higher_is_better: False for KL (and losses); True for task metrics.
        columns: the token ids the metric reads, when they are few (logit difference); None: it needs them all.
        on_columns: the metric on logits ``(K, B, len(columns))`` holding only those columns, in that order.
        separable: the value is a mean over prompts of a function of each prompt's own logits, so its gradient
            on a batch's rows does not depend on the other rows (True for the built-in metrics; a callable is
            not assumed to be).
        rows: logits ``(K, B, V)`` -> one value per prompt ``(K, B)`` whose mean over prompts is the value (the
            built-in metrics); None: :meth:`per_prompt` calls ``fn`` on each prompt alone.
    """

    name: str
    fn: Callable[[Tensor], Tensor]
    higher_is_better: bool
    columns: Tensor | None = None
    on_columns: Callable[[Tensor], Tensor] | None = None
    separable: bool = False
    rows: Callable[[Tensor], Tensor] | None = None

    def __call__(self, logits: Tensor) -> Tensor:
        """Values ``(K,)`` for logits ``(K, B, V)``, or a scalar for ``(B, V)``.

        Raises:
            MetricError: a value is NaN or infinite (``index`` names the first such circuit).
        """
        if logits.dim() == 2:
            return _finite(self.name, self.fn(logits.unsqueeze(0)))[0]
        return _finite(self.name, self.fn(logits))

    def per_prompt(self, logits: Tensor) -> Tensor:
        """The metric on each prompt alone: logits ``(K, B, V)`` -> ``(K, B)`` (what bootstrap intervals
        resample). For the built-in metrics the mean over prompts is :meth:`__call__`'s value; a custom callable
        is called on each prompt's logits ``(1, V)``, which equals its value on the batch when it averages over
        prompts.

        Raises:
            MetricError: a value is NaN or infinite.

        Example:
            >>> m = make_metric("logit_diff", answers=torch.tensor([[1], [2]]), wrong_answers=torch.tensor([[2], [1]]))
            >>> m.per_prompt(torch.tensor([[[0.0, 3.0, 1.0], [0.0, 3.0, 1.0]]])).tolist()
            [[2.0, -2.0]]
        """
        if self.rows is not None:
            values = self.rows(logits)  # (K, B)
        else:
            values = torch.stack([self.fn(logits[:, b : b + 1]) for b in range(logits.shape[1])], dim=-1)
        return _finite(self.name, values.flatten()).view(values.shape)

    def loss(self, logits: Tensor) -> Tensor:
        """What ACDC minimises: the value, negated when higher is better."""
        value = self(logits)
        return -value if self.higher_is_better else value

    def column_loss(self, logits: Tensor) -> Tensor:
        """:meth:`loss` on logits ``(K, B, len(columns))`` computed only at :attr:`columns` (needs columns)."""
        if self.columns is None or self.on_columns is None:
            raise ConfigError(f"the {self.name} metric reads the whole vocabulary; call loss() on full logits")
        value = _finite(self.name, self.on_columns(logits))
        return -value if self.higher_is_better else value


def _finite(name: str, values: Tensor) -> Tensor:
    """``values (K,)`` unchanged when all are finite; else a :class:`MetricError` naming the first bad one.

    The one check every metric value passes through: a NaN is never below a threshold, so without it every
    edge would be kept with a NaN score and nobody told.
    """
    bad = ~torch.isfinite(values.detach())
    if not bool(bad.any()):
        return values
    k = int(bad.flatten().nonzero()[0])
    value = float(values.detach().flatten()[k])
    which = f" for circuit {k} of {values.numel()} evaluated together" if values.numel() > 1 else ""
    raise MetricError(
        f"the {name} metric is {value}{which}; expected a finite number. A NaN or infinite metric is never below "
        "the threshold, so every edge would be kept with a meaningless score. Usual causes: NaN or inf in the "
        "model's logits (e.g. a float16 overflow: load the model in float32), or a custom metric that divides "
        "by zero or takes the log of 0.",
        index=k,
    )


GAP_NOISE_FACTOR = 64
"""A metric gap ``|m(N) - m(empty)|`` at most this many ``eps`` of the metric's dtype (relative to the larger value,
with an absolute floor of 1) is rounding noise, not a difference: :func:`check_gap` refuses it."""


def check_gap(full: float, empty: float, dtype: torch.dtype = torch.float32, *, name: str = "metric") -> float:
    """The gap ``full - empty`` that faithfulness divides by, or a :class:`MetricError` when it is noise.

    The one check of every faithfulness ratio ``(m(C) - m(empty)) / (m(N) - m(empty))``: a gap with
    ``|m(N) - m(empty)| <= 64 * eps(dtype) * max(|m(N)|, |m(empty)|, 1)`` is refused, since any circuit would then
    score a ratio of noise over noise (identical clean and corrupted prompts report faithfulness 1.0). The floor
    of 1 covers KL, whose full value is 0. Metrics are computed in at least float32 (half precision logits are
    widened first), so ``eps`` is that of ``dtype`` promoted to float32.

    Args:
        full: the metric (or loss) of the full model, ``m(N)``.
        empty: the metric (or loss) of the empty circuit, ``m(empty)``.
        dtype: the model's dtype (``pm.dtype``); float32 when unknown.
        name: what the two values are, for the message (``"metric"``, ``"logit_diff"``, ``"loss"``).

    Returns:
        ``full - empty``, a float whose size is above the noise floor.

    Raises:
        MetricError: the gap is within the noise floor, or NaN.

    Example:
        >>> check_gap(2.5, 0.5)
        2.0
        >>> check_gap(3.0, 3.0 + 1e-8)
        Traceback (most recent call last):
        ...
        circuitfind.errors.MetricError: the metric gap metric(full) - metric(empty) = -1e-08 (metric(full) = 3, ...
    """
    wide = torch.promote_types(dtype, torch.float32)
    full, empty = float(full), float(empty)
    gap = full - empty
    floor = GAP_NOISE_FACTOR * torch.finfo(wide).eps * max(abs(full), abs(empty), 1.0)
    if abs(gap) > floor:  # False for NaN too
        return gap
    raise MetricError(
        f"the {name} gap {name}(full) - {name}(empty) = {gap:.3g} ({name}(full) = {full:.10g}, {name}(empty) = "
        f"{empty:.10g}) is within rounding noise of zero (|gap| <= {floor:.3g} = {GAP_NOISE_FACTOR} "
        f"eps({str(wide).removeprefix('torch.')}) x max(|full|, |empty|, 1)), so faithfulness, a ratio over this "
        "gap, would be noise over noise. The "
        "ablation does not change the metric: use corrupted prompts that differ from the clean ones where the "
        "answer is decided, another ablation, or a metric that separates them."
    )


@contextlib.contextmanager
def metric_site(where: str | Callable[[MetricError], str]) -> Iterator[None]:
    """Prefix a :class:`MetricError` raised in the block with where it happened.

    Args:
        where: a label (``"on the empty circuit"``), or a function of the error (its ``index`` names the
            candidate of a stacked evaluation) returning one.

    Example:
        >>> broken = make_metric(lambda logits: logits.sum() / 0.0 * 0.0)  # NaN
        >>> with metric_site("on the full model"):
        ...     broken(torch.zeros(1, 3))
        Traceback (most recent call last):
        ...
        circuitfind.errors.MetricError: on the full model: the <lambda> metric is nan; expected a finite number...
    """
    try:
        yield
    except MetricError as err:
        label = where(err) if callable(where) else where
        raise MetricError(f"{label}: {err}", err.index) from None


def _scalar(name: str, result: object) -> Tensor:
    """A custom metric's result for one circuit as a 0-d float tensor (autograd kept)."""
    numeric = isinstance(result, Tensor) and not result.dtype.is_complex and result.dtype != torch.bool
    if numeric and isinstance(result, Tensor) and result.numel() == 1:  # (isinstance repeated for the type checker)
        return result.reshape(()).float()
    if isinstance(result, (int, float)) and not isinstance(result, bool):
        return torch.tensor(float(result))
    found = (
        f"a tensor of shape {tuple(result.shape)}"
        if isinstance(result, Tensor)
        else f"{type(result).__name__} {result!r}"
    )
    raise MetricError(
        f"the custom metric {name} must return one number (a float or a one-element tensor) for the logits (B, V) "
        f"of one circuit; it returned {found}. Average over prompts inside the metric, e.g. return "
        "logits[:, answer].mean()."
    )


def make_metric(
    metric: str | MetricKind | Metric | Callable[[Tensor], Tensor],
    *,
    clean_logits: Tensor | None = None,
    answers: Tensor | None = None,
    wrong_answers: Tensor | None = None,
    higher_is_better: bool = False,
) -> Metric:
    """Bind a metric to the data it needs.

    Args:
        metric: a :class:`MetricKind` or its name, a ready :class:`Metric`, or a callable mapping logits at the
            answer positions ``(B, V)`` to a scalar tensor. A callable is minimised unless ``higher_is_better``.
        clean_logits: ``(B, V)`` full-model logits at the answer positions (for KL).
        answers, wrong_answers: ``(B, A)`` token ids padded with -1 (for task metrics).

    Example:
        >>> m = make_metric("logit_diff", answers=torch.tensor([[1]]), wrong_answers=torch.tensor([[2]]))
        >>> float(m(torch.tensor([[0.0, 3.0, 1.0]])))
        2.0
    """
    if isinstance(metric, Metric):
        return metric
    if callable(metric) and not isinstance(metric, (str, MetricKind)):
        user = metric

        name = getattr(user, "__name__", "custom")

        def call_each(logits: Tensor) -> Tensor:  # the user's callable sees one circuit at a time
            return torch.stack([_scalar(name, user(lg)) for lg in logits])

        return Metric(name, call_each, higher_is_better)
    try:
        kind = metric if isinstance(metric, MetricKind) else MetricKind(str(metric).lower().replace("-", "_"))
    except ValueError:
        raise ConfigError(
            f"unknown metric {metric!r}; expected one of {[k.value for k in MetricKind]} or a callable on logits (B, V)"
        ) from None
    if kind is MetricKind.KL:
        if clean_logits is None:
            raise ConfigError("the KL metric needs the full model's logits at the answer positions")
        ref = F.log_softmax(_wide(clean_logits.detach()), dim=-1)
        return Metric(
            kind.value, lambda lg: kl_divergence(lg, ref), False, separable=True, rows=lambda lg: _kl_rows(lg, ref)
        )
    right, wrong = _check_answer_rows(kind.value, answers, wrong_answers)
    if kind is MetricKind.PROB_DIFF:  # the softmax needs every column
        return Metric(
            kind.value,
            lambda lg: prob_diff(lg, right, wrong),
            True,
            separable=True,
            rows=lambda lg: _prob_diff_rows(lg, right, wrong),
        )
    columns, (right_col, wrong_col) = _as_columns(right, wrong)
    return Metric(
        kind.value,
        lambda lg: logit_diff(lg, right, wrong),
        True,
        columns=columns,
        on_columns=lambda lg: logit_diff(lg, right_col, wrong_col),
        separable=True,
        rows=lambda lg: _logit_diff_rows(lg, right, wrong),
    )


def _check_answer_rows(name: str, answers: Tensor | None, wrong_answers: Tensor | None) -> tuple[Tensor, Tensor]:
    """``(answers, wrong_answers)``, checked: every prompt must have a correct and a wrong answer id (a prompt
    without wrong answers would score its raw correct logit or probability, which is not a difference at all)."""
    checked = []
    for label, ids in (("correct answer", answers), ("wrong answer", wrong_answers)):
        if ids is None or ids.dim() != 2 or ids.shape[1] == 0:
            raise TaskError(
                f"the {name} metric needs {label} token ids for every prompt; the task has none. Give every "
                "prompt answers and wrong_answers, or use metric='kl'."
            )
        lacking = ((ids >= 0).sum(dim=1) == 0).nonzero().flatten().tolist()
        if lacking:
            shown = ", ".join(map(str, lacking[:10])) + (", ..." if len(lacking) > 10 else "")
            raise TaskError(
                f"the {name} metric needs a {label} for every prompt; {len(lacking)} of {ids.shape[0]} prompts "
                f"have none (prompt {shown}). Give those prompts a {label}, drop them, or use metric='kl'."
            )
        checked.append(ids)
    return checked[0], checked[1]


def _as_columns(*ids: Tensor) -> tuple[Tensor, list[Tensor]]:
    """The distinct valid token ids among ``ids`` (each ``(B, A)``, -1 = padding), and each ``ids`` rewritten as
    indices into them (padding kept)."""
    columns = torch.cat([i[i >= 0] for i in ids]).unique()  # sorted
    return columns, [torch.where(i >= 0, torch.searchsorted(columns, i.clamp(min=0)), i) for i in ids]
