"""Circuit selection: dangling-edge pruning against a brute-force path search, the cuts, and the target search."""

from __future__ import annotations

import math
from itertools import pairwise

import networkx as nx
import pytest
import torch

from circuitfind.errors import ConfigError, ShapeError
from circuitfind.evaluate.scores import MIB_FRACTIONS, top_k_masks
from circuitfind.graph import Graph
from circuitfind.selection.cuts import (
    TargetResult,
    above_threshold,
    edge_ranking,
    prune_dangling,
    smallest_faithful,
    top_fraction,
    top_n,
)


def names(graph: Graph, mask: torch.Tensor) -> list[str]:
    return sorted(e.name for e in graph.edges_of(mask))


# --- prune_dangling: hand cases, each of which fails if the rule prunes too much or too little ------------
def test_a_head_whose_output_reaches_nothing_loses_its_inputs():
    g = Graph(1, 1)
    m = g.mask_of(["input->a0.h0<q>", "input->a0.h0<k>", "input->m0", "m0->logits", "input->logits"])
    assert names(g, prune_dangling(g, m)) == ["input->logits", "input->m0", "m0->logits"]
    assert names(g, prune_dangling(g, m, from_input=False)) == ["input->logits", "input->m0", "m0->logits"]


@pytest.mark.parametrize("channel", ["q", "k", "v"])
def test_a_head_reached_through_any_one_channel_counts_as_reached(channel):
    g = Graph(2, 1)
    kept = [f"input->a0.h0<{channel}>", f"a0.h0->a1.h0<{channel}>", "a1.h0->logits"]
    m = g.mask_of(kept)
    assert names(g, prune_dangling(g, m)) == sorted(kept)
    # cut the last link: nothing reaches the logits any more, recursively
    assert names(g, prune_dangling(g, g.mask_of(kept[:2]))) == []
    # cut the first link: a0.h0 and then a1.h0 see only ablated inputs
    assert names(g, prune_dangling(g, g.mask_of(kept[1:]))) == []
    assert names(g, prune_dangling(g, g.mask_of(kept[1:]), from_input=False)) == sorted(kept[1:])


def test_head_to_mlp_of_the_same_layer_in_sequential_blocks():
    """Both passes must visit a layer's heads and its MLP in the right order (forward: heads first)."""
    g = Graph(1, 2)
    kept = ["input->a0.h1<v>", "a0.h1->m0", "m0->logits"]
    assert names(g, prune_dangling(g, g.mask_of(kept))) == sorted(kept)
    # a second head feeding only the MLP, which reaches nothing: everything into and out of both dangles
    dead = ["input->a0.h0<q>", "a0.h0->m0", "a0.h1->m0", "input->a0.h1<v>"]
    assert names(g, prune_dangling(g, g.mask_of(dead))) == []


def test_from_input_drops_edges_out_of_nodes_fed_by_nothing():
    g = Graph(2, 1)
    m = g.mask_of(["a0.h0->logits", "m0->a1.h0<q>", "a1.h0->logits", "input->logits"])
    assert names(g, prune_dangling(g, m)) == ["input->logits"]
    assert names(g, prune_dangling(g, m, from_input=False)) == names(g, m)


def test_prune_ignores_non_edges_and_never_mutates():
    g = Graph(2, 2)
    m = torch.ones(g.n_senders, g.n_receivers, dtype=torch.bool)  # non-edges set too
    before = m.clone()
    out = prune_dangling(g, m)
    assert torch.equal(m, before)
    assert torch.equal(out, g.edge_mask)  # every edge is on a path; every non-edge is dropped
    full = g.full_mask()
    out = prune_dangling(g, full)
    assert out is not full and torch.equal(out, full)
    empty = torch.zeros_like(full)
    assert not prune_dangling(g, empty).any()


def test_prune_rejects_bad_masks():
    g = Graph(1, 1)
    with pytest.raises(ShapeError, match="bool"):
        prune_dangling(g, g.full_mask().float())
    with pytest.raises(ShapeError, match="shape"):
        prune_dangling(g, torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ShapeError, match="one at a time"):
        prune_dangling(g, g.full_mask()[None].repeat(2, 1, 1))


# --- prune_dangling against a brute-force search over paths ----------------------------------------------
def node_graph(graph: Graph, mask: torch.Tensor) -> nx.MultiDiGraph:
    """The kept edges between node names; parallel q/k/v edges between one pair stay distinct (key = receiver)."""
    dg = nx.MultiDiGraph()
    for s, r in (mask & graph.edge_mask).nonzero().tolist():
        dg.add_edge(graph.senders[s].name, graph.receivers[r].node.name, key=r, s=s)
    return dg


