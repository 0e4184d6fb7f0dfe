"""Dtypes and devices: load_model's dtype/device arguments and their errors, and bfloat16 results against float32
within the tolerances the README states ("Precision and devices")."""

from __future__ import annotations

import copy

import pytest
import torch

from circuitfind.algorithms import EapOptions, run_eap_ig
from circuitfind.algorithms.base import Faithfulness
from circuitfind.cli.main import build_parser
from circuitfind.engine.patchable import PatchableModel
from circuitfind.errors import ConfigError
from circuitfind.models.loading import DTYPES, load_model, parse_dtype
from circuitfind.problem import prepare_problem
from tests.families_tiny import NEW_FAMILIES
from tests.models_tiny import FAMILIES, randomize_biases
from tests.toy_problems import natural_task

# The stated tolerances of bfloat16 against float32 (README, "Precision and devices").
LOGIT_REL = 0.03  # max |logit error| / max |logit|, all edges kept
HF_FACTOR = 4  # ... and at most this times transformers' own forward's error in that dtype
LOSS_REL = 0.01  # |loss error| / (|loss(full)| + |loss(empty)|)
FAITH_ABS = 0.02  # faithfulness of a circuit, when the full-to-empty gap is not tiny
SPEARMAN = 0.98  # rank correlation of EAP-IG scores over all edges
TOP_OVERLAP = 0.85  # shared fraction of the top 5% of edges by EAP-IG


def _pair(name: str, dtype: torch.dtype = torch.bfloat16) -> tuple[torch.nn.Module, torch.nn.Module]:
    model = FAMILIES[name](init=0.2)  # logits of a few units, like a trained model's
    randomize_biases(model)
    return model, load_model(copy.deepcopy(model), dtype=dtype)[0]


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ranks = torch.stack([a.argsort().argsort(), b.argsort().argsort()]).double()
    return float(torch.corrcoef(ranks)[0, 1])


@pytest.mark.parametrize("name", sorted(FAMILIES))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_all_kept_logits_in_half_precision_match_float32(name, dtype):
    m32, m16 = _pair(name, dtype)
    pm = PatchableModel(m16)
    assert pm.dtype == dtype
    task = natural_task(PatchableModel(m32))
    with torch.no_grad():
        ref = m32(task.clean_ids, attention_mask=task.attention_mask).logits
        hf16 = m16(task.clean_ids, attention_mask=task.attention_mask).logits.float()
        abl = pm.ablation("resample", task.corrupted_ids, task.attention_mask)
        ours = pm.forward(task.clean_ids, abl, pm.graph.full_mask(), attention_mask=task.attention_mask)
    assert ours.dtype == dtype
    real = task.attention_mask.bool()
    err = (ours.float() - ref)[real].abs().max()
    assert err <= LOGIT_REL * ref[real].abs().max()
    # of the order of transformers' own forward in that dtype: the rounding is the dtype's; the patched forward
    # rounds each head's output before summing them (one more rounding per head than a fused o_proj)
    assert err <= HF_FACTOR * (hf16 - ref)[real].abs().max() + 1e-3


MOE = {"mixtral", "qwen2_moe", "qwen3_moe", "olmoe"}
ROUTING_FLIPS = 0.05  # MoE: positions whose near-tied top-k experts may route differently in bfloat16


@pytest.mark.parametrize("name", sorted(NEW_FAMILIES))
def test_every_family_in_bfloat16_tracks_transformers_own_rounding(name):
    m32 = NEW_FAMILIES[name]()
    m16 = load_model(copy.deepcopy(m32), dtype="bfloat16")[0]
    pm = PatchableModel(m16)
    task = natural_task(PatchableModel(m32))
    with torch.no_grad():
        ref = m32(task.clean_ids, attention_mask=task.attention_mask).logits
        hf16 = m16(task.clean_ids, attention_mask=task.attention_mask).logits.float()
        abl = pm.ablation("resample", task.corrupted_ids, task.attention_mask)
        ours = pm.forward(task.clean_ids, abl, pm.graph.full_mask(), attention_mask=task.attention_mask).float()
    real = task.attention_mask.bool()
    per_position = (ours - ref).abs().amax(-1)[real]  # (positions,)
    within = per_position <= HF_FACTOR * (hf16 - ref)[real].abs().max() + 1e-3
    # a mixture of experts routes each token to its top-k experts: where two are near-tied, bfloat16 rounding may
    # pick the other one (one of 38 positions of the tiny OLMoE), a jump no tolerance on the rounding covers
    assert float(within.float().mean()) >= (1 - ROUTING_FLIPS if name in MOE else 1.0)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_bfloat16_metric_faithfulness_and_eap_ig_match_float32(name):
    m32, m16 = _pair(name)
    pm32, pm16 = PatchableModel(m32), PatchableModel(m16)
    task = natural_task(pm32)
    p32 = prepare_problem(pm32, task, metric="logit_diff")[0]
    p16 = prepare_problem(pm16, task, metric="logit_diff")[0]
    f32, f16 = Faithfulness(p32), Faithfulness(p16)
    scale = abs(f32.loss_full) + abs(f32.loss_empty)
    assert abs(f16.loss_full - f32.loss_full) <= LOSS_REL * scale
    assert abs(f16.loss_empty - f32.loss_empty) <= LOSS_REL * scale
    g = pm32.graph
    half = torch.rand(g.n_senders, g.n_receivers, generator=torch.Generator().manual_seed(0)) > 0.5
    assert abs(f16(half) - f32(half)) <= FAITH_ABS

    s32 = run_eap_ig(p32, EapOptions(steps=5)).scores[g.edge_mask]
    s16 = run_eap_ig(p16, EapOptions(steps=5)).scores[g.edge_mask]
    assert s16.dtype == torch.float64  # scores are accumulated wide whatever the model's dtype
    assert _spearman(s32, s16) >= SPEARMAN
    k = len(s32) // 20
    shared = set(s32.topk(k).indices.tolist()) & set(s16.topk(k).indices.tolist())
    assert len(shared) >= TOP_OVERLAP * k


