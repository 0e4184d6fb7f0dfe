"""tracr fixtures: the torch conversion reproduces the JAX model; the ground truth is a valid circuit.

JAX-free: the JAX outputs were stored in meta.json by benchmarks/tracr_compile.py.
"""

from __future__ import annotations

import pytest
import torch

from circuitfind.errors import ModelLoadError, TaskError
from circuitfind.graph import Graph
from circuitfind.models.spec import ArchSpec
from circuitfind.models.tracr import TRACR_MODELS, TracrTokenizer, load_tracr, tracr_fixture_dir

TOL = 1e-4


def plain_forward(spec: ArchSpec, ids: torch.Tensor, scores_out: list | None = None):
    """A plain forward over an ArchSpec, independent of circuitfind.engine.patchable.

    Args:
        scores_out: if given, receives each layer's scaled attention scores ``(B, H, T, T)``.

    Returns:
        ``(logits (B, T, V), final residual (B, T, D), sender outputs in graph order, each (B, T, D))``.
    """
    B, T = ids.shape
    pos = torch.arange(T).expand(B, T)
    resid = spec.embed(ids, pos)  # (B, T, D)
    senders = [resid]
    for lay in spec.layers:
        a = lay.attn
        x = lay.attn_norm(resid)
        out = torch.zeros_like(resid) if a.b_O is None else a.b_O.expand_as(resid).clone()
        layer_scores = []
        for h in range(spec.n_heads):
            q = x @ a.W_Q[h] + (0 if a.b_Q is None else a.b_Q[h])  # (B, T, E)
            k = x @ a.W_K[h] + (0 if a.b_K is None else a.b_K[h])
            v = x @ a.W_V[h] + (0 if a.b_V is None else a.b_V[h])
            scores = q @ k.transpose(-1, -2) * lay.attn_scale  # (B, T, T)
            layer_scores.append(scores)
            if spec.causal:
                scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
            head = torch.softmax(scores, dim=-1) @ v @ a.W_O[h]  # (B, T, D)
            senders.append(head)
            out = out + head
        if scores_out is not None:
            scores_out.append(torch.stack(layer_scores, dim=1))  # (B, H, T, T)
        resid = resid + out
        m = lay.mlp(lay.mlp_norm(resid))
        senders.append(m)
        resid = resid + m
    return spec.unembed(spec.final_norm(resid)), resid, senders


@pytest.fixture(scope="module", params=TRACR_MODELS)
def tracr(request):
    spec, meta = load_tracr(request.param)
    return request.param, spec, meta


def _batches(meta):
    """Examples grouped by length (tracr does not mask padding)."""
    by_len: dict[int, list[dict]] = {}
    for ex in meta["examples"]:
        by_len.setdefault(len(ex["ids"]), []).append(ex)
    return list(by_len.values())


def test_spec_shape(tracr):
    name, spec, meta = tracr
    assert spec.family == "tracr" and spec.rotary is None and not spec.parallel
    assert spec.causal is False  # tracr compiles non-causal models by default; ACDC kept it
    assert spec.layers[0].attn.W_Q.shape == (spec.n_heads, spec.d_model, spec.d_head)
    assert spec.layers[0].attn_scale == pytest.approx(spec.d_head**-0.5)
    print(f"{name}: {spec.n_layers} layers x {spec.n_heads} heads, d_model {spec.d_model}, d_head {spec.d_head}")


def test_matches_jax(tracr):
    name, spec, meta = tracr
    tok = TracrTokenizer(meta)
    worst, checked_scores = 0.0, False
    for batch in _batches(meta):
        ids = tok.encode([ex["input"] for ex in batch])  # (B, T)
        assert ids.tolist() == [ex["ids"] for ex in batch]
        scores: list[torch.Tensor] = []
        with torch.no_grad():
            logits, resid, _ = plain_forward(spec, ids, scores)
        for i, ex in enumerate(batch):
            want = torch.tensor(ex["logits"])  # (T, V_out), from the JAX model
            worst = max(worst, (logits[i] - want).abs().max().item())
            if "final_residual" in ex:
                worst = max(worst, (resid[i] - torch.tensor(ex["final_residual"])).abs().max().item())
            if "attn_logits" in ex:  # unsaturated, unlike the outputs: this is what checks attn_scale
                got = torch.stack([s[i] for s in scores])  # (L, H, T, T)
                worst = max(worst, (got - torch.tensor(ex["attn_logits"])).abs().max().item())
                checked_scores = True
            decoded = tok.decode(logits[i])
            if meta["output_kind"] == "categorical":
                assert decoded == ex["output"]
                assert decoded[1:] == ex["input"][::-1]  # reverse
            else:
                assert decoded[0] == ex["output"][0]
                assert decoded[1:] == pytest.approx(ex["output"][1:], abs=TOL)
                running = [sum(t == "x" for t in ex["input"][: j + 1]) / (j + 1) for j in range(len(ex["input"]))]
                assert decoded[1:] == pytest.approx(running, abs=1e-3)  # proportion of "x" so far
    print(f"{name}: max |torch - jax| = {worst:.2e}")
    assert checked_scores
    assert worst <= TOL


