"""The patched forward on the real default model (SmolLM2-135M-Instruct): slow, run with -m slow."""

from __future__ import annotations

import pytest
import torch

from circuitfind.engine.patchable import PatchableModel
from circuitfind.models import load_model
from circuitfind.tasks import get_task

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    return load_model(progress=False)


def test_all_edges_kept_and_none_kept_on_smollm2(smollm2):
    model, tok = smollm2
    task = get_task("ioi", tok, n=6, seed=0)
    pm = PatchableModel(model)
    am = task.attention_mask
    pos_ids = (am.cumsum(-1) - 1).clamp(min=0)
    real = am.bool()
    with torch.no_grad():
        abl = pm.ablation("resample", task.corrupted_ids, am)
        kept = pm.forward(task.clean_ids, abl, pm.graph.full_mask(), attention_mask=am)
        clean = model(task.clean_ids, attention_mask=am, position_ids=pos_ids).logits
        none = pm.forward(task.clean_ids, abl, torch.zeros_like(pm.graph.full_mask()), attention_mask=am)
        corrupted = model(task.corrupted_ids, attention_mask=am, position_ids=pos_ids).logits
    assert pm.graph.n_edges == 123_211
    assert (kept - clean)[real].abs().max() <= 1e-4
    assert (none - corrupted)[real].abs().max() <= 1e-4
