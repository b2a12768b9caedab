// One job: what it does now (phase, bar), what ran (settings, attempts, timings), its live curves, per-class
// accuracy and confusion matrix (class names from GET /api/datasets, for the job's dataset; with many classes the
// bars are sorted worst first and the hardest classes and largest confusions are listed as text), and its method
// card. A job on a dataset the paper has no number for says "no paper number" and draws no paper curve. Everything it fetches or streams stops when the user leaves:
// its requests carry the view's abort signal and the event stream closes on that signal's abort.
"use strict";
import { el, pct, int, secs, state, api, fail, viewSignal, isAbort, can, modelById, paperCurve } from "./util.js";
import { cardView, showCard } from "./card.js";
import { offerFix } from "./fix.js";
import { jobActions } from "./jobs.js";
import { phaseText, dryBadge } from "./runs.js";
import { chartBox, layout, PLOT_CONFIG } from "./charts.js";
import { confusionFigure, manyClasses, topConfusions } from "./heatmap.js";
import { mistakesGallery } from "./gallery.js";

// Kept for views that still import it: the job page's own charts use charts.js's layout().
export const LAYOUT = (title, y) => layout(title, y);

// The datasets and their class names, as the server declares them (core.catalogue.DATASETS): fetched once.
async function datasets(signal) {
  if (!state.datasets) state.datasets = await api("/api/datasets", { signal });
  return state.datasets;
}
// Class names for a per-class vector of length n: the dataset's, else numbered (a dataset this page does not know).
const classNames = (ds, n) => (ds && ds.classes.length === n ? ds.classes : Array.from({ length: n }, (_, i) => `class ${i}`));

// Per-class accuracy as bars: in label order with names on the axis for a few classes; sorted worst first, names
// on hover (and the hardest ones listed by classNotes) for many.
export function perClassFigure(acc, classes, which) {
  const many = manyClasses(classes);
  const order = acc.map((_, i) => i);
  if (many) order.sort((a, b) => acc[a] - acc[b] || a - b);
  const trace = { type: "bar", x: order.map((i) => classes[i]), y: order.map((i) => acc[i]), name: "per-class accuracy",
                  customdata: order.map((_, r) => r + 1),
                  hovertemplate: many ? `%{x}: %{y:.1%} (rank %{customdata} of ${classes.length}, worst first)<extra></extra>`
                                      : "%{x}: %{y:.1%}<extra></extra>" };
  const title = `Per-class accuracy, ${which}${many ? ` (${classes.length} classes, worst first)` : ""}`;
  const lay = layout(title, "accuracy", {
    xaxis: many ? { title: { text: "class (sorted by accuracy; hover for names)" }, showticklabels: false, automargin: true }
                : { automargin: true, tickangle: -40 },
    yaxis: { title: { text: "accuracy" }, range: [0, 1], tickformat: ".0%", automargin: true }, showlegend: false });
  if (many) lay.bargap = 0.05;
  return { data: [trace], layout: lay };
}

// What many-class plots cannot say on their axes, as text: the hardest and easiest classes, the largest confusions.
function classNotes(m, classes) {
  const parts = [];
  if (m && m.per_class_acc && manyClasses(classes)) {
    const order = m.per_class_acc.map((_, i) => i).sort((a, b) => m.per_class_acc[a] - m.per_class_acc[b] || a - b);
    const named = (ids) => ids.map((i) => `${classes[i]} ${pct(m.per_class_acc[i])}`).join(", ");
    parts.push(el("p", { id: "class-worst" }, el("strong", { text: "Hardest classes: " }), named(order.slice(0, 5))),
               el("p", { id: "class-best" }, el("strong", { text: "Easiest classes: " }), named(order.slice(-5).reverse())));
  }
  if (m && m.confusion) {
    const top = topConfusions(m.confusion, classes, 10);
    parts.push(el("h4", { text: "Most frequent confusions" }), top.length
      ? el("ol", { id: "confusion-top" }, top.map((c) => el("li", { text: `${c.truth} → ${c.predicted}: ${int(c.count)} (${c.share.toFixed(1)}% of true ${c.truth})` })))
      : el("p", { class: "muted", id: "confusion-top", text: "no confusions: every validation image was classified right" }));
  }
  return parts;
}

