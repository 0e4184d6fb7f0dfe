"""Compile the tracr benchmark programs and write their weights, examples and ground-truth circuits.

Run with a Python that has tracr and JAX (kept out of the main environment on purpose)::

    /work/tracr-venv/bin/python benchmarks/tracr_compile.py           # -> circuitfind/models/tracr_fixtures/
    /work/tracr-venv/bin/python benchmarks/tracr_compile.py --out DIR

Two programs, as in the ACDC paper (Conmy et al. 2023, ``acdc/tracr_task/utils.py``):

* ``reverse``: ``make_reverse(tokens)`` over vocab {a, b, c} (ACDC used {1, 2, 3}; same structure),
  ``max_seq_len=5``, ``compiler_bos="BOS"``, non-causal (tracr's default, which ACDC kept).
* ``proportion``: ``make_frac_prevs(tokens == "x")`` over vocab {w, x, y, z}, same settings. Its output SOp
  is numerical: the unembedding projects the residual onto one direction, so the output "vocabulary" has
  size 1 and the single logit is the value itself.

For each program, ``<out>/<name>/`` receives:

* ``weights.safetensors`` (float32): ``token_embed (V, D)``, ``pos_embed (P, D)`` (row 0, the BOS position,
  is zero: tracr gives BOS no index), ``unembed (D, V_out)``, and per layer ``l``:
  ``layers.{l}.W_Q/W_K/W_V (H, D, E)``, ``layers.{l}.b_Q/b_K/b_V (H, E)``, ``layers.{l}.W_O (H, E, D)``,
  ``layers.{l}.b_O (D,)``, ``layers.{l}.W_in (D, M)``, ``layers.{l}.b_in (M,)``, ``layers.{l}.W_out (M, D)``,
  ``layers.{l}.b_out (D,)``. tracr's attention divides logits by ``sqrt(E)`` (``attn_scale`` in meta); its
  MLP activation is ReLU; it has no layer norms.
* ``meta.json``: sizes, vocabularies, the examples run through the compiled JAX model (decoded outputs and
  the raw pre-argmax output per position; for two of them also the final residual and the attention
  logits), and the ground-truth circuit with how it was derived.

The ground truth is read off tracr's own compiled graph (see :func:`ground_truth`): each RASP operation's
craft block is located in the assembled model (layer, head), and an edge is drawn from the block that
produces an SOp to every block input that consumes it.
"""

from __future__ import annotations

import argparse
import collections
import importlib.metadata
import json
from pathlib import Path

import numpy as np

__all__ = ["PROGRAMS", "compile_program", "ground_truth", "main"]

MAX_SEQ_LEN = 5
BOS, PAD = "BOS", "PAD"
OUT_DEFAULT = Path(__file__).resolve().parent.parent / "circuitfind" / "models" / "tracr_fixtures"

EXAMPLES = {
    "reverse": [
        ["a", "b", "c"],
        ["a", "c", "b"],
        ["b", "a", "c"],
        ["b", "c", "a"],
        ["c", "a", "b"],
        ["c", "b", "a"],
        ["a"],
        ["b", "a"],
        ["c", "c", "a", "b"],
        ["a", "b", "c", "a", "b"],
    ],
    "proportion": [
        ["x", "w", "w", "x"],
        ["w", "x", "y", "z"],
        ["x", "x", "x", "x"],
        ["w", "w", "w", "w"],
        ["z", "x", "y", "x"],
        ["y", "y", "x", "w"],
        ["x"],
        ["y", "x"],
        ["x", "z", "x"],
        ["w", "x", "x", "z", "x"],
    ],
}
# Examples whose final residual stream and attention logits are stored as well (indices into EXAMPLES[name]).
RESIDUAL_EXAMPLES = (0, 1)
PROGRAMS = ("reverse", "proportion")


def _programs():
    from tracr.compiler import lib
    from tracr.rasp import rasp

    return {
        "reverse": (lambda: lib.make_reverse(rasp.tokens), {"a", "b", "c"}),
        "proportion": (lambda: lib.make_frac_prevs(rasp.tokens == "x"), {"w", "x", "y", "z"}),
    }


