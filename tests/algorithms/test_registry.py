"""Every method behind one protocol (``circuitfind.algorithms.registry``): one ``run(problem, options, context)``,
a method name with keyword options finds the circuit its method object finds, and an option a method does not take
is refused before any model loads.

Results are checked against independent paths: the slow twin (``acdc-plain``), the pre-protocol run functions (whose
formulas the other files of this folder check by hand), and faithfulness recomputed from hand-written logit
differences (:func:`tests.toy_problems.logit_diff_faithfulness`).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import circuitfind as cf
from circuitfind.algorithms import (
    ACDC,
    EAP,
    EAPIG,
    METHODS,
    AcdcOptions,
    ACDCPlain,
    Cut,
    EAPIGAct,
    EAPIGMask,
    EapOptions,
    EdgePruning,
    Exact,
    ExactOptions,
    Hybrid,
    RunContext,
    run_acdc_plain,
    run_eap,
    run_eap_ig,
    run_eap_ig_act,
    run_eap_ig_mask,
    run_exact,
)
from circuitfind.algorithms.base import MethodResult
from circuitfind.errors import ConfigError
from circuitfind.sweeps.spec import Cell, parse_spec
from tests.toy_problems import NAMES, PMS, logit_diff_faithfulness, natural_task, problem_of

NAME = NAMES[0]
TASK = natural_task(PMS[NAME])

# one small options object per method, and the same method as a name with keyword options
OBJECTS = {
    "acdc": (ACDC(threshold=0.02, batch_size=3), {"threshold": 0.02, "batch_size": 3}),
    "acdc-plain": (ACDCPlain(threshold=0.02, sender_order="reverse"), {"threshold": 0.02, "sender_order": "reverse"}),
    "eap": (EAP(), {}),
    "eap-ig": (EAPIG(steps=3), {"steps": 3}),
    "eap-ig-mask": (EAPIGMask(steps=4), {"steps": 4}),
    "eap-ig-act": (EAPIGAct(steps=2), {"steps": 2}),
    "edge-pruning": (EdgePruning(n_edges=6, steps=8, eval_every=4, lr=0.2), {"steps": 8, "eval_every": 4, "lr": 0.2}),
    "exact": (Exact(batch_size=2), {"batch_size": 2}),
    "hybrid": (Hybrid(target=0.7, steps=3), {"target": 0.7, "steps": 3}),
}
# the cut the keyword form asks for (the object form gets it as Cut, or implies it: edge pruning's budget)
CUTS = {name: {"n_edges": 6} for name in OBJECTS if not METHODS[name].decides} | {"acdc-plain": {"n_edges": 5}}


def test_every_method_is_registered_with_an_example_here():
    assert set(OBJECTS) == set(METHODS)
    for name, (options, _) in OBJECTS.items():
        assert METHODS[name].options is type(options)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_runs_through_the_one_protocol(name):
    """``METHODS[name].run(problem, options, context)`` gives the method's result, checked on an independent path."""
    problem = problem_of(NAME, task=TASK)
    options = OBJECTS[name][0]
    result = METHODS[name].run(problem, options, RunContext())
    g = problem.pm.graph
    assert isinstance(result, MethodResult) and result.scores.shape == (g.n_senders, g.n_receivers)
    assert (result.mask is not None) == METHODS[name].decides
    if name in ("acdc", "acdc-plain"):  # the fast search against the slow twin, whatever the entry ran
        state = run_acdc_plain(problem, AcdcOptions(0.02, sender_order=options.sender_order))
        assert torch.equal(result.mask, state.mask)
        assert torch.allclose(result.scores, state.effects, equal_nan=True, atol=1e-5)
    elif name == "hybrid":  # its guarantee, recomputed by hand on the logits
        assert result.stats["reached"] and logit_diff_faithfulness(PMS[NAME], TASK, result.mask) >= 0.7 - 1e-6
    elif name == "edge-pruning":
        assert result.stats["budget"] == 6 and result.stats["mask_edges"] <= 6
    else:
        legacy = {
            "eap": lambda: run_eap(problem),
            "eap-ig": lambda: run_eap_ig(problem, EapOptions(steps=3)),
            "eap-ig-mask": lambda: run_eap_ig_mask(problem, EapOptions(steps=4)),
            "eap-ig-act": lambda: run_eap_ig_act(problem, EapOptions(steps=2)),
            "exact": lambda: run_exact(problem, ExactOptions(batch_size=1)),
        }[name]()
        torch.testing.assert_close(result.scores, legacy.scores, equal_nan=True)


