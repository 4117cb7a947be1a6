// tepo-agent report and dashboard: renders the embedded data (no network, except the live
// dashboard's polling of its own data URL). Every view is drawn from DATA by the functions
// below; the live dashboard replaces DATA and draws again.
(function () {
  "use strict";
  const SVGNS = "http://www.w3.org/2000/svg";
  let DATA = JSON.parse(document.getElementById("report-data").textContent);
  const LIVE = JSON.parse(document.getElementById("report-live").textContent);
  const filters = { version: "", tool: "", minScore: "", text: "" };

  function el(tag, attrs, ...kids) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined) continue;
      if (k === "text") node.textContent = v;
      else if (k === "on") for (const [ev, fn] of Object.entries(v)) node.addEventListener(ev, fn);
      else node.setAttribute(k, v);
    }
    for (const kid of kids.flat()) if (kid !== null && kid !== undefined) node.append(kid);
    return node;
  }
  function sv(tag, attrs, ...kids) {
    const node = document.createElementNS(SVGNS, tag);
    for (const [k, v] of Object.entries(attrs || {})) if (v !== null && v !== undefined) node.setAttribute(k, v);
    for (const kid of kids.flat()) if (kid !== null && kid !== undefined) node.append(kid);
    return node;
  }
  function title(text) { return sv("title", {}, text); }
  function fmt(x, d) {
    if (x === null || x === undefined || Number.isNaN(x)) return "–";
    if (typeof x !== "number") return String(x);
    if (d === undefined && Number.isInteger(x)) return String(x);
    return x.toFixed(d === undefined ? 3 : d);
  }
  function signed(x, d) { return x === null || x === undefined ? "–" : (x > 0 ? "+" : "") + fmt(x, d); }
  function when(t) { return t ? new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19) : "–"; }

  // The same arithmetic as tepo_agent/report/colour.py:entropy_colour.
  function entropyColour(h, top, stops) {
    let t = !Number.isFinite(h) || top <= 0 ? 0 : Math.min(1, Math.max(0, h / top));
    for (let i = 0; i + 1 < stops.length; i++) {
      const [p0, c0] = stops[i], [p1, c1] = stops[i + 1];
      if (t <= p1) {
        const f = (t - p0) / (p1 - p0);
        return c0.map((a, j) => Math.floor(a + (c1[j] - a) * f + 0.5));
      }
    }
    return stops[stops.length - 1][1];
  }
  const rgb = (c) => `rgb(${c[0]}, ${c[1]}, ${c[2]})`;

  function section(id, heading, ...body) {
    return el("section", { id }, el("h2", { text: heading }), ...body);
  }
  function table(head, rows, cls) {
    return el("table", { class: cls || "grid" },
      el("thead", {}, el("tr", {}, head.map((h) => el("th", { text: h })))),
      el("tbody", {}, rows.map((r) => el("tr", {}, r.map((c) => c instanceof Node ? el("td", {}, c) : el("td", { text: c }))))));
  }
  function empty(text) { return el("p", { class: "empty", text }); }

  // -- policy versions ------------------------------------------------------------------------
  const STATE_COLOURS = { candidate: "#8a94a6", live: "#2e7d32", rejected: "#c62828", retired: "#c9ced6" };
  const EVENT_COLOURS = { registered: "#8a94a6", gated: "#1565c0", promoted: "#2e7d32", rejected: "#c62828", retired: "#6b7280", rolled_back: "#7b1fa2" };

  function segments(events, end) {
    const byVersion = new Map();
    for (const e of events) {
      if (!byVersion.has(e.version)) byVersion.set(e.version, []);
      byVersion.get(e.version).push(e);
    }
    const out = [];
    for (const [version, evs] of byVersion) {
      let state = null, since = null;
      for (const e of evs) {
        const next = { registered: "candidate", promoted: "live", rolled_back: "live", rejected: "rejected", retired: "retired" }[e.event];
        if (!next) continue;
        if (state !== null) out.push({ version, state, from: since, to: e.created_at });
        state = next; since = e.created_at;
      }
      if (state !== null) out.push({ version, state, from: since, to: state === "live" || state === "candidate" ? end : since });
    }
    return out;
  }

  function timeline(policies, events) {
    if (!events.length) return empty("No policy events recorded (stores written before policy events existed show the versions' current status only).");
    const versions = [...new Set(policies.map((p) => p.version).concat(events.map((e) => e.version)))].sort((a, b) => a - b);
    // Events are placed in order, evenly spaced (their times are in the tooltips): a run's
    // events come in bursts hours apart, which a linear time axis would squash into dots.
    const times = [...new Set(events.map((e) => e.created_at))].sort((a, b) => a - b);
    const t0 = times[0], end = Infinity;
    const W = 900, lane = 22, left = 48, right = 12, H = versions.length * lane + 30;
    const slot = (W - left - right - 10) / times.length;
    const x = (t) => left + 5 + (t === end ? times.length : times.indexOf(t)) * slot;
    const y = (v) => 8 + versions.indexOf(v) * lane;
    const g = sv("svg", { class: "timeline", viewBox: `0 0 ${W} ${H}`, width: "100%", role: "img" });
    for (const v of versions) g.append(sv("text", { x: 4, y: y(v) + 14, class: "lane" }, `v${v}`));
    for (const s of segments(events, end)) {
      const w = Math.max(3, x(s.to) - x(s.from));
      g.append(sv("rect", { x: x(s.from), y: y(s.version) + 3, width: w, height: lane - 8, rx: 3, fill: STATE_COLOURS[s.state], "data-state": s.state },
        title(`v${s.version} ${s.state} from ${when(s.from)}`)));
    }
    for (const e of events) {
      g.append(sv("circle", { cx: x(e.created_at), cy: y(e.version) + lane / 2 - 1, r: 4.5, fill: EVENT_COLOURS[e.event] || "#000", stroke: "#fff", "stroke-width": 1.2, class: "event", "data-event": e.event },
        title(`v${e.version} ${e.event.replace("_", " ")} at ${when(e.created_at)}` + (Object.keys(e.detail).length ? "\n" + JSON.stringify(e.detail) : ""))));
    }
    g.append(sv("text", { x: left, y: H - 4, class: "axis" }, when(t0)));
    g.append(sv("text", { x: W - right, y: H - 4, class: "axis", "text-anchor": "end" }, "now"));
    const legend = el("div", { class: "legend-row" },
      Object.entries(STATE_COLOURS).map(([k, c]) => el("span", { class: "key" }, el("i", { style: `background:${c}` }), k)),
      Object.entries(EVENT_COLOURS).map(([k, c]) => el("span", { class: "key" }, el("b", { style: `background:${c}` }), k.replace("_", " "))));
    return el("div", {}, g, legend);
  }

  function gateText(gate) {
    const keys = Object.keys(gate || {}).filter((k) => typeof gate[k] === "number");
    return keys.length ? keys.map((k) => `${k.replace(/_/g, " ")} ${fmt(gate[k])}`).join(" · ") : "–";
  }

  function renderPolicies() {
    const stats = new Map(DATA.versions.map((s) => [s.version, s]));
    const rows = DATA.policies.map((p) => {
      const s = stats.get(p.version) || {};
      return [`v${p.version}`, p.parent === null ? "–" : `v${p.parent}`, p.kind,
        el("span", { class: `status ${p.status}`, text: p.status }), gateText(p.gate), p.reason || "",
        fmt(s.runs, 0), fmt(s.score), fmt(s.calls, 2), fmt(s.reducing_share, 2)];
    });
    return section("policies", "Policy versions",
      timeline(DATA.policies, DATA.events),
      DATA.policies.length
        ? table(["version", "parent", "kind", "status", "gate", "reason", "runs", "mean score", "calls/run", "ΔH<0 share"], rows)
        : empty("No policy versions registered yet."));
  }

  // -- training curves ------------------------------------------------------------------------
  function chart(key, label, steps) {
    const pts = steps.filter((s) => typeof s.values[key] === "number").map((s) => [s.step, s.values[key], s.published_version]);
    const W = 300, H = 150, L = 46, R = 8, T = 22, B = 20;
    const g = sv("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, "data-metric": key, role: "img" });
    g.append(sv("text", { x: L, y: 14, class: "chart-title" }, label));
    if (!pts.length) return g;
    const xs = pts.map((p) => p[0]), ys = pts.map((p) => p[1]);
    let [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
    if (x1 === x0) { x0 -= 1; x1 += 1; }
    if (y1 === y0) { y0 -= Math.abs(y0) * 0.1 || 1; y1 += Math.abs(y1) * 0.1 || 1; }
    const X = (v) => L + ((v - x0) / (x1 - x0)) * (W - L - R);
    const Y = (v) => H - B - ((v - y0) / (y1 - y0)) * (H - T - B);
    g.append(sv("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis-line" }));
    g.append(sv("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis-line" }));
    g.append(sv("text", { x: L - 4, y: T + 4, class: "axis", "text-anchor": "end" }, fmt(y1, 3)));
    g.append(sv("text", { x: L - 4, y: H - B, class: "axis", "text-anchor": "end" }, fmt(y0, 3)));
    g.append(sv("text", { x: L, y: H - 6, class: "axis" }, `step ${xs[0]}`));
    g.append(sv("text", { x: W - R, y: H - 6, class: "axis", "text-anchor": "end" }, `step ${xs[xs.length - 1]}`));
    for (const p of pts) if (p[2] !== null && p[2] !== undefined)
      g.append(sv("line", { x1: X(p[0]), y1: T, x2: X(p[0]), y2: H - B, class: "publish" }, title(`v${p[2]} published at step ${p[0]}`)));
    g.append(sv("polyline", { points: pts.map((p) => `${X(p[0]).toFixed(1)},${Y(p[1]).toFixed(1)}`).join(" "), class: "curve" }));
    if (pts.length <= 400) for (const p of pts)
      g.append(sv("circle", { cx: X(p[0]), cy: Y(p[1]), r: 2.4, class: "pt", "data-step": p[0], "data-value": p[1] }, title(`step ${p[0]}: ${p[1]}`)));
    return g;
  }

  function renderCurves() {
    const steps = DATA.train.steps;
    if (!steps.length) return section("training", "Training curves", empty("No train steps recorded yet (tepo-agent train writes one row per step)."));
    return section("training", "Training curves",
      el("p", { class: "note", text: `${steps.length} steps; dashed lines mark steps that published a version.` }),
      el("div", { class: "charts" }, DATA.train.metrics.map(([k, label]) => chart(k, label, steps))));
  }

  // -- evaluations ----------------------------------------------------------------------------
  function evalChart(rows) {
    const pts = rows.filter((r) => typeof r.accuracy === "number");
    if (!pts.length) return null;
    const W = 900, H = 170, L = 46, R = 12, T = 14, B = 24;
    const g = sv("svg", { class: "evalchart", viewBox: `0 0 ${W} ${H}`, width: "100%", role: "img" });
    const Y = (v) => H - B - v * (H - T - B);
    const pad = 60; // room for the first and last labels
    const X = (i) => L + pad + (pts.length === 1 ? (W - L - R - 2 * pad) / 2 : (i / (pts.length - 1)) * (W - L - R - 2 * pad));
    for (const v of [0, 0.5, 1]) {
      g.append(sv("line", { x1: L, x2: W - R, y1: Y(v), y2: Y(v), class: "gridline" }));
      g.append(sv("text", { x: L - 4, y: Y(v) + 4, class: "axis", "text-anchor": "end" }, fmt(v, 1)));
    }
    pts.forEach((r, i) => {
      if (typeof r.low === "number" && typeof r.high === "number")
        g.append(sv("line", { x1: X(i), x2: X(i), y1: Y(r.low), y2: Y(r.high), class: "whisker" }));
      g.append(sv("circle", { cx: X(i), cy: Y(r.accuracy), r: 4, class: "evalpt", "data-version": r.version },
        title(`v${r.version} ${r.label || ""} ${r.suite}: ${fmt(r.accuracy)} [${fmt(r.low)}, ${fmt(r.high)}]`)));
      g.append(sv("text", { x: X(i), y: H - 6, class: "axis", "text-anchor": "middle" }, `v${r.version ?? "?"} ${r.label || ""}`.trim()));
    });
    return g;
  }

  function renderEvaluations() {
    const rows = DATA.evaluations;
    if (!rows.length) return section("evaluation", "Evaluation per version", empty("No evaluations stored (run tepo-agent eval, or let the gate evaluate candidates)."));
    return section("evaluation", "Evaluation per version (accuracy with its 95% interval)",
      evalChart(rows),
      table(["version", "label", "suite", "n", "accuracy", "95% interval", "calls/run", "format errors", "ΔH<0 share", "mean ΔH", "when"],
        rows.map((r) => [`v${r.version ?? "?"}`, r.label || "", r.suite, fmt(r.n, 0), fmt(r.accuracy), `[${fmt(r.low)}, ${fmt(r.high)}]`,
          fmt(r.calls_per_run, 2), fmt(r.format_error_rate), fmt(r.reducing_share, 2), signed(r.mean_delta_entropy), when(r.created_at)])));
  }

  // -- tools ----------------------------------------------------------------------------------
  function renderTools() {
    const rows = DATA.tools;
    if (!rows.length) return section("tools", "Tools", empty("No tool calls recorded yet."));
    return section("tools", "Tools (every stored call)",
      table(["tool", "calls", "errors by kind", "mean ΔH", "ΔH<0 share", "mean latency"],
        rows.map((t) => [t.name, fmt(t.calls, 0),
          Object.entries(t.errors).map(([k, n]) => `${k} ${n}`).join(", ") || "none",
          signed(t.mean_delta_entropy), fmt(t.reducing_share, 2), t.mean_latency_s === null ? "–" : `${fmt(t.mean_latency_s * 1000, 1)} ms`])));
  }

  // -- trajectories ---------------------------------------------------------------------------
  function legend() {
    const { max, stops } = DATA.scale;
    const grad = stops.map(([p, c]) => `${rgb(c)} ${(p * 100).toFixed(0)}%`).join(", ");
    return el("div", { class: "scale", id: "entropy-legend" },
      el("span", { text: "token entropy (nats):" }),
      el("span", { class: "scalebox" },
        el("span", { class: "bar", style: `background: linear-gradient(to right, ${grad})` }),
        el("span", { class: "ticks" }, [0, max / 4, max / 2, (3 * max) / 4, max].map((v) => el("span", { text: fmt(v, 2) })))),
      el("span", { class: "note", text: `(values above ${fmt(max, 2)} share the top colour)` }));
  }

  function tokenSpans(turn) {
    const { max, stops } = DATA.scale;
    return turn.pieces.map((piece, i) => {
      const h = turn.ent[i];
      const c = h === undefined ? [255, 255, 255] : entropyColour(h, max, stops);
      return el("span", { class: "tok", "data-h": h === undefined ? "" : h, style: `background-color: ${rgb(c)}`, title: `H = ${fmt(h, 4)}`, text: piece });
    });
  }

  function turnNode(t) {
    if (t.role === "assistant")
      return el("div", { class: "turn assistant" },
        el("div", { class: "turn-head", text: `assistant · v${t.v ?? "?"} · H̄ ${fmt(t.h)} · ${t.pieces.length} tokens · ${t.finish || "–"}${t.kind && t.kind !== "exact" ? " · " + t.kind : ""}` }),
        el("div", { class: "tokens" }, tokenSpans(t)));
    const dh = t.dh;
    return el("div", { class: "turn tool" + (t.error ? " failed" : "") },
      el("div", { class: "turn-head" },
        el("span", { class: "tool-name", text: `${t.name || "?"}(` }), el("code", { text: t.args === null ? "" : JSON.stringify(t.args) }), ")",
        el("span", { class: "dh " + (dh === null ? "" : dh < 0 ? "down" : "up"), "data-dh": dh, text: ` ΔH ${signed(dh)}` }),
        el("span", { class: "latency", text: t.latency === null ? "" : ` · ${fmt(t.latency * 1000, 1)} ms` }),
        t.error_kind ? el("span", { class: "errkind", text: t.error_kind }) : null),
      el("pre", { class: "result", text: t.error ? t.error : (t.result ?? "") }));
  }

  function trajNode(tr) {
    return el("article", { class: "traj", "data-id": tr.id, "data-version": tr.policy_version },
      el("header", {},
        el("span", { class: "seq", text: `#${tr.seq}` }),
        el("span", { class: "tid", text: tr.id }),
        el("span", { text: `v${tr.policy_version ?? "?"}` }),
        el("span", { class: `status ${tr.status}`, text: tr.status }),
        el("span", { text: `score ${fmt(tr.score, 2)}` }),
        el("span", { text: `reward ${fmt(tr.reward)}` }),
        el("span", { text: `${tr.num_tool_calls} calls` }),
        tr.group_id ? el("span", { class: "group", text: `group ${tr.group_id.slice(0, 8)}` }) : null,
        el("span", { class: "when", text: when(tr.created_at) })),
      el("div", { class: "task", text: tr.task }),
      tr.turns.map(turnNode),
      el("div", { class: "answer", text: `answer: ${tr.answer ?? "(none)"}` }));
  }

  function matches(tr) {
    if (filters.version !== "" && String(tr.policy_version) !== filters.version) return false;
    if (filters.tool && !tr.turns.some((t) => t.role === "tool" && t.name === filters.tool)) return false;
    if (filters.minScore !== "" && !(tr.score !== null && tr.score >= Number(filters.minScore))) return false;
    const haystack = [tr.task, tr.answer || "", tr.id, tr.group_id || ""].join(" ").toLowerCase();
    if (filters.text && !haystack.includes(filters.text.toLowerCase())) return false;
    return true;
  }

  function controls() {
    const versions = [...new Set(DATA.trajectories.map((t) => t.policy_version))].sort((a, b) => a - b);
    const tools = [...new Set(DATA.trajectories.flatMap((t) => t.turns.filter((u) => u.role === "tool").map((u) => u.name)))].sort();
    const rerender = () => { const list = document.getElementById("traj-list"); list.replaceWith(trajList()); };
    const select = (key, label, values) => el("label", {}, label, el("select", { on: { change: (e) => { filters[key] = e.target.value; rerender(); } } },
      el("option", { value: "", text: "all" }), values.map((v) => { const o = el("option", { value: String(v), text: String(v) }); if (String(v) === filters[key]) o.selected = true; return o; })));
    return el("div", { class: "controls" },
      select("version", "version ", versions), select("tool", "tool ", tools),
      el("label", {}, "min score ", el("input", { type: "number", step: "0.1", min: 0, max: 1, value: filters.minScore, on: { input: (e) => { filters.minScore = e.target.value; rerender(); } } })),
      el("label", { title: "task, answer, trajectory id or group id" }, "search ", el("input", { type: "search", value: filters.text, on: { input: (e) => { filters.text = e.target.value; rerender(); } } })));
  }

  function trajList() {
    const shown = DATA.trajectories.filter(matches);
    return el("div", { id: "traj-list" }, shown.length ? shown.map(trajNode) : empty("No trajectory matches."));
  }

  function renderTrajectories() {
    const m = DATA.meta;
    const what = m.trajectory_id ? `trajectory ${m.trajectory_id}, in full` : `the ${DATA.trajectories.length} most recent of ${m.matching ?? m.trajectories} matching (${m.trajectories} stored)`;
    return section("trajectories", "Trajectories",
      el("p", { class: "note", text: `Showing ${what}. Each assistant token is coloured by its entropy; each tool call shows its arguments, result, latency and ΔH (green: the call made the model surer).` }),
      legend(), controls(), trajList());
  }

  function renderHeader() {
    const m = DATA.meta;
    return el("header", { id: "top" },
      el("h1", { text: m.title }),
      el("div", { class: "meta" },
        el("span", { text: `${m.db}` }), el("span", { text: `${m.trajectories} trajectories` }),
        el("span", { text: `${DATA.train.steps.length} train steps` }), el("span", { text: `${DATA.policies.length} policy versions` }),
        el("span", { id: "generated", text: `${LIVE ? "live, updated" : "generated"} ${when(m.generated_at)} UTC` })),
      el("nav", {}, [["policies", "Versions"], ["training", "Training"], ["evaluation", "Evaluation"], ["tools", "Tools"], ["trajectories", "Trajectories"]]
        .map(([id, label]) => el("a", { href: `#${id}`, text: label }))));
  }

  function renderAll() {
    const root = document.getElementById("app");
    const y = window.scrollY;
    root.replaceChildren(renderHeader(), renderPolicies(), renderCurves(), renderEvaluations(), renderTools(), renderTrajectories());
    document.body.dataset.stamp = DATA.meta.stamp;
    window.scrollTo(0, y);
  }

  async function poll() {
    try {
      const res = await fetch(`${LIVE.data_url}?stamp=${encodeURIComponent(DATA.meta.stamp)}`, { credentials: "same-origin", cache: "no-store" });
      if (res.status === 200) { DATA = await res.json(); renderAll(); }
      else if (res.status === 401) { window.location.reload(); return; }
    } catch (err) { /* the server is restarting: try again at the next tick */ }
    setTimeout(poll, LIVE.interval_ms);
  }

  renderAll();
  if (LIVE) setTimeout(poll, LIVE.interval_ms);
})();
