// rtdecode dashboard: draws what the server's SessionView sends over the WebSocket at /ws.
"use strict";

const WINDOW = 150;  // volumes shown in the rolling charts
const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"];
const MOTION_NAMES = ["tx mm", "ty mm", "tz mm", "rx °", "ry °", "rz °"];

const state = { volumes: [], blocks: [], lastTop: null, roi: null, layer: null, fdThreshold: null, settings: null };

const $ = (id) => document.getElementById(id);
const fmt = (v, digits = 2) => (v === null || v === undefined || Number.isNaN(v) ? "–" : Number(v).toFixed(digits));

function median(values) {
  const v = values.filter((x) => x !== null && x !== undefined).sort((a, b) => a - b);
  if (!v.length) return null;
  const m = Math.floor(v.length / 2);
  return v.length % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
}

// A line chart of several series over volume indices, with an optional horizontal line.
function lineChart(canvas, xs, series, opts = {}) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, left = 46, right = 8, top = opts.top ?? 16, bottom = 18;
  ctx.clearRect(0, 0, w, h);
  ctx.font = "11px system-ui, sans-serif";
  const all = series.flatMap((s) => s.values).filter((v) => v !== null && Number.isFinite(v));
  // A threshold far above the data (a 2 s deadline over 30 ms latencies) would flatten it: say so instead.
  let hline = opts.hline ?? null;
  const offScale = hline !== null && all.length && hline > 3 * Math.max(...all);
  if (offScale) hline = null;
  if (hline !== null) all.push(hline);
  if (opts.yMin !== undefined) all.push(opts.yMin);
  if (!all.length || !xs.length) {
    ctx.fillStyle = "#889";
    ctx.fillText("waiting for volumes", left, h / 2);
    return;
  }
  let lo = Math.min(...all), hi = Math.max(...all);
  if (hi - lo < 1e-9) { hi += 1; lo -= opts.yMin === 0 ? 0 : 1; }
  const x0 = xs[0], x1 = Math.max(xs[xs.length - 1], x0 + 1);
  const X = (x) => left + ((x - x0) / (x1 - x0)) * (w - left - right);
  const Y = (y) => top + (1 - (y - lo) / (hi - lo)) * (h - top - bottom);
  ctx.strokeStyle = "#ccd"; ctx.fillStyle = "#556"; ctx.lineWidth = 1;
  for (const v of [lo, (lo + hi) / 2, hi]) {
    ctx.beginPath(); ctx.moveTo(left, Y(v)); ctx.lineTo(w - right, Y(v)); ctx.stroke();
    ctx.fillText(v.toPrecision(3), 2, Y(v) + 4);
  }
  ctx.fillText(String(x0), left, h - 4);
  ctx.fillText(String(xs[xs.length - 1]), w - right - 30, h - 4);
  if (hline !== null) {
    ctx.strokeStyle = "#e0433b"; ctx.setLineDash([5, 4]);
    ctx.beginPath(); ctx.moveTo(left, Y(hline)); ctx.lineTo(w - right, Y(hline)); ctx.stroke();
    ctx.setLineDash([]);
  } else if (offScale) {
    ctx.fillStyle = "#e0433b";
    ctx.fillText(`limit ${opts.hline.toPrecision(4)} above the chart`, w / 2 - 60, h - 4);
  }
  let legendX = left, legendY = 11;
  series.forEach((s, i) => {
    const color = s.color || COLORS[i % COLORS.length];
    ctx.strokeStyle = color; ctx.lineWidth = 1.5; ctx.beginPath();
    let pen = false;
    s.values.forEach((v, j) => {
      if (v === null || !Number.isFinite(v)) { pen = false; return; }
      if (pen) ctx.lineTo(X(xs[j]), Y(v)); else ctx.moveTo(X(xs[j]), Y(v));
      pen = true;
    });
    ctx.stroke();
    const width = ctx.measureText(s.name).width;
    if (legendX + width > w - right) { legendX = left; legendY += 12; }
    ctx.fillStyle = color; ctx.fillText(s.name, legendX, legendY);
    legendX += width + 12;
  });
}

function setText(id, text) { $(id).textContent = text; }

function fillTable(tbody, rows) {
  tbody.replaceChildren(...rows.map((cells) => {
    const tr = document.createElement("tr");
    for (const [text, cls] of cells) {
      const td = document.createElement("td");
      td.textContent = text;
      if (cls) td.className = cls;
      tr.appendChild(td);
    }
    return tr;
  }));
}

