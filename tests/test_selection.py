"""Circuit selection: the ranking and the cuts, on hand-made scores with known answers."""

from __future__ import annotations

import math
from itertools import pairwise

import pytest
import torch

from circuitfind.errors import ConfigError, ShapeError
from circuitfind.evaluate_scores import MIB_FRACTIONS, top_k_masks
from circuitfind.graph import Graph
from circuitfind.selection import (
    above_threshold,
    edge_ranking,
    top_fraction,
    top_n,
)


def names(graph: Graph, mask: torch.Tensor) -> list[str]:
    return sorted(e.name for e in graph.edges_of(mask))


# --- ranking and cuts ------------------------------------------------------------------------------------
@pytest.fixture
def g11() -> Graph:
    return Graph(1, 1)  # 8 edges: input->q,k,v; input,a0.h0->m0; input,a0.h0,m0->logits


def scores_for(graph: Graph, values: dict[str, float], rest: float = 100.0) -> torch.Tensor:
    """Scores with the given edges set and every non-edge set to ``rest`` (which must never be selected)."""
    s = torch.full((graph.n_senders, graph.n_receivers), rest)
    s[graph.edge_mask] = 0.0
    for name, v in values.items():
        s[graph.edge_index(name)] = v
    return s


def test_edge_ranking_order_ties_and_non_edges(g11):
    s = scores_for(g11, {"m0->logits": 3.0, "input->a0.h0<k>": -4.0, "a0.h0->m0": 3.0, "input->m0": 1.0})
    order = edge_ranking(g11, s)
    flat = [divmod(i, g11.n_receivers) for i in order.tolist()]
    got = [g11.edge(si, ri).name for si, ri in flat]
    # 3.0 tie: a0.h0->m0 (flat index 8) before m0->logits (14); the four zero scores in position order
    assert got == [
        "a0.h0->m0",
        "m0->logits",
        "input->m0",
        "input->a0.h0<q>",
        "input->a0.h0<v>",
        "input->logits",
        "a0.h0->logits",
        "input->a0.h0<k>",
    ]
    got_abs = [g11.edge(*divmod(i, g11.n_receivers)).name for i in edge_ranking(g11, s, absolute=True).tolist()]
    assert got_abs[:3] == ["input->a0.h0<k>", "a0.h0->m0", "m0->logits"]


def test_ties_keep_position_order_on_a_full_size_graph():
    """GPT-2 small's 32,491 edges, all tied: the ranking is the edges in position order (a stable sort)."""
    g = Graph(12, 12)
    order = edge_ranking(g, torch.zeros(g.n_senders, g.n_receivers))
    assert torch.equal(order, g.edge_mask.flatten().nonzero().squeeze(1))


def test_top_n_picks_the_best_existing_edges(g11):
    s = scores_for(g11, {"m0->logits": 3.0, "input->a0.h0<k>": -4.0, "a0.h0->m0": 2.0})
    assert names(g11, top_n(g11, s, 1)) == ["m0->logits"]
    assert names(g11, top_n(g11, s, 2)) == ["a0.h0->m0", "m0->logits"]
    assert names(g11, top_n(g11, s, 1, absolute=True)) == ["input->a0.h0<k>"]
    for n in range(1, g11.n_edges + 1):
        m = top_n(g11, s, n)
        assert int(m.sum()) == n and not (m & ~g11.edge_mask).any()
    assert torch.equal(top_n(g11, s, g11.n_edges), g11.edge_mask)


def test_cuts_are_nested_with_ties():
    g = Graph(3, 2)
    s = torch.randint(0, 3, (g.n_senders, g.n_receivers)).float()  # many ties
    masks = [top_n(g, s, n) for n in range(1, g.n_edges + 1)]
    assert all(bool((a <= b).all()) and int((b & ~a).sum()) == 1 for a, b in pairwise(masks))


@pytest.mark.parametrize("n", [0, -1, 9, 2.0, True, None])
def test_top_n_rejects_bad_n(g11, n):
    with pytest.raises(ConfigError, match="n_edges must be between 1 and 8; got"):
        top_n(g11, torch.zeros(g11.n_senders, g11.n_receivers), n)


def test_top_fraction_counts_and_agrees_with_top_k_masks():
    g = Graph(3, 2, parallel=True)
    s = torch.randn(g.n_senders, g.n_receivers)
    for absolute in (False, True):
        sweep = top_k_masks(s, g.edge_mask, MIB_FRACTIONS, absolute=absolute)
        for frac, m in zip(MIB_FRACTIONS, sweep, strict=True):
            mine = top_fraction(g, s, frac, absolute=absolute)
            assert torch.equal(mine, m)
            assert int(mine.sum()) == max(1, round(frac * g.n_edges))
            assert torch.equal(mine, top_n(g, s, max(1, round(frac * g.n_edges)), absolute=absolute))


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.01, math.nan, True, "0.5"])
def test_top_fraction_rejects_bad_fractions(g11, fraction):
    with pytest.raises(ConfigError, match=r"\(0, 1\]"):
        top_fraction(g11, torch.zeros(g11.n_senders, g11.n_receivers), fraction)


def test_above_threshold_is_strict_and_ignores_non_edges(g11):
    s = scores_for(g11, {"m0->logits": 3.0, "input->a0.h0<k>": -4.0, "a0.h0->m0": 2.0})
    assert names(g11, above_threshold(g11, s, 2.0)) == ["m0->logits"]
    assert names(g11, above_threshold(g11, s, 1.999)) == ["a0.h0->m0", "m0->logits"]
    assert names(g11, above_threshold(g11, s, 3.0, absolute=True)) == ["input->a0.h0<k>"]
    assert names(g11, above_threshold(g11, s, -4.0)) == sorted(set(names(g11, g11.edge_mask)) - {"input->a0.h0<k>"})
    assert not above_threshold(g11, s, 50.0).any()  # non-edges score 100 but are not edges
    assert torch.equal(above_threshold(g11, s, -math.inf), g11.edge_mask)
    with pytest.raises(ConfigError, match="threshold"):
        above_threshold(g11, s, math.nan)


def test_selectors_reject_nan_and_wrong_shapes(g11):
    s = torch.zeros(g11.n_senders, g11.n_receivers)
    s[0, g11.logits_receiver - 1] = math.nan  # input->m0 is an edge
    for call in (
        lambda: edge_ranking(g11, s),
        lambda: top_n(g11, s, 1),
        lambda: top_fraction(g11, s, 0.5),
        lambda: above_threshold(g11, s, 0.0),
    ):
        with pytest.raises(ShapeError, match="NaN"):
            call()
    ok = torch.zeros(g11.n_senders, g11.n_receivers)
    ok[~g11.edge_mask] = math.nan  # NaN off the edges is ignored
    assert int(top_n(g11, ok, 3).sum()) == 3
    with pytest.raises(ShapeError, match="shape"):
        top_n(g11, torch.zeros(2, 2), 1)
