// BlockLab's browser app: submit jobs, watch them live, compare them with the paper. No framework, no CDN.
// Everything a user typed reaches the page through textContent (never innerHTML) or plotText() for Plotly.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "class") node.className = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

const pct = (v) => (v === null || v === undefined ? "–" : (100 * v).toFixed(2) + "%");
const int = (v) => (v === null || v === undefined ? "–" : Number(v).toLocaleString("en-US"));
const secs = (v) => (v === null || v === undefined ? "–" : v < 90 ? `${Math.round(v)} s` : `${(v / 60).toFixed(1)} min`);
// Plotly renders a little HTML in legends and hover text: user text goes in as entities only.
const plotText = (s) => String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");

const state = { models: null, paper: null, cards: {}, token: localStorage.getItem("blocklab-token") };
let cleanup = [];

class ApiError extends Error {
  constructor(status, detail) {
    super(typeof detail === "string" ? detail : `request failed (${status})`);
    this.status = status;
    this.detail = detail;
  }
}

async function api(path, opts = {}) {
  // A custom header makes every write a CORS-preflighted request: a foreign page cannot send one (see security.py).
  const headers = { "X-Requested-With": "BlockLab", ...(opts.headers || {}) };
  if (opts.json !== undefined) headers["Content-Type"] = "application/json";
  if (state.token) headers["X-BlockLab-Token"] = state.token;
  let r;
  try {
    r = await fetch(path, { method: opts.method || "GET", headers,
                            body: opts.json !== undefined ? JSON.stringify(opts.json) : undefined });
  } catch (e) {
    throw new ApiError(0, "The BlockLab server cannot be reached. Is it running?");
  }
  if (r.status === 401) {
    $("#token-box").hidden = false;
    throw new ApiError(401, "This lab needs its access token: enter it above, then try again.");
  }
  const isJson = (r.headers.get("content-type") || "").includes("json");
  const body = isJson ? await r.json() : await r.text();
  if (!r.ok) throw new ApiError(r.status, isJson ? body.detail : body);
  return body;
}

function showMessage(text, kind = "error") {
  const m = $("#message");
  m.textContent = text;
  m.className = kind === "info" ? "info" : "";
  m.hidden = false;
}
function clearMessage() { $("#message").hidden = true; }
function fail(e) { showMessage(e instanceof ApiError ? e.message : `Something went wrong: ${e.message || e}`); }

window.addEventListener("error", (e) => showMessage(`Something went wrong: ${e.message}`));
window.addEventListener("unhandledrejection", (e) => fail(e.reason));

// The catalogue, the training options and the job statuses come from the API: nothing here lists them.
async function catalogue() {
  if (!state.models) {
    [state.models, state.paper, state.options, state.statuses] = await Promise.all(
      [api("/api/models"), api("/api/paper"), api("/api/options"), api("/api/statuses")]);
  }
  return { models: state.models, paper: state.paper };
}
const can = (what, j) => state.statuses[what].includes(j.status);  // "cancellable" | "resumable" | "progressing"
const modelById = (id) => (state.models || []).find((m) => m.id === id);
const paperCurve = (model) => (model && model.paper_name ? state.paper.curves[model.paper_name] : null);

// ---------------------------------------------------------------------------------------------------- method card
// A model's method card (GET /api/models/{id}, built from the catalogue): what it runs, as rows, and each known
// deviation from the authors' runs with its likely effect. On the job page, the card of the job's own config
// (its options as query parameters) with where the job leaves the paper preset; nothing here lists an option.
function cardView(card, forJob) {
  const box = el("div", { class: "method-card-body", "data-model": card.model });
  box.append(el("h3", { text: `Method card: ${card.paper_name ? `${card.paper_name} · ` : ""}${card.timm_id}` }));
  box.append(el("table", { class: "card-rows" }, el("tbody", {}, card.rows.map((r) =>
    el("tr", {}, el("th", { text: r.label }), el("td", { text: r.value }))))));
  if (forJob) {
    const shown = (v) => (v === null || v === undefined ? "empty" : String(v));
    const differs = card.config_deviations;
    box.append(el("h4", { text: differs.length ? "This job leaves the paper preset" : "This job runs the paper preset" }),
      differs.length ? el("ul", { class: "job-differs" }, differs.map((d) =>
        el("li", {}, el("strong", { text: d.label }), `: ${shown(d.value)} (paper preset: ${shown(d.paper)})`))) : "");
  }
  if (card.deviations.length) {
    box.append(el("h4", { text: "Known deviations from the authors' runs" }),
      el("ul", { class: "deviations" }, card.deviations.map((d) =>
        el("li", {}, el("span", { text: d.what }), el("div", { class: "effect", text: `Likely effect: ${d.effect}` })))));
  } else if (!card.in_paper) {
    box.append(el("p", { class: "muted", text: "Not in the paper's Table 1: nothing to compare with." }));
  }
  return box;
}

