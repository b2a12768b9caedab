// What the job list and the compare view say about a run: its phase and progress, whether it is a dry run, where
// its config leaves the paper preset. One place, so the two views never disagree about a run.
"use strict";
import { el, int, state, api, can, modelById, showMessage, fail, ApiError } from "./util.js";

// Jobs with their experiment's group, archive flag, dry-run mark and config (GET /api/experiments carries them
// all in one request); newest job first. `archived`: "false" | "true" | "all", as the API takes it.
export async function loadRuns(archived = "false") {
  const exps = await api(`/api/experiments?archived=${archived}`);
  const runs = [];
  for (const e of exps) {
    e.jobs.forEach((j, i) => runs.push({ ...j, group: e.group, archived: e.archived,
      dry_run: Boolean(j.dry_run ?? e.dry_run), config: j.config || e.config, latest: i === e.jobs.length - 1 }));
  }
  return runs.sort((a, b) => b.id - a.id);
}

// The contract's progress object ({phase, done, total, unit, epoch, split}); the older shape (batch, batches) too.
function doneTotal(p) {
  return [p.done ?? p.batch ?? null, p.total ?? p.batches ?? null];
}
const mb = (bytes) => (bytes / 1e6).toFixed(bytes < 1e7 ? 1 : 0);

export function queuePosition(j) {
  const p = j.progress || {};
  const pos = j.queue_position ?? (can("waiting", j) ? p.done : null);
  return pos ? { pos, total: can("waiting", j) ? p.total : null } : null;
}

// What the run is doing now, in words ("queued · 2nd of 5", "frozen features (train) 1,200 / 5,000 images").
export function phaseText(j) {
  if (can("waiting", j)) {
    const q = queuePosition(j);
    return q ? `${j.status} · position ${q.pos}${q.total ? ` of ${q.total}` : ""}` : j.status;
  }
  if (!can("progressing", j)) return "";
  const p = j.progress || {};
  const [done, total] = doneTotal(p);
  const of = (unit) => (total ? ` ${int(done)} / ${int(total)}${unit ? ` ${unit}` : ""}` : done ? ` ${int(done)}${unit ? ` ${unit}` : ""}` : "");
  const prefix = can("stopping", j) ? "cancelling · " : "";
  switch (p.phase) {
    case "starting": return `${prefix}starting (building the model)`;
    case "downloading": return `${prefix}downloading${p.what ? ` ${p.what}` : " weights"}${total ? ` ${mb(done)} of ${mb(total)} MB` : done ? ` ${mb(done)} MB` : ""}`;
    case "loading": return `${prefix}loading data${of("images")}`;
    case "features": return `${prefix}frozen features${p.split ? ` (${p.split})` : ""}${of("images")}`;
    case "training": case "validating":
      return `${prefix}epoch ${p.epoch ?? j.epochs_done + 1} · ${p.phase} batch ${int(done ?? 0)}/${int(total ?? 0)}`;
    default: return `${prefix}${p.phase || j.status}`;
  }
}

// The same without the status a cell beside it already shows ("position 2 of 5").
export const phaseDetail = (j) => phaseText(j).replace(/^(queued|cancelling) · /, "");

// The bar: the share of the current phase before training starts (download, load, frozen pass), else of epochs.
export function progressFraction(j) {
  const p = j.progress || {};
  const [done, total] = doneTotal(p);
  if (can("progressing", j) && ["downloading", "loading", "features"].includes(p.phase)) {
    return { frac: total ? Math.min(done / total, 1) : 0, phase: true };
  }
  const within = can("progressing", j) && p.phase === "training" && total && (p.epoch ?? 0) > j.epochs_done ? done / total : 0;
  return { frac: Math.min((j.epochs_done + within) / Math.max(j.epochs, 1), 1), phase: false };
}

