"""Reliability, round 3 (issue 19, items 8-15): bad inputs that gave a wrong answer, a raw traceback or a
misleading message now get the right result or a clear error. Tiny models and fakes only (no real model)."""

from __future__ import annotations

import json
import os
import warnings

import pytest
import torch

from circuitfind.cli.main import main
from circuitfind.errors import TaskError
from circuitfind.tasks import Task, from_json
from tests.models_tiny import VOCAB, tiny_gpt2


class _CountingTokenizer:
    """One token per character, counting the texts it tokenises (no download)."""

    bos_token_id = None
    pad_token_id = 0

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, text, add_special_tokens=False):
        self.calls += 1
        return {"input_ids": [1 + ord(c) % (VOCAB - 1) for c in text]}

    def __len__(self) -> int:
        return VOCAB


def _item(i: int) -> dict:
    return {"clean": f"ab{i % 10}", "corrupted": f"cd{i % 10}", "answers": "e", "wrong_answers": "f"}


@pytest.fixture(scope="module")
def bare_model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("bare-gpt2")
    tiny_gpt2(n_layer=2, n_head=2, n_embd=16).save_pretrained(path)
    return path


def _cli(model_dir, task, out, *extra) -> int:
    argv = ["discover", "--model", str(model_dir), "--task", str(task), "--out", str(out), "--no-progress"]
    return main([*argv, "--threshold", "0.01", *extra])


# --- item 10: an answer equal to its wrong answer ----------------------------------------------------------------
def test_an_answer_equal_to_its_wrong_answer_is_refused_naming_the_item(tmp_path):
    tok = _CountingTokenizer()
    with pytest.raises(TaskError, match=r"pair 1: token id \d+ is both a correct and a wrong answer.*0 whatever"):
        Task.from_strings(tok, ["ab", "ab"], ["cd", "cd"], ["e", "e"], ["f", "e"])
    path = tmp_path / "same.json"
    path.write_text(json.dumps([_item(0), _item(1), {**_item(2), "wrong_answers": ["f", "e"]}]))
    with pytest.raises(TaskError, match=r"^same\.json: item 2: token id \d+ is both a correct and a wrong answer"):
        from_json(path, tok)
    ids = {"clean_ids": [1, 2], "corrupted_ids": [1, 3], "answer_ids": [5], "wrong_answer_ids": [5]}
    path.write_text(json.dumps([ids]))
    with pytest.raises(TaskError, match=r"^same\.json: item 0: token id 5 is both"):
        from_json(path, None)
    one = torch.tensor([[1, 2]])
    with pytest.raises(TaskError, match=r"prompt 0: token id 5 is both"):
        Task("t", one, one, torch.ones_like(one), torch.tensor([1]), torch.tensor([[5]]), torch.tensor([[5]]))
    # different answers still make a task, and the metric sees them
    assert Task.from_strings(tok, ["ab"], ["cd"], ["e"], ["f"]).wrong_answers.tolist() == [[1 + ord("f") % 60]]


# --- item 11: token ids outside int64 or the vocabulary ---------------------------------------------------------
@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("clean_ids", [1, 10**20], r"field 'clean_ids' holds token id 100000000000000000000 at position 1, outside"),
        ("answer_ids", [2**63], r"field 'answer_ids' holds token id 9223372036854775808 at position 0, outside"),
        ("corrupted_ids", [1, VOCAB], rf"field 'corrupted_ids' holds token id {VOCAB} .*vocabulary \({VOCAB} tokens"),
    ],
)
def test_token_ids_outside_int64_or_the_vocabulary_are_task_errors(tmp_path, field, value, message):
    item = {"clean_ids": [1, 2], "corrupted_ids": [1, 3], "answer_ids": [5], "wrong_answer_ids": [6], field: value}
    path = tmp_path / "ids.json"
    path.write_text(json.dumps([{"clean_ids": [1, 2], "corrupted_ids": [1, 3], "answer_ids": [5]}, item]))
    tokenizer = _CountingTokenizer() if "vocabulary" in message else None
    with pytest.raises(TaskError, match=rf"^ids\.json: item 1: {message}"):
        from_json(path, tokenizer)


