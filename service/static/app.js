// Puzzle dashboard: plain JS over the REST API (/api/v1). No build step; Plotly is served from /static.
"use strict";

const API = "/api/v1";
const $ = (id) => document.getElementById(id);
const state = { view: null, jobId: null, source: null, pollTimer: null, jobsTimer: null, libraries: [], result: null, compare: null, stages: {} };
window.puzzle = state; // for debugging and the browser test

$("token").value = localStorage.getItem("puzzle-token") || "";
$("token").addEventListener("change", () => localStorage.setItem("puzzle-token", $("token").value));

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function describe(detail) {
  if (Array.isArray(detail)) return detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("\n");
  return String(detail);
}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  const token = $("token").value;
  if (token) headers["Authorization"] = `Bearer ${token}`;
  if (options.json !== undefined) {
    headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(options.json);
  }
  const response = await fetch(API + path, Object.assign({}, options, { headers }));
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = describe((await response.json()).detail); } catch (e) { /* not JSON */ }
    throw new Error(`${response.status}: ${detail}`);
  }
  return response.json();
}

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (cls) node.className = cls;
  return node;
}

function fmt(x) {
  if (x === null || x === undefined) return "";
  if (typeof x !== "number") return String(x);
  return Math.abs(x) >= 1e5 ? x.toExponential(3) : Number(x.toPrecision(5)).toString();
}

// --- routing -------------------------------------------------------------------------------------------

function route() {
  const hash = location.hash || "#/";
  stopJobStreams();
  clearInterval(state.jobsTimer);
  showError("");
  for (const v of document.querySelectorAll(".view")) v.hidden = true;
  const m = hash.match(/^#\/jobs\/(\d+)/);
  if (m) { state.view = "job"; $("view-job").hidden = false; openJob(Number(m[1])); return; }
  if (hash.startsWith("#/new")) { state.view = "new"; $("view-new").hidden = false; loadLibraries(); return; }
  if (hash.startsWith("#/libraries")) { state.view = "libraries"; $("view-libraries").hidden = false; loadLibraries(); return; }
  state.view = "jobs";
  $("view-jobs").hidden = false;
  loadJobs();
  state.jobsTimer = setInterval(loadJobs, 2000);
}
window.addEventListener("hashchange", route);

// --- jobs list -----------------------------------------------------------------------------------------

function progressCell(job) {
  const td = el("td");
  const p = job.progress;
  if (p.total > 0) {
    const bar = el("progress");
    bar.max = p.total; bar.value = p.done;
    td.append(bar, ` ${p.stage || ""} ${p.done}/${p.total}`);
    if (p.eta_s !== null && job.state === "running") td.append(` ETA ${Math.round(p.eta_s)} s`);
  }
  return td;
}

async function loadJobs() {
  const params = new URLSearchParams({ limit: "50" });
  if ($("jobs-state").value) params.append("state", $("jobs-state").value);
  if ($("jobs-kind").value) params.append("kind", $("jobs-kind").value);
  try {
    const page = await api(`/jobs?${params}`);
    const body = $("jobs-table").querySelector("tbody");
    body.replaceChildren();
    for (const job of page.data) {
      const tr = el("tr");
      tr.dataset.jobId = job.id;
      tr.append(el("td", job.id), el("td", job.kind), el("td", job.spec.mode || (job.spec.budgets ? `budgets ${job.spec.budgets.join(", ")}` : "")), el("td", job.library_id ?? ""));
      const st = el("td"); st.append(el("span", job.state + (job.cancel_requested && job.state === "running" ? " (cancelling)" : ""), `state ${job.state}`));
      tr.append(st, progressCell(job), el("td", new Date(job.created_at).toLocaleString()));
      tr.addEventListener("click", () => { location.hash = `#/jobs/${job.id}`; });
      body.append(tr);
    }
  } catch (e) { showError(e.message); }
}
$("jobs-state").addEventListener("change", loadJobs);
$("jobs-kind").addEventListener("change", loadJobs);

// --- libraries and the search form ---------------------------------------------------------------------

async function loadLibraries() {
  try {
    const page = await api("/libraries?limit=200");
    state.libraries = page.data;
    const body = $("libraries-table").querySelector("tbody");
    body.replaceChildren();
    const select = $("f-library");
    const previous = select.value;
    select.replaceChildren();
    for (const lib of page.data) {
      const tr = el("tr");
      tr.append(el("td", lib.id), el("td", lib.name), el("td", lib.format), el("td", lib.n_layers), el("td", lib.n_variants),
        el("td", lib.metric_keys.join(", ")), el("td", lib.scenarios.map((s) => s.name).join(", ")));
      body.append(tr);
      const opt = el("option", `${lib.name} (#${lib.id}, ${lib.n_layers} layers)`);
      opt.value = lib.id;
      select.append(opt);
    }
    if (previous) select.value = previous;
    fillSearchOptions();
  } catch (e) { showError(e.message); }
}

function fillSearchOptions() {
  const lib = state.libraries.find((l) => String(l.id) === $("f-library").value);
  if (!lib) return;
  const setOptions = (select, values) => {
    const previous = select.value;
    select.replaceChildren(...values.map((v) => { const o = el("option", v); o.value = v; return o; }));
    if (values.includes(previous)) select.value = previous;
  };
  setOptions($("f-objective"), lib.metric_keys);
  setOptions($("f-scenario"), lib.scenarios.map((s) => s.name));
  if (lib.default_scenario) $("f-scenario").value = $("f-scenario").value || lib.default_scenario;
  const names = [...new Set(lib.cost_keys.map((k) => k.split("@")[0]))];
  setOptions($("f-axis"), names);
  if (names.includes("runtime_ms") && !$("f-axis").dataset.touched) $("f-axis").value = "runtime_ms";
}
$("f-library").addEventListener("change", fillSearchOptions);
$("f-axis").addEventListener("change", () => { $("f-axis").dataset.touched = "1"; });

$("search-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const mode = $("f-mode").value;
  const body = {
    kind: "search",
    library_id: Number($("f-library").value),
    mode,
    objective: $("f-objective").value,
    scenario: $("f-scenario").value || null,
    constraints: $("f-constraints").value.split(",").map((s) => s.trim()).filter(Boolean),
  };
  if (mode === "frontier") body.axis = $("f-axis").value;
  if (mode === "diverse") { body.n = Number($("f-n").value); body.d = Number($("f-d").value); }
  try {
    const job = await api("/jobs", { method: "POST", json: body, headers: { "Idempotency-Key": crypto.randomUUID ? crypto.randomUUID() : String(Math.random()) } });
    location.hash = `#/jobs/${job.id}`;
  } catch (e) { showError(e.message); }
});

