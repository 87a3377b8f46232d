// rtdecode dashboard: draws what the server's SessionView sends over the WebSocket at /ws.
"use strict";

const WINDOW = 150;  // volumes shown in the rolling charts
const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"];
const MOTION_NAMES = ["tx", "ty", "tz", "rx", "ry", "rz"];

const state = {
  volumes: [], blocks: [], lastTop: null, roi: null, layer: null, fdThreshold: null, settings: null,
  socketOpen: false, lastHeard: null, lastVolumeAt: null, stopped: false,
  counts: null, history: "",  // history: where the session so far came from, or why it could not
  marks: [],  // gaps and restarts, drawn on the time axes: {x, label}
};

const $ = (id) => document.getElementById(id);
const fmt = (v, digits = 2) => (v === null || v === undefined || Number.isNaN(v) ? "–" : Number(v).toFixed(digits));

function median(values) {
  const v = values.filter((x) => x !== null && x !== undefined).sort((a, b) => a - b);
  if (!v.length) return null;
  const m = Math.floor(v.length / 2);
  return v.length % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
}

// Ticks at 1, 2 or 5 times a power of ten, about n of them, covering [lo, hi].
function niceTicks(lo, hi, n = 4) {
  const raw = (hi - lo) / n;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((k) => k * mag).find((st) => st >= raw) || 10 * mag;
  const ticks = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) ticks.push(Number(v.toPrecision(12)));
  return { ticks, step };
}

function tickText(v, step) {
  const digits = Math.max(0, -Math.floor(Math.log10(step)));
  return Math.abs(v) >= 1e4 ? v.toExponential(1) : v.toFixed(digits);
}

