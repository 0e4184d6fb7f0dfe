"""Checkpoints: nothing is unpickled, the fingerprint is checked first and covers everything that sets the result."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from safetensors.torch import save_file

import circuitfind as cf
from circuitfind.algorithms import AcdcState
from circuitfind.errors import CheckpointError
from circuitfind.tasks import Task
from tests.models_tiny import VOCAB, tiny_gpt2, tiny_llama

N, T = 4, 6


def _task(seed: int = 0) -> Task:
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(1, VOCAB, (N, T), generator=g)
    corrupt = torch.randint(1, VOCAB, (N, T), generator=g)
    am = torch.ones(N, T, dtype=torch.long)
    answers = torch.randint(1, VOCAB, (N, 1), generator=g)
    wrong = torch.randint(1, VOCAB, (N, 1), generator=g)
    return Task("toy", clean, corrupt, am, am.sum(1) - 1, answers, wrong)


def _model(seed: int = 0):
    return tiny_gpt2(seed=seed, n_layer=2, n_head=2, n_embd=16, init=0.2)


MODEL = _model()


def _finished_run(tmp_path, model=MODEL, **kwargs):
    """Run discover to the end with a checkpoint file; the file then holds the final state (it is kept)."""
    ckpt = tmp_path / "run.ckpt"
    cf.discover(model, _task(), threshold=0.01, progress=False, checkpoint=ckpt, **kwargs)
    assert ckpt.exists()
    return ckpt


def _resume(ckpt, model=MODEL, task=None, **kwargs):
    task = task if task is not None else _task()
    return cf.discover(model, task, threshold=0.01, progress=False, checkpoint=ckpt, resume=True, **kwargs)


# --- no code runs from a checkpoint ----------------------------------------------------------------------------------
class _Payload:
    """Unpickling this object creates a marker file: the proof that a loader ran code from the checkpoint."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_planted_pickle_is_not_run_and_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "run.ckpt"
    torch.save({"fingerprint": "x", "state": _Payload(str(marker))}, ckpt)  # what an attacker would plant
    with pytest.raises(CheckpointError, match="pickle") as info:
        _resume(ckpt)
    assert not marker.exists(), "loading the checkpoint ran code from it"
    assert "delete it" in str(info.value)


def test_nothing_in_the_package_unpickles():
    from pathlib import Path

    package = Path(cf.__file__).parent
    offenders = [
        f"{path.relative_to(package)}:{i}"
        for path in package.rglob("*.py")
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if "torch.load(" in line or "import pickle" in line or "weights_only=False" in line
    ]
    assert offenders == []


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(lambda p: torch.save([1, 2, 3], p), id="a pickled list"),
        pytest.param(lambda p: p.write_bytes(b"\x00" * 5), id="a truncated file"),
        pytest.param(lambda p: p.write_text('{"fingerprint": "x"}'), id="JSON text"),
    ],
)
def test_a_foreign_file_is_a_checkpoint_error(tmp_path, content):
    ckpt = tmp_path / "run.ckpt"
    content(ckpt)
    with pytest.raises(CheckpointError, match="delete it|Delete it"):
        _resume(ckpt)


def _forge(ckpt, *, state=None, tensors=None):
    """Rewrite ``ckpt`` keeping its header's fingerprint (anyone can copy it) but with other contents."""
    from safetensors import safe_open

    with safe_open(str(ckpt), framework="pt") as f:
        meta = dict(f.metadata())
        body = {k: f.get_tensor(k) for k in f.keys()}
    if state is not None:
        meta["state"] = json.dumps(state(json.loads(meta["state"])))
    save_file(tensors(body) if tensors is not None else body, str(ckpt), metadata=meta)