def test_cli_with_a_huge_token_id_exits_with_a_message(bare_model_dir, tmp_path, capsys):
    path = tmp_path / "ids.json"
    path.write_text(json.dumps([{"clean_ids": [1, 10**20], "corrupted_ids": [1, 3], "answer_ids": [5]}]))
    assert _cli(bare_model_dir, path, tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert "ids.json: item 0: field 'clean_ids' holds token id" in err and "Traceback" not in err
    path.write_text(json.dumps([{"clean_ids": [1, 2], "corrupted_ids": [1, 3], "answer_ids": [5]}] * 2
                               + [{"clean_ids": [1, VOCAB], "corrupted_ids": [1, 3], "answer_ids": [5]}]))  # fmt: skip
    assert _cli(bare_model_dir, path, tmp_path / "run") == 2  # no tokenizer: the model's vocabulary is the limit
    err = capsys.readouterr().err
    assert f"task file {path}: prompt 2 holds token id {VOCAB} in clean_ids" in err and "Traceback" not in err


# --- item 15: directories, symlink loops, deep nesting, big files -------------------------------------------------
def test_a_directory_or_a_symlink_loop_as_task_file_says_what_it_is(bare_model_dir, tmp_path, capsys):
    folder = tmp_path / "tasks.json"
    folder.mkdir()
    loop = tmp_path / "loop.json"
    os.symlink(loop, loop)
    dangling = tmp_path / "dangling.jsonl"
    os.symlink(tmp_path / "gone.jsonl", dangling)
    cases = [(folder, "it is a directory, not a file"), (loop, "symbolic link loop"), (dangling, "link to a file")]
    for path, message in cases:
        with pytest.raises(TaskError, match=message):
            from_json(path, None)
        assert _cli(bare_model_dir, path, tmp_path / "run") == 2
        err = capsys.readouterr().err
        assert message in err and "does not exist;" not in err.replace("file that does not exist", ""), err
        assert "Traceback" not in err


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_json_nested_100000_deep_is_a_task_error(tmp_path, suffix):
    path = tmp_path / f"deep{suffix}"
    path.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(TaskError, match=r"nested too deeply"):
        from_json(path, None)
    with pytest.raises(TaskError, match=r"nested too deeply"):
        from_json(path, None, max_prompts=3)


def test_max_prompts_stops_reading_and_tokenising(tmp_path):
    items = [_item(i) for i in range(6)]
    as_list = tmp_path / "big.json"
    as_list.write_text("[" + ",\n".join(json.dumps(it) for it in items) + ",\n{broken json")
    lines = tmp_path / "big.jsonl"
    lines.write_bytes(b"\n".join(json.dumps(it).encode() for it in items) + b"\n\xff\xfe not json at all\n")
    for path in (as_list, lines):
        tok = _CountingTokenizer()
        task = from_json(path, tok, max_prompts=4)
        assert len(task) == 4 and task.prompts == tuple(it["clean"] for it in items[:4])
        assert tok.calls == 4 * 4  # clean, corrupted, answer, wrong answer of 4 prompts: nothing after them
    with pytest.raises(TaskError, match=r"big\.json: not valid JSON \(line 7"):
        from_json(as_list, _CountingTokenizer())  # without a limit the whole file is read, and it is broken
    with pytest.raises(TaskError, match=r"big\.jsonl: a task file must be UTF-8 text; found byte 0xff"):
        from_json(lines, _CountingTokenizer())
    with_options = tmp_path / "opts.json"
    with_options.write_text(json.dumps({"n_train": 5, "prompts": items}))
    assert from_json(with_options, _CountingTokenizer(), max_prompts=3).n_train == 3  # the split is cut with them
    assert from_json(with_options, _CountingTokenizer(), max_prompts=6).n_train == 5
    with pytest.raises(TaskError, match="max_prompts must be a positive integer or None; got"):
        from_json(lines, None, max_prompts=0)


def test_cli_reads_only_n_prompts_plus_held_out_of_a_task_file(bare_model_dir, tmp_path, capsys):
    from circuitfind.tasks import to_json

    tok = _CountingTokenizer()
    task = Task.from_strings(tok, [f"ab{i}" for i in range(5)], [f"cd{i}" for i in range(5)], ["e"] * 5, ["f"] * 5)
    ids = tmp_path / "ids.json"
    to_json(task, ids)
    lines = json.loads(ids.read_text())["prompts"]
    path = tmp_path / "ids.jsonl"
    path.write_text("\n".join(json.dumps(p) for p in lines) + "\n{this line is never read\n")
    # logit difference: on this near-uniform model KL's full-to-empty gap (5e-6) is below check_gap's noise floor
    extra = ("--n-prompts", "3", "--held-out", "2", "--metric", "logit_diff")
    assert _cli(bare_model_dir, path, tmp_path / "run", *extra) == 0
    out = capsys.readouterr().out
    assert "held-out faithfulness" in out and "on 2 prompts" in out


# --- item 12: binary sweep specs and huge grids -----------------------------------------------------------------
def test_a_binary_sweep_spec_is_a_spec_error(tmp_path, capsys):
    from circuitfind.sweeps import SpecError, load_spec

    path = tmp_path / "spec.json"
    path.write_bytes(b"SQLite format 3\x00\xff\xfe\x80\x81" + bytes(range(256)))
    with pytest.raises(SpecError, match=r"is not UTF-8 text \(byte 0xff at offset 16\)"):
        load_spec(path)
    assert main(["sweep", str(path), "--table"]) == 2
    err = capsys.readouterr().err
    assert "is not UTF-8 text" in err and "Traceback" not in err


def test_a_grid_of_a_million_cells_is_refused_with_its_count_before_expanding(tmp_path, capsys):
    from circuitfind.sweeps import SpecError, load_spec, parse_spec

    huge = {"out": str(tmp_path / "o"), "grid": {"model": "m", "task": "ioi", "seed": list(range(1000))}}
    huge["grid"]["n_prompts"] = list(range(1, 1001))
    with pytest.raises(SpecError, match=r"expand to 1,000,000 cells, more than max_cells = 10,000"):
        parse_spec(huge)
    grids = [{"model": "m", "task": "ioi", "seed": [0, 1, 2]}, {"model": "m", "task": "ioi", "seed": 7}]
    two_grids = {**huge, "grid": grids}
    with pytest.raises(SpecError, match=r"expand to 4 cells \(3 \+ 1 over 2 grids\), more than max_cells = 3"):
        parse_spec({**two_grids, "max_cells": 3})
    assert len(parse_spec({**two_grids, "max_cells": 4}).cells) == 4
    with pytest.raises(SpecError, match=r"'max_cells' must be a positive integer; got"):
        parse_spec({**two_grids, "max_cells": 0})
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({**two_grids, "max_cells": 3}))
    assert len(load_spec(path, max_cells=4).cells) == 4  # --max-cells overrides the spec's field
    assert main(["sweep", str(path), "--table", "--max-cells", "2"]) == 2
    err = capsys.readouterr().err
    assert "expand to 4 cells" in err and "--max-cells N" in err and "Traceback" not in err
    assert main(["sweep", str(path), "--table", "--max-cells", "4"]) == 0
    assert "no results yet" in capsys.readouterr().out


