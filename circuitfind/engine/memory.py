"""Memory: how many prompts one pass takes (the budget), and the peak memory a run reached.

The budget. Every algorithm processes prompts in chunks (``chunk_size`` prompts per forward pass) and holds, per
pass, tensors that grow with the chunk, never with the whole prompt set:

* the masked forward: the diffs of every sender of the chunk ``(K, S, b, T, D)`` (K stacked masks) plus one
  layer's receiver inputs ``(K, 3H, b, T, D)``;
* EAP / EAP-IG: the same with autograd, plus every receiver's input gradient ``(R, b, T, D)``.

What is held for *all* prompts at once, and therefore bounds the prompt count rather than the chunk:

* the ablation: ``(S + G) x N x T x D`` for resample ablation (every sender's output on every corrupted prompt,
  and the G = 2L + 1 receiver-group sums), ``(S + G) x T x D`` for mean ablation, ``(S + G) x D`` for zero;
* ACDC's fast evaluator (``acdc``, ``exact``, ``hybrid``): its restart caches, the clean sender diffs
  ``S x N x T x D`` and the partial inputs of every receiver above the visited layer ``R x N x T x D``.

With S senders, R receivers, N prompts of T tokens and D = d_model, all in the model's dtype; :func:`estimate`
computes these numbers for a model. ``chunk_size=None`` sizes the chunk so that one pass stays within
:data:`PASS_BUDGET_BYTES`: :func:`prompts_per_pass` is the one formula (bytes per prompt of a :class:`PassKind`
times prompts within the budget); :class:`circuitfind.problem.Problem` decides which kind and how many masks a
pass stacks, and every caller asks it.

Peaks: :func:`peak_memory` reads the process's peak resident set (CPU, ``VmHWM``) or
``torch.cuda.max_memory_allocated`` (CUDA) without resetting anything; :func:`reset_peak_memory` resets it (the
benchmarks do, once per measured step). :func:`resident_bytes` (now), :func:`lifetime_peak_rss` (never reset) and
:func:`available_bytes` (what is left) complete the one reader of ``/proc``: nothing else in the package or the
benchmarks reads it.
"""

from __future__ import annotations

import enum
import re
import resource
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from circuitfind.engine.ablations import Ablation
from circuitfind.errors import check_optional_int

__all__ = [
    "PASS_BUDGET_BYTES",
    "PassKind",
    "PeakMemory",
    "available_bytes",
    "check_chunk_size",
    "estimate",
    "forward_slices",
    "lifetime_peak_rss",
    "pass_bytes_per_prompt",
    "peak_memory",
    "prompt_slices",
    "prompts_per_pass",
    "reset_peak_memory",
    "resident_bytes",
]

PASS_BUDGET_BYTES = 1 << 30
"""Bytes of per-pass activations a chunk of prompts may hold when ``chunk_size`` is None (1 GiB)."""

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_MEMINFO = Path("/proc/meminfo")


@dataclass(frozen=True)
class PeakMemory:
    """A peak memory reading.

    Attributes:
        bytes: the peak.
        kind: ``"rss"`` (the process's peak resident set: model, data and everything else) or ``"cuda"``
            (``torch.cuda.max_memory_allocated``: tensors on that device only).
        device: the device it was read for.
    """

    bytes: int
    kind: str
    device: str

    @property
    def mib(self) -> float:
        return self.bytes / 2**20

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mib": round(self.mib, 1)}


def _device(device: str | torch.device | None) -> torch.device:
    return torch.device("cpu") if device is None else torch.device(device)


def peak_memory(device: str | torch.device | None = None) -> PeakMemory:
    """The peak memory so far: since the process started or since the last :func:`reset_peak_memory`.

    Example:
        >>> peak_memory().kind in ("rss", "cuda")
        True
    """
    dev = _device(device)
    if dev.type == "cuda":
        return PeakMemory(int(torch.cuda.max_memory_allocated(dev)), "cuda", str(dev))
    return PeakMemory(_peak_rss(), "rss", str(dev))