def compile_program(name: str):
    """Compile one program step by step (as ``compiling.compile_rasp_to_model`` does) and keep the graph.

    Returns:
        ``(graph, sources, sink, craft_model, assembled)``: the RASP graph annotated with craft blocks, its
        source and sink nodes, the craft model (blocks in residual order) and the assembled haiku model.
    """
    from tracr.compiler import (
        basis_inference,
        craft_graph_to_model,
        craft_model_to_transformer,
        expr_to_craft_graph,
        rasp_to_graph,
    )
    from tracr.craft import bases
    from tracr.rasp import rasp

    make, vocab = _programs()[name]
    extracted = rasp_to_graph.extract_rasp_graph(make())
    graph, sources, sink = extracted.graph, extracted.sources, extracted.sink
    basis_inference.infer_bases(graph, sink, vocab, MAX_SEQ_LEN)
    expr_to_craft_graph.add_craft_components_to_rasp_graph(
        graph, bos_dir=bases.BasisDirection(rasp.tokens.label, BOS), mlp_exactness=100
    )
    craft_model = craft_graph_to_model.craft_graph_to_model(graph, sources)
    assembled = craft_model_to_transformer.craft_model_to_transformer(
        craft_model=craft_model,
        graph=graph,
        sink=sink,
        max_seq_len=MAX_SEQ_LEN,
        causal=False,
        compiler_bos=BOS,
        compiler_pad=PAD,
    )
    return graph, sources, sink, craft_model, assembled


def _locate_blocks(graph, sources, craft_model):
    """Where each RASP node's craft block sits in the assembled model.

    Returns:
        ``{node_label: {"head": "a{L}.h{H}" | None, "mlp": "m{L}" | None}}`` for every node that owns a block.
        An ``Aggregate`` owns a head, a ``Map``/``SequenceMap`` an MLP, a ``SelectorWidth`` a head and an MLP.
    """
    from tracr.compiler import assemble, craft_graph_to_model, nodes
    from tracr.craft import transformers

    # The same allocation craft_graph_to_model used: half-layers 0, 1, 2, ... = attn, mlp, attn, ...
    allocation = craft_graph_to_model._allocate_modules_to_layers(graph, sources)
    used_half_layers: set[int] = set()
    for nid, half in allocation.items():
        used_half_layers |= {half, half + 1} if _is_residual_block(graph.nodes[nid]) else {half}
    used_half_layers = sorted(used_half_layers)
    # craft_model.blocks holds one block per used half-layer, in order; assemble names them
    # layer_{L}/attn or layer_{L}/mlp.
    _, module_names = assemble._get_model_config_and_module_names(craft_model)
    if len(module_names) != len(used_half_layers) or len(craft_model.blocks) != len(used_half_layers):
        raise RuntimeError(f"tracr layout changed: {module_names} vs half-layers {used_half_layers}")
    layer_of_half = {
        h: int(m.split("/")[1].removeprefix("layer_")) for h, m in zip(used_half_layers, module_names, strict=True)
    }
    block_of_half = dict(zip(used_half_layers, craft_model.blocks, strict=True))

    def head_name(half: int, head) -> str:
        heads = list(block_of_half[half].as_multi().heads())
        idx = [i for i, h in enumerate(heads) if h is head]
        if len(idx) != 1:
            raise RuntimeError(f"head not found exactly once in tracr half-layer {half}")
        return f"a{layer_of_half[half]}.h{idx[0]}"

    located = {}
    for nid, half in allocation.items():
        node = graph.nodes[nid]
        block = node[nodes.MODEL_BLOCK]
        if _is_residual_block(node):  # SelectorWidth: attention head, then its MLP one half-layer later
            attn, _mlp = block.blocks
            if not isinstance(attn, transformers.AttentionHead):
                raise NotImplementedError(f"{nid}: multi-head residual blocks are not handled")
            located[nid] = {"head": head_name(half, attn), "mlp": f"m{layer_of_half[half + 1]}"}
        elif isinstance(block, transformers.MLP):
            located[nid] = {"head": None, "mlp": f"m{layer_of_half[half]}"}
        elif isinstance(block, transformers.AttentionHead):
            located[nid] = {"head": head_name(half, block), "mlp": None}
        else:
            raise NotImplementedError(f"{nid}: block type {type(block).__name__} is not handled")
    return located


def _is_residual_block(node) -> bool:
    from tracr.compiler import craft_graph_to_model

    return craft_graph_to_model._node_is_residual_block(node)


