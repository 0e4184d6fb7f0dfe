"""tracr: RASP programs compiled to transformer weights, whose circuits are known exactly.

The weights are compiled once with JAX by ``benchmarks/tracr_compile.py`` and shipped as fixtures in
``circuitfind/models/tracr_fixtures/<name>/`` (``weights.safetensors`` + ``meta.json``), so loading needs
torch only. Two programs come with the package, the two the ACDC paper used:

* ``reverse``: ``make_reverse(tokens)`` over {a, b, c}: 4 blocks, 1 head, categorical output (3 logits).
* ``proportion``: ``make_frac_prevs(tokens == "x")`` over {w, x, y, z}: 2 blocks, 1 head, numerical
  output: the unembedding projects onto one residual direction, so the output has size 1 and that "logit"
  is the value.

A tracr model has no layer norms, a ReLU MLP, attention logits scaled by ``1/sqrt(d_head)``, and is
compiled non-causal. Layer ``L`` of tracr's assembled model is block ``L`` here (its heads, then its MLP);
blocks or heads that tracr left empty are all-zero but still part of the graph. ``meta["ground_truth"]``
lists the true circuit in our edge naming; ``meta["ground_truth_derivation"]`` says how it was read off
tracr's compiled graph.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from circuitfind.errors import ModelLoadError, TaskError
from circuitfind.models.spec import ArchSpec, AttentionWeights, LayerSpec

__all__ = ["TRACR_MODELS", "FIXTURES_DIR", "tracr_fixture_dir", "load_tracr", "TracrTokenizer"]

TRACR_MODELS = ("reverse", "proportion")
FIXTURES_DIR = Path(__file__).resolve().parent / "tracr_fixtures"
_FILES = ("weights.safetensors", "meta.json")
_META_KEYS = (
    "n_layers",
    "n_heads",
    "d_model",
    "d_head",
    "d_mlp",
    "n_positions",
    "causal",
    "attn_scale",
    "activation",
    "input_vocab",
    "output_vocab",
)


def tracr_fixture_dir(name: str) -> Path:
    """The fixture directory of a packaged tracr model.

    Example:
        >>> tracr_fixture_dir("reverse").name
        'reverse'
    """
    if name not in TRACR_MODELS:
        raise ModelLoadError(f"unknown tracr model {name!r}; packaged models: {', '.join(TRACR_MODELS)}")
    return FIXTURES_DIR / name


def _resolve(name_or_dir: str | Path) -> Path:
    path = Path(name_or_dir)
    if str(name_or_dir) in TRACR_MODELS:
        path = tracr_fixture_dir(str(name_or_dir))
    elif not path.is_dir():
        raise ModelLoadError(
            f"{str(name_or_dir)!r} is neither a packaged tracr model ({', '.join(TRACR_MODELS)}) nor a "
            "directory; compile one with benchmarks/tracr_compile.py"
        )
    missing = [f for f in _FILES if not (path / f).is_file()]
    if missing:
        raise ModelLoadError(
            f"tracr fixture {path} lacks {', '.join(missing)}; regenerate it with benchmarks/tracr_compile.py"
        )
    return path


def _identity(x: Tensor) -> Tensor:
    return x


def _read_fixture(path: Path, device, dtype: torch.dtype) -> tuple[dict[str, Any], Callable[..., Tensor]]:
    """``meta.json`` (checked) and a getter of the named weights that checks each tensor's shape."""
    from safetensors.torch import load_file

    meta = json.loads((path / "meta.json").read_text())
    missing = [k for k in _META_KEYS if k not in meta]
    if missing:
        raise ModelLoadError(f"{path / 'meta.json'} lacks {', '.join(missing)}; regenerate the fixture")
    if meta["activation"] != "relu" or meta.get("layer_norm", False):
        raise ModelLoadError(
            f"{path}: expected a ReLU MLP and no layer norm (tracr's defaults); got activation "
            f"{meta['activation']!r}, layer_norm={meta.get('layer_norm')}"
        )
    weights = {k: v.to(device=device, dtype=dtype) for k, v in load_file(str(path / "weights.safetensors")).items()}

    def get(key: str, shape: tuple[int, ...]) -> Tensor:
        if key not in weights:
            raise ModelLoadError(f"{path / 'weights.safetensors'} lacks tensor {key!r}; regenerate the fixture")
        t = weights[key]
        if tuple(t.shape) != shape:
            raise ModelLoadError(f"{path}: tensor {key!r} has shape {tuple(t.shape)}, meta.json implies {shape}")
        return t

    return meta, get


