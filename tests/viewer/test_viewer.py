"""The explorer's file, without a browser: the embedded ranking is discovery's, the attention bytes decode back,
the file is self-contained and within budget, and the CLI writes it (``view``, ``discover --html``, ``heads``)."""

from __future__ import annotations

import base64
import json
import re

import pytest
import torch

from circuitfind.circuit import Circuit
from circuitfind.cli.main import main
from circuitfind.errors import ConfigError
from circuitfind.viewer import DEFAULT_MAX_EDGES, build_payload, render_html, to_html
from tests.viewer_cases import default_size_case, ranked_names, tiny_acdc_case, tiny_case

BUDGET_BYTES = 5_000_000


def _payload_names(circuit: Circuit, payload: dict, indices) -> list[str]:
    e = payload["edges"]
    return [circuit.graph.edge(e["s"][i], e["r"][i]).name for i in indices]


def _embedded(html_text: str) -> dict:
    m = re.search(r'<script type="application/json" id="circuit-data">(.*?)</script>', html_text, re.S)
    return json.loads(m.group(1))


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


def test_file_is_self_contained_and_script_safe(tmp_path):
    _, task, circuit, data = tiny_case()
    first = data.prompts[0]
    evil = type(first)("</script><script>alert(1)</script>", "", first.tokens, first.answer_pos, ("<b>",), ())
    data = type(data)(data.task, (evil, *data.prompts[1:]), data.patterns, data.direct, data.roles)
    text = render_html(build_payload(circuit, data), title="<tiny>")
    assert text.count("</script>") == 2  # the data block's and the code's: the prompt's was escaped
    assert _embedded(text)["task"]["prompts"][0]["clean"] == evil.clean
    assert "<title>&lt;tiny&gt;</title>" in text
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=", text)  # nothing fetched
    assert "__DATA__" not in text and "__JS__" not in text


def test_default_model_size_is_within_budget(tmp_path):
    circuit, data = default_size_case()
    path = to_html(circuit, tmp_path / "big.html", data=data)
    size = path.stat().st_size
    assert size < BUDGET_BYTES, f"{size / 1e6:.2f} MB"
    payload = _embedded(path.read_text())
    assert payload["edges"]["n_ranked"] == DEFAULT_MAX_EDGES and payload["graph"]["n_edges"] == 123_211
    assert len(payload["task"]["prompts"]) == 20


def test_circuit_to_html_runs_the_model(tmp_path):
    pm, task, circuit, _ = tiny_case()
    path = circuit.to_html(tmp_path / "c.html", model=pm, task=task, max_prompts=2)
    payload = _embedded(path.read_text())
    assert len(payload["task"]["prompts"]) == 2 and len(payload["attention"]["data"]) == 2
    assert payload["task"]["prompts"][0]["tokens"][0].startswith("#")  # no tokenizer: ids
    no_model = _embedded(circuit.to_html(tmp_path / "bare.html").read_text())
    assert "attention" not in no_model and "roles" not in no_model
    with pytest.raises(ConfigError, match="both model= and task="):
        circuit.to_html(tmp_path / "x.html", model=pm)


def test_the_explorer_of_an_n_edges_cut_opens_on_the_circuit_as_cut(n_edges_circuits):
    """Issue 19, item 9: after ``--n-edges`` the explorer opened on 0 edges."""
    for n, circuit in n_edges_circuits.items():
        c = build_payload(circuit)["circuit"]
        # the explorer opens on the top k (dangling edges hidden): the cut's own k, which gives the circuit back
        assert c["k"] == circuit.stats["selected_before_pruning"] and (n == "threshold" or c["k"] == n)
        assert circuit.n_edges > 0 and sorted(ranked_names(circuit, c["k"], prune=True)) == sorted(circuit.edge_names)
    assert n_edges_circuits[10].n_edges < 10  # pruning dropped edges: opening on top-n_edges would show fewer


# --- the command line, on a tiny GPT-2 with SmolLM2's tokenizer --------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(tok, tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    eos = tok.eos_token_id
    config = GPT2Config(vocab_size=len(tok), bos_token_id=eos, eos_token_id=eos, n_layer=2, n_head=2, n_embd=16)
    path = tmp_path_factory.mktemp("tiny-gpt2-viewer")
    GPT2LMHeadModel(config).eval().save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_cli_discover_html_then_view(model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["discover", "--model", str(model_dir), "--task", "ioi", "--n-prompts", "3", "--held-out", "0"]
    assert main([*args, "--method", "eap", "--n-edges", "20", "--out", str(out), "--no-progress", "--html"]) == 0
    html_path = out / "circuit.html"
    assert str(html_path) in capsys.readouterr().out
    payload = _embedded(html_path.read_text())
    assert len(payload["task"]["prompts"]) == 3
    assert any(" and " in p["clean"] for p in payload["task"]["prompts"])  # IOI text, tokens decoded
    assert "roles" in payload and "direct" in payload

    assert main(["view", str(out / "circuit.json"), "--model", str(model_dir), "--out", str(tmp_path / "v.html")]) == 0
    viewed = _embedded((tmp_path / "v.html").read_text())
    assert viewed["edges"] == payload["edges"] and viewed["task"] == payload["task"]
    assert main(["view", str(out / "circuit.json"), "--no-model"]) == 0
    assert "wrote " + str(out / "circuit.html") in capsys.readouterr().out


def test_cli_heads_prints_top_heads_per_role(model_dir, tmp_path, capsys):
    js = tmp_path / "heads.json"
    argv = ["heads", "--model", str(model_dir), "--task", "ioi", "--n-prompts", "3", "--top", "2", "--json", str(js)]
    assert main([*argv, "--no-progress"]) == 0
    out = capsys.readouterr().out
    for column in ("previous_token", "duplicate_token", "induction", "copying", "direct_effect"):
        assert re.search(rf"^{column}\s+a\d\.h\d", out, re.M), out
    table = json.loads(js.read_text())
    assert len(table["rows"]) == 4 and table["rows"][0]["head"] == "a0.h0"


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
