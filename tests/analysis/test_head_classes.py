"""IOI head classes by path patching: planted heads of every class are found, effects match hand computations."""

from __future__ import annotations

import json
import math

import pytest
import torch

from circuitfind.analysis import CLASSES, ClassThresholds, PathPatcher, head_classes
from circuitfind.analysis.head_classes import _problem as _problem_of
from circuitfind.analysis.head_classes import class_score
from circuitfind.engine.patchable import PatchableModel
from circuitfind.errors import ConfigError, TaskError
from circuitfind.metrics import make_metric
from circuitfind.problem import ablation_for, prepare_problem
from circuitfind.tasks import Task, ioi_positions
from tests.ioi_planted import PLANTED, planted_ioi_spec, planted_ioi_task

# The planted model's logit difference is 1 (name mover) - 0.3 (negative name mover) = 0.7 on every prompt, and 0
# on the ABC prompts: the span is 0.7 and every effect below is a hand computation divided by it.
SPAN = 0.7


@pytest.fixture(scope="module")
def planted():
    pm = PatchableModel(planted_ioi_spec())
    return pm, head_classes(pm, planted_ioi_task(), copy_sample=12)


def _at(hc, measure: str, head: str) -> float:
    layer, h = (int(x) for x in head[1:].split(".h"))
    return float(hc.measures[measure][layer, h])


@pytest.mark.parametrize(("cls", "head"), sorted(PLANTED.items()))
def test_each_planted_head_is_found_and_alone_in_its_class(planted, cls, head):
    _, hc = planted
    assert hc.members(cls) == [head], {c: hc.members(c) for c in CLASSES}


def test_zero_heads_get_no_class(planted):
    _, hc = planted
    assert {r["head"] for r in hc.rows() if r["class"] == ""} == {"a1.h1", "a2.h1", "a4.h1"}


def test_path_effects_match_the_hand_computation(planted):
    _, hc = planted
    assert hc.settings["span"] == pytest.approx(SPAN, abs=1e-5)
    # removing a3.h0 -> logits puts its ABC output (a third on each fresh name) there: the logit diff loses 1
    assert _at(hc, "direct", "a3.h0") == pytest.approx(1 / SPAN, rel=1e-3)
    assert _at(hc, "direct", "a3.h1") == pytest.approx(-0.3 / SPAN, rel=1e-3)
    # a4.h0 is silent in the clean run and copies IO (+1) once the name mover is removed
    assert _at(hc, "direct", "a4.h0") == pytest.approx(0.0, abs=1e-3)
    assert _at(hc, "backup", "a4.h0") == pytest.approx(1 / SPAN, rel=1e-3)
    # without S-inhibition in its query the name mover attends IO, S1, S2 evenly: 1/3 - 2/3; the negative name
    # mover (its query keeps S-inhibition) still gives -0.3: the logit diff goes from 0.7 to -1/3 - 0.3
    assert _at(hc, "via_name_mover_q", "a2.h0") == pytest.approx((SPAN + 1 / 3 + 0.3) / SPAN, rel=1e-3)
    # without duplicate (or induction) flag S-inhibition attends BOS: both movers attend evenly, -1/3 + 0.1
    for head in ("a0.h1", "a1.h0"):
        assert _at(hc, "via_s_inhibition_kv", head) == pytest.approx((SPAN + 1 / 3 - 0.1) / SPAN, rel=1e-3)
    assert _at(hc, "via_induction_kv", "a0.h0") == pytest.approx((SPAN + 1 / 3 - 0.1) / SPAN, rel=1e-3)
    # heads with no path into the receivers of a step are NaN, not 0
    assert math.isnan(_at(hc, "via_name_mover_q", "a3.h1")) and math.isnan(_at(hc, "via_induction_kv", "a1.h0"))


def test_attention_signatures(planted):
    _, hc = planted
    assert _at(hc, "attn_io", "a3.h0") == pytest.approx(1.0, abs=1e-3)
    assert _at(hc, "attn_s", "a2.h0") == pytest.approx(1.0, abs=1e-3)
    assert _at(hc, "attn_s2_s1", "a0.h1") == pytest.approx(1.0, abs=1e-3)
    assert _at(hc, "attn_s2_s1plus1", "a1.h0") == pytest.approx(1.0, abs=1e-3)
    assert _at(hc, "attn_prev", "a0.h0") == pytest.approx(1.0, abs=1e-3)
    assert _at(hc, "copying", "a3.h0") == 1.0 and _at(hc, "anti_copying", "a3.h1") == 1.0
    assert _at(hc, "copying", "a3.h1") == 0.0


