// circuitfind circuit explorer: hand-written SVG, no library. Reads the JSON in #circuit-data (layout in
// circuitfind/viewer/payload.py) and draws the top-k edges by score, the faithfulness curve and node panels.
"use strict";
(function () {
  const D = JSON.parse(document.getElementById("circuit-data").textContent);
  const NS = "http://www.w3.org/2000/svg";
  const L = D.graph.n_layers, H = D.graph.n_heads, PARALLEL = D.graph.parallel;
  const NODES = D.graph.nodes, RECV = D.graph.receivers; // names, kinds and places as circuitfind/graph.py makes them
  const S = NODES.name.length - 1; // senders; node index S is the logits
  const E = D.edges, NE = E.s.length, NR = E.n_ranked;
  const $ = (id) => document.getElementById(id);

  // --- names and the layout of the graph: read from the payload, never recomputed here ---------------------------
  function nodeKind(i) { return NODES.kind[i]; }
  const nodeNames = NODES.name;
  const nodeIndex = new Map(nodeNames.map((n, i) => [n, i]));
  const recvNode = new Int32Array(NE), recvChan = [];
  const edgeNames = [];
  for (let e = 0; e < NE; e++) {
    recvNode[e] = RECV.node[E.r[e]];
    recvChan.push(RECV.channel[E.r[e]]);
    // graph.py's edge name (sender->receiver), and its position_edge_name for a position-aware circuit
    edgeNames.push(nodeNames[E.s[e]] + "->" + RECV.name[E.r[e]] + (E.at ? "@" + E.at[e] : ""));
  }

  const W = 1000, ROW = 46, PAD = 40, MLPW = 70;
  const rows = L + 2;
  const HEIGHT = rows * ROW;
  const colW = (W - 2 * PAD - MLPW) / H;
  function rowY(row) { return HEIGHT - ROW / 2 - row * ROW; } // row 0 (input) at the bottom
  const pos = [];
  for (let i = 0; i <= S; i++) {
    const kind = nodeKind(i);
    if (kind === "input") pos.push({ x: W / 2, y: rowY(0) });
    else if (kind === "logits") pos.push({ x: W / 2, y: rowY(L + 1) });
    else {
      const layer = NODES.layer[i], j = NODES.head[i];
      if (kind === "head") pos.push({ x: PAD + (j + 0.5) * colW, y: rowY(layer + 1) });
      else pos.push({ x: W - PAD - MLPW / 2, y: rowY(layer + 1) - (PARALLEL ? 0 : ROW * 0.42) });
    }
  }
  const HR = 10; // head radius
  function half(i) { return nodeKind(i) === "head" ? HR : 8; } // half height of a node
  function portX(e) {
    const n = recvNode[e], c = recvChan[e];
    return pos[n].x + (c === "q" ? -7 : c === "v" ? 7 : 0);
  }

  // --- state ----------------------------------------------------------------------------------------------------
  const state = { k: 1, mode: "topk", prune: true, drawn: [], selected: null };
  const maxK = Math.max(1, NR);
  const fromInput = D.ranking.from_input;

  function pruneDangling(idx) {
    // The same rule as circuitfind.selection.prune_dangling: keep an edge when its receiver's node has a kept
    // path on to the logits and (resample ablation) its sender has one from the input. Node indices follow
    // the residual stream, so one pass up and one pass down suffice.
    const incoming = Array.from({ length: S + 1 }, () => []);
    const outgoing = Array.from({ length: S + 1 }, () => []);
    for (const e of idx) { incoming[recvNode[e]].push(e); outgoing[E.s[e]].push(e); }
    const reached = new Uint8Array(S + 1);
    reached[0] = 1;
    for (let n = 1; n < S; n++) reached[n] = incoming[n].some((e) => reached[E.s[e]]) ? 1 : 0;
    const alive = new Uint8Array(S + 1);
    alive[S] = 1;
    for (let n = S - 1; n >= 0; n--) alive[n] = outgoing[n].some((e) => alive[recvNode[e]]) ? 1 : 0;
    return idx.filter((e) => alive[recvNode[e]] && (!fromInput || reached[E.s[e]]));
  }

  function currentEdges() {
    let idx;
    if (state.mode === "saved") idx = D.kept.slice();
    else { idx = []; for (let e = 0; e < Math.min(state.k, NR); e++) idx.push(e); }
    return state.prune && state.mode !== "saved" ? pruneDangling(idx) : idx;
  }

  // --- formatting ------------------------------------------------------------------------------------------------
  function fmt(x, digits) {
    if (x === null || x === undefined || Number.isNaN(x)) return "–";
    const d = digits || 4;
    if (x !== 0 && (Math.abs(x) < 1e-3 || Math.abs(x) >= 1e5)) return x.toExponential(d - 1);
    return Number(x.toPrecision(d)).toString();
  }
  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function svg(tag, attrs, text) {
    const node = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }
  // with a stability report: edges coloured by the fraction of resamples that kept them (grey 0 -> green 1)
  const FREQ = E.frequency || null;
  function freqColour(f) {
    const t = Math.max(0, Math.min(1, f || 0));
    const mix = (a, b) => Math.round(a + (b - a) * t);
    return "rgb(" + mix(200, 20) + "," + mix(200, 140) + "," + mix(200, 60) + ")";
  }
  if (FREQ) {
    const note = el("span", { id: "freq-legend" }, "colour: inclusion frequency over the stability resamples (grey 0, green 1)");
    document.getElementById("legend").appendChild(note);
  }
  const metricName = D.circuit.metric;
  const higherBetter = metricName !== "kl";
  function effectText(score) {
    if (score === null) return "not scored";
    // scores are loss changes when the edge alone is removed; task metrics are minimised negated
    const exact = ["acdc", "acdc-plain", "exact"].includes(D.circuit.method) ? "exact" : "first-order estimate";
    const change = higherBetter ? -score : score;
    return metricName + " changes by " + fmt(change) + " when removed (" + exact + ")";
  }

  // --- tooltip ---------------------------------------------------------------------------------------------------
  const tip = $("tooltip");
  function showTip(evt, lines) {
    tip.replaceChildren();
    lines.forEach((line, i) => tip.appendChild(el(i === 0 ? "b" : "div", {}, line)));
    tip.hidden = false;
    tip.style.left = Math.min(evt.clientX + 14, window.innerWidth - 430) + "px";
    tip.style.top = evt.clientY + 12 + "px";
  }
  function hideTip() { tip.hidden = true; }

  // --- the graph -------------------------------------------------------------------------------------------------
  const g = $("graph");
  g.setAttribute("viewBox", "0 0 " + W + " " + HEIGHT);
  let zoom = 1;
  function applyZoom() { g.style.width = 100 * zoom + "%"; }
  const edgeLayer = svg("g", { id: "edges" });
  const nodeLayer = svg("g", { id: "nodes" });
  for (let layer = 0; layer < L; layer++) g.appendChild(svg("text", { x: 4, y: rowY(layer + 1) + 3, class: "layer" }, "L" + layer));
  g.appendChild(edgeLayer);
  g.appendChild(nodeLayer);
  const nodeEls = [];
  for (let i = 0; i <= S; i++) {
    const kind = nodeKind(i), p = pos[i];
    const cls = kind === "head" && D.classes ? D.classes["class"][headIndex(i)] : "";
    const grp = svg("g", { class: "node off " + kind + (cls ? " cls-" + cls : ""), "data-name": nodeNames[i], transform: "translate(" + p.x + "," + p.y + ")" });
    let label = nodeNames[i];
    if (kind === "head") {
      grp.appendChild(svg("circle", { r: HR, class: "shape" }));
      label = label.slice(1).replace(".h", ".");
      for (const dx of [-7, 0, 7]) grp.appendChild(svg("circle", { cx: dx, cy: HR, r: 1.4, class: "port" }));
    } else {
      const w = kind === "mlp" ? 34 : 70;
      grp.appendChild(svg("rect", { x: -w / 2, y: -8, width: w, height: 16, rx: 3, class: "shape" }));
    }
    grp.appendChild(svg("text", {}, label));
    grp.addEventListener("click", (evt) => { evt.stopPropagation(); selectNode(nodeNames[i]); });
    grp.addEventListener("mousemove", (evt) => showTip(evt, nodeTip(i)));
    grp.addEventListener("mouseleave", hideTip);
    nodeLayer.appendChild(grp);
    nodeEls.push(grp);
  }
  g.addEventListener("click", () => selectNode(null));
  (function extraLegend() { // the two-model view and the IOI head classes add their own keys
    const lg = $("legend");
    const key = (cls, text, shape) => {
      const sw = shape === "dot" ? '<svg width="12" height="12"><circle cx="6" cy="6" r="5" class="lgdot ' + cls + '"/></svg>'
        : '<svg width="34" height="10"><line x1="1" y1="5" x2="33" y2="5" class="lg pos ' + cls + '"/></svg>';
      const span = document.createElement("span");
      span.innerHTML = sw + " ";
      span.appendChild(document.createTextNode(text));
      lg.appendChild(span);
    };
    if (D.diff) {
      key("side-a", "only in A (" + D.diff.model_a + ")");
      key("side-b", "only in B (" + D.diff.model_b + ")");
      key("side-ab", "in both (Jaccard " + fmt(D.diff.jaccard, 3) + ")");
    }
    if (D.classes) for (const c of new Set(D.classes["class"])) if (c) key("cls-" + c, c.replace(/_/g, " "), "dot");
  })();

  function nodeTip(i) {
    const lines = [nodeNames[i]];
    if (D.direct && i < S) lines.push("direct effect on logit diff: " + fmt(D.direct.mean[i]));
    if (D.classes && nodeKind(i) === "head") lines.push("IOI class: " + (D.classes["class"][headIndex(i)] || "none").replace(/_/g, " "));
    if (D.diff && i < S) {
      lines.push("weights ||A - B||: " + fmt(D.diff.weight[i], 3) + " (relative " + fmt(D.diff.weight_rel[i], 3) + ")");
      lines.push("output ||A - B|| per token: " + fmt(D.diff.activation[i], 3) + " (relative " + fmt(D.diff.activation_rel[i], 3) + ")");
    }
    if (D.roles && nodeKind(i) === "head") {
      const h = headIndex(i);
      for (const c of Object.keys(D.roles.scores)) lines.push(c.replace("_", " ") + ": " + fmt(D.roles.scores[c][h], 3));
    }
    return lines;
  }

  function draw() {
    const idx = currentEdges();
    state.drawn = idx;
    let top = 0;
    for (const e of idx) if (E.score[e] !== null) top = Math.max(top, Math.abs(E.score[e]));
    const frag = document.createDocumentFragment();
    const active = new Uint8Array(S + 1);
    for (const e of idx) {
      const s = E.s[e], n = recvNode[e];
      active[s] = 1; active[n] = 1;
      const x1 = pos[s].x, y1 = pos[s].y - half(s), x2 = portX(e), y2 = pos[n].y + half(n);
      const ym = (y1 + y2) / 2;
      const sc = E.score[e];
      const width = top > 0 && sc !== null ? 0.7 + 4.3 * Math.abs(sc) / top : 0.7;
      const path = svg("path", {
        d: "M" + x1 + " " + y1 + "C" + x1 + " " + ym + "," + x2 + " " + ym + "," + x2 + " " + y2,
        class: "edge " + (sc !== null && sc < 0 ? "neg" : "pos") + (recvChan[e] ? " ch-" + recvChan[e] : "") + (D.diff && D.diff.side[e] ? " side-" + D.diff.side[e] : ""),
        "stroke-width": width.toFixed(2),
        ...(FREQ ? { style: "stroke:" + freqColour(FREQ[e]) } : {}),
        "data-name": edgeNames[e],
        "data-i": e,
      });
      frag.appendChild(path);
    }
    edgeLayer.replaceChildren(frag);
    for (let i = 0; i <= S; i++) nodeEls[i].classList.toggle("off", !active[i]);
    const ranked = state.mode === "saved" ? "saved circuit" : "top " + state.k;
    const hidden = state.mode === "saved" ? 0 : Math.min(state.k, NR) - idx.length;
    $("drawn-label").textContent = ranked + ": " + idx.length + " edges drawn" + (hidden ? " (" + hidden + " dangling hidden)" : "");
    $("k-label").textContent = state.mode === "saved" ? "–" : String(state.k);
    highlight();
    drawCurveMarker();
  }

  edgeLayer.addEventListener("mousemove", (evt) => {
    const t = evt.target;
    if (!t.dataset || t.dataset.i === undefined) return;
    const e = Number(t.dataset.i);
    const rank = e < NR ? "rank " + (e + 1) + " of " + D.ranking.n_scored.toLocaleString() : "kept, below the embedded ranking";
    const lines = [edgeNames[e], "score " + fmt(E.score[e]) + " (" + rank + ")", effectText(E.score[e])];
    if (FREQ) lines.push("kept in " + Math.round(100 * (FREQ[e] || 0)) + "% of the stability resamples");
    showTip(evt, lines);
  });
  edgeLayer.addEventListener("mouseleave", hideTip);

  // --- paths through the selected node ------------------------------------------------------------------------
  function highlight() {
    const paths = edgeLayer.children;
    const sel = state.selected === null ? null : nodeIndex.get(state.selected);
    nodeEls.forEach((n, i) => { n.classList.remove("dim"); n.classList.toggle("sel", i === sel); });
    if (sel === null || sel === undefined) {
      for (const p of paths) p.classList.remove("dim", "hl");
      return;
    }
    const up = new Uint8Array(S + 1), down = new Uint8Array(S + 1);
    up[sel] = 1; down[sel] = 1;
    const idx = state.drawn;
    // ancestors: nodes with a drawn path into sel (receivers first, highest node index down)
    const byRecv = idx.slice().sort((a, b) => recvNode[b] - recvNode[a]);
    for (const e of byRecv) if (up[recvNode[e]]) up[E.s[e]] = 1;
    const bySend = idx.slice().sort((a, b) => E.s[a] - E.s[b]);
    for (const e of bySend) if (down[E.s[e]]) down[recvNode[e]] = 1;
    const onPath = new Uint8Array(S + 1);
    for (let i = 0; i <= S; i++) onPath[i] = up[i] || down[i];
    for (const p of paths) {
      const e = Number(p.dataset.i);
      const on = up[recvNode[e]] || down[E.s[e]];
      p.classList.toggle("hl", !!on);
      p.classList.toggle("dim", !on);
    }
    nodeEls.forEach((n, i) => n.classList.toggle("dim", !onPath[i] && !n.classList.contains("off")));
  }

  // --- the faithfulness curve ---------------------------------------------------------------------------------
  const probes = (D.circuit.probes || []).filter((p) => p.k > 0 && p.faithfulness !== null).sort((a, b) => a.k - b.k);
  const curve = $("curve");
  const CW = 360, CH = 190, CL = 38, CR = 10, CT = 10, CB = 28;
  const kMax = Math.max(maxK, ...probes.map((p) => p.k), 2);
  const fVals = probes.map((p) => p.faithfulness);
  const fMin = Math.min(0, ...fVals), fMax = Math.max(1.05, ...fVals);
  function cx(k) { return CL + (Math.log(Math.max(k, 1)) / Math.log(kMax)) * (CW - CL - CR); }
  function cy(f) { return CH - CB - ((f - fMin) / (fMax - fMin)) * (CH - CT - CB); }
  let marker = null;
  function drawCurve() {
    curve.replaceChildren();
    curve.appendChild(svg("line", { x1: CL, y1: CH - CB, x2: CW - CR, y2: CH - CB, class: "axis" }));
    curve.appendChild(svg("line", { x1: CL, y1: CT, x2: CL, y2: CH - CB, class: "axis" }));
    for (let k = 1; k <= kMax; k *= 10) {
      curve.appendChild(svg("text", { x: cx(k), y: CH - CB + 12, class: "tick", "text-anchor": "middle" }, k.toLocaleString()));
    }
    curve.appendChild(svg("text", { x: (CL + CW) / 2, y: CH - 3, class: "tick", "text-anchor": "middle" }, "top-k edges (log)"));
    for (const f of [0, 0.5, 1]) {
      curve.appendChild(svg("text", { x: CL - 4, y: cy(f) + 3, class: "tick", "text-anchor": "end" }, String(f)));
    }
    if (D.circuit.target !== null && D.circuit.target !== undefined) {
      curve.appendChild(svg("line", { x1: CL, x2: CW - CR, y1: cy(D.circuit.target), y2: cy(D.circuit.target), class: "target" }));
    }
    if (probes.length) {
      curve.appendChild(svg("polyline", { points: probes.map((p) => cx(p.k) + "," + cy(p.faithfulness)).join(" "), class: "probe-line" }));
      for (const p of probes) {
        const dot = svg("circle", { cx: cx(p.k), cy: cy(p.faithfulness), r: 3, class: "probe" });
        dot.addEventListener("mousemove", (evt) => showTip(evt, ["top " + p.k + " edges", "faithfulness " + fmt(p.faithfulness), (p.n_edges_after_prune ?? "?") + " edges after pruning dangling ones"]));
        dot.addEventListener("mouseleave", hideTip);
        dot.addEventListener("click", () => setK(p.k));
        curve.appendChild(dot);
      }
    }
    marker = svg("line", { y1: CT, y2: CH - CB, class: "marker" });
    curve.appendChild(marker);
  }
  function drawCurveMarker() {
    if (!marker) return;
    const k = state.mode === "saved" ? (D.circuit.k || D.circuit.n_edges) : state.k;
    marker.setAttribute("x1", cx(k));
    marker.setAttribute("x2", cx(k));
    const note = $("curve-note");
    if (!probes.length) {
      note.textContent = "This run measured no faithfulness curve (it was not cut by a target); the marker shows the size.";
      return;
    }
    const at = probes.find((p) => p.k === k);
    note.textContent = at ? "measured at top " + k + ": faithfulness " + fmt(at.faithfulness) : "top " + k + " was not measured; the dots are the run's probes (click one to go there).";
  }

  // --- panels -----------------------------------------------------------------------------------------------------
  function table(rowsData, head) {
    const t = el("table");
    if (head) { const tr = el("tr"); head.forEach((h) => tr.appendChild(el("th", {}, h))); t.appendChild(tr); }
    for (const row of rowsData) {
      const tr = el("tr");
      row.forEach((cell) => tr.appendChild(typeof cell === "number" ? el("td", { class: "num" }, fmt(cell)) : el("td", {}, cell === null || cell === undefined ? "–" : String(cell))));
      t.appendChild(tr);
    }
    return t;
  }
  function circuitPanel() {
    const p = $("circuit-panel"), c = D.circuit;
    p.replaceChildren();
    p.appendChild(el("h2", {}, "run"));
    const cfg = c.config || {};
    p.appendChild(table([
      ["model", D.model || "–"], ["method", c.method], ["task", cfg.task ?? (D.task ? D.task.name : "–")],
      ["metric", c.metric], ["ablation", cfg.ablation ?? "–"], ["prompts", cfg.n_prompts ?? "–"],
      ["edges kept", c.n_edges.toLocaleString() + " of " + D.graph.n_edges.toLocaleString()],
    ]));
    p.appendChild(el("h2", {}, "metrics (discovery prompts)"));
    p.appendChild(table([
      ["full model", c.metric_full], ["empty circuit", c.metric_empty], ["circuit", c.metric_circuit],
      ["recovered", c.recovered === null ? "–" : (100 * c.recovered).toFixed(1) + "%"],
    ]));
    if (c.trace && c.trace.length) {
      p.appendChild(el("h2", {}, "ACDC trace (metric after each layer of receivers)"));
      const keys = Object.keys(c.trace[0]);
      p.appendChild(table(c.trace.map((t) => keys.map((k) => t[k])), keys));
    }
    if (D.task && D.task.prompts.length) {
      p.appendChild(el("h2", {}, "task prompts (" + D.task.prompts.length + ")"));
      const t = table(D.task.prompts.map((q) => [q.clean, q.corrupted || "–", q.answers.join(" | "), q.wrong.join(" | ")]), ["clean", "corrupted", "answer", "wrong"]);
      t.classList.add("prompt-list");
      p.appendChild(t);
    } else {
      p.appendChild(el("p", { class: "muted" }, "No model data embedded: write the file with a model and a task to see prompts, attention patterns, direct effects and head roles."));
    }
    const st = c.stats || {};
    const keys = Object.keys(st).filter((k) => typeof st[k] !== "object");
    if (keys.length) { p.appendChild(el("h2", {}, "run statistics")); p.appendChild(table(keys.map((k) => [k, st[k]]))); }
  }

  function headIndex(i) { return NODES.layer[i] * H + NODES.head[i]; } // layer-major, as the roles and classes tables
  const patternCache = new Map();
  function patternBytes(p) {
    if (!patternCache.has(p)) {
      const bin = atob(D.attention.data[p]);
      const bytes = new Uint8Array(bin.length);
      for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
      patternCache.set(p, bytes);
    }
    return patternCache.get(p);
  }
  let promptIndex = 0;
  function heatmap(i, box) {
    box.replaceChildren();
    const prompt = D.task.prompts[promptIndex];
    const toks = prompt.tokens, n = toks.length, tri = (n * (n + 1)) / 2;
    const bytes = patternBytes(promptIndex);
    const base = headIndex(i) * tri;
    const cell = Math.max(8, Math.min(18, Math.floor(300 / n)));
    const left = 70, topPad = 70;
    const hm = svg("svg", { id: "heatmap", width: left + n * cell + 6, height: topPad + n * cell + 6 });
    for (let q = 0; q < n; q++) {
      hm.appendChild(svg("text", { x: left - 3, y: topPad + q * cell + cell / 2 + 3, "text-anchor": "end", class: "tok" }, toks[q]));
      const tx = left + q * cell + cell / 2, ty = topPad - 3;
      hm.appendChild(svg("text", { x: tx, y: ty, transform: "rotate(-60 " + tx + " " + ty + ")", class: "tok" }, toks[q]));
      for (let k = 0; k <= q; k++) {
        const v = bytes[base + (q * (q + 1)) / 2 + k] / 255;
        const r = svg("rect", { x: left + k * cell, y: topPad + q * cell, width: cell, height: cell, class: "cell", fill: "rgb(" + Math.round(255 - 222 * v) + "," + Math.round(255 - 153 * v) + "," + Math.round(255 - 83 * v) + ")" });
        r.addEventListener("mousemove", (evt) => showTip(evt, [JSON.stringify(toks[q]) + " \u2192 " + JSON.stringify(toks[k]), "attention " + v.toFixed(3)]));
        r.addEventListener("mouseleave", hideTip);
        hm.appendChild(r);
      }
    }
    hm.appendChild(svg("rect", { x: left, y: topPad + prompt.answer_pos * cell, width: n * cell, height: cell, class: "answer-row" }));
    box.appendChild(hm);
  }

  function nodePanel(name) {
    const p = $("node-panel");
    p.replaceChildren();
    const i = nodeIndex.get(name), kind = nodeKind(i);
    p.appendChild(el("h2", { id: "node-title" }, name + (kind === "head" ? " (layer " + name.split(".")[0].slice(1) + ", head " + name.split(".h")[1] + ")" : "")));
    const ins = state.drawn.filter((e) => recvNode[e] === i), outs = state.drawn.filter((e) => E.s[e] === i);
    p.appendChild(el("div", {}, ins.length + " incoming and " + outs.length + " outgoing edges drawn"));
    if (D.direct && i < S) {
      p.appendChild(el("h3", {}, "direct effect on the logit difference"));
      const m = D.direct.mean[i];
      p.appendChild(el("div", {}, "mean over " + D.direct.per_prompt[i].length + " prompts: " + fmt(m) + (promptIndex < D.direct.per_prompt[i].length ? "; this prompt: " + fmt(D.direct.per_prompt[i][promptIndex]) : "")));
      p.appendChild(el("div", { class: "muted" }, "its output at the answer position through the final norm (scale frozen at the full run's) and the unembedding"));
    }
    if (kind === "head" && D.roles) {
      p.appendChild(el("h3", {}, "head roles"));
      const h = headIndex(i), rowsData = [];
      for (const [c, vals] of Object.entries(D.roles.scores)) {
        const v = vals[h];
        const rank = v === null ? null : 1 + vals.filter((x) => x !== null && x > v).length;
        rowsData.push([c.replace("_", " "), v === null ? null : v, rank === null ? "–" : "#" + rank + " of " + vals.length]);
      }
      const t = table(rowsData, ["role", "score", "rank"]);
      Object.values(D.roles.columns).forEach((doc, r) => { t.rows[r + 1].title = doc; });
      p.appendChild(t);
    }
    if (kind === "head" && D.attention && D.task.prompts.length) {
      p.appendChild(el("h3", {}, "attention on the task prompts (rows: query, columns: key; the metric's row outlined)"));
      const nav = el("div");
      const prev = el("button", { type: "button", id: "prev-prompt" }, "\u25c0");
      const next = el("button", { type: "button", id: "next-prompt" }, "\u25b6");
      const sel = el("select", { id: "prompt-select" });
      D.task.prompts.forEach((q, j) => sel.appendChild(el("option", { value: j }, j + 1 + ": " + q.clean.slice(0, 60))));
      sel.value = String(promptIndex);
      nav.append(prev, " ", sel, " ", next);
      p.appendChild(nav);
      const box = el("div", { id: "heatmap-box" });
      p.appendChild(box);
      const go = (j) => { promptIndex = (j + D.task.prompts.length) % D.task.prompts.length; sel.value = String(promptIndex); heatmap(i, box); };
      prev.addEventListener("click", () => go(promptIndex - 1));
      next.addEventListener("click", () => go(promptIndex + 1));
      sel.addEventListener("change", () => go(Number(sel.value)));
      heatmap(i, box);
    }
    const list = (title, es) => {
      if (!es.length) return;
      p.appendChild(el("h3", {}, title));
      const sorted = es.slice().sort((a, b) => Math.abs(E.score[b] ?? 0) - Math.abs(E.score[a] ?? 0)).slice(0, 12);
      p.appendChild(table(sorted.map((e) => [edgeNames[e], E.score[e]]), ["edge", "score"]));
    };
    list("strongest incoming edges", ins);
    list("strongest outgoing edges", outs);
  }

  function showTab(which) {
    $("circuit-panel").hidden = which !== "circuit";
    $("node-panel").hidden = which !== "node";
    $("tab-circuit").classList.toggle("active", which === "circuit");
    $("tab-node").classList.toggle("active", which === "node");
  }
  $("tab-circuit").addEventListener("click", () => showTab("circuit"));
  $("tab-node").addEventListener("click", () => showTab("node"));

  function selectNode(name) {
    state.selected = name;
    highlight();
    if (name !== null) { nodePanel(name); showTab("node"); }
  }

  // --- controls ---------------------------------------------------------------------------------------------------
  const slider = $("size");
  slider.max = String(maxK);
  let pending = false;
  function setK(k) {
    state.k = Math.max(1, Math.min(maxK, Math.round(k)));
    state.mode = "topk";
    slider.value = String(state.k);
    draw();
  }
  slider.addEventListener("input", () => {
    state.k = Number(slider.value);
    state.mode = "topk";
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => { pending = false; draw(); });
  });
  $("prune").addEventListener("change", (evt) => { state.prune = evt.target.checked; draw(); });
  $("saved").textContent = "saved circuit (" + D.kept.length + " edges)";
  $("saved").addEventListener("click", () => { state.mode = "saved"; draw(); });
  $("zoom-in").addEventListener("click", () => { zoom = Math.min(6, zoom * 1.4); applyZoom(); });
  $("zoom-out").addEventListener("click", () => { zoom = Math.max(0.2, zoom / 1.4); applyZoom(); });
  $("zoom-fit").addEventListener("click", () => {
    const wrap = $("graph-wrap");
    zoom = Math.min(1, wrap.clientHeight / ((wrap.clientWidth * HEIGHT) / W));
    applyZoom();
  });

  const c = D.circuit;
  $("summary").textContent = (D.model ? D.model + " · " : "") + (c.method || "circuit") + " · " + c.n_edges.toLocaleString() + " of " +
    D.graph.n_edges.toLocaleString() + " edges kept · " + c.metric + ": full " + fmt(c.metric_full) + ", circuit " + fmt(c.metric_circuit) +
    ", empty " + fmt(c.metric_empty) + (c.recovered === null ? "" : " (recovers " + Math.round(100 * c.recovered) + "%)") +
    " · slider: top " + maxK.toLocaleString() + " of " + D.ranking.n_scored.toLocaleString() + " scored edges embedded";

  // the starting size: the cut the run made (its k), else the saved circuit's size
  const k0 = c.k && c.k <= maxK ? c.k : Math.min(Math.max(c.n_edges, 1), maxK);
  state.k = k0;
  slider.value = String(k0);
  drawCurve();
  circuitPanel();
  applyZoom();
  draw();

  window.circuitExplorer = {
    ready: true,
    loadMs: performance.now(),
    maxK: maxK,
    setK: setK,
    setPrune: (on) => { $("prune").checked = on; state.prune = on; draw(); },
    showSaved: () => { state.mode = "saved"; draw(); },
    drawnEdgeNames: () => Array.from(edgeLayer.children, (p) => p.dataset.name),
    selectNode: selectNode,
    state: state,
  };
  document.body.dataset.ready = "1";
})();
