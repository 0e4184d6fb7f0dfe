"""Fixtures the explorer's tests share."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def n_edges_circuits():
    """EAP circuits of a tiny GPT-2 cut at 3, 10 and 40 edges (by ``n_edges``) and at a threshold."""
    import circuitfind as cf
    from circuitfind.engine.patchable import PatchableModel
    from tests.models_tiny import tiny_gpt2
    from tests.toy_problems import natural_task

    pm = PatchableModel(tiny_gpt2(init=0.2))
    task = natural_task(pm)
    runs = {n: cf.discover(pm, task, method="eap", n_edges=n, metric="logit_diff", progress=False) for n in (3, 10, 40)}
    runs["threshold"] = cf.discover(pm, task, method="eap", threshold=0.05, metric="logit_diff", progress=False)
    return runs