def test_class_score_is_the_weakest_condition_over_its_threshold():
    m = {"direct": torch.tensor([[0.08, 0.5]]), "attn_io": torch.tensor([[0.9, 0.1]])}
    m["copying"] = torch.tensor([[0.6, 1.0]])
    th = ClassThresholds(effect=0.04, attention=0.2, copying=0.3)
    assert class_score("name_mover", m, th)[0].tolist() == pytest.approx([2.0, 0.5])
    neg = {**m, "anti_copying": m["copying"]}
    assert class_score("negative_name_mover", neg, th)[0].tolist() == pytest.approx([-2.0, -12.5])


def test_a_negative_name_mover_with_a_backup_effect_stays_a_negative_name_mover():
    from circuitfind.analysis.head_classes import _assign

    scores = {c: torch.zeros(1, 3) for c in CLASSES}
    scores["negative_name_mover"] = torch.tensor([[2.8, 0.0, 0.0]])
    scores["backup_name_mover"] = torch.tensor([[4.6, 4.6, 0.5]])
    scores["induction"] = torch.tensor([[0.0, 0.0, 1.0]])
    assert _assign(scores) == ("negative_name_mover", "backup_name_mover", "induction")


def test_stricter_thresholds_drop_classes(planted):
    pm, _ = planted
    hc = head_classes(pm, planted_ioi_task(), copy_sample=12, thresholds=ClassThresholds(effect=1.4))
    assert hc.members("name_mover") == ["a3.h0"] and hc.members("s_inhibition") == ["a2.h0"]  # 1.43, 1.9 pass
    assert hc.members("induction") == [] and hc.members("duplicate_token") == []  # 1.33 does not
    # with no induction head the previous-token step has no receivers: NaN, no class
    assert hc.members("previous_token") == [] and bool(hc.measures["via_induction_kv"].isnan().all())


def test_table_as_json_and_csv(planted):
    pm, hc = planted
    d = json.loads(json.dumps(hc.to_dict()))
    assert len(d["rows"]) == pm.graph.n_layers * pm.graph.n_heads
    assert d["members"]["name_mover"] == ["a3.h0"] and d["thresholds"]["effect"] == ClassThresholds().effect
    assert d["rows"][6]["head"] == "a3.h0" and d["rows"][6]["class"] == "name_mover"
    assert d["rows"][6]["via_name_mover_q"] is None  # NaN
    lines = hc.to_csv().splitlines()
    header = lines[0].split(",")
    assert len(lines) == 1 + len(d["rows"]) and header[:4] == ["head", "layer", "index", "class"]
    assert "score_backup_name_mover" in header
    assert lines[9].split(",")[3] == "backup_name_mover"


def test_ioi_positions_on_both_orders():
    t = planted_ioi_task(n=2)
    p = ioi_positions(t)
    assert p["IO"].tolist() == [1, 3] and p["S1"].tolist() == [3, 1]
    assert p["S2"].tolist() == [5, 5] and p["END"].tolist() == [6, 6]


def test_ioi_positions_reject_a_prompt_without_a_repeated_subject():
    ids = torch.tensor([[0, 5, 1, 6, 2, 7, 3]])
    t = Task("x", ids, ids, torch.ones_like(ids), torch.tensor([6]), torch.tensor([[5]]), torch.tensor([[6]]))
    with pytest.raises(TaskError, match="S 1 times"):
        ioi_positions(t)


def test_bad_threshold_and_a_model_that_does_not_do_ioi():
    with pytest.raises(ConfigError, match="positive"):
        ClassThresholds(attention=0)
    task = planted_ioi_task()
    same = Task(  # corrupted = clean: ablating everything changes nothing, there is no behaviour to explain
        "same", task.clean_ids, task.clean_ids, task.attention_mask, task.answer_pos, task.answers, task.wrong_answers
    )
    with pytest.raises(ConfigError, match="does not do IOI"):
        head_classes(PatchableModel(planted_ioi_spec()), same, copy_sample=12)