$("upload-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const files = [...$("u-files").files];
  const format = $("u-format").value;
  try {
    let data;
    if (format === "puzzle") {
      data = JSON.parse(await files[0].text());
    } else {
      data = {};
      for (const f of files) data[f.name.replace(/\.json$/, "")] = JSON.parse(await f.text());
    }
    await api("/libraries", { method: "POST", json: { name: $("u-name").value, format, data } });
    loadLibraries();
  } catch (e) { showError(e.message); }
});

// --- job page ------------------------------------------------------------------------------------------

function stopJobStreams() {
  if (state.source) { state.source.close(); state.source = null; }
  clearTimeout(state.pollTimer);
}

function renderJob(job) {
  state.job = job;
  $("job-title").textContent = `Job ${job.id} — ${job.kind}${job.spec.mode ? " / " + job.spec.mode : ""}`;
  const st = $("job-state");
  st.textContent = job.state + (job.cancel_requested && job.state === "running" ? " (cancelling)" : "");
  st.className = `state ${job.state}`;
  const p = job.progress;
  $("job-stage").textContent = p.stage ? `stage ${p.stage}` : "";
  $("job-progress").max = Math.max(p.total, 1);
  $("job-progress").value = p.done;
  $("job-progress-text").textContent = p.total ? `${p.done}/${p.total}` : "";
  $("job-eta").textContent = p.eta_s !== null && job.state === "running" ? `ETA ${Math.round(p.eta_s)} s` : "";
  $("job-cancel").hidden = !(job.state === "queued" || job.state === "running");
  $("job-error").hidden = !job.error;
  $("job-error").textContent = job.error || "";
}