@pytest.mark.parametrize(
    "change,expected",
    [
        (dict(state=lambda s: [1, 2, 3]), "expected its state to be a JSON object.*found list"),
        (dict(state=lambda s: {**s, "next_receiver": "3"}), "expected 'next_receiver' to be int, found '3'"),
        (dict(state=lambda s: {**s, "done": 1}), "expected 'done' to be bool, found 1"),
        (dict(state=lambda s: {k: v for k, v in s.items() if k != "current"}), "expected 'current'.*found None"),
        (dict(state=lambda s: {**s, "trace": {"a": 1}}), "expected 'trace' to be a list"),
        (dict(tensors=lambda b: {**b, "mask": b["mask"].float()}), r"expected tensors mask \(bool\).*found"),
        (dict(tensors=lambda b: {**b, "effects": b["effects"][:, :2].contiguous()}), r"both of shape \(\d+, \d+\)"),
        (dict(tensors=lambda b: {"mask": b["mask"]}), "expected tensors mask"),
    ],
)
def test_a_malformed_checkpoint_says_what_was_expected_and_found(tmp_path, change, expected):
    ckpt = _finished_run(tmp_path)
    _forge(ckpt, **change)
    with pytest.raises(CheckpointError, match=expected):
        _resume(ckpt)


def test_every_state_field_round_trips_exactly(tmp_path):
    from circuitfind.algorithms.checkpoint import _NUMBER_FIELDS, _TENSOR_FIELDS, load_state, save_state

    stored = {*_TENSOR_FIELDS, *_NUMBER_FIELDS, "trace"}
    assert stored == {f.name for f in dataclasses.fields(AcdcState)}, "a new AcdcState field must be checkpointed"
    g = torch.Generator().manual_seed(0)
    state = AcdcState(
        mask=torch.rand(5, 7, generator=g) > 0.5,
        effects=torch.where(torch.rand(5, 7, generator=g) > 0.3, torch.randn(5, 7, generator=g), math.nan),
        current=0.1 + 0.2,  # not exactly representable in decimal: a lossy writer shows here
        next_receiver=4,
        edges_tested=17,
        forward_passes=11,
        candidates_evaluated=23,
        elapsed_s=1 / 3,
        done=True,
        trace=[{"layer": 1, "receivers_done": 3, "loss": -2.5e-7, "edges_kept": 9, "edges_tested": 12}],
    )
    path = save_state(tmp_path / "c.safetensors", state, "fp")
    back = load_state(path, "fp", (5, 7))
    for f in dataclasses.fields(AcdcState):
        a, b = getattr(state, f.name), getattr(back, f.name)
        if isinstance(a, torch.Tensor):
            assert (
                a.dtype == b.dtype and torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())
            )
        else:
            assert type(a) is type(b) and a == b, f.name


def test_the_fingerprint_is_checked_before_any_tensor_is_read(tmp_path, monkeypatch):
    from safetensors import safe_open

    ckpt = _finished_run(tmp_path)
    reads = []
    real_get = safe_open.get_tensor

    def spy(self, name):
        reads.append(name)
        return real_get(self, name)

    monkeypatch.setattr(safe_open, "get_tensor", spy, raising=False)
    with pytest.raises(CheckpointError, match="different run"):
        _resume(ckpt, absolute=True)
    assert reads == []
    _resume(ckpt)  # the same run: now the tensors are read (the spy works)
    assert sorted(reads) == ["effects", "mask"]


# --- a resume cannot mix two runs ------------------------------------------------------------------------------------
def _edit(field: str):
    def edit(task: Task) -> Task:
        t = getattr(task, field).clone()
        t[0, -1] = t[0, -1] % (VOCAB - 1) + 1  # another valid token
        return dataclasses.replace(task, **{field: t})

    return edit


@pytest.mark.parametrize("field", ["corrupted_ids", "answers", "wrong_answers"])
def test_resume_with_other_prompts_or_answers_is_refused(tmp_path, field):
    metric = "kl" if field == "corrupted_ids" else "logit_diff"
    ckpt = _finished_run(tmp_path, metric=metric)
    with pytest.raises(CheckpointError, match="different run"):
        _resume(ckpt, task=_edit(field)(_task()), metric=metric)


@pytest.mark.parametrize("ablation", ["zero", "resample"])
def test_resume_with_another_model_of_the_same_shape_is_refused(tmp_path, ablation):
    ckpt = _finished_run(tmp_path, ablation=ablation)
    with pytest.raises(CheckpointError, match="different run"):
        _resume(ckpt, model=_model(seed=1), ablation=ablation)


def _custom_metric(kind: str):
    """Two metrics with the same name and qualified name; only their code differs."""
    if kind == "max":

        def score(logits):
            return -logits.max()

    else:

        def score(logits):
            return -logits.mean()

    return score


