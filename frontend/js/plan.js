// The plan shown before anything heavy is queued (POST /api/plan): per model what will run, how long it should take
// on this lab's worker and on a reference GPU, whether its weights and data are there, and the choice between the
// full paper run and a labelled dry run. Nothing is queued until the user confirms here.
"use strict";
import { el, int, api, ApiError, modelById } from "./util.js";
import { showCard, cardView } from "./card.js";

// The plan for {configs: [...]} or {reproduce: true}; null when this server has no plan endpoint (an older backend):
// the caller then still asks before queueing, without estimates.
export async function fetchPlan(body, signal) {
  try {
    return await api("/api/plan", { method: "POST", json: body, signal });
  } catch (e) {
    if (e instanceof ApiError && (e.status === 404 || e.status === 405)) return null;
    throw e;
  }
}

// Seconds as a person reads a duration: 40 s, 12 min, 3.4 h, 2.1 days.
export function duration(s) {
  if (s === null || s === undefined || !Number.isFinite(s)) return "unknown";
  if (s < 90) return `${Math.max(1, Math.round(s))} s`;
  if (s < 90 * 60) return `${Math.round(s / 60)} min`;
  if (s < 48 * 3600) return `${(s / 3600).toFixed(1)} h`;
  return `${(s / 86400).toFixed(1)} days`;
}

// An estimate as the plan can stand by it: a time once a job has calibrated the worker, a range before (the
// worker's start-up benchmark is the best case: core/estimate.py UNCALIBRATED_SPAN).
export function estimateText(seconds, range) {
  if (range && range.length === 2) return `${duration(range[0])} to ${duration(range[1])}`;
  return duration(seconds);
}

const WEIGHTS = { cached: "cached", none: "none needed (random init)", download: "will download", missing: "missing",
                  unknown: "unknown" };
const DATA = { present: "present", download: "will download", missing: "missing", unknown: "unknown" };

function preflightCell(p, words, what, label) {
  if (!p) return el("td", { class: "muted", text: "unknown", "data-label": label });
  const word = words[p.state] || p.state;
  const text = p.state === "download" && p.mb ? `will download about ${int(Math.round(p.mb))} MB` : word;
  return el("td", { class: `preflight preflight-${p.state}`, "data-what": what, "data-label": label },
    // A missing one's message is the row's "Blocked:" line (how to fix it): said once.
    el("span", { class: "state", text }), p.message && p.state !== "missing" ? el("div", { class: "hint", text: p.message }) : "");
}

// One line saying what the config runs (the card beside it says it in full).
function runSummary(cfg) {
  if (!cfg) return "";
  const imgs = cfg.train_per_class ? `${int(cfg.train_per_class * 10)} training images` : "all training images";
  const size = cfg.image_size ? `${cfg.image_size} px` : "native size";
  return `${cfg.epochs} epochs · batch ${cfg.batch_size} · ${size} · ${cfg.precision} · ${imgs} · weights ${cfg.weights}`;
}

// The method card's gist in the row (weights, input, trainable part, how many known deviations), the whole card
// one click away: the plan carries each item's card (else it is fetched when opened).
function cardSummary(card) {
  if (!card) return "";
  const row = (label) => (card.rows.find((r) => r.label === label) || {}).value;
  const parts = [row("Weights"), row("Image size"), row("Precision") && row("Precision").split(";")[0],
                 `${int(card.trainable_params)} trainable`];
  const dev = card.deviations.length ? ` · ${card.deviations.length} known deviation${card.deviations.length > 1 ? "s" : ""} from the authors' runs` : "";
  return parts.filter(Boolean).join(" · ") + dev;
}