def ground_truth(graph, sources, sink, craft_model, input_writes: set[str]) -> dict:
    """The true circuit in our edge naming, derived from tracr's compiled graph.

    Rule (the RASP data flow): the producer of ``tokens`` and ``indices`` is ``input``; of an ``Aggregate``
    its head; of a ``Map``/``SequenceMap``/``SelectorWidth`` its MLP. An ``Aggregate``'s head reads q from
    its selector's query SOp, k from the key SOp, v from the aggregated SOp; a ``SelectorWidth``'s head reads
    q/k likewise and its MLP reads that head; a ``Map``/``SequenceMap`` MLP reads its argument SOp(s);
    ``logits`` read the program's output SOp. A selector with a constant predicate (``Comparison.TRUE`` or
    ``FALSE``, as in ``length``) ignores its query and key, so its head's q and k get no data edge.

    Every such edge is checked against the residual subspaces of the craft blocks (the sender writes a
    direction the receiver's weights read). The compiler's auxiliary directions (``one``, ``tokens:BOS``)
    give further reads that carry no program data; those edges are returned apart as ``aux``.

    Args:
        graph, sources, sink, craft_model: from :func:`compile_program`.
        input_writes: residual directions the token and position embeddings write (the ``input`` sender).

    Returns:
        ``{"edges": [...], "aux": [...], "components": {rasp_label: [node names]}}``.
    """
    from tracr.compiler import nodes
    from tracr.rasp import rasp

    located = _locate_blocks(graph, sources, craft_model)

    def producer(label: str) -> str:
        if label in (rasp.tokens.label, rasp.indices.label):
            return "input"
        loc = located.get(label)
        if loc is None:
            raise NotImplementedError(f"SOp {label!r} has no block in the compiled model")
        return loc["mlp"] or loc["head"]

    def qk_edges(selector, head: str) -> set[tuple[str, str]]:
        if not isinstance(selector, rasp.Select):
            raise NotImplementedError(f"selector {selector.label!r} is not a plain Select")
        if selector.predicate in (rasp.Comparison.TRUE, rasp.Comparison.FALSE):
            return set()  # a constant predicate ignores its query and key: no data flows into q or k
        return {
            (producer(selector.queries.label), f"{head}<q>"),
            (producer(selector.keys.label), f"{head}<k>"),
        }

    edges: set[tuple[str, str]] = set()  # (sender, receiver)
    for label, loc in located.items():
        expr = graph.nodes[label][nodes.EXPR]
        head, mlp = loc["head"], loc["mlp"]
        if isinstance(expr, rasp.Aggregate):
            edges |= qk_edges(expr.selector, head) | {(producer(expr.sop.label), f"{head}<v>")}
        elif isinstance(expr, rasp.SelectorWidth):
            edges |= qk_edges(expr.selector, head) | {(head, mlp)}
        elif isinstance(expr, (rasp.Map, rasp.SequenceMap)):
            edges |= {(producer(child.label), mlp) for child in expr.children}
        else:
            raise NotImplementedError(f"{label}: {type(expr).__name__} is not handled")
    edges.add((producer(sink[nodes.ID]), "logits"))

    reads, writes = _residual_io(graph, sink, located)
    writes["input"] = input_writes
    for s, r in edges:
        if not writes[s] & reads[r]:
            raise RuntimeError(f"{s}->{r}: {s} writes {sorted(writes[s])}, {r} reads {sorted(reads[r])}")
    space_edges = {(s, r) for s in writes for r in reads if writes[s] & reads[r] and _sender_pos(s) < _receiver_pos(r)}
    missing = edges - space_edges
    if missing:
        raise RuntimeError(f"data-flow edges that run against the residual stream: {sorted(missing)}")
    components = {label: [n for n in (loc["head"], loc["mlp"]) if n] for label, loc in located.items()}
    return {
        "edges": sorted(f"{s}->{r}" for s, r in edges),
        "aux": sorted(f"{s}->{r}" for s, r in space_edges - edges),
        "components": components,
    }


def _sender_pos(name: str) -> float:
    """Position of a sender's output along the residual stream (attn of layer L at 2L, its MLP at 2L+1)."""
    if name == "input":
        return -1.0
    if name.startswith("a"):
        return 2 * int(name[1:].split(".")[0]) + 0.5
    return 2 * int(name[1:]) + 1.5