// Where a run's config leaves the paper preset of its model (the options' defaults with the model's own values):
// [{name, label, value, paper}]. A dry run's reductions are listed too: they are what makes it one. `ignore`: option
// names the server says a comparison varies on purpose (a repeat group's seed): no difference of method.
export function deviations(j, ignore = []) {
  const cfg = j.config;
  if (!cfg || !state.options) return [];
  const m = modelById(j.model);
  const out = [];
  for (const o of state.options) {
    if (o.name === "model" || !(o.name in cfg) || ignore.includes(o.name)) continue;
    const paper = m && m.preset && o.name in m.preset ? m.preset[o.name] : o.default;
    const v = cfg[o.name];
    if ((v ?? null) !== (paper ?? null)) out.push({ name: o.name, label: o.label, value: v, paper });
  }
  return out;
}

const shown = (v, o) => (v === null || v === undefined ? (o && o.none_means) || "none" : String(v));
export function deviationText(d) {
  const o = (state.options || []).find((x) => x.name === d.name);
  return `${d.label} ${shown(d.value, o)} (paper ${shown(d.paper, o)})`;
}

// A badge that a dry run can never lose: in the job list, the picker, the compare table and the chart legends.
export const dryBadge = (j) => (j.dry_run ? el("span", { class: "badge dry", title: "a dry run: fewer epochs and images, small size; not a paper run", text: "dry run" }) : null);
export const runLabel = (j) => `${j.dry_run ? "[dry run] " : ""}${j.experiment_name} (job ${j.id})`;

// "Repeat with N seeds": one panel per view, opened by a row's Repeat button. It lives outside the lists that the
// views redraw on every tick, so the number a user types survives the refresh. The server creates the missing runs
// (same config but the seed, one group, each queued) and says what it made; `then` redraws the view.
export function repeatPanel(then) {
  let run = null;
  const what = el("span", { class: "repeat-what" });
  const n = el("input", { type: "number", id: "repeat-n", min: 2, step: 1, value: 3, "aria-label": "number of seeds", style: "width:5em" });
  const go = el("button", { id: "repeat-go", type: "button", text: "Create repeats" });
  const close = el("button", { class: "secondary", type: "button", text: "Close", onclick: () => { panel.hidden = true; } });
  const panel = el("div", { class: "card repeat-panel", id: "repeat-panel", hidden: true },
    el("strong", { text: "Repeat " }), what,
    el("label", { class: "inline" }, " with ", n, " seeds in all"), " ", go, " ", close,
    el("p", { class: "muted small", text: "Same config but the seed, in one group; the run itself and its existing repeats count, so only the missing ones are queued." }));
  go.addEventListener("click", async () => {
    if (!run) return;
    go.disabled = true;
    try {
      const res = await api(`/api/experiments/${run.experiment_id}/repeat`, { method: "POST", json: { seeds: Number(n.value) } });
      const made = res.created.map((e) => `#${e.jobs[0].id}`);
      showMessage(made.length ? `Queued ${made.length} repeat(s) of "${run.experiment_name}" in group ${res.group}: ${made.join(", ")} (seeds ${res.seeds.join(", ")}).`
        : `"${run.experiment_name}" already has ${res.seeds.length} seeds in group ${res.group} (${res.seeds.join(", ")}): nothing to add.`, "info");
      panel.hidden = true;
      await then(res);
    } catch (e) {
      if (e instanceof ApiError && Array.isArray(e.detail)) showMessage(e.detail.map((d) => `${d.loc.slice(-1)[0]}: ${d.msg}`).join("; "));
      else fail(e);
    } finally { go.disabled = false; }
  });
  panel.open = (r) => {
    run = r;
    what.textContent = `#${r.id} ${r.experiment_name}`;
    panel.hidden = false;
    n.focus();
  };
  return panel;
}

export const repeatButton = (r, panel) => el("button", { class: "secondary small repeat", type: "button", text: "Repeat…",
  title: "repeat this config under more seeds (for a confidence interval)", onclick: () => panel.open(r) });
