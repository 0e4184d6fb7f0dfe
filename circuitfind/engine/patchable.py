"""The edge-masked forward pass and the ablation sources.

Removing edge ``s -> r`` replaces ``s``'s contribution *in r's input only* by ``s``'s ablated output
(REFERENCE §2). Every receiver's input is therefore

    input_r = base_r + sum_{s upstream of r} mask[s, r] * (live_s - ablated_s)

where ``base_r`` is the sum of the ablated outputs of r's upstream senders plus the constant biases that belong
to no node (attention output biases). The norm of the receiving block is recomputed on that sum, per receiver.
All of it is dense tensor algebra: one einsum per layer mixes every sender into every receiver of that layer;
there is no per-edge hook.

Layout: ``diffs`` of senders (``live - ablated``) are stored sender-major, so the senders upstream of a
receiver are a contiguous prefix. Masks are ``(S, R)`` or ``(K, S, R)``; with K masks the batch is evaluated
K times in one pass (used by ACDC to test several candidate removals at once).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from typing import Any

import torch
from einops import einsum
from torch import Tensor, nn

from circuitfind import models
from circuitfind.engine.ablations import AblatedOutputs, Ablation
from circuitfind.engine.cache import PrefixCache
from circuitfind.engine.forward import MaskedForward, PassInputs
from circuitfind.engine.receivers import RoutedDiffStore
from circuitfind.errors import ConfigError, ShapeError
from circuitfind.graph import Graph, is_position_mask
from circuitfind.models import spec_for
from circuitfind.models.spec import ArchSpec

__all__ = ["AblatedOutputs", "Ablation", "PatchableModel", "PrefixCache", "resolve_model"]


@contextlib.contextmanager
def _frozen(module: nn.Module | None) -> Iterator[None]:
    """Eval mode and no parameter gradients for the duration; the module's own flags are restored after."""
    if module is None:
        yield
        return
    training = [m for m in module.modules() if m.training]
    flags = [p for p in module.parameters() if p.requires_grad]
    try:
        for m in training:
            m.training = False
        for p in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p in flags:
            p.requires_grad_(True)
        for m in training:
            m.training = True