def test_ground_truth_edges_are_valid(tracr):
    name, spec, meta = tracr
    graph = Graph(spec.n_layers, spec.n_heads)
    for key in ("ground_truth", "ground_truth_aux", "ground_truth_acdc"):
        for edge in meta[key]:
            graph.edge_index(edge)  # raises on an invalid name or a non-edge
    gt = meta["ground_truth"]
    assert gt and len(set(gt)) == len(gt)
    assert any(e.endswith("->logits") for e in gt)
    assert not set(gt) & set(meta["ground_truth_aux"])
    # ACDC's canonical circuit (found with zero ablation) differs only by auxiliary (BOS/"one") reads.
    assert set(meta["ground_truth_acdc"]) <= set(gt) | set(meta["ground_truth_aux"])
    print(
        f"{name}: ground truth {len(gt)} of {graph.n_edges} edges (+{len(meta['ground_truth_aux'])} aux; "
        f"ACDC's: {len(meta['ground_truth_acdc'])})"
    )


def _ids_for_circuit_tests(meta):
    tok = TracrTokenizer(meta)
    batch = max(_batches(meta), key=len)
    ids = tok.encode([ex["input"] for ex in batch])  # (B, T)
    return ids, ids.roll(1, dims=0)  # corrupted: another example of the same length


def test_ground_truth_is_complete(tracr):
    """Edges outside ground truth + aux carry nothing the model reads: ablating them all changes no output."""
    from tests.reference_forward import reference_forward

    name, spec, meta = tracr
    graph = Graph(spec.n_layers, spec.n_heads)
    ids, corrupt = _ids_for_circuit_tests(meta)
    with torch.no_grad():
        clean, _, _ = plain_forward(spec, ids)
        _, _, corrupt_out = plain_forward(spec, corrupt)
        full_circuit = graph.mask_of(meta["ground_truth"] + meta["ground_truth_aux"]).float()
        zeros = torch.zeros(graph.n_senders, 1, 1, spec.d_model)
        got = reference_forward(spec, graph, ids, zeros, full_circuit)
        assert (got - clean).abs().max().item() <= TOL
        # Under resample ablation the auxiliary directions are the same on every input: ground truth alone
        # suffices.
        resampled = torch.stack(corrupt_out)  # (S, B, T, D)
        got = reference_forward(spec, graph, ids, resampled, graph.mask_of(meta["ground_truth"]).float())
        assert (got - clean).abs().max().item() <= TOL


def test_ground_truth_edges_each_matter_under_zero_ablation(tracr):
    from tests.reference_forward import reference_forward

    name, spec, meta = tracr
    graph = Graph(spec.n_layers, spec.n_heads)
    ids, _ = _ids_for_circuit_tests(meta)
    zeros = torch.zeros(graph.n_senders, 1, 1, spec.d_model)
    kept = meta["ground_truth"] + meta["ground_truth_aux"]
    with torch.no_grad():
        clean, _, _ = plain_forward(spec, ids)
        for edge in meta["ground_truth"]:
            mask = graph.mask_of([e for e in kept if e != edge]).float()
            got = reference_forward(spec, graph, ids, zeros, mask)
            assert (got - clean).abs().max().item() > 1e-2, f"dropping {edge} changes nothing"


def test_tokenizer_errors():
    _, meta = load_tracr("reverse")
    tok = TracrTokenizer(meta)
    assert tok.encode(["BOS", "a"]).tolist() == tok.encode(["a"]).tolist()
    with pytest.raises(TaskError, match="not in the vocabulary"):
        tok.encode(["a", "z"])
    with pytest.raises(TaskError, match="at most 5"):
        tok.encode(["a"] * 6)
    with pytest.raises(TaskError, match="equal lengths"):
        tok.encode([["a"], ["a", "b"]])
    # a list where a token belongs used to reach the vocabulary lookup and fail there as "unhashable type: 'list'"
    with pytest.raises(TaskError, match="mixing tokens and sequences"):
        tok.encode(["a", ["b"]])
    with pytest.raises(TaskError, match="mixing tokens and sequences"):
        tok.encode([["a", ["b"]]])


def test_load_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="neither a packaged tracr model"):
        load_tracr("sort")
    with pytest.raises(ModelLoadError, match="lacks"):
        load_tracr(tmp_path)
    assert tracr_fixture_dir("proportion").is_dir()
