"""Prompt chunks change nothing (every method, chunk of 1 or 2 against all prompts at once); peak memory readings;
the memory estimate against the tensors the code actually holds."""

from __future__ import annotations

import math

import pytest
import torch

import circuitfind as cf
from circuitfind.algorithms import (
    AcdcOptions,
    EapOptions,
    ExactOptions,
    run_acdc_fast,
    run_acdc_plain,
    run_eap_ig,
    run_eap_ig_mask,
    run_exact,
)
from circuitfind.engine.memory import PeakMemory, estimate, peak_memory, prompt_slices, reset_peak_memory
from circuitfind.errors import ConfigError
from circuitfind.problem import Faithfulness, prepare_problem
from circuitfind.tasks import Task
from tests.toy_problems import NAMES, PMS, N, natural_task

TASKS = {name: natural_task(PMS[name]) for name in NAMES}


def _problem(name: str, chunk: int | None, metric: str = "logit_diff", ablation: str = "resample"):
    return prepare_problem(PMS[name], TASKS[name], metric=metric, ablation=ablation, chunk_size=chunk)[0]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("ablation", ["resample", "mean"])
def test_chunked_ablation_and_clean_run_equal_the_whole_batch(name, ablation):
    whole, chunked = _problem(name, None, ablation=ablation), _problem(name, 2, ablation=ablation)
    assert chunked.prompt_chunks() == prompt_slices(N, 2)
    torch.testing.assert_close(chunked.ablated.outputs, whole.ablated.outputs, rtol=0, atol=1e-12)
    torch.testing.assert_close(chunked.ablated.bases, whole.ablated.bases, rtol=0, atol=1e-12)
    g = PMS[name].graph
    mask = torch.rand(g.n_senders, g.n_receivers, generator=torch.Generator().manual_seed(3)) > 0.5
    assert Faithfulness(chunked)(mask) == pytest.approx(Faithfulness(whole)(mask), abs=1e-10)


# KL is a loss that is not read prompt by prompt; chunks of 2 of 5 prompts leave a chunk of 1 at the end
@pytest.mark.parametrize(("name", "metric"), [("gpt2", "kl"), ("llama", "logit_diff"), ("neox", "logit_diff")])
def test_chunked_acdc_equals_unchunked(name, metric):
    opts = AcdcOptions(threshold=0.05, batch_size=3)
    whole = run_acdc_fast(_problem(name, None, metric), opts)
    assert 0 < int(whole.mask.sum()) < int(PMS[name].graph.edge_mask.sum())  # a real test: some kept, some not
    fast = run_acdc_fast(_problem(name, 2, metric), opts)
    assert torch.equal(fast.mask, whole.mask)
    torch.testing.assert_close(fast.effects, whole.effects, rtol=0, atol=1e-9, equal_nan=True)
    if name == "gpt2":
        plain = run_acdc_plain(_problem(name, 2, metric), AcdcOptions(threshold=0.05))
        assert torch.equal(plain.mask, whole.mask)


@pytest.mark.parametrize("name", NAMES)
def test_chunked_attribution_and_exact_scores_equal_unchunked(name):
    whole, chunked = _problem(name, None), _problem(name, 2)
    for run in (run_eap_ig, run_eap_ig_mask):
        a = run(whole, EapOptions(steps=3)).scores
        b = run(chunked, EapOptions(steps=3)).scores
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12)
    g = PMS[name].graph
    candidates = torch.zeros_like(g.edge_mask)
    candidates[:, -1] = True  # every edge into the logits, and the last layer's MLP
    candidates[:, g.mlp_receiver(g.n_layers - 1)] = True
    a = run_exact(whole, ExactOptions(batch_size=2, candidates=candidates)).scores
    b = run_exact(chunked, ExactOptions(batch_size=2, candidates=candidates)).scores
    torch.testing.assert_close(b, a, rtol=0, atol=1e-10, equal_nan=True)


def test_discover_and_faithfulness_take_chunk_size_and_record_the_peak():
    pm, task = PMS["llama"], TASKS["llama"]
    whole = cf.discover(pm, task, method="eap-ig", n_edges=20, metric="logit_diff", progress=False)
    chunked = cf.discover(pm, task, method="eap-ig", n_edges=20, metric="logit_diff", progress=False, chunk_size=1)
    assert torch.equal(chunked.mask, whole.mask)
    torch.testing.assert_close(chunked.scores, whole.scores, rtol=1e-6, atol=1e-9)
    peak = chunked.stats["peak_memory"]
    assert peak["kind"] == "rss" and peak["bytes"] > 0 and peak["device"] == "cpu"
    f_whole = cf.evaluate.faithfulness(pm, whole, task, metric="logit_diff")
    f_chunked = cf.evaluate.faithfulness(pm, whole, task, metric="logit_diff", chunk_size=2)
    assert f_chunked["faithfulness"] == pytest.approx(f_whole["faithfulness"], abs=1e-10)
    with pytest.raises(ConfigError, match="chunk_size"):
        cf.discover(pm, task, method="eap", metric="logit_diff", progress=False, chunk_size=0)