function itemRow(item, refName) {
  const model = modelById(item.model);
  const card = el("div", { class: "method-card plan-card" });
  const more = el("details", { class: "plan-card-more" }, el("summary", { text: "method card" }), card);
  more.addEventListener("toggle", () => {
    if (!more.open || card.firstChild) return;
    if (item.card) card.append(cardView(item.card, true));
    else showCard(card, item.model, item.config);
  });
  const est = item.estimate || {};
  return el("tr", { "data-model": item.model, class: item.blocked ? "blocked" : null },
    el("td", {}, el("strong", { text: item.paper_name || (model && model.paper_name) || item.model }),
      el("div", { class: "hint", text: item.model }), el("div", { class: "hint run-summary", text: runSummary(item.config) }),
      el("div", { class: "hint card-summary", text: cardSummary(item.card) }),
      more,
      memoryLine(item.memory),
      bf16Line(item.bf16),
      est.no_flop_figure ? el("div", { class: "hint no-flop-figure", text: est.no_flop_figure }) : "",
      ...(item.warnings || []).map((w) => el("div", { class: "warn plan-warning", "data-field": w.loc.join("."), text: `${w.loc.join(".")}: ${w.msg}` })),
      item.blocked ? el("div", { class: "error-text block-reason", text: `Blocked: ${item.block_reason || "cannot run"}` }) : ""),
    el("td", { class: "est-this", "data-calibrated": est.calibrated ? "yes" : "no", "data-label": "This worker" },
      el("span", { class: "est-value", text: estimateText(est.this_device_s, est.range_s) }),
      est.this_device_s == null ? "" : el("div", { class: "hint est-basis", text: basisText(est) }),
      item.bf16 ? el("div", { class: "est-bf16", text: bf16Time(item.bf16) }) : ""),
    el("td", { class: "est-ref", text: duration(est.reference_s), title: refName ? `on ${refName}` : null, "data-label": "Reference GPU" }),
    el("td", { class: "est-t4", text: duration(est.t4_s), title: t4Detail(est.t4), "data-label": "Free T4 (Colab)" }),
    preflightCell(item.preflight && item.preflight.weights, WEIGHTS, "pretrained-weights", "Weights"),
    preflightCell(item.preflight && item.preflight.data, DATA, "training-data", "Data"));
}

// Points of accuracy, signed: "+0.40 points".
const points = (v) => `${v >= 0 ? "+" : "−"}${Math.abs(100 * v).toFixed(2)} points`;

// The same run in bf16 beside its fp32 time, where the worker runs bf16 natively (routers/plan.py): the time (in the
// "This worker" cell, under the fp32 one), and in the row the deviation it is and its effect on the best validation
// accuracy as this lab measured it (or that nobody has yet, and how to).
export function bf16Time(b) {
  const about = b.speedup_measured ? "" : "about ";
  const ratio = b.speedup >= 1 ? `${about}${b.speedup}× faster` : `${about}${(1 / b.speedup).toFixed(2)}× slower`;
  return `in bf16: ${estimateText(b.this_device_s, b.range_s)} (${ratio})`;
}

// How the "This worker" time was reached (core/estimate.py rate's bases).
function basisText(est) {
  if (est.calibrated) return est.basis === "measured" ? "calibrated: a job of this model and size ran here" : `calibrated on this worker by ${(est.calibrated_by || []).join(", ")}`;
  if (est.basis === "fp32 scaled") return `not calibrated: this model's fp32 job${est.calibrated_by.length === 1 ? "" : "s"} (${est.calibrated_by.join(", ")}) scaled by the worker's bf16 speed-up`;
  return "not calibrated: no job of this model has finished on this worker yet";
}

// The 95% interval of a mean of pair differences, from two pairs on; one pair has none and says so.
const interval = (a) => a.ci_low == null ? "; one pair: no interval" : `; 95% interval ${points(a.ci_low)} to ${points(a.ci_high)}`;

export function bf16Text(b) {
  const a = b.accuracy || {};
  const jobs = (ids) => ids.map((i) => `#${i}`).join(", ");
  const effect = a.basis === "these settings"
    ? `its effect on the best validation accuracy, measured here at these settings: ${points(a.effect)} (bf16 jobs ${jobs(a.bf16_jobs)} against fp32 jobs ${jobs(a.fp32_jobs)}, seed by seed${interval(a)})`
    : a.basis === "this model"
    ? `its effect on the best validation accuracy, measured here for this model at other settings: ${points(a.effect)} (${a.pairs} pair${a.pairs === 1 ? "" : "s"} of runs${interval(a)})`
    : `its effect on accuracy is not measured in this lab yet: queue the same run with precision bf16 beside it` +
      (a.reference ? ` (the engine's own check, ${a.reference.what}: ${points(a.reference.effect)}; ${a.reference.source})` : "");
  return `Running it in bf16 is a deviation: ${b.deviation.text}; ${effect}.`;
}