def _receiver_pos(name: str) -> float:
    """Position of a receiver's input along the residual stream."""
    if name == "logits":
        return float("inf")
    if name.startswith("a"):
        return 2 * int(name[1:].split(".")[0])
    return 2 * int(name[1:]) + 1


def _residual_io(graph, sink, located) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """Residual directions each receiver reads and each sender writes (non-zero craft weights)."""
    from tracr.compiler import nodes
    from tracr.craft import transformers

    def nonzero(basis, matrix, axis: int) -> set[str]:
        keep = np.abs(np.asarray(matrix)).sum(axis=axis) > 0
        return {str(d) for d, k in zip(basis, keep, strict=True) if k}

    reads: dict[str, set[str]] = collections.defaultdict(set)
    writes: dict[str, set[str]] = collections.defaultdict(set)
    for label, loc in located.items():
        block = graph.nodes[label][nodes.MODEL_BLOCK]
        parts = block.blocks if isinstance(block, transformers.SeriesWithResiduals) else [block]
        for part in parts:
            if isinstance(part, transformers.AttentionHead):
                head = loc["head"]
                reads[f"{head}<q>"] |= nonzero(part.w_qk.left_space.basis, part.w_qk.matrix, 1)
                reads[f"{head}<k>"] |= nonzero(part.w_qk.right_space.basis, part.w_qk.matrix, 0)
                reads[f"{head}<v>"] |= nonzero(part.w_ov.input_space.basis, part.w_ov.matrix, 1)
                writes[head] |= nonzero(part.w_ov.output_space.basis, part.w_ov.matrix, 0)
            else:  # an MLP: "m{L}" names both its input (a receiver) and its output (a sender)
                reads[loc["mlp"]] |= nonzero(part.fst.input_space.basis, part.fst.matrix, 1)
                writes[loc["mlp"]] |= nonzero(part.snd.output_space.basis, part.snd.matrix, 0)
    reads["logits"] = {str(d) for d in sink[nodes.OUTPUT_BASIS]}
    return dict(reads), dict(writes)


def _f32_list(a) -> list:
    """Nested lists of Python floats that round-trip the float32 values exactly."""
    return np.asarray(a, dtype=np.float32).astype(np.float64).tolist()


def _expected(name: str, tokens: list[str]) -> list:
    if name == "reverse":
        return tokens[::-1]
    return [sum(t == "x" for t in tokens[: i + 1]) / (i + 1) for i in range(len(tokens))]


