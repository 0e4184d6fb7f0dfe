"""Ground-truth circuits of GPT-2 small: counts, validity, and agreement with ACDC's construction.

``_AcdcGraph`` re-enacts, on a small dictionary of edges, the steps by which the ACDC reference builds its
graph and its IOI / greater-than ground truths (its internal q/k/v and placeholder edges included), so the
test can check that our edge sets are exactly ACDC's once those internal edges are taken out, and that ACDC's
own counts (32,923; 1,041; 262) come out.
"""

from __future__ import annotations

from itertools import product

import pytest

from circuitfind.errors import ConfigError
from circuitfind.graph import Graph
from circuitfind.tasks.ground_truth import (
    GREATER_THAN_HEADS,
    IOI_HEADS,
    greater_than_ground_truth,
    ioi_ground_truth,
)

ADD, DIRECT, PLACEHOLDER = "addition", "direct", "placeholder"
L, H = 12, 12


class _AcdcGraph:
    """ACDC's GPT-2 correspondence: nodes are tuples, ``edges[(child, parent)] = [type, present]``."""

    def __init__(self) -> None:
        self.edges: dict[tuple, list] = {}
        downstream: list[tuple] = [("resid_post",)]
        for layer in reversed(range(L)):
            for node in downstream:
                self.edges[(node, ("mlp_out", layer))] = [ADD, True]
            self.edges[(("mlp_out", layer), ("mlp_in", layer))] = [PLACEHOLDER, True]
            downstream.append(("mlp_in", layer))
            new = []
            for head in reversed(range(H)):
                for node in downstream:
                    self.edges[(node, ("result", layer, head))] = [ADD, True]
                for c in "qkv":
                    self.edges[(("result", layer, head), (c, layer, head))] = [PLACEHOLDER, True]
                    self.edges[((c, layer, head), (c + "_in", layer, head))] = [DIRECT, True]
                    new.append((c + "_in", layer, head))
            downstream += new
        for node in downstream:
            self.edges[(node, ("embed",))] = [ADD, True]

    def set(self, child: tuple, parent: tuple, present: bool) -> None:
        self.edges[(child, parent)][1] = present  # KeyError = ACDC would have crashed

    def count(self) -> int:
        return sum(p for t, p in self.edges.values() if t != PLACEHOLDER)

    def ours(self) -> set[str]:
        """Present addition edges in our naming."""

        def name(node: tuple, receiving: bool) -> str:
            kind = node[0]
            if kind in ("embed", "resid_post"):
                return "input" if kind == "embed" else "logits"
            if kind in ("mlp_in", "mlp_out"):
                return f"m{node[1]}"
            if receiving:
                return f"a{node[1]}.h{node[2]}<{kind[0]}>"
            return f"a{node[1]}.h{node[2]}"

        return {
            f"{name(parent, False)}->{name(child, True)}"
            for (child, parent), (t, present) in self.edges.items()
            if present and t == ADD
        }


def _acdc_ioi() -> _AcdcGraph:
    g = _AcdcGraph()
    circuit = {hd for heads in IOI_HEADS.values() for hd in heads}
    # mask q, k, v of every other head: their inputs, the nodes themselves and the head output
    others = [(layer, h) for layer, h in product(range(L), range(H)) if (layer, h) not in circuit]
    masked = {(c + suffix, layer, h) for (layer, h), c, suffix in product(others, "qkv", ("", "_in"))}
    masked |= {("result", layer, h) for layer, h in others}
    for key, edge in g.edges.items():
        if key[0] in masked or key[1] in masked:
            edge[1] = False
    for (layer, h), c in product(circuit, "qkv"):
        g.set((c + "_in", layer, h), ("embed",), False)
        for earlier, other in product(range(layer), range(H)):
            g.set((c + "_in", layer, h), ("result", earlier, other), False)
        g.set(("resid_post",), ("result", layer, h), False)
    groups = IOI_HEADS
    conns = [
        ("INPUT", "previous token", "qkv"),
        ("INPUT", "duplicate token", "qkv"),
        ("INPUT", "s-inhibition", "q"),
        ("INPUT", "negative name mover", "kv"),
        ("INPUT", "name mover", "kv"),
        ("INPUT", "backup name mover", "kv"),
        ("previous token", "induction", "kv"),
        ("induction", "s-inhibition", "kv"),
        ("duplicate token", "s-inhibition", "kv"),
        ("s-inhibition", "negative name mover", "q"),
        ("s-inhibition", "name mover", "q"),
        ("s-inhibition", "backup name mover", "q"),
        ("negative name mover", "OUTPUT", ""),
        ("name mover", "OUTPUT", ""),
        ("backup name mover", "OUTPUT", ""),
    ]
    for src, dst, channels in conns:
        if src == "INPUT":
            senders = [(-1, ("embed",))] + [(m, ("mlp_out", m)) for m in range(L)]
        else:
            senders = [(layer, ("result", layer, h)) for layer, h in groups[src]]
        if dst == "OUTPUT":
            receivers = [(13, ("resid_post",))] + [(m, ("mlp_in", m)) for m in range(L)]
        else:
            receivers = [(layer, (c + "_in", layer, h)) for layer, h in groups[dst] for c in channels]
        for (l_from, parent), (l_to, child) in product(senders, receivers):
            if l_to > l_from:
                g.set(child, parent, True)
    return g


