"""The method registry and the one rule that turns ``discover``'s keyword options into a method, a cut and a problem.

Every method is a :class:`Method`: a name, a frozen options class (:class:`~circuitfind.algorithms.base.MethodOptions`),
one ``run(problem, options, context) -> MethodResult`` and the :class:`~circuitfind.selection.rule.Cut` fields it
takes. :func:`plan` routes each keyword option by its name: to the method's options when they have that field, else to
the cut when the method takes that cut field, else to the problem (``chunk_size``, ``reference``); an option that goes
nowhere is a :class:`ConfigError` naming the method, the option and the methods that take it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from circuitfind.algorithms import acdc_run, eap, eap_ig, eap_ig_act, edge_pruning, exact, hybrid
from circuitfind.algorithms.acdc import ACDC, ACDCPlain
from circuitfind.algorithms.base import MethodOptions, MethodResult, RunContext
from circuitfind.errors import ConfigError
from circuitfind.problem import Problem
from circuitfind.selection.rule import Cut

__all__ = ["ALL_OPTIONS", "DEFAULT_TARGET", "METHODS", "PROBLEM_OPTIONS", "Method", "Plan", "given_options", "plan"]

DEFAULT_TARGET = 0.8  # the faithfulness a scoring method's circuit must reach when no cut is given
PROBLEM_OPTIONS = ("chunk_size", "reference")
"""Options of the prepared problem (:func:`circuitfind.problem.prepare_problem`), taken with every method."""
CUT_FIELDS = frozenset(f.name for f in dataclasses.fields(Cut))
SCORE_CUTS = CUT_FIELDS  # a scoring method's scores are cut by any rule


@dataclass(frozen=True)
class Method:
    """A registered method.

    Attributes:
        name: its name (``method="eap-ig"``).
        options: its frozen options class; ``options()`` is the method with its defaults.
        run: ``run(problem, options, context) -> MethodResult``.
        summary: one line on what it does.
        cuts: the :class:`Cut` fields it takes.
        decides: it returns its own circuit (``MethodResult.mask``), which ``discover`` keeps unless a cut is given.
    """

    name: str
    options: type[MethodOptions]
    run: Callable[[Problem, Any, RunContext], MethodResult]
    summary: str
    cuts: frozenset[str] = SCORE_CUTS
    decides: bool = False

    @property
    def fields(self) -> frozenset[str]:
        """The option names of its options class."""
        return frozenset(f.name for f in dataclasses.fields(self.options))

    def takes(self, name: str) -> bool:
        """Whether ``discover(..., name=...)`` is an option of this method (its own, its cut's or the problem's)."""
        return name in self.fields or name in self.cuts or name in PROBLEM_OPTIONS


_ACDC_CUTS = frozenset({"n_edges", "target"})  # ACDC's effects cut by size; its threshold is its own
METHODS: MappingProxyType[str, Method] = MappingProxyType(
    {
        m.name: m
        for m in (
            Method("acdc", ACDC, acdc_run.run, "ACDC, fast and exact", _ACDC_CUTS, decides=True),
            Method(
                "acdc-plain",
                ACDCPlain,
                acdc_run.run,
                "ACDC, one full forward per edge (for checks)",
                _ACDC_CUTS,
                decides=True,
            ),
            Method("eap", eap.EAP, eap.run, "edge attribution patching: one gradient"),
            Method("eap-ig", eap_ig.EAPIG, eap_ig.run, "EAP-IG: gradients along the inputs, `steps` points"),
            Method("eap-ig-mask", eap_ig.EAPIGMask, eap_ig.run_mask, "integrated gradients along the edge mask"),
            Method(
                "eap-ig-act",
                eap_ig_act.EAPIGAct,
                eap_ig_act.run,
                "EAP-IG along each sender layer's outputs, `steps` each",
            ),
            Method(
                "edge-pruning",
                edge_pruning.EdgePruning,
                edge_pruning.run,
                "learned hard-concrete edge masks (L0, Lagrangian)",
                SCORE_CUTS - {"n_edges", "n_nodes"},  # its budget is its own option and its cut
            ),
            Method("exact", exact.Exact, exact.run, "each edge's exact loss change when removed alone"),
            Method(
                "hybrid",
                hybrid.Hybrid,
                hybrid.run,
                "EAP-IG candidates, exact pruning, target guaranteed",
                frozenset({"select"}),  # the validation figure beside its guarantee; its target is its own
                decides=True,
            ),
        )
    }
)
"""Method name -> :class:`Method`."""

ALL_OPTIONS = frozenset().union(*(m.fields | m.cuts for m in METHODS.values()), PROBLEM_OPTIONS)
"""Every keyword option ``discover`` knows (some method, the cut or the problem takes it)."""


@dataclass(frozen=True)
class Plan:
    """What :func:`plan` made of ``discover``'s method, cut and keyword options (nothing is loaded yet).

    Attributes:
        method: the registry entry.
        options: the method's options object.
        cut: the cut, with the options' own cut fields and the default target filled in.
        problem: ``chunk_size`` / ``reference`` for :func:`circuitfind.problem.prepare_problem`.
    """

    method: Method
    options: MethodOptions
    cut: Cut
    problem: dict[str, Any]


def method_of(method: str | MethodOptions) -> Method:
    """The registry entry of a method name or options object.

    Example:
        >>> method_of("eap-ig").name, method_of(ACDC(threshold=0.05)).name
        ('eap-ig', 'acdc')
    """
    if isinstance(method, str):
        if method not in METHODS:
            raise ConfigError(f"unknown method {method!r}; expected one of {sorted(METHODS)} or a method object")
        return METHODS[method]
    entry = next((m for m in METHODS.values() if type(method) is m.options), None)
    if entry is None:
        raise ConfigError(
            f"method must be a name ({', '.join(METHODS)}) or a method object of circuitfind.algorithms "
            f"(e.g. EAPIG(steps=5)); got {method!r}"
        )
    return entry


def plan(method: str | MethodOptions, cut: Cut | None = None, options: Mapping[str, Any] | None = None) -> Plan:
    """Route ``options`` (``discover``'s ``**options``) by name and check them together, before any model loads.

    A value of None is an option not set. Options given for the method's own fields replace those of a method
    object; those of the cut replace the fields of ``cut``.

    Example:
        >>> p = plan("eap-ig", None, {"steps": 3, "n_edges": 10, "chunk_size": 4})
        >>> p.options, p.cut.n_edges, p.problem
        (EAPIG(steps=3, level='edge', by_position=False), 10, {'chunk_size': 4})
        >>> plan("acdc", None, {"steps": 3})
        Traceback (most recent call last):
        ...
        circuitfind.errors.ConfigError: method 'acdc' does not support steps=3: steps is an option of eap-ig, \
eap-ig-mask, eap-ig-act, edge-pruning, hybrid. Drop it, or pass one of those methods
    """
    entry = method_of(method)
    own, cuts, problem = _route(entry, {k: v for k, v in (options or {}).items() if v is not None})
    base = method if isinstance(method, MethodOptions) else None
    opts = entry.options(**own) if base is None else dataclasses.replace(base, **own)
    given = {} if cut is None else _check_cut_type(cut).given
    for name, value in given.items():
        if name not in entry.cuts:
            _refuse(entry, name, value)
    full = Cut(**{**opts.implied_cut(), **given, **cuts})
    _check_units(opts, full)
    if full.size_rule is None and not entry.decides:
        full = dataclasses.replace(full, target=DEFAULT_TARGET)
    return Plan(entry, opts, full, problem)


def _route(entry: Method, options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """``options`` split into the method's own, the cut's and the problem's; refuses what goes nowhere."""
    own: dict[str, Any] = {}
    cuts: dict[str, Any] = {}
    problem: dict[str, Any] = {}
    for name, value in options.items():
        if name in entry.fields:
            own[name] = value
        elif name in entry.cuts:
            cuts[name] = value
        elif name in PROBLEM_OPTIONS:
            problem[name] = value
        else:
            _refuse(entry, name, value)
    return own, cuts, problem


def _refuse(entry: Method, name: str, value: Any) -> None:
    takers = [m for m in METHODS.values() if m.takes(name)]
    if not takers:
        raise ConfigError(
            f"discover has no option {name}={value!r}; its options are {', '.join(sorted(ALL_OPTIONS))} "
            "(besides model, task, method, cut, metric, ablation, tokenizer and progress)"
        )
    who = ", ".join(m.name for m in takers)
    if not any(m.decides for m in takers):
        who = f"the scoring methods {who}"
    raise ConfigError(
        f"method {entry.name!r} does not support {name}={value!r}: {name} is an option of {who}. Drop it, or pass one "
        "of those methods"
    )


def _check_cut_type(cut: Any) -> Cut:
    if not isinstance(cut, Cut):
        raise ConfigError(f"cut must be a circuitfind.selection.Cut (e.g. Cut(target=0.8)) or None; got {cut!r}")
    return cut


def _check_units(options: MethodOptions, cut: Cut) -> None:
    """A node cut counts nodes, an edge cut edges."""
    units = options.units()
    if cut.n_nodes is not None and units != "node":
        raise ConfigError("n_nodes cuts a node-level circuit: pass level='node' with it (or n_edges for edges)")
    if units == "node" and cut.n_edges is not None:
        raise ConfigError("at level='node' the cut counts nodes: pass n_nodes (or threshold / target), not n_edges")


def given_options(
    values: Mapping[str, Any], method: str | MethodOptions, defaults: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The ``discover`` options among ``values`` (a command line's or a sweep cell's fields) that were given:
    every known option that is not None; one equal to its entry in ``defaults`` (a field left at its default)
    only when the method takes it. The one builder of ``discover``'s options from a command line or a cell.

    Example:
        >>> given_options({"threshold": None, "steps": 5, "batch_size": 2, "out": "dir"}, "eap", {"steps": 5})
        {'batch_size': 2}
        >>> given_options({"steps": 5, "target": 0.9}, "eap-ig", {"steps": 5})
        {'steps': 5, 'target': 0.9}
    """
    entry = method_of(method)
    defaults = defaults or {}
    out = {}
    for name, value in values.items():
        if name not in ALL_OPTIONS or value is None:
            continue
        if name in defaults and value == defaults[name] and not entry.takes(name):
            continue
        out[name] = value
    return out
