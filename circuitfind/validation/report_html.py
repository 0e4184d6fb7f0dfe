"""``report.html``: the validation report as one offline, self-contained HTML file (hand-written SVG, no script).

Four figures and the tables beside them: faithfulness vs circuit size with interval bands on the discovery,
validation and held-out prompts; the histogram of edge inclusion frequencies over the stability resamples; the
completeness scatter ``F(C \\ K)`` against ``F(M \\ K)``; the ablation table. The report's JSON is embedded too
(``<script type="application/json" id="report-data">``), with every ``<``, ``>``, ``&``, U+2028 and U+2029 written
as a ``\\u`` escape so that no text in it can end the element or be read as markup.
"""

from __future__ import annotations

import html
import json
import math
from typing import Any

from circuitfind.viewer.html import SCRIPT_ESCAPES

__all__ = ["embed_json", "render_report"]

W, H, PAD = 520, 300, 46  # figure size and margin (px)
SERIES = (("discovery", "#3b6fb6"), ("validation", "#d9822b"), ("heldout", "#2f9e5a"))
KIND_COLOURS = {"empty": "#555", "random": "#9aa5b1", "greedy": "#c23b3b", "group": "#3b6fb6", "class": "#8e44ad"}


def embed_json(data: Any) -> str:
    """JSON text safe inside an HTML ``<script>`` element: no ``<``, ``>``, ``&``, U+2028 or U+2029 left raw.

    Example:
        >>> embed_json({"a": "</script><b>&"})
        '{"a": "\\\\u003c/script\\\\u003e\\\\u003cb\\\\u003e\\\\u0026"}'
    """
    text = json.dumps(data, allow_nan=False, ensure_ascii=False)
    return text.translate(SCRIPT_ESCAPES)


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _num(x: Any, fmt: str = ".3f") -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, fmt)


def _ci(ci: Any) -> str:
    return f"[{_num(ci[0])}, {_num(ci[1])}]" if ci else "–"


# --- figures --------------------------------------------------------------------------------------------------
def _frame(title: str, body: list[str], x_label: str, y_label: str) -> str:
    return (
        f'<figure><svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img">'
        f"<title>{_e(title)}</title>"
        f'<text x="{W / 2}" y="{H - 6}" text-anchor="middle" class="lab">{_e(x_label)}</text>'
        f'<text x="12" y="{H / 2}" transform="rotate(-90 12 {H / 2})" text-anchor="middle" class="lab">'
        f"{_e(y_label)}</text>{''.join(body)}</svg><figcaption>{_e(title)}</figcaption></figure>"
    )