def test_node_and_position_units_are_options_of_the_methods_that_have_them():
    problem = problem_of(NAME, task=TASK)
    nodes = METHODS["eap"].run(problem, EAP(level="node"), RunContext())
    # a node's first-order score is the sum of its outgoing edge scores (summed here by hand)
    assert torch.allclose(nodes.node_scores, nodes.scores.sum(dim=1), atol=1e-9)
    positions = METHODS["eap-ig"].run(problem, EAPIG(steps=2, by_position=True), RunContext())
    assert torch.allclose(positions.position_scores.sum(-1), positions.scores, atol=1e-9)
    with pytest.raises(ConfigError, match="do not combine"):
        EAP(level="node", by_position=True)


def _discover(method, **kwargs):
    return cf.discover(PMS[NAME], TASK, method, metric="logit_diff", progress=False, **kwargs)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_a_name_with_keyword_options_finds_the_circuit_of_its_method_object(name):
    options, keywords = OBJECTS[name]
    cut = CUTS.get(name, {})
    by_name = _discover(name, **keywords, **cut)
    object_cut = None if name == "edge-pruning" else (Cut(**cut) if cut else None)  # edge pruning: its budget
    by_object = _discover(options, cut=object_cut)
    assert torch.equal(by_name.mask, by_object.mask)
    assert torch.allclose(by_name.scores, by_object.scores, equal_nan=True)
    assert by_name.config == by_object.config and by_name.config["method"] == name
    if "n_edges" in cut:  # the top n were cut (edge pruning's budget included), dangling ones dropped after
        assert by_name.stats["selected_before_pruning"] == cut["n_edges"] >= by_name.n_edges
    if name == "eap-ig":  # the circuit is the top 6 of EAP-IG's scores, dangling edges dropped (recomputed here)
        from circuitfind.selection.cuts import prune_dangling, top_n

        g = PMS[NAME].graph
        scores = run_eap_ig(problem_of(NAME, task=TASK), EapOptions(steps=3)).scores
        assert torch.equal(by_name.mask, prune_dangling(g, top_n(g, scores, 6)))


def test_keyword_options_replace_the_fields_of_a_method_object():
    a = _discover(EAPIG(steps=2), steps=3, n_edges=6)
    b = _discover("eap-ig", steps=3, n_edges=6)
    assert a.config["steps"] == 3 and torch.equal(a.scores, b.scores)


# one option each method does not take, and a method that takes it
NOT_TAKEN = {
    "acdc": ("steps", 3),
    "acdc-plain": ("lr", 0.1),
    "eap": ("steps", 5),
    "eap-ig": ("batch_size", 2),
    "eap-ig-mask": ("candidates", torch.ones(2, 2, dtype=torch.bool)),
    "eap-ig-act": ("level", "node"),
    "edge-pruning": ("sender_order", "reverse"),
    "exact": ("by_position", True),
    "hybrid": ("band", (0.8, 1.2)),
}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_an_option_the_method_does_not_take_is_refused_before_the_model_loads(name):
    option, value = NOT_TAKEN[name]
    takers = [m for m in METHODS.values() if m.takes(option)]
    assert takers and not METHODS[name].takes(option)
    # "no-such-model" would fail to load: the refusal comes first, naming the method, the option and its takers
    with pytest.raises(ConfigError, match=f"method '{name}' does not support {option}=") as err:
        cf.discover("no-such-model", TASK, name, **{option: value})
    assert all(m.name in str(err.value) for m in takers)
    with pytest.raises(ConfigError, match=f"does not support {option}="):  # the method object too
        cf.discover("no-such-model", TASK, OBJECTS[name][0], **{option: value})


def test_an_unknown_option_and_a_cut_field_the_method_does_not_take_are_refused():
    with pytest.raises(ConfigError, match="no option stepz"):
        cf.discover("no-such-model", TASK, "eap-ig", stepz=3)
    with pytest.raises(ConfigError, match="'acdc' does not support threshold"):  # ACDC's tau is its own field
        cf.discover("no-such-model", TASK, "acdc", cut=Cut(threshold=0.1))
    with pytest.raises(ConfigError, match="method object"):
        cf.discover("no-such-model", TASK, dataclasses.make_dataclass("Mine", [])())


def test_a_sweep_cell_passes_its_defaults_only_to_methods_that_take_them():
    assert Cell(model="m", task="ioi", method="acdc", threshold=0.05).discover_options() == {
        "threshold": 0.05,
        "absolute": False,
    }
    assert Cell(model="m", task="ioi", method="eap-ig").discover_options()["steps"] == 5
    assert "steps" not in Cell(model="m", task="ioi", method="eap", n_edges=3).discover_options()
    with pytest.raises(ConfigError, match="steps"):
        parse_spec({"out": "x", "grid": [{"model": "m", "task": "ioi", "method": "acdc", "steps": 10}]})
