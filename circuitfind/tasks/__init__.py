"""Task data: the :class:`Task` type, built-in tasks generated for any tokenizer, and JSON custom tasks.

Built-in tasks (each ``make_<name>(tokenizer, n, seed, n_train)``, deterministic given the seed):

* ``"ioi"``: indirect object identification, ABC corruption, logit difference;
* ``"greater-than"``: the year-span task, prob difference (adapted for per-digit tokenizers);
* ``"induction"``: repeated random token sequences, logit difference.

Ground-truth circuits (GPT-2 small's, tracr's) live in :mod:`circuitfind.tasks.ground_truth`; the tracr tasks,
which run the tracr model to bind their metric, in :mod:`circuitfind.tasks.tracr` (imported on demand).
"""

from __future__ import annotations

from circuitfind.tasks.base import TASK_METRICS, Task, check_task_fits, task_from_tensors
from circuitfind.tasks.builtin import BUILTIN, get_task
from circuitfind.tasks.greater_than import make_greater_than
from circuitfind.tasks.induction import make_induction
from circuitfind.tasks.ioi import ioi_positions, make_ioi
from circuitfind.tasks.jsonio import from_json, is_task_file, to_json
from circuitfind.tasks.resolve import resolve_task, split_task

__all__ = [
    "BUILTIN",
    "TASK_METRICS",
    "Task",
    "check_task_fits",
    "from_json",
    "get_task",
    "ioi_positions",
    "is_task_file",
    "make_greater_than",
    "make_induction",
    "make_ioi",
    "resolve_task",
    "split_task",
    "task_from_tensors",
    "to_json",
]
