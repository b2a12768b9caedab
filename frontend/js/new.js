// The new-job form, a depth sweep of it and Reproduce Table 1.
"use strict";
import { $, el, pct, int, secs, plotText, state, api, ApiError, showMessage, clearMessage, fail, onLeave, viewSignal, isAbort, catalogue, can, modelById, paperCurve } from "./util.js";
import { showCard } from "./card.js";
import { fetchPlan, confirmPlan } from "./plan.js";

// ---------------------------------------------------------------------------------------------------- new job
// Every field comes from GET /api/options (core/config.py declares them); the paper's preset is their defaults,
// with the model's own values (GET /api/models: `preset`, e.g. batch 256 for Swin-B) for fields left untouched.
function fieldRow(name, label, input, help) {
  return el("div", { class: "row" }, el("label", { for: `f-${name}`, text: label, title: help || null }), input,
            help ? el("div", { class: "hint", text: help }) : null, el("div", { class: "field-error", id: `err-${name}` }),
            el("div", { class: "field-warn", id: `warn-${name}`, "aria-live": "polite" }));
}

function optionValue(o, modelId) {
  const m = modelById(modelId);
  return m && m.preset && o.name in m.preset ? m.preset[o.name] : o.default;
}

function setInput(input, o, value) {
  if (o.type === "bool") input.checked = Boolean(value);
  else {
    const v = value === null || value === undefined ? "" : String(value);
    // A value the option's pattern allows beyond its choices (a cloned job's folder:NAME): offered, not dropped.
    if (input.tagName === "SELECT" && v && o.pattern && ![...input.options].some((op) => op.value === v)
        && new RegExp(`^(?:${o.pattern})$`).test(v)) input.append(el("option", { value: v, text: v }));
    input.value = v;
  }
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


// ---------------------------------------------------------------------------------------------------- form values
// The form starts from, in order: the job being cloned (#/new?clone=<job id>), the values last queued from this
// browser (localStorage), or the paper's preset. "Back to the paper's preset" returns to the last.
const REMEMBER = "blocklab-form";

function remembered() {
  try { return JSON.parse(localStorage.getItem(REMEMBER)) || null; } catch (e) { return null; }
}
function remember(body) {
  try { localStorage.setItem(REMEMBER, JSON.stringify({ name: body.name, config: body.config })); } catch (e) { /* private mode */ }
}

// A job's config (JobPublic.config, or its experiment's on an older backend) and the name to give a clone.
async function cloneSource(jobId, signal) {
  const job = await api(`/api/jobs/${jobId}`, { signal });
  const config = job.config || (await api(`/api/experiments/${job.experiment_id}`, { signal })).config;
  return { name: `${job.experiment_name} (clone of #${job.id})`, config, job };
}

export function renderNew(view) {
  const signal = viewSignal();
  const form = el("form", { class: "job card", id: "job-form", novalidate: true });
  const modelOpt = state.options.find((o) => o.name === "model");
  const picker = modelPicker();
  picker.value = modelOpt.default;
  // Any model in timm's registry, beyond the catalogue's: its name typed here wins over the picker (the API checks it).
  const other = el("input", { id: "f-timm-model", name: "timm_model", placeholder: "or any timm model, e.g. tf_efficientnet_lite2",
    spellcheck: "false", autocomplete: "off", "aria-label": "Any timm model name", maxlength: 200 });
  const chosen = () => other.value.trim() || picker.value;
  const origin = el("p", { class: "form-origin", id: "form-origin" });
  form.append(el("h2", { text: "New job" }),
    el("p", { class: "muted", text: "The paper's preset is filled in: 224 px, fp32, Adam 1e-4, batch 512 (256 for Swin-B), 20 epochs, LR x0.6 after 2 epochs without progress, random horizontal flip; the Keras CNNs get the authors' Keras head and defaults. The method card beside it says what the chosen model runs and where it still differs from the authors' runs." }),
    origin,
    fieldRow("name", "Name", el("input", { id: "f-name", name: "name", value: "my run", maxlength: 200 })),
    fieldRow("model", modelOpt.label, el("div", { class: "model-choice" }, picker, other), modelOpt.help));
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

  // The card follows the form: it is the card of the config Start job would submit (GET /api/models/{id} with the
  // form's values), with where it leaves the paper preset. Its answer also carries the server's warnings on that
  // config (core.config.config_warnings: a batch larger than the training set), shown under their fields.
  const showWarnings = (card) => {
    form.querySelectorAll(".field-warn").forEach((w) => (w.textContent = ""));
    for (const w of (card && card.warnings) || []) {
      const slot = $(`#warn-${w.loc[w.loc.length - 1]}`, form);
      if (slot) slot.textContent = w.msg;
    }
  };
  // While a timm name is typed the picker is not what runs: it is greyed out (it showed DeiT-B beside "resnet18").
  const syncPicker = () => { picker.disabled = other.value.trim() !== ""; picker.title = picker.disabled ? "not used: the timm model name below is" : ""; };
  const followForm = () => { syncPicker(); return showCard(cardBox, chosen(), readConfig(form), "form").then((card) => { if (card) showWarnings(card); }); };
  form.addEventListener("input", followForm);
  form.addEventListener("change", followForm);
  // Your own image folders (folder:NAME) join the dataset choices as the server finds them.
  const byName = Object.fromEntries(inputs.map(([o, input]) => [o.name, input]));
  const addFolders = () => {
    const select = byName.dataset;
    if (!select || select.tagName !== "SELECT") return;
    const have = new Set([...select.options].map((op) => op.value));
    for (const d of state.datasets || []) if (!have.has(d.id)) select.append(el("option", { value: d.id, text: d.id }));
  };
  (state.datasets ? Promise.resolve(state.datasets) : api("/api/datasets", { signal }))
    .then((d) => { state.datasets = d; addFolders(); }).catch(() => {});

  const resetTo = (config) => {  // values as given; those equal to the model's preset keep following the model
    if (config.model && modelById(config.model)) picker.value = config.model;
    if (config.model) other.value = modelById(config.model) ? "" : config.model;
    for (const [o, input] of inputs) {
      const preset = optionValue(o, picker.value);
      const value = config && o.name in config ? config[o.name] : preset;
      setInput(input, o, value);
      if (JSON.stringify(value ?? null) === JSON.stringify(preset ?? null)) delete input.dataset.touched;
      else input.dataset.touched = "1";
    }
    followForm();
  };
  const presetButton = el("button", { type: "button", class: "secondary", id: "preset-reset", text: "Back to the paper's preset",
    onclick: () => { resetTo({ model: picker.value }); origin.textContent = `The paper's preset for ${picker.value}.`; } });
  picker.addEventListener("change", () => {  // the model's own preset values, where the user changed nothing
    for (const [o, input] of inputs) if (!input.dataset.touched) setInput(input, o, optionValue(o, picker.value));
    followForm();
  });
  // The plan of any job, short ones too, one click away (Start job shows it only for a long, blocked or flagged run).
  const planButton = el("button", { type: "button", class: "secondary", id: "plan-open", text: "Show the plan",
    title: "time on this worker and elsewhere, weights and data, before anything is queued",
    onclick: () => submitJob(form, view, signal, { always: true }) });
  form.append(advanced, el("div", { class: "form-buttons" }, el("button", { type: "submit", id: "submit", text: "Start job" }), planButton, presetButton));
  form.addEventListener("submit", (ev) => { ev.preventDefault(); submitJob(form, view, signal); });

  const reproduce = el("div", { class: "card" }, el("h2", { text: "Reproduce Table 1" }),
    el("p", { class: "muted", text: "Queue the paper's ten models with the paper preset as one group, then compare them side by side with Table 1. A plan (times, weights and data) comes first: nothing is queued before you confirm it." }),
    el("button", { id: "reproduce", class: "secondary", text: "Reproduce Table 1", onclick: () => reproduceTable1(view, signal) }));
  view.append(el("div", { class: "new-job" }, form, cardBox), depthSweepCard(form, view, signal), reproduce);

  const cloneId = Number(new URLSearchParams(location.hash.split("?")[1] || "").get("clone"));
  const last = remembered();
  if (cloneId) {
    origin.textContent = `Loading job #${cloneId}…`;
    cloneSource(cloneId, signal).then((src) => {
      $("#f-name", form).value = src.name;
      resetTo(src.config);
      origin.textContent = `Filled in from job #${cloneId}${src.job.dry_run ? " (a dry run: its reduced values are filled in)" : ""}: change what you want, then start it.`;
      origin.dataset.source = "clone";
    }).catch((e) => { if (!isAbort(e)) { origin.textContent = ""; fail(e); } });
  } else if (last && last.config) {
    $("#f-name", form).value = last.name || "my run";
    resetTo(last.config);
    origin.textContent = "Your last values are filled in.";
    origin.dataset.source = "remembered";
  } else followForm();
}

function readConfig(form) {
  const cfg = { model: $("#f-timm-model", form).value.trim() || $("#f-model", form).value };
  for (const o of state.options) {
    if (o.name === "model") continue;
    const input = $(`#f-${o.name}`, form);
    if (o.type === "bool") cfg[o.name] = input.checked;
    else if (o.choices || o.type === "str") cfg[o.name] = input.value;
    else cfg[o.name] = input.value.trim() === "" ? null : Number(input.value);
  }
  return cfg;
}

function showFieldErrors(form, e) {
  if (!(e.status === 422 && Array.isArray(e.detail))) return false;
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
  return true;
}

// Start job: ask for the plan first; a long job (or one its preflight blocks, or one with a warning) is shown and
// confirmed before it is queued, a short one is queued at once. "Show the plan" (`always`) shows it for any job.
async function submitJob(form, view, signal, { always = false } = {}) {
  clearMessage();
  form.querySelectorAll(".field-error").forEach((e) => (e.textContent = ""));
  const button = $(always ? "#plan-open" : "#submit", form);
  button.disabled = true;
  const body = { name: $("#f-name", form).value, config: readConfig(form) };
  try {
    const plan = await fetchPlan({ configs: [body.config] }, signal);
    let dry = false;
    if (plan && (always || plan.long || plan.items.some((i) => i.blocked || (i.warnings || []).length))) {
      const ok = await confirmPlan(view, plan, { title: `Plan: ${body.name}`, what: "this job", signal });
      if (!ok) return;
      dry = ok.dry_run;
    }
    const exp = await api("/api/experiments", { method: "POST", json: dry ? { ...body, dry_run: true } : body, signal });
    remember(body);
    location.hash = `#/job/${exp.jobs[0].id}`;
  } catch (e) {
    if (!showFieldErrors(form, e)) fail(e);
  } finally { button.disabled = false; }
}

async function reproduceTable1(view, signal) {
  const button = $("#reproduce", view);
  button.disabled = true;
  try {
    const plan = await fetchPlan({ reproduce: true }, signal);
    const n = plan ? plan.items.length : state.paper.table1.length;
    const ok = await confirmPlan(view, plan, { title: "Plan: Reproduce Table 1", what: `${n} jobs`, signal });
    if (!ok) return;
    const exps = await api("/api/reproduce", { method: "POST", json: ok.dry_run ? { dry_run: true } : {}, signal });
    location.hash = `#/compare?group=${encodeURIComponent(exps[0].group)}`;
  } catch (e) { fail(e); } finally { button.disabled = false; }
}

// ---------------------------------------------------------------------------------------------------- depth sweep
// One model at several depths (how many of the last blocks train) as one group: one experiment per depth through
// POST /api/experiments, every other value from the form above. The option a sweep varies comes from the server
// (GET /api/depth: `axis`, as GET /api/options serves it), so nothing here names it.
let depthAxis = null;
const depthAxisOf = async (signal) => depthAxis || (depthAxis = (await api("/api/depth", { signal })).axis);

// "0, 1, 2, all" -> [0, 1, 2, null] (an empty value where the option allows one: all blocks), or the reason not.
export function parseDepths(text, axis) {
  const words = text.split(/[\s,;]+/).filter(Boolean);
  if (!words.length) return { error: "Give the depths to run, such as 0, 1, 2." };
  const out = [];
  for (const w of words) {
    const empty = axis.nullable && /^(all|none)$/i.test(w);
    const k = empty ? null : Number(w);
    if (!empty && !(Number.isInteger(k) && (axis.min === null || k >= axis.min) && (axis.max === null || k <= axis.max)))
      return { error: `${JSON.stringify(w)} is not a depth: a whole number from ${axis.min} to ${axis.max}${axis.nullable ? ", or all" : ""}.` };
    if (!out.includes(k)) out.push(k);
  }
  if (out.length < 2) return { error: "A sweep needs at least two different depths." };
  return { depths: out };
}

export const depthText = (k) => (k === null || k === undefined ? "all" : String(k));

function depthSweepCard(form, view, signal) {
  const depths = el("input", { id: "sweep-depths", type: "text", value: "0, 1, 2", maxlength: 200, "aria-describedby": "sweep-error" });
  const group = el("input", { id: "sweep-group", type: "text", maxlength: 100, placeholder: "empty: one is made up" });
  const label = el("span", { id: "sweep-axis", text: "Depths" });
  depthAxisOf(signal).then((axis) => { label.textContent = axis.label; depths.title = axis.help; }).catch(() => { /* said on submit */ });
  return el("div", { class: "card depth-sweep", id: "depth-sweep" }, el("h2", { text: "Depth sweep" }),
    el("p", { class: "muted", text: "The model and values above, run once per depth (0 = the head alone on frozen features, 1 = the paper's last block, all = full fine-tuning), as one group; its chart sets best validation accuracy, time per epoch and trainable parameters against depth, with the paper's result at 1 marked." }),
    el("div", { class: "row" }, el("label", { for: "sweep-depths" }, label, " (several)"), depths),
    el("div", { class: "row" }, el("label", { for: "sweep-group", text: "Group" }), group),
    el("div", { class: "field-error", id: "sweep-error", "aria-live": "polite" }),
    el("button", { type: "button", id: "sweep-submit", class: "secondary", text: "Start depth sweep",
                   onclick: () => submitSweep(form, view, signal) }));
}

async function submitSweep(form, view, signal) {
  clearMessage();
  const error = $("#sweep-error", view);
  error.textContent = "";
  form.querySelectorAll(".field-error").forEach((e) => (e.textContent = ""));
  const button = $("#sweep-submit", view);
  button.disabled = true;
  try {
    const axis = await depthAxisOf(signal);
    const parsed = parseDepths($("#sweep-depths", view).value, axis);
    if (parsed.error) { error.textContent = parsed.error; return; }
    const base = readConfig(form);
    const name = $("#f-name", form).value.trim() || base.model;
    const group = $("#sweep-group", view).value.trim() ||
      `depth ${base.model} ${new Date().toISOString().slice(0, 19).replace("T", " ")}`;
    const configs = parsed.depths.map((k) => ({ ...base, [axis.name]: k }));
    const plan = await fetchPlan({ configs }, signal);
    let dry = false;
    if (plan && (plan.long || plan.items.some((i) => i.blocked || (i.warnings || []).length))) {
      const ok = await confirmPlan(view, plan, { title: `Plan: ${name}, depths ${parsed.depths.map(depthText).join(", ")}`, what: `${configs.length} jobs`, signal });
      if (!ok) return;
      dry = ok.dry_run;
    }
    for (const [i, config] of configs.entries()) {
      const body = { name: `${name} · ${axis.label} ${depthText(parsed.depths[i])}`, group, config };
      await api("/api/experiments", { method: "POST", json: dry ? { ...body, dry_run: true } : body, signal });
    }
    remember({ name, config: base });
    location.hash = `#/depth/${encodeURIComponent(group)}`;
  } catch (e) {
    if (!showFieldErrors(form, e)) fail(e);
  } finally { button.disabled = false; }
}
