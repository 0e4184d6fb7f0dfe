"""Model loading and the per-family adapters: the only code that knows HF module paths.

``spec_for(model)`` picks the adapter by ``model.config.model_type`` and returns the architecture-neutral
:class:`~circuitfind.models.spec.ArchSpec` the patched forward runs on.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from circuitfind.errors import ModelLoadError, UnsupportedModelError
from circuitfind.models import gemma, gpt2, gpt_neox, gptj, llama, moe, olmo2, opt, phi3
from circuitfind.models.spec import ArchSpec, AttentionWeights, Reference

__all__ = ["ADAPTERS", "REFERENCES", "ArchSpec", "load_model", "spec_for", "supported_model_types"]

_FAMILIES = (gpt2, llama, gpt_neox, gemma, olmo2, phi3, gptj, opt, moe)
ADAPTERS: MappingProxyType[str, Callable[[nn.Module], ArchSpec]] = MappingProxyType(
    {t: mod.build_spec for mod in _FAMILIES for t in mod.MODEL_TYPES}
)
REFERENCES: MappingProxyType[str, Reference] = MappingProxyType(
    {t: mod.REFERENCES[t] for mod in _FAMILIES for t in mod.MODEL_TYPES}
)
"""A named public model of every supported ``model_type`` (for the table of support)."""


def supported_model_types() -> tuple[str, ...]:
    return tuple(sorted(ADAPTERS))


def spec_for(model: nn.Module | ArchSpec) -> ArchSpec:
    """The :class:`ArchSpec` of a transformers model (an ``ArchSpec`` passes through).

    Example:
        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> spec_for(GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=8))).n_layers
        2
    """
    if isinstance(model, ArchSpec):
        return model
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    adapter = ADAPTERS.get(model_type) if isinstance(model_type, str) else None
    if adapter is None:
        raise UnsupportedModelError(
            f"no adapter for architecture {model_type!r} ({type(model).__name__}); supported model types: "
            f"{', '.join(supported_model_types())}. Add an adapter module under circuitfind/models/."
        )
    get_output_embeddings = getattr(model, "get_output_embeddings", None)
    output = get_output_embeddings() if callable(get_output_embeddings) else None
    if output is None:
        raise UnsupportedModelError(
            f"{type(model).__name__} is a base model without a language-model head (no unembedding), but circuit "
            "discovery reads the logits. Load the causal-LM class instead: AutoModelForCausalLM.from_pretrained(...) "
            "(e.g. GPT2LMHeadModel rather than GPT2Model), or circuitfind.load_model(...)."
        )
    meta = [name for name, p in model.named_parameters() if p.is_meta]
    if meta:
        raise ModelLoadError(
            f"{len(meta)} parameters of the model (first: {meta[0]}) are on the meta device: the model was built "
            "without its weights (e.g. under init_empty_weights, or offloaded by device_map). Load it with real "
            "weights on one device, e.g. AutoModelForCausalLM.from_pretrained(name) or circuitfind.load_model(name)."
        )
    spec = adapter(model)
    # Detached views: gradients (e.g. w.r.t. edge masks) must never accumulate into the model's parameters.
    layers = tuple(dataclasses.replace(lay, attn=_detached(lay.attn)) for lay in spec.layers)
    return dataclasses.replace(spec, layers=layers)


def _detached(attn: AttentionWeights) -> AttentionWeights:
    tensors = {f.name: getattr(attn, f.name) for f in dataclasses.fields(attn)}
    return dataclasses.replace(attn, **{k: v.detach() for k, v in tensors.items() if v is not None})


def load_model(
    name: str | os.PathLike[str] | nn.Module | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    tokenizer: Any = None,
) -> tuple[nn.Module, Any]:
    """Load a causal language model and its tokenizer, ready for circuit discovery.

    The arguments, what they accept and the errors are those of :func:`circuitfind.models.loading.load_model`
    (imported on the first call, so ``import circuitfind`` stays cheap).

    Args:
        name: ``None`` / ``"default"`` / ``"smollm2"`` (the offline SmolLM2-135M-Instruct), a folder written by
            ``save_pretrained``, a Hugging Face id such as ``"gpt2"``, or a model object (returned as is).
        device: where to put the model (default ``"cpu"``; a model object stays put).
        dtype: parameter dtype: a floating ``torch.dtype`` or ``"float32"``, ``"bfloat16"``, ``"float16"``
            (default ``torch.float32``; a model object keeps its own). Weights are read in this dtype.
        cache_dir: where the converted default model is cached.
        progress: show progress bars.
        tokenizer: a tokenizer object, or a name / folder to load one from, instead of the model's own.

    Returns:
        ``(model, tokenizer)``: the model in eval mode; the tokenizer, or None when there is none.

    Example:
        >>> model, tok = load_model("gpt2", device="cpu")  # doctest: +SKIP
    """
    from circuitfind.models import loading

    return loading.load_model(
        name, device=device, dtype=dtype, cache_dir=cache_dir, progress=progress, tokenizer=tokenizer
    )
