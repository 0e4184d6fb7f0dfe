"""Receiver-input arithmetic for the patched forward: the store of sender diffs and the row-sparse mixing.

Kept apart from :mod:`circuitfind.patching` so that the forward reads as the model's computation, and this as
the bookkeeping that makes it cheap: which sender rows a mask actually changes, and running sums of diffs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from einops import einsum
from torch import Tensor

__all__ = ["DiffStore", "RoutedDiffStore", "distinct_columns", "mix_onto", "mix_rows", "mix_rows_by_position"]

# Gathering sender rows copies them, which on a CPU costs about as much per row as a dense pass over them costs
# per row *and column*: gather only when at most 1/GATHER_AT_MOST of the rows take part (few columns: 1/12).
GATHER_AT_MOST, GATHER_AT_MOST_NARROW = 3, 12
PAD_COLUMNS_TO = 16


class DiffStore:
    """Diffs of the senders computed in this pass, ``(K, n, B, T, D)``, appended layer by layer.

    Without autograd it writes into one preallocated buffer (no copies); with autograd it concatenates, since
    writing in place into a tensor already read by the graph would invalidate saved activations.
    """

    def __init__(self, K: int, capacity: int, shape: tuple[int, ...], like: Tensor, grad: bool) -> None:
        self.grad = grad
        self.n = 0
        self.chunks: list[Tensor] = []
        self.buf = None if grad else like.new_empty((K, capacity, *shape))
        self._cat: Tensor | None = None
        self._sums: dict[int, Tensor] = {0: like.new_zeros((1, *shape))}  # count -> sum of the first diffs

    def append(self, chunk: Tensor) -> None:  # (K, c, B, T, D)
        c = chunk.shape[1]
        if self.buf is None:
            self.chunks.append(chunk)
            self._cat = None
        else:
            self.buf[:, self.n : self.n + c] = chunk
            self._sums = {self.n: self._sums[self.n], self.n + c: self._sums[self.n] + chunk.sum(1)}
        self.n += c

    def append_some(self, c: int, idx: Tensor, values: Tensor | None) -> None:
        """Append ``c`` diffs of which only ``idx`` are given (``values (K, len(idx), B, T, D)``, None when ``idx``
        is empty); the rest 0. Only without autograd (into the buffer)."""
        assert self.buf is not None, "append_some writes into the buffer of a pass without autograd"
        block = self.buf[:, self.n : self.n + c]
        block.zero_()
        if values is not None:
            block[:, idx] = values
        self._sums = {self.n: self._sums[self.n], self.n + c: self._sums[self.n] + block.sum(1)}
        self.n += c

    def select_positions(self, pick: Callable[[Tensor], Tensor]) -> None:
        """Keep only the answer positions of everything stored: ``(..., B, T, D) -> (..., B, 1, D)``. Only without
        autograd (the forward selects positions only then)."""
        assert self.buf is not None, "positions are selected only in a pass without autograd"
        kept = pick(self.buf[:, : self.n])
        self.buf = kept.new_empty((self.buf.shape[0], self.buf.shape[1], *kept.shape[2:]))
        self.buf[:, : self.n] = kept
        self._sums = {n: pick(v) for n, v in self._sums.items()}

    def total(self, n: int) -> Tensor:  # (K or 1, B, T, D): sum of the first n diffs (recent counts only)
        return self._sums[n]

    def first(self, n: int) -> Tensor:  # (K, n, B, T, D)
        if self.buf is not None:
            return self.buf[:, :n]
        if self._cat is None:
            self._cat = torch.cat(self.chunks, dim=1)
        return self._cat[:, :n]


def mix_rows(rows: Tensor, w: Tensor, total: Tensor | None, dense: bool) -> Tensor:
    """``sum_s w[k, s, c] * rows[k, s]`` -> ``(K, C|1, B, T, D)``, touching as few sender rows as possible.

    ``rows`` is ``(K|1, n, B, T, D)``, ``w`` is ``(K, n, C)`` and ``total`` the sum of all ``n`` rows. Exactly
    equal to the dense sum, it is computed either over the rows with some non-zero weight, or as ``total`` plus
    ``(w - 1)`` over the rows with some weight other than one -- whichever set is smaller. When no row
    differs from one, every column equals ``total`` and a single shared column is returned.
    """
    if w.dim() == 4:
        return mix_rows_by_position(rows, w, dense)
    if dense or total is None:
        return einsum(rows, w, "k s b t d, k s c -> k c b t d")
    nonzero = (w != 0).any(dim=2).any(dim=0)  # (n,)
    nonone = (w != 1).any(dim=2).any(dim=0)
    n_nonzero, n_nonone = int(nonzero.sum()), int(nonone.sum())
    from_total = n_nonone < n_nonzero
    active, n_active = (nonone, n_nonone) if from_total else (nonzero, n_nonzero)
    weights = w - 1 if from_total else w
    if n_active == 0:
        mixed = None
    elif 2 * n_active > w.shape[1]:  # gathering most rows costs more than a dense pass over all of them
        mixed = einsum(rows, weights, "k s b t d, k s c -> k c b t d")
    else:
        idx = active.nonzero().squeeze(1)
        mixed = einsum(rows[:, idx], weights[:, idx], "k s b t d, k s c -> k c b t d")
    if from_total:
        return total.unsqueeze(1) if mixed is None else total.unsqueeze(1) + mixed
    return rows.new_zeros((1, 1, *rows.shape[2:])) if mixed is None else mixed


def mix_onto(x0: Tensor, parts: list[tuple[Tensor, Tensor]], total: Tensor | None) -> Tensor:
    """``x0 + sum_parts sum_s w[s, c] * rows[s]`` -> ``(C|1, *S)``, one mask, no autograd, from the cheaper side.

    ``x0`` is ``(C0, *S')`` with ``C0`` in {1, C} and ``S'`` broadcasting to the rows' ``S = (B, T, D)``; each
    part is ``(rows (n_i, *S), w (n_i, C))``; ``total`` is ``(1, *S)``, the sum of every part's rows (None: not
    known). Exactly the dense sum, computed either over the rows with some non-zero weight, or as ``x0 + total``
    plus ``(w - 1)`` over the rows with some weight other than one: whichever touches fewer rows, so the cost
    follows min(kept, removed). The products accumulate into one buffer (``addmm``): no per-part temporaries.
    When no row takes part the result has one column (every column equals it).
    """
    C = parts[0][1].shape[1] if parts else x0.shape[0]
    pad = 0 if x0.shape[0] > 1 or C <= PAD_COLUMNS_TO else -C % PAD_COLUMNS_TO
    nonzero = [(w != 0).any(dim=1) for _, w in parts]  # (n_i,) per part
    nonone = [(w != 1).any(dim=1) for _, w in parts]
    n_nonzero, n_nonone = sum(int(a.sum()) for a in nonzero), sum(int(a.sum()) for a in nonone)
    from_total = total is not None and n_nonone < n_nonzero
    shape = parts[0][0].shape[1:] if parts else x0.shape[1:]
    acc = x0 + total if total is not None and from_total else x0
    acc = acc.expand(acc.shape[0], *shape).reshape(acc.shape[0], -1)  # (C0, N): a view when x0 is full
    owned = from_total and acc.shape[0] == C  # may be written in place
    for (rows, w), active in zip(parts, nonone if from_total else nonzero, strict=True):
        n_active = int(active.sum())
        if n_active == 0:
            continue
        flat, weights = rows.reshape(rows.shape[0], -1), (w - 1 if from_total else w)  # (n, N), (n, C)
        if n_active * (GATHER_AT_MOST if C >= 8 else GATHER_AT_MOST_NARROW) <= len(flat):
            idx = active.nonzero().squeeze(1)
            flat, weights = flat.index_select(0, idx), weights[idx]
        if pad:  # GEMM kernels run whole register tiles on a multiple of 16 columns: zero columns, dropped after
            weights = torch.cat([weights, weights.new_zeros((weights.shape[0], pad))], dim=1)
        if owned:
            acc.addmm_(weights.T, flat)
        else:  # the first product: x0 broadcast over the columns, into a new buffer
            acc, owned = torch.addmm(acc, weights.T, flat), True
    return acc.reshape(acc.shape[0], *shape)[:C]  # (a view: the padded columns come last)


def distinct_columns(w: Tensor) -> tuple[Tensor, Tensor] | None:
    """The distinct columns of ``w (K, n, C[, T])``: ``(first, which)`` with ``first (U,)`` the first column of
    each distinct one and ``which (C,)`` the distinct column each column equals; None when all ``C`` differ.

    Receivers of one group whose upstream weights agree receive the same input, so it is computed once.
    """
    C = w.shape[2]
    sig = w.movedim(2, 0).reshape(C, -1)  # (C, K*n[*T])
    uniq, which = torch.unique(sig, dim=0, return_inverse=True)
    if len(uniq) == C:
        return None
    cols = torch.arange(C, device=w.device)
    first = torch.full((len(uniq),), C, device=w.device).scatter_reduce(0, which, cols, "amin")
    return first, which


def mix_rows_by_position(rows: Tensor, w: Tensor, dense: bool) -> Tensor:
    """``sum_s w[k, s, c, t] * rows[k, s, :, t]`` -> ``(K, C, B, T, D)``: a position mask's mixing.

    ``rows`` is ``(K|1, n, B, T, D)``, ``w`` is ``(K, n, C, T)``; without autograd only the rows with some
    non-zero weight are read.
    """
    if not dense:
        active = (w != 0).flatten(2).any(dim=2).any(dim=0)  # (n,)
        if int(active.sum()) < w.shape[1]:
            idx = active.nonzero().squeeze(1)
            rows, w = rows[:, idx], w[:, idx]
    return einsum(rows, w, "k s b t d, k s c t -> k c b t d")


class RoutedDiffStore(DiffStore):
    """A :class:`DiffStore` in which some senders' rows are read from other batch rows.

    ``sources[s]`` is a ``(B,)`` long index: batch row ``b`` of sender ``s`` (absolute sender index) holds the
    diff that ``s`` computed in row ``sources[s][b]``. Causal scrubbing uses it to feed a node's value computed
    on another prompt (another batch row) to every receiver of this row; senders without a source are stored as
    computed. ``offset`` is the absolute index of the store's first sender.
    """

    def __init__(self, sources: dict[int, Tensor], offset: int, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sources, self.offset = sources, offset

    def _route(self, chunk: Tensor, senders: list[int]) -> Tensor:  # (K, c, B, T, D), absolute sender per column
        if not any(s in self.sources for s in senders):
            return chunk
        chunk = chunk.clone()
        for j, s in enumerate(senders):
            if s in self.sources:
                chunk[:, j] = chunk[:, j, self.sources[s]]
        return chunk

    def append(self, chunk: Tensor) -> None:
        first = self.offset + self.n
        super().append(self._route(chunk, list(range(first, first + chunk.shape[1]))))

    def append_some(self, c: int, idx: Tensor, values: Tensor | None) -> None:
        if values is not None:
            values = self._route(values, [self.offset + self.n + int(i) for i in idx])
        super().append_some(c, idx, values)
