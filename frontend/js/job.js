// One job: its live curves, per-class accuracy, confusion matrix and method card.
"use strict";
import { $, el, pct, int, secs, plotText, state, api, ApiError, showMessage, clearMessage, fail, onLeave, viewSignal, isAbort, catalogue, can, modelById, paperCurve } from "./util.js";
import { showCard } from "./card.js";
import { jobActions } from "./jobs.js";

// ---------------------------------------------------------------------------------------------------- one job
export const LAYOUT = (title, y) => ({ title: { text: title }, uirevision: "keep", margin: { t: 40, r: 20, b: 40, l: 55 },
  xaxis: { title: { text: "epoch" }, dtick: 1 }, yaxis: { title: { text: y } }, legend: { orientation: "h" } });

export function paperTraces(model, nEpochs) {
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

export async function renderJob(view, id) {
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
  onLeave(() => source.close());
}