class _Axes:
    """Data to pixel coordinates; ``log_x`` for sizes."""

    def __init__(self, xs: list[float], ys: list[float], *, log_x: bool = False) -> None:
        self.log = log_x
        fx = [math.log10(x) for x in xs if x and x > 0] if log_x else list(xs)
        self.x0, self.x1 = (min(fx), max(fx)) if fx else (0.0, 1.0)
        self.y0, self.y1 = (min(ys), max(ys)) if ys else (0.0, 1.0)
        if self.x1 == self.x0:
            self.x0, self.x1 = self.x0 - 0.5, self.x1 + 0.5
        if self.y1 == self.y0:
            self.y0, self.y1 = self.y0 - 0.5, self.y1 + 0.5

    def x(self, v: float) -> float:
        v = math.log10(max(v, 1e-12)) if self.log else v
        return PAD + (v - self.x0) / (self.x1 - self.x0) * (W - 2 * PAD)

    def y(self, v: float) -> float:
        return H - PAD - (v - self.y0) / (self.y1 - self.y0) * (H - 2 * PAD)

    def ticks(self) -> list[str]:
        out = []
        for i in range(5):
            v = self.y0 + i * (self.y1 - self.y0) / 4
            y = self.y(v)
            out.append(f'<line x1="{PAD}" x2="{W - PAD}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
            out.append(f'<text x="{PAD - 4}" y="{y + 4:.1f}" text-anchor="end" class="tick">{v:.2f}</text>')
        for i in range(5):
            t = self.x0 + i * (self.x1 - self.x0) / 4
            v = 10**t if self.log else t
            out.append(f'<text x="{self.x(v):.1f}" y="{H - PAD + 14}" text-anchor="middle" class="tick">'
                       f"{v:,.0f}</text>" if self.log else f'<text x="{self.x(v):.1f}" y="{H - PAD + 14}" '
                       f'text-anchor="middle" class="tick">{v:.2f}</text>')  # fmt: skip
        return out


def _curve_figure(curves: dict[str, Any], circuit_edges: int, target: Any) -> str:
    pts = {name: [p for p in curves.get(name) or [] if p.get("faithfulness") is not None] for name, _ in SERIES}
    xs = [p["n_edges"] for ps in pts.values() for p in ps if p.get("n_edges")]
    ys = [v for ps in pts.values() for p in ps for v in [p["faithfulness"], *(p.get("ci") or [])] if v is not None]
    ax = _Axes(xs or [1, 10], [*ys, 0.0, 1.0], log_x=True)
    body = ax.ticks()
    for name, colour in SERIES:
        ps = sorted((p for p in pts[name] if p.get("n_edges")), key=lambda p: p["n_edges"])
        band = [p for p in ps if p.get("ci") and None not in p["ci"]]
        if len(band) > 1:
            poly = [(ax.x(p["n_edges"]), ax.y(p["ci"][1])) for p in band]
            poly += [(ax.x(p["n_edges"]), ax.y(p["ci"][0])) for p in reversed(band)]
            body.append(f'<polygon points="{" ".join(f"{x:.1f},{y:.1f}" for x, y in poly)}" fill="{colour}" '
                        'fill-opacity="0.18" stroke="none"/>')  # fmt: skip
        line = " ".join(f"{ax.x(p['n_edges']):.1f},{ax.y(p['faithfulness']):.1f}" for p in ps)
        if ps:
            body.append(f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for p in ps:
            tip = f"{name}: {p['n_edges']} edges, f {_num(p['faithfulness'])} {_ci(p.get('ci'))}"
            body.append(f'<circle cx="{ax.x(p["n_edges"]):.1f}" cy="{ax.y(p["faithfulness"]):.1f}" r="3" '
                        f'fill="{colour}"><title>{_e(tip)}</title></circle>')  # fmt: skip
    for level, cls in ((1.0, "ref"), (target, "target")):
        if isinstance(level, (int, float)):
            y = ax.y(level)
            body.append(f'<line x1="{PAD}" x2="{W - PAD}" y1="{y:.1f}" y2="{y:.1f}" class="{cls}"/>')
    if circuit_edges:
        x = ax.x(circuit_edges)
        body.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{PAD}" y2="{H - PAD}" class="cut"><title>the circuit: '
                    f"{circuit_edges} edges</title></line>")  # fmt: skip
    body += _legend([(n, c) for n, c in SERIES if pts[n]])
    return _frame("faithfulness vs circuit size (top-k of the ranking; bands: 95% bootstrap intervals)", body,
                  "edges (log scale)", "faithfulness")  # fmt: skip


def _legend(items: list[tuple[str, str]]) -> list[str]:
    return [f'<rect x="{PAD + 8 + 110 * i}" y="{PAD - 30}" width="10" height="10" fill="{c}"/>'
            f'<text x="{PAD + 22 + 110 * i}" y="{PAD - 21}" class="tick">{_e(n)}</text>'
            for i, (n, c) in enumerate(items)]  # fmt: skip


def _histogram_figure(freqs: list[float], core_level: float) -> str:
    bins = [0] * 10
    for f in freqs:
        bins[min(9, int(f * 10))] += 1
    ax = _Axes([0.0, 1.0], [0.0, float(max(bins) or 1)])
    body = ax.ticks()
    for i, n in enumerate(bins):
        x0, x1 = ax.x(i / 10) + 1, ax.x((i + 1) / 10) - 1
        body.append(f'<rect x="{x0:.1f}" y="{ax.y(n):.1f}" width="{x1 - x0:.1f}" height="{ax.y(0) - ax.y(n):.1f}" '
                    f'fill="#3b6fb6"><title>{i / 10:.1f}-{(i + 1) / 10:.1f}: {n} edges</title></rect>')  # fmt: skip
    x = ax.x(core_level)
    body.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{PAD}" y2="{H - PAD}" class="cut"><title>stable core: '
                f"frequency at least {core_level}</title></line>")  # fmt: skip
    return _frame("edges by inclusion frequency over the resamples (edges kept at least once)", body,
                  "inclusion frequency", "edges")  # fmt: skip


