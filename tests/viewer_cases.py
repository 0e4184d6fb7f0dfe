"""Circuits and explorer data for the viewer tests: a real run on a tiny model, and a synthetic run of the
default model's size (30 layers x 9 heads, 123,211 edges, 20 prompts of 21 tokens) for the budget."""

from __future__ import annotations

import functools
import json
import math
import re

import torch

import circuitfind as cf
from circuitfind.analysis import COLUMNS, HeadRoles
from circuitfind.circuit import Circuit
from circuitfind.engine.patchable import PatchableModel
from circuitfind.graph import Edge, Graph
from circuitfind.selection.cuts import prune_dangling, top_n
from circuitfind.viewer import ExplorerData, PromptView, collect
from tests.models_tiny import tiny_gpt2
from tests.toy_problems import natural_task


@functools.lru_cache(maxsize=1)
def tiny_case() -> tuple[PatchableModel, cf.Task, Circuit, ExplorerData]:
    """EAP-IG on a 3-layer GPT-2, cut at faithfulness 0.8, with its explorer data (tokens as ``#id``)."""
    pm = PatchableModel(tiny_gpt2(init=0.2))
    task = natural_task(pm)
    circuit = cf.discover(pm, task, method="eap-ig", target=0.8, metric="logit_diff", progress=False)
    return pm, task, circuit, collect(pm, task)


def ranked_names(circuit: Circuit, k: int, prune: bool = False) -> list[str]:
    """The circuit's top-k edge names, best first, ranked by hand: an independent slow path for the explorer's
    ranking (which goes through ``selection.edge_ranking``). Score descending (``|score|`` when the run ranked by
    absolute value), untested (NaN) edges after every tested one, ties in position order (Python's sort is
    stable); with ``prune``, without the edges on no kept ``input -> logits`` path (:func:`_without_dangling`)."""
    g = circuit.graph
    absolute = bool(circuit.config.get("absolute", False))
    scores = circuit.scores.tolist()

    def key(edge: tuple[int, int]) -> tuple[int, float]:
        v = scores[edge[0]][edge[1]]
        return (1, 0.0) if math.isnan(v) else (0, -abs(v) if absolute else -v)

    in_position_order = [(s, r) for s, r in g.edge_mask.nonzero().tolist()]  # row-major, as the flat index
    top = [g.edge(s, r) for s, r in sorted(in_position_order, key=key)[:k]]
    if prune:
        top = _without_dangling(top, from_input=circuit.config.get("ablation", "resample") == "resample")
    return [e.name for e in top]


def _without_dangling(edges: list[Edge], from_input: bool) -> list[Edge]:
    """``edges`` less those whose receiver's node has no path on to ``logits`` through ``edges`` and, with
    ``from_input``, those whose sender no path from ``input`` reaches, by fixed points over nodes."""

    def closure(start: str, step) -> set[str]:
        nodes, grew = {start}, True
        while grew:
            grew = False
            for e in edges:
                here, there = step(e)
                if here in nodes and there not in nodes:
                    nodes.add(there)
                    grew = True
        return nodes

    reached = closure("input", lambda e: (e.sender.name, e.receiver.node.name))
    reaches = closure("logits", lambda e: (e.receiver.node.name, e.sender.name))
    return [e for e in edges if e.receiver.node.name in reaches and (not from_input or e.sender.name in reached)]


@functools.lru_cache(maxsize=1)
def default_size_case(n_prompts: int = 20, n_tokens: int = 21) -> tuple[Circuit, ExplorerData]:
    """A synthetic circuit and data the size of the default model's (no model is loaded)."""
    gen = torch.Generator().manual_seed(0)
    g = Graph(30, 9)
    scores = torch.randn(g.n_senders, g.n_receivers, generator=gen) * g.edge_mask
    mask = prune_dangling(g, top_n(g, scores, 392))
    probes = [
        {"k": k, "n_edges_after_prune": k // 2, "faithfulness": min(1.0, k / 400)} for k in (16, 64, 256, 392, 512)
    ]
    circuit = Circuit(
        g,
        mask,
        scores,
        metric_full=3.7,
        metric_empty=-0.02,
        metric_circuit=3.5,
        config={"method": "eap-ig", "metric": "logit_diff", "ablation": "resample", "task": "ioi", "target": 0.95},
        stats={"k": 392, "probes": probes, "wall_time_s": 208.0},
        model="smollm2",
    )
    causal = torch.full((n_tokens, n_tokens), float("-inf")).triu(1)
    patterns = [
        (torch.randn(30, 9, n_tokens, n_tokens, generator=gen) * 3 + causal).softmax(-1) for _ in range(n_prompts)
    ]
    tokens = tuple(f" tok{i}" for i in range(n_tokens))
    prompts = tuple(
        PromptView(f"prompt {p}", f"corrupted {p}", tokens, n_tokens - 1, (" Mary",), (" John",))
        for p in range(n_prompts)
    )
    roles = HeadRoles(30, 9, {c: torch.rand(30, 9, generator=gen) for c in COLUMNS}, {"seed": 0})
    direct = torch.randn(g.n_senders, n_prompts, generator=gen)
    return circuit, ExplorerData("ioi", prompts, tuple(patterns), direct, roles)


@functools.lru_cache(maxsize=1)
def tiny_acdc_case() -> Circuit:
    """ACDC on the same model: effects only for tested edges (NaN elsewhere) and a per-layer trace, no probes."""
    pm, task, _, _ = tiny_case()
    return cf.discover(pm, task, method="acdc", threshold=0.02, progress=False)


def embedded_payload(html_text: str) -> dict:
    """The explorer data a written page embeds (its ``circuit-data`` JSON block)."""
    m = re.search(r'<script type="application/json" id="circuit-data">(.*?)</script>', html_text, re.S)
    return json.loads(m.group(1))
