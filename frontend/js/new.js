// The new-job form and Reproduce Table 1.
"use strict";
import { $, el, pct, int, secs, plotText, state, api, ApiError, showMessage, clearMessage, fail, onLeave, viewSignal, isAbort, catalogue, can, modelById, paperCurve } from "./util.js";
import { showCard } from "./card.js";

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

export function renderNew(view) {
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
