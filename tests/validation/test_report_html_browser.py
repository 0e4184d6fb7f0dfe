"""The report page and the frequency-coloured explorer in headless Chromium (skipped, saying why, without it)."""

from __future__ import annotations

import pytest

from circuitfind.validation.report import build_report, write_report
from circuitfind.viewer import to_html
from tests.browser import console_errors, open_page
from tests.viewer_cases import tiny_case


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    pm, task, circuit, data = tiny_case()
    import dataclasses

    split = dataclasses.replace(task, n_train=len(task) // 2)
    rep = build_report(pm, split, method="eap-ig", steps=2, n_boot=3, probes=12, metric="logit_diff", progress=False)
    out = tmp_path_factory.mktemp("report-page")
    write_report(rep, out)
    return out, rep, data


def test_report_page_opens_without_errors_and_draws_its_figures(driver, case):  # noqa: F811
    out, rep, _ = case
    driver.get((out / "report.html").resolve().as_uri())
    assert console_errors(driver) == []
    sizes = driver.execute_script(
        "return [...document.querySelectorAll('figure svg')].map(s => s.getBoundingClientRect().width)"
    )
    assert len(sizes) == 3 and all(w > 100 for w in sizes)
    # one scatter point per completeness probe, one curve point per size and series that has one
    points = driver.execute_script("return document.querySelectorAll('figure:nth-of-type(3) circle').length")
    assert points == len(rep.data["completeness"]["probes"])


def test_explorer_colours_edges_by_inclusion_frequency(driver, case, tmp_path):  # noqa: F811
    out, rep, data = case
    freq = rep.data["stability"]["edge_frequency"]
    path = to_html(rep.circuit, tmp_path / "explorer.html", data=data, frequency=freq)
    open_page(driver, path)
    assert console_errors(driver) == []
    colours = driver.execute_script(
        "return Object.fromEntries([...document.querySelectorAll('path.edge')].map(p => [p.dataset.name, "
        "getComputedStyle(p).stroke]))"
    )
    assert colours and any(freq.get(n, 0.0) > 0 for n in colours), "no edge drawn, or none ever kept"
    for name, colour in colours.items():
        f = freq.get(name, 0.0)
        expect = f"rgb({round(200 - 180 * f)}, {round(200 - 60 * f)}, {round(200 - 140 * f)})"
        assert colour == expect, (name, f, colour)
    assert "inclusion frequency" in driver.find_element("id", "legend").text