def on_some_path(graph: Graph, mask: torch.Tensor) -> torch.Tensor:
    """Every edge of every simple path input -> logits, by enumerating the paths."""
    out = torch.zeros_like(mask)
    dg = node_graph(graph, mask)
    if "input" in dg and "logits" in dg:
        for path in nx.all_simple_edge_paths(dg, "input", "logits"):
            for u, _, r in path:
                out[graph.sender_index(u), r] = True
    return out


def reaches_logits(graph: Graph, mask: torch.Tensor) -> torch.Tensor:
    """Every kept edge whose receiver's node has a kept path to the logits (plain BFS in networkx)."""
    out = torch.zeros_like(mask)
    dg = node_graph(graph, mask)
    for u, v, r in dg.edges(keys=True):
        if v == "logits" or ("logits" in dg and nx.has_path(dg, v, "logits")):
            out[graph.sender_index(u), r] = True
    return out


@pytest.mark.parametrize(
    "graph",
    [Graph(1, 1), Graph(2, 2), Graph(3, 2), Graph(3, 2, parallel=True), Graph(2, 3, parallel=True)],
    ids=lambda g: f"{g.n_layers}x{g.n_heads}{'p' if g.parallel else 's'}",
)
def test_prune_matches_brute_force_on_random_masks(graph):
    gen = torch.Generator().manual_seed(graph.n_layers * 10 + graph.n_heads + graph.parallel)
    n_pruned = n_kept = 0
    for density in (0.05, 0.15, 0.3, 0.5, 0.7):
        for _ in range(6):
            # draw over the whole (S, R) grid: non-edges set to True must be ignored
            mask = torch.rand(graph.n_senders, graph.n_receivers, generator=gen) < density
            got = prune_dangling(graph, mask)
            want = on_some_path(graph, mask)
            assert torch.equal(got, want), (names(graph, got & ~want), names(graph, want & ~got))
            assert torch.equal(prune_dangling(graph, got), got)  # idempotent
            got_back = prune_dangling(graph, mask, from_input=False)
            assert torch.equal(got_back, reaches_logits(graph, mask))
            assert not (got & ~got_back).any()
            n_kept += int(got.sum())
            n_pruned += int((mask & graph.edge_mask & ~got).sum())
    assert n_kept > 0 and n_pruned > 0  # the draws exercise both outcomes


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
    with pytest.raises(ConfigError, match=r"n_edges \(top-ranked edges kept\) must be an integer in 1..8; got"):
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


def test_selectors_rank_nan_last_and_reject_wrong_shapes(g11):
    s = torch.zeros(g11.n_senders, g11.n_receivers)
    s[0, g11.logits_receiver - 1] = math.nan  # input->m0 is an edge, never tested
    nan_flat = g11.logits_receiver - 1
    for absolute in (False, True):
        assert int(edge_ranking(g11, s, absolute=absolute)[-1]) == nan_flat
        assert not top_n(g11, s, g11.n_edges - 1, absolute=absolute).flatten()[nan_flat]
        assert not above_threshold(g11, s, -math.inf, absolute=absolute).flatten()[nan_flat]
    ok = torch.zeros(g11.n_senders, g11.n_receivers)
    ok[~g11.edge_mask] = math.nan  # NaN off the edges is ignored
    assert int(top_n(g11, ok, 3).sum()) == 3
    with pytest.raises(ShapeError, match="shape"):
        top_n(g11, torch.zeros(2, 2), 1)


# --- smallest_faithful -----------------------------------------------------------------------------------
def weighted_faithfulness(graph: Graph, weights: torch.Tensor):
    """Monotone synthetic faithfulness: the share of the total weight carried by the kept edges."""
    total = float(weights[graph.edge_mask].sum())
    return lambda mask: float(weights[mask & graph.edge_mask].sum()) / total


@pytest.mark.parametrize("target", [0.05, 0.5, 0.9, 0.99, 1.0])
def test_monotone_faithfulness_gives_the_smallest_k(target):
    g = Graph(3, 2)
    scores = torch.randn(g.n_senders, g.n_receivers)
    weights = torch.rand(g.n_senders, g.n_receivers)
    f = weighted_faithfulness(g, weights)
    seen = []
    res = smallest_faithful(g, scores, f, target, prune=False, on_probe=seen.append)
    assert isinstance(res, TargetResult) and res.reached
    assert res.faithfulness >= target and f(res.mask) == res.faithfulness
    assert torch.equal(res.mask, top_n(g, scores, res.k))
    if res.k > 1:
        assert f(top_n(g, scores, res.k - 1)) < target
    linear = next(k for k in range(1, g.n_edges + 1) if f(top_n(g, scores, k)) >= target)
    assert res.k == linear
    # probes: galloping from k=16, every one recorded (and reported) in order, O(log n_edges) of them
    assert res.probes[0]["k"] == 16 and res.probes == seen
    assert all(set(p) == {"k", "n_edges_after_prune", "faithfulness"} for p in res.probes)
    assert all(p["n_edges_after_prune"] == p["k"] for p in res.probes)  # no pruning
    assert len(res.probes) <= 1 + 2 * math.ceil(math.log2(g.n_edges))
    assert res.k in [p["k"] for p in res.probes if p["faithfulness"] >= target]


