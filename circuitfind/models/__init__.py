"""Model loading and the per-family adapters: the only code that knows HF module paths.

``spec_for(model)`` picks the adapter by ``model.config.model_type`` and returns the architecture-neutral
:class:`~circuitfind.models.spec.ArchSpec` the patched forward runs on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from types import MappingProxyType

from torch import nn

from circuitfind.errors import ModelLoadError, UnsupportedModelError
from circuitfind.models import gpt2, gpt_neox, llama
from circuitfind.models.spec import ArchSpec, AttentionWeights

__all__ = ["ADAPTERS", "ArchSpec", "load_model", "spec_for", "supported_model_types"]

ADAPTERS: MappingProxyType[str, Callable[[nn.Module], ArchSpec]] = MappingProxyType(
    {t: mod.build_spec for mod in (gpt2, llama, gpt_neox) for t in mod.MODEL_TYPES}
)


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
    if model_type not in ADAPTERS:
        raise UnsupportedModelError(
            f"no adapter for architecture {model_type!r} ({type(model).__name__}); supported model types: "
            f"{', '.join(supported_model_types())}. Add an adapter module under circuitfind/models/."
        )
    output = model.get_output_embeddings() if callable(getattr(model, "get_output_embeddings", None)) else None
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
    spec = ADAPTERS[model_type](model)
    # Detached views: gradients (e.g. w.r.t. edge masks) must never accumulate into the model's parameters.
    layers = tuple(dataclasses.replace(lay, attn=_detached(lay.attn)) for lay in spec.layers)
    return dataclasses.replace(spec, layers=layers)


def _detached(attn: AttentionWeights) -> AttentionWeights:
    fields = {f.name: getattr(attn, f.name) for f in dataclasses.fields(attn)}
    return AttentionWeights(**{k: None if v is None else v.detach() for k, v in fields.items()})


def load_model(*args, **kwargs):
    """Load a model and tokenizer; see :func:`circuitfind.models.loading.load_model`."""
    from circuitfind.models.loading import load_model as _load

    return _load(*args, **kwargs)
