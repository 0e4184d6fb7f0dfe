"""What every model meets first (models/__init__.py, ``spec_for``): a model that circuit discovery cannot run on
is refused up front, saying why."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2Model

import circuitfind as cf
from circuitfind.errors import ModelLoadError, UnsupportedModelError
from tests.models_tiny import VOCAB, tiny_gpt2
from tests.toy_tasks import random_task


def test_a_base_model_without_lm_head_is_refused():
    base = GPT2Model(GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=VOCAB))
    with pytest.raises(UnsupportedModelError, match=r"GPT2Model is a base model without a language-model head"):
        cf.discover(base, random_task(), progress=False)


def test_a_model_on_the_meta_device_is_refused():
    with torch.device("meta"):
        model = tiny_gpt2()
    with pytest.raises(ModelLoadError, match=r"on the meta device"):
        cf.discover(model, random_task(), progress=False)