// A line chart over volume indices: titled axes with units, readable ticks, censored volumes shaded,
// and a quiet reference line (a threshold or the deadline) that is named, not alarming.
function lineChart(canvas, xs, series, opts = {}) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, left = 54, right = 8, top = opts.top ?? 16, bottom = 30;
  ctx.clearRect(0, 0, w, h);
  ctx.font = "11px system-ui, sans-serif";
  const all = series.flatMap((s) => s.values).filter((v) => v !== null && Number.isFinite(v));
  // A reference far above the data (a 2 s deadline over 30 ms latencies) would flatten it: name it instead.
  let ref = opts.ref ?? null;
  const offScale = ref !== null && all.length && ref > 3 * Math.max(...all);
  if (offScale) ref = null;
  if (ref !== null) all.push(ref);
  if (opts.yMin !== undefined) all.push(opts.yMin);
  ctx.save(); ctx.translate(11, (top + h - bottom) / 2); ctx.rotate(-Math.PI / 2);
  ctx.fillStyle = "#556"; ctx.textAlign = "center"; ctx.fillText(opts.yLabel || "", 0, 0); ctx.restore();
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
  for (const mk of state.marks) {  // gaps and restarts: a labelled vertical line
    if (mk.x < x0 || mk.x > x1) continue;
    ctx.strokeStyle = "#b07cc6"; ctx.setLineDash([2, 3]);
    ctx.beginPath(); ctx.moveTo(X(mk.x), top); ctx.lineTo(X(mk.x), h - bottom); ctx.stroke();
    ctx.setLineDash([]); ctx.fillStyle = "#8a4fa3"; ctx.fillText(mk.label, X(mk.x) + 2, top + 10);
  }
  (opts.censored || []).forEach((c, j) => {  // censored volumes: a light band
    if (!c) return;
    ctx.fillStyle = "rgba(224, 67, 59, 0.15)";
    ctx.fillRect(X(xs[j]) - 2, top, 4, h - top - bottom);
  });
  ctx.strokeStyle = "#dde"; ctx.fillStyle = "#556"; ctx.lineWidth = 1; ctx.textAlign = "right";
  const yt = niceTicks(lo, hi);
  for (const v of yt.ticks) {
    ctx.beginPath(); ctx.moveTo(left, Y(v)); ctx.lineTo(w - right, Y(v)); ctx.stroke();
    ctx.fillText(tickText(v, yt.step), left - 4, Y(v) + 4);
  }
  ctx.textAlign = "center";
  const xt = niceTicks(x0, x1, 6);
  for (const v of xt.ticks.filter((t) => Number.isInteger(t))) ctx.fillText(String(v), X(v), h - bottom + 13);
  ctx.fillText(opts.xLabel || `volume (last ${xs.length} of the window of ${WINDOW})`, (left + w) / 2, h - 3);
  ctx.textAlign = "left";
  if (ref !== null) {
    ctx.strokeStyle = "#99a"; ctx.setLineDash([5, 4]);
    ctx.beginPath(); ctx.moveTo(left, Y(ref)); ctx.lineTo(w - right, Y(ref)); ctx.stroke();
    ctx.setLineDash([]);
    ctx.fillStyle = "#778"; ctx.fillText(opts.refName || "", w - right - 110, Y(ref) - 3);
  } else if (offScale) {
    ctx.fillStyle = "#778";
    ctx.fillText(`${opts.refName || "reference"} ${opts.ref.toPrecision(4)}: off the scale above`, left + 4, top + 10);
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
  // A dashboard started after the session began has not seen its first volumes: say so.
  const seen = c.volumes + c.missing, expected = c.last_seq === null ? 0 : c.last_seq + 1;
  const failed = state.history.startsWith("no history") ? state.history : "";
  setText("history-note", seen < expected
    ? `this dashboard has seen ${c.volumes} of the ${expected} volumes so far (it started late${failed ? "; " + failed : ""})`
    : failed);
  $("history-note").title = state.history;
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
  setText("topk-seq", top.censored ? `${top.seq} (censored: FD above the threshold)` : top.seq);
  $("topk-seq").className = top.censored ? "bad" : "";
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

function showQuality(xs, vols, last, censored) {
  const q = last.qa;
  if (!q) return;
  lineChart($("dvars-chart"), xs, [{ name: "DVARS", values: vols.map((v) => (v.qa ? v.qa.dvars_pct : null)) }],
    { yMin: 0, yLabel: "DVARS (% of mean)", censored });
  setText("dvars-last", fmt(q.dvars_pct, 2));
  setText("spikes-last", q.spikes === null ? "off" : q.spikes);
  setText("clean-minutes", fmt(q.clean_minutes, 1));
  setText("clean-projected", q.projected_clean_minutes === null
    ? "(set run.expected_volumes for the projection at the end of the run)"
    : `(${fmt(q.projected_clean_minutes, 1)} min projected at the end of the run)`);
  for (const [level, share] of Object.entries(q.frames_under)) setText(`under-${level}`, fmt(100 * share, 0));
  fillTable($("tsnr-table").tBodies[0], Object.entries(q.tsnr).map(([roi, t]) => [[roi], [fmt(t, 1), "num"]]));
}

function showVolumes() {
  const vols = state.volumes;
  const last = vols[vols.length - 1];
  if (!last) return;
  setText("series", `series ${last.series}, volume ${last.seq}`);
  const xs = vols.map((v) => v.seq);
  const motion = vols.map((v) => v.motion || [null, null, null, null, null, null]);
  const censored = vols.map((v) => !!v.censored);
  const axis = (i) => ({ name: MOTION_NAMES[i], values: motion.map((m) => m[i]) });
  lineChart($("motion-chart"), xs, [0, 1, 2].map(axis), { yLabel: "translation (mm)", censored });
  lineChart($("rotation-chart"), xs, [3, 4, 5].map(axis), { yLabel: "rotation (°)", censored });
  const threshold = last.fd_threshold_mm ?? state.fdThreshold;
  lineChart($("fd-chart"), xs, [{ name: "FD", values: vols.map((v) => v.fd_mm ?? null) }],
    { ref: threshold, refName: "censoring threshold", yMin: 0, yLabel: "FD (mm)", censored });
  setText("fd-last", fmt(last.fd_mm, 3));
  setText("fd-threshold", fmt(threshold, 2));
  $("fd-last").className = last.censored ? "bad" : "ok";
  setText("motion-last", last.motion ? MOTION_NAMES.map((n, i) => `${n} ${fmt(last.motion[i], 2)}${i < 3 ? " mm" : "°"}`).join("  ") : "");
  const stages = Object.keys(last.latency_ms);
  const steps = stages.filter((s) => s !== "end_to_end");
  const stageName = (s) => (s === "acquired->file_complete" ? "scanner → file complete" : s.replace("->", " → "));
  lineChart($("latency-chart"), xs, [...steps, "end_to_end"].map((s) => ({
    name: stageName(s), values: vols.map((v) => v.latency_ms[s] ?? null), color: s === "end_to_end" ? "#1d2430" : undefined,
  })), { ref: last.tr_ms, refName: "deadline (TR)", yMin: 0, top: 30, yLabel: "latency (ms)", censored });
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
  showQuality(xs, vols, last, censored);
  const names = [...new Set(vols.flatMap((v) => Object.keys(v.feedback || {})))];
  if (names.length) {
    $("feedback-values").replaceChildren(...names.map((n) => {
      const span = document.createElement("span");
      span.className = "feedback-value";
      span.dataset.name = n;
      span.textContent = `${n} ${fmt((last.feedback || {})[n], 2)}`;
      return span;
    }));
    lineChart($("feedback-chart"), xs, names.map((n) => ({ name: n, values: vols.map((v) => (v.feedback || {})[n] ?? null) })),
      { yLabel: "score", censored });
  }
}

function onVolume(v, live = true) {
  if (live) state.lastVolumeAt = Date.now();
  // Acquisition (the scanner's wall clock) to this page; meaningful when both clocks agree.
  v.screen_lag_ms = live && v.acq_time_s ? Date.now() - 1000 * v.acq_time_s : null;
  state.volumes.push(v);
  if (state.volumes.length > WINDOW) state.volumes.shift();
  if (v.top) state.lastTop = { ...v.top, seq: v.seq, censored: !!v.censored };
}

function onStatus(s) {
  if (s.event === "heartbeat") return;
  if (s.event === "gap") state.marks.push({ x: s.missing_from, label: s.after_restart ? "restart, gap" : "gap" });
  if (s.event === "started" && s.resumed) state.marks.push({ x: s.resumed.last_seq + 1, label: "restarted" });
  if (s.event === "stopped" || s.event === "started") state.stopped = s.event === "stopped";
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

// "live" means the decoder is heard: its heartbeats (every run.heartbeat_s) or results keep arriving.
// Two heartbeat periods of silence and the page says so and greys its charts; "decoding" means a
// volume came within two TRs (at a real TR of 2-3 s volumes are seconds apart).
function liveness() {
  if (!state.socketOpen) return;
  const conn = $("connection");
  const beat = (state.settings && state.settings.heartbeat_s) || 0.5;
  const silent = state.lastHeard === null ? null : (Date.now() - state.lastHeard) / 1000;
  const quiet = state.stopped || silent === null || silent > 2 * beat;
  if (state.stopped) conn.textContent = "decoder stopped";
  else if (silent === null) conn.textContent = "waiting for the decoder";
  else conn.textContent = quiet ? `decoder silent for ${silent.toFixed(1)} s` : "live";
  conn.className = quiet ? "bad" : "ok";
  document.body.classList.toggle("stale", quiet && state.volumes.length > 0);
  const last = state.volumes[state.volumes.length - 1];
  const tr = last && last.tr_ms ? last.tr_ms : 0;
  const recent = state.lastVolumeAt !== null && Date.now() - state.lastVolumeAt < 2 * tr + 500;
  setText("decoder", quiet ? "decoder: not heard" : recent ? "decoder: decoding" : "decoder: idle, waiting for volumes");
}

function handle(update) {
  if (update.type !== "snapshot" && update.type !== "reconstruction") state.lastHeard = Date.now();
  if (update.type === "snapshot") {
    state.volumes = [];
    update.volumes.slice(-WINDOW).forEach((v) => onVolume(v, false));
    state.blocks = update.blocks;
    if (update.settings) onStatus({ event: "connected", settings: update.settings });
    if (update.last_event) onStatus(update.last_event);
    (update.reconstructions || []).forEach(onReconstruction);
    state.history = update.history || "";
  } else if (update.type === "history") {
    state.history = update.text;
  } else if (update.type === "reconstruction") {
    onReconstruction(update);
  } else if (update.type === "volume") {
    onVolume(update);
  } else if (update.type === "block") {
    state.blocks.push(update);
  } else if (update.type === "status") {
    onStatus(update);
  }
  if (update.counts) state.counts = update.counts;
  if (state.counts) showCounts(state.counts);
  scheduleRedraw();
}

function connect() {
  const ws = new WebSocket(`ws://${location.host}/ws`);
  ws.onopen = () => { state.socketOpen = true; liveness(); };
  ws.onmessage = (e) => handle(JSON.parse(e.data));
  ws.onclose = () => {
    state.socketOpen = false;
    setText("connection", "dashboard disconnected, retrying…"); $("connection").className = "bad";
    setTimeout(connect, 1000);
  };
}

$("roi").addEventListener("change", () => { state.roi = $("roi").value; scheduleRedraw(); });
$("layer").addEventListener("change", () => { state.layer = $("layer").value; scheduleRedraw(); });
connect();
setInterval(liveness, 250);