def reset_peak_memory(device: str | torch.device | None = None) -> bool:
    """Reset the peak that :func:`peak_memory` reads; returns False when the platform cannot (then the peak
    stays the process's lifetime peak). On Linux the CPU peak is reset through ``/proc/self/clear_refs``.

    Example:
        >>> isinstance(reset_peak_memory(), bool)
        True
    """
    dev = _device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        return True
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def resident_bytes() -> int | None:
    """The process's resident set now (``VmRSS``), or None where ``/proc`` is absent.

    Example:
        >>> resident_bytes() is None or resident_bytes() > 0
        True
    """
    return _proc_kb(_STATUS, "VmRSS")


def lifetime_peak_rss(*, children: bool = False) -> int:
    """The process's peak resident set since it started (``getrusage``; never reset by :func:`reset_peak_memory`);
    ``children=True``: the largest peak of its finished child processes.

    Example:
        >>> lifetime_peak_rss() > 0
        True
    """
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    rss = resource.getrusage(who).ru_maxrss  # kB on Linux, bytes on macOS
    return int(rss if sys.platform == "darwin" else rss * 1024)


def available_bytes(device: str | torch.device | None = None) -> int | None:
    """Memory a new allocation can still take: ``MemAvailable`` (CPU) or the free memory of a CUDA device; None
    when the platform does not say.

    Example:
        >>> available_bytes() is None or available_bytes() > 0
        True
    """
    dev = _device(device)
    if dev.type == "cuda":
        return int(torch.cuda.mem_get_info(dev)[0])
    return _proc_kb(_MEMINFO, "MemAvailable")


def _peak_rss() -> int:
    peak = _proc_kb(_STATUS, "VmHWM")
    return lifetime_peak_rss() if peak is None else peak


def _proc_kb(path: Path, field: str) -> int | None:
    """``field`` of a ``/proc`` file (``VmHWM:   1234 kB``) in bytes; None when the file or field is absent."""
    try:
        found = re.search(rf"^{field}:\s+(\d+)\s+kB", path.read_text(), re.M)
    except OSError:
        return None
    return None if found is None else int(found.group(1)) * 1024


def check_chunk_size(chunk_size: Any) -> int | None:
    """``chunk_size`` (prompts per pass) as a positive int or None, or a :class:`ConfigError`."""
    budget = f"None sizes it to {PASS_BUDGET_BYTES / 2**30:.0f} GiB of activations"
    return check_optional_int(chunk_size, "chunk_size", what="prompts per forward pass", fix=budget)


def prompt_slices(n_prompts: int, chunk_size: int) -> list[slice]:
    """``[0:c], [c:2c], ...`` covering ``n_prompts``.

    Example:
        >>> prompt_slices(5, 2)
        [slice(0, 2, None), slice(2, 4, None), slice(4, 5, None)]
    """
    return [slice(i, min(i + chunk_size, n_prompts)) for i in range(0, n_prompts, max(1, chunk_size))]


class PassKind(enum.Enum):
    """What one pass over a chunk of prompts holds per prompt: the kinds the chunk policy sizes."""

    FORWARD = "forward"
    """A masked forward without autograd: every sender's diffs, one layer's receiver inputs and their norms, and the
    attention projections, in the model's dtype, per stacked mask (exact evaluation, ACDC, scrubbing, probes)."""
    ATTRIBUTION = "attribution"
    """A forward-backward (EAP, EAP-IG, edge pruning): sender diffs and autograd activations in the model's dtype,
    and every receiver's input gradient in at least float32."""
    ROUTED = "routed"
    """A masked forward whose removed senders are read per row from other rows (causal scrubbing's joint pass): a
    forward's slices plus the routed sender outputs and receiver-group sums of every row."""