def test_path_patcher_matches_a_plain_masked_forward():
    pm = PatchableModel(planted_ioi_spec())
    task = planted_ioi_task()
    problem, metric = prepare_problem(pm, task, metric="logit_diff")
    g = pm.graph
    nm_q = [g.head_receiver(3, 0, "q"), g.head_receiver(3, 1, "q"), g.head_receiver(4, 0, "q")]  # three layers
    senders = [g.head_sender(0, 1), g.head_sender(2, 0), g.input_sender]
    fx = PathPatcher(problem).effects(g.full_mask(), senders, nm_q)
    abl = ablation_for(pm, task)
    for s in senders:
        mask = g.full_mask()
        mask[s, nm_q] = False
        plain = [
            float(metric(pm.forward(task.clean_ids, abl, m, positions=task.answer_pos))) for m in (g.full_mask(), mask)
        ]
        assert float(fx[s]) == pytest.approx(plain[0] - plain[1], abs=1e-5)
    assert math.isnan(float(fx[g.head_sender(1, 0)]))  # not asked for


@pytest.mark.slow
def test_gpt2_small_classes_match_the_ioi_paper():
    """On GPT-2 small (where its weights are in the local Hugging Face cache) the classes meet the paper's lists."""
    from circuitfind.errors import ModelLoadError
    from circuitfind.models import load_model
    from circuitfind.tasks import get_task
    from circuitfind.tasks.ground_truth import IOI_HEADS

    try:
        model, tok = load_model("gpt2", progress=False)
    except ModelLoadError as err:
        pytest.skip(f"GPT-2 small is not in the local Hugging Face cache ({err})")
    hc = head_classes(model, get_task("ioi", tok, n=40, seed=0), tokenizer=tok)

    def ours(cls: str) -> set[str]:
        return set(hc.members(cls))

    def paper(cls: str) -> set[str]:
        return {f"a{layer}.h{h}" for layer, h in IOI_HEADS[cls]}

    assert len(ours("name_mover") & paper("name mover")) >= 2, hc.members("name_mover")
    assert "a10.h7" in ours("negative_name_mover"), hc.members("negative_name_mover")
    assert len(ours("s_inhibition") & paper("s-inhibition")) >= 2, hc.members("s_inhibition")
    assert ours("backup_name_mover") & paper("backup name mover"), hc.members("backup_name_mover")
    found = ours("induction") | ours("duplicate_token")
    assert found & (paper("induction") | paper("duplicate token")), found


def test_ioi_positions_from_labels_agree_with_the_ids(tok):
    import dataclasses

    from circuitfind.tasks import get_task

    task = get_task("ioi", tok, n=12, seed=3)
    assert task.position_labels  # make_ioi labels its prompts
    from_labels = ioi_positions(task)
    from_ids = ioi_positions(dataclasses.replace(task, position_labels=()))
    for k in ("IO", "S1", "S2", "END"):
        assert from_labels[k].tolist() == from_ids[k].tolist(), k
    assert (from_labels["S1"] < from_labels["S2"]).all() and (from_labels["S2"] < from_labels["END"]).all()


def test_path_patcher_restarting_above_the_sender_matches_a_plain_forward_on_a_dense_model():
    from tests.models_tiny import tiny_gpt2
    from tests.toy_problems import natural_task

    pm = PatchableModel(tiny_gpt2(seed=1, init=0.3))  # random weights: every path carries some effect
    task = natural_task(pm)
    problem = _problem_of(pm, task, "resample")
    g = pm.graph
    # receivers in layers 1 and 2: senders of layer 0 restart at layer 1 with their layer-2 inputs corrected
    receivers = [g.head_receiver(1, 0, "q"), g.head_receiver(2, 1, "k"), g.head_receiver(2, 3, "v")]
    receivers.append(g.mlp_receiver(2))
    senders = [g.input_sender, g.head_sender(0, 2), g.mlp_sender(0), g.head_sender(1, 1)]
    fx = PathPatcher(problem).effects(g.full_mask(), senders, receivers)
    abl = ablation_for(pm, task)
    metric = make_metric("logit_diff", answers=task.answers, wrong_answers=task.wrong_answers)

    def value(m):
        kw = {"attention_mask": task.attention_mask, "positions": task.answer_pos}
        return float(metric(pm.forward(task.clean_ids, abl, m, **kw)))

    for s in senders:
        mask = g.full_mask()
        mask[s, receivers] = False
        expected = value(g.full_mask()) - value(mask)
        assert abs(expected) > 1e-4  # the path matters, so a wrong restart would show
        assert float(fx[s]) == pytest.approx(expected, abs=1e-5), g.sender_names[s]
