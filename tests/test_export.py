"""Export: exact JSON round trips (ours and EAP-IG's layout), DOT that parses, networkx, rendering."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from circuitfind import export
from circuitfind.circuit import Circuit
from circuitfind.errors import ConfigError, RenderError
from circuitfind.graph import Graph

KEPT = [
    "input->a0.h1<q>",
    "input->a0.h1<k>",
    "input->a0.h2<v>",
    "a0.h1->a1.h3<q>",
    "a0.h1->a1.h3<k>",  # a second edge between the same two nodes, on another channel
    "a0.h2->m0",
    "m0->a2.h0<v>",
    "a1.h3->logits",
    "a2.h0->logits",
    "m0->logits",
]
NODES = ["input", "a0.h1", "a0.h2", "m0", "a1.h3", "a2.h0", "logits"]


def make_circuit(graph: Graph | None = None, kept: list[str] = KEPT) -> Circuit:
    graph = graph or Graph(3, 4)
    scores = torch.randn(graph.n_senders, graph.n_receivers)  # (S, R)
    scores[torch.rand(scores.shape) < 0.3] = float("nan")
    scores[~graph.edge_mask] = float("nan")
    return Circuit(
        graph=graph,
        mask=graph.mask_of(kept),
        scores=scores,
        metric_full=2.5,
        metric_empty=-0.125,
        metric_circuit=float("nan"),
        config={"method": "acdc", "threshold": 0.05, "layers": [0, 1]},
        stats={"wall_s": 1.25, "forward_passes": 17},
        model="tiny-gpt2",
    )


def assert_same(a: Circuit, b: Circuit) -> None:
    assert a.graph == b.graph
    assert torch.equal(a.mask, b.mask)
    assert torch.equal(a.scores.isnan(), b.scores.isnan())
    assert torch.equal(a.scores.nan_to_num(), b.scores.nan_to_num())
    for key in ("metric_full", "metric_empty", "metric_circuit"):
        x, y = getattr(a, key), getattr(b, key)
        assert x == y or (math.isnan(x) and math.isnan(y)), key
    assert (a.config, a.stats, a.model) == (b.config, b.stats, b.model)


# --- JSON ---------------------------------------------------------------------------------------------------
def test_dict_round_trip_is_exact():
    c = make_circuit()
    d = c.to_dict()
    assert len(d["edges"]) == c.graph.n_edges  # every edge, so the scores survive
    assert sum(e["in_graph"] for e in d["edges"].values()) == len(KEPT)
    assert d["cfg"] == {"n_layers": 3, "n_heads": 4, "parallel_attn_mlp": False}
    assert [n for n, on in d["nodes"].items() if on] == NODES
    assert d["circuitfind"]["metric_circuit"] is None
    json.dumps(d, allow_nan=False)  # strict JSON: NaNs became nulls
    assert_same(c, Circuit.from_dict(d))


def test_save_load_round_trip_is_exact(tmp_path):
    c = make_circuit()
    path = c.save(tmp_path / "sub" / "dir" / "circuit.json")
    assert path.is_file()
    assert [p.name for p in path.parent.iterdir()] == ["circuit.json"]  # no temp file left behind
    assert_same(c, Circuit.load(path))


def test_parallel_round_trip():
    g = Graph(3, 4, parallel=True)  # no head -> MLP edge inside a block
    c = make_circuit(g, [e for e in KEPT if e != "a0.h2->m0"])
    d = c.to_dict()
    assert d["cfg"]["parallel_attn_mlp"] is True and len(d["edges"]) == g.n_edges
    assert_same(c, Circuit.from_dict(json.loads(json.dumps(d))))


@pytest.mark.parametrize(
    "full,empty,value,expected",
    [(3.0, 1.0, 2.5, 0.75), (0.0, 2.0, 0.5, 0.75), (1.0, 1.0, 1.0, math.nan), (2.0, 0.0, -1.0, -0.5)],
)
def test_recovered_fraction(full, empty, value, expected):
    g = Graph(n_layers=1, n_heads=1)
    c = Circuit(g, g.full_mask(), torch.zeros(g.n_senders, g.n_receivers), full, empty, value)
    assert c.recovered == pytest.approx(expected, nan_ok=True)
    assert ("recovers" in c.summary()) == (not math.isnan(expected))


def test_circuit_nodes():
    assert make_circuit().nodes() == NODES


def test_loads_eap_ig_file_without_metadata(tmp_path):
    c = make_circuit()
    d = c.to_dict()
    del d["circuitfind"]
    d["cfg"]["d_model"] = 32  # EAP-IG writes more config than we read
    d["nodes"] = {name: {"in_graph": on} for name, on in d["nodes"].items()}  # newer EAP-IG node entries
    path = tmp_path / "eap.json"
    path.write_text(json.dumps(d))
    loaded = Circuit.load(path)
    assert torch.equal(loaded.mask, c.mask)
    assert torch.equal(loaded.scores.isnan(), c.scores.isnan())
    assert math.isnan(loaded.metric_full) and loaded.config == {} and loaded.stats == {} and loaded.model == ""


def test_node_level_file_keeps_edges_between_kept_nodes():
    g = Graph(2, 2)
    c = Circuit.from_dict({"cfg": {"n_layers": 2, "n_heads": 2}, "nodes": ["input", "a1.h0"]})
    assert sorted(c.edge_names) == sorted(
        ["input->a1.h0<q>", "input->a1.h0<k>", "input->a1.h0<v>", "input->logits", "a1.h0->logits"]
    )
    assert c.graph == g and c.scores.isnan().all()


@pytest.mark.parametrize(
    "edge, reason",
    [
        ("a0.h1->a0.h2<q>", "not upstream"),
        ("a7.h0->logits", "unknown sender"),
        ("input->m9", "unknown receiver"),
    ],
)
def test_unknown_edge_is_named(edge, reason):
    d = make_circuit().to_dict()
    d["edges"][edge] = {"score": 1.0, "in_graph": True}
    with pytest.raises(ConfigError, match=reason) as info:
        Circuit.from_dict(d)
    assert edge in str(info.value)


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        Circuit.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"cfg": ')
    with pytest.raises(ConfigError, match="not valid JSON") as info:
        Circuit.load(bad)
    assert "bad.json" in str(info.value)
    bad.write_text(json.dumps({"cfg": {"n_layers": 2}, "edges": {}}))
    with pytest.raises(ConfigError, match="n_heads"):
        Circuit.load(bad)


# --- DOT ----------------------------------------------------------------------------------------------------
def test_dot_parses_with_pydot():
    pydot = pytest.importorskip("pydot")
    (parsed,) = pydot.graph_from_dot_data(make_circuit().to_dot())
    edges = parsed.get_edges()
    assert len(edges) == len(KEPT)
    declared = {n.get_name().strip('"') for n in parsed.get_nodes()} - {"node", "edge", "graph"}
    assert declared == set(NODES)
    # q, k and v look different: one color per channel, gray into MLPs and logits
    colors: dict[str, set[str]] = {}
    for e in edges:
        label = e.get("label").strip('"').split(" ")[0]
        channel = label if label in ("q", "k", "v") else "other"
        colors.setdefault(channel, set()).add(e.get("color"))
    assert set(colors) == {"q", "k", "v", "other"}
    assert all(len(c) == 1 for c in colors.values())
    assert len(set.union(*colors.values())) == 4


def test_dot_parses_with_networkx(tmp_path):
    nx_pydot = pytest.importorskip("networkx.drawing.nx_pydot")
    path = tmp_path / "circuit.dot"
    path.write_text(make_circuit().to_dot())
    g = nx_pydot.read_dot(path)
    assert set(g.nodes) == set(NODES)
    assert g.number_of_edges() == len(KEPT)


def test_dot_without_scores_and_bad_rankdir():
    dot = make_circuit().to_dot(scores=False, rankdir="LR")
    assert "rankdir=LR" in dot and "penwidth" not in dot
    assert "{ rank=same;" in dot  # heads of one layer share a rank
    with pytest.raises(ConfigError, match="rankdir"):
        make_circuit().to_dot(rankdir="up")


# --- networkx -----------------------------------------------------------------------------------------------
def test_to_networkx():
    c = make_circuit()
    g = c.to_networkx()
    assert set(g.nodes) == set(NODES)
    assert g.number_of_edges() == len(KEPT)
    assert g.nodes["a1.h3"] == {"kind": "head", "layer": 1, "head": 3}
    assert g.nodes["m0"]["kind"] == "mlp" and g.nodes["logits"]["kind"] == "logits"
    channels = {d["name"]: d["channel"] for _, _, d in g.edges(data=True)}
    assert channels["a0.h1->a1.h3<q>"] == "q" and channels["a0.h1->a1.h3<k>"] == "k"
    assert channels["m0->logits"] is None
    assert g.number_of_edges("a0.h1", "a1.h3") == 2
    s, r = c.graph.edge_index("m0->a2.h0<v>")
    score = g.edges["m0", "a2.h0", "m0->a2.h0<v>"]["score"]
    assert score == c.scores[s, r].item() or (math.isnan(score) and c.scores[s, r].isnan())


# --- rendering ----------------------------------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz's dot binary is not installed")
def test_render_svg(tmp_path):
    path = make_circuit().render(tmp_path / "out" / "circuit.svg")
    text = path.read_text()
    assert text.startswith("<?xml") or "<svg" in text


def test_render_without_dot_explains(monkeypatch, tmp_path):
    monkeypatch.setattr(export.shutil, "which", lambda name: None)
    with pytest.raises(RenderError, match="apt-get install graphviz") as info:
        make_circuit().render(tmp_path / "circuit.png")
    assert "brew install graphviz" in str(info.value) and "to_dot" in str(info.value)


def test_render_unknown_format(tmp_path):
    with pytest.raises(ConfigError, match="fmt="):
        make_circuit().render(tmp_path / "circuit")


def _strict(text: str):
    """json.loads that rejects NaN / Infinity literals, as strict parsers (JavaScript, jq, Go) do."""

    def refuse(literal):
        raise ValueError(f"non-standard JSON literal {literal}")

    return json.loads(text, parse_constant=refuse)


def test_non_finite_values_are_written_as_strict_json_and_read_back(tmp_path):
    c = make_circuit()
    scores = c.scores.clone()
    scores[0, 1], scores[0, 2] = math.inf, -math.inf  # two edges out of the input
    c = c.replace(
        scores=scores,
        metric_full=math.inf,
        metric_empty=-math.inf,
        config={"threshold": math.inf, "nested": [math.nan, -math.inf, 1.5, "text"]},
        stats={"edges_per_s": math.inf, "trace": [{"metric": math.nan}]},
    )
    path = c.save(tmp_path / "circuit.json")
    data = _strict(path.read_text(encoding="utf-8"))
    assert data["circuitfind"]["config"]["threshold"] == "inf"
    assert data["circuitfind"]["metric_empty"] == "-inf"
    back = Circuit.load(path)
    assert back.scores[0, 1] == math.inf and back.scores[0, 2] == -math.inf
    assert (back.metric_full, back.metric_empty) == (math.inf, -math.inf)
    assert back.config["threshold"] == math.inf
    nested = back.config["nested"]
    assert math.isnan(nested[0]) and nested[1:] == [-math.inf, 1.5, "text"]
    assert back.stats["edges_per_s"] == math.inf and math.isnan(back.stats["trace"][0]["metric"])
    assert_same(c.replace(config={}, stats={}), back.replace(config={}, stats={}))


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda d: d["circuitfind"].update(metric_full="abc"), r"'circuitfind.metric_full' must be a number"),
        (lambda d: d["circuitfind"].update(config=[1]), r"'circuitfind.config' must be an object; got list"),
        (lambda d: d["circuitfind"].update(stats="x"), r"'circuitfind.stats' must be an object; got str"),
        (lambda d: d["nodes"].update(input="yes"), r"node 'input': expected true/false"),
        (lambda d: d["edges"]["input->a0.h1<q>"].update(score="high"), r"edge 'input->a0.h1<q>': expected"),
        (lambda d: d["cfg"].update(n_layers=10**6), r"'cfg.n_layers' must be an integer in 1..1000; got 1000000"),
        (lambda d: d["cfg"].update(n_heads=0), r"'cfg.n_heads' must be an integer in 1..1000; got 0"),
        (lambda d: d["cfg"].update(n_layers=900, n_heads=900), r"900 layers x 900 heads .* larger than any model"),
    ],
)
def test_malformed_circuit_dicts_are_config_errors(change, message):
    d = make_circuit().to_dict()
    change(d)
    with pytest.raises(ConfigError, match=message):
        Circuit.from_dict(d)
