"""The command line (cli/main.py): files written, resume after Ctrl-C, clean errors, `diff` and `heads --classes`.
Tiny GPT-2s with SmolLM2's tokenizer, saved as folders (what `--model DIR` reads)."""

from __future__ import annotations

import inspect
import json
import re
import runpy
import shutil
import sys

import pytest
import torch
from safetensors import safe_open

import circuitfind.algorithms.checkpoint as ckpt_mod
from circuitfind.algorithms import AcdcState
from circuitfind.circuit import Circuit
from circuitfind.cli.main import CHECKPOINT_NAME, build_parser, discover_options, main
from circuitfind.discovery import discover
from circuitfind.tasks import Task, to_json
from tests.cli_runs import discover_cli
from tests.models_tiny import VOCAB, tiny_gpt2
from tests.toy_tasks import ITEMS, CountingTokenizer, random_task
from tests.viewer_cases import embedded_payload

TINY = {"n_layer": 2, "n_head": 2, "n_embd": 16, "n_positions": 64, "initializer_range": 0.5}
IOI = "When {} and {} went to the {}, {} gave a drink to"
# (indirect object, subject, place): clean and ABC-corrupted prompts have equal token lengths
PAIRS = [("Mary", "John", "store"), ("Tom", "Sarah", "park"), ("Lisa", "David", "office")]