// Pipeline and elastic jobs: one row per stage with its latest step's progress.
const STAGES = { pipeline: ["parent", "library", "search", "export"], elastic: ["parent", "elastic", "export"] };

function trackStage(ev) {
  if (ev.type !== "progress" || !state.job || !STAGES[state.job.kind]) return;
  const [stage, step] = ev.data.stage.split("/");
  state.stages[stage] = { step: step || "", done: ev.data.done, total: ev.data.total };
  renderStages();
}

function renderStages() {
  const table = $("job-stages");
  table.hidden = !state.job || !STAGES[state.job.kind];
  if (table.hidden) return;
  const rows = STAGES[state.job.kind].map((name) => {
    const s = state.stages[name];
    const bar = el("progress");
    bar.max = Math.max(s ? s.total : 1, 1);
    bar.value = s ? s.done : 0;
    const text = s ? `${s.step ? s.step + " " : ""}${s.done}/${s.total}` : "waiting";
    const cell = el("td");
    cell.append(bar);
    const tr = el("tr");
    tr.append(el("td", name), cell, el("td", text, "stage-text"));
    tr.dataset.stage = name;
    return tr;
  });
  table.tBodies[0].replaceChildren(...rows);
}

function addEvent(ev) {
  trackStage(ev);
  const data = Object.assign({}, ev.data);
  delete data.traceback;
  $("job-events").append(el("li", `#${ev.id} ${new Date(ev.at).toLocaleTimeString()} ${ev.type} ${JSON.stringify(data)}`));
}

async function openJob(id) {
  state.jobId = id;
  state.lastEventId = 0;
  state.result = null;
  state.stages = {};
  $("job-events").replaceChildren();
  $("frontier-panel").hidden = true;
  $("family-panel").hidden = true;
  $("arch-panel").hidden = true;
  try {
    const job = await api(`/jobs/${id}`);
    renderJob(job);
    renderStages();
    if (job.state === "succeeded") await showResult(job);
  } catch (e) { showError(e.message); return; }
  followEvents(id);
}

function followEvents(id) {
  if (!window.EventSource) { pollEvents(id); return; }
  const source = new EventSource(`${API}/jobs/${id}/events/stream?after=${state.lastEventId}`);
  state.source = source;
  const onEvent = async (msg) => {
    const ev = JSON.parse(msg.data);
    if (ev.id <= state.lastEventId) return;
    state.lastEventId = ev.id;
    addEvent(ev);
    if (ev.type === "progress" && state.job) {
      state.job.progress = { stage: ev.data.stage, done: ev.data.done, total: ev.data.total, eta_s: ev.data.eta_s };
      renderJob(state.job);
    } else {
      const job = await api(`/jobs/${id}`);
      renderJob(job);
      if (job.state === "succeeded" && !state.result) await showResult(job);
      if (["succeeded", "failed", "cancelled"].includes(job.state)) { source.close(); }
    }
  };
  for (const type of ["state", "progress", "log", "requeued", "cancel_requested"]) source.addEventListener(type, onEvent);
  source.onerror = () => {
    // The stream ends after the final event; on a real failure fall back to polling with after=.
    source.close();
    if (state.jobId === id && state.job && !["succeeded", "failed", "cancelled"].includes(state.job.state)) pollEvents(id);
  };
}

async function pollEvents(id) {
  if (state.jobId !== id) return;
  try {
    const page = await api(`/jobs/${id}/events?after=${state.lastEventId}`);
    for (const ev of page.data) addEvent(ev);
    state.lastEventId = page.last_id;
    const job = await api(`/jobs/${id}`);
    renderJob(job);
    if (job.state === "succeeded" && !state.result) await showResult(job);
    if (["succeeded", "failed", "cancelled"].includes(job.state)) return;
  } catch (e) { showError(e.message); }
  state.pollTimer = setTimeout(() => pollEvents(id), 1000);
}

$("job-cancel").addEventListener("click", async () => {
  try { renderJob(await api(`/jobs/${state.jobId}/cancel`, { method: "POST" })); } catch (e) { showError(e.message); }
});