def test_pruned_probes_measure_the_pruned_circuit():
    g = Graph(2, 2, parallel=True)
    scores = torch.randn(g.n_senders, g.n_receivers)
    weights = torch.rand(g.n_senders, g.n_receivers)
    raw = weighted_faithfulness(g, weights)
    measured = []

    def f(mask):
        assert torch.equal(prune_dangling(g, mask), mask)  # what reaches the callable is already pruned
        measured.append(int(mask.sum()))
        return raw(mask)

    res = smallest_faithful(g, scores, f, 0.6)
    assert res.reached and res.faithfulness >= 0.6
    assert torch.equal(res.mask, prune_dangling(g, top_n(g, scores, res.k)))
    assert [p["n_edges_after_prune"] for p in res.probes] == measured
    assert res.n_edges == int(res.mask.sum()) <= res.k


def test_non_monotone_faithfulness_still_returns_a_passing_circuit():
    g = Graph(3, 2)
    assert g.n_edges == 100
    scores = torch.randn(g.n_senders, g.n_receivers)
    passing = {100, 64, 48, 30}  # galloping probes 16, 32, 64, then bisection 48, 40, 44, 46, 47; misses 30

    def f(mask):
        return 0.95 if int(mask.sum()) in passing else 0.1

    res = smallest_faithful(g, scores, f, 0.9, prune=False)
    assert res.reached and res.k == 48 and f(res.mask) >= 0.9
    assert [p["k"] for p in res.probes] == [16, 32, 64, 48, 40, 44, 46, 47]
    assert [p["k"] for p in res.probes if p["faithfulness"] >= 0.9] == [64, 48]
    # a circuit that fails is never returned, whatever the probes see
    res = smallest_faithful(g, scores, lambda m: 0.95 if int(m.sum()) in (100, 50) else 0.1, 0.9, prune=False)
    assert res.k == 100 and res.faithfulness == 0.95


def test_unreachable_target_returns_the_largest_circuit():
    g = Graph(2, 2)
    scores = torch.randn(g.n_senders, g.n_receivers)
    res = smallest_faithful(g, scores, lambda m: 0.8, 0.9, hi=40)
    assert not res.reached and res.k == 40 and res.faithfulness == 0.8
    assert [p["k"] for p in res.probes] == [16, 32, 40] and "no circuit" in res.message
    assert torch.equal(res.mask, prune_dangling(g, top_n(g, scores, 40)))


def test_lo_and_hi_bound_the_search():
    g = Graph(3, 2)
    scores = torch.randn(g.n_senders, g.n_receivers)
    res = smallest_faithful(g, scores, lambda m: int(m.sum()) / 100, 0.2, prune=False, lo=30, hi=60)
    assert res.k == 30 and all(30 <= p["k"] <= 60 for p in res.probes)
    assert len(res.probes) <= 1 + math.ceil(math.log2(31))
    res = smallest_faithful(g, scores, lambda m: int(m.sum()) / 100, 0.5, prune=False, lo=30, hi=60)
    assert res.k == 50


@pytest.mark.parametrize("target", [0, 0.0, -0.5, 1.5, math.nan, True, "0.9"])
def test_target_must_be_in_unit_interval(target):
    g = Graph(1, 1)
    with pytest.raises(ConfigError, match=r"target must be a float in \(0, 1\]"):
        smallest_faithful(g, torch.zeros(g.n_senders, g.n_receivers), lambda m: 1.0, target)


def test_bad_bounds_and_nan_faithfulness():
    g = Graph(1, 1)
    s = torch.zeros(g.n_senders, g.n_receivers)
    with pytest.raises(ConfigError, match="lo must be at most hi"):
        smallest_faithful(g, s, lambda m: 1.0, 0.5, lo=5, hi=4)
    with pytest.raises(ConfigError, match=r"hi .* must be an integer in 1..8; got 9"):
        smallest_faithful(g, s, lambda m: 1.0, 0.5, hi=9)
    with pytest.raises(ConfigError, match="NaN"):
        smallest_faithful(g, s, lambda m: math.nan, 0.5)


