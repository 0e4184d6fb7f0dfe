"""The induction task (tasks/induction.py): a random sequence repeated, the answer the token after the repeat."""

from __future__ import annotations

from circuitfind.tasks import make_induction


def test_induction_prompts(tok):
    task = make_induction(tok, n=20, seed=3, seq_len=8)
    bos = 1
    for i in range(len(task)):
        ids = task.clean_ids[i, : int(task.lengths[i])].tolist()[bos:]
        bad = task.corrupted_ids[i, : int(task.lengths[i])].tolist()[bos:]
        seq, k = ids[:8], len(ids) - 8
        assert 2 <= k <= 7 and ids[8:] == seq[:k] and bad[8:] == seq[:k]
        assert len(set(seq)) == 8 and not set(bad[:8]) & set(seq)
        assert task.answers[i].tolist() == [seq[k]] and task.wrong_answers[i].tolist() == [bad[k]]
