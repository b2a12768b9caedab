// The compare view's run picker: a table of runs with filters (model, group, status, free text), sort by any
// column header, and per experiment Archive (hidden, data kept) and Delete (a live job refuses; the server's
// reason is shown on the row). It keeps its own state, so the view's live refresh never loses a filter or a tick.
"use strict";
import { el, pct, api, ApiError, showMessage, modelById, breakable } from "./util.js";
import { lookSwatch } from "./charts.js";
import { dryBadge, phaseDetail } from "./runs.js";

const COLUMNS = [  // [key, header, value for sorting]
  ["id", "Job", (r) => r.id], ["name", "Name", (r) => r.experiment_name.toLowerCase()],
  ["model", "Model", (r) => modelName(r)], ["group", "Group", (r) => r.group || ""],
  ["status", "Status", (r) => r.status], ["best", "Best", (r) => r.best_val_acc ?? -1]];

export const modelName = (r) => { const m = modelById(r.model); return (m && m.paper_name) || r.model; };

export function makePicker({ selected, group, onApply, onChanged }) {
  const st = { initialGroup: group, runs: [], sort: { key: "id", dir: -1 }, selected: new Set(selected), armed: new Map(), errors: new Map(), looks: {} };
  const fModel = el("select", { id: "filter-model", "aria-label": "model" });
  const fGroup = el("select", { id: "filter-group", "aria-label": "group" });
  const fStatus = el("select", { id: "filter-status", "aria-label": "status" });
  const fText = el("input", { id: "filter-text", type: "search", placeholder: "filter: name, model, group, job", "aria-label": "free text" });
  const showArchived = el("input", { id: "show-archived", type: "checkbox" });
  const count = el("span", { class: "muted", id: "picker-count" });
  const tbody = el("tbody", {});
  const head = el("tr", {}, el("th", { class: "pick-col" }), COLUMNS.map(([key, label]) =>
    el("th", { class: "sortable", "data-sort": key, text: label, onclick: () => {
      st.sort = st.sort.key === key ? { key, dir: -st.sort.dir } : { key, dir: key === "best" || key === "id" ? -1 : 1 };
      render();
    } })), el("th", { text: "" }));
  const box = el("div", { class: "card", id: "picker" },
    el("h2", { text: group ? `Compare: group ${group}` : "Compare" }),
    el("div", { class: "filters" }, fModel, fGroup, fStatus, fText,
      el("label", { class: "inline" }, showArchived, " show archived")),
    el("div", { class: "picker-scroll" }, el("table", { id: "run-table" }, el("thead", {}, head), tbody)),
    el("div", { class: "picker-foot" },
      el("button", { id: "compare-go", text: "Compare selected", onclick: () => onApply([...st.selected]) }),
      el("button", { class: "secondary", id: "select-shown", text: "Select shown", onclick: () => { visible().forEach((r) => st.selected.add(r.id)); render(); } }),
      el("button", { class: "secondary", id: "select-none", text: "Clear", onclick: () => { st.selected.clear(); render(); } }),
      count));
  for (const f of [fModel, fGroup, fStatus]) f.addEventListener("change", () => render());
  fText.addEventListener("input", () => render());
  showArchived.addEventListener("change", () => onChanged());

  const fillSelect = (sel, label, values) => {
    const keep = sel.value;
    sel.replaceChildren(el("option", { value: "", text: `any ${label}` }), ...values.map(([v, t]) => el("option", { value: v, text: t })));
    sel.value = values.some(([v]) => v === keep) ? keep : "";
  };
  const visible = () => {
    const text = fText.value.trim().toLowerCase();
    const [, , key] = COLUMNS.find(([k]) => k === st.sort.key);
    return st.runs.filter((r) => (!fModel.value || r.model === fModel.value) && (!fGroup.value || r.group === fGroup.value)
        && (!fStatus.value || r.status === fStatus.value)
        && (!text || [r.experiment_name, r.model, modelName(r), r.group || "", `#${r.id}`, String(r.id)].some((s) => s.toLowerCase().includes(text))))
      .sort((a, b) => { const x = key(a), y = key(b); return (x < y ? -1 : x > y ? 1 : 0) * st.sort.dir || b.id - a.id; });
  };

  // Archive and Delete act on the run's experiment. Delete asks once more on the button itself (no dialog).
  const experimentAction = async (r, what) => {
    st.errors.delete(r.id);
    try {
      if (what === "delete") {
        await api(`/api/experiments/${r.experiment_id}`, { method: "DELETE" });
        st.selected.delete(r.id);
        showMessage(`Deleted "${r.experiment_name}" with its jobs and metrics.`, "info");
      } else {
        await api(`/api/experiments/${r.experiment_id}`, { method: "PATCH", json: { archived: what === "archive" } });
      }
    } catch (e) {
      if (!(e instanceof ApiError)) throw e;
      st.errors.set(r.id, e.message);  // e.g. "job 7 of this experiment is running: cancel it first ..."
      showMessage(e.message);
      render();
      return;
    }
    onChanged();
  };
  const actions = (r) => {
    const archive = el("button", { class: "secondary small archive", text: r.archived ? "Unarchive" : "Archive",
      title: r.archived ? "show it in the lists again" : "hide it from the lists; its jobs and metrics are kept",
      onclick: () => experimentAction(r, r.archived ? "unarchive" : "archive") });
    const armed = st.armed.get(r.id);
    const del = el("button", { class: `secondary small delete${armed ? " armed" : ""}`, text: armed ? "Really delete?" : "Delete",
      title: "delete the experiment with its jobs, metrics and run folders", onclick: () => {
        if (!st.armed.get(r.id)) {
          st.armed.set(r.id, setTimeout(() => { st.armed.delete(r.id); render(); }, 5000));
          render();
          return;
        }
        clearTimeout(st.armed.get(r.id));
        st.armed.delete(r.id);
        experimentAction(r, "delete");
      } });
    return [archive, del];
  };

  const lookOf = (r) => st.looks[r.id] || r.look;  // the compared runs' looks are the same ones, sent again

  function render() {
    const rows = visible();
    for (const th of head.querySelectorAll("th.sortable")) {
      th.setAttribute("aria-sort", th.dataset.sort === st.sort.key ? (st.sort.dir > 0 ? "ascending" : "descending") : "none");
    }
    tbody.replaceChildren(...rows.flatMap((r) => {
      const check = el("input", { type: "checkbox", class: "pick", value: r.id, checked: st.selected.has(r.id), "aria-label": `pick job ${r.id}` });
      check.addEventListener("change", () => { if (check.checked) st.selected.add(r.id); else st.selected.delete(r.id); count.textContent = countText(rows); });
      const what = phaseDetail(r);
      const tr = el("tr", { "data-job": r.id, class: [r.dry_run ? "dry-run" : "", r.archived ? "archived" : ""].join(" ").trim() || null },
        el("td", {}, check), el("td", { text: `#${r.id}` }),
        el("td", { class: "name-cell" }, el("span", { class: "name", text: r.experiment_name }), " ", dryBadge(r),
          r.archived ? el("span", { class: "badge archived", text: "archived" }) : null),
        // Every run in its own look (GET /api/jobs: its shade and marker, as its curves draw it once compared), so a
        // run not compared yet never shows a plain square that reads as another run's square marker.
        el("td", { class: "model" }, lookOf(r) ? [lookSwatch(lookOf(r)), "\u00a0"] : null, breakable(modelName(r))),
        el("td", { class: "group", text: r.group || "–" }),
        el("td", {}, el("span", { class: `status status-${r.status}`, text: r.status }), what && what !== r.status ? el("div", { class: "phase-text", text: what }) : null),
        el("td", { text: pct(r.best_val_acc) }), el("td", { class: "actions" }, ...actions(r)));
      const err = st.errors.get(r.id);
      return err ? [tr, el("tr", { class: "row-error", "data-job-error": r.id }, el("td", {}), el("td", { colspan: COLUMNS.length + 1 }, el("div", { class: "error-text", text: err })))] : [tr];
    }));
    if (!rows.length) tbody.append(el("tr", {}, el("td", { colspan: COLUMNS.length + 2, class: "muted", text: st.runs.length ? "No run matches these filters." : "No runs yet: start one under New job." })));
    count.textContent = countText(rows);
  }
  const countText = (rows) => `${rows.length} of ${st.runs.length} shown · ${st.selected.size} selected`;

  box.update = (runs) => {
    st.runs = runs;
    const ids = new Set(runs.map((r) => r.id));
    for (const id of [...st.selected]) if (!ids.has(id)) st.selected.delete(id);
    fillSelect(fModel, "model", [...new Set(runs.map((r) => r.model))].map((m) => [m, modelName({ model: m })]));
    fillSelect(fGroup, "group", [...new Set(runs.map((r) => r.group).filter(Boolean))].map((g) => [g, g]));
    fillSelect(fStatus, "status", [...new Set(runs.map((r) => r.status))].map((s) => [s, s]));
    if (st.initialGroup) { fGroup.value = st.initialGroup; st.initialGroup = null; }  // ?group=: that group shown
    render();
  };
  box.setLooks = (looks) => {  // the compared runs' looks (GET /api/compare/stats)
    if (JSON.stringify(looks) === JSON.stringify(st.looks)) return;
    st.looks = looks;
    render();
  };
  box.archivedMode = () => (showArchived.checked ? "all" : "false");
  box.selected = () => [...st.selected];
  return box;
}
