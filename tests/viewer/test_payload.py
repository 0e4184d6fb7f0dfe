"""The explorer's data (viewer/payload.py): the embedded ranking is discovery's (checked against a hand ranking),
the saved circuit survives the cap, the attention bytes decode back, the opening size is the cut's."""

from __future__ import annotations

import base64

import torch

from circuitfind.circuit import Circuit
from circuitfind.viewer import DEFAULT_MAX_EDGES, build_payload
from tests.viewer_cases import ranked_names, tiny_acdc_case, tiny_case


def _payload_names(circuit: Circuit, payload: dict, indices) -> list[str]:
    e = payload["edges"]
    return [circuit.graph.edge(e["s"][i], e["r"][i]).name for i in indices]


def test_embedded_ranking_is_discoverys_top_k():
    _, _, circuit, data = tiny_case()
    payload = build_payload(circuit, data)
    n = payload["edges"]["n_ranked"]
    assert n == min(DEFAULT_MAX_EDGES, int(torch.isfinite(circuit.scores[circuit.graph.edge_mask]).sum()))
    for k in (1, 7, 30, n):
        assert _payload_names(circuit, payload, range(k)) == ranked_names(circuit, k)  # the same order, best first
    assert sorted(_payload_names(circuit, payload, payload["kept"])) == sorted(circuit.edge_names)
    assert payload["circuit"]["k"] == circuit.stats["k"] and payload["circuit"]["probes"] == circuit.stats["probes"]
    by_size = circuit.with_config(absolute=True)  # a run that ranked by |score|
    absolute = build_payload(by_size)
    assert _payload_names(by_size, absolute, range(30)) == ranked_names(by_size, 30)
    assert sorted(ranked_names(by_size, 30)) != sorted(ranked_names(circuit, 30))


def test_cap_keeps_the_saved_circuit():
    _, _, circuit, _ = tiny_case()
    payload = build_payload(circuit, max_edges=3)
    assert payload["edges"]["n_ranked"] == 3 and len(payload["edges"]["s"]) >= 3
    assert _payload_names(circuit, payload, range(3)) == ranked_names(circuit, 3)
    assert sorted(_payload_names(circuit, payload, payload["kept"])) == sorted(circuit.edge_names)


def test_acdc_circuit_ranks_its_tested_edges_and_carries_its_trace():
    circuit = tiny_acdc_case()
    payload = build_payload(circuit)
    tested = int((~circuit.scores.isnan() & circuit.graph.edge_mask).sum())
    assert 0 < tested < circuit.graph.n_edges and payload["edges"]["n_ranked"] == tested
    assert _payload_names(circuit, payload, range(tested)) == ranked_names(circuit, tested)
    assert sorted(_payload_names(circuit, payload, payload["kept"])) == sorted(circuit.edge_names)
    assert payload["circuit"]["trace"] and payload["circuit"]["probes"] == []


def test_attention_bytes_decode_to_the_patterns():
    _, _, circuit, data = tiny_case()
    payload = build_payload(circuit, data)
    L, H = circuit.graph.n_layers, circuit.graph.n_heads
    for p, pattern in enumerate(data.patterns):
        n = pattern.shape[-1]
        raw = torch.frombuffer(bytearray(base64.b64decode(payload["attention"]["data"][p])), dtype=torch.uint8)
        assert raw.numel() == L * H * n * (n + 1) // 2
        rows, cols = torch.tril_indices(n, n)
        decoded = raw.view(L, H, -1).float() / 255
        assert torch.allclose(decoded, pattern[:, :, rows, cols], atol=0.5 / 255 + 1e-6)
    assert len(payload["direct"]["mean"]) == circuit.graph.n_senders
    assert set(payload["roles"]["scores"]) == set(data.roles.scores)


def test_the_explorer_of_an_n_edges_cut_opens_on_the_circuit_as_cut(n_edges_circuits):
    """Issue 19, item 9: after ``--n-edges`` the explorer opened on 0 edges."""
    for n, circuit in n_edges_circuits.items():
        c = build_payload(circuit)["circuit"]
        # the explorer opens on the top k (dangling edges hidden): the cut's own k, which gives the circuit back
        assert c["k"] == circuit.stats["selected_before_pruning"] and (n == "threshold" or c["k"] == n)
        assert circuit.n_edges > 0 and sorted(ranked_names(circuit, c["k"], prune=True)) == sorted(circuit.edge_names)
    assert n_edges_circuits[10].n_edges < 10  # pruning dropped edges: opening on top-n_edges would show fewer


def test_the_payload_carries_graph_names_and_places_so_the_explorer_never_spells_them():
    from circuitfind.graph import Graph
    from circuitfind.viewer.payload import _graph_section

    section = _graph_section(Graph(1, 2))  # receivers: q, k, v of each head (channel-major), m0, logits
    assert section["nodes"] == {
        "name": ["input", "a0.h0", "a0.h1", "m0", "logits"],
        "kind": ["input", "head", "head", "mlp", "logits"],
        "layer": [-1, 0, 0, 0, 1],  # the logits sit above the last layer
        "head": [-1, 0, 1, -1, -1],
    }
    assert section["receivers"] == {
        "node": [1, 2, 1, 2, 1, 2, 3, 4],
        "channel": ["q", "q", "k", "k", "v", "v", None, None],
        "name": ["a0.h0<q>", "a0.h1<q>", "a0.h0<k>", "a0.h1<k>", "a0.h0<v>", "a0.h1<v>", "m0", "logits"],
    }
