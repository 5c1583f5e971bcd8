"""The dashboard's one web page: HTML, CSS and the script that draws every plot as inline SVG from
`/api/metrics`. Kept in a Python module, not a data file, so it ships with the package as is, and
self-contained (no CDN) because cluster nodes often have no internet.

Every value read from the run reaches the page through `esc` (or `num`, which calls it) or
`textContent`, never raw into markup: metrics and status files hold whatever a job wrote.

Every drawn series carries `data-key` and `data-points` (the number of plotted values), every
histogram bar and y-axis tick `data-value`: the page's own DOM says what it shows, which is what the
headless browser test reads.
"""

PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>gream dashboard</title>
<style>
  body { font: 13px/1.4 system-ui, sans-serif; margin: 0; background: #f4f5f7; color: #1d2330; }
  header { background: #1d2330; color: #fff; padding: 10px 18px; display: flex; gap: 24px; flex-wrap: wrap;
           align-items: baseline; }
  header h1 { font-size: 16px; margin: 0; }
  header .kv { opacity: .85; }
  header .kv b { color: #fff; opacity: 1; }
  #error { display: none; background: #c0392b; color: #fff; padding: 6px 18px; }
  main { display: grid; grid-template-columns: repeat(auto-fill, minmax(420px, 1fr)); gap: 12px; padding: 12px; }
  section { background: #fff; border-radius: 6px; padding: 10px 12px; box-shadow: 0 1px 2px rgba(0,0,0,.08); }
  section h2 { font-size: 13px; margin: 0 0 4px; }
  .legend span { margin-right: 10px; white-space: nowrap; }
  .legend i { display: inline-block; width: 10px; height: 10px; margin-right: 4px; border-radius: 2px; }
  .empty { color: #888; padding: 30px 0; text-align: center; }
  svg { width: 100%; height: 180px; display: block; }
  svg text { font-size: 10px; fill: #666; }
  table { border-collapse: collapse; width: 100%; }
  td, th { padding: 2px 6px; text-align: right; border-bottom: 1px solid #eee; }
  th:first-child, td:first-child { text-align: left; }
  .dead { color: #c0392b; font-weight: bold; }
  .stale { color: #d68910; }
  .finished { color: #888; }
  #val-best { color: #555; }
</style>
</head>
<body>
<header>
  <h1>gream</h1>
  <span class="kv">run <b id="run">-</b></span>
  <span class="kv">step <b id="step">-</b></span>
  <span class="kv">weight version <b id="version">-</b></span>
  <span class="kv">checkpoint <b id="ckpt">-</b></span>
  <span class="kv">refreshed <b id="refreshed">-</b></span>
</header>
<div id="error"></div>
<main>
  <section><h2>Reward (mean &plusmn; std)</h2><div id="plot-reward"></div></section>
  <section><h2>Validation (steps that ran it)</h2><div id="plot-val"></div><div id="val-best"></div></section>
  <section><h2>Validation lists: tail share, coverage (what rl.objectives aim at)</h2><div id="plot-val-lists"></div></section>
  <section><h2>Exact-hit rate</h2><div id="plot-hit"></div></section>
  <section><h2>Dropped groups (share of sampled)</h2><div id="plot-dropped"></div></section>
  <section><h2 id="lcp-title">LCP histogram</h2><div id="plot-lcp"></div></section>
  <section><h2>KL to reference</h2><div id="plot-kl"></div></section>
  <section><h2>Entropy</h2><div id="plot-entropy"></div></section>
  <section><h2>Step time (s)</h2><div id="plot-time"></div></section>
  <section><h2>Rollout throughput (tokens/s)</h2><div id="plot-throughput"></div></section>
  <section><h2>Evaluation (Pass@K, Recall, NDCG, beyond accuracy)</h2><div id="eval"></div></section>
  <section><h2>Rollout workers</h2><div id="workers"></div></section>
  <section><h2>SFT loss</h2><div id="plot-sft"></div></section>
</main>
<script>
"use strict";
const REFRESH_MS = 3000;
const COLORS = ["#2e86de", "#e67e22", "#27ae60", "#8e44ad", "#c0392b", "#16a085"];
const W = 420, H = 180, PAD = {r: 10, t: 8, b: 20};
const CHAR_W = 6;  // an upper bound on a 10px digit's width in viewBox units, to size the label margin

function esc(s) {
  return String(s).replace(/[&<>"']/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
}
function num(v, d) {
  if (v === null || v === undefined) return "-";
  if (typeof v !== "number") return esc(v);
  if (Number.isInteger(v)) return String(v);
  const a = Math.abs(v);
  return a !== 0 && (a < 1e-3 || a >= 1e5) ? v.toExponential(2) : v.toFixed(d === undefined ? 4 : d);
}
function legend(items) {
  return '<div class="legend">' + items.map((it, i) =>
    `<span><i style="background:${it.color || COLORS[i % COLORS.length]}"></i>${esc(it.label)}</span>`).join("") + "</div>";
}
function scale(lo, hi, a, b) {
  if (hi === lo) { hi = lo + 1; lo = lo - (lo === 0 ? 0 : 1e-9); }
  return v => a + (v - lo) / (hi - lo) * (b - a);
}
function decimals(step) { return Math.max(0, -Math.floor(Math.log10(step) + 1e-9)); }

// The y range for values in [lo, hi]: ticks a 1-2-5 step apart, both ends moved out to whole steps
// so the axis covers every value drawn, and `left`, a margin as wide as the longest label. (Labels
// sit left of the axis, and what runs past the SVG's edge is cut off: with a fixed margin the
// label "1880.640" once read "880.640".) `integer`: counts, never a fractional tick.
function yAxis(lo, hi, integer) {
  if (hi === lo) { if (lo > 0) lo = 0; else if (lo < 0) hi = 0; else hi = 1; }
  const raw = (hi - lo) / 4, mag = Math.pow(10, Math.floor(Math.log10(raw)));
  let step = [1, 2, 5].map(m => m * mag).find(s => s >= raw) || 10 * mag;
  if (integer) step = Math.max(1, Math.round(step));
  const dec = decimals(step), at = k => +(k * step).toFixed(dec);
  let k0 = Math.floor(lo / step + 1e-9), k1 = Math.ceil(hi / step - 1e-9);
  if (at(k0) > lo) k0 -= 1;  // the tolerance above must not leave a value outside
  if (at(k1) < hi) k1 += 1;
  const ticks = [];
  for (let k = k0; k <= k1; k++) ticks.push(at(k));
  const top = Math.max(Math.abs(ticks[0]), Math.abs(ticks[ticks.length - 1]));
  const labels = ticks.map(t => tickLabel(t, step, top));
  return {lo: ticks[0], hi: ticks[ticks.length - 1], ticks, labels, left: CHAR_W * Math.max(...labels.map(l => l.length)) + 8};
}
function tickLabel(v, step, top) {
  if (v === 0) return "0";
  const unit = [[1e9, "G"], [1e6, "M"], [1e3, "k"]].find(u => top >= Math.max(u[0], 1e4));
  if (unit) return (v / unit[0]).toFixed(decimals(step / unit[0])) + unit[1];  // 12k, not 12000.000
  const dec = decimals(step);
  return dec <= 4 ? v.toFixed(dec) : v.toExponential(Math.max(0, Math.floor(Math.log10(Math.abs(v))) + dec));
}
// Gridlines, tick labels and the y axis line of `ax` drawn with the y scale `sy`.
function yTicks(ax, sy) {
  return ax.ticks.map((t, i) => {
    const y = sy(t);
    return `<line x1="${ax.left}" y1="${y.toFixed(1)}" x2="${W - PAD.r}" y2="${y.toFixed(1)}" stroke="#f0f0f0"/>` +
      `<text class="tick" data-value="${t}" x="${ax.left - 4}" y="${(y + 3).toFixed(1)}" text-anchor="end">${ax.labels[i]}</text>`;
  }).join("") + `<line x1="${ax.left}" y1="${H - PAD.b}" x2="${ax.left}" y2="${PAD.t}" stroke="#ccc"/>`;
}
function axes(xlo, xhi, ax, sy) {
  const x0 = ax.left, x1 = W - PAD.r, y0 = H - PAD.b;
  return yTicks(ax, sy) + `<line x1="${x0}" y1="${y0}" x2="${x1}" y2="${y0}" stroke="#ccc"/>` +
    `<text x="${x0}" y="${H - 4}">${esc(xlo)}</text>` +
    `<text x="${x1}" y="${H - 4}" text-anchor="end">step ${esc(xhi)}</text>`;
}

// Line plot of several series over steps; `band` = [lowKey-values, highKey-values] shades around series 0.
function linePlot(id, steps, series, band) {
  const el = document.getElementById(id);
  const present = series.filter(s => s.values && s.values.some(v => v !== null));
  if (!steps.length || !present.length) { el.innerHTML = '<div class="empty">no data yet</div>'; return; }
  let ys = present.flatMap(s => s.values.filter(v => v !== null));
  if (band) ys = ys.concat(band[0].filter(v => v !== null), band[1].filter(v => v !== null));
  let ylo = Math.min(...ys);
  const yhi = Math.max(...ys);
  if (ylo > 0 && ylo < 0.3 * yhi) ylo = 0;
  const ax = yAxis(ylo, yhi), sy = scale(ax.lo, ax.hi, H - PAD.b, PAD.t);
  const sx = scale(steps[0], steps[steps.length - 1], ax.left, W - PAD.r);
  let svg = axes(steps[0], steps[steps.length - 1], ax, sy);
  if (band) {
    const pts = steps.map((s, i) => [s, band[0][i], band[1][i]]).filter(p => p[1] !== null && p[2] !== null);
    if (pts.length) {
      const poly = pts.map(p => `${sx(p[0]).toFixed(1)},${sy(p[2]).toFixed(1)}`)
        .concat(pts.slice().reverse().map(p => `${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`));
      svg += `<polygon class="band" points="${poly.join(" ")}" fill="${COLORS[0]}" fill-opacity="0.15"/>`;
    }
  }
  present.forEach((s, k) => {
    const color = s.color || COLORS[k % COLORS.length];
    let d = "", n = 0, pen = "M", dots = "";
    s.values.forEach((v, i) => {
      if (v === null) { pen = "M"; return; }  // a gap: the step did not report this value
      const x = sx(steps[i]).toFixed(1), y = sy(v).toFixed(1);
      d += `${pen}${x},${y} `; pen = "L"; n += 1;
      if (steps.length <= 200) dots += `<circle cx="${x}" cy="${y}" r="2" fill="${color}"><title>step ${esc(steps[i])}: ${num(v)}</title></circle>`;
    });
    svg += `<path class="series" data-key="${esc(s.key)}" data-points="${n}" d="${d.trim()}" fill="none" stroke="${color}" stroke-width="1.6"/>` + dots;
  });
  el.innerHTML = legend(present.map((s, k) => ({label: `${s.label || s.key} ${num(lastOf(s.values))}`,
                                                  color: s.color || COLORS[k % COLORS.length]}))) +
    `<svg viewBox="0 0 ${W} ${H}" preserveAspectRatio="none">${svg}</svg>`;
}
function lastOf(values) {
  for (let i = values.length - 1; i >= 0; i--) if (values[i] !== null) return values[i];
  return null;
}

// Stacked bars per step (step-time breakdown).
function stackedBars(id, steps, parts) {
  const el = document.getElementById(id);
  const present = parts.filter(p => p.values && p.values.some(v => v !== null));
  if (!steps.length || !present.length) { el.innerHTML = '<div class="empty">no data yet</div>'; return; }
  const totals = steps.map((_, i) => present.reduce((a, p) => a + (p.values[i] || 0), 0));
  const ax = yAxis(0, Math.max(...totals)), sy = scale(0, ax.hi, H - PAD.b, PAD.t);
  const slot = (W - ax.left - PAD.r) / steps.length, bw = Math.max(1, slot * 0.8);
  let svg = axes(steps[0], steps[steps.length - 1], ax, sy);
  steps.forEach((s, i) => {
    let base = 0;
    present.forEach((p, k) => {
      const v = p.values[i];
      if (v === null) return;  // not reported this step (e.g. step 0, the SFT baseline's validation)
      const y = sy(base + v), h = sy(base) - y;
      svg += `<rect class="bar" data-key="${esc(p.key)}" data-value="${esc(v)}" x="${(ax.left + i * slot + (slot - bw) / 2).toFixed(1)}" ` +
             `y="${y.toFixed(1)}" width="${bw.toFixed(1)}" height="${h.toFixed(1)}" fill="${COLORS[k % COLORS.length]}">` +
             `<title>step ${esc(s)} ${esc(p.label)}: ${num(v, 3)} s</title></rect>`;
      base += v;
    });
  });
  el.innerHTML = legend(present.map(p => ({label: `${p.label} ${num(lastOf(p.values), 3)}`}))) +
    `<svg viewBox="0 0 ${W} ${H}" preserveAspectRatio="none">${svg}</svg>`;
}

// Histogram of one step's LCP lengths: bar i = completions sharing i leading levels with the target.
function histogram(id, counts) {
  const el = document.getElementById(id);
  if (!counts || !counts.length) { el.innerHTML = '<div class="empty">no data yet</div>'; return; }
  const total = counts.reduce((a, b) => a + b, 0) || 1, ax = yAxis(0, Math.max(...counts), true);
  const sy = scale(0, ax.hi, H - PAD.b, PAD.t + 12), slot = (W - ax.left - PAD.r) / counts.length;
  let svg = yTicks(ax, sy) + `<line x1="${ax.left}" y1="${H - PAD.b}" x2="${W - PAD.r}" y2="${H - PAD.b}" stroke="#ccc"/>`;
  counts.forEach((c, i) => {
    const x = ax.left + i * slot, y = sy(c);
    svg += `<rect class="bar" data-key="lcp=${i}" data-value="${esc(c)}" x="${(x + slot * 0.1).toFixed(1)}" y="${y.toFixed(1)}" ` +
           `width="${(slot * 0.8).toFixed(1)}" height="${(H - PAD.b - y).toFixed(1)}" fill="${COLORS[0]}">` +
           `<title>LCP ${i}: ${esc(c)} (${(100 * c / total).toFixed(1)}%)</title></rect>` +
           `<text x="${(x + slot / 2).toFixed(1)}" y="${H - 6}" text-anchor="middle">${i}</text>` +
           `<text x="${(x + slot / 2).toFixed(1)}" y="${(y - 2).toFixed(1)}" text-anchor="middle">${(100 * c / total).toFixed(0)}%</text>`;
  });
  el.innerHTML = `<svg viewBox="0 0 ${W} ${H}" preserveAspectRatio="none">${svg}</svg>`;
}

// One column per stage/split, one row per metric: the table stays narrow however many K are evaluated.
function evalTable(evals) {
  const el = document.getElementById("eval");
  const runs = [];
  for (const [stage, splits] of Object.entries(evals || {}))
    for (const [split, m] of Object.entries(splits)) runs.push([`${stage}/${split}`, m]);
  if (!runs.length) { el.innerHTML = '<div class="empty">no eval.json yet (run the eval stage)</div>'; return; }
  const keys = [...new Set(runs.flatMap(r => Object.keys(r[1])))]
    .filter(k => /^(pass|recall|ndcg|tail_share|coverage|novelty|distinct_codes|ild)@/.test(k) || k === "format_ok");
  el.innerHTML = "<table><tr><th>metric</th>" + runs.map(r => `<th>${esc(r[0])}</th>`).join("") + "</tr>" +
    keys.map(k => `<tr class="eval-row" data-key="${esc(k)}"><td>${esc(k)}</td>` +
      runs.map(([name, m]) => `<td data-run="${esc(name)}">${num(m[k])}</td>`).join("") + "</tr>").join("") +
    "</table>";
}

function ago(ts, now) {
  if (!ts) return "?";
  const s = Math.max(0, now - ts);
  return s < 120 ? `${s.toFixed(0)}s ago` : s < 7200 ? `${(s / 60).toFixed(0)}min ago` : `${(s / 3600).toFixed(1)}h ago`;
}

// `driver` (run_state.driver_state) says whether the workers' alive flags are still news.
function workers(status, driver, now) {
  const el = document.getElementById("workers");
  if (!status || !driver || !Array.isArray(status.workers)) { el.innerHTML = '<div class="empty">no status yet</div>'; return; }
  const state = w => driver.state !== "running" ? driver.state : w.alive ? "alive" : "dead";
  const css = {alive: "", dead: "dead", finished: "finished", stopped: "finished", failed: "dead", stale: "stale"};
  const rows = status.workers.map(w => {
    const behind = status.step !== undefined && w.weight_version !== undefined && w.weight_version < status.step;
    return `<tr class="worker-row"><td>${esc(w.slot)}</td><td class="${css[state(w)]}">${esc(state(w))}</td>` +
      `<td class="${behind ? "stale" : ""}">${num(w.weight_version)}</td></tr>`;
  }).join("");
  const head = {
    running: `driver at step ${num(status.step)}, updated ${ago(driver.updated, now)}`,
    finished: `driver finished at step ${num(status.step)} (last update ${ago(driver.updated, now)})`,
    stopped: `driver stopped at step ${num(status.step)} (${ago(driver.updated, now)})`,
    failed: `<span class="dead">driver failed${driver.error ? ` (${esc(driver.error)})` : ""}</span> at step ` +
            `${num(status.step)} (${ago(driver.updated, now)})`,
    stale: `<span class="stale">stale (driver not updating since ${driver.updated ? new Date(driver.updated * 1000).toLocaleTimeString() : "?"}, ` +
           `${ago(driver.updated, now)})</span> at step ${num(status.step)}`,
  }[driver.state];
  el.innerHTML = `<div id="driver" data-state="${esc(driver.state)}">${head}</div>` +
    "<table><tr><th>slot</th><th>state</th><th>weight version</th></tr>" + rows + "</table>";
}

// Validation runs on some steps only: plot just those, so each metric's points join up across the
// steps between; below, each metric's best and the checkpoint rl/model was selected from. Accuracy
// and the lists' shares (0..1 alike, but an order of magnitude apart) get a plot each; novelty (bits)
// and distinct codes (a count) are in the best-of list only.
function validation(steps, v, summary, selection) {
  const keys = Object.keys(v).filter(k => k.startsWith("val/"));
  const at = steps.map((_, i) => i).filter(i => keys.some(k => v[k][i] !== null));
  const plot = (id, re) => linePlot(id, at.map(i => steps[i]), keys.filter(k => re.test(k))
    .map(k => ({key: k, label: k.slice(4), values: at.map(i => v[k][i])})));
  plot("plot-val", /^val\/(recall|ndcg)@/);
  plot("plot-val-lists", /^val\/(tail_share|coverage)@/);
  const best = Object.entries(summary || {}).map(([k, s]) => `best ${esc(k.slice(4))} ${num(s.best_value)} at step ${esc(s.best_step)}`);
  if (selection) best.push(`rl/model: step ${num(selection.step)} checkpoint, selected by ${esc(selection.metric)} ${num(selection.value)}`);
  document.getElementById("val-best").innerHTML = best.map(b => `<div>${b}</div>`).join("");
}

function render(data) {
  const rl = data.rl, v = rl.values, steps = rl.steps, now = data.read_at;
  document.getElementById("run").textContent = data.run_dir;
  document.getElementById("step").textContent = steps.length ? steps[steps.length - 1] : "-";
  document.getElementById("version").textContent = num(lastOf(v["weight_version"] || []));
  const c = data.checkpoint;
  document.getElementById("ckpt").textContent = c ? `step ${c.step} (${ago(c.saved_at, now)})` : "none yet";
  const mean = v["reward/mean"], std = v["reward/std"];
  const band = mean && std ? [mean.map((m, i) => m === null || std[i] === null ? null : m - std[i]),
                              mean.map((m, i) => m === null || std[i] === null ? null : m + std[i])] : null;
  linePlot("plot-reward", steps, [{key: "reward/mean", label: "mean", values: mean},
                                  {key: "reward/std", label: "std", values: std}], band);
  validation(steps, v, data.validation, data.selection);
  linePlot("plot-hit", steps, [{key: "hit_rate", label: "exact hit", values: v["hit_rate"]}]);
  linePlot("plot-dropped", steps, Object.keys(v).filter(k => k.startsWith("dropped/"))
    .map(k => ({key: k, label: k.slice(8), values: v[k]})));
  const lcp = rl.latest.lcp_hist;
  document.getElementById("lcp-title").textContent = "LCP histogram" + (steps.length ? ` (step ${steps[steps.length - 1]})` : "");
  histogram("plot-lcp", Array.isArray(lcp) ? lcp : null);
  linePlot("plot-kl", steps, [{key: "kl", values: v["kl"]}]);
  linePlot("plot-entropy", steps, [{key: "entropy", values: v["entropy"]}]);
  stackedBars("plot-time", steps, ["rollout", "reward", "train", "push"]
    .map(p => ({key: `time/${p}`, label: p, values: v[`time/${p}`]})));
  linePlot("plot-throughput", steps, [{key: "throughput/rollout_tokens_per_s", label: "rollout",
                                       values: v["throughput/rollout_tokens_per_s"]}]);
  evalTable(data.eval);
  workers(data.status, data.driver, now);
  const sv = data.sft.values;
  linePlot("plot-sft", data.sft.steps, Object.keys(sv).filter(k => k.startsWith("loss"))
    .map(k => ({key: k, label: k, values: sv[k]})));
  document.getElementById("refreshed").textContent = new Date(now * 1000).toLocaleTimeString();
}

async function refresh() {
  const banner = document.getElementById("error");
  try {
    const resp = await fetch("/api/metrics", {cache: "no-store"});
    const body = await resp.json();
    if (!resp.ok) throw new Error(body.error || resp.statusText);
    render(body);
    banner.style.display = "none";
  } catch (err) {
    banner.textContent = `cannot read the run: ${err.message}`;
    banner.style.display = "block";
  }
}
refresh();
setInterval(refresh, REFRESH_MS);
</script>
</body>
</html>
"""
