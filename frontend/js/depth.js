// The depth view (#/depth/<group>): a depth sweep's best validation accuracy against how many of the last blocks
// train, with time per epoch and trainable parameters on secondary axes, and the paper's result at depth 1 (the
// paper's last block) marked. Its data come from GET /api/depth?group= (seeds pooled per model and depth); the
// reproduction report of the group downloads from here.
"use strict";
import { el, pct, int, secs, plotText, state, api, fail, onLeave, viewSignal, isAbort } from "./util.js";
import { chartBox, layout, modelColour } from "./charts.js";

const POLL_MS = 3000;  // while a run of the sweep is still going

export async function renderDepth(view, group) {
  const signal = viewSignal();
  const box = chartBox("plot-depth", "plot tall");
  const table = el("table", { id: "depth-table", class: "runs" });
  const reportHref = (fmt) => `/api/report.${fmt}?group=${encodeURIComponent(group)}`;
  view.append(el("div", { class: "card depth-view" },
    el("div", { class: "card-head" }, el("h2", { text: `Depth sweep: ${group}` }),
      el("div", { class: "depth-links" },
        el("a", { href: `#/compare?group=${encodeURIComponent(group)}`, id: "depth-compare", text: "Compare the runs" }),
        el("a", { href: reportHref("html"), id: "depth-report-html", download: "", text: "Report (HTML)" }),
        el("a", { href: reportHref("md"), id: "depth-report-md", download: "", text: "Report (Markdown)" }))),
    el("p", { class: "muted", id: "depth-status" }), box, el("p", { class: "muted", id: "depth-paper-note" }), table));

  let timer = null;
  onLeave(() => clearTimeout(timer));
  const refresh = async () => {
    let d;
    try {
      d = await api(`/api/depth?group=${encodeURIComponent(group)}`, { signal });
    } catch (e) {
      if (!isAbort(e)) { box.show("No such sweep."); fail(e); }
      return;
    }
    draw(box, table, d);
    const going = d.runs.filter((r) => !state.statuses.terminal.includes(r.status)).length;
    view.querySelector("#depth-status").textContent =
      `${d.runs.length} runs of ${d.axis.label.toLowerCase()} ${[...new Set(d.runs.map((r) => r.depth_text))].join(", ")}` +
      (going ? `; ${going} still queued or running (this page follows them).` : "; all ended.");
    if (going && !signal.aborted) timer = setTimeout(refresh, POLL_MS);
  };
  await refresh();
}

function draw(box, table, d) {
  const pts = d.points.filter((p) => p.best_val_acc !== null);
  const label = d.axis.label;
  table.replaceChildren(el("thead", {}, el("tr", {}, ["Model", label, "Runs", "Best val acc", "Seconds, last epoch",
    "Trainable params", "Paper (1)", "Jobs"].map((h) => el("th", { text: h })))),
    el("tbody", {}, d.points.map((p) => el("tr", { "data-depth": p.depth_text },
      el("td", { text: p.model }), el("td", { text: p.depth_text }), el("td", { text: String(p.n) }),
      el("td", { text: pct(p.best_val_acc) }), el("td", { text: secs(p.seconds_per_epoch) }),
      el("td", { text: int(p.trainable_params) }), el("td", { text: p.paper_val_acc === null ? "no paper number" : pct(p.paper_val_acc) }),
      el("td", {}, p.jobs.map((id) => el("a", { href: `#/job/${id}`, text: `#${id} ` })))))));
  // Said, not just left out: a model (or dataset) the paper has no number for gets no star.
  const unpapered = [...new Set(d.points.filter((p) => p.paper_val_acc === null).map((p) => p.model))];
  const note = document.getElementById("depth-paper-note");
  if (note) note.textContent = unpapered.length ? `No paper point for ${unpapered.join(", ")}: the paper has no number for it (not in its Table 1, or another dataset).` : "";
  if (!pts.length) { box.show("No run of this sweep has finished an epoch yet."); return; }
  const accs = pts.map((p) => p.best_val_acc);
  const yRange = [Math.max(0, Math.min(...accs) - 0.05), Math.min(1, Math.max(...accs) + 0.05)];
  const order = [...new Set(d.points.map((p) => p.depth_text))];
  const traces = [];
  for (const m of [...new Set(pts.map((p) => p.model))]) {
    const ps = pts.filter((p) => p.model === m);
    const colour = modelColour(m);
    const x = ps.map((p) => p.depth_text);
    traces.push({ x, y: ps.map((p) => p.best_val_acc), mode: "lines+markers", name: plotText(`${m}: best val acc`),
      line: { color: colour }, marker: { size: 9 }, customdata: ps.map((p) => p.n),
      hovertemplate: `${plotText(label)} %{x}: %{y:.2%} (%{customdata} runs)<extra></extra>` });
    traces.push({ x, y: ps.map((p) => p.seconds_per_epoch), type: "bar", yaxis: "y2", name: plotText(`${m}: s, last epoch`),
      marker: { color: colour, opacity: 0.25 }, hovertemplate: "%{y:.1f} s in the last epoch (after the frozen pass)<extra></extra>" });
    traces.push({ x, y: ps.map((p) => p.trainable_params), yaxis: "y3", mode: "lines+markers", name: plotText(`${m}: trainable params`),
      line: { color: colour, dash: "dot" }, marker: { symbol: "square", size: 7 }, hovertemplate: "%{y:,} trainable<extra></extra>" });
    const paper = ps.find((p) => p.paper_val_acc !== null);
    if (paper) {
      traces.push({ x: ["1"], y: [paper.paper_val_acc], mode: "markers+text", name: plotText(`paper, ${label} 1: ${pct(paper.paper_val_acc)}`),
        text: ["paper"], textposition: "top center", meta: "paper",
        marker: { symbol: "star", size: 16, color: colour, line: { color: "#111", width: 1 } },
        hovertemplate: `the paper's ${plotText(paper.paper_name || m)}: %{y:.2%}<extra></extra>` });
    }
  }
  if (!order.includes("1") && traces.some((t) => t.meta === "paper")) {  // the paper's depth, between its neighbours
    const after = order.findIndex((k) => k === "all" || Number(k) > 1);
    order.splice(after < 0 ? order.length : after, 0, "1");
  }
  box.draw(traces, layout(`Best validation accuracy against ${label.toLowerCase()}`, "best val accuracy", {
    xaxis: { title: { text: label }, type: "category", categoryorder: "array", categoryarray: order, domain: [0, 0.84], automargin: true },
    yaxis: { title: { text: "best val accuracy" }, tickformat: ".1%", range: yRange, automargin: true },
    yaxis2: { title: { text: "s, last epoch (after the frozen pass)" }, overlaying: "y", side: "right", showgrid: false, rangemode: "tozero", tickformat: ".1f" },
    yaxis3: { title: { text: "trainable params" }, overlaying: "y", side: "right", anchor: "free", position: 1, showgrid: false,
              type: "log", tickformat: ".2~s", automargin: true },
    margin: { t: 48, r: 24, b: 16, l: 60 } }));
}
