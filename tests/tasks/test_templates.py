"""Per-position labels of templated prompts (tasks/templates.py): IOI's IO, S1, S2, END and greater-than's YY, on
the real tokenizer (no weights)."""

from __future__ import annotations

import pytest

from circuitfind.errors import TaskError
from circuitfind.tasks.templates import template_labels


def test_ioi_and_greater_than_label_their_positions(tok):
    from circuitfind.tasks import get_task

    ioi = get_task("ioi", tok, n=6, seed=0, template=0, order="ABBA")
    labels = template_labels(ioi)
    ids = ioi.clean_ids[0]
    assert labels[-1] == "END" and ids[labels.index("IO")] == ioi.answers[0, 0]
    assert ids[labels.index("S1")] == ids[labels.index("S2")] == ioi.wrong_answers[0, 0]
    assert labels.index("IO") < labels.index("S1") < labels.index("S2") < len(labels) - 1
    assert len(set(labels)) == len(labels)
    with pytest.raises(TaskError, match="template groups"):
        template_labels(get_task("ioi", tok, n=6, seed=0))
    baba = template_labels(get_task("ioi", tok, n=4, seed=1, template=0, order="BABA"))
    assert baba.index("S1") < baba.index("IO")
    gt = get_task("greater-than", tok, n=6, seed=0)
    labels = template_labels(gt)
    yy = labels.index("YY")
    assert bool((gt.clean_ids[:, yy] != gt.corrupted_ids[:, yy]).all()) and labels[-1] == "END"
    differ = (gt.clean_ids != gt.corrupted_ids).any(0).nonzero().flatten().tolist()
    assert all(labels[t].startswith("YY") for t in differ)