// --- elastic family ------------------------------------------------------------------------------------

// Per budget (largest first): the chosen configuration, its parameters, its predicted cost and quality, and its
// measured held-out perplexity, plotted against the budget with the parent's at budget 1 (a result from before
// perplexities were measured plots the predicted quality instead).
async function showFamily(job) {
  const result = await api(`/jobs/${job.id}/result`);
  state.result = result;
  const info = result.elastic, family = result.family;
  $("family-panel").hidden = false;
  const training = info.training ? `${info.training.steps} distillation steps` : "no distillation";
  const measured = family.every((m) => m.perplexity != null) && info.parent_perplexity != null;
  const parent = measured
    ? `; parent perplexity ${fmt(info.parent_perplexity)} on ${fmt(info.perplexity_on.tokens)} held-out tokens` : "";
  $("family-summary").textContent = `${family.length} budgets of one ${fmt(info.parent_params)}-parameter parent, ` +
    `chosen by ${info.selection} on ${info.cost} among children ${info.target || "any engine"} loads; ${training}${parent}`;
  const budgets = family.map((m) => m.budget);
  const quality = measured ? "held-out perplexity" : `predicted ${info.objective} (sum over layers)`;
  const traces = [
    { x: budgets, y: family.map((m) => (measured ? m.perplexity : m.objective)), type: "scatter", mode: "lines+markers",
      name: quality, yaxis: "y" },
    { x: budgets, y: family.map((m) => m.params), type: "bar", name: "parameters", yaxis: "y2", opacity: 0.4 },
  ];
  if (measured) {
    traces.push({ x: [1], y: [info.parent_perplexity], type: "scatter", mode: "markers", name: "parent", yaxis: "y",
      marker: { symbol: "star", size: 12 } });
  }
  await Plotly.react("family-plot", traces, {
    margin: { t: 10 }, xaxis: { title: { text: `budget (fraction of the parent's ${info.cost})` } },
    yaxis: { title: { text: quality } }, yaxis2: { title: { text: "parameters" }, overlaying: "y", side: "right", rangemode: "tozero" },
    legend: { orientation: "h" }, hovermode: "x",
  }, { responsive: true });
  const rows = family.map((m) => {
    const tr = el("tr");
    tr.dataset.budget = m.budget;
    const layers = m.layers.map((c) => `a${c.attention}.f${c.ffn}.m${c.mamba}`).join(" ");
    const link = el("td");
    if (m.export) {
      const a = el("a", "tar.gz");
      a.href = `${API}/jobs/${job.id}/export?budget=${m.budget}`;
      link.append(a);
    }
    tr.append(el("td", fmt(m.budget)), el("td", fmt(m.params)), el("td", `${fmt(100 * m.cost_ratio)} %`),
      el("td", fmt(m.perplexity)), el("td", fmt(m.objective)), el("td", layers, "layers"), link);
    return tr;
  });
  $("family-table").tBodies[0].replaceChildren(...rows);
  $("family-plot").dataset.ready = "1";
}

// --- frontier plot -------------------------------------------------------------------------------------

function axisValue(point, result) {
  const axis = result.axis;
  if (!axis) return point.costs.runtime_ms ?? Object.values(point.costs)[0];
  if (axis in point.costs) return point.costs[axis];
  if (`${axis}@${result.scenario}` in point.costs) return point.costs[`${axis}@${result.scenario}`];
  const key = Object.keys(point.costs).find((k) => k.startsWith(axis + "@"));
  return key ? point.costs[key] : null;
}

function trace(jobId, result, name) {
  const points = result.points;
  return {
    x: points.map((p) => axisValue(p, result)),
    y: points.map((p) => p.objective),
    text: points.map((p) => p.summary),
    customdata: points.map((p, i) => [jobId, i]),
    hovertemplate: `%{text}<br>${result.axis || "cost"} %{x}<br>${result.objective_name} %{y}<extra>${name}</extra>`,
    mode: points.length > 2000 ? "markers" : "lines+markers",
    line: { shape: "hv" },
    marker: { size: points.length > 2000 ? 3 : 7 },
    type: points.length > 2000 ? "scattergl" : "scatter",
    name,
  };
}