async function showCard(box, id, jobConfig) {
  box.dataset.want = id;  // a slower answer for a model picked before must not overwrite this one
  const query = jobConfig ? "?" + new URLSearchParams(Object.entries(jobConfig).filter(([k]) => k !== "model")
    .map(([k, v]) => [k, v === null || v === undefined ? "" : String(v)])).toString() : "";
  if (!state.cards[id + query]) box.replaceChildren(el("p", { class: "muted", text: "Loading the method card…" }));
  try {
    const card = state.cards[id + query] = state.cards[id + query] || await api(`/api/models/${encodeURIComponent(id)}${query}`);
    if (box.dataset.want === id) box.replaceChildren(cardView(card, Boolean(jobConfig)));
  } catch (e) {
    if (box.dataset.want === id) box.replaceChildren(el("p", { class: "error-text", text: `No method card: ${e.message}` }));
  }
}

// ---------------------------------------------------------------------------------------------------- routing
async function route() {
  cleanup.forEach((f) => f());
  cleanup = [];
  clearMessage();
  const [path, query] = (location.hash.slice(1) || "/new").split("?");
  const params = new URLSearchParams(query || "");
  const view = $("#view");
  view.replaceChildren();
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", path.startsWith(a.getAttribute("href").slice(1)));
  try {
    await catalogue();
    if (path === "/new") renderNew(view);
    else if (path === "/jobs") renderJobs(view);
    else if (path.startsWith("/job/")) await renderJob(view, Number(path.split("/")[2]));
    else if (path === "/compare") await renderCompare(view, params);
    else view.append(el("p", { text: "Nothing here. " }, el("a", { href: "#/new", text: "Start a job" })));
  } catch (e) { fail(e); }
}
window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", () => {
  $("#token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.token = $("#token-input").value;
    localStorage.setItem("blocklab-token", state.token);
    $("#token-box").hidden = true;
    showMessage("Token saved.", "info");
  });
  route();
});

// ---------------------------------------------------------------------------------------------------- new job
// Every field comes from GET /api/options (core/config.py declares them); the paper's preset is their defaults,
// with the model's own values (GET /api/models: `preset`, e.g. batch 256 for Swin-B) for fields left untouched.
function fieldRow(name, label, input, help) {
  return el("div", { class: "row" }, el("label", { for: `f-${name}`, text: label, title: help || null }), input,
            help ? el("div", { class: "hint", text: help }) : null, el("div", { class: "field-error", id: `err-${name}` }));
}

function optionValue(o, modelId) {
  const m = modelById(modelId);
  return m && m.preset && o.name in m.preset ? m.preset[o.name] : o.default;
}

function setInput(input, o, value) {
  if (o.type === "bool") input.checked = Boolean(value);
  else input.value = value === null || value === undefined ? "" : String(value);
}

function optionInput(o) {
  let input;
  if (o.choices) {
    input = el("select", { id: `f-${o.name}`, name: o.name }, o.choices.map((c) => el("option", { value: c, text: c })));
  } else if (o.type === "bool") {
    input = el("input", { id: `f-${o.name}`, name: o.name, type: "checkbox" });
  } else if (o.type === "int" || o.type === "float") {
    input = el("input", { id: `f-${o.name}`, name: o.name, type: "number", step: o.type === "int" ? 1 : "any",
                          min: o.min ?? null, max: o.max ?? null, placeholder: o.nullable ? `empty: ${o.none_means || "none"}` : null });
  } else {
    input = el("input", { id: `f-${o.name}`, name: o.name, type: "text", maxlength: 200 });
  }
  input.addEventListener("input", () => { input.dataset.touched = "1"; });
  input.addEventListener("change", () => { input.dataset.touched = "1"; });
  return input;
}