def pass_bytes_per_prompt(pm: Any, seq_len: int, kind: PassKind = PassKind.FORWARD, masks: int = 1) -> int:
    """Bytes one prompt of ``seq_len`` tokens adds to one pass of ``kind`` with ``masks`` stacked masks.

    Example:
        >>> pass_bytes_per_prompt(pm, 4) == forward_slices(pm) * 4 * pm.spec.d_model * pm.dtype.itemsize
        True
    """
    g, D, item = pm.graph, pm.spec.d_model, pm.dtype.itemsize
    if kind is PassKind.FORWARD:
        return int(forward_slices(pm, masks) * seq_len * D * item)
    if kind is PassKind.ROUTED:
        return int((forward_slices(pm, masks) + g.n_senders + g.n_groups) * seq_len * D * item)
    tensors = 2 * g.n_senders + 30 * pm.spec.n_layers  # (T, D) slices held per prompt in the model's dtype
    wide = max(4, item)  # the receivers' input gradients are accumulated in at least float32
    return int(masks * seq_len * D * (item * tensors + wide * g.n_receivers))


def prompts_per_pass(
    pm: Any,
    n_prompts: int,
    seq_len: int,
    kind: PassKind = PassKind.FORWARD,
    masks: int = 1,
    budget: float = PASS_BUDGET_BYTES,
) -> int:
    """The one chunk formula: the most prompts (at least 1, at most ``n_prompts``) such that
    ``pass_bytes_per_prompt(kind, masks) x prompts <= budget``.

    Example:
        >>> prompts_per_pass(pm, 100, 4) == 100  # the tiny model: everything fits in one pass
        True
        >>> prompts_per_pass(pm, 100, 4, budget=3 * pass_bytes_per_prompt(pm, 4))
        3
    """
    per_prompt = max(1, pass_bytes_per_prompt(pm, seq_len, kind, masks))
    return max(1, min(n_prompts, int(budget // per_prompt)))


def forward_slices(pm: Any, masks: int = 1) -> int:
    """``(T, D)`` slices per prompt that one masked forward of ``masks`` stacked masks holds at its peak: the
    sender diffs, one layer's receiver inputs and their norms, and the attention projections."""
    g = pm.graph
    return masks * (g.n_senders + 3 * g.receivers_per_layer)


def estimate(
    pm: Any, n_prompts: int, seq_len: int, *, ablation: Any = "resample", chunk_size: int | None = None, masks: int = 1
) -> dict[str, int]:
    """Bytes of the tensors described in the module docstring, for ``pm`` and ``n_prompts`` prompts of
    ``seq_len`` tokens (weights from the model's own parameters); ``ablation`` is an
    :class:`~circuitfind.engine.patchable.Ablation` or its name.

    Returns:
        ``weights``, ``ablation``, ``acdc_caches`` (ACDC / exact / hybrid only), ``forward_pass`` (one masked
        forward of ``masks`` stacked masks on one chunk), ``attribution_pass`` (one EAP / EAP-IG chunk: autograd
        activations and every receiver's input gradient, in float32) and ``chunk_size`` (prompts per pass).

    Example:
        >>> estimate(pm, 100, 16)["ablation"] / 2**30  # doctest: +SKIP
        1.19
    """
    g, D, item = pm.graph, pm.spec.d_model, pm.dtype.itemsize
    chunk = chunk_size or prompts_per_pass(pm, n_prompts, seq_len, PassKind.FORWARD, masks)
    slice_bytes = seq_len * D * item
    groups = 2 * g.n_layers + 1
    # (B', T') of the ablated outputs: per prompt and position, per position (a mean), or one broadcast zero
    kind = Ablation.parse(ablation)  # an Ablation or its name; str(Ablation.MEAN) is not "mean"
    per = {Ablation.RESAMPLE: n_prompts * seq_len, Ablation.MEAN: seq_len, Ablation.ZERO: 1}[kind]
    weights = 0 if pm.module is None else sum(p.numel() * p.element_size() for p in pm.module.parameters())

    eap_chunk = chunk_size or prompts_per_pass(pm, n_prompts, seq_len, PassKind.ATTRIBUTION)
    return {
        "weights": int(weights),
        "ablation": int((g.n_senders + groups) * per * D * item),
        "acdc_caches": int((g.n_senders + g.n_receivers) * n_prompts * slice_bytes),
        "forward_pass": int(forward_slices(pm, masks) * chunk * slice_bytes),
        "attribution_pass": int(pass_bytes_per_prompt(pm, seq_len, PassKind.ATTRIBUTION) * eap_chunk),
        "chunk_size": int(chunk),
    }