def test_resume_with_another_custom_metric_of_the_same_name_is_refused(tmp_path):
    ckpt = _finished_run(tmp_path, metric=_custom_metric("max"))
    with pytest.raises(CheckpointError, match="different run"):
        _resume(ckpt, metric=_custom_metric("mean"))
    _resume(ckpt, metric=_custom_metric("max"))


def test_resume_of_the_same_run_is_accepted(tmp_path):
    ckpt = _finished_run(tmp_path, ablation="zero")
    circuit = _resume(ckpt, model=_model(seed=0), ablation="zero")  # an identical copy of the model is the same run
    assert circuit.stats["edges_tested"] > 0


def test_fingerprint_is_a_hex_string_and_sees_buffers():
    from circuitfind.algorithms.checkpoint import fingerprint
    from circuitfind.engine.patchable import PatchableModel
    from circuitfind.problem import prepare_problem

    model = tiny_llama()  # rotary frequencies are a buffer, not a parameter
    pm = PatchableModel(model)
    problem, _ = prepare_problem(pm, _task(), ablation="zero")
    before = fingerprint({"threshold": 0.01}, _task(), problem, model)
    assert len(before) == 64 and int(before, 16) >= 0
    assert fingerprint({"threshold": 0.01}, _task(), problem, pm) == before  # the model or its patchable view
    with torch.no_grad():
        model.model.rotary_emb.inv_freq.mul_(1.5)
    assert fingerprint({"threshold": 0.01}, _task(), problem, model) != before


# --- header fields checked against the graph; the loss recomputed on resume (issue 19 item 7) -----------------
R = cf.PatchableModel(MODEL).graph.n_receivers


@pytest.mark.parametrize(
    "state,expected",
    [
        (lambda s: {**s, "next_receiver": R + 5}, rf"'next_receiver' to be a receiver position in 0 \.\. {R}.*{R + 5}"),
        (lambda s: {**s, "next_receiver": -1}, rf"'next_receiver' to be a receiver position in 0 \.\. {R}.*found -1"),
        (lambda s: {**s, "current": math.nan}, "'current' to be a finite loss.*found nan"),
        (lambda s: {**s, "current": -math.inf}, "'current' to be a finite loss.*found -inf"),
        (lambda s: {**s, "edges_tested": -2}, "'edges_tested' to be a count >= 0"),
    ],
)
def test_a_forged_header_with_the_right_fingerprint_is_refused(tmp_path, state, expected):
    ckpt = _finished_run(tmp_path)
    _forge(ckpt, state=state)
    with pytest.raises(CheckpointError, match=rf"malformed: expected {expected}.*Delete it"):
        _resume(ckpt)


@pytest.mark.parametrize("method", ["acdc", "acdc-plain"])
def test_resume_recomputes_the_loss_of_the_saved_circuit(tmp_path, monkeypatch, method):
    """A checkpoint claiming another finite ``current`` resumes to the uninterrupted circuit (old main: every edge
    after the boundary measured against the forged loss)."""
    import circuitfind.algorithms.checkpoint as ckpt_mod

    full = cf.discover(MODEL, _task(), threshold=0.01, method=method, progress=False)
    ckpt = tmp_path / "run.ckpt"
    monkeypatch.setattr(ckpt_mod, "CHECKPOINT_EVERY_S", 0.0)
    original, calls = ckpt_mod.Checkpointer.update, []

    def interrupting(self, state):
        original(self, state)
        calls.append(1)
        if len(calls) == R // 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(ckpt_mod.Checkpointer, "update", interrupting)
    with pytest.raises(KeyboardInterrupt):
        cf.discover(MODEL, _task(), threshold=0.01, method=method, progress=False, checkpoint=ckpt)
    monkeypatch.setattr(ckpt_mod.Checkpointer, "update", original)
    _forge(ckpt, state=lambda s: {**s, "current": s["current"] + 100.0})
    resumed = _resume(ckpt, method=method)
    assert torch.equal(resumed.mask, full.mask) and full.n_edges > 0
    assert torch.nan_to_num(resumed.scores - full.scores).abs().max() <= 1e-5
