// Compare runs with each other and with the paper's Table 1 and Fig. 2.
"use strict";
import { $, el, pct, int, secs, plotText, state, api, ApiError, showMessage, clearMessage, fail, onLeave, viewSignal, isAbort, catalogue, can, modelById, paperCurve } from "./util.js";
import { LAYOUT } from "./job.js";

// ---------------------------------------------------------------------------------------------------- compare
export async function renderCompare(view, params) {
  const jobs = await api("/api/jobs");
  let ids = (params.get("jobs") || "").split(",").filter(Boolean).map(Number);
  const group = params.get("group");
  if (group) {
    const exps = await api(`/api/experiments?group=${encodeURIComponent(group)}`);
    ids = exps.flatMap((e) => (e.jobs.length ? [e.jobs[e.jobs.length - 1].id] : []));
  }
  const picker = el("div", { class: "card", id: "picker" }, el("h2", { text: group ? `Compare: group ${group}` : "Compare" }));
  const list = el("div", {});
  for (const j of jobs) {
    list.append(el("label", { style: "display:block" },
      el("input", { type: "checkbox", value: j.id, checked: ids.includes(j.id), class: "pick" }),
      ` #${j.id} `, el("span", { text: j.experiment_name }), ` · ${j.model} · ${j.status} · best ${pct(j.best_val_acc)}`));
  }
  picker.append(list, el("button", { id: "compare-go", text: "Compare selected", onclick: () => {
    const chosen = [...list.querySelectorAll("input.pick:checked")].map((i) => i.value);
    location.hash = `#/compare?jobs=${chosen.join(",")}`;
  } }));
  view.append(picker);
  if (!ids.length) { view.append(el("p", { class: "muted", text: "Pick jobs to compare." })); return; }

  const chosen = jobs.filter((j) => ids.includes(j.id)).sort((x, y) => x.id - y.id);
  const metrics = await Promise.all(chosen.map((j) => api(`/api/jobs/${j.id}/metrics`)));
  const csvHref = `/api/compare.csv?jobs=${chosen.map((j) => j.id).join(",")}`;
  view.append(el("div", { class: "card" }, el("a", { href: csvHref, download: "blocklab-compare.csv", id: "download-csv" },
                                                   el("button", { type: "button", text: "Download CSV" }))));

  // Validation curves with the paper's lines.
  const traces = chosen.map((j, i) => ({ x: metrics[i].map((m) => m.epoch), y: metrics[i].map((m) => m.val_acc),
    name: plotText(`#${j.id} ${j.experiment_name}`), mode: "lines+markers" }));
  const seen = new Set();
  for (const j of chosen) {
    const m = modelById(j.model);
    if (!m || !m.paper_name || seen.has(m.id)) continue;
    seen.add(m.id);
    const curve = paperCurve(m);
    if (curve) traces.push({ x: curve.map((p) => p.epoch), y: curve.map((p) => p.val_acc), name: `paper: ${m.paper_name}`, mode: "lines", line: { color: "#999" } });
    traces.push({ x: [1, Math.max(...chosen.map((c) => c.epochs), 20)], y: [m.paper_val_acc, m.paper_val_acc], mode: "lines",
                  name: `paper best: ${m.paper_name}`, line: { dash: "dash" } });
  }
  const curves = el("div", { class: "card" }, el("div", { id: "plot-compare", class: "plot" }));
  const fig2 = el("div", { class: "card" }, el("div", { id: "plot-fig2", class: "plot tall" }));
  // Table: runs beside the paper.
  const table = el("table", { id: "compare-table" }, el("thead", {}, el("tr", {},
    ["Job", "Name", "Model", "Paper model", "Best val acc", "Epoch", "Trainable params", "Paper acc", "Difference", "Paper trainable"].map((h) => el("th", { text: h })))));
  const body = el("tbody", {});
  for (const j of chosen) {
    const m = modelById(j.model);
    const diff = j.best_val_acc !== null && m && m.paper_val_acc ? j.best_val_acc - m.paper_val_acc : null;
    body.append(el("tr", { "data-job": j.id }, el("td", { text: `#${j.id}` }), el("td", { text: j.experiment_name }),
      el("td", { text: j.model }), el("td", { text: m && m.paper_name ? m.paper_name : "–" }),
      el("td", { text: pct(j.best_val_acc) }), el("td", { text: j.best_epoch ?? "–" }), el("td", { text: int(j.trainable_params) }),
      el("td", { text: pct(m && m.paper_val_acc) }), el("td", { text: diff === null ? "–" : `${diff >= 0 ? "+" : ""}${(100 * diff).toFixed(2)} pts` }),
      el("td", { text: int(m && m.paper_trainable_params) })));
  }
  table.append(body);
  view.append(curves, el("div", { class: "card" }, el("h3", { text: "Runs beside Table 1" }), table), fig2);
  Plotly.react("plot-compare", traces, LAYOUT("Validation accuracy", "accuracy"), { responsive: true });

  // The paper's Fig. 2 view: trainable parameters against accuracy.
  const t1 = state.paper.table1;
  const runs = chosen.filter((j) => j.best_val_acc !== null);
  Plotly.react("plot-fig2", [
    { x: t1.map((r) => r.trainable_params), y: t1.map((r) => r.val_acc), text: t1.map((r) => r.paper_name),
      mode: "markers+text", textposition: "top center", name: "paper (Table 1)", marker: { size: 9, color: "#999" } },
    { x: runs.map((j) => j.trainable_params), y: runs.map((j) => j.best_val_acc), text: runs.map((j) => plotText(`#${j.id}`)),
      mode: "markers+text", textposition: "bottom center", name: "your runs", marker: { size: 10, color: "#2f62c9" } }],
    { title: { text: "Trainable parameters vs. accuracy (paper Fig. 2)" }, uirevision: "keep",
      xaxis: { title: { text: "trainable parameters" }, type: "log" }, yaxis: { title: { text: "best val accuracy" } } },
    { responsive: true });
}