# --- item 13: read-only and locked results stores ---------------------------------------------------------------
def _a_store(tmp_path):
    from circuitfind.sweeps import ResultsStore

    path = tmp_path / "out" / "results.sqlite"
    with ResultsStore(path) as store:
        store.put({"cell_id": "c1", "status": "done", "spec": "{}"})
    return path


def test_a_read_only_results_store_says_it_is_read_only(tmp_path, monkeypatch, capsys):
    import sqlite3

    from circuitfind.errors import OutputError
    from circuitfind.sweeps import ResultsStore

    path = _a_store(tmp_path)
    real_connect = sqlite3.connect

    def read_only(database, **kwargs):  # what a read-only mount or file gives (root ignores file modes)
        return real_connect(f"file:{database}?mode=ro", uri=True, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", read_only)
    with pytest.raises(OutputError, match=r"is read-only .*attempt to write a readonly database.*chmod u\+w") as e:
        ResultsStore(path)
    assert "not a circuitfind results store" not in str(e.value)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"out": str(path.parent), "grid": {"model": "m", "task": "ioi"}}))
    assert main(["sweep", str(spec), "--table"]) == 2
    err = capsys.readouterr().err
    assert "is read-only" in err and "Traceback" not in err


def test_a_locked_results_store_says_who_may_hold_it(tmp_path):
    import sqlite3

    from circuitfind.errors import OutputError
    from circuitfind.sweeps import ResultsStore

    path = _a_store(tmp_path)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # an SQL client (or another sweep) in the middle of a write
    try:
        with pytest.raises(OutputError, match=r"is locked: another process holds a write transaction.*0\.2 s") as e:
            ResultsStore(path, busy_timeout=0.2)
        assert "not a circuitfind results store" not in str(e.value)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    with ResultsStore(path) as store:  # once released, the same store opens with its row
        assert store.finished_ids() == {"c1"}
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database at all, just text" * 100)
    with pytest.raises(OutputError, match=r"is not a circuitfind results store"):
        ResultsStore(junk)


