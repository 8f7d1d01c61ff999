"""The live KV monitor's browser side: the kernel sends numbers (kv_view.py), this draws them.

Five small SVG charts of the last window (KV usage with an axis scaled to what was
used, running and waiting requests, tokens/s, prefix-cache hit rate, preemptions)
and a canvas with one square per KV block, coloured by the request holding it;
hovering a square names its request(s) and whether it is shared or a cached prefix.
Each chart's SVG carries data-chart and data-ymax (its axis top), for tests. Nothing
is fetched; watchKernel (widget_js.py) marks a monitor whose kernel went away.
"""

from nbllm.views.widget_js import WATCH_KERNEL_JS

KV_MONITOR_CSS = """
.nbllm-kvm { font: 12px/1.4 var(--jp-ui-font-family, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif);
  color: var(--jp-ui-font-color1, #222); }
.nbllm-kvm-head { margin: 2px 0 4px; }
.nbllm-kvm-charts { display: flex; flex-wrap: wrap; gap: 4px 12px; }
.nbllm-kvm-chart text { font: 10px sans-serif; fill: #666; }
.nbllm-kvm-legend { margin: 4px 0 2px; color: #444; }
.nbllm-kvm-legend span { display: inline-block; margin-right: 12px; white-space: nowrap; }
.nbllm-kvm-legend i { display: inline-block; width: 10px; height: 10px; margin-right: 4px; vertical-align: -1px;
  border-radius: 2px; }
.nbllm-kvm-grid { border: 1px solid #ccc; display: block; cursor: crosshair; }
.nbllm-kvm-note { color: #666; margin-top: 2px; }
.nbllm-kvm-note.nbllm-error { color: #b00020; }
.nbllm-is-dead > :not(.nbllm-dead) { opacity: 0.45; pointer-events: none; }
.nbllm-kvm-tip { position: fixed; z-index: 10000; pointer-events: none; background: #fff; color: #111;
  border: 1px solid #888; border-radius: 4px; padding: 3px 6px; box-shadow: 0 2px 8px rgba(0,0,0,.25);
  font: 11px/1.4 "DejaVu Sans Mono", Menlo, Consolas, monospace; white-space: pre; }
"""