export function paperTraces(model, nEpochs) {
  const traces = [];
  const curve = paperCurve(model);
  if (curve) traces.push({ x: curve.map((p) => p.epoch), y: curve.map((p) => p.val_acc), name: `paper: ${model.paper_name}`,
                           mode: "lines+markers", line: { color: "#999", dash: "dot" }, marker: { size: 4 } });
  if (model && model.paper_val_acc) {
    const last = Math.max(nEpochs, curve ? curve.length : 0, 1);
    traces.push({ x: [1, last], y: [model.paper_val_acc, model.paper_val_acc], mode: "lines",
                  name: `paper best ${pct(model.paper_val_acc)}`, line: { dash: "dash", color: "#c0392b" } });
  }
  return traces;
}

// ---------------------------------------------------------------------------------------------------- what ran
const when = (t) => (t ? new Date(t).toLocaleString("en-GB", { dateStyle: "medium", timeStyle: "medium" }) : "–");
const rows = (pairs) => el("table", { class: "kv" }, el("tbody", {}, pairs.filter(Boolean).map(([k, v, cls]) =>
  el("tr", { class: cls || null }, el("th", { text: k }), el("td", { text: v === null || v === undefined || v === "" ? "–" : String(v) })))));

function configTable(cfg, modelId) {
  const m = modelById(modelId);
  return rows(state.options.map((o) => {
    if (!(o.name in cfg)) return null;
    const v = cfg[o.name];
    const paper = o.name === "model" ? v : m && m.preset && o.name in m.preset ? m.preset[o.name] : o.default;
    const shown = v === null || v === undefined ? (o.none_means || "none") : String(v);
    const differs = (v ?? null) !== (paper ?? null);
    return [o.label, differs ? `${shown} (paper: ${paper === null || paper === undefined ? (o.none_means || "none") : paper})` : shown,
            differs ? "differs" : null];
  }));
}

function ranTable(s) {
  if (!s) return el("p", { class: "muted", id: "settings-wait", text: "The worker has not reported what it runs yet (it does once it has built the model)." });
  const cache = s.feature_cache;
  // The cache's gist: reused or computed, its storage dtype, where it lives and how big it is.
  const cacheText = !cache ? "off" : typeof cache !== "object" ? String(cache) : cache.enabled === false ? "off"
    : [cache.reused ? "reused (computed by an earlier run)" : "computed in this run", cache.dtype,
       cache.placement ? `kept in ${cache.placement}` : "", cache.holds || "", cache.bytes ? `${(cache.bytes / 2 ** 20).toFixed(1)} MB` : ""]
      .filter(Boolean).join(" · ");
  return rows([
    ["Image size", s.image_size ? `${s.image_size} px` : null],
    ["Precision", `${s.precision ?? "–"}${s.tf32 ? " (TF32 on)" : ""}`],
    ["Device", s.device],
    s.channels_last !== undefined && ["Channels last", s.channels_last ? "yes" : "no"],
    ["Training images", int(s.train_images)],
    ["Validation images", int(s.val_images)],
    ["Trainable / total params", `${int(s.trainable_params)} / ${int(s.total_params)}`],
    ["Feature cache", cacheText, cache && cache.reused ? "reused" : null],
    s.resumed_from_epoch ? ["Resumed from epoch", s.resumed_from_epoch] : null,
    s.teacher ? ["Teacher", `job ${s.teacher.job} (${s.teacher.model}); ${s.teacher.reused ? `its stored predictions reused (${int(s.teacher.loaded)})` : "predictions computed by this run"}`] : null,
    s.torch_version ? ["torch / timm", `${s.torch_version} / ${s.timm_version}`] : null,
    // A folder of one's own images: the files it could not use (unreadable, not images, links out of it).
    s.skipped_files ? ["Skipped files", `${int(s.skipped_files.count)}${s.skipped_files.count ? ": " + s.skipped_files.files.map((f) => `${f.path} (${f.why})`).join("; ") : ""}${s.skipped_files.count > s.skipped_files.files.length ? " …" : ""}`] : null,
    s.data_fingerprint ? ["Data fingerprint", `train ${String(s.data_fingerprint.train).slice(0, 12)} · val ${String(s.data_fingerprint.val).slice(0, 12)}`] : null,
  ]);
}