function modelPicker() {
  const select = el("select", { id: "f-model", name: "model" });
  for (const [family, label] of [["transformer", "Transformers"], ["cnn", "CNNs"]]) {
    const group = el("optgroup", { label });
    for (const m of state.models.filter((x) => x.family === family)) {
      const paper = m.in_paper ? ` · paper ${pct(m.paper_val_acc)}, ${int(m.paper_trainable_params)} trainable`
                               : ` · ${int(m.trainable_params)} trainable${m.quick ? " · quick" : ""}`;
      group.append(el("option", { value: m.id, text: `${m.paper_name || m.id}${m.paper_name ? ` (${m.id})` : ""}${paper}` }));
    }
    select.append(group);
  }
  return select;
}

function renderNew(view) {
  const form = el("form", { class: "job card", id: "job-form", novalidate: true });
  const modelOpt = state.options.find((o) => o.name === "model");
  const picker = modelPicker();
  picker.value = modelOpt.default;
  form.append(el("h2", { text: "New job" }),
    el("p", { class: "muted", text: "The paper's preset is filled in: 224 px, fp32, Adam 1e-4, batch 512 (256 for Swin-B), 20 epochs, LR x0.6 after 2 epochs without progress, random horizontal flip; the Keras CNNs get the authors' Keras head and defaults. The method card beside it says what the chosen model runs and where it still differs from the authors' runs." }),
    fieldRow("name", "Name", el("input", { id: "f-name", name: "name", value: "my run", maxlength: 200 })),
    fieldRow("model", modelOpt.label, picker, modelOpt.help));
  const advanced = el("details", { id: "advanced" }, el("summary", { text: "Advanced settings" }));
  const inputs = [];
  for (const o of state.options) {
    if (o.name === "model") continue;
    const input = optionInput(o);
    setInput(input, o, optionValue(o, picker.value));
    inputs.push([o, input]);
    (o.advanced ? advanced : form).append(fieldRow(o.name, o.label, input, o.advanced ? o.help : null));
  }
  const cardBox = el("aside", { class: "card method-card", id: "method-card" });
  picker.addEventListener("change", () => {  // the model's own preset values, where the user changed nothing
    for (const [o, input] of inputs) if (!input.dataset.touched) setInput(input, o, optionValue(o, picker.value));
    showCard(cardBox, picker.value);
  });
  form.append(advanced, el("div", {}, el("button", { type: "submit", id: "submit" , text: "Start job" })));
  form.addEventListener("submit", (ev) => { ev.preventDefault(); submitJob(form); });
  showCard(cardBox, picker.value);

  const reproduce = el("div", { class: "card" }, el("h2", { text: "Reproduce Table 1" }),
    el("p", { class: "muted", text: "Queue the paper's ten models with the paper preset as one group, then compare them side by side with Table 1." }),
    el("button", { id: "reproduce", class: "secondary", text: "Reproduce Table 1", onclick: reproduceTable1 }));
  view.append(el("div", { class: "new-job" }, form, cardBox), reproduce);
}

function readConfig(form) {
  const cfg = { model: $("#f-model", form).value };
  for (const o of state.options) {
    if (o.name === "model") continue;
    const input = $(`#f-${o.name}`, form);
    if (o.type === "bool") cfg[o.name] = input.checked;
    else if (o.choices || o.type === "str") cfg[o.name] = input.value;
    else cfg[o.name] = input.value.trim() === "" ? null : Number(input.value);
  }
  return cfg;
}

async function submitJob(form) {
  clearMessage();
  form.querySelectorAll(".field-error").forEach((e) => (e.textContent = ""));
  const button = $("#submit", form);
  button.disabled = true;
  try {
    const exp = await api("/api/experiments", { method: "POST", json: { name: $("#f-name", form).value, config: readConfig(form) } });
    location.hash = `#/job/${exp.jobs[0].id}`;
  } catch (e) {
    if (e.status === 422 && Array.isArray(e.detail)) {
      const loose = [];
      for (const d of e.detail) {
        const field = d.loc[d.loc.length - 1];
        const slot = $(`#err-${field}`, form);
        if (slot) {
          slot.textContent = d.msg;
          if ($("#advanced", form).contains(slot)) $("#advanced", form).open = true;
        } else loose.push(`${d.loc.join(".")}: ${d.msg}`);
      }
      showMessage(loose.length ? loose.join("; ") : "Please correct the highlighted fields.");
    } else fail(e);
  } finally { button.disabled = false; }
}

