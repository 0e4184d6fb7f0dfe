"""A hand-built 5-layer model that does IOI with one planted head of every IOI class (true by construction).

Tokens: ``BOS AND WENT TO`` and ``N_NAMES`` names; prompts ``BOS N1 AND N2 WENT S TO`` (ABBA and BABA), the
answer the name that is not repeated. The residual stream is a sum of one-hot subspaces; norms are identities
and MLPs zero, so every head does exactly what its weights say:

* ``a0.h0`` previous-token: attends ``i -> i - 1``, writes the previous name into PREV;
* ``a0.h1`` duplicate-token: attends to the earlier copy of its own token (BOS otherwise), writes DUP;
* ``a1.h0`` induction: attends to where PREV holds its own token (the token after S1), writes IND;
* ``a2.h0`` S-inhibition: at TO attends to the position with both DUP and IND (S2), copies that name into INHIB;
* ``a3.h0`` name mover: at TO attends to the names not in INHIB (IO), copies the name into OUT (+1);
* ``a3.h1`` negative name mover: the same attention, writes -0.3 times the name into OUT;
* ``a4.h0`` backup name mover: the same attention, but pushed onto BOS while OUT already holds the name it
  would copy; with the name mover removed it copies IO (+1).
* ``a1.h1``, ``a2.h1``, ``a4.h1`` are zero heads. Logits read OUT.
"""

from __future__ import annotations

import random

import torch
from torch import nn

from circuitfind.models.spec import ArchSpec, AttentionWeights, LayerSpec
from circuitfind.tasks import Task

BOS, AND, WENT, TO = 0, 1, 2, 3
N_NAMES = 8
FIRST_NAME = 4
V, P, E, H, L = FIRST_NAME + N_NAMES, 7, 24, 2, 5
_sizes = {"TOK": V, "POS": P, "NAME": 1, "PREV": N_NAMES, "DUP": 1, "IND": 1, "INHIB": N_NAMES, "OUT": N_NAMES}
SUB: dict[str, slice] = {}
_at = 0
for _name, _n in _sizes.items():
    SUB[_name] = slice(_at, _at + _n)
    _at += _n
D = _at
NAMES = slice(FIRST_NAME, V)  # the name tokens inside TOK
PLANTED = {
    "previous_token": "a0.h0",
    "duplicate_token": "a0.h1",
    "induction": "a1.h0",
    "s_inhibition": "a2.h0",
    "name_mover": "a3.h0",
    "negative_name_mover": "a3.h1",
    "backup_name_mover": "a4.h0",
}
ALPHA = 20.0


def _rows(sub: str, names_only: bool = False) -> torch.Tensor:
    """Residual indices of a subspace (the name tokens only, inside TOK)."""
    s = SUB[sub]
    idx = torch.arange(s.start, s.stop)
    return idx[FIRST_NAME:] if names_only else idx


def _name_match(w_q, w_k, q_sub: str, k_sub: str, scale: float, col: int = 0) -> None:
    """Query name k (in q_sub) against key name k (in k_sub): ``scale`` on a match, dims col.. of the head."""
    q_rows = _rows(q_sub, q_sub == "TOK")
    k_rows = _rows(k_sub, k_sub == "TOK")
    for k in range(N_NAMES):
        w_q[q_rows[k], col + k] += scale
        w_k[k_rows[k], col + k] += 1.0


def _heads() -> dict[str, torch.Tensor]:
    w = {n: torch.zeros(L, H, D, E) for n in ("Q", "K", "V")}
    w["O"] = torch.zeros(L, H, E, D)
    pos, tok = _rows("POS"), _rows("TOK")
    to_q = tok[TO]
    # a0.h0 previous token: query at p meets key at p - 1; OV copies the name into PREV
    for p in range(1, P):
        w["Q"][0, 0, pos[p], p] = ALPHA
        w["K"][0, 0, pos[p - 1], p] = 1.0
    _copy(w, 0, 0, "PREV", 1.0)
    # a0.h1 duplicate token: same name, not itself; BOS as the sink; OV writes DUP for any name
    _name_match(w["Q"][0, 1], w["K"][0, 1], "TOK", "TOK", ALPHA)
    _self_penalty_and_sink(w, 0, 1)
    _flag(w, 0, 1, "NAME", "DUP")
    # a1.h0 induction: query name against the key's PREV; OV writes IND for any PREV
    _name_match(w["Q"][1, 0], w["K"][1, 0], "TOK", "PREV", ALPHA)
    _sink(w, 1, 0, pos, ALPHA / 2)
    w["V"][1, 0, _rows("PREV"), E - 2] = 1.0
    w["O"][1, 0, E - 2, SUB["IND"].start] = 1.0
    # a2.h0 S-inhibition: at TO, keys DUP + IND (both needed) against a BOS sink; copies the name into INHIB
    w["Q"][2, 0, to_q, 0] = ALPHA
    w["K"][2, 0, SUB["DUP"].start, 0] = 1.0
    w["K"][2, 0, SUB["IND"].start, 0] = 1.0
    w["Q"][2, 0, to_q, 1] = 1.5 * ALPHA
    w["K"][2, 0, tok[BOS], 1] = 1.0
    _copy(w, 2, 0, "INHIB", 1.0)
    # a3.h0 / a3.h1 / a4.h0: at TO attend to names, minus those in INHIB
    for layer, h, gain in ((3, 0, 1.0), (3, 1, -0.3), (4, 0, 1.0)):
        w["Q"][layer, h, to_q, E - 1] = ALPHA
        w["K"][layer, h, _rows("NAME"), E - 1] = 1.0
        _name_match(w["Q"][layer, h], w["K"][layer, h], "INHIB", "TOK", -2 * ALPHA)
        _copy(w, layer, h, "OUT", gain)
    # a4.h0 backup: OUT already holding a name pushes it off that name, onto a BOS sink
    _name_match(w["Q"][4, 0], w["K"][4, 0], "OUT", "TOK", -3 * ALPHA, col=N_NAMES)
    w["Q"][4, 0, to_q, E - 2] = 1.4 * ALPHA
    w["K"][4, 0, tok[BOS], E - 2] = 1.0
    return w