function attemptsTable(attempts) {
  if (!attempts || !attempts.length) return el("p", { class: "muted", text: "No attempt has started yet." });
  return el("table", { class: "attempts", id: "job-attempts" },
    el("thead", {}, el("tr", {}, ["#", "Worker", "Device", "Started", "Ended", "Outcome", "Error"].map((h) => el("th", { text: h })))),
    el("tbody", {}, attempts.map((a) => el("tr", { "data-attempt": a.attempt },
      el("td", { text: a.attempt }), el("td", { text: a.worker || "–" }), el("td", { text: a.device || "–" }),
      el("td", { text: when(a.started_at) }), el("td", { text: when(a.ended_at) }),
      el("td", { class: `status status-${a.outcome}`, text: a.outcome || "–" }),
      el("td", { class: "error-text", text: a.error || "" })))));
}

function timingsTable(j) {
  const t = j.timings || { created_at: j.created_at, started_at: j.started_at, finished_at: j.finished_at, total_s: j.runtime_s };
  return rows([["Created", when(t.created_at)], ["Started", when(t.started_at)], ["First epoch", when(t.first_epoch_at)],
    ["Finished", when(t.finished_at)], ["Queued", secs(t.queued_s)], ["Setup (download, load, model)", secs(t.setup_s)],
    ["Training", secs(t.train_s)], ["Total", secs(t.total_s)]]);
}

