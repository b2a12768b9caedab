// What the job list and the compare view say about a run: its phase and progress, whether it is a dry run, where
// its config leaves the paper preset. One place, so the two views never disagree about a run.
"use strict";
import { el, int, state, api, can, modelById } from "./util.js";

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
// [{name, label, value, paper}]. A dry run's reductions are listed too: they are what makes it one.
export function deviations(j) {
  const cfg = j.config;
  if (!cfg || !state.options) return [];
  const m = modelById(j.model);
  const out = [];
  for (const o of state.options) {
    if (o.name === "model" || !(o.name in cfg)) continue;
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