# --- item 11: a NaN metric under exact names the edge and the prompt chunk ----------------------------------------
def _exact_case():
    from circuitfind.engine.patchable import PatchableModel

    pm = PatchableModel(tiny_gpt2(n_layer=2, n_head=2, n_embd=16))
    clean = torch.tensor([[1, 2, 3, 4]] * 4)
    corrupted = torch.tensor([[5, 6, 7, 8], [5, 6, 7, 9], [5, 6, 7, 10], [5, 6, 7, 13]])
    task = Task("t", clean, corrupted, torch.ones_like(clean), torch.full((4,), 3), torch.tensor([[11]] * 4),
                torch.tensor([[12]] * 4))  # fmt: skip
    return pm, task


def test_a_nan_metric_under_exact_names_the_edge_and_the_prompt_chunk():
    import circuitfind as cf
    from circuitfind.algorithms.exact import exact_plan
    from circuitfind.errors import MetricError

    pm, task = _exact_case()
    with torch.no_grad():
        full = pm.module(task.clean_ids).logits[3, -1].clone()

    def metric(logits):  # (B, V): NaN as soon as prompt 3's logits move away from the full model's
        return (logits[:, 11] - logits[:, 12]).mean() + torch.sqrt(1e-3 - (logits[3] - full).abs().max())

    first = exact_plan(pm.graph)[0]  # the first edge exact scoring removes: it moves every prompt's logits
    edge = pm.graph.edge(first.senders[0], first.receiver).name
    with pytest.raises(MetricError) as e:
        cf.discover(pm, task, method="exact", chunk_size=2, metric=metric, n_edges=3, progress=False)
    assert f"during exact scoring, removing edge {edge} (receiver logits): prompt chunk 2 of 2 (prompts 2..3)" in str(
        e.value
    )
    assert "its logits are finite but the metric is not" in str(e.value)
    with pytest.raises(MetricError, match=r"during exact node scoring, removing node (input|[am]\d+(\.h\d+)?):"):
        cf.discover(pm, task, method="exact", level="node", chunk_size=2, metric=metric, n_nodes=2, progress=False)


def test_nan_logits_under_exact_name_the_prompt(monkeypatch):
    import circuitfind as cf
    from circuitfind.algorithms.acdc import FastEvaluator
    from circuitfind.errors import MetricError

    pm, task = _exact_case()
    g = pm.graph
    real = FastEvaluator.chunk_logits

    def nan_on_prompt_3(self, masks):  # a model whose logits on prompt 3 go NaN when input->logits is removed
        out = real(self, masks)
        hit = ~masks[:, g.sender_index("input"), g.logits_receiver]
        out[1][hit, 1] = float("nan")
        return out

    monkeypatch.setattr(FastEvaluator, "chunk_logits", nan_on_prompt_3)
    with pytest.raises(MetricError, match=r"removing edge input->logits \(receiver logits\): prompt chunk 2 of 2 "
                       r"\(prompts 2\.\.3\) has NaN or infinite logits, on prompt\(s\) 3"):  # fmt: skip
        cf.discover(pm, task, method="exact", chunk_size=2, metric="logit_diff", n_edges=3, progress=False)