function showCounts(c) {
  setText("n-volumes", c.volumes);
  setText("last-seq", c.last_seq === null ? "–" : c.last_seq);
  setText("n-decoded", c.decoded);
  setText("n-baseline", c.baseline);
  setText("n-censored", c.censored);
  setText("n-skipped", c.skipped);
  setText("n-gaps", `${c.gaps} (${c.missing})`);
  setText("n-misses", c.deadline_misses);
  setText("n-blocks", c.blocks);
  $("n-skipped").className = c.skipped ? "bad" : "";
  $("n-gaps").className = c.gaps ? "bad" : "";
  $("n-misses").className = c.deadline_misses ? "bad" : "";
}

function fillSelect(select, names, current) {
  if ([...select.options].map((o) => o.value).join() === names.join()) return;
  select.replaceChildren(...names.map((n) => new Option(n, n)));
  select.value = names.includes(current) ? current : names[names.length - 1];
}

function topRows(labels, scores) {
  return labels.map((label, i) => [[String(i + 1)], [label], [fmt(scores[i], 3), "num"]]);
}

function showTop() {
  const top = state.lastTop;
  if (!top) return;
  fillSelect($("roi"), top.rois, state.roi);
  fillSelect($("layer"), top.layers, state.layer);
  state.roi = $("roi").value; state.layer = $("layer").value;
  const r = top.rois.indexOf(state.roi), l = top.layers.indexOf(state.layer);
  setText("topk-seq", top.seq);
  fillTable($("topk").tBodies[0], topRows(top.labels[r][l], top.scores[r][l]));
}

function showBlocks() {
  const b = state.blocks[state.blocks.length - 1];
  if (!b) { setText("block-label", "none yet (block results need stimulus markers: run.blocks)"); return; }
  const r = b.rois ? Math.max(0, b.rois.indexOf(state.roi)) : 0;
  const l = b.layers ? Math.max(0, b.layers.indexOf(state.layer)) : 0;
  setText("block-label", `${b.block}: ${b.label}${b.condition ? " (" + b.condition + ")" : ""}`);
  const rank = b.label_rank ? b.label_rank[r][l] : null;
  setText("block-rank", rank === null ? "" : `rank of shown category ${rank} (${b.rois[r]}/${b.layers[l]})`);
  fillTable($("block-topk").tBodies[0], b.labels ? topRows(b.labels[r][l], b.scores[r][l]) : []);
  fillTable($("blocks").tBodies[0], state.blocks.slice(-10).reverse().map((x) => [
    [String(x.block)], [x.label], [x.labels ? x.labels[r][l][0] : x.status],
    [x.label_rank ? String(x.label_rank[r][l]) : "–", "num"],
  ]));
}

function showVolumes() {
  const vols = state.volumes;
  const last = vols[vols.length - 1];
  if (!last) return;
  setText("series", `series ${last.series}, volume ${last.seq}`);
  const xs = vols.map((v) => v.seq);
  const motion = vols.map((v) => v.motion || [null, null, null, null, null, null]);
  lineChart($("motion-chart"), xs, MOTION_NAMES.map((name, i) => ({ name, values: motion.map((m) => m[i]) })));
  const threshold = last.fd_threshold_mm ?? state.fdThreshold;
  lineChart($("fd-chart"), xs, [{ name: "FD mm", values: vols.map((v) => v.fd_mm ?? null) }], { hline: threshold, yMin: 0 });
  setText("fd-last", fmt(last.fd_mm, 3));
  setText("fd-threshold", fmt(threshold, 2));
  $("fd-last").className = last.censored ? "bad" : "ok";
  setText("motion-last", last.motion ? MOTION_NAMES.map((n, i) => `${n.split(" ")[0]} ${fmt(last.motion[i], 2)}`).join("  ") : "");
  const stages = Object.keys(last.latency_ms);
  const steps = stages.filter((s) => s !== "end_to_end");
  const stageName = (s) => (s === "acquired->file_complete" ? "scanner → file complete" : s.replace("->", " → "));
  lineChart($("latency-chart"), xs, [...steps, "end_to_end"].map((s) => ({
    name: stageName(s), values: vols.map((v) => v.latency_ms[s] ?? null), color: s === "end_to_end" ? "#1d2430" : undefined,
  })), { hline: last.tr_ms, yMin: 0, top: 30 });
  setText("e2e-last", fmt(last.e2e_ms, 1));
  setText("export-last", fmt(last.export_ms, 1));
  setText("own-last", fmt(last.latency_ms.rtdecode, 1));
  setText("acquired-from", last.acquired_from || "no scanner time");
  setText("screen-lag", fmt(last.screen_lag_ms, 1));
  setText("screen-lag-median", fmt(median(vols.map((v) => v.screen_lag_ms)), 1));
  $("e2e-last").className = last.deadline_miss ? "bad" : "ok";
  setText("deadline", fmt(last.tr_ms, 0));
  fillTable($("latency-table").tBodies[0], stages.map((s) => {
    const values = vols.map((v) => v.latency_ms[s]).filter((v) => v !== undefined);
    return [[stageName(s)], [fmt(last.latency_ms[s], 2), "num"], [fmt(median(values), 2), "num"], [fmt(Math.max(...values), 2), "num"]];
  }));
  const names = [...new Set(vols.flatMap((v) => Object.keys(v.feedback || {})))];
  if (names.length) {
    $("feedback-values").replaceChildren(...names.map((n) => {
      const span = document.createElement("span");
      span.className = "feedback-value";
      span.dataset.name = n;
      span.textContent = `${n} ${fmt((last.feedback || {})[n], 2)}`;
      return span;
    }));
    lineChart($("feedback-chart"), xs, names.map((n) => ({ name: n, values: vols.map((v) => (v.feedback || {})[n] ?? null) })));
  }
}