KV_MONITOR_ESM = WATCH_KERNEL_JS + """
const OWNER_COLOURS = ["#1f77b4", "#ff7f0e", "#9467bd", "#d62728", "#8c564b", "#e377c2", "#17becf",
                       "#bcbd22", "#393b79", "#7f7f7f"];
const FREE = -1, CACHED = -2, USED = -3;
const SERIES_KEYS = ["ts", "usage", "running", "waiting", "tokens_per_s", "hit_rate", "preemptions"];
const STATE_COLOURS = { [FREE]: "#e6e6e6", [CACHED]: "#a5d6a7", [USED]: "#607d8b" };
const blockColour = (code) => code >= 0 ? OWNER_COLOURS[code % OWNER_COLOURS.length] : STATE_COLOURS[code];
const esc = (text) => String(text).replace(/[&<>"']/g, (c) => "&#" + c.charCodeAt(0) + ";");
const fmt = (v, digits) => Number(v).toLocaleString("en-US", { maximumFractionDigits: digits });

function niceCeiling(value) {
  if (!(value > 0)) return 1;
  const power = Math.pow(10, Math.floor(Math.log10(value)));
  for (const m of [1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) if (m * power >= value - 1e-12) return m * power;
  return 10 * power;
}

// One small chart: step lines over the window (a sample holds until the next), y from 0 to yMax.
function chart(name, title, t, lines, { span, yMax, unit = "", thresholds = [], width = 250, height = 86 }) {
  const left = 40, top = 16, w = width - left - 6, h = height - top - 14;
  const x = (s) => left + w * (1 + s / span);
  const y = (v) => top + h * (1 - Math.min(v, yMax) / yMax);
  const label = (v) => fmt(v, yMax < 2 ? 2 : yMax < 20 ? 1 : 0) + unit;
  const parts = [`<svg class="nbllm-kvm-chart" data-chart="${name}" data-ymax="${yMax}" width="${width}" ` +
                 `height="${height}" xmlns="http://www.w3.org/2000/svg">`,
                 `<text x="${left}" y="11" style="font-weight:600;fill:#333">${esc(title)}</text>`,
                 `<rect x="${left}" y="${top}" width="${w}" height="${h}" fill="none" stroke="#ccc"/>`];
  for (const v of [0, yMax / 2, yMax]) {
    parts.push(`<text x="${left - 3}" y="${y(v) + 3}" text-anchor="end">${esc(label(v))}</text>`);
  }
  for (const [v, colour] of thresholds) {
    if (v <= yMax) parts.push(`<line x1="${left}" x2="${left + w}" y1="${y(v)}" y2="${y(v)}" stroke="${colour}" ` +
                              `stroke-dasharray="4 3"/>`);
  }
  for (const line of lines) {
    let path = "", pen = false, last = null;
    line.values.forEach((v, i) => {
      if (v === null || v === undefined) { pen = false; return; }
      const px = x(t[i]).toFixed(1), py = y(v).toFixed(1);
      if (pen) path += `H${px}V${py}`; else path += `M${px} ${py}`;
      pen = true;
      last = py;
    });
    if (pen) path += `H${x(0).toFixed(1)}`;
    if (path) parts.push(`<path d="${path}" fill="none" stroke="${line.colour}" stroke-width="1.5"` +
                         (line.dash ? ` stroke-dasharray="${line.dash}"` : "") + `/>`);
  }
  parts.push(`<text x="${left}" y="${height - 2}">-${span}s</text>` +
             `<text x="${left + w}" y="${height - 2}" text-anchor="end">now</text></svg>`);
  return parts.join("");
}

function render({ model, el }) {
  const root = document.createElement("div");
  root.className = "nbllm-kvm";
  root.innerHTML = `<style>/*CSS*/</style><div class="nbllm-kvm-head"></div><div class="nbllm-kvm-charts"></div>
    <div class="nbllm-kvm-legend"></div><canvas class="nbllm-kvm-grid"></canvas><div class="nbllm-kvm-note"></div>`;
  el.appendChild(root);
  const head = root.querySelector(".nbllm-kvm-head"), charts = root.querySelector(".nbllm-kvm-charts");
  const legend = root.querySelector(".nbllm-kvm-legend"), canvas = root.querySelector("canvas");
  const note = root.querySelector(".nbllm-kvm-note");
  let tip = null, cell = 8, columns = 64, blocks = [], series = null;

  // The kernel sends the whole window now and then (`series`) and each new reading (`latest`) in between.
  function takeSeries() {
    const sent = model.get("series");
    series = {};
    for (const key of SERIES_KEYS) series[key] = (sent[key] || []).slice();
    appendLatest();
  }
  function appendLatest() {
    const row = model.get("latest");
    if (!row || row.ts === undefined) return;
    const n = series.ts.length;
    if (n && row.ts <= series.ts[n - 1]) return;  // already there
    for (const key of SERIES_KEYS) series[key].push(row[key]);
    while (row.ts - series.ts[0] > model.get("window_s")) for (const key of SERIES_KEYS) series[key].shift();
  }

  function drawNumbers() {
    const pool = model.get("pool"), span = model.get("window_s"), n = series.ts.length;
    if (!n) { head.textContent = "waiting for the first reading..."; charts.innerHTML = ""; return; }
    const s = Object.assign({ t: series.ts.map((ts) => ts - series.ts[n - 1]) }, series);
    const lastOf = (key) => s[key][n - 1];
    const rate = lastOf("tokens_per_s");
    head.innerHTML = `<b>KV cache ${fmt(lastOf("usage"), 2)}%</b> of ${fmt(pool.blocks, 0)} blocks ` +
      `× ${pool.block_size} tokens (${fmt(pool.tokens, 0)} tokens) · ${lastOf("running")} running · ` +
      `${lastOf("waiting")} waiting · ${rate === null ? "–" : fmt(rate, 1)} tokens/s · ` +
      `prefix hit rate ${fmt(lastOf("hit_rate"), 1)}% · ${lastOf("preemptions")} preemptions`;
    const peak = (key) => Math.max(0, ...s[key].filter((v) => v !== null));
    const usageMax = Math.min(100, Math.max(1, niceCeiling(1.2 * peak("usage"))));
    charts.innerHTML = [
      chart("usage", `KV usage (pool ${fmt(pool.blocks, 0)} blocks)`, s.t, [{ values: s.usage, colour: "#2176d2" }],
            { span, yMax: usageMax, unit: "%", thresholds: [[90, "#f29900"], [98, "#d32f2f"]] }),
      chart("requests", "requests: running, waiting (dashed)", s.t,
            [{ values: s.running, colour: "#2176d2" }, { values: s.waiting, colour: "#d32f2f", dash: "4 2" }],
            { span, yMax: Math.max(1, niceCeiling(Math.max(peak("running"), peak("waiting")))) }),
      chart("tokens_per_s", "tokens/s", s.t, [{ values: s.tokens_per_s, colour: "#6a3d9a" }],
            { span, yMax: niceCeiling(1.1 * peak("tokens_per_s")) }),
      chart("hit_rate", "prefix-cache hit rate", s.t, [{ values: s.hit_rate, colour: "#31a354" }],
            { span, yMax: Math.max(1, niceCeiling(1.1 * peak("hit_rate"))), unit: "%" }),
      chart("preemptions", "preemptions (total)", s.t, [{ values: s.preemptions, colour: "#e6550d" }],
            { span, yMax: Math.max(1, niceCeiling(peak("preemptions"))) }),
    ].join("");
  }

  function drawGrid() {
    const g = model.get("grid");
    blocks = [];
    for (const [code, count] of g.runs || []) for (let k = 0; k < count; k++) blocks.push(code);
    canvas.style.display = blocks.length ? "block" : "none";
    columns = Math.min(64, Math.max(blocks.length, 1));
    const rows = Math.ceil(blocks.length / columns);
    cell = Math.max(3, Math.min(10, Math.floor(512 / columns), Math.floor(240 / Math.max(rows, 1))));
    const ratio = window.devicePixelRatio || 1;
    canvas.width = columns * cell * ratio;
    canvas.height = rows * cell * ratio;
    canvas.style.width = columns * cell + "px";
    canvas.style.height = rows * cell + "px";
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, columns * cell, rows * cell);
    const gap = cell > 4 ? 1 : 0;
    blocks.forEach((code, i) => {
      ctx.fillStyle = blockColour(code);
      ctx.fillRect((i % columns) * cell, Math.floor(i / columns) * cell, cell - gap, cell - gap);
    });
    ctx.fillStyle = "#000";
    for (const [i] of g.shared || []) {  // shared blocks carry a dot
      const r = Math.max(1, cell / 5);
      ctx.beginPath();
      ctx.arc((i % columns) * cell + (cell - gap) / 2, Math.floor(i / columns) * cell + (cell - gap) / 2, r, 0,
              2 * Math.PI);
      ctx.fill();
    }
    const owners = (g.requests || []).slice(0, 12).map((id, k) =>
      `<span><i style="background:${blockColour(k)}"></i>request ${esc(id)}</span>`);
    const more = (g.requests || []).length > 12 ? [`<span>+${g.requests.length - 12} more</span>`] : [];
    legend.innerHTML = owners.concat(more, [
      `<span><i style="background:${STATE_COLOURS[CACHED]}"></i>free, cached prefix</span>`,
      `<span><i style="background:${STATE_COLOURS[FREE]}"></i>free</span>`,
      `<span>● shared by several requests</span>`]).join("");
  }

  function describe(i) {
    const g = model.get("grid"), code = blocks[i];
    const shared = (g.shared || []).find(([b]) => b === i);
    if (shared) return `block ${i}: shared by requests ${shared[1].map((k) => g.requests[k]).join(", ")}\\n` +
                       "(a common prompt prefix, or beams forked from one another)";
    if (code >= 0) return `block ${i}: request ${g.requests[code]}`;
    if (code === CACHED) return `block ${i}: free, holds a cached prefix (a later prompt can reuse it)`;
    if (code === USED) return `block ${i}: in use`;
    return `block ${i}: free`;
  }
  const hideTip = () => { if (tip) { tip.remove(); tip = null; } };
  canvas.addEventListener("mousemove", (event) => {
    const box = canvas.getBoundingClientRect();
    const col = Math.floor((event.clientX - box.left) / cell), row = Math.floor((event.clientY - box.top) / cell);
    const i = row * columns + col;
    if (col < 0 || col >= columns || i < 0 || i >= blocks.length) { hideTip(); return; }
    if (!tip) { tip = document.createElement("div"); tip.className = "nbllm-kvm-tip"; document.body.appendChild(tip); }
    tip.textContent = describe(i);
    const vw = document.documentElement.clientWidth, vh = document.documentElement.clientHeight;
    let left = Math.min(event.clientX + 12, vw - tip.offsetWidth - 4);
    let top = event.clientY + 14;
    if (top + tip.offsetHeight > vh - 4) top = event.clientY - tip.offsetHeight - 8;
    tip.style.left = Math.max(4, left) + "px";
    tip.style.top = Math.max(4, top) + "px";
  });
  canvas.addEventListener("mouseleave", hideTip);

  function drawNote() {
    note.textContent = model.get("note");
    note.classList.toggle("nbllm-error", model.get("note_is_error"));
  }
  takeSeries();
  drawNumbers();
  drawGrid();
  drawNote();
  model.on("change:series", () => { takeSeries(); drawNumbers(); });
  model.on("change:latest", () => { appendLatest(); drawNumbers(); });
  model.on("change:pool", drawNumbers);
  model.on("change:grid", drawGrid);
  model.on("change:note", drawNote);
  model.on("change:note_is_error", drawNote);
  watchKernel(el, model);
  return hideTip;
}
export default { render };
""".replace("/*CSS*/", KV_MONITOR_CSS)