class PatchableModel:
    """A model seen as a graph of heads and MLPs, with an exact edge-masked forward pass.

    Args:
        model: a transformers causal LM (any supported family) or a ready :class:`ArchSpec`.

    Example:
        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> pm = PatchableModel(GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=8, vocab_size=20)))
        >>> ids = torch.randint(20, (3, 5))
        >>> abl = pm.ablation("zero")
        >>> pm.forward(ids, abl, pm.graph.full_mask()).shape
        torch.Size([3, 5, 20])
    """

    def __init__(self, model: nn.Module | ArchSpec) -> None:
        self.module = model if isinstance(model, nn.Module) else None
        self.spec = spec_for(model)
        self.graph = Graph(self.spec.n_layers, self.spec.n_heads, parallel=self.spec.parallel)
        w = self.spec.layers[0].attn.W_Q
        self.dtype, self.device = w.dtype, w.device

    # --- ablations -------------------------------------------------------------------------------
    def _bases(self, outputs: Tensor) -> Tensor:
        """``(G, B', T', D)`` group bases from ``(S, B', T', D)`` ablated outputs."""
        g, spec = self.graph, self.spec
        zero = torch.zeros(spec.d_model, dtype=self.dtype, device=self.device)
        b_o = [lay.attn.b_O.detach() if lay.attn.b_O is not None else zero for lay in spec.layers]
        cum = outputs.cumsum(dim=0)
        bases = []
        const = zero
        for layer in range(g.n_layers):
            bases.append(cum[g.senders_before(layer) - 1] + const)
            const = const + b_o[layer]
            mlp_up = g.senders_before(layer) + (0 if g.parallel else g.n_heads)
            bases.append(cum[mlp_up - 1] + (const if not g.parallel else const - b_o[layer]))
        bases.append(cum[-1] + const)
        return torch.stack(bases)

    def _make(self, kind: Ablation, outputs: Tensor) -> AblatedOutputs:
        outputs = outputs.to(self.dtype)
        return AblatedOutputs(kind, outputs, self._bases(outputs))

    def ablation(
        self,
        kind: Ablation | str = Ablation.RESAMPLE,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        *,
        per_position: bool | None = None,
        chunk_size: int | None = None,
    ) -> AblatedOutputs:
        """The ablated sender outputs for ``kind``.

        Args:
            kind: ``resample`` (``input_ids`` are the corrupted prompts, paired with the clean ones),
                ``mean`` (``input_ids`` are a reference batch) or ``zero`` (no inputs).
            per_position: mean ablation only: average per position (default when the reference batch has no
                padding) or over all real tokens.
            chunk_size: prompts per forward pass computing the outputs (None: all at once).

        Example:
            >>> from transformers import GPT2Config, GPT2LMHeadModel
            >>> pm = PatchableModel(GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=20)))
            >>> pm.ablation("mean", torch.randint(20, (4, 5))).outputs.shape  # (senders, 1, positions, d_model)
            torch.Size([4, 1, 5, 8])
        """
        kind = Ablation.parse(kind)
        if kind is Ablation.ZERO:
            zeros = torch.zeros(self.graph.n_senders, 1, 1, self.spec.d_model, dtype=self.dtype, device=self.device)
            return self._make(kind, zeros)
        if input_ids is None:
            raise ConfigError(
                f"{kind.value} ablation needs input ids: the corrupted prompts for resample, a reference batch for mean"
            )
        with torch.no_grad():
            live = self.sender_outputs(input_ids, attention_mask, chunk_size=chunk_size)  # (S, N, T, D)
        if kind is Ablation.RESAMPLE:
            return self._make(kind, live)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        am = attention_mask.to(self.device, self.dtype)  # (N, T)
        if per_position is None:
            per_position = bool(am.all())
        if per_position:
            weights = am / am.sum(0).clamp(min=1)  # (N, T)
            mean = einsum(live, weights, "s n t d, n t -> s t d").unsqueeze(1)
        else:
            mean = (einsum(live, am, "s n t d, n t -> s d") / am.sum()).reshape(live.shape[0], 1, 1, -1)
        return self._make(kind, mean)

    def sender_outputs(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, *, chunk_size: int | None = None
    ) -> Tensor:
        """``(S, B, T, D)`` live outputs of every sender in the unpatched model, ``chunk_size`` prompts per pass."""
        zero = self.ablation(Ablation.ZERO)
        B = input_ids.shape[0]
        if B == 0:
            raise ShapeError(f"sender_outputs needs at least one prompt; input_ids has shape {tuple(input_ids.shape)}")
        step = chunk_size or B
        out = None
        for i in range(0, B, step):
            am = None if attention_mask is None else attention_mask[i : i + step]
            _, diffs = self.forward_with_diffs(input_ids[i : i + step], zero, self.graph.full_mask(), attention_mask=am)
            if step >= B:
                return diffs
            if out is None:  # filled in place: the chunks are never held twice
                out = diffs.new_empty((diffs.shape[0], B, *diffs.shape[2:]))
            out[:, i : i + step] = diffs
        assert out is not None  # B >= 1 prompts went through the loop
        return out

    # --- caches ----------------------------------------------------------------------------------
    def prefix_cache(self, diffs: Tensor, ablated: AblatedOutputs, mask: Tensor, start_layer: int) -> PrefixCache:
        """Cache the part of a pass below ``start_layer`` (``diffs`` from :meth:`forward_with_diffs`).

        ``mask`` must be the mask the diffs were computed under, as far as receivers below ``start_layer`` go,
        and it fixes the contributions of those senders to the receivers above ``start_layer``.
        """
        g = self.graph
        if not 0 <= start_layer <= g.n_layers:
            raise ConfigError(f"start_layer must be in 0..{g.n_layers}; got {start_layer}")
        s_pre = g.senders_before(start_layer)
        m = self._float_mask(mask).detach()
        r_after = g.receivers_from(start_layer + 1) if start_layer < g.n_layers else g.n_receivers
        pre = diffs[:s_pre].detach()
        base = ablated.bases[self.graph.receiver_groups.to(self.device)[r_after:]]  # (R_after, B', T', D)
        partial = base + einsum(pre, m[:s_pre, r_after:], "s b t d, s r -> r b t d")
        empty = pre.new_zeros((0, *pre.shape[1:]))
        cache = PrefixCache(start_layer, pre, m, partial, empty, m[:s_pre, :0])
        return self.refresh_cache(cache, ablated, mask)

    def refresh_cache(self, cache: PrefixCache, ablated: AblatedOutputs, mask: Tensor) -> PrefixCache:
        """The cache with its start-layer inputs recomputed under ``mask`` (only those columns may differ)."""
        g, start = self.graph, cache.start_layer
        m = self._float_mask(mask).detach()
        s_pre = cache.diffs.shape[0]
        cols = slice(g.receivers_from(start), min(g.receivers_from(start + 1), g.n_receivers))
        base = ablated.bases[self.graph.receiver_groups.to(self.device)[cols]]  # (C, B', T', D)
        inputs = base + einsum(cache.diffs, m[:s_pre, cols], "s b t d, s c -> c b t d")
        return dataclasses.replace(cache, start_inputs=inputs, start_mask=m[:s_pre, cols].clone())

    # --- the masked forward ----------------------------------------------------------------------
    def _float_mask(self, mask: Tensor) -> Tensor:
        self.graph.check_mask(mask)
        edge = self.graph.edge_mask.to(self.device)
        return mask.to(self.device, self.dtype) * edge

    def _position_masks(self, mask: Tensor, input_ids: Tensor, start_layer: int) -> Tensor:
        """A position mask as ``(K, S, R, T)`` floats (non-edges zeroed), checked against the prompts' length."""
        T = input_ids.shape[-1] if isinstance(input_ids, Tensor) else None
        if mask.shape[-1] != T:
            raise ShapeError(
                f"a position mask (senders, receivers, positions) must have one position per token: the prompts "
                f"have {T}, the mask {mask.shape[-1]} (shape {tuple(mask.shape)})"
            )
        if start_layer > 0:
            raise ConfigError("position masks run from layer 0 (no prefix cache); pass start_layer=0")
        edge = self.graph.edge_mask.to(self.device)[..., None]  # (S, R, 1)
        M = mask.to(self.device, self.dtype) * edge
        return M.unsqueeze(0) if mask.dim() == 3 else M

    def forward(
        self,
        input_ids: Tensor,
        ablated: AblatedOutputs,
        mask: Tensor,
        *,
        attention_mask: Tensor | None = None,
        positions: Tensor | None = None,
        position_ids: Tensor | None = None,
        start_layer: int = 0,
        cache: PrefixCache | None = None,
        vocab: Tensor | None = None,
    ) -> Tensor:
        """Logits with every receiver's input mixed from live and ablated sender outputs by ``mask``.

        Args:
            input_ids: ``(B, T)`` clean token ids.
            ablated: from :meth:`ablation`; batch and length must broadcast against ``input_ids``.
            mask: ``(S, R)`` or ``(K, S, R)``, bool or float (1 = edge kept; floats interpolate and may carry
                gradients). Entries that are not edges are ignored. Position-aware: ``(S, R, T)`` or
                ``(K, S, R, T)``, the edge kept at position ``t`` of every prompt (``T`` = the prompts' length;
                no ``start_layer``); every position is then computed to the top.
            attention_mask: ``(B, T)``, 1 for real tokens; left or right padding.
            positions: ``(B,)`` positions to return logits at (one per prompt); None for all positions.
            position_ids: ``(B, T)``; default: count of real tokens before each position.
            start_layer: first block to compute; requires ``cache`` when > 0.
            cache: from :meth:`prefix_cache`; validated against ``mask``.
            vocab: ``(n,)`` token ids: compute only these logit columns (V below becomes n).

        Returns:
            logits ``([K,] B, V)`` with ``positions`` else ``([K,] B, T, V)``.
        """
        with _frozen(self.module):
            run, single = self._masked_forward(
                input_ids, ablated, mask, attention_mask, positions, position_ids, start_layer, cache, False
            )
            with torch.set_grad_enabled(run.grad):
                logits = run.run(vocab)
        return logits[0] if single else logits

    def forward_with_diffs(
        self,
        input_ids: Tensor,
        ablated: AblatedOutputs,
        mask: Tensor,
        *,
        attention_mask: Tensor | None = None,
        positions: Tensor | None = None,
        position_ids: Tensor | None = None,
        vocab: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """:meth:`forward` under one ``(S, R)`` mask, also returning every sender's live-minus-ablated output.

        Returns:
            logits as :meth:`forward`, and diffs ``(S, B, T, D)`` (every position, even with ``positions``).
        """
        if not isinstance(mask, Tensor) or mask.dim() != 2:
            found = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
            raise ConfigError(f"forward_with_diffs needs a single (S, R) mask; got {found}")
        with _frozen(self.module):
            run, _ = self._masked_forward(
                input_ids, ablated, mask, attention_mask, positions, position_ids, 0, None, True
            )
            with torch.set_grad_enabled(run.grad):
                logits = run.run(vocab)
                return logits[0], run.diffs()

    def forward_routed(
        self,
        input_ids: Tensor,
        ablated: AblatedOutputs,
        mask: Tensor,
        sources: dict[int, Tensor],
        *,
        attention_mask: Tensor | None = None,
        positions: Tensor | None = None,
    ) -> Tensor:
        """:meth:`forward` (no autograd) where sender ``s`` feeds batch row ``b`` its output of row ``sources[s][b]``.

        For a routed sender every receiver of row ``b`` sees ``mask * (live_s[sources[s][b]] - ablated_s[b])``:
        with the same ablated outputs in both rows (causal scrubbing's rows of one draw) that is the sender's
        output computed in the other row. Rows must share positions (equal ``attention_mask`` rows) for the
        value to line up. Senders not in ``sources`` are as in :meth:`forward`.

        Args:
            input_ids, ablated, mask, attention_mask, positions: as for :meth:`forward`.
            sources: sender index -> ``(B,)`` long row index.

        Returns:
            logits ``([K,] B, V)`` as :meth:`forward`.
        """
        with _frozen(self.module), torch.no_grad():
            run, single = self._masked_forward(
                input_ids, ablated, mask, attention_mask, positions, None, 0, None, False
            )
            src = {int(s): rows.to(self.device).long() for s, rows in sources.items()}
            if self.graph.input_sender in src:
                run.pre = run.pre[:, src[self.graph.input_sender]]
                run.pre_total = run.pre.sum(0, keepdim=True)
            shape = (run.B, run.T, self.spec.d_model)
            run.post = RoutedDiffStore(src, run.s_pre, run.K, self.graph.n_senders - run.s_pre, shape, run.pre, False)
            logits = run.run(None)
        return logits[0] if single else logits

    def _masked_forward(
        self, input_ids, ablated, mask, attention_mask, positions, position_ids, start_layer, cache, keep_positions
    ) -> tuple[MaskedForward, bool]:
        """Validate a forward's arguments and set up its :class:`MaskedForward` (and whether the mask was 2-D).

        Called inside ``_frozen(self.module)``: the embedding runs here."""
        if is_position_mask(self.graph, mask):  # (S, R, T) or (K, S, R, T): one mask per position
            single, M = mask.dim() == 3, self._position_masks(mask, input_ids, start_layer)
        else:
            single = mask.dim() == 2 if isinstance(mask, Tensor) else True
            M = self._float_mask(mask)
            M = M.unsqueeze(0) if single else M  # (K, S, R)
        inputs = self._check_inputs(input_ids, attention_mask, position_ids, positions, ablated)
        if start_layer > 0:
            self._check_cache(cache, start_layer, M, *inputs.ids.shape)
        grad = torch.is_grad_enabled() and (M.requires_grad or ablated.outputs.requires_grad)
        with torch.set_grad_enabled(grad):
            run = MaskedForward(
                self,
                inputs,
                ablated,
                M,
                start_layer=start_layer,
                cache=cache,
                grad=grad,
                keep_positions=keep_positions,
            )
        return run, single

    # --- validation ------------------------------------------------------------------------------
    def _check_inputs(self, input_ids, attention_mask, position_ids, positions, ablated):
        if not isinstance(input_ids, Tensor) or input_ids.dim() != 2 or input_ids.dtype != torch.long:
            found = f"{tuple(input_ids.shape)} {input_ids.dtype}" if isinstance(input_ids, Tensor) else type(input_ids)
            raise ShapeError(f"input_ids must be a (batch, seq) long tensor; got {found}")
        ids = input_ids.to(self.device)
        B, T = ids.shape
        am = torch.ones_like(ids) if attention_mask is None else attention_mask.to(self.device)
        if am.shape != ids.shape:
            raise ShapeError(f"attention_mask must match input_ids {tuple(ids.shape)}; got {tuple(am.shape)}")
        if position_ids is None:
            position_ids = (am.long().cumsum(-1) - 1).clamp(min=0)
        elif position_ids.shape != ids.shape:
            raise ShapeError(f"position_ids must match input_ids {tuple(ids.shape)}; got {tuple(position_ids.shape)}")
        if positions is not None:
            positions = positions.to(self.device).long()
            if positions.shape != (B,) or bool((positions < 0).any() | (positions >= T).any()):
                raise ShapeError(f"positions must be ({B},) with values in 0..{T - 1}; got {positions.tolist()}")
        o = ablated.outputs
        if o.dim() != 4 or o.shape[0] != self.graph.n_senders or o.shape[1] not in (1, B) or o.shape[2] not in (1, T):
            raise ShapeError(
                f"ablated outputs have shape {tuple(o.shape)} but the clean inputs are (batch={B}, seq={T}): "
                f"expected ({self.graph.n_senders}, 1 or {B}, 1 or {T}, {self.spec.d_model}). For resample "
                "ablation the corrupted prompts must have the same shape as the clean ones."
            )
        return PassInputs(ids, am, position_ids.to(self.device), positions)

    def _check_cache(self, cache: PrefixCache | None, start_layer: int, M: Tensor, B: int, T: int) -> None:
        g = self.graph
        if cache is None or cache.start_layer != start_layer:
            found = None if cache is None else cache.start_layer
            raise ConfigError(f"start_layer={start_layer} needs a PrefixCache for that layer; got {found}")
        s_pre = g.senders_before(start_layer)
        if cache.diffs.shape[:3] != (s_pre, B, T):
            raise ShapeError(f"cache holds diffs {tuple(cache.diffs.shape)}; expected ({s_pre}, {B}, {T}, D)")
        below, after = g.receivers_from(start_layer), g.receivers_from(start_layer + 1)
        if not torch.equal(M[:, :, :below], cache.mask[:, :below].expand(M.shape[0], -1, -1)) or not torch.equal(
            M[:, :s_pre, after:], cache.mask[:s_pre, after:].expand(M.shape[0], -1, -1)
        ):
            raise ConfigError(
                "the mask differs from the cache's mask below the start layer (or from senders below it to "
                "receivers above it); rebuild the cache with prefix_cache() for this mask"
            )


def resolve_model(
    model: nn.Module | PatchableModel | str | os.PathLike[str] | None,
    tokenizer: Any = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    progress: bool = False,
) -> tuple[PatchableModel, Any]:
    """The one place a model argument becomes a :class:`PatchableModel` (and the tokenizer to use with it).

    Args:
        model: a ``PatchableModel`` (used as is), a transformers model object, or what
            :func:`circuitfind.load_model` accepts by name (None = the offline default, a local folder, an HF id).
        tokenizer: returned as is when given (objects); with a name, also a tokenizer name or folder to load.
        device, dtype, progress: passed to :func:`circuitfind.load_model` when ``model`` is loaded by name.

    Returns:
        ``(pm, tokenizer)``; the tokenizer is the loaded model's own unless one was given.

    Example:
        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> pm, tok = resolve_model(GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=8)))
        >>> resolve_model(pm)[0] is pm, tok is None
        (True, True)
    """
    if isinstance(model, PatchableModel):
        return model, tokenizer
    by_name = model is None or isinstance(model, str | os.PathLike)
    if by_name or device is not None or dtype is not None or isinstance(tokenizer, str | os.PathLike):
        # through the package attribute, so that a replaced circuitfind.models.load_model is the one called
        loaded, tokenizer = models.load_model(model, device=device, dtype=dtype, progress=progress, tokenizer=tokenizer)
        return PatchableModel(loaded), tokenizer
    assert model is not None and not isinstance(model, str | os.PathLike)  # by_name is False
    return PatchableModel(model), tokenizer
