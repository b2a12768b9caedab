// The job list, and the actions (cancel, force stop, resume) every view shares. Each row says what the job does
// now (queue position, download, frozen pass, batch of batches), marks a dry run, and shows its error in full.
"use strict";
import { el, pct, secs, state, api, showMessage, fail, onLeave, can } from "./util.js";
import { loadRuns, phaseDetail, progressFraction, dryBadge, repeatPanel, repeatButton } from "./runs.js";

// ---------------------------------------------------------------------------------------------------- jobs
export function progressCell(j) {
  const { frac, phase } = progressFraction(j);
  const what = phaseDetail(j);  // the status column beside it says queued or cancelling
  return el("td", { class: "progress" },
    el("span", { class: `bar${phase ? " phase" : ""}` }, el("span", { style: `width:${(100 * frac).toFixed(1)}%` })),
    ` epoch ${j.epochs_done}/${j.epochs}`, what ? el("div", { class: "phase-text", text: what }) : null);
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

// Cancel while it may be cancelled; Force stop once a cancel is pending (a worker that does not answer: the
// backend ends the job now and the supervisor starts a fresh worker); Resume after.
const forceStoppable = (j) => state.statuses.force_stoppable.includes(j.status);
export function jobActions(j, then) {
  const post = (what) => () => api(`/api/jobs/${j.id}/${what}`, { method: "POST" });
  const out = [];
  if (can("cancellable", j)) out.push(actionButton("cancel", "Cancel", post("cancel"), then));
  else if (forceStoppable(j)) {
    const b = actionButton("force-stop", "Force stop", post("force-stop"), then);
    b.title = "the worker has not stopped yet: end the job now (its worker process is restarted)";
    out.push(b);
  }
  if (can("resumable", j)) out.push(actionButton("resume", "Resume", post("resume"), then));
  return out;
}

const COLUMNS = ["Job", "Name", "Status", "Model", "Progress", "ETA", "Best val acc", "Paper", ""];

function jobRows(j, refresh, panel) {
  const row = el("tr", { "data-job": j.id, class: j.dry_run ? "dry-run" : null },
    el("td", {}, el("a", { href: `#/job/${j.id}`, text: `#${j.id}` })),
    el("td", { class: "name name-cell" }, el("span", { class: "run-name", text: j.experiment_name }), " ", dryBadge(j),
      j.group ? el("div", { class: "muted small group-of", text: `group ${j.group}` }) : null),
    el("td", { class: `status status-${j.status}`, text: j.status }),
    el("td", { class: "model", text: j.model }),
    progressCell(j),
    el("td", { text: can("progressing", j) ? secs(j.eta_s) : "–" }),
    el("td", { class: "best", text: pct(j.best_val_acc) }),
    el("td", { text: j.paper_val_acc === null ? "no paper number" : pct(j.paper_val_acc) }),
    el("td", { class: "actions" }, ...jobActions(j, refresh), j.latest ? repeatButton(j, panel) : null));
  if (!j.error) return [row];
  row.classList.add("has-error");
  // The error in full, under its job: the reason a run failed is what a student reads first.
  return [row, el("tr", { class: "job-error", "data-job-error": j.id },
    el("td", {}), el("td", { colspan: COLUMNS.length - 1 }, el("div", { class: "error-text", text: j.error })))];
}

// Groups (a Table 1 reproduction, a sweep): cancel or resume all of their latest jobs at once.
function groupBar(runs, refresh) {
  const groups = new Map();
  for (const r of runs.filter((x) => x.group && x.latest)) {
    if (!groups.has(r.group)) groups.set(r.group, []);
    groups.get(r.group).push(r);
  }
  if (!groups.size) return null;
  const act = (g, what) => async () => {
    const res = await api(`/api/groups/${encodeURIComponent(g)}/${what}`, { method: "POST" });
    const verb = what === "cancel" ? "Cancelled" : "Resumed";
    const left = Object.entries(res.unchanged || {});
    showMessage(`${verb} ${res.changed.length} job(s) of group ${g}` +
      (left.length ? `; ${left.length} unchanged (${left.map(([id, why]) => `#${id}: ${why}`).join("; ")})` : "."), "info");
  };
  return el("div", { class: "groups", id: "groups" }, el("h3", { text: "Groups" }), [...groups].map(([g, rs]) => {
    const counts = {};
    rs.forEach((r) => { counts[r.status] = (counts[r.status] || 0) + 1; });
    const buttons = [];
    if (rs.some((r) => can("cancellable", r))) buttons.push(actionButton("group-cancel", "Cancel group", act(g, "cancel"), refresh));
    if (rs.some((r) => can("resumable", r))) buttons.push(actionButton("group-resume", "Resume group", act(g, "resume"), refresh));
    return el("div", { class: "group-row", "data-group": g },
      el("strong", { class: "group-name", text: g }),
      el("span", { class: "muted", text: ` ${rs.length} run(s): ${Object.entries(counts).map(([s, n]) => `${n} ${s}`).join(", ")}` }),
      rs.some((r) => r.dry_run) ? el("span", { class: "badge dry", text: "dry run" }) : null,
      el("a", { href: `#/compare?group=${encodeURIComponent(g)}`, text: "compare" }), ...buttons);
  }));
}

export function renderJobs(view) {
  const tbody = el("tbody", { id: "jobs-body" });
  const groupsBox = el("div", {});
  const panel = repeatPanel(() => refresh());
  view.append(el("div", { class: "card" }, el("h2", { text: "Jobs" }), groupsBox, panel,
    el("div", { class: "table-wrap" }, el("table", { id: "jobs" },
      el("thead", {}, el("tr", {}, COLUMNS.map((h) => el("th", { text: h })))), tbody))));
  let busy = false;
  const refresh = async () => {
    if (busy) return;
    busy = true;
    try {
      const runs = await loadRuns("false");
      tbody.replaceChildren(...(runs.length ? runs.flatMap((j) => jobRows(j, refresh, panel))
        : [el("tr", {}, el("td", { colspan: COLUMNS.length, class: "muted", text: "No jobs yet." }))]));
      groupsBox.replaceChildren(...[groupBar(runs, refresh)].filter(Boolean));
    } catch (e) { fail(e); } finally { busy = false; }
  };
  refresh();
  const timer = setInterval(refresh, 1000);
  onLeave(() => clearInterval(timer));
}
