"""``circuitfind report`` and the report files: written, parseable, consistent with the circuit, safe to open."""

from __future__ import annotations

import json
import re

import pytest
import torch

from circuitfind.circuit import Circuit
from circuitfind.cli.main import main
from circuitfind.validation.report_html import embed_json, render_report


@pytest.fixture(scope="module")
def model_dir(tok, tmp_path_factory):
    """A random 2-layer GPT-2 over SmolLM2's vocabulary, saved with the tokenizer (what `--model DIR` reads)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    eos = tok.eos_token_id
    config = GPT2Config(vocab_size=len(tok), bos_token_id=eos, eos_token_id=eos, n_layer=2, n_head=2, n_embd=16,
                        n_positions=64, initializer_range=0.5)  # fmt: skip
    path = tmp_path_factory.mktemp("tiny-gpt2-report")
    GPT2LMHeadModel(config).eval().save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def report_dir(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    args = ["report", "--model", str(model_dir), "--task", "ioi", "--n-prompts", "6", "--held-out", "6",
            "--method", "eap-ig", "--steps", "2", "--n-edges", "12", "--metric", "logit_diff", "--n-boot", "3",
            "--probes", "16", "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(args) == 0
    return out


def test_report_writes_the_three_files_and_they_parse(report_dir, capsys):
    names = sorted(p.name for p in report_dir.iterdir() if not p.name.startswith("."))
    assert names == ["circuit.json", "report.html", "report.json"]
    data = json.loads((report_dir / "report.json").read_text())
    circuit = Circuit.load(report_dir / "circuit.json")
    held = data["heldout"]
    assert held["n_prompts"] == 6 and held["n_edges"] == circuit.n_edges
    assert set(data["stability"]) >= {"n_boot", "jaccard_mean", "edge_frequency", "core_edges",
                                      "core_heldout_faithfulness"}  # fmt: skip
    assert data["stability"]["n_boot"] == 3 and 0 < data["stability"]["jaccard_mean"] <= 1
    freq = data["stability"]["edge_frequency"]
    assert freq and all(min(abs(v - j / 3) for j in (1, 2, 3)) < 1e-9 for v in freq.values())  # kept by 1, 2 or 3
    assert set(data["stability"]["core_edges"]) <= set(freq)
    assert set(data["ablations"]) >= {"resample", "mean", "zero"}
    assert data["ablations"]["resample"]["jaccard"] == 1.0  # the circuit was found under resample ablation
    assert data["completeness"]["probes_used"] <= 16 and data["minimality"]["probes_used"] <= 16
    assert data["completeness"]["ablation"] == "mean"
    page = (report_dir / "report.html").read_text()
    assert page.startswith("<!doctype html>") and page.count("<svg") == 3
    embedded = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S).group(1)
    assert json.loads(embedded) == data


def test_embedded_json_escapes_everything_that_could_end_the_script():
    nasty = {"edge</script><script>alert(1)</script>": "a & b > c \u2028 \u2029 <!--"}
    text = embed_json(nasty)
    assert not set("<>&") & set(text) and "\u2028" not in text and "\u2029" not in text
    assert json.loads(text) == nasty


def test_report_html_escapes_node_names(report_dir):
    data = json.loads((report_dir / "report.json").read_text())
    data["stability"]["edge_frequency"] = {"<b>x</b>": 1.0}
    page = render_report(data)
    assert "<b>x</b>" not in page.split('id="report-data">')[0] and "&lt;b&gt;x&lt;/b&gt;" in page


def test_report_refuses_a_task_without_held_out_prompts(model_dir, tmp_path, capsys):
    args = ["report", "--model", str(model_dir), "--task", "ioi", "--n-prompts", "4", "--held-out", "0",
            "--n-edges", "5", "--out", str(tmp_path / "r"), "--no-progress"]  # fmt: skip
    assert main(args) == 2
    assert "held-out prompts" in capsys.readouterr().err


def test_a_ray_cell_computes_the_same_resample_as_the_local_run(model_dir):
    # what each Ray worker runs (a sweep cell through ModelWorker, here without Ray) equals the local resample
    from circuitfind.sweeps.cell import ModelWorker
    from circuitfind.sweeps.spec import Cell
    from circuitfind.validation.stability import stability
    from circuitfind.validation.stability_runs import stability_cell

    opts = {"method": "eap", "n_edges": 6, "metric": "logit_diff"}
    local = stability(str(model_dir), "ioi", n_boot=2, seed=5, n_prompts=4, held_out=2, progress=False, **opts)
    worker = ModelWorker(str(model_dir), "cpu", threads=1)
    for b in range(2):
        cell = Cell(model=str(model_dir), task="ioi", method="eap", n_prompts=4, held_out=2, seed=0, cpr_cmd=False,
                    options={"n_boot": 2, "seed": 5, "resample": b, "discover": {"n_edges": 6,
                                                                                 "metric": "logit_diff"}})  # fmt: skip
        row = worker.run(cell, stability_cell)
        assert row["status"] == "done", row.get("error")
        assert row["metrics"]["edges"] == local.masks[b].flatten().nonzero().flatten().tolist()


def test_the_rediscovery_under_each_ablation_is_cut_like_the_stability_resamples():
    """With ``stability_cut="size"`` the circuit each other ablation finds is the top-k of that ablation's own
    scores at the run's k (not a rerun of the target search, which under mean / zero ablation may need the whole
    graph); with ``"same"`` it is the run's own cut rerun. Checked against independent ``discover`` calls."""
    import dataclasses

    from circuitfind import discover
    from circuitfind.engine.patchable import PatchableModel
    from circuitfind.validation.ablations import jaccard
    from circuitfind.validation.report import build_report
    from tests.models_tiny import tiny_gpt2
    from tests.toy_problems import natural_task

    pm = PatchableModel(tiny_gpt2(init=0.2))
    task = dataclasses.replace(natural_task(pm), n_train=3)
    cut = {"target": 0.97, "select": "train", "metric": "logit_diff"}
    for stability_cut, rerun in (("size", None), ("same", cut)):
        rep = build_report(pm, task, method="eap", n_boot=2, probes=8, stability_cut=stability_cut, progress=False,
                           **cut)  # fmt: skip
        k = int(rep.circuit.stats["k"])
        for abl in ("mean", "zero"):
            opts = rerun or {"n_edges": k, "metric": "logit_diff"}
            want = discover(pm, task, method="eap", ablation=abl, progress=False, **opts)
            got = rep.data["ablations"][abl]
            assert got["found_n_edges"] == want.n_edges, (stability_cut, abl)
            assert got["jaccard"] == pytest.approx(jaccard(rep.circuit.mask, want.mask)), (stability_cut, abl)
