"""Circuit is immutable: fields cannot be reassigned, config and stats are read-only, changes make new circuits."""

from __future__ import annotations

import copy
import dataclasses
import pickle

import pytest
import torch

from circuitfind.circuit import Circuit
from circuitfind.graph import Graph


def _circuit() -> Circuit:
    g = Graph(2, 2)
    mask = g.mask_of(["input->a1.h0<v>", "a1.h0->logits"])
    return Circuit(g, mask, torch.arange(float(mask.numel())).view(mask.shape), config={"method": "acdc"})


def test_fields_cannot_be_reassigned():
    c = _circuit()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.model = "gpt2"
    with pytest.raises(TypeError):
        c.config["seed"] = 0
    with pytest.raises(TypeError):
        c.stats["wall_time_s"] = 1.0


def test_changes_make_a_new_circuit_and_leave_the_old_one():
    c = _circuit()
    d = c.replace(model="gpt2").with_config(seed=3)
    assert (d.model, dict(d.config)) == ("gpt2", {"method": "acdc", "seed": 3})
    assert (c.model, dict(c.config)) == ("", {"method": "acdc"})
    assert torch.equal(d.mask, c.mask) and d.edge_names == c.edge_names


def test_the_caller_s_config_dict_is_not_shared():
    config = {"method": "acdc"}
    g = Graph(1, 1)
    c = Circuit(g, g.full_mask(), torch.zeros(g.edge_mask.shape), config=config)
    config["method"] = "eap"
    assert c.config["method"] == "acdc"


@pytest.mark.parametrize("clone", [copy.deepcopy, copy.copy, lambda c: pickle.loads(pickle.dumps(c))])
def test_copies_and_pickles_keep_every_field(clone):
    c = _circuit().replace(metric_full=1.5, stats={"trace": [1, 2]})
    d = clone(c)
    assert torch.equal(d.mask, c.mask) and torch.equal(d.scores, c.scores)
    assert (d.metric_full, dict(d.config), dict(d.stats)) == (1.5, {"method": "acdc"}, {"trace": [1, 2]})
    with pytest.raises(TypeError):
        d.config["x"] = 1