def test_peak_memory_sees_a_large_allocation_after_a_reset():
    import mmap

    size = 64 * 2**20
    reset_peak_memory()
    before = peak_memory()
    assert isinstance(before, PeakMemory) and before.kind == "rss" and before.bytes > 0
    block = mmap.mmap(-1, size)  # fresh pages: no allocator can serve them from memory already resident
    block.write(b"x" * size)
    during = peak_memory()
    block.close()
    assert during.bytes - before.bytes > 48 * 2**20
    assert peak_memory().bytes >= during.bytes - 2**20  # a peak does not fall until reset (the kernel counts lazily)
    if reset_peak_memory():  # Linux: the next reading starts from the current resident set
        assert peak_memory().bytes < during.bytes
    assert set(during.to_dict()) == {"bytes", "kind", "device", "mib"}


def test_resident_and_available_readings_follow_an_allocation_and_the_proc_format(tmp_path, monkeypatch):
    import mmap

    from circuitfind.engine import memory

    size = 64 * 2**20
    before = memory.resident_bytes()
    block = mmap.mmap(-1, size)
    block.write(b"x" * size)  # 64 MiB of fresh pages, resident now
    during = memory.resident_bytes()
    assert before is not None and during is not None and during - before > 48 * 2**20
    assert memory.lifetime_peak_rss() >= during - 2**20  # never reset: at least what is resident now
    block.close()
    # the parser, on a hand-written /proc file: kB to bytes, the exact field, None when absent
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n")
    monkeypatch.setattr(memory, "_STATUS", status)
    assert (memory.resident_bytes(), memory.peak_memory().bytes) == (1024 * 1024, 2048 * 1024)
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16 kB\nMemFree:         4 kB\nMemAvailable:    8 kB\n")
    monkeypatch.setattr(memory, "_MEMINFO", meminfo)
    assert memory.available_bytes() == 8 * 1024
    monkeypatch.setattr(memory, "_MEMINFO", tmp_path / "absent")
    assert memory.available_bytes() is None


def test_estimate_counts_the_tensors_the_code_holds():
    pm, task = PMS["gpt2"], TASKS["gpt2"]
    problem = _problem("gpt2", None)
    est = estimate(pm, N, task.seq_len, ablation="resample")
    held = sum(t.numel() * t.element_size() for t in (problem.ablated.outputs, problem.ablated.bases))
    assert est["ablation"] == held
    assert est["weights"] == sum(p.numel() * p.element_size() for p in pm.module.parameters())
    assert est["chunk_size"] == N  # the toy problem fits one pass
    assert estimate(pm, N, task.seq_len, ablation="zero")["ablation"] < held / (N * task.seq_len) * 1.01
    assert math.isclose(estimate(pm, N, task.seq_len, chunk_size=1)["forward_pass"] * N, est["forward_pass"])


@pytest.mark.parametrize("kind", ["mean", "zero", "resample"])
def test_estimate_sizes_each_ablation_given_as_enum_or_name_as_held(kind):
    """Issue 19 item 6: ``Ablation.MEAN`` (an enum, not the string) was sized as resample, N times too large."""
    from circuitfind.engine.ablations import Ablation

    pm, t = PMS["gpt2"], TASKS["gpt2"]
    full = torch.ones_like(t.attention_mask)  # equal lengths: the mean is taken per position
    task = Task("even", t.clean_ids, t.corrupted_ids, full, full.sum(1) - 1, t.answers, t.wrong_answers)
    problem = prepare_problem(pm, task, metric="logit_diff", ablation=kind)[0]
    held = sum(t.numel() * t.element_size() for t in (problem.ablated.outputs, problem.ablated.bases))
    g, D = pm.graph, pm.spec.d_model
    per = {"resample": N * task.seq_len, "mean": task.seq_len, "zero": 1}[kind]  # (B', T') of the held tensors
    assert held == (g.n_senders + 2 * g.n_layers + 1) * per * D * pm.dtype.itemsize
    for given in (Ablation(kind), kind, kind.upper()):
        assert estimate(pm, N, task.seq_len, ablation=given)["ablation"] == held, given
    with pytest.raises(ConfigError, match="unknown ablation 'average'"):
        estimate(pm, N, task.seq_len, ablation="average")
