"""Graph layout: edge counts from REFERENCE §1, names, masks."""

from __future__ import annotations

import pytest
import torch

from circuitfind.engine.patchable import PatchableModel
from circuitfind.errors import ConfigError, ShapeError, UnsupportedModelError
from circuitfind.graph import Graph
from circuitfind.models import spec_for
from tests.models_tiny import tiny_neox


def test_gpt2_small_counts():
    g = Graph(12, 12)
    assert (g.n_senders, g.n_receivers, g.n_edges) == (157, 445, 32_491)
    # ACDC's published total adds one q/k/v-internal edge per head and channel
    assert g.n_edges + 3 * 144 == 32_923


def test_smollm2_counts():
    g = Graph(30, 9)  # 30 layers, 9 query heads (GQA gives every query head its own k and v receivers)
    assert (g.n_senders, g.n_edges) == (301, 123_211)


@pytest.mark.parametrize("n_layers,n_heads", [(1, 1), (3, 4), (6, 8)])
def test_parallel_count_formula(n_layers, n_heads):
    """Parallel blocks: every receiver of layer l (q, k, v, MLP) sees the 1 + l(H+1) senders below it."""
    L, H = n_layers, n_heads
    expected = sum((3 * H + 1) * (1 + layer * (H + 1)) for layer in range(L)) + 1 + L * (H + 1)
    assert Graph(L, H, parallel=True).n_edges == expected
    # sequential adds the same-layer head -> MLP edges
    assert Graph(L, H).n_edges == expected + L * H


def test_tiny_neox_graph_is_parallel():
    pm = PatchableModel(tiny_neox())
    g = pm.graph
    assert g.parallel
    assert g.n_edges == Graph(3, 4, parallel=True).n_edges
    with pytest.raises(ConfigError, match="not upstream"):
        g.edge_index("a1.h0->m1")


def test_names_and_round_trip():
    g = Graph(2, 3)
    assert g.senders[0].name == "input"
    assert g.senders[g.head_sender(1, 2)].name == "a1.h2"
    assert g.senders[g.mlp_sender(0)].name == "m0"
    assert g.receivers[g.head_receiver(1, 0, "k")].name == "a1.h0<k>"
    assert g.receivers[g.logits_receiver].name == "logits"
    names = ["input->a1.h0<k>", "a0.h1->m0", "m1->logits"]
    mask = g.mask_of(names)
    assert sorted(e.name for e in g.edges_of(mask)) == sorted(names)
    assert int(mask.sum()) == 3
    assert len(g.edges_of(g.full_mask())) == g.n_edges


def test_bad_names_and_masks():
    g = Graph(2, 3)
    with pytest.raises(ConfigError, match="unknown sender"):
        g.edge_index("a5.h0->logits")
    with pytest.raises(ConfigError, match="look like"):
        g.edge_index("input m0")
    with pytest.raises(ShapeError, match="senders, receivers"):
        g.check_mask(torch.ones(2, 2))


def test_unsupported_architecture_names_supported_ones():
    class Fake(torch.nn.Module):
        config = type("C", (), {"model_type": "mamba"})()

    with pytest.raises(UnsupportedModelError, match="gpt2.*gpt_neox.*llama"):
        spec_for(Fake())


@pytest.mark.parametrize("parallel", [False, True])
def test_name_tables_agree_with_the_node_and_edge_objects(parallel):
    g = Graph(3, 2, parallel=parallel)
    edges = g.edges_of(g.full_mask())  # sender-major
    assert g.edge_names == tuple(e.name for e in edges) and len(g.edge_names) == g.n_edges
    s, r = g.head_sender(1, 0), g.mlp_receiver(2)
    assert g.edge_name(s, r) == g.edge(s, r).name == "a1.h0->m2"
    assert g.node_names == (*(n.name for n in g.senders), "logits")
    assert [g.node_names[i] for i in g.receiver_nodes.tolist()] == [rc.node.name for rc in g.receivers]
    assert g.sender_names[g.input_sender] == "input"


def test_nodes_touched_marks_both_ends_of_kept_edges_only():
    g = Graph(2, 2)
    on = g.nodes_touched(g.mask_of(["a0.h1->a1.h0<k>", "m1->logits"]))
    assert [g.node_names[i] for i in on.nonzero().flatten().tolist()] == ["a0.h1", "a1.h0", "m1", "logits"]
    assert not g.nodes_touched(~g.edge_mask).any()  # non-edges are ignored
    with pytest.raises(ShapeError):
        g.nodes_touched(g.full_mask().unsqueeze(0))


def test_without_nodes_clears_exactly_the_nodes_outgoing_edges():
    g = Graph(2, 2)
    full = g.full_mask()
    h = g.head_sender(0, 1)
    m = g.without_nodes(full, [h, g.mlp_sender(0)])
    # by hand: a0.h1 and m0 send nothing; every other kept edge is untouched; the input is untouched
    assert not m[h].any() and not m[g.mlp_sender(0)].any()
    others = [s for s in range(g.n_senders) if s not in (h, g.mlp_sender(0))]
    assert torch.equal(m[others], full[others])
    assert int(full.sum() - m.sum()) == int(full[h].sum() + full[g.mlp_sender(0)].sum())
    stacked = g.without_nodes(torch.stack([full, full]), torch.tensor([h]))
    assert torch.equal(stacked[0], g.without_nodes(full, [h]))
    by_bool = torch.zeros(g.n_senders, dtype=torch.bool)
    by_bool[h] = True
    assert torch.equal(g.without_nodes(full, by_bool), g.without_nodes(full, [h]))