def _kind_colour(kind: str) -> str:
    if kind.startswith("heads of layer") or kind == "MLPs":
        return KIND_COLOURS["group"]
    return KIND_COLOURS.get(kind.split(" ")[0], "#555")


def _scatter_figure(comp: dict[str, Any]) -> str:
    probes = [p for p in comp.get("probes") or [] if p.get("f_circuit") is not None and p.get("f_model") is not None]
    vals = [v for p in probes for v in (p["f_circuit"], p["f_model"])]
    ax = _Axes(vals or [0.0, 1.0], vals or [0.0, 1.0])
    lo, hi = min(ax.x0, ax.y0), max(ax.x1, ax.y1)
    ax.x0 = ax.y0 = lo
    ax.x1 = ax.y1 = hi
    body = ax.ticks()
    body.append(f'<line x1="{ax.x(lo):.1f}" y1="{ax.y(lo):.1f}" x2="{ax.x(hi):.1f}" y2="{ax.y(hi):.1f}" class="ref"/>')
    worst = comp.get("worst") or {}
    for p in probes:
        big = p.get("nodes") == worst.get("nodes") and p.get("kind") == worst.get("kind")
        tip = f"{p['kind']}: K = {', '.join(p['nodes']) or 'empty'}; gap {_num(p['gap'])}"
        x, y, colour = ax.x(p["f_model"]), ax.y(p["f_circuit"]), _kind_colour(p["kind"])
        body.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{6 if big else 3.5}" fill="{colour}" fill-opacity="0.75">'
                    f"<title>{_e(tip)}</title></circle>")  # fmt: skip
    body += _legend([("group / class", KIND_COLOURS["group"]), ("random", KIND_COLOURS["random"]),
                     ("greedy", KIND_COLOURS["greedy"])])  # fmt: skip
    return _frame("completeness: F(C \\ K) against F(M \\ K), one point per K (diagonal: complete)", body,
                  "F(M \\ K), the model", "F(C \\ K), the circuit")  # fmt: skip


# --- tables ---------------------------------------------------------------------------------------------------
def _table(head: list[str], rows: list[list[Any]]) -> str:
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"


def summary_rows(data: dict[str, Any]) -> list[list[str]]:
    """The report's headline figures as ``[check, value]`` rows (the command line prints the same table)."""
    c, h, s = data["circuit"], data["heldout"], data["stability"]
    comp, mini = data["completeness"], data["minimality"]
    return [
        ["circuit", f"{c['n_edges']:,} edges ({100 * c['fraction']:.3f}%), {c['n_nodes']} nodes"],
        ["faithfulness, discovery prompts", _num(c["discovery_faithfulness"])],
        [f"faithfulness, held-out ({h['n_prompts']} prompts)", f"{_num(h['faithfulness'])} {_ci(h['ci'])}"],
        [f"stability ({s['n_boot']} resamples)", f"mean Jaccard {_num(s['jaccard_mean'])}"],
        [f"stable core (>= {s['core_level']:g})", f"{len(s['core_edges'])} edges, held-out f "
         f"{_num(s['core_heldout_faithfulness'])} {_ci(s['core_heldout_ci'])}"],
        [f"completeness ({comp['ablation']} ablation)", f"largest gap {_num(comp['max_gap_f'])} of |F(M) - F(empty)| "
         f"({comp['probes_used']} probes)"],
        [f"minimality ({mini['ablation']} ablation)", f"{len(mini['below_threshold'])} of {len(mini['nodes'])} nodes "
         f"below {mini['threshold']:g} ({mini['probes_used']} probes)"],
    ]  # fmt: skip


