"""The tracr tasks (tasks/tracr.py): one prompt per output position, every input paired with another, and the
compiled model's own outputs score 0 on the L2 metric."""

from __future__ import annotations

import pytest

from circuitfind.tasks.tracr import tracr_setup

SEQUENCES = {"reverse": None, "proportion": 16}  # reverse: all 27 inputs; proportion: a sample (speed)


@pytest.fixture(scope="module", params=sorted(SEQUENCES))
def setup(request):
    return tracr_setup(request.param, n_sequences=SEQUENCES[request.param], seed=0)


def test_task_layout(setup):
    task = setup.task
    n_pos = task.seq_len - 1
    assert len(task) % n_pos == 0 and task.answers.shape == (len(task), 0)
    assert task.answer_pos.tolist()[:n_pos] == list(range(1, n_pos + 1))  # one prompt per output position
    assert not bool((task.clean_ids == task.corrupted_ids).all(dim=1).any())  # every input paired with another
    full = setup.pm.forward(
        task.clean_ids, setup.pm.ablation("zero"), setup.pm.graph.full_mask(), positions=task.answer_pos
    )
    assert float(setup.metric(full)) == 0.0
