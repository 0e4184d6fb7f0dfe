"""The built-in tasks on the real default model (SmolLM2-135M-Instruct): slow, run with -m slow.

A circuit of a behaviour the model does not have means little, so each built-in task must be one the default
model solves: its own metric (logit or probability difference) positive on most clean prompts, and clearly
higher on clean than on corrupted prompts (on which the answer is not recoverable).
"""

from __future__ import annotations

import pytest
import torch

from circuitfind.metrics import logit_diff, prob_diff
from circuitfind.models import load_model
from circuitfind.tasks import BUILTIN, Task, get_task

pytestmark = pytest.mark.slow

N_PROMPTS = 24
# measured with benchmarks/validate.py (32 prompts, seed 0): solved 100% / 100% / 94%
MIN_SOLVED = 0.8


@pytest.fixture(scope="module")
def smollm2():
    return load_model(progress=False)


def _per_prompt(model, task: Task, ids: torch.Tensor) -> torch.Tensor:
    """``(B,)`` the task's metric on each prompt, from the transformers model itself."""
    am = task.attention_mask
    with torch.no_grad():
        logits = model(ids, attention_mask=am, position_ids=(am.cumsum(-1) - 1).clamp(min=0)).logits
    at_answer = logits[torch.arange(len(task)), task.answer_pos]  # (B, V)
    fn = logit_diff if task.metric == "logit_diff" else prob_diff
    return torch.stack(
        [
            fn(at_answer[i : i + 1].unsqueeze(0), task.answers[i : i + 1], task.wrong_answers[i : i + 1])[0]
            for i in range(len(task))
        ]
    )


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_default_model_does_the_builtin_task(smollm2, name):
    model, tok = smollm2
    task = get_task(name, tok, n=N_PROMPTS, seed=0)
    assert task.metric == ("prob_diff" if name == "greater-than" else "logit_diff")
    clean = _per_prompt(model, task, task.clean_ids)
    corrupted = _per_prompt(model, task, task.corrupted_ids)
    solved = (clean > 0).float().mean().item()
    assert solved >= MIN_SOLVED, f"{name}: the default model gets {solved:.0%} of clean prompts right"
    gap = (clean.mean() - corrupted.mean()).item()
    scale = 0.3 if task.metric == "prob_diff" else 1.0  # probability vs logit units
    assert gap > scale, f"{name}: clean {clean.mean():.3f} vs corrupted {corrupted.mean():.3f}"