def write_fixture(name: str, out: Path) -> dict:
    """Compile ``name`` and write ``weights.safetensors`` and ``meta.json`` under ``out``; return the meta."""
    from safetensors.numpy import save_file
    from tracr.compiler import compiling, nodes
    from tracr.transformer import encoder

    graph, sources, sink, craft_model, model = compile_program(name)
    cfg = model.model_config
    params = {k: {kk: np.asarray(vv, dtype=np.float32) for kk, vv in v.items()} for k, v in model.params.items()}
    n_layers, n_heads, d_head, d_mlp = cfg.num_layers, cfg.num_heads, cfg.key_size, cfg.mlp_hidden_size
    token_embed = params["token_embed"]["embeddings"]  # (V, D)
    pos_embed = params["pos_embed"]["embeddings"]  # (P, D)
    d_model = token_embed.shape[1]
    labels = list(model.residual_labels)
    output_labels = [str(d) for d in sink[nodes.OUTPUT_BASIS]]
    unembed = np.zeros((d_model, len(output_labels)), dtype=np.float32)  # (D, V_out): a projection
    for j, lab in enumerate(output_labels):
        unembed[labels.index(lab), j] = 1.0

    tensors = {"token_embed": token_embed, "pos_embed": pos_embed, "unembed": unembed}
    for layer in range(n_layers):
        attn, mlp = f"transformer/layer_{layer}/attn", f"transformer/layer_{layer}/mlp"
        for ours, theirs in (("Q", "query"), ("K", "key"), ("V", "value")):
            w = params[f"{attn}/{theirs}"]["w"]  # (D, H*E), head-major columns
            tensors[f"layers.{layer}.W_{ours}"] = w.reshape(d_model, n_heads, d_head).transpose(1, 0, 2)
            tensors[f"layers.{layer}.b_{ours}"] = params[f"{attn}/{theirs}"]["b"].reshape(n_heads, d_head)
        tensors[f"layers.{layer}.W_O"] = params[f"{attn}/linear"]["w"].reshape(n_heads, d_head, d_model)
        tensors[f"layers.{layer}.b_O"] = params[f"{attn}/linear"]["b"]
        tensors[f"layers.{layer}.W_in"] = params[f"{mlp}/linear_1"]["w"]
        tensors[f"layers.{layer}.b_in"] = params[f"{mlp}/linear_1"]["b"]
        tensors[f"layers.{layer}.W_out"] = params[f"{mlp}/linear_2"]["w"]
        tensors[f"layers.{layer}.b_out"] = params[f"{mlp}/linear_2"]["b"]
    tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}

    categorical = isinstance(model.output_encoder, encoder.CategoricalEncoder)
    make, vocab = _programs()[name]
    public = compiling.compile_rasp_to_model(make(), vocab, MAX_SEQ_LEN, compiler_bos=BOS, compiler_pad=PAD)
    examples, worst = [], 0.0
    for i, tokens in enumerate(EXAMPLES[name]):
        run = model.apply([BOS, *tokens])
        # The step-by-step compile must give the model tracr's public entry point gives.
        reference = public.apply([BOS, *tokens]).decoded
        assert reference == run.decoded if categorical else np.allclose(reference[1:], run.decoded[1:], atol=1e-6)
        final = np.asarray(run.transformer_output, dtype=np.float32)[0]  # (T, D)
        logits = final @ unembed  # (T, V_out)
        raw = np.asarray(run.unembedded)[0]  # (T,): argmax ids (categorical) or values (numerical)
        if categorical:
            assert (logits.argmax(-1)[1:] == raw[1:]).all(), "unembedding does not reproduce tracr's argmax"
            assert run.decoded[1:] == _expected(name, tokens), (tokens, run.decoded)
        else:
            assert np.allclose(logits[:, 0], raw, atol=1e-6), "unembedding does not reproduce tracr's value"
            err = np.abs(np.asarray(run.decoded[1:], dtype=np.float64) - _expected(name, tokens)).max()
            assert err < 1e-3, (tokens, run.decoded)
            worst = max(worst, float(err))
        example = {
            "input": tokens,
            "ids": [int(t) for t in model.input_encoder.encode([BOS, *tokens])],
            "output": [run.decoded[0], *(run.decoded[1:] if categorical else map(float, run.decoded[1:]))],
            "logits": _f32_list(logits),
        }
        if i in RESIDUAL_EXAMPLES:
            example["final_residual"] = _f32_list(final)
            # Attention logits are scaled by 1/sqrt(d_head) and far from saturation, unlike the outputs:
            # they pin down attn_scale. (L, H, T, T)
            example["attn_logits"] = _f32_list(np.stack([np.asarray(a)[0] for a in run.attn_logits]))
        examples.append(example)

    input_writes = {
        lab
        for lab, used in zip(labels, (np.abs(token_embed).sum(0) + np.abs(pos_embed).sum(0)) > 0, strict=True)
        if used
    }
    truth = ground_truth(graph, sources, sink, craft_model, input_writes)
    meta = {
        "name": name,
        "program": {
            "reverse": "tracr.compiler.lib.make_reverse(rasp.tokens)",
            "proportion": 'tracr.compiler.lib.make_frac_prevs(rasp.tokens == "x")',
        }[name],
        "compile": {
            "vocab": sorted(_programs()[name][1]),
            "max_seq_len": MAX_SEQ_LEN,
            "compiler_bos": BOS,
            "compiler_pad": PAD,
            "causal": False,
            "mlp_exactness": 100,
        },
        "versions": {p: importlib.metadata.version(p) for p in ("tracr-pypi", "jax", "jaxlib", "dm-haiku", "numpy")},
        "n_layers": n_layers,
        "n_heads": n_heads,
        "d_model": d_model,
        "d_head": d_head,
        "d_mlp": d_mlp,
        "n_positions": int(pos_embed.shape[0]),
        "max_seq_len": MAX_SEQ_LEN,
        "causal": bool(cfg.causal),
        "attn_scale": float(1.0 / np.sqrt(d_head)),
        "activation": "relu",
        "layer_norm": bool(cfg.layer_norm),
        "bos": BOS,
        "pad": PAD,
        "input_vocab": {str(k): int(v) for k, v in model.input_encoder.encoding_map.items()},
        "output_kind": "categorical" if categorical else "numerical",
        "output_vocab": (
            {str(k): int(v) for k, v in model.output_encoder.encoding_map.items()}
            if categorical
            else {output_labels[0]: 0}
        ),
        "residual_labels": labels,
        "tensors": {k: list(v.shape) for k, v in tensors.items()},
        "ground_truth": truth["edges"],
        "ground_truth_aux": truth["aux"],
        "ground_truth_acdc": sorted(ACDC_EDGES[name]),
        "components": truth["components"],
        "ground_truth_derivation": GROUND_TRUTH_DERIVATION,
        "examples": examples,
    }
    if not categorical:
        meta["max_abs_error_vs_program"] = worst
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "weights.safetensors"), metadata={"source": f"tracr {name}"})
    (out / "weights.safetensors").chmod(0o644)  # safetensors writes 0600; the package ships this file
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta


GROUND_TRUTH_DERIVATION = (
    "Compiled step by step as tracr's compile_rasp_to_model does, keeping the RASP graph. Each RASP "
    "node's craft block was located in the assembled model (tracr's own layer allocation; heads by "
    "identity in the layer's MultiAttentionHead): Aggregate -> head, Map/SequenceMap -> MLP, "
    "SelectorWidth -> head + MLP. Edges follow the RASP data flow: an Aggregate head reads q from its "
    "selector's query SOp, k from the key SOp, v from the aggregated SOp; a SelectorWidth head reads "
    "q/k likewise and its MLP reads that head; an MLP reads its argument SOp(s); logits read the output "
    "SOp; tokens and indices are produced by 'input'. A selector with a constant predicate "
    "(Comparison.TRUE, used by length) ignores its query and key, so its q/k get no edge. Each edge was "
    "checked against the craft blocks' residual subspaces (non-zero weights: the sender writes a "
    "direction the receiver reads). 'ground_truth_aux' lists the further edges that exist only through "
    "the compiler's auxiliary directions ('one', 'tokens:BOS'; e.g. always-attend-to-BOS and MLP "
    "biases) or through the q/k of a constant selector: constant across inputs, so invisible to "
    "resample ablation, though some matter under zero ablation. 'ground_truth_acdc' is the circuit "
    "ACDC's code uses as ground truth for this task (ArthurConmy/Automatic-Circuit-Discovery, "
    "acdc/tracr_task/utils.py, found by an ACDC run with zero ablation), in our naming (embed and "
    "pos_embed are both 'input'), for comparison."
)

# The ground truth ACDC's code uses for tracr (get_tracr_reverse_edges / get_tracr_proportion_edges),
# in our naming.
ACDC_EDGES = {
    "reverse": [
        "a3.h0->logits",
        "m2->a3.h0<q>",
        "input->a3.h0<k>",
        "input->a3.h0<v>",
        "m1->m2",
        "m0->m1",
        "input->m1",
        "a0.h0->m0",
        "input->m0",
        "input->a0.h0<v>",
    ],
    "proportion": [
        "a1.h0->logits",
        "input->a1.h0<q>",
        "input->a1.h0<k>",
        "m0->a1.h0<v>",
        "input->m0",
    ],
}


def main() -> None:
    parser = argparse.ArgumentParser(description="Compile the tracr benchmark programs into fixtures.")
    parser.add_argument("--out", type=Path, default=OUT_DEFAULT, help="fixtures root (default: %(default)s)")
    args = parser.parse_args()
    for name in PROGRAMS:
        meta = write_fixture(name, args.out / name)
        print(
            f"{name}: {meta['n_layers']} layers x {meta['n_heads']} heads, d_model {meta['d_model']}, "
            f"d_head {meta['d_head']}, d_mlp {meta['d_mlp']}; ground truth {len(meta['ground_truth'])} edges "
            f"(+{len(meta['ground_truth_aux'])} aux) -> {args.out / name}"
        )
        for edge in meta["ground_truth"]:
            print(f"    {edge}")
        print(f"  aux: {', '.join(meta['ground_truth_aux'])}")


if __name__ == "__main__":
    main()