# --- item 9: the explorer of a circuit cut with --n-edges opens on that circuit -----------------------------------
@pytest.fixture(scope="module")
def n_edges_circuits():
    import circuitfind as cf
    from circuitfind.engine.patchable import PatchableModel
    from tests.toy_problems import natural_task

    pm = PatchableModel(tiny_gpt2(init=0.2))
    task = natural_task(pm)
    runs = {n: cf.discover(pm, task, method="eap", n_edges=n, metric="logit_diff", progress=False) for n in (3, 10, 40)}
    runs["threshold"] = cf.discover(pm, task, method="eap", threshold=0.05, metric="logit_diff", progress=False)
    return runs


def test_the_explorer_of_an_n_edges_cut_opens_on_the_circuit_as_cut(n_edges_circuits):
    from circuitfind.viewer import build_payload
    from tests.viewer_cases import ranked_names

    for n, circuit in n_edges_circuits.items():
        c = build_payload(circuit)["circuit"]
        # the explorer opens on the top k (dangling edges hidden): the cut's own k, which gives the circuit back
        assert c["k"] == circuit.stats["selected_before_pruning"] and (n == "threshold" or c["k"] == n)
        assert circuit.n_edges > 0 and sorted(ranked_names(circuit, c["k"], prune=True)) == sorted(circuit.edge_names)
    assert n_edges_circuits[10].n_edges < 10  # pruning dropped edges: opening on top-n_edges would show fewer


