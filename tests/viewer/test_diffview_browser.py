"""The explorer's two-model view and head classes, opened in headless Chromium (as test_html_browser.py)."""

from __future__ import annotations

import copy

import torch

from circuitfind.analysis import head_classes
from circuitfind.circuit import Circuit
from circuitfind.compare import diff
from circuitfind.engine.patchable import PatchableModel
from circuitfind.viewer import to_html
from tests.browser import console_errors, open_page
from tests.ioi_planted import planted_ioi_spec, planted_ioi_task
from tests.models_tiny import tiny_gpt2
from tests.toy_problems import natural_task


def _hover(d, node: str) -> str:
    d.execute_script(
        "const g = document.querySelector(`#nodes g[data-name='${arguments[0]}']`);"
        "g.dispatchEvent(new MouseEvent('mousemove', {bubbles: true, clientX: 100, clientY: 100}));",
        node,
    )
    return d.find_element("id", "tooltip").text


def test_two_model_view_colours_the_edges_by_side_and_shows_node_differences(driver, tmp_path):  # noqa: F811
    a = tiny_gpt2(seed=3, init=0.2)
    b = copy.deepcopy(a)
    with torch.no_grad():
        b.transformer.h[1].attn.c_proj.weight[:8] = 0.0  # head a1.h0's W_O
    pm_a, pm_b = PatchableModel(a), PatchableModel(b)
    d = diff(pm_a, pm_b, natural_task(pm_a), n_edges=30, metric="logit_diff", progress=False)
    open_page(driver, d.to_html(tmp_path / "diff.html"))
    assert console_errors(driver) == []
    driver.execute_script("window.circuitExplorer.setPrune(false); window.circuitExplorer.setK(1000)")
    sides = driver.execute_script(
        "const out = {}; for (const p of document.querySelectorAll('#edges path'))"
        " { out[p.dataset.name] = [...p.classList].find((x) => x.startsWith('side-')) || ''; } return out;"
    )
    only_a = {r["edge"] for r in d.only_a}
    assert only_a and all(sides[e] == "side-a" for e in only_a if e in sides)
    assert any(sides[e] == "side-a" for e in only_a)
    legend = driver.find_element("id", "legend").text
    assert "only in A" in legend and "only in B" in legend and "Jaccard" in legend
    tip = _hover(driver, "a1.h0")
    top = d.weights[0]
    assert top["node"] == "a1.h0" and f"weights ||A - B||: {top['diff']:.2g}" in tip
    assert "output ||A - B|| per token" in tip and "(relative 1)" in tip  # its output is zero in B


def test_heads_show_their_ioi_class(driver, tmp_path):  # noqa: F811
    pm = PatchableModel(planted_ioi_spec())
    hc = head_classes(pm, planted_ioi_task(), copy_sample=12)
    g = pm.graph
    circuit = Circuit(g, g.full_mask(), torch.ones(g.n_senders, g.n_receivers))
    open_page(driver, to_html(circuit, tmp_path / "classes.html", head_classes=hc))
    assert console_errors(driver) == []
    classes = driver.execute_script(
        "return [...document.querySelectorAll('#nodes g.head')].map((g) => [g.dataset.name,"
        " ([...g.classList].find((c) => c.startsWith('cls-')) || '').slice(4)]);"
    )
    assert {name: c for name, c in classes if c} == {
        "a0.h0": "previous_token", "a0.h1": "duplicate_token", "a1.h0": "induction", "a2.h0": "s_inhibition",
        "a3.h0": "name_mover", "a3.h1": "negative_name_mover", "a4.h0": "backup_name_mover",
    }  # fmt: skip
    assert "IOI class: s inhibition" in _hover(driver, "a2.h0")
    assert "IOI class: none" in _hover(driver, "a1.h1")
    assert "backup name mover" in driver.find_element("id", "legend").text