def _copy(w, layer: int, h: int, sub: str, gain: float) -> None:
    """OV circuit: name token k (in TOK) -> ``gain`` times name k of ``sub``."""
    names, out = _rows("TOK", True), _rows(sub)
    for k in range(N_NAMES):
        w["V"][layer, h, names[k], k] = 1.0
        w["O"][layer, h, k, out[k]] = gain


def _flag(w, layer: int, h: int, src: str, dst: str) -> None:
    w["V"][layer, h, SUB[src].start, E - 1] = 1.0
    w["O"][layer, h, E - 1, SUB[dst].start] = 1.0


def _sink(w, layer: int, h: int, pos: torch.Tensor, value: float) -> None:
    """Every query gives BOS ``value`` (positions sum to one, so they act as a constant)."""
    w["Q"][layer, h, pos, E - 1] = value
    w["K"][layer, h, _rows("TOK")[BOS], E - 1] = 1.0


def _self_penalty_and_sink(w, layer: int, h: int) -> None:
    """A key at the query's own position scores -ALPHA; BOS scores ALPHA / 2 for every query."""
    pos = _rows("POS")
    for p in range(P):
        w["Q"][layer, h, pos[p], N_NAMES + p] = ALPHA  # a key at its own position scores -ALPHA
        w["K"][layer, h, pos[p], N_NAMES + p] = -1.0
    w["Q"][layer, h, pos, N_NAMES + P] = ALPHA / 2
    w["K"][layer, h, _rows("TOK")[BOS], N_NAMES + P] = 1.0


def planted_ioi_spec() -> ArchSpec:
    """The planted model as an :class:`ArchSpec` (wrap it in ``PatchableModel``)."""
    w = _heads()
    unembed = nn.Linear(D, V, bias=False)
    with torch.no_grad():
        unembed.weight.zero_()
        unembed.weight[FIRST_NAME:, SUB["OUT"]] = torch.eye(N_NAMES)

    def zero_mlp(x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)

    layers = tuple(
        LayerSpec(
            AttentionWeights(w["Q"][i], w["K"][i], w["V"][i], w["O"][i]), nn.Identity(), nn.Identity(), zero_mlp, 1.0
        )
        for i in range(L)
    )

    def embed(ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(*ids.shape, D)
        out[..., SUB["TOK"]] = nn.functional.one_hot(ids, V).float()
        out[..., SUB["POS"]] = nn.functional.one_hot(position_ids, P).float()
        out[..., SUB["NAME"]] = (ids >= FIRST_NAME).float().unsqueeze(-1)
        return out

    return ArchSpec(
        n_layers=L,
        n_heads=H,
        d_model=D,
        d_head=E,
        layers=layers,
        embed=embed,
        final_norm=nn.Identity(),
        unembed=unembed,
        vocab_size=V,
        n_outputs=V,
        max_positions=P,
    )


def planted_ioi_task(n: int = 8, seed: int = 0) -> Task:
    """``n`` prompt pairs (ABBA, BABA alternating) with ABC corruptions."""
    rng = random.Random(seed)
    clean, corrupted, answers, wrong = [], [], [], []
    for i in range(n):
        io, s, c1, c2, c3 = (FIRST_NAME + x for x in rng.sample(range(N_NAMES), 5))
        n1, n2 = (io, s) if i % 2 == 0 else (s, io)
        clean.append([BOS, n1, AND, n2, WENT, s, TO])
        corrupted.append([BOS, c1, AND, c2, WENT, c3, TO])
        answers.append([io])
        wrong.append([s])
    ids = torch.tensor(clean)
    return Task(
        "ioi-planted", ids, torch.tensor(corrupted), torch.ones_like(ids), torch.full((n,), P - 1),
        torch.tensor(answers), torch.tensor(wrong),
    )  # fmt: skip