@pytest.fixture(scope="module")
def model_dir(tok, tmp_path_factory):
    """A random 2-layer GPT-2 over SmolLM2's vocabulary, saved with the tokenizer (what `--model DIR` reads)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    eos = tok.eos_token_id
    config = GPT2Config(vocab_size=len(tok), bos_token_id=eos, eos_token_id=eos, **TINY)
    path = tmp_path_factory.mktemp("tiny-gpt2")
    GPT2LMHeadModel(config).eval().save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _discover(model_dir, out, *extra: str) -> list[str]:
    args = ["discover", "--model", str(model_dir), "--task", "ioi", "--n-prompts", "4", "--threshold", "0.01"]
    return [*args, "--out", str(out), "--no-progress", *extra]


def _same_circuit(a: Circuit, b: Circuit) -> None:
    assert torch.equal(a.mask, b.mask)
    assert torch.equal(a.scores.isnan(), b.scores.isnan())
    assert torch.nan_to_num(a.scores - b.scores).abs().max() <= 1e-6


# --- discover: outputs ---------------------------------------------------------------------------------------------
def test_discover_writes_json_dot_svg_and_a_summary(model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_discover(model_dir, out)) == 0
    stdout = capsys.readouterr().out

    circuit = Circuit.load(out / "circuit.json")
    assert 0 < circuit.n_edges < circuit.graph.n_edges  # a non-trivial circuit: the test model is not degenerate
    assert circuit.model == str(model_dir)
    assert circuit.config["task"] == "ioi" and circuit.config["n_prompts"] == 4 and circuit.config["seed"] == 0
    assert circuit.summary() in stdout
    assert ("try a lower --threshold" in stdout) == (circuit.recovered < 0.5)
    assert "forward passes" in stdout and "edges tested" in stdout and "edges/s" in stdout
    assert str(out / "circuit.json") in stdout and str(out / "circuit.dot") in stdout
    assert not (out / CHECKPOINT_NAME).exists()

    pydot = pytest.importorskip("pydot")
    (graph,) = pydot.graph_from_dot_data((out / "circuit.dot").read_text())
    assert graph.get_edges()
    if shutil.which("dot"):
        assert (out / "circuit.svg").read_text().lstrip().startswith(("<?xml", "<svg"))
        assert str(out / "circuit.svg") in stdout


def test_svg_is_skipped_with_a_hint_without_graphviz(model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda *a, **k: None)
    out = tmp_path / "run"
    assert main(_discover(model_dir, out, "--threshold", "inf", "--resume")) == 0
    captured = capsys.readouterr()
    assert "no checkpoint" in captured.err  # --resume without a checkpoint starts from the beginning
    lines = [line for line in captured.out.splitlines() if "SVG skipped" in line]
    assert len(lines) == 1 and "install graphviz" in lines[0]
    # nothing kept recovers nothing: the summary says so and suggests a lower threshold
    assert "(recovers 0%)" in captured.out and "try a lower --threshold" in captured.out
    assert (out / "circuit.json").exists() and (out / "circuit.dot").exists() and not (out / "circuit.svg").exists()


def test_task_file_and_options_reach_discover(model_dir, tmp_path):
    items = [
        {
            "clean": IOI.format(io, subj, place, subj),
            "corrupted": IOI.format("Anna", "Paul", place, "Mike"),
            "answers": f" {io}",
            "wrong_answers": f" {subj}",
        }
        for io, subj, place in PAIRS
    ]
    task_file = tmp_path / "my-task.json"
    task_file.write_text(json.dumps(items))
    out = tmp_path / "run"
    extra = ["--metric", "logit_diff", "--ablation", "mean", "--sender-order", "reverse", "--absolute"]
    argv = _discover(model_dir, out, *extra, "--batch-size", "3", "--n-prompts", "2", "--method", "acdc-plain")
    argv[argv.index("ioi")] = str(task_file)
    assert main(argv) == 0
    config = Circuit.load(out / "circuit.json").config
    assert config["task"] == "my-task" and config["n_prompts"] == 2  # --n-prompts takes the first N of a file
    expected = {"metric": "logit_diff", "ablation": "mean", "sender_order": "reverse", "absolute": True}
    assert {k: config[k] for k in expected} == expected
    assert config["batch_size"] == 3 and config["method"] == "acdc-plain"


# --- discover: checkpoint, Ctrl-C and resume -----------------------------------------------------------------------
def test_interrupt_then_resume_gives_the_uninterrupted_circuit(model_dir, tmp_path, capsys, monkeypatch):
    assert main(_discover(model_dir, tmp_path / "full")) == 0
    full = Circuit.load(tmp_path / "full" / "circuit.json")

    out = tmp_path / "run"
    ckpt = out / CHECKPOINT_NAME
    original = ckpt_mod.Checkpointer.update
    calls = {"n": 0}

    def update_then_interrupt(self, state):  # Ctrl-C after the third finished receiver
        original(self, state)
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(ckpt_mod, "CHECKPOINT_EVERY_S", 0.0)
    monkeypatch.setattr(ckpt_mod.Checkpointer, "update", update_then_interrupt)
    capsys.readouterr()
    assert main(_discover(model_dir, out)) == 130
    err = capsys.readouterr().err
    assert f"interrupted: progress saved to {ckpt}; run the same command with --resume to continue" in err
    assert ckpt.exists() and not (out / "circuit.json").exists()
    with safe_open(str(ckpt), framework="pt") as f:
        assert json.loads(f.metadata()["state"])["next_receiver"] == 3
    monkeypatch.setattr(ckpt_mod.Checkpointer, "update", original)

    assert main(_discover(model_dir, out)) == 2  # never overwrite a checkpoint silently
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--resume" in err and "delete" in err
    assert ckpt.exists()

    assert main(_discover(model_dir, out, "--resume")) == 0
    _same_circuit(Circuit.load(out / "circuit.json"), full)
    assert not ckpt.exists()


def test_resume_with_other_options_is_refused(model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    state = AcdcState(mask=torch.ones(2, 3, dtype=torch.bool), effects=torch.zeros(2, 3), current=0.0)
    ckpt_mod.save_state(out / CHECKPOINT_NAME, state, "another-run")
    assert main(_discover(model_dir, out, "--resume")) == 2
    assert "different run" in capsys.readouterr().err


# --- errors --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "change,message",
    [
        ({"--threshold": "-0.1"}, "threshold"),
        ({"--threshold": "nan"}, "threshold"),
        ({"--task": "sorting"}, "unknown task"),
        ({"--task": "missing.json"}, "does not exist"),
        ({"--model": "./no/such/model"}, "does not exist"),
        ({"--metric": "accuracy"}, "invalid choice"),
    ],
)
def test_bad_input_exits_2_with_a_message_and_no_traceback(model_dir, tmp_path, capsys, change, message):
    argv = _discover(model_dir, tmp_path / "run")
    for flag, value in change.items():
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "error: " in err and message in err and "Traceback" not in err
    assert not (tmp_path / "run" / "circuit.json").exists()


def test_out_that_is_a_file_is_an_error(model_dir, tmp_path, capsys):
    (tmp_path / "run").write_text("")
    assert main(_discover(model_dir, tmp_path / "run")) == 2
    assert capsys.readouterr().err.startswith("error: ")


# --- info, parser, python -m -----------------------------------------------------------------------------------------
def test_info_prints_family_and_graph(model_dir, capsys):
    assert main(["info", "--model", str(model_dir), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "family: gpt2" in out and "2 layers x 2 heads" in out and "edges" in out


def test_parser_defaults_match_discover():
    """The arguments the command line always passes default to discover's own defaults; every method option
    defaults to not given, so the command line passes only the options the user gave."""
    args = build_parser().parse_args(["discover", "--task", "ioi", "--out", "x"])
    defaults = inspect.signature(discover).parameters
    shared = ("method", "metric", "ablation", "progress")
    assert {name: getattr(args, name) for name in shared} == {name: defaults[name].default for name in shared}
    assert args.model is None  # the offline default model, as load_model() chooses it
    assert discover_options(args) == {}
    flags = ["--method", "eap-ig", "--steps", "3", "--absolute", "--band", "0.8", "1.2", "--level", "node"]
    flags += ["--n-nodes", "4", "--select", "train", "--chunk-size", "2", "--sender-order", "reverse"]
    given = build_parser().parse_args(["discover", "--task", "ioi", "--out", "x", *flags])
    assert discover_options(given) == {
        "steps": 3, "absolute": True, "band": (0.8, 1.2), "level": "node", "n_nodes": 4, "select": "train",
        "chunk_size": 2, "sender_order": "reverse",
    }  # fmt: skip
    # edge pruning's gates are seeded by --seed (the prompts' seed); no other method takes a seed
    pruning = build_parser().parse_args(["discover", "--task", "ioi", "--out", "x", "--method", "edge-pruning"])
    assert discover_options(pruning) == {"seed": 0}


def test_a_flag_the_method_does_not_take_is_refused_only_when_given(model_dir, tmp_path, capsys):
    base = ["discover", "--model", str(model_dir), "--task", "ioi", "--n-prompts", "4", "--no-progress"]
    base += ["--metric", "logit_diff", "--method", "eap", "--n-edges", "6"]
    assert main([*base, "--out", str(tmp_path / "a")]) == 0
    capsys.readouterr()
    assert main([*base, "--sender-order", "reverse", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "'eap' does not support sender_order='reverse'" in err and "acdc" in err


def test_python_dash_m_runs_the_cli(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["circuitfind", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("circuitfind", run_name="__main__")
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "discover" in out and "info" in out


# --- discover: output folder you can trust (unwritable, full, shared, SIGTERM, permissions) -----------------------
def _fail_writes_under(monkeypatch, folder, err: int, call: str, names: tuple[str, ...]) -> None:
    """Make ``os.<call>`` fail with ``err`` on files in ``folder`` whose names start with one of ``names``, as a
    read-only or full disk would (the tests run as root, which chmod does not stop)."""
    import os

    real = getattr(os, call)

    def failing(path, *args, **kwargs):
        target = str(args[0] if call == "replace" else path)
        if target.startswith(str(folder)) and os.path.basename(target).lstrip(".").startswith(names):
            raise OSError(err, os.strerror(err), target)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, call, failing)


def test_an_unwritable_out_is_refused_before_the_run(model_dir, tmp_path, capsys, monkeypatch):
    import errno

    import circuitfind.discovery as disc

    out = tmp_path / "run"
    out.mkdir()
    _fail_writes_under(monkeypatch, out, errno.EROFS, "open", ("write-probe", "circuit"))
    runs = []
    monkeypatch.setattr(disc, "discover", lambda *a, **k: runs.append(1))
    assert main(_discover(model_dir, out)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(out) in err and "Read-only file system" in err
    assert runs == []  # refused before the model was even loaded


def test_an_out_under_a_file_is_refused(model_dir, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert main(_discover(model_dir, tmp_path / "file" / "run")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(tmp_path / "file" / "run") in err


def test_a_failed_write_at_the_end_keeps_the_finished_run_for_resume(model_dir, tmp_path, capsys, monkeypatch):
    import errno

    out = tmp_path / "run"
    ckpt = out / CHECKPOINT_NAME
    with monkeypatch.context() as m:
        _fail_writes_under(m, out, errno.ENOSPC, "replace", ("circuit",))
        assert main(_discover(model_dir, out)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "No space left on device" in err and "Traceback" not in err
    assert str(ckpt) in err and "--resume" in err
    assert ckpt.exists() and not (out / "circuit.json").exists()

    assert main(_discover(model_dir, out, "--resume")) == 0  # writes the result without recomputing it
    assert Circuit.load(out / "circuit.json").n_edges > 0 and not ckpt.exists()


def _hold_lock(folder):
    """Hold ``folder``'s lock as another run would: ``flock`` on ``folder/.lock``, holder written inside."""
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    f = (folder / ".lock").open("w")
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    f.write("pid 4242 on host elsewhere, started at 2026-12-01T10:00:00+00:00\n")
    f.flush()
    return f