async function reproduceTable1() {
  try {
    const exps = await api("/api/reproduce", { method: "POST", json: {} });
    location.hash = `#/compare?group=${encodeURIComponent(exps[0].group)}`;
  } catch (e) { fail(e); }
}

// ---------------------------------------------------------------------------------------------------- jobs
function progressCell(j) {
  const within = can("progressing", j) && j.progress.epoch > j.epochs_done && j.progress.batches
    ? j.progress.batch / j.progress.batches : 0;
  const frac = Math.min((j.epochs_done + within) / j.epochs, 1);
  const batch = can("progressing", j) && j.progress.batches
    ? ` · ${j.progress.phase} batch ${j.progress.batch}/${j.progress.batches}` : "";
  return el("td", { class: "progress" }, el("span", { class: "bar" }, el("span", { style: `width:${(100 * frac).toFixed(1)}%` })),
            ` epoch ${j.epochs_done}/${j.epochs}${batch}`);
}

// A button that is disabled while its request is in flight: a double click sends one request.
function actionButton(cls, text, request, then) {
  const b = el("button", { class: `secondary ${cls}`, text });
  b.addEventListener("click", async () => {
    b.disabled = true;
    try { await request(); await then(); } catch (e) { b.disabled = false; fail(e); }
  });
  return b;
}

function jobActions(j, then) {
  const post = (what) => () => api(`/api/jobs/${j.id}/${what}`, { method: "POST" });
  const out = [];
  if (can("cancellable", j)) out.push(actionButton("cancel", "Cancel", post("cancel"), then));
  if (can("resumable", j)) out.push(actionButton("resume", "Resume", post("resume"), then));
  return out;
}

function jobRow(j, refresh) {
  const actions = el("td", {}, ...jobActions(j, refresh));
  const row = el("tr", { "data-job": j.id },
    el("td", {}, el("a", { href: `#/job/${j.id}`, text: `#${j.id}` })),
    el("td", { class: "name", text: j.experiment_name }),
    el("td", { class: `status status-${j.status}`, text: j.status }),
    el("td", { text: j.model }),
    progressCell(j),
    el("td", { text: can("progressing", j) ? secs(j.eta_s) : "–" }),
    el("td", { class: "best", text: pct(j.best_val_acc) }),
    el("td", { text: pct(j.paper_val_acc) }),
    actions);
  if (j.error) row.title = j.error;
  return row;
}

function renderJobs(view) {
  const tbody = el("tbody", { id: "jobs-body" });
  view.append(el("div", { class: "card" }, el("h2", { text: "Jobs" }),
    el("table", { id: "jobs" }, el("thead", {}, el("tr", {}, ["Job", "Name", "Status", "Model", "Progress", "ETA", "Best val acc", "Paper"].map((h) => el("th", { text: h })), el("th"))), tbody)));
  let busy = false;
  const refresh = async () => {
    if (busy) return;
    busy = true;
    try {
      const jobs = await api("/api/jobs");
      tbody.replaceChildren(...(jobs.length ? jobs.map((j) => jobRow(j, refresh)) : [el("tr", {}, el("td", { colspan: 9, class: "muted", text: "No jobs yet." }))]));
    } catch (e) { fail(e); } finally { busy = false; }
  };
  refresh();
  const timer = setInterval(refresh, 1000);
  cleanup.push(() => clearInterval(timer));
}

// ---------------------------------------------------------------------------------------------------- one job
const LAYOUT = (title, y) => ({ title: { text: title }, uirevision: "keep", margin: { t: 40, r: 20, b: 40, l: 55 },
  xaxis: { title: { text: "epoch" }, dtick: 1 }, yaxis: { title: { text: y } }, legend: { orientation: "h" } });