def _ablation_table(abl: dict[str, Any]) -> str:
    rows = []
    for name in ("resample", "mean", "zero"):
        r = abl.get(name)
        if r:
            own = " (found with)" if name == abl.get("found_with") else ""
            rows.append([name + own, f"{_num(r['faithfulness'])} {_ci(r['ci'])}", r["found_n_edges"],
                         f"{_num(r['found_faithfulness'])} {_ci(r['found_ci'])}", _num(r["jaccard"])])  # fmt: skip
    return _table(["ablation", "this circuit: held-out f", "circuit found under it: edges", "its held-out f",
                   "Jaccard with this circuit"], rows)  # fmt: skip


def _minimality_table(mini: dict[str, Any], n: int = 15) -> str:
    nodes = sorted(mini["nodes"].items(), key=lambda kv: (kv[1]["score_f"] is None, kv[1]["score_f"] or 0.0))
    rows = [[name, _num(r["score_f"]), ", ".join(r["k"]) or "empty", r["tried"]] for name, r in nodes[:n]]
    return _table(["node (weakest first)", "largest effect / |F(M) - F(empty)|", "with K removed", "K tried"], rows)


def render_report(data: dict[str, Any]) -> str:
    """The HTML text of ``report.html`` for a report dict (:func:`~circuitfind.validation.report.build_report`).

    Example:
        >>> rep = build_report(pm, dataclasses.replace(task, n_train=2), method="eap", n_edges=4, n_boot=2,
        ...                    probes=12, metric="logit_diff", progress=False)  # doctest: +SKIP
        >>> render_report(rep.data).startswith("<!doctype html>")  # doctest: +SKIP
        True
    """
    s = data["stability"]
    top = list(s["edge_frequency"].items())[:20]
    title = f"{data.get('model') or 'model'}: {data.get('task')} circuit, validation report"
    parts = [
        f"<h1>{_e(title)}</h1><p class='sub'>{_e(data['method'])}, options {_e(json.dumps(data['options']))}</p>",
        _table(["check", "result"], summary_rows(data)),
        '<div class="figs">',
        _curve_figure(data["curves"], data["circuit"]["n_edges"], data["circuit"].get("target")),
        _histogram_figure(list(s["edge_frequency"].values()), s["core_level"]),
        _scatter_figure(data["completeness"]),
        "</div><h2>Ablation sensitivity</h2>",
        _ablation_table(data["ablations"]),
        "<h2>Minimality</h2>",
        _minimality_table(data["minimality"]),
        "<h2>Most stable edges</h2>",
        _table(["edge", "inclusion frequency"], [[n, _num(f, ".2f")] for n, f in top]),
        "<h2>Time</h2>",
        _table(["stage", "seconds"], [[k, _num(v, ".1f")] for k, v in data.get("timings_s", {}).items()]),
        f'<script type="application/json" id="report-data">{embed_json(data)}</script>',
    ]
    return (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>"
        f"<style>{_CSS}</style></head><body>{''.join(parts)}</body></html>\n"
    )


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1120px}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:22px 0 6px}.sub{color:#666;margin:0 0 12px}
table{border-collapse:collapse;margin:6px 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
th{background:#f4f4f4}.figs{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0}
figcaption{color:#555;font-size:12px;max-width:520px}.lab{font-size:12px;fill:#333}.tick{font-size:10px;fill:#555}
.grid{stroke:#eee}.ref{stroke:#999;stroke-dasharray:4 3}.target{stroke:#d9822b;stroke-dasharray:2 3}
.cut{stroke:#c23b3b;stroke-dasharray:5 3}
"""
