"""The explorer's page (viewer/html.py and its static/ code) in a real browser: headless Chromium (Debian's
package) driven by Selenium opens the file from file://, with no console errors; the slider redraws exactly the
top-k edges; clicking a head opens its heatmap. The browser: tests/browser.py and the ``driver`` fixture.
"""

from __future__ import annotations

import pytest

from circuitfind.viewer import to_html
from tests.browser import console_errors, drawn_edges, open_page
from tests.viewer_cases import default_size_case, ranked_names, tiny_acdc_case, tiny_case


def _through(edges: list[str], node: str) -> list[str]:
    """The edges on some path (of ``edges``) into or out of ``node``: the obviously-correct fixed point."""
    pairs = [(e.split("->")[0], e.split("->")[1].split("<")[0]) for e in edges]
    up, down = {node}, {node}
    changed = True
    while changed:
        before = len(up) + len(down)
        up |= {s for s, r in pairs if r in up}
        down |= {r for s, r in pairs if s in down}
        changed = len(up) + len(down) != before
    return [e for e, (s, r) in zip(edges, pairs, strict=True) if r in up or s in down]


@pytest.fixture(scope="module")
def tiny_page(driver, tmp_path_factory):
    pm, task, circuit, data = tiny_case()
    path = to_html(circuit, tmp_path_factory.mktemp("explorer") / "tiny.html", data=data)
    open_page(driver, path)
    assert console_errors(driver) == []
    return driver, circuit, data


def test_opens_at_the_runs_cut_with_the_saved_circuit(tiny_page):
    driver, circuit, _ = tiny_page
    k = circuit.stats["k"]
    assert driver.find_element("id", "size").get_attribute("value") == str(k)
    # hiding dangling edges, the run's own cut draws exactly the saved circuit
    assert sorted(drawn_edges(driver)) == sorted(circuit.edge_names) == sorted(ranked_names(circuit, k, prune=True))
    driver.find_element("id", "saved").click()
    assert sorted(drawn_edges(driver)) == sorted(circuit.edge_names)