# --- load_model's dtype and device ------------------------------------------------------------------------------
def test_dtype_names_and_objects():
    assert parse_dtype("bfloat16") is parse_dtype("bf16") is parse_dtype("torch.bfloat16") is torch.bfloat16
    assert parse_dtype(" Float16 ") is torch.float16 and parse_dtype("fp32") is torch.float32
    assert parse_dtype(torch.float64) is torch.float64 and parse_dtype(None) is None
    assert set(DTYPES.values()) == {torch.float32, torch.bfloat16, torch.float16}
    model = FAMILIES["llama"]()
    for name, dtype in (("bfloat16", torch.bfloat16), ("float16", torch.float16), ("float32", torch.float32)):
        loaded = load_model(model, dtype=name)[0]
        assert {p.dtype for p in loaded.parameters()} == {dtype}


def test_saved_folder_is_read_in_the_asked_dtype(tmp_path):
    FAMILIES["gpt2"]().save_pretrained(tmp_path)
    model, _ = load_model(tmp_path, dtype="bfloat16", progress=False)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert next(model.parameters()).device.type == "cpu"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dtype": "float8"}, "unknown dtype 'float8'.*bfloat16"),
        ({"dtype": torch.int32}, "floating torch.dtype"),
        ({"device": "tpu:0:1"}, "unknown device"),
    ],
)
def test_impossible_dtype_or_device_is_a_clear_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        load_model(FAMILIES["gpt2"](), **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_cuda_without_cuda_says_so():
    with pytest.raises(ConfigError, match="CUDA is not available here.*device='cpu'"):
        load_model(FAMILIES["gpt2"](), device="cuda", dtype="bfloat16")


def test_an_unsupported_dtype_on_the_device_fails_at_load(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("\"addmm_impl_cpu_\" not implemented for 'Half'")

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", broken)
    with pytest.raises(ConfigError, match="float16 is not usable on device cpu.*float32"):
        load_model(FAMILIES["gpt2"](), dtype="float16")


def test_cli_takes_dtype_and_device():
    args = build_parser().parse_args(["info", "--dtype", "bfloat16", "--device", "cpu"])
    assert (args.dtype, args.device) == ("bfloat16", "cpu")
    assert build_parser().parse_args(["info"]).dtype is None


def test_cli_discovers_in_bfloat16_in_chunks_and_reports_the_peak(tok, tmp_path, capsys):
    from transformers import LlamaConfig, LlamaForCausalLM

    from circuitfind.circuit import Circuit
    from circuitfind.cli.main import main

    torch.manual_seed(0)
    eos = tok.eos_token_id
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        bos_token_id=eos,
        eos_token_id=eos,
        initializer_range=0.5,
    )
    model_dir = tmp_path / "tiny-llama"
    LlamaForCausalLM(cfg).eval().save_pretrained(model_dir)  # saved in float32
    tok.save_pretrained(model_dir)
    out = tmp_path / "run"
    args = ["discover", "--model", str(model_dir), "--task", "ioi", "--n-prompts", "4", "--held-out", "0"]
    args += ["--method", "eap-ig", "--n-edges", "10", "--metric", "logit_diff", "--dtype", "bfloat16"]
    assert main([*args, "--chunk-size", "3", "--out", str(out), "--no-progress"]) == 0
    assert "peak memory" in capsys.readouterr().out
    circuit = Circuit.load(out / "circuit.json")
    assert 0 < circuit.n_edges <= 10
    assert circuit.stats["peak_memory"]["kind"] == "rss" and circuit.stats["peak_memory"]["bytes"] > 0
    assert (circuit.stats["dtype"], circuit.stats["device"]) == ("bfloat16", "cpu")