function paperTraces(model, nEpochs) {
  const traces = [];
  const curve = paperCurve(model);
  if (curve) traces.push({ x: curve.map((p) => p.epoch), y: curve.map((p) => p.val_acc), name: `paper: ${model.paper_name}`,
                           mode: "lines+markers", line: { color: "#999" }, marker: { size: 4 } });
  if (model && model.paper_val_acc) {
    const last = Math.max(nEpochs, curve ? curve.length : 0, 1);
    traces.push({ x: [1, last], y: [model.paper_val_acc, model.paper_val_acc], mode: "lines",
                  name: `paper best ${pct(model.paper_val_acc)}`, line: { dash: "dash", color: "#c0392b" } });
  }
  return traces;
}

async function renderJob(view, id) {
  const job = await api(`/api/jobs/${id}`);
  const model = modelById(job.model);
  const head = el("div", { class: "card", id: "job-head" });
  const plots = el("div", { class: "grid2" },
    el("div", { class: "card" }, el("div", { id: "plot-acc", class: "plot" })),
    el("div", { class: "card" }, el("div", { id: "plot-loss", class: "plot" })));
  const cardBox = el("div", { class: "card method-card", id: "job-card" });
  const epochPick = el("select", { id: "epoch-pick" });
  const detail = el("div", { class: "card" }, el("label", {}, "Epoch: ", epochPick),
    el("div", { class: "grid2" }, el("div", { id: "plot-class", class: "plot" }), el("div", { id: "plot-confusion", class: "plot" })));
  view.append(head, plots, detail, cardBox);
  if (model) {
    api(`/api/experiments/${job.experiment_id}`).then((exp) => showCard(cardBox, job.model, exp.config))
      .catch((e) => cardBox.replaceChildren(el("p", { class: "error-text", text: `No method card: ${e.message}` })));
  } else cardBox.replaceChildren(el("p", { class: "muted", text: `${job.model} is not in the catalogue: no method card.` }));

  let metrics = await api(`/api/jobs/${id}/metrics`);
  let current = job;
  const classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];

  const drawHead = () => {
    const j = current;
    const actions = [];
    actions.push(...jobActions(j, () => (can("cancellable", j) ? refreshJob() : route())));
    head.replaceChildren(
      el("h2", {}, `Job #${j.id}: `, el("span", { class: "name", text: j.experiment_name })),
      el("p", {}, "Status: ", el("span", { id: "job-status", class: `status status-${j.status}`, text: j.status }),
        ` · ${j.model}${model && model.paper_name ? ` (paper: ${model.paper_name}, ${pct(model.paper_val_acc)})` : ""}`,
        ` · epoch ${j.epochs_done}/${j.epochs}`,
        can("progressing", j) && j.progress.batches ? ` · ${j.progress.phase} batch ${j.progress.batch}/${j.progress.batches}` : "",
        can("progressing", j) ? ` · ETA ${secs(j.eta_s)}` : "",
        ` · best ${pct(j.best_val_acc)}${j.best_epoch ? ` (epoch ${j.best_epoch})` : ""}`,
        j.device ? ` · ${j.device}` : "", " ", ...actions),
      j.error ? el("p", { class: "error-text", id: "job-error", text: j.error }) : "",
      // A diverged epoch is data: its non-finite values are named here (the curves leave a gap there).
      ...metrics.filter((m) => m.nonfinite).map((m) => el("p", { class: "error-text nonfinite",
        text: `epoch ${m.epoch}: ${Object.entries(m.nonfinite).map(([k, v]) => `${k} ${v}`).join(", ")}` })),
      el("p", {}, el("a", { href: `/api/jobs/${id}/metrics.csv`, text: "metrics.csv" }), " · ",
        el("a", { href: `#/compare?jobs=${id}`, text: "compare" })));
  };

  const draw = () => {
    const ep = metrics.map((m) => m.epoch);
    Plotly.react("plot-acc", [
      { x: ep, y: metrics.map((m) => m.val_acc), name: "val accuracy", mode: "lines+markers" },
      { x: ep, y: metrics.map((m) => m.train_acc), name: "train accuracy", mode: "lines+markers" },
      ...paperTraces(model, current.epochs)], LAYOUT("Accuracy", "accuracy"), { responsive: true });
    // With the head's L2 penalty on, the losses Keras would have printed (the authors' logs) go beside the plain ones.
    const keras = metrics.some((m) => m.keras_val_loss !== null && m.keras_val_loss !== undefined) ? [
      { x: ep, y: metrics.map((m) => m.keras_val_loss), name: "val loss + L2 (Keras)", mode: "lines", line: { dash: "dot" } },
      { x: ep, y: metrics.map((m) => m.keras_train_loss), name: "train loss + L2 (Keras)", mode: "lines", line: { dash: "dot" } }] : [];
    Plotly.react("plot-loss", [
      { x: ep, y: metrics.map((m) => m.val_loss), name: "val loss", mode: "lines+markers" },
      { x: ep, y: metrics.map((m) => m.train_loss), name: "train loss", mode: "lines+markers" }, ...keras],
      LAYOUT("Loss (cross-entropy)", "loss"), { responsive: true });
    const chosen = Number(epochPick.value) || (ep.length ? ep[ep.length - 1] : null);
    epochPick.replaceChildren(...ep.map((e) => el("option", { value: e, text: `epoch ${e}` })));
    if (chosen) epochPick.value = chosen;
    const m = metrics.find((x) => x.epoch === chosen);
    if (m && m.per_class_acc) {
      Plotly.react("plot-class", [{ type: "bar", x: classes, y: m.per_class_acc, name: "per-class accuracy" }],
        { title: { text: `Per-class accuracy, epoch ${m.epoch}` }, uirevision: "keep", yaxis: { range: [0, 1] }, margin: { t: 40 } }, { responsive: true });
      Plotly.react("plot-confusion", [{ type: "heatmap", z: m.confusion, x: classes, y: classes, colorscale: "Blues" }],
        { title: { text: `Confusion matrix, epoch ${m.epoch}` }, uirevision: "keep", xaxis: { title: { text: "predicted" } },
          yaxis: { title: { text: "true" }, autorange: "reversed" }, margin: { t: 40 } }, { responsive: true });
    }
  };
  epochPick.addEventListener("change", draw);

  const refreshJob = async () => { current = await api(`/api/jobs/${id}`); drawHead(); };
  drawHead();
  draw();

  const source = new EventSource(`/api/jobs/${id}/events`);
  source.addEventListener("epoch", async () => {
    try { metrics = await api(`/api/jobs/${id}/metrics`); await refreshJob(); draw(); } catch (e) { fail(e); }
  });
  source.addEventListener("progress", (ev) => {
    const p = JSON.parse(ev.data);
    current = { ...current, status: p.status, eta_s: p.eta_s, epochs_done: p.epochs_done,
                progress: { phase: p.phase, epoch: p.epoch, batch: p.batch, batches: p.batches } };
    drawHead();
  });
  source.addEventListener("status", () => refreshJob().catch(fail));
  source.addEventListener("end", () => { source.close(); refreshJob().catch(fail); });
  cleanup.push(() => source.close());
}