def _layer(get: Callable[..., Tensor], layer: int, meta: dict[str, Any]) -> LayerSpec:
    """Block ``layer`` of the fixture: per-head attention weights and the ReLU MLP, no norms."""
    H, D, E, p = meta["n_heads"], meta["d_model"], meta["d_head"], f"layers.{layer}."
    attn = AttentionWeights(
        W_Q=get(p + "W_Q", (H, D, E)),
        W_K=get(p + "W_K", (H, D, E)),
        W_V=get(p + "W_V", (H, D, E)),
        W_O=get(p + "W_O", (H, E, D)),
        b_Q=get(p + "b_Q", (H, E)),
        b_K=get(p + "b_K", (H, E)),
        b_V=get(p + "b_V", (H, E)),
        b_O=get(p + "b_O", (D,)),
    )
    mlp = _relu_mlp(
        get(p + "W_in", (D, meta["d_mlp"])),
        get(p + "b_in", (meta["d_mlp"],)),
        get(p + "W_out", (meta["d_mlp"], D)),
        get(p + "b_out", (D,)),
    )
    return LayerSpec(attn, _identity, _identity, mlp, float(meta["attn_scale"]))


def load_tracr(
    name_or_dir: str | Path, *, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> tuple[ArchSpec, dict[str, Any]]:
    """Load a compiled tracr model as an :class:`ArchSpec`, with its metadata.

    Args:
        name_or_dir: a packaged model (``"reverse"``, ``"proportion"``) or a directory holding
            ``weights.safetensors`` and ``meta.json`` as written by ``benchmarks/tracr_compile.py``.
        device: where the weights go (default: CPU).
        dtype: weight dtype (default float32, the dtype tracr compiled in).

    Returns:
        ``(spec, meta)``: ``meta`` holds the sizes, vocabularies (``input_vocab``, ``output_vocab``, ``bos``,
        ``pad``), ``output_kind`` (``"categorical"`` or ``"numerical"``), ``ground_truth`` (edge names),
        ``ground_truth_aux``, ``ground_truth_acdc`` and the examples the JAX model was checked on.

    Example:
        >>> spec, meta = load_tracr("reverse")
        >>> spec.n_layers, spec.n_heads, len(meta["ground_truth"])
        (4, 1, 8)
    """
    path = _resolve(name_or_dir)
    meta, get = _read_fixture(path, device, dtype)
    n_layers, H, D, E = meta["n_layers"], meta["n_heads"], meta["d_model"], meta["d_head"]

    token_embed = get("token_embed", (len(meta["input_vocab"]), D))  # (V, D)
    pos_embed = get("pos_embed", (meta["n_positions"], D))  # (P, D); row 0 (the BOS position) is zero
    unembed_w = get("unembed", (D, len(meta["output_vocab"])))  # (D, V_out): a projection of the residual
    layers = [_layer(get, layer, meta) for layer in range(n_layers)]

    def embed(ids: Tensor, position_ids: Tensor) -> Tensor:
        if int(position_ids.max()) >= pos_embed.shape[0]:
            raise TaskError(
                f"tracr {meta.get('name', path.name)} takes at most {pos_embed.shape[0]} positions "
                f"(BOS included); got position {int(position_ids.max())}"
            )
        return token_embed[ids] + pos_embed[position_ids]  # (B, T, D)

    def unembed(x: Tensor) -> Tensor:
        return x @ unembed_w  # (..., D) -> (..., V_out)

    spec = ArchSpec(
        n_layers=n_layers,
        n_heads=H,
        d_model=D,
        d_head=E,
        layers=tuple(layers),
        embed=embed,
        final_norm=_identity,
        unembed=unembed,
        rotary=None,
        parallel=False,
        causal=bool(meta["causal"]),
        family="tracr",
        vocab_size=token_embed.shape[0],
        n_outputs=unembed_w.shape[1],
        max_positions=pos_embed.shape[0],
    )
    return spec, meta


def _token_strings(seq: Sequence[str] | Sequence[Sequence[str]]) -> list[str]:
    """``seq`` as a list of token strings; a nested sequence where a token belongs is refused."""
    out = [t for t in seq if isinstance(t, str)]
    if len(out) != len(seq):
        raise TaskError(
            "a tracr input is one sequence of token strings (['a', 'b']) or a list of such sequences; "
            f"found a sequence mixing tokens and sequences: {list(seq)!r}"
        )
    return out


def _relu_mlp(w_in: Tensor, b_in: Tensor, w_out: Tensor, b_out: Tensor):
    def mlp(x: Tensor) -> Tensor:  # (..., D) -> (..., D)
        return torch.relu(x @ w_in + b_in) @ w_out + b_out

    return mlp


class TracrTokenizer:
    """Token strings to ids and outputs back to tokens, for one compiled tracr model.

    Args:
        meta: the metadata returned by :func:`load_tracr`.

    Example:
        >>> spec, meta = load_tracr("reverse")
        >>> tok = TracrTokenizer(meta)
        >>> tok.encode(["a", "b", "c"]).tolist()
        [0, 2, 3, 4]
    """

    def __init__(self, meta: dict[str, Any]) -> None:
        self.vocab: dict[str, int] = dict(meta["input_vocab"])
        self.bos: str = meta["bos"]
        self.pad: str = meta["pad"]
        self.max_seq_len: int = int(meta["max_seq_len"])
        self.output_kind: str = meta["output_kind"]
        self.output_vocab: dict[str, int] = dict(meta["output_vocab"])
        self._output_tokens = {i: t for t, i in self.output_vocab.items()}

    @property
    def bos_id(self) -> int:
        return self.vocab[self.bos]

    def encode(self, tokens: Sequence[str] | Sequence[Sequence[str]]) -> Tensor:
        """Ids with BOS prepended: ``(T,)`` for one sequence, ``(B, T)`` for a list of equal-length sequences.

        A leading BOS in the input is kept rather than doubled. tracr does not mask padding, so sequences in a
        batch must have equal lengths.
        """
        if tokens and not isinstance(tokens[0], str):
            rows = [self._encode_one(_token_strings(seq)) for seq in tokens]
            lengths = {len(r) for r in rows}
            if len(lengths) > 1:
                raise TaskError(
                    f"tracr models do not mask padding, so a batch needs equal lengths; got lengths {sorted(lengths)}"
                )
            return torch.stack(rows)  # (B, T)
        return self._encode_one(_token_strings(tokens))

    def _encode_one(self, seq: list[str]) -> Tensor:
        if seq[:1] != [self.bos]:
            seq = [self.bos, *seq]
        if len(seq) - 1 > self.max_seq_len:
            raise TaskError(f"this tracr model takes at most {self.max_seq_len} tokens after BOS; got {len(seq) - 1}")
        unknown = sorted({t for t in seq if t not in self.vocab})
        if unknown:
            raise TaskError(f"tokens {unknown} are not in the vocabulary {sorted(self.vocab)}")
        return torch.tensor([self.vocab[t] for t in seq], dtype=torch.long)  # (T,)

    def decode(self, logits: Tensor) -> list:
        """Outputs per position from ``(T, V_out)`` or ``(B, T, V_out)`` logits; position 0 decodes to BOS.

        Categorical outputs decode to the argmax token; numerical outputs to the value (a float).
        """
        if logits.dim() == 3:
            return [self.decode(row) for row in logits]
        if self.output_kind == "categorical":
            rest = [self._output_tokens[i] for i in logits[1:].argmax(-1).tolist()]
        else:
            rest = logits[1:, 0].tolist()
        return [self.bos, *rest]