def test_the_explorer_page_of_an_n_edges_cut_draws_the_circuit(n_edges_circuits, tmp_path):
    from tests.viewer.test_viewer_browser import _browser_paths

    browser, chromedriver = _browser_paths()
    if browser is None or chromedriver is None or not _has_selenium():
        if os.environ.get("CI") == "true":  # CI installs them (scripts/setup.sh): missing there is a failure
            pytest.fail("Chromium, chromedriver or selenium is missing")
        pytest.skip("Chromium, chromedriver or selenium is missing (the payload test above covers the opening size)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    from circuitfind.viewer import to_html

    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        opts.add_argument(arg)
    opts.binary_location = browser
    driver = webdriver.Chrome(service=Service(chromedriver), options=opts)
    try:
        for n in (10, 40):
            circuit = n_edges_circuits[n]
            path = to_html(circuit, tmp_path / f"cut{n}.html")
            driver.get(path.resolve().as_uri())
            assert driver.execute_script("return document.body.dataset.ready") == "1"
            drawn = driver.execute_script("return window.circuitExplorer.drawnEdgeNames()")
            assert sorted(drawn) == sorted(circuit.edge_names) and len(drawn) == circuit.n_edges > 0
    finally:
        driver.quit()


def _has_selenium() -> bool:
    import importlib.util

    return importlib.util.find_spec("selenium") is not None


# --- item 14: a GGUF file as --model, and an empty model name -----------------------------------------------------
def _permute(w, n_head):  # llama.cpp's layout of q/k rows (its converter's permute; transformers undoes it)
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _write_tiny_gguf(path, arch: str = "llama"):
    """A float32 GGUF file of tests.models_tiny.tiny_llama, written with the `gguf` package (no tokenizer)."""
    import gguf

    from tests.models_tiny import tiny_llama

    model = tiny_llama(init=0.2)
    c = model.config
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny-llama")
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(c.vocab_size)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    names["lm_head.weight"] = "output.weight"
    parts = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}  # fmt: skip
    for i in range(c.num_hidden_layers):
        names.update({f"model.layers.{i}.{hf}.weight": f"blk.{i}.{gg}.weight" for hf, gg in parts.items()})
    state = model.state_dict()
    for hf, gg in names.items():
        t = state[hf].detach().float().numpy()
        if gg.endswith("attn_q.weight"):
            t = _permute(t, c.num_attention_heads)
        if gg.endswith("attn_k.weight"):
            t = _permute(t, c.num_key_value_heads)
        w.add_tensor(gg, t.copy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return model


def test_a_gguf_file_as_model_loads_through_the_gguf_reader(tmp_path, capsys):
    from circuitfind.models import load_model

    path = tmp_path / "tiny-llama.gguf"
    source = _write_tiny_gguf(path)
    model, tok = load_model(path, progress=False)
    ids = torch.tensor([[1, 5, 9, 2, 7]])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, source(ids).logits, atol=1e-5)
    assert tok is None and type(model).__name__ == "LlamaForCausalLM"
    assert main(["info", "--model", str(path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "LlamaForCausalLM" in out and str(path) in out


def test_a_file_that_is_not_a_model_or_an_unreadable_gguf_says_why(tmp_path, capsys):
    from circuitfind.errors import ModelLoadError
    from circuitfind.models import load_model

    weights = tmp_path / "pytorch_model.bin"
    weights.write_bytes(b"\x80\x02junk")
    with pytest.raises(ModelLoadError, match=r"is a file, not a model: pass the folder written by save_pretrained"):
        load_model(weights, progress=False)
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"PK\x03\x04 a zip file renamed")
    with pytest.raises(ModelLoadError, match=r"is named like a GGUF file but is not one: it starts with b'PK"):
        load_model(fake, progress=False)
    odd = tmp_path / "odd.gguf"
    _write_tiny_gguf(odd, arch="no-such-arch")
    with pytest.raises(ModelLoadError, match=r"could not read the GGUF model .*odd\.gguf.* GGUF reader .*no-such-arch"):
        load_model(odd, progress=False)
    for path, message in ((weights, "is a file, not a model"), (odd, "GGUF reader")):
        assert main(["info", "--model", str(path), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert message in err and "does not exist" not in err and "Traceback" not in err


def test_an_empty_model_name_is_refused(tmp_path, monkeypatch, capsys):
    from circuitfind.errors import ConfigError
    from circuitfind.models import load_model

    tiny_gpt2(n_layer=1, n_head=2, n_embd=8).save_pretrained(tmp_path)  # a model in the current folder
    monkeypatch.chdir(tmp_path)
    for name in ("", "  "):
        with pytest.raises(ConfigError, match=r"the model name is empty"):
            load_model(name, progress=False)
    assert main(["info", "--model", "", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "the model name is empty" in err and "leave --model out" in err


# --- item 8: a same-size but corrupted cached default model ---------------------------------------------------------
def test_a_corrupted_default_cache_of_the_same_size_is_rebuilt(monkeypatch, tmp_path):
    from circuitfind.models import loading
    from tests.models.test_loading import _tiny_gpt2, _tiny_tokenizer

    gguf = tmp_path / "fake.gguf"  # stands in for the package's GGUF file: never the real cache
    gguf.write_bytes(b"GGUF" + bytes(100))
    monkeypatch.setattr(loading, "default_gguf_path", lambda: gguf)
    conversions = []

    def convert(source, cached, progress):  # the slow dequantisation of the real model, replaced by a tiny one
        conversions.append(source)
        return _tiny_gpt2().eval(), _tiny_tokenizer()

    monkeypatch.setattr(loading, "_convert_gguf", convert)
    cache = tmp_path / "cache"
    first, _ = loading.load_model(cache_dir=cache, progress=False)
    (cached,) = cache.iterdir()
    weights = cached / "model.safetensors"

    def corrupt() -> None:  # NaN bytes over the end of the last tensor; the file keeps its size and header
        data = bytearray(weights.read_bytes())
        data[-64:] = b"\xff" * 64
        size = weights.stat().st_size
        weights.write_bytes(bytes(data))
        assert weights.stat().st_size == size

    ids = torch.tensor([[1, 2, 3]])
    for why, drop_record in ((r"model\.safetensors does not match its checksum", False), (r"holds NaN", True)):
        corrupt()
        if drop_record:  # a cache written before checksums were recorded: the finite-weights check finds it
            record = json.loads((cached / "circuitfind_cache.json").read_text())
            assert set(record.pop("weights_sha256")) == {"model.safetensors"}
            (cached / "circuitfind_cache.json").write_text(json.dumps(record))
        with pytest.warns(UserWarning, match=rf"ignoring the damaged model cache .*{why}.*converting again"):
            model, tok = loading.load_model(cache_dir=cache, progress=False)
        assert all(bool(torch.isfinite(p).all()) for p in model.parameters()) and tok is not None
        with torch.no_grad():
            assert torch.equal(model(ids).logits, first(ids).logits)
    assert len(conversions) == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loading.load_model(cache_dir=cache, progress=False)  # the rebuilt cache reads without converting
    assert len(conversions) == 3
