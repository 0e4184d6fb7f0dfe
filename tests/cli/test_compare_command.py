"""`circuitfind diff` and `circuitfind heads --classes`: files written, clear errors. Tiny GPT-2s with SmolLM2's
tokenizer, saved as folders (what `--model DIR` reads)."""

from __future__ import annotations

import json

import pytest
import torch

from circuitfind.cli.main import main

TINY = {"n_head": 2, "n_embd": 16, "n_positions": 64, "initializer_range": 0.5}


def _save(tok, path, n_layer: int, zero_head: tuple[int, int] | None = None):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    eos = tok.eos_token_id
    config = GPT2Config(vocab_size=len(tok), bos_token_id=eos, eos_token_id=eos, n_layer=n_layer, **TINY)
    model = GPT2LMHeadModel(config)
    if zero_head is not None:
        layer, h = zero_head
        e = TINY["n_embd"] // TINY["n_head"]
        with torch.no_grad():
            model.transformer.h[layer].attn.c_proj.weight[h * e : (h + 1) * e] = 0.0
    model.eval().save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def dirs(tok, tmp_path_factory):
    root = tmp_path_factory.mktemp("cmp")
    return {
        "a": _save(tok, root / "a", 2),
        "b": _save(tok, root / "b", 2, zero_head=(1, 1)),
        "deep": _save(tok, root / "deep", 3),
    }


def test_diff_prints_and_writes_json_and_html(dirs, tmp_path, capsys):
    out, html = tmp_path / "diff.json", tmp_path / "diff.html"
    args = ["diff", "--model", str(dirs["a"]), "--model-b", str(dirs["b"]), "--task", "ioi", "--n-prompts", "4"]
    assert main([*args, "--n-edges", "10", "--json", str(out), "--html", str(html), "--no-progress"]) == 0
    stdout = capsys.readouterr().out
    d = json.loads(out.read_text())
    assert d["weights"][0]["node"] == "a1.h1" and d["activations"][0]["node"] == "a1.h1"
    assert d["model_a"] == str(dirs["a"]) and d["model_b"] == str(dirs["b"])
    assert "Jaccard" in stdout and "weights ||A-B||: a1.h1" in stdout and str(out) in stdout
    assert '"diff":' in html.read_text()


def test_diff_of_models_with_different_graphs_is_a_clear_error(dirs, capsys):
    args = ["diff", "--model", str(dirs["a"]), "--model-b", str(dirs["deep"]), "--task", "ioi", "--n-prompts", "2"]
    assert main([*args, "--n-edges", "5", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "error: the two models differ in graph: A has 2 layers" in err and "3 layers" in err


def test_diff_of_one_model_with_itself_has_no_differences(dirs, tmp_path, capsys):
    out = tmp_path / "diff.json"
    args = ["diff", "--model", str(dirs["a"]), "--model-b", str(dirs["a"]), "--task", "ioi"]
    assert main([*args, "--n-prompts", "4", "--n-edges", "8", "--json", str(out), "--no-progress"]) == 0
    d = json.loads(out.read_text())
    assert d["jaccard"] == 1.0 and d["only_a"] == [] and d["only_b"] == []
    assert all(r["diff"] in (0.0, None) for r in d["weights"] + d["activations"] + d["logprobs"])

def test_heads_classes_needs_an_ioi_task(dirs, capsys):
    assert main(["heads", "--model", str(dirs["a"]), "--classes", "--no-progress"]) == 2
    assert "--classes needs an IOI task" in capsys.readouterr().err


def test_heads_classes_prints_every_class_and_writes_json_and_csv(tmp_path, capsys):
    import argparse

    from circuitfind.cli.main import _run_head_classes
    from circuitfind.engine.patchable import PatchableModel
    from tests.ioi_planted import planted_ioi_spec, planted_ioi_task

    out, csv = tmp_path / "classes.json", tmp_path / "classes.csv"
    args = argparse.Namespace(
        effect_threshold=None, attention_threshold=0.5, copying_threshold=None, seed=0, progress=False, all=True,
        json=out, csv=csv,
    )  # fmt: skip
    assert _run_head_classes(args, PatchableModel(planted_ioi_spec()), planted_ioi_task(), 0.0) == 0
    stdout = capsys.readouterr().out
    assert "name_mover           a3.h0 (2.00)" in stdout  # attention 1.0 over the 0.5 threshold given
    assert "duplicate_token      a0.h1 (2.00)" in stdout and "attention 0.5" in stdout
    assert json.loads(out.read_text())["members"]["backup_name_mover"] == ["a4.h0"]
    assert csv.read_text().splitlines()[0].startswith("head,layer,index,class")