async function showResult(job) {
  if (job.kind === "elastic") return showFamily(job);
  if (job.kind !== "search") return;
  const result = await api(`/jobs/${job.id}/result`);
  state.result = result;
  $("frontier-panel").hidden = false;
  const traces = [trace(job.id, result, `job ${job.id}`)];
  if (state.compare && state.compare.id !== job.id) traces.push(trace(state.compare.id, state.compare.result, `job ${state.compare.id}`));
  const layout = {
    xaxis: { title: { text: `${result.axis || "cost"}${result.scenario ? " @ " + result.scenario : ""}` } },
    yaxis: { title: { text: result.objective_name } },
    margin: { t: 20 }, hovermode: "closest", legend: { orientation: "h" },
  };
  await Plotly.react("frontier-plot", traces, layout, { responsive: true });
  const plot = $("frontier-plot");
  plot.removeAllListeners && plot.removeAllListeners("plotly_click");
  plot.on("plotly_click", (ev) => {
    const [jobId, index] = ev.points[0].customdata;
    showArchitecture(jobId, index);
  });
  fillCompare(job);
  plot.dataset.ready = "1";
}

async function fillCompare(job) {
  const page = await api("/jobs?state=succeeded&kind=search&limit=100");
  const select = $("compare-job");
  const previous = select.value;
  select.replaceChildren(el("option", "none"));
  select.firstChild.value = "";
  for (const other of page.data) {
    if (other.id === job.id) continue;
    const o = el("option", `job ${other.id} (${other.spec.mode}, ${other.spec.objective} vs ${other.spec.axis || "-"})`);
    o.value = other.id;
    select.append(o);
  }
  select.value = previous;
}

$("compare-job").addEventListener("change", async () => {
  const id = Number($("compare-job").value);
  state.compare = id ? { id, result: await api(`/jobs/${id}/result`) } : null;
  if (state.job) await showResult(state.job);
});

async function showArchitecture(jobId, index) {
  try {
    const arch = await api(`/jobs/${jobId}/architecture?point=${index}`);
    state.architecture = arch;
    $("arch-panel").hidden = false;
    $("arch-title").textContent = `Job ${jobId}, point ${index}: ${arch.objective_name} ${fmt(arch.objective)}`;
    $("arch-summary").textContent = arch.summary;
    $("arch-export").href = `${API}/jobs/${jobId}/export?point=${index}`;
    const body = $("arch-table").querySelector("tbody");
    body.replaceChildren();
    const kv = [], ffn = [];
    for (const layer of arch.layers) {
      const a = layer.attention, f = layer.ffn;
      const aText = !a ? "?" : a.kind === "gqa" ? `GQA ${a.n_heads} heads / ${a.n_kv_heads} kv` : a.kind;
      const fText = !f ? "?" : f.kind === "mlp" ? `${f.intermediate_size}${f.percent_of_parent !== undefined ? ` (${f.percent_of_parent}%)` : ""}` : f.kind;
      const tr = el("tr");
      tr.append(el("td", layer.index), el("td", aText), el("td", fText), el("td", layer.variant.replace(/\s+/g, " ")));
      body.append(tr);
      kv.push(a && a.kind === "gqa" ? a.n_kv_heads : 0);
      ffn.push(f && f.kind === "mlp" ? f.intermediate_size : 0);
    }
    const idx = arch.layers.map((l) => l.index);
    await Plotly.react("arch-plot", [
      { x: idx, y: kv, type: "bar", name: "KV heads (0 = no attention / linear)", yaxis: "y" },
      { x: idx, y: ffn, type: "scatter", mode: "lines+markers", name: "FFN intermediate size", yaxis: "y2" },
    ], {
      margin: { t: 10 }, xaxis: { title: { text: "layer" } },
      yaxis: { title: { text: "KV heads" } }, yaxis2: { title: { text: "FFN size" }, overlaying: "y", side: "right" },
      legend: { orientation: "h" },
    }, { responsive: true });
  } catch (e) { showError(e.message); }
}

route();
