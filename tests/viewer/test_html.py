"""The explorer's page (viewer/html.py), without a browser: self-contained and script-safe, within its size budget
at the default model's size, and ``Circuit.to_html`` runs the model when given one."""

from __future__ import annotations

import re

import pytest

from circuitfind.errors import ConfigError
from circuitfind.viewer import DEFAULT_MAX_EDGES, build_payload, render_html, to_html
from tests.viewer_cases import default_size_case, embedded_payload, tiny_case

BUDGET_BYTES = 5_000_000


def test_file_is_self_contained_and_script_safe(tmp_path):
    _, task, circuit, data = tiny_case()
    first = data.prompts[0]
    evil = type(first)("</script><script>alert(1)</script>", "", first.tokens, first.answer_pos, ("<b>",), ())
    data = type(data)(data.task, (evil, *data.prompts[1:]), data.patterns, data.direct, data.roles)
    text = render_html(build_payload(circuit, data), title="<tiny>")
    assert text.count("</script>") == 2  # the data block's and the code's: the prompt's was escaped
    assert embedded_payload(text)["task"]["prompts"][0]["clean"] == evil.clean
    assert "<title>&lt;tiny&gt;</title>" in text
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=", text)  # nothing fetched
    assert "__DATA__" not in text and "__JS__" not in text


def test_default_model_size_is_within_budget(tmp_path):
    circuit, data = default_size_case()
    path = to_html(circuit, tmp_path / "big.html", data=data)
    size = path.stat().st_size
    assert size < BUDGET_BYTES, f"{size / 1e6:.2f} MB"
    payload = embedded_payload(path.read_text())
    assert payload["edges"]["n_ranked"] == DEFAULT_MAX_EDGES and payload["graph"]["n_edges"] == 123_211
    assert len(payload["task"]["prompts"]) == 20


def test_circuit_to_html_runs_the_model(tmp_path):
    pm, task, circuit, _ = tiny_case()
    path = circuit.to_html(tmp_path / "c.html", model=pm, task=task, max_prompts=2)
    payload = embedded_payload(path.read_text())
    assert len(payload["task"]["prompts"]) == 2 and len(payload["attention"]["data"]) == 2
    assert payload["task"]["prompts"][0]["tokens"][0].startswith("#")  # no tokenizer: ids
    no_model = embedded_payload(circuit.to_html(tmp_path / "bare.html").read_text())
    assert "attention" not in no_model and "roles" not in no_model
    with pytest.raises(ConfigError, match="both model= and task="):
        circuit.to_html(tmp_path / "x.html", model=pm)