def _acdc_greater_than() -> _AcdcGraph:
    g = _AcdcGraph()
    for edge in g.edges.values():
        edge[1] = False
    groups = {
        "0305": list(GREATER_THAN_HEADS["early 0.3/0.5"]),
        "01": list(GREATER_THAN_HEADS["early 0.1"]),
        "MEARLY": [(m, None) for m in range(4)],
        "AMID": list(GREATER_THAN_HEADS["mid"]),
        "MLATE": [(m, None) for m in range(8, 12)],
    }

    def ins(layer, h):
        return [("mlp_in", layer)] if h is None else [(c + "_in", layer, h) for c in "qkv"]

    def out(layer, h):
        return ("mlp_out", layer) if h is None else ("result", layer, h)

    for group in ("0305", "01", "MEARLY"):
        for layer, h in groups[group]:
            for child in ins(layer, h):
                g.set(child, ("embed",), True)
    for group in ("AMID", "MLATE"):
        for layer, h in groups[group]:
            g.set(("resid_post",), out(layer, h), True)
    for group in ("MEARLY", "MLATE"):
        for (l1, _), (l2, _) in product(groups[group], groups[group]):
            if l1 < l2:
                g.set(("mlp_in", l2), ("mlp_out", l1), True)
    for g1, g2 in [("01", "MEARLY"), ("01", "AMID"), ("0305", "AMID"), ("MEARLY", "AMID"), ("AMID", "MLATE")]:
        for (l1, h1), (l2, h2) in product(groups[g1], groups[g2]):
            if l1 >= l2 and not (l1 == l2 and h1 is not None and h2 is None):
                continue
            for child in ins(l2, h2):
                g.set(child, out(l1, h1), True)
    for layer, h in groups["0305"] + groups["01"] + groups["AMID"]:
        for c in "qkv":
            g.set((c, layer, h), (c + "_in", layer, h), True)
            g.set(("result", layer, h), (c, layer, h), True)
    last = max(layer for layer, _ in groups["AMID"])
    for s in range(last):
        for r in range(s + 1, last):
            g.set(("mlp_in", r), ("mlp_out", s), True)
    for layer, h in groups["AMID"]:
        for m in range(layer):
            g.set(("q_in", layer, h), ("mlp_out", m), True)
    return g


def test_acdc_graph_matches_reference_sizes():
    g = _AcdcGraph()
    assert g.count() == 32_923  # REFERENCE §1: ACDC's published total
    assert len(g.ours()) == Graph(12, 12).n_edges == 32_491


def test_ioi_ground_truth_is_acdcs_without_internal_edges():
    ours = ioi_ground_truth()
    acdc = _acdc_ioi()
    assert len(ours) == 963
    assert acdc.count() == 1_041 == len(ours) + 26 * 3
    assert ours == acdc.ours()


def test_greater_than_ground_truth_is_acdcs_without_internal_edges():
    ours = greater_than_ground_truth()
    acdc = _acdc_greater_than()
    assert len(ours) == 235
    assert acdc.count() == 262 == len(ours) + 9 * 3
    assert ours == acdc.ours()


def test_ground_truth_edges_are_edges_of_gpt2_small():
    graph = Graph(12, 12)
    for edges in (ioi_ground_truth(graph), greater_than_ground_truth(graph)):
        assert int(graph.mask_of(sorted(edges)).sum()) == len(edges)


def test_ground_truth_spot_checks():
    ioi = ioi_ground_truth()
    assert {
        "a9.h9->logits",
        "a7.h3->a9.h9<q>",
        "input->a9.h9<k>",
        "a5.h5->a7.h3<v>",
        "a2.h2->a5.h5<k>",
    } <= ioi
    assert {"input->logits", "m0->m11", "m3->a9.h9<q>", "a0.h1->m0"} <= ioi  # implicit in ACDC's construction
    assert not {"input->a9.h9<q>", "a7.h3->a9.h9<k>", "a5.h5->a7.h3<q>", "a9.h9->a10.h7<q>"} & ioi
    gt = greater_than_ground_truth()
    assert {"input->a0.h1<q>", "a0.h1->m0", "a8.h11->m8", "m7->a9.h1<q>", "m3->a9.h1<v>", "m7->m8"} <= gt
    assert not {"m7->a9.h1<k>", "input->logits", "a9.h1->m8", "m4->a5.h5<k>", "a0.h3->m1"} & gt


def test_ground_truth_needs_gpt2_small_graph():
    with pytest.raises(ConfigError, match="GPT-2 small"):
        ioi_ground_truth(Graph(6, 12))
    with pytest.raises(ConfigError, match="sequential"):
        greater_than_ground_truth(Graph(12, 12, parallel=True))