# --- issue 19 item 4: untested (NaN) edges rank last under every ranking --------------------------------------
def test_edge_ranking_puts_untested_edges_last_signed_and_absolute_by_hand():
    nan, inf = math.nan, math.inf
    s = torch.tensor([[nan, -3.0, 1.0], [2.0, nan, -inf], [0.5, 9.0, nan]])
    exists = torch.ones(3, 3, dtype=torch.bool)
    exists[2, 1] = False  # 9.0 is not an edge
    # signed: 2, 1, 0.5, -3, -inf, then the NaN edges in position order (0, 4, 8)
    assert edge_ranking(exists, s).tolist() == [3, 2, 6, 1, 5, 0, 4, 8]
    # absolute: |-inf|, |-3|, 2, 1, 0.5, then the NaN edges -- old main sent NaN -> -inf -> +inf to the top
    assert edge_ranking(exists, s, absolute=True).tolist() == [5, 1, 3, 2, 6, 0, 4, 8]
    for absolute in (False, True):
        masks = top_k_masks(s, exists, (0.5, 1.0), absolute=absolute)
        assert not (masks[0] & torch.isnan(s)).any() and int(masks[1].sum()) == 8


def test_exact_with_candidates_and_absolute_cuts_tested_edges_and_the_viewer_shows_them():
    import circuitfind as cf
    from circuitfind.viewer.payload import ranked_edges
    from tests.models_tiny import tiny_gpt2
    from tests.test_metrics import _tiny_task

    pm = cf.PatchableModel(tiny_gpt2())
    g = pm.graph
    candidates = torch.zeros_like(g.edge_mask)
    candidates[:, g.logits_receiver] = g.edge_mask[:, g.logits_receiver]  # into logits: nothing to prune (zero abl.)
    circuit = cf.discover(
        pm,
        _tiny_task(),
        method="exact",
        candidates=candidates,
        absolute=True,
        n_edges=3,
        ablation="zero",
        metric="logit_diff",
        progress=False,
    )
    tested = ~torch.isnan(circuit.scores) & g.edge_mask
    assert torch.equal(tested, candidates)
    by_hand = sorted(candidates.flatten().nonzero().flatten().tolist(), key=lambda i: -abs(circuit.scores.flatten()[i]))
    want = torch.zeros(g.n_senders * g.n_receivers, dtype=torch.bool)
    want[by_hand[:3]] = True
    assert torch.equal(circuit.mask.flatten(), want)  # old main: the top 3 were untested edges, pruned to nothing
    senders, receivers, n_scored = ranked_edges(circuit)
    assert n_scored == int(candidates.sum()) and bool(candidates[senders, receivers].all())
    assert (senders * g.n_receivers + receivers).tolist() == by_hand


def test_node_cuts_rank_untested_nodes_last_by_absolute_score_too():
    from circuitfind.algorithms.units import node_cut

    g = Graph(1, 1)  # nodes input, a0.h0, m0
    scores = torch.tensor([math.nan, 1.0, -2.0])  # input never scored
    assert node_cut(g, scores, None, n=1, absolute=True, from_input=False).units.tolist() == [False, False, True]
    assert node_cut(g, scores, None, threshold=0.5, absolute=True, from_input=False).units.tolist() == [
        False,
        True,
        True,
    ]


# --- issue 20 item 4: the rankings elsewhere are edge_ranking's (NaN last, ties by position), by hand ------------
def test_negative_excluded_and_the_two_model_rows_rank_by_hand():
    from circuitfind.compare.diff import _edge_rows
    from circuitfind.selection.validated import negative_excluded

    g = Graph(1, 1)  # senders input, a0.h0, m0 x receivers a0.h0.q/k/v, m0, logits
    assert g.edge_mask.sum() == 8
    nan = math.nan
    s = torch.full((g.n_senders, g.n_receivers), 0.5)
    s[0, 0], s[0, 1], s[0, 4], s[1, 3], s[2, 4] = -2.0, -3.0, -2.0, nan, -1.0  # (0, 4) ties (0, 0)
    kept = torch.zeros_like(g.edge_mask)
    kept[2, 4] = True  # -1.0 is inside the circuit: not excluded
    R = g.n_receivers
    # most negative first, the tie -2.0 by position (0, 0) before (0, 4); NaN and positive edges skipped
    assert negative_excluded(g, kept, s).tolist() == [0 * R + 1, 0 * R + 0, 0 * R + 4]
    assert negative_excluded(g, g.edge_mask, s).tolist() == []  # nothing left out: an empty ranking, no error
    # the two-model view: the circuit's edges by |score|, ties by position, untested (NaN) last
    mask = g.edge_mask & (s != 0.5) | (torch.arange(g.n_senders)[:, None] == 1) & g.edge_mask
    rows = _edge_rows(g, mask, s, -s)
    expected = [(0, 1), (0, 0), (0, 4), (2, 4)] + [(1, r) for r in range(R) if g.edge_mask[1, r] and r != 3] + [(1, 3)]
    assert [r["edge"] for r in rows] == [g.edge_name(a, b) for a, b in expected]
    assert math.isnan(rows[-1]["score"]) and rows[0]["score_other"] == 3.0
    assert _edge_rows(g, torch.zeros_like(mask), s, s) == []