function bf16Line(b) {
  if (!b) return "";
  return el("div", { class: "hint plan-bf16", "data-basis": (b.accuracy && b.accuracy.basis) || "none", text: bf16Text(b) });
}

// Where the run's frozen features go on this worker (core.memory's rules on the limits it reported).
function memoryLine(mem) {
  if (!mem) return "";
  const here = mem.this_worker;
  const text = here ? `Frozen features on this worker: ${here.label}: ${here.reason}`
                    : mem.message || "Frozen features: this worker has not reported its memory yet";
  return el("div", { class: "hint plan-memory", text });
}

// The free-T4 estimate, in words: its precision, and where the features go in a Colab session.
function t4Detail(t4) {
  if (!t4) return null;
  const place = t4.placement ? ` Features: ${t4.placement.reason}.` : "";
  const disk = t4.disk_read_s ? ` Of it ${duration(t4.disk_read_s)} reading them back from disk; with the cache off ${duration(t4.uncached_s)}.` : "";
  return `on a free T4, ${t4.precision}.${place}${disk}`;
}

function workerLine(plan) {
  const w = plan.worker;
  if (!w) return el("p", { class: "warn", id: "plan-worker", text: "No worker has reported yet: the times below assume the reference GPU's speed, and the preflight could not ask a worker." });
  const gf = w.gflops ? `, benchmark ${int(Math.round(w.gflops))} GFLOP/s` +
    (w.bf16_speedup ? `; it runs bf16 natively: ${Object.entries(w.bf16_speedup).map(([f, g]) => `${g}× on a ${f === "cnn" ? "convolution" : f} block`).join(", ")}` : "") : "";
  const jobs = Object.keys(w.measured || {}).length;
  const timed = `${jobs} finished job${jobs === 1 ? "" : "s"} timed`;
  const cal = plan.calibrated ? ` Times are calibrated on it (${timed}).`
    : jobs ? ` Partly calibrated (${timed}): a model no finished job ran here gets a range from the start-up benchmark (the best case) up.`
    : " Not calibrated yet: no job has finished on it, so its times are ranges from its start-up benchmark (the best case) up; after a job of the model they are calibrated.";
  return el("p", { id: "plan-worker", class: w.stale ? "warn" : "muted",
                   text: `This lab's worker: ${w.name} on ${w.device}${gf}${w.stale ? " (its last report is old: it may be gone)" : ""}.${cal}` });
}

