"""Names the docstring examples may use without building them, all tiny (pytest runs the examples with
``--doctest-modules``; see pyproject.toml).

``model`` (a 1-layer, 2-head GPT-2 with random weights), ``pm`` (its :class:`PatchableModel`), ``task`` (3 toy
prompt pairs with answers), ``problem`` (the task prepared for a method: resample ablation, logit difference),
``circuit`` (the top 5 EAP edges on that task) and ``tmp_path`` (a fresh folder for examples that write files).
An example that needs the real model or tokenizer stays marked ``# doctest: +SKIP``.
"""

import pytest
import torch


@pytest.fixture(scope="session")
def _tiny_doctest_objects() -> dict:
    from transformers import GPT2Config, GPT2LMHeadModel

    from circuitfind import discover
    from circuitfind.engine.patchable import PatchableModel
    from circuitfind.metrics import make_metric
    from circuitfind.problem import Problem
    from circuitfind.tasks import Task

    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    config = GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=20, n_positions=8, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config).eval()
    pm = PatchableModel(model)
    clean, corrupted = torch.randint(1, 20, (2, 3, 4), generator=gen)
    answers, wrong = torch.randint(1, 20, (2, 3, 1), generator=gen)
    task = Task("toy", clean, corrupted, torch.ones_like(clean), torch.full((3,), 3), answers, wrong)
    metric = make_metric("logit_diff", answers=answers, wrong_answers=wrong)
    ablated = pm.ablation("resample", corrupted)
    problem = Problem(pm, clean, task.attention_mask, task.answer_pos, ablated, metric.loss, separable=True)
    circuit = discover(pm, task, method="eap", n_edges=5, metric="logit_diff", progress=False)
    return {"model": model, "pm": pm, "task": task, "problem": problem, "circuit": circuit}


@pytest.fixture(autouse=True)
def _doctest_objects(request):
    if type(request.node).__name__ != "DoctestItem":  # only the docstring examples use them
        return
    torch.manual_seed(0)
    namespace = request.getfixturevalue("doctest_namespace")
    namespace.update(request.getfixturevalue("_tiny_doctest_objects"), tmp_path=request.getfixturevalue("tmp_path"))
