// The job list, and the actions (cancel, resume) every view shares.
"use strict";
import { $, el, pct, int, secs, plotText, state, api, ApiError, showMessage, clearMessage, fail, onLeave, viewSignal, isAbort, catalogue, can, modelById, paperCurve } from "./util.js";

// ---------------------------------------------------------------------------------------------------- jobs
export function progressCell(j) {
  const within = can("progressing", j) && j.progress.epoch > j.epochs_done && j.progress.batches
    ? j.progress.batch / j.progress.batches : 0;
  const frac = Math.min((j.epochs_done + within) / j.epochs, 1);
  const batch = can("progressing", j) && j.progress.batches
    ? ` · ${j.progress.phase} batch ${j.progress.batch}/${j.progress.batches}` : "";
  return el("td", { class: "progress" }, el("span", { class: "bar" }, el("span", { style: `width:${(100 * frac).toFixed(1)}%` })),
            ` epoch ${j.epochs_done}/${j.epochs}${batch}`);
}

// A button that is disabled while its request is in flight: a double click sends one request.
export function actionButton(cls, text, request, then) {
  const b = el("button", { class: `secondary ${cls}`, text });
  b.addEventListener("click", async () => {
    b.disabled = true;
    try { await request(); await then(); } catch (e) { b.disabled = false; fail(e); }
  });
  return b;
}

export function jobActions(j, then) {
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

export function renderJobs(view) {
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
  onLeave(() => clearInterval(timer));
}