// Shows the plan in a modal dialog inside `container`; resolves {dry_run} when confirmed, null when dismissed (or
// when the view is left: the dialog goes with it).
export function confirmPlan(container, plan, { title, what, signal }) {
  return new Promise((resolve) => {
    const dialog = el("dialog", { id: "plan-dialog", "aria-labelledby": "plan-title" });
    let settled = false;
    const done = (v) => { if (settled) return; settled = true; if (dialog.open) dialog.close(); dialog.remove(); resolve(v); };
    const items = plan ? plan.items : [];
    const blocked = items.filter((i) => i.blocked);
    const refName = plan && plan.reference ? plan.reference.name : "a modern GPU";
    const dry = plan && plan.dry_run ? plan.dry_run : null;
    // The server lists what the dry run really changes (it caps, never raises); nothing left to cap: it says so.
    const changes = dry && dry.changes ? Object.entries(dry.changes).map(([k, v]) => `${k.replace(/_/g, " ")} ${v}`).join(", ") ||
                                         "the same settings (this run is already as small as a dry run)"
                                       : "fewer epochs and images, small size";
    const choice = (value, label, detail, checked) => el("label", { class: "plan-choice" },
      el("input", { type: "radio", name: "plan-mode", value, checked, id: `plan-mode-${value}` }),
      el("span", {}, el("strong", { text: label }), el("span", { class: "hint", text: detail })));
    const full = plan ? `${estimateText(plan.total_this_device_s, plan.total_range_s)} on this worker${plan.worker && plan.total_this_device_s != null && !plan.calibrated ? " (not calibrated)" : ""} · ${duration(plan.total_reference_s)} on ${refName}` +
                        (plan.total_t4_s != null ? ` · ${duration(plan.total_t4_s)} on a free T4` : "") : "no estimate";
    const dryText = dry ? `${changes}: ${duration(dry.total_this_device_s)} on this worker · ${duration(dry.total_reference_s)} on ${refName}. Marked "dry run" everywhere, never taken for a paper result.`
                        : `${changes}. Marked "dry run" everywhere, never taken for a paper result.`;
    const confirm = el("button", { type: "button", id: "plan-confirm", text: `Queue ${what}` });
    const back = el("button", { type: "button", class: "secondary", id: "plan-cancel", text: "Back, queue nothing" });
    // What the run is: the paper's preset, or where it leaves it (a 3-epoch 112 px run is not a "full paper run").
    const preset = plan ? Boolean(plan.paper_preset) : false;
    const leaves = [...new Set(items.flatMap((i) => i.card ? [...i.card.config_deviations, ...(i.card.length_differences || [])]
      .map((d) => `${d.label.toLowerCase()} ${d.value === null ? "empty" : d.value}`) : []))];
    const runIs = !plan ? "" : preset ? "the paper's preset" : leaves.length ? `not the paper's preset: ${leaves.join(", ")}` : "not the paper's preset";
    const runLabel = preset ? "Full paper run" : "Full run, as configured";
    dialog.append(
      el("h2", { id: "plan-title", text: plan ? `${title}: ${preset ? "the paper's preset" : "not the paper's preset"}` : title }),
      plan && !preset ? el("p", { class: "muted", id: "plan-what", text: `This run is ${runIs}.` }) : "",
      plan ? workerLine(plan) : el("p", { class: "warn", id: "plan-missing", text: "This server gives no plan (no POST /api/plan): no time estimate or weights check before queueing." }),
      plan ? el("div", { class: "plan-table-wrap" }, el("table", { id: "plan-items" },
        el("thead", {}, el("tr", {}, ["Model: what runs", "This worker", `Reference (${refName})`, "Free T4 (Colab)", "Weights", "Data"]
          .map((h) => el("th", { text: h })))),
        el("tbody", {}, items.map((i) => itemRow(i, refName))))) : "",
      plan ? el("p", { id: "plan-total" }, el("strong", { text: `Total, ${runLabel.toLowerCase()}: ` }), full) : "",
      plan && plan.t4 ? el("p", { class: "hint", id: "plan-t4-note",
        text: `Free T4 column: ${plan.t4.name}, estimated from ${plan.t4.source}. A memory-mapped cache is read back in shuffled order every epoch, so its disk time may be longer.` }) : "",
      el("fieldset", { class: "plan-mode" }, el("legend", { text: "What to queue" }),
        choice("full", runLabel, full, true), choice("dry", "Dry run (labelled)", dryText, false)),
      blocked.length ? el("p", { class: "error-text", id: "plan-blocked",
        text: `${blocked.length === items.length && items.length > 1 ? `None of the ${items.length} models can` : blocked.length === 1 ? "1 model cannot" : `${blocked.length} models cannot`} run as planned (see "Blocked" above): fix that, then plan again. Nothing was queued.` }) : "",
      el("div", { class: "plan-buttons" }, confirm, back));
    confirm.disabled = blocked.length > 0;
    confirm.addEventListener("click", () => done({ dry_run: dialog.querySelector("#plan-mode-dry").checked }));
    back.addEventListener("click", () => done(null));
    dialog.addEventListener("cancel", (ev) => { ev.preventDefault(); done(null); });  // Escape
    if (signal) signal.addEventListener("abort", () => done(null));
    container.append(dialog);
    dialog.showModal();
    (confirm.disabled ? back : confirm).focus();
  });
}