function onVolume(v, live = true) {
  setText("decoder", "decoder: decoding");
  // Acquisition (the scanner's wall clock) to this page; meaningful when both clocks agree.
  v.screen_lag_ms = live && v.acq_time_s ? Date.now() - 1000 * v.acq_time_s : null;
  state.volumes.push(v);
  if (state.volumes.length > WINDOW) state.volumes.shift();
  if (v.top) state.lastTop = { ...v.top, seq: v.seq };
}

function onStatus(s) {
  if (s.event === "heartbeat") { setText("decoder", "decoder: idle, waiting for volumes"); return; }
  if (s.event === "stopped") setText("decoder", "decoder: stopped");
  if (s.settings) {
    state.settings = s.settings;
    if (s.settings.motion) state.fdThreshold = s.settings.motion.fd_threshold_mm;
  }
  const extra = s.event === "skipped" ? `: ${s.reason}` : s.event === "gap" ? ` ${s.missing_from}–${s.missing_to}` : "";
  setText("event", `${s.event}${extra}`);
  $("event").className = s.event === "skipped" || s.event === "gap" ? "bad" : "";
}

let redraw = false;
function scheduleRedraw() {
  if (redraw) return;
  redraw = true;
  requestAnimationFrame(() => { redraw = false; showVolumes(); showTop(); showBlocks(); });
}

function onReconstruction(r) {
  const box = $("reconstructions");
  if (box.querySelector("p.muted")) box.textContent = "";
  const fig = document.createElement("figure");
  fig.className = "reconstruction";
  const img = document.createElement("img");
  img.src = `data:image/png;base64,${r.png}`;
  img.alt = `block ${r.block}`;
  const cap = document.createElement("figcaption");
  const loss = r.loss == null ? "" : `, loss ${r.loss.toFixed(2)}`;
  cap.textContent = `block ${r.block} ${r.label || ""}: ${r.method}, ${r.seconds.toFixed(1)} s${loss}; ` +
    `${r.lag_s.toFixed(1)} s after the block`;
  fig.append(img, cap);
  box.prepend(fig);
  while (box.children.length > 12) box.lastChild.remove();
}

function handle(update) {
  if (update.type === "snapshot") {
    state.volumes = [];
    update.volumes.slice(-WINDOW).forEach((v) => onVolume(v, false));
    state.blocks = update.blocks;
    if (update.settings) onStatus({ event: "connected", settings: update.settings });
    if (update.last_event) onStatus(update.last_event);
    (update.reconstructions || []).forEach(onReconstruction);
  } else if (update.type === "reconstruction") {
    onReconstruction(update);
  } else if (update.type === "volume") {
    onVolume(update);
  } else if (update.type === "block") {
    state.blocks.push(update);
  } else if (update.type === "status") {
    onStatus(update);
  }
  if (update.counts) showCounts(update.counts);
  scheduleRedraw();
}

function connect() {
  const ws = new WebSocket(`ws://${location.host}/ws`);
  ws.onopen = () => { setText("connection", "live"); $("connection").className = "ok"; };
  ws.onmessage = (e) => handle(JSON.parse(e.data));
  ws.onclose = () => {
    setText("connection", "disconnected, retrying…"); $("connection").className = "bad";
    setTimeout(connect, 1000);
  };
}

$("roi").addEventListener("change", () => { state.roi = $("roi").value; scheduleRedraw(); });
$("layer").addEventListener("change", () => { state.layer = $("layer").value; scheduleRedraw(); });
connect();