// ---------------------------------------------------------------------------------------------------- the page
export async function renderJob(view, id) {
  const signal = viewSignal();  // this visit's: a later view has its own
  const get = (path) => api(path, { signal });
  let current = await get(`/api/jobs/${id}`);
  const model = modelById(current.model);
  let exp = null;
  const config = async () => current.config || (exp = exp || await get(`/api/experiments/${current.experiment_id}`)).config;
  const [cfg0, known] = await Promise.all([config().catch((e) => { if (isAbort(e)) throw e; return null; }), datasets(signal)]);
  // The job's dataset (its config names it); an unknown one still gets numbered classes and no paper number.
  const ds = known.find((d) => d.id === (cfg0 && cfg0.dataset)) || (cfg0 && cfg0.dataset ? null : known[0]);

  const head = el("div", { class: "card", id: "job-head" });
  const phase = el("div", { id: "job-phase" });
  const errorBox = el("div", { id: "job-error-box" });
  const fixBox = el("div", { id: "job-fix-box" });  // a missing file: what to put where, Run again once there
  let fixFor = null;
  const acc = chartBox("plot-acc"), loss = chartBox("plot-loss"), perClass = chartBox("plot-class"), confusion = chartBox("plot-confusion");
  const epochPick = el("select", { id: "epoch-pick" });
  const modeButton = el("button", { type: "button", class: "secondary", id: "confusion-mode", "data-mode": "count", text: "Show row percentages" });
  const settings = el("div", { class: "card", id: "job-settings" });
  const cardBox = el("div", { class: "card method-card", id: "job-card" });
  const notes = el("div", { id: "class-notes" });
  const curves = el("div", { class: "grid2 job-plots", id: "job-curves" }, el("div", { class: "card" }, acc), el("div", { class: "card" }, loss));
  const detail = el("div", { class: "card", id: "job-detail" },
    el("div", { class: "detail-controls" }, el("label", {}, "Epoch: ", epochPick), modeButton),
    el("div", { class: "grid2 job-plots" }, perClass, confusion), notes);
  // A job that ended before its first epoch has nothing to chart: one line says so, not four empty charts.
  const noEpoch = el("p", { class: "card muted", id: "no-epoch", hidden: true });
  const gallery = mistakesGallery(id, signal);
  view.append(head, errorBox, fixBox, noEpoch, curves, detail, gallery.node, settings, cardBox);

  if (model) {
    config().then((cfg) => showCard(cardBox, current.model, cfg))
      .catch((e) => { if (!isAbort(e)) cardBox.replaceChildren(el("p", { class: "error-text", text: `No method card: ${e.message}` })); });
  } else {  // a timm model outside the catalogue: its card with what its worker reported when it built it
    get(`/api/jobs/${id}/card`).then((card) => cardBox.replaceChildren(cardView(card, true)))
      .catch((e) => { if (!isAbort(e)) cardBox.replaceChildren(el("p", { class: "error-text", text: `No method card: ${e.message}` })); });
  }

  let metrics = await get(`/api/jobs/${id}/metrics`);

  const drawHead = () => {
    const j = current;
    const best = j.best_epoch ? ` (epoch ${j.best_epoch})` : "";
    const clone = el("a", { class: "button secondary", id: "clone", href: `#/new?clone=${j.id}`, text: "Clone",
                            title: "open the new-job form filled in from this job" });
    head.replaceChildren(
      el("h2", {}, `Job #${j.id}: `, el("span", { class: "name", text: j.experiment_name }), " ", dryBadge(j)),
      el("p", { class: "job-status-line" }, "Status: ", el("span", { id: "job-status", class: `status status-${j.status}`, text: j.status }),
        ` · ${j.model}`, ds && !ds.in_paper ? ` · ${ds.title}` : "", paperNote(j),
        ` · epoch ${j.epochs_done}/${j.epochs}`, can("progressing", j) ? ` · ETA ${secs(j.eta_s)}` : "",
        ` · best ${pct(j.best_val_acc)}${best}`, j.device ? ` · ${j.device}` : "", j.attempt > 1 ? ` · attempt ${j.attempt}` : ""),
      el("div", { class: "job-actions" }, ...jobActions(j, refreshJob), clone),
      el("p", {}, el("a", { href: `/api/jobs/${id}/metrics.csv`, text: "metrics.csv" }), " · ",
        el("a", { href: `#/compare?jobs=${id}`, text: "compare" })));
    const live = can("waiting", j) || can("progressing", j);
    const p = j.progress || {};
    const done = p.done ?? p.batch, total = p.total ?? p.batches;
    const frac = live && total && !can("waiting", j) ? Math.min(done / total, 1) : null;
    phase.replaceChildren(...(live ? [el("div", { class: "phase-line", "data-phase": p.phase || "" },
      el("span", { class: "phase-text", id: "phase-text", text: phaseText(j) || j.status }),
      frac === null ? "" : el("span", { class: "bar phase-bar", id: "phase-bar", role: "progressbar", "aria-valuenow": Math.round(100 * frac) },
        el("span", { style: `width:${(100 * frac).toFixed(1)}%` })))] : []));
    head.append(phase);
    errorBox.replaceChildren(
      j.error ? el("div", { class: "card job-error-card" }, el("h3", { text: can("errored", j) ? "Why it failed" : "Note from the run" }),
        el("p", { class: "error-text", id: "job-error", text: j.error })) : "",
      // A diverged epoch is data: its non-finite values are named here (the curves leave a gap there).
      ...metrics.filter((m) => m.nonfinite).map((m) => el("p", { class: "error-text nonfinite",
        text: `epoch ${m.epoch}: ${Object.entries(m.nonfinite).map(([k, v]) => `${k} ${v}`).join(", ")}` })));
    const fixKey = `${j.status}:${j.attempt}`;
    if (fixKey !== fixFor) { fixFor = fixKey; offerFix(fixBox, head, j, { signal, then: refreshJob }); }
    else if (fixBox.firstChild) { const r = head.querySelector("button.resume"); if (r) r.hidden = true; }
  };

  const drawSettings = async () => {
    let cfg = null;
    try { cfg = await config(); } catch (e) { if (isAbort(e)) return; }
    settings.replaceChildren(el("h3", { text: "What this job runs" }),
      el("div", { class: "grid2 settings-grid" },
        el("div", { id: "job-config" }, el("h4", { text: "Config (effective values)" }),
          cfg ? configTable(cfg, current.model) : el("p", { class: "muted", text: "config not available" })),
        el("div", { id: "job-ran" }, el("h4", { text: "What ran (the worker's report)" }), ranTable(current.settings),
          el("h4", { text: "Timings" }), el("div", { id: "job-timings" }, timingsTable(current)))),
      el("h4", { text: "Attempts" }), attemptsTable(current.attempts));
  };

  // The paper's number for this job (the server's: none where the paper has no result, e.g. on CIFAR-100).
  const paperNote = (j) => {
    if (j.paper_val_acc !== null && j.paper_val_acc !== undefined) {
      return ` (paper: ${model && model.paper_name ? model.paper_name : j.model}, ${pct(j.paper_val_acc)})`;
    }
    const why = ds && !ds.in_paper ? `the paper reports no ${ds.title} results` : "the paper did not run this model";
    return el("span", {}, " · ", el("span", { id: "paper-number", class: "muted", title: why, text: "no paper number" }));
  };

  // The epoch shown: the user's pick, else the latest while the job runs and the best once it has ended.
  const shownEpoch = (ep) => {
    if (epochPick.value) return Number(epochPick.value);
    const running = can("waiting", current) || can("progressing", current);
    return running || !current.best_epoch ? ep[ep.length - 1] : current.best_epoch;
  };
  const waiting = () => {
    const j = current;
    if (can("waiting", j) || can("progressing", j)) return `waiting for the first epoch: ${phaseText(j) || j.status}`;
    return `no epoch finished: the job is ${j.status}`;
  };

  const draw = () => {
    const ep = metrics.map((m) => m.epoch);
    const picked = epochPick.value;
    const running = can("waiting", current) || can("progressing", current);
    const auto = running ? "latest epoch (follows the run)" : `best epoch${current.best_epoch ? ` (${current.best_epoch})` : ""}`;
    epochPick.replaceChildren(el("option", { value: "", text: `auto: ${auto}` }), ...ep.map((e) => el("option", { value: e, text: `epoch ${e}` })));
    epochPick.value = ep.includes(Number(picked)) ? picked : "";
    const ended = !ep.length && !running;
    curves.hidden = detail.hidden = ended;
    noEpoch.hidden = !ended;
    if (!ep.length) {
      const msg = waiting();
      noEpoch.textContent = msg;
      for (const box of [acc, loss, perClass, confusion]) box.show(msg);
      notes.replaceChildren();
      return;
    }
    // Distilled from a teacher job: its accuracy on the epoch's training images and how often the student agrees with it.
    const taught = metrics.some((m) => m.teacher_acc !== null && m.teacher_acc !== undefined) ? [
      { x: ep, y: metrics.map((m) => m.teacher_acc), name: "teacher accuracy (train)", mode: "lines", line: { dash: "dot" } },
      { x: ep, y: metrics.map((m) => m.teacher_agreement), name: "student-teacher agreement", mode: "lines", line: { dash: "dashdot" } }] : [];
    acc.draw([
      { x: ep, y: metrics.map((m) => m.val_acc), name: "val accuracy", mode: "lines+markers" },
      { x: ep, y: metrics.map((m) => m.train_acc), name: "train accuracy", mode: "lines+markers" }, ...taught,
      ...(ds && ds.in_paper ? paperTraces(model, current.epochs) : [])], layout("Accuracy", "accuracy",
        { yaxis: { title: { text: "accuracy" }, tickformat: ".1%", automargin: true } }), PLOT_CONFIG);
    // With the head's L2 penalty on, the losses Keras would have printed (the authors' logs) go beside the plain ones.
    const keras = metrics.some((m) => m.keras_val_loss !== null && m.keras_val_loss !== undefined) ? [
      { x: ep, y: metrics.map((m) => m.keras_val_loss), name: "val loss + L2 (Keras)", mode: "lines", line: { dash: "dot" } },
      { x: ep, y: metrics.map((m) => m.keras_train_loss), name: "train loss + L2 (Keras)", mode: "lines", line: { dash: "dot" } }] : [];
    loss.draw([
      { x: ep, y: metrics.map((m) => m.val_loss), name: "val loss", mode: "lines+markers" },
      { x: ep, y: metrics.map((m) => m.train_loss), name: "train loss", mode: "lines+markers" }, ...keras],
      layout("Loss (cross-entropy)", "loss"), PLOT_CONFIG);
    const m = metrics.find((x) => x.epoch === shownEpoch(ep));
    const which = m ? `epoch ${m.epoch}${m.epoch === current.best_epoch ? ", best" : ""}` : "";
    epochPick.dataset.shown = m ? m.epoch : "";
    const n = m ? (m.per_class_acc || m.confusion || []).length : 0;
    const classes = classNames(ds, n);
    if (m && m.per_class_acc) {
      const fig = perClassFigure(m.per_class_acc, classes, which);
      perClass.draw(fig.data, fig.layout, PLOT_CONFIG);
    } else perClass.show(`no per-class accuracy for ${which || "this epoch"}`);
    if (m && m.confusion) {
      const mode = modeButton.dataset.mode;
      // Many classes: a taller, square-ish matrix (one cell per class pair stays hoverable).
      confusion.plot.style.height = manyClasses(classes) ? "560px" : "";
      const fig = confusionFigure(m.confusion, classes, mode, `Confusion matrix, ${which}${mode === "row" ? " (row %)" : ""}`);
      confusion.draw(fig.data, fig.layout, PLOT_CONFIG).then(() => {
        // A cell click opens its images in the gallery (one listener, whatever the redraws).
        if (confusion.plot.removeAllListeners) confusion.plot.removeAllListeners("plotly_click");
        confusion.plot.on("plotly_click", (ev) => {
          const [t, p] = ev.points[0].pointIndex || ev.points[0].pointNumber;
          gallery.open(t, p);
        });
      });
    } else confusion.show(`no confusion matrix for ${which || "this epoch"}`);
    notes.replaceChildren(...classNotes(m, classes));
  };
  epochPick.addEventListener("change", draw);
  modeButton.addEventListener("click", () => {
    const row = modeButton.dataset.mode !== "row";
    modeButton.dataset.mode = row ? "row" : "count";
    modeButton.textContent = row ? "Show counts" : "Show row percentages";
    draw();
  });

  // Epoch and status events each ask for a refresh; refreshes do not overlap (a replay of many stored epochs on
  // opening costs one or two requests, not one per epoch).
  let busy = null, again = false;
  const refresh = async (withMetrics) => {
    if (busy) { again = again || withMetrics; return busy; }
    busy = (async () => {
      try {
        const [j, ms] = await Promise.all([get(`/api/jobs/${id}`), withMetrics ? get(`/api/jobs/${id}/metrics`) : null]);
        current = j;
        if (ms) metrics = ms;
        drawHead(); draw(); drawSettings(); gallery.refresh();
        ensureStream();
      } catch (e) { if (!isAbort(e)) fail(e); }
    })();
    await busy;
    busy = null;
    if (again) { again = false; await refresh(true); }
  };
  async function refreshJob() { await refresh(true); }

  let source = null;
  const closeStream = () => { if (source) { source.close(); source = null; } };
  function ensureStream() {
    if (source || signal.aborted || state.statuses.terminal.includes(current.status)) return;
    source = new EventSource(`/api/jobs/${id}/events`);
    source.addEventListener("epoch", () => refresh(true));
    source.addEventListener("status", () => refresh(true));
    source.addEventListener("progress", (ev) => {
      // The job's progress object under "progress" (null once it ended); older streams sent its fields flat.
      const { status, eta_s, epochs, epochs_done, queue_position, ...flat } = JSON.parse(ev.data);
      const progress = "progress" in flat ? flat.progress : flat;
      const changed = status !== current.status || epochs_done !== current.epochs_done;
      current = { ...current, status, eta_s, epochs_done, queue_position: queue_position ?? null, progress };
      drawHead();
      if (!metrics.length) draw();  // the waiting message says what the worker does
      if (changed) refresh(true);
    });
    source.addEventListener("end", () => { closeStream(); refresh(true); });
  }
  signal.addEventListener("abort", () => {
    closeStream();
    for (const box of [acc, loss, perClass, confusion]) if (!box.plot.hidden) Plotly.purge(box.plot);
  });

  drawHead();
  draw();
  drawSettings();
  gallery.refresh();
  ensureStream();
}