def test_slider_redraws_exactly_the_top_k(tiny_page):
    driver, circuit, _ = tiny_page
    from selenium.webdriver.common.keys import Keys

    driver.execute_script("window.circuitExplorer.setPrune(false)")
    n = driver.execute_script("return window.circuitExplorer.maxK")
    for k in (1, 2, 9, 40, n):
        driver.execute_script("window.circuitExplorer.setK(arguments[0])", k)
        drawn = drawn_edges(driver)
        assert len(drawn) == k == len(driver.find_elements("css selector", "#edges path.edge"))
        assert sorted(drawn) == sorted(ranked_names(circuit, k))
    # the keyboard moves the real slider one step, and the graph follows
    driver.execute_script("window.circuitExplorer.setK(10)")
    slider = driver.find_element("id", "size")
    slider.send_keys(Keys.ARROW_RIGHT, Keys.ARROW_RIGHT)
    driver.execute_script("return new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
    assert slider.get_attribute("value") == "12" and sorted(drawn_edges(driver)) == sorted(ranked_names(circuit, 12))
    driver.execute_script("window.circuitExplorer.setPrune(true)")
    for k in (5, 12, 33):
        driver.execute_script("window.circuitExplorer.setK(arguments[0])", k)
        assert sorted(drawn_edges(driver)) == sorted(ranked_names(circuit, k, prune=True))
    assert console_errors(driver) == []


def test_clicking_a_head_opens_its_heatmap_and_paths(tiny_page):
    driver, circuit, data = tiny_page
    driver.execute_script("window.circuitExplorer.setPrune(false); window.circuitExplorer.setK(60)")
    head = next(n for n in ("a2.h0", "a1.h1", "a0.h2") if any(e.startswith(n + "->") for e in drawn_edges(driver)))
    driver.find_element("css selector", f'g.node[data-name="{head}"] .shape').click()
    assert driver.find_element("id", "node-title").text.startswith(head)
    labels = [t.text for t in driver.find_elements("css selector", "#heatmap text.tok")]
    tokens = data.prompts[0].tokens
    assert labels[: 2 * len(tokens) : 2] == list(tokens)  # the query labels, one per token of the prompt
    n = len(tokens)
    assert len(driver.find_elements("css selector", "#heatmap rect.cell")) == n * (n + 1) // 2
    # every edge on a drawn path through the head is highlighted, the rest dimmed
    lit = driver.execute_script("return Array.from(document.querySelectorAll('#edges path.hl'), p => p.dataset.name)")
    assert sorted(lit) == sorted(_through(drawn_edges(driver), head)) and any(e.startswith(head + "->") for e in lit)
    driver.find_element("id", "next-prompt").click()
    labels = [t.text for t in driver.find_elements("css selector", "#heatmap text.tok")]
    assert labels[: 2 * len(data.prompts[1].tokens) : 2] == list(data.prompts[1].tokens)
    assert console_errors(driver) == []


def test_hovering_an_edge_names_it_with_its_score_and_effect(tiny_page):
    driver, circuit, _ = tiny_page
    driver.execute_script("window.circuitExplorer.setPrune(false); window.circuitExplorer.setK(3)")
    first = ranked_names(circuit, 1)[0]
    driver.execute_script(
        "const p = document.querySelector(`#edges path[data-name='${arguments[0]}']`);"
        "p.dispatchEvent(new MouseEvent('mousemove', {bubbles: true, clientX: 100, clientY: 100}));",
        first,
    )
    tip = driver.find_element("id", "tooltip")
    assert tip.is_displayed()
    text = tip.text
    assert first in text and "score" in text and "rank 1 of" in text and "when removed" in text


def test_an_mlp_panel_shows_its_direct_effect(tiny_page):
    driver, _, data = tiny_page
    driver.execute_script("window.circuitExplorer.selectNode('m1')")
    panel = driver.find_element("id", "node-panel").text
    assert panel.startswith("m1") and "direct effect on the logit difference" in panel
    assert f"mean over {len(data.prompts)} prompts" in panel
    assert not driver.find_elements("css selector", "#heatmap")  # heads only
    assert console_errors(driver) == []


def test_acdc_circuit_shows_its_trace_and_draws_its_saved_edges(driver, tmp_path):
    circuit = tiny_acdc_case()
    open_page(driver, to_html(circuit, tmp_path / "acdc.html"))
    # ACDC's circuit is not a top-k cut: the button draws exactly the saved edges
    driver.find_element("id", "saved").click()
    assert sorted(drawn_edges(driver)) == sorted(circuit.edge_names)
    panel = driver.find_element("id", "circuit-panel").text
    assert "ACDC trace" in panel and "no faithfulness curve" in driver.find_element("id", "curve-note").text
    driver.execute_script("window.circuitExplorer.setPrune(false); window.circuitExplorer.setK(7)")
    assert sorted(drawn_edges(driver)) == sorted(ranked_names(circuit, 7))
    assert console_errors(driver) == []


def test_a_default_model_size_page_opens_and_draws_every_edge(driver, tmp_path):
    """The page of a default-model-sized circuit opens and reports its load time (how fast it opens is measured
    by benchmarks/bench_viewer.py, not here: timings belong in benchmarks)."""
    circuit, data = default_size_case()
    path = to_html(circuit, tmp_path / "big.html", data=data)
    open_page(driver, path)
    load_ms = driver.execute_script("return window.circuitExplorer.loadMs")
    assert isinstance(load_ms, (int, float)) and load_ms > 0
    driver.execute_script("window.circuitExplorer.setPrune(false)")
    n = driver.execute_script("return window.circuitExplorer.maxK")
    driver.execute_script("window.circuitExplorer.setK(arguments[0])", n)
    assert len(drawn_edges(driver)) == n == 5000
    driver.execute_script("window.circuitExplorer.selectNode('a9.h6')")
    assert len(driver.find_elements("css selector", "#heatmap rect.cell")) == 21 * 22 // 2
    assert console_errors(driver) == []


HOSTILE = "<!--<script>"  # inside a <script>, an HTML parser reads this as the start of an escaped comment


def test_markup_in_prompts_labels_and_notes_does_not_blank_the_page(driver, tmp_path):
    """Issue 19 item 1: with only ``</`` escaped, the page stayed blank (no graph, no data read)."""
    import dataclasses

    _, _, circuit, data = tiny_case()
    first = data.prompts[0]
    tokens = (HOSTILE + "&\u2028\u2029>", *first.tokens[1:])
    prompt = dataclasses.replace(first, clean=HOSTILE + first.clean, tokens=tokens, answers=(HOSTILE,))
    data = dataclasses.replace(data, task=HOSTILE, prompts=(prompt, *data.prompts[1:]))
    circuit = circuit.with_config(task=HOSTILE, label=HOSTILE + "</script>")
    circuit = circuit.replace(stats={**circuit.stats, "note": HOSTILE + " & more"})
    open_page(driver, to_html(circuit, tmp_path / "hostile.html", data=data))
    driver.find_element("id", "saved").click()
    drawn = drawn_edges(driver)
    assert drawn and sorted(drawn) == sorted(circuit.edge_names)
    assert len(driver.find_elements("css selector", "#edges path.edge")) == len(drawn)
    text = driver.execute_script("return JSON.parse(document.getElementById('circuit-data').textContent)")
    assert text["task"]["name"] == HOSTILE and text["task"]["prompts"][0]["tokens"][0] == tokens[0]
    assert console_errors(driver) == []


def test_the_explorer_page_of_an_n_edges_cut_draws_the_circuit(driver, n_edges_circuits, tmp_path):
    """Issue 19, item 9: the page of a circuit cut with ``n_edges`` draws that circuit when it opens."""
    for n in (10, 40):
        circuit = n_edges_circuits[n]
        open_page(driver, to_html(circuit, tmp_path / f"cut{n}.html"))
        drawn = drawn_edges(driver)
        assert sorted(drawn) == sorted(circuit.edge_names) and len(drawn) == circuit.n_edges > 0