// ---------------------------------------------------------------------------------------------------- compare
async function renderCompare(view, params) {
  const jobs = await api("/api/jobs");
  let ids = (params.get("jobs") || "").split(",").filter(Boolean).map(Number);
  const group = params.get("group");
  if (group) {
    const exps = await api(`/api/experiments?group=${encodeURIComponent(group)}`);
    ids = exps.flatMap((e) => (e.jobs.length ? [e.jobs[e.jobs.length - 1].id] : []));
  }
  const picker = el("div", { class: "card", id: "picker" }, el("h2", { text: group ? `Compare: group ${group}` : "Compare" }));
  const list = el("div", {});
  for (const j of jobs) {
    list.append(el("label", { style: "display:block" },
      el("input", { type: "checkbox", value: j.id, checked: ids.includes(j.id), class: "pick" }),
      ` #${j.id} `, el("span", { text: j.experiment_name }), ` · ${j.model} · ${j.status} · best ${pct(j.best_val_acc)}`));
  }
  picker.append(list, el("button", { id: "compare-go", text: "Compare selected", onclick: () => {
    const chosen = [...list.querySelectorAll("input.pick:checked")].map((i) => i.value);
    location.hash = `#/compare?jobs=${chosen.join(",")}`;
  } }));
  view.append(picker);
  if (!ids.length) { view.append(el("p", { class: "muted", text: "Pick jobs to compare." })); return; }

  const chosen = jobs.filter((j) => ids.includes(j.id)).sort((x, y) => x.id - y.id);
  const metrics = await Promise.all(chosen.map((j) => api(`/api/jobs/${j.id}/metrics`)));
  const csvHref = `/api/compare.csv?jobs=${chosen.map((j) => j.id).join(",")}`;
  view.append(el("div", { class: "card" }, el("a", { href: csvHref, download: "blocklab-compare.csv", id: "download-csv" },
                                                   el("button", { type: "button", text: "Download CSV" }))));

  // Validation curves with the paper's lines.
  const traces = chosen.map((j, i) => ({ x: metrics[i].map((m) => m.epoch), y: metrics[i].map((m) => m.val_acc),
    name: plotText(`#${j.id} ${j.experiment_name}`), mode: "lines+markers" }));
  const seen = new Set();
  for (const j of chosen) {
    const m = modelById(j.model);
    if (!m || !m.paper_name || seen.has(m.id)) continue;
    seen.add(m.id);
    const curve = paperCurve(m);
    if (curve) traces.push({ x: curve.map((p) => p.epoch), y: curve.map((p) => p.val_acc), name: `paper: ${m.paper_name}`, mode: "lines", line: { color: "#999" } });
    traces.push({ x: [1, Math.max(...chosen.map((c) => c.epochs), 20)], y: [m.paper_val_acc, m.paper_val_acc], mode: "lines",
                  name: `paper best: ${m.paper_name}`, line: { dash: "dash" } });
  }
  const curves = el("div", { class: "card" }, el("div", { id: "plot-compare", class: "plot" }));
  const fig2 = el("div", { class: "card" }, el("div", { id: "plot-fig2", class: "plot tall" }));
  // Table: runs beside the paper.
  const table = el("table", { id: "compare-table" }, el("thead", {}, el("tr", {},
    ["Job", "Name", "Model", "Paper model", "Best val acc", "Epoch", "Trainable params", "Paper acc", "Difference", "Paper trainable"].map((h) => el("th", { text: h })))));
  const body = el("tbody", {});
  for (const j of chosen) {
    const m = modelById(j.model);
    const diff = j.best_val_acc !== null && m && m.paper_val_acc ? j.best_val_acc - m.paper_val_acc : null;
    body.append(el("tr", { "data-job": j.id }, el("td", { text: `#${j.id}` }), el("td", { text: j.experiment_name }),
      el("td", { text: j.model }), el("td", { text: m && m.paper_name ? m.paper_name : "–" }),
      el("td", { text: pct(j.best_val_acc) }), el("td", { text: j.best_epoch ?? "–" }), el("td", { text: int(j.trainable_params) }),
      el("td", { text: pct(m && m.paper_val_acc) }), el("td", { text: diff === null ? "–" : `${diff >= 0 ? "+" : ""}${(100 * diff).toFixed(2)} pts` }),
      el("td", { text: int(m && m.paper_trainable_params) })));
  }
  table.append(body);
  view.append(curves, el("div", { class: "card" }, el("h3", { text: "Runs beside Table 1" }), table), fig2);
  Plotly.react("plot-compare", traces, LAYOUT("Validation accuracy", "accuracy"), { responsive: true });

  // The paper's Fig. 2 view: trainable parameters against accuracy.
  const t1 = state.paper.table1;
  const runs = chosen.filter((j) => j.best_val_acc !== null);
  Plotly.react("plot-fig2", [
    { x: t1.map((r) => r.trainable_params), y: t1.map((r) => r.val_acc), text: t1.map((r) => r.paper_name),
      mode: "markers+text", textposition: "top center", name: "paper (Table 1)", marker: { size: 9, color: "#999" } },
    { x: runs.map((j) => j.trainable_params), y: runs.map((j) => j.best_val_acc), text: runs.map((j) => plotText(`#${j.id}`)),
      mode: "markers+text", textposition: "bottom center", name: "your runs", marker: { size: 10, color: "#2f62c9" } }],
    { title: { text: "Trainable parameters vs. accuracy (paper Fig. 2)" }, uirevision: "keep",
      xaxis: { title: { text: "trainable parameters" }, type: "log" }, yaxis: { title: { text: "best val accuracy" } } },
    { responsive: true });
}