def test_a_second_run_on_the_same_out_is_refused(model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    holder = _hold_lock(out)
    try:
        assert main(_discover(model_dir, out)) == 2
    finally:
        holder.close()
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "in use by another run" in err
    assert "pid 4242 on host elsewhere, started at 2026-12-01T10:00:00" in err
    assert not (out / "circuit.json").exists()

    (out / CHECKPOINT_NAME).write_text("")  # a failing run (leftover checkpoint) must free the lock too
    assert main(_discover(model_dir, out)) == 2
    _hold_lock(out).close()  # free again: would raise BlockingIOError otherwise


_SIGTERM_AFTER_3 = """
import sys, time
import circuitfind.algorithms.checkpoint as ck
from circuitfind.cli.main import main
ck.CHECKPOINT_EVERY_S = 0.0
update, calls = ck.Checkpointer.update, []
def slow_update(self, state):  # after the third finished receiver: tell the test, then wait for SIGTERM
    update(self, state)
    calls.append(1)
    if len(calls) == 3:
        open(sys.argv[1], "w").close()
        time.sleep(120)
ck.Checkpointer.update = slow_update
sys.exit(main(sys.argv[2:]))
"""


def test_sigterm_keeps_a_checkpoint_that_resume_continues(model_dir, tmp_path, capsys):
    import os
    import signal
    import subprocess
    import time
    from pathlib import Path

    assert main(_discover(model_dir, tmp_path / "full")) == 0
    full = Circuit.load(tmp_path / "full" / "circuit.json")
    out, ready = tmp_path / "run", tmp_path / "ready"
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-c", _SIGTERM_AFTER_3, str(ready), *_discover(model_dir, out)]
    proc = subprocess.Popen(argv, cwd=root, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), proc.stderr.read() if proc.poll() is not None else "the run never got going"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert f"terminated: progress saved to {out / CHECKPOINT_NAME}" in err
    assert (out / CHECKPOINT_NAME).exists() and not (out / "circuit.json").exists()

    capsys.readouterr()
    assert main(_discover(model_dir, out, "--resume")) == 0  # the lock died with the process
    _same_circuit(Circuit.load(out / "circuit.json"), full)


def test_every_file_written_follows_the_umask(model_dir, tmp_path, monkeypatch):
    import os
    import stat

    def mode(path):
        return stat.S_IMODE(path.stat().st_mode)

    old = os.umask(0o022)
    try:
        out = tmp_path / "run"
        assert main(_discover(model_dir, out)) == 0
        assert {p.name: mode(p) for p in out.glob("circuit.*")} == dict.fromkeys(
            [p.name for p in out.glob("circuit.*")], 0o644
        )
        assert {"circuit.json", "circuit.dot"} <= {p.name for p in out.glob("circuit.*")}

        calls = []
        original = ckpt_mod.Checkpointer.update

        def update_then_interrupt(self, state):
            original(self, state)
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt

        monkeypatch.setattr(ckpt_mod, "CHECKPOINT_EVERY_S", 0.0)
        monkeypatch.setattr(ckpt_mod.Checkpointer, "update", update_then_interrupt)
        assert main(_discover(model_dir, tmp_path / "stopped")) == 130
        assert mode(tmp_path / "stopped" / CHECKPOINT_NAME) == 0o644
    finally:
        os.umask(old)


def test_discover_edge_pruning_takes_lr_seed_and_warm_start(model_dir, tmp_path, capsys):
    base = ["discover", "--model", str(model_dir), "--task", "ioi", "--n-prompts", "4", "--no-progress"]
    extra = ["--method", "edge-pruning", "--n-edges", "8", "--steps", "6", "--lr", "0.2", "--warm-start"]
    assert main([*base, *extra, "--seed", "1", "--out", str(tmp_path / "a")]) == 0
    circuit = Circuit.load(tmp_path / "a" / "circuit.json")
    assert circuit.config["lr"] == 0.2 and circuit.config["warm_start"] is True and circuit.config["steps"] == 6
    assert circuit.n_edges <= 8
    assert main([*base, "--method", "eap", "--n-edges", "8", "--lr", "0.2", "--out", str(tmp_path / "b")]) == 2
    assert "edge-pruning" in capsys.readouterr().err


# --- a model folder saved without a tokenizer (bare_model_dir): token-id task files ----------------------------
def test_cli_runs_a_token_id_task_file_without_a_tokenizer(bare_model_dir, tmp_path, capsys):
    task_file = tmp_path / "ids.json"
    to_json(random_task(), task_file)
    assert discover_cli(bare_model_dir, task_file, tmp_path / "run") == 0, capsys.readouterr().err
    assert (tmp_path / "run" / "circuit.json").is_file()


def test_cli_without_a_tokenizer_says_how_to_pass_one(bare_model_dir, tmp_path, capsys):
    task_file = tmp_path / "strings.json"
    task_file.write_text(json.dumps(ITEMS))
    for task in ("ioi", task_file):
        assert discover_cli(bare_model_dir, task, tmp_path / "run") == 2
        err = capsys.readouterr().err
        assert "error: " in err and "--tokenizer" in err and "Traceback" not in err


def test_cli_tokenizer_option_is_used(bare_model_dir, tmp_path, monkeypatch):
    seen = {}

    def fake_load(name, **kwargs):
        seen.update(kwargs)
        return tiny_gpt2(), None

    monkeypatch.setattr("circuitfind.models.load_model", fake_load)
    task_file = tmp_path / "ids.json"
    to_json(random_task(), task_file)
    assert discover_cli(bare_model_dir, task_file, tmp_path / "run", "--tokenizer", "some/tokenizer") == 0
    assert seen["tokenizer"] == "some/tokenizer"


def test_cli_with_a_huge_token_id_exits_with_a_message(bare_model_dir, tmp_path, capsys):
    """Issue 19, item 11: a token id outside int64 or the model's vocabulary is a message, not a traceback."""
    path = tmp_path / "ids.json"
    path.write_text(json.dumps([{"clean_ids": [1, 10**20], "corrupted_ids": [1, 3], "answer_ids": [5]}]))
    assert discover_cli(bare_model_dir, path, tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert "ids.json: item 0: field 'clean_ids' holds token id" in err and "Traceback" not in err
    path.write_text(json.dumps([{"clean_ids": [1, 2], "corrupted_ids": [1, 3], "answer_ids": [5]}] * 2
                               + [{"clean_ids": [1, VOCAB], "corrupted_ids": [1, 3], "answer_ids": [5]}]))  # fmt: skip
    assert discover_cli(bare_model_dir, path, tmp_path / "run") == 2  # no tokenizer: the vocabulary is the limit
    err = capsys.readouterr().err
    assert f"task file {path}: prompt 2 holds token id {VOCAB} in clean_ids" in err and "Traceback" not in err


def test_cli_reads_only_n_prompts_plus_held_out_of_a_task_file(bare_model_dir, tmp_path, capsys):
    """Issue 19, item 15: ``--n-prompts`` + ``--held-out`` prompts are read, and nothing after them."""
    tok = CountingTokenizer()
    task = Task.from_strings(tok, [f"ab{i}" for i in range(5)], [f"cd{i}" for i in range(5)], ["e"] * 5, ["f"] * 5)
    ids = tmp_path / "ids.json"
    to_json(task, ids)
    lines = json.loads(ids.read_text())["prompts"]
    path = tmp_path / "ids.jsonl"
    path.write_text("\n".join(json.dumps(p) for p in lines) + "\n{this line is never read\n")
    # logit difference: on this near-uniform model KL's full-to-empty gap (5e-6) is below check_gap's noise floor
    extra = ("--n-prompts", "3", "--held-out", "2", "--metric", "logit_diff")
    assert discover_cli(bare_model_dir, path, tmp_path / "run", *extra) == 0
    out = capsys.readouterr().out
    assert "held-out faithfulness" in out and "on 2 prompts" in out


# --- `circuitfind diff` and `circuitfind heads --classes` ---------------------------------------------------------
def _save_gpt2(tok, path, n_layer: int, zero_head: tuple[int, int] | None = None):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    eos = tok.eos_token_id
    config = GPT2Config(vocab_size=len(tok), bos_token_id=eos, eos_token_id=eos, **{**TINY, "n_layer": n_layer})
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
        "a": _save_gpt2(tok, root / "a", 2),
        "b": _save_gpt2(tok, root / "b", 2, zero_head=(1, 1)),
        "deep": _save_gpt2(tok, root / "deep", 3),
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


# --- the explorer from the command line (discover --html, view, heads), a GPT-2 of HF's default init ----------
@pytest.fixture(scope="module")
def view_dir(tok, tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    eos = tok.eos_token_id
    config = GPT2Config(vocab_size=len(tok), bos_token_id=eos, eos_token_id=eos, n_layer=2, n_head=2, n_embd=16)
    path = tmp_path_factory.mktemp("tiny-gpt2-viewer")
    GPT2LMHeadModel(config).eval().save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_cli_discover_html_then_view(view_dir, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["discover", "--model", str(view_dir), "--task", "ioi", "--n-prompts", "3", "--held-out", "0"]
    assert main([*args, "--method", "eap", "--n-edges", "20", "--out", str(out), "--no-progress", "--html"]) == 0
    html_path = out / "circuit.html"
    assert str(html_path) in capsys.readouterr().out
    payload = embedded_payload(html_path.read_text())
    assert len(payload["task"]["prompts"]) == 3
    assert any(" and " in p["clean"] for p in payload["task"]["prompts"])  # IOI text, tokens decoded
    assert "roles" in payload and "direct" in payload

    assert main(["view", str(out / "circuit.json"), "--model", str(view_dir), "--out", str(tmp_path / "v.html")]) == 0
    viewed = embedded_payload((tmp_path / "v.html").read_text())
    assert viewed["edges"] == payload["edges"] and viewed["task"] == payload["task"]
    assert main(["view", str(out / "circuit.json"), "--no-model"]) == 0
    assert "wrote " + str(out / "circuit.html") in capsys.readouterr().out


def test_cli_heads_prints_top_heads_per_role(view_dir, tmp_path, capsys):
    js = tmp_path / "heads.json"
    argv = ["heads", "--model", str(view_dir), "--task", "ioi", "--n-prompts", "3", "--top", "2", "--json", str(js)]
    assert main([*argv, "--no-progress"]) == 0
    out = capsys.readouterr().out
    for column in ("previous_token", "duplicate_token", "induction", "copying", "direct_effect"):
        assert re.search(rf"^{column}\s+a\d\.h\d", out, re.M), out
    table = json.loads(js.read_text())
    assert len(table["rows"]) == 4 and table["rows"][0]["head"] == "a0.h0"


def test_reproduce_subcommand(tmp_path, capsys):
    argv = ["reproduce", "tracr-proportion", "--thresholds", "0.01", "--n-prompts", "4", "--out-dir", str(tmp_path)]
    assert main([*argv, "--no-progress"]) == 0
    assert "zero: AUC 1.000 vs ground_truth_acdc" in capsys.readouterr().out
    assert main(["reproduce", "ioi", "--model", "tracr-reverse"]) == 2  # a tracr model runs its own task


# --- --dtype and --device --------------------------------------------------------------------------------------
def test_cli_takes_dtype_and_device():
    args = build_parser().parse_args(["info", "--dtype", "bfloat16", "--device", "cpu"])
    assert (args.dtype, args.device) == ("bfloat16", "cpu")
    assert build_parser().parse_args(["info"]).dtype is None


def test_cli_discovers_in_bfloat16_in_chunks_and_reports_the_peak(tok, tmp_path, capsys):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    eos = tok.eos_token_id
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        bos_token_id=eos,
        eos_token_id=eos,
        initializer_range=0.5,
    )
    model_dir = tmp_path / "tiny-llama"
    LlamaForCausalLM(cfg).eval().save_pretrained(model_dir)  # saved in float32
    tok.save_pretrained(model_dir)
    out = tmp_path / "run"
    args = ["discover", "--model", str(model_dir), "--task", "ioi", "--n-prompts", "4", "--held-out", "0"]
    args += ["--method", "eap-ig", "--n-edges", "10", "--metric", "logit_diff", "--dtype", "bfloat16"]
    assert main([*args, "--chunk-size", "3", "--out", str(out), "--no-progress"]) == 0
    assert "peak memory" in capsys.readouterr().out
    circuit = Circuit.load(out / "circuit.json")
    assert 0 < circuit.n_edges <= 10
    assert circuit.stats["peak_memory"]["kind"] == "rss" and circuit.stats["peak_memory"]["bytes"] > 0
    assert (circuit.stats["dtype"], circuit.stats["device"]) == ("bfloat16", "cpu")
