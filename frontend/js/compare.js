// Compare runs with each other and with the paper's Table 1 and Fig. 2, live: statuses, progress and curves follow
// the runs while they progress (one list request per tick, metrics only for runs that gained an epoch). Runs that
// differ only by seed are one repeat group: the server's statistics (GET /api/compare/stats: mean, sd, the 95%
// Student's t interval, the paper's number inside or outside it, the mean curves with their band) are drawn as sent.
// Each run keeps the look the server gives it (core/palette.py: a shade of its model's colour and a marker) in every
// chart, table and Fig. 2, as in the report; validation loss is drawn beside validation accuracy, training curves on
// request.
"use strict";
import { el, pct, int, plotText, state, api, fail, onLeave, viewSignal, modelById, paperCurve, can, breakable } from "./util.js";
import { chartBox, layout, lookSwatch, modelColour, placeLabels } from "./charts.js";
import { loadRuns, phaseText, phaseDetail, deviations, deviationText, dryBadge, runLabel, repeatPanel, repeatButton } from "./runs.js";
import { makePicker, modelName } from "./picker.js";

const MULTIPLES_BEYOND = 6;  // more runs than this: one small chart per model instead of one crowded chart
const POLL_ACTIVE_MS = 2000;  // while a listed run is queued or running
const POLL_IDLE_MS = 10000;  // otherwise: picks up runs started elsewhere
const METRIC_FETCHES_PER_TICK = 8;  // the cap on metric requests in flight at once

// ---------------------------------------------------------------------------------------------------- curves
// The two charts of curves: what each draws of an epoch row, of the paper's curves and of a repeat group.
const CURVES = {
  val_acc: { title: "Validation accuracy", axis: "val accuracy", train: "train_acc", tick: ".1%", hover: "%{y:.2%}",
             group: "curve", area: "curves", plot: "plot-compare", multiple: "plot-model", grid: "multiples" },
  val_loss: { title: "Validation loss", axis: "val loss (cross-entropy)", train: "train_loss", tick: "", hover: "%{y:.4f}",
              group: "loss_curve", area: "loss-curves", plot: "plot-compare-loss", multiple: "plot-loss-model", grid: "multiples-loss",
              paperNote: " (Keras val_loss, L2 penalty included)" },
};
const OTHER_LOOK = { colour: "#444", symbol: "circle", glyph: "●" };  // before the server's looks arrive

function paperLines(m, lastEpoch, curveOf, lines, showTrain) {
  if (!m || !m.paper_name) return [];
  const colour = modelColour(m.id);
  const out = [];
  const metric = curveOf === CURVES.val_acc ? "val_acc" : "val_loss";
  const curve = (paperCurve(m) || []).filter((p) => p[metric] !== null && p[metric] !== undefined);
  if (curve.length) out.push({ x: curve.map((p) => p.epoch), y: curve.map((p) => p[metric]), mode: "lines",
    name: plotText(`paper: ${m.paper_name}${curveOf.paperNote || ""}`), legendgroup: `paper-${m.id}`, line: { color: colour, dash: lines.paper, width: 2 } });
  const train = showTrain ? (paperCurve(m) || []).filter((p) => p[curveOf.train] !== null && p[curveOf.train] !== undefined) : [];
  if (train.length) out.push({ x: train.map((p) => p.epoch), y: train.map((p) => p[curveOf.train]), mode: "lines",
    name: plotText(`paper: ${m.paper_name} (training)`), legendgroup: `paper-${m.id}`, line: { color: colour, dash: lines.train, width: 1 } });
  if (metric === "val_acc" && m.paper_val_acc) out.push({ x: [1, lastEpoch], y: [m.paper_val_acc, m.paper_val_acc], mode: "lines",
    name: plotText(`paper best: ${m.paper_name} ${pct(m.paper_val_acc)}`), legendgroup: `paper-${m.id}`, showlegend: !curve.length,
    hovertemplate: `paper best ${plotText(m.paper_name)}: ${pct(m.paper_val_acc)}<extra></extra>`, line: { color: colour, dash: lines.paper_best, width: 1 } });
  return out;
}

// A run in its look; a run of a repeat group is drawn as its group's mean: the run itself stays one legend click
// away. Its training curve (on request) in the same look, dash-dotted, toggled with it.
function runTraces(r, rows, look, curveOf, lines, inGroup, showTrain) {
  const metric = curveOf === CURVES.val_acc ? "val_acc" : "val_loss";
  const common = { x: rows.map((m) => m.epoch), mode: "lines+markers", legendgroup: `run-${r.id}`, visible: inGroup ? "legendonly" : true,
    opacity: r.dry_run ? 0.75 : 1, meta: "run" };
  const out = [{ ...common, y: rows.map((m) => m[metric]), name: plotText(runLabel(r)),
    line: { color: look.colour, width: r.dry_run ? 1.5 : 2.5 },
    marker: { symbol: r.dry_run ? `${look.symbol}-open` : look.symbol, size: 8, color: look.colour },
    hovertemplate: `${plotText(runLabel(r))}<br>epoch %{x}: ${curveOf.hover}<extra></extra>` }];
  // With head_l2 on, the loss Keras prints (penalty included): the one the paper's loss curve can be read against.
  if (metric === "val_loss" && rows.some((m) => m.keras_val_loss !== null && m.keras_val_loss !== undefined)) out.push({ ...common,
    y: rows.map((m) => m.keras_val_loss), name: plotText(`${runLabel(r)} (Keras val_loss, L2 penalty included)`), meta: "keras",
    line: { color: look.colour, width: 1.5, dash: lines.keras }, marker: { symbol: `${look.symbol}-open`, size: 6, color: look.colour },
    hovertemplate: `${plotText(runLabel(r))} (Keras val_loss)<br>epoch %{x}: ${curveOf.hover}<extra></extra>` });
  if (showTrain) out.push({ ...common, y: rows.map((m) => m[curveOf.train]), name: plotText(`${runLabel(r)} (training)`), meta: "train",
    line: { color: look.colour, width: 1.5, dash: lines.train }, marker: { symbol: `${look.symbol}-open`, size: 6, color: look.colour },
    hovertemplate: `${plotText(runLabel(r))} (training)<br>epoch %{x}: ${curveOf.hover}<extra></extra>` });
  return out;
}

// A colour of the palette, see-through: the band of a repeat group in its model's colour.
function fade(hex, alpha = 0.2) {
  const h = hex.length === 4 ? [...hex.slice(1)].map((c) => c + c).join("") : hex.slice(1);
  return `rgba(${parseInt(h.slice(0, 2), 16)},${parseInt(h.slice(2, 4), 16)},${parseInt(h.slice(4, 6), 16)},${alpha})`;
}

// A repeat group's mean curve with its band (the server's min and max per epoch; `band` says what it spans): the
// lower edge, the upper edge filled down to it, then the mean over them.
function groupTraces(g, band, look, curveOf) {
  const c = g[curveOf.group] || [];
  const colour = look.colour;
  const label = `${g.dry_run ? "[dry run] " : ""}${g.name} · mean of ${g.jobs.length} seeds`;
  const common = { x: c.map((p) => p.epoch), mode: "lines", legendgroup: `repeat-${g.key}`, hoverinfo: "skip", showlegend: false };
  return [
    { ...common, y: c.map((p) => p.min), name: plotText(`${label} (band low)`), line: { color: colour, width: 0 } },
    { ...common, y: c.map((p) => p.max), name: plotText(`${label} (band: ${band})`), fill: "tonexty", fillcolor: fade(colour),
      line: { color: colour, width: 0 }, meta: "band" },
    { x: c.map((p) => p.epoch), y: c.map((p) => p.mean), mode: "lines", legendgroup: `repeat-${g.key}`, meta: "mean",
      name: plotText(`${label} (band: ${band})`), line: { color: colour, width: 3 }, customdata: c.map((p) => [p.n, p.min, p.max]),
      hovertemplate: `${plotText(g.name)}: mean ${curveOf.hover} of %{customdata[0]} run(s), ${curveOf.hover.replace("y", "customdata[1]")}–${curveOf.hover.replace("y", "customdata[2]")}<br>epoch %{x}<extra></extra>` },
  ];
}

// What a chart of these runs waits for, when none has an epoch yet.
function waitingText(runs) {
  if (!runs.length) return "Pick runs in the table above, then Compare selected.";
  const what = runs.slice(0, 4).map((r) => `#${r.id} ${phaseText(r) || r.status}`);
  const dead = runs.every((r) => !can("progressing", r) && !can("waiting", r));
  return `${dead ? "No epoch was recorded for these runs" : "Waiting for the first epoch"}: ${what.join("; ")}${runs.length > 4 ? "; …" : ""}.`;
}

function drawCurves(area, chosen, metrics, stats, curveOf, showTrain) {
  const looks = (stats && stats.looks) || {};
  const lookOf = (id) => looks[id] || OTHER_LOOK;
  const lines = (stats && stats.lines) || {};
  const repeats = (stats ? stats.groups : []).filter((g) => g.jobs.length > 1 && (g[curveOf.group] || []).length);
  const grouped = new Set(repeats.flatMap((g) => g.jobs));
  const lastEpoch = Math.max(20, ...chosen.map((r) => r.epochs));
  const byModel = new Map();
  for (const r of chosen) { if (!byModel.has(r.model)) byModel.set(r.model, []); byModel.get(r.model).push(r); }
  const anyData = chosen.some((r) => (metrics.get(r.id) || []).length);  // none yet: one message, not a grid of them
  const multiples = anyData && chosen.length > MULTIPLES_BEYOND && byModel.size > 1;
  const key = `${multiples ? `multi:${[...byModel.keys()].join(",")}` : "single"}:${showTrain}`;
  if (area.dataset.key !== key) {  // the charts' layout changed: new boxes (Plotly keeps zoom within one layout)
    area.dataset.key = key;
    area.replaceChildren();
    area.boxes = new Map();
    if (!multiples) {
      const b = chartBox(curveOf.plot);
      area.boxes.set("", b);
      area.append(el("div", { class: "card" }, b));
    } else {
      const grid = el("div", { class: "multiples", id: curveOf.grid });
      const order = (state.models || []).map((m) => m.id);
      const models = [...byModel.keys()].sort((a, b) => order.indexOf(a) - order.indexOf(b));
      models.forEach((id, i) => {
        const b = chartBox(`${curveOf.multiple}-${i}`, "plot small");
        b.dataset.model = id;
        area.boxes.set(id, b);
        grid.append(el("div", { class: "card" }, el("h4", { class: "multiple-title", style: `color:${modelColour(id)}`,
          text: modelName({ model: id }) }), b));
      });
      area.append(el("h3", { class: "multiples-title", text: curveOf.title }),
        el("p", { class: "muted", text: `${chosen.length} runs: one chart per model, its runs in shades of its colour, its paper curve dashed.` }), grid);
    }
  }
  for (const [id, box] of area.boxes) {
    const runs = id ? byModel.get(id) || [] : chosen;
    if (!runs.some((r) => (metrics.get(r.id) || []).length)) { box.show(waitingText(runs)); continue; }
    const traces = runs.flatMap((r) => runTraces(r, metrics.get(r.id) || [], lookOf(r.id), curveOf, lines, grouped.has(r.id), showTrain));
    const here = new Set(runs.map((r) => r.id));
    for (const g of repeats.filter((x) => x.jobs.some((j) => here.has(j)))) traces.push(...groupTraces(g, stats.band, lookOf(g.jobs[0]), curveOf));
    for (const m of [...new Set(runs.filter((r) => r.paper_val_acc !== null).map((r) => r.model))]) traces.push(...paperLines(modelById(m), lastEpoch, curveOf, lines, showTrain));
    const title = id ? modelName({ model: id }) : curveOf.title + (showTrain ? " (training dash-dotted)" : "");
    const shownEpochs = Math.max(...runs.map((r) => r.epochs), ...(traces.flatMap((t) => t.x)));
    const lay = layout(title, curveOf.axis, { yaxis: { title: { text: curveOf.axis }, tickformat: curveOf.tick, automargin: true },
      xaxis: { title: { text: "epoch" }, dtick: Math.max(1, Math.ceil(shownEpochs / (id ? 5 : 10))), automargin: true } });
    if (id) lay.title.font = { color: modelColour(id) };
    box.draw(traces, lay);
  }
}

// ---------------------------------------------------------------------------------------------------- Fig. 2
// Trainable parameters against accuracy: the paper's ten points labelled by model name (placed so that no two
// labels overlap), the user's runs as markers in their look (as in the curves) whose hover names the job and run.
async function drawFig2(box, chosen, looks) {
  const t1 = state.paper.table1;
  // Only runs on a dataset the paper reports (CIFAR-10): a CIFAR-100 accuracy beside its points would mislead.
  if (!state.datasets) state.datasets = await api("/api/datasets");
  const inPaper = new Set(state.datasets.filter((d) => d.in_paper).map((d) => d.id));
  const runs = chosen.filter((r) => r.best_val_acc !== null && r.trainable_params
    && inPaper.has((r.config || {}).dataset || state.datasets[0].id));
  const xs = [...t1.map((r) => r.trainable_params), ...runs.map((r) => r.trainable_params)];
  const ys = [...t1.map((r) => r.val_acc), ...runs.map((r) => r.best_val_acc)];
  const xr = [Math.log10(Math.min(...xs)) - 0.35, Math.log10(Math.max(...xs)) + 0.35];
  const yr = [Math.min(...ys) - 0.04, Math.max(...ys) + 0.05];  // room above the top labels
  const traces = [{ x: t1.map((r) => r.trainable_params), y: t1.map((r) => r.val_acc), mode: "markers", name: "paper (Table 1)",
    marker: { size: 10, color: t1.map((r) => modelColour(r.model_id)), line: { width: 1, color: "#333" } },
    text: t1.map((r) => plotText(r.paper_name)),
    hovertemplate: "%{text} (paper): %{y:.2%}, %{x:,} trainable<extra></extra>" }];
  for (const dry of [false, true]) {
    const rs = runs.filter((r) => r.dry_run === dry);
    if (!rs.length) continue;
    traces.push({ x: rs.map((r) => r.trainable_params), y: rs.map((r) => r.best_val_acc), mode: "markers",
      name: dry ? "your dry runs" : "your runs", text: rs.map((r) => plotText(runLabel(r))),
      marker: { size: 12, symbol: rs.map((r) => `${(looks[r.id] || OTHER_LOOK).symbol}${dry ? "-open" : ""}`),
        color: rs.map((r) => (looks[r.id] || OTHER_LOOK).colour), line: { width: dry ? 2 : 1, color: dry ? null : "#111" } },
      hovertemplate: "%{text}: %{y:.2%}, %{x:,} trainable<extra></extra>" });
  }
  const lay = layout("Trainable parameters vs. accuracy (paper Fig. 2)", "best val accuracy", {
    xaxis: { title: { text: "trainable parameters (log)" }, type: "log", range: xr, automargin: true },
    yaxis: { title: { text: "best val accuracy" }, range: yr, tickformat: ".0%", automargin: true } });
  await box.draw(traces, lay);
  // Pixels from the fixed ranges and the plot area's size (Plotly's computed margins).
  const size = (box.plot._fullLayout && box.plot._fullLayout._size) || { w: box.plot.clientWidth - 80, h: box.plot.clientHeight - 120 };
  const toPixel = (x, y) => [(Math.log10(x) - xr[0]) / (xr[1] - xr[0]) * size.w, (1 - (y - yr[0]) / (yr[1] - yr[0])) * size.h];
  const placed = placeLabels(t1.map((r) => ({ x: r.trainable_params, y: r.val_acc, text: r.paper_name, model: r.model_id })), toPixel, size);
  await Plotly.relayout(box.plot, { annotations: placed.map((p) => ({ x: Math.log10(p.x), y: p.y, text: plotText(p.text),
    ax: p.ax, ay: p.ay, showarrow: true, arrowhead: 0, arrowwidth: 0.8, arrowcolor: "#aaa", standoff: 5,
    font: { size: 11, color: modelColour(p.model) }, bgcolor: "rgba(255,255,255,0.85)" })) });
}

// ---------------------------------------------------------------------------------------------------- Table 1
// Each run beside the paper's row for its model, saying when the number is not a paper run's: a dry run, or a
// config that leaves the paper preset (which options, with the paper's values).
const COLUMNS = ["Job", "Name", "Model", "Paper model", "Status", "Best val acc", "Paper acc", "Difference", "Trainable / paper"];

// `varies`: job id -> the options its repeat group varies on purpose (the seed), no difference of method.
function tableRows(chosen, varies, looks) {
  return chosen.flatMap((r) => {
    const m = modelById(r.model);
    const paper = r.paper_val_acc;  // the server's: none for a dataset or a model the paper has no number for
    const diff = r.best_val_acc !== null && paper !== null ? r.best_val_acc - paper : null;
    const devs = deviations(r, varies.get(r.id) || []);
    const honest = r.dry_run ? "dry run: not comparable" : devs.length ? "not the paper preset" : "";
    const what = phaseDetail(r);
    const row = el("tr", { "data-job": r.id, class: r.dry_run ? "dry-run" : devs.length ? "deviates" : null },
      el("td", {}, el("a", { href: `#/job/${r.id}`, text: `#${r.id}` })),
      el("td", { class: "name-cell" }, el("span", { class: "name", text: r.experiment_name }), " ", dryBadge(r)),
      el("td", { class: "model" }, lookSwatch(looks[r.id] || OTHER_LOOK), "\u00a0", breakable(r.model)),
      el("td", { text: m && m.paper_name ? m.paper_name : "–" }),
      el("td", { class: "run-status" }, el("span", { class: `status status-${r.status}`, text: r.status }), what && what !== r.status ? el("div", { class: "phase-text", text: what }) : null),
      el("td", { class: "best", text: `${pct(r.best_val_acc)}${r.best_epoch ? ` (ep. ${r.best_epoch})` : ""}` }),
      el("td", { class: "paper", text: paper === null ? "no paper number" : pct(paper) }),
      el("td", { class: "diff" }, diff === null ? "–" : `${diff >= 0 ? "+" : ""}${(100 * diff).toFixed(2)} pts`,
        honest ? el("div", { class: "caveat", text: honest }) : null),
      el("td", { text: `${int(r.trainable_params)} / ${int(m && m.paper_trainable_params)}` }));
    if (!r.dry_run && !devs.length) return [row];
    // Under the run, across the table: why its number is not a paper run's.
    row.classList.add("has-note");
    return [row, el("tr", { class: "run-note", "data-job-note": r.id }, el("td", {}), el("td", { colspan: COLUMNS.length - 1 },
      r.dry_run ? el("span", { class: "badge dry", text: "dry run" }) : null,
      r.dry_run ? " fewer epochs and images, small size: a pipeline check, not a paper run. " : "",
      devs.length ? el("span", { class: "deviations" }, el("strong", { text: "Leaves the paper preset: " }), devs.map(deviationText).join("; ")) : null))];
  });
}

// ---------------------------------------------------------------------------------------------------- seeds
// One row per repeat group (runs that differ only by seed; a run alone is a group of one): n, mean ± sd and the 95%
// Student's t interval of the best validation accuracy, and whether the paper's number lies inside it, all as the
// server computed them. A group whose config is not the paper's method says how, under its row.
const SEED_COLUMNS = ["Config", "Runs", "n", "Mean ± sd", "95% CI (Student's t)", "Paper acc", "Paper in CI", ""];
const pts = (v) => (v === null || v === undefined ? "–" : `${(100 * v).toFixed(2)} pts`);

function seedRows(stats, byId, panel) {
  return stats.groups.flatMap((g) => {
    const first = byId.get(g.jobs[0]);
    if (!first) return [];
    const devs = deviations(first, g.varies);
    const verdictClass = `verdict verdict-${g.verdict.split(" ")[0].replace(/[^a-z]/g, "")}`;
    const row = el("tr", { "data-group-key": g.key, class: g.dry_run ? "dry-run" : devs.length ? "deviates" : null },
      el("td", { class: "name-cell" }, lookSwatch(stats.looks[g.jobs[0]] || OTHER_LOOK), "\u00a0",
        el("span", { class: "name", text: g.name }), " ", dryBadge(first), el("div", { class: "muted small", text: modelName({ model: g.model }) })),
      el("td", { class: "runs" }, g.jobs.flatMap((id, i) => [i ? ", " : "", el("a", { href: `#/job/${id}`, text: `#${id}` })]),
        el("div", { class: "muted small", text: `seed${g.seeds.length > 1 ? "s" : ""} ${g.seeds.join(", ")}` })),
      el("td", { class: "n", text: String(g.n) }),
      el("td", { class: "mean-sd", text: g.mean === null ? "–" : g.std === null ? pct(g.mean) : `${pct(g.mean)} ± ${pts(g.std)}` }),
      el("td", { class: "ci", text: g.ci_low === null ? "–" : `${pct(g.ci_low)} – ${pct(g.ci_high)}` }),
      el("td", { class: "paper", text: g.paper_val_acc === null ? "no paper number" : pct(g.paper_val_acc) }),
      el("td", { class: verdictClass, text: g.verdict }),
      el("td", { class: "actions" }, repeatButton(first, panel)));
    const dups = g.duplicates || [];
    if (!g.dry_run && !devs.length && !dups.length) return [row];
    return [row, el("tr", { class: "run-note", "data-group-note": g.key }, el("td", {}), el("td", { colspan: SEED_COLUMNS.length - 1 },
      g.dry_run ? "dry runs: a pipeline check, not a paper run. " : "",
      dups.length ? el("span", { class: "duplicate-seeds", text: `${dups.map((i) => `#${i}`).join(", ")} ran a seed already counted (the same draw again): left out of n, the mean and the interval. ` }) : null,
      devs.length ? el("span", { class: "deviations" }, el("strong", { text: "Leaves the paper preset: " }), devs.map(deviationText).join("; ")) : null))];
  });
}

// ---------------------------------------------------------------------------------------------------- the view
export async function renderCompare(view, params) {
  const signal = viewSignal();
  const group = params.get("group");
  let ids = (params.get("jobs") || "").split(",").filter(Boolean).map(Number);
  let runs = await loadRuns("false");
  if (group) ids = runs.filter((r) => r.group === group && r.latest).map((r) => r.id);
  const metrics = new Map();  // job id -> its epoch rows
  const fetched = new Map();  // job id -> epochs_done when its rows were fetched

  const apply = (chosenIds) => {
    ids = chosenIds.sort((a, b) => a - b);
    history.replaceState(null, "", `#/compare?jobs=${ids.join(",")}`);
    tick().catch(fail);
  };
  const picker = makePicker({ selected: ids, group, onApply: apply, onChanged: () => tick().catch(fail) });
  const curves = el("div", { id: CURVES.val_acc.area });
  const lossCurves = el("div", { id: CURVES.val_loss.area });
  let showTrain = false;
  const trainToggle = el("input", { type: "checkbox", id: "show-train", onchange: () => { showTrain = trainToggle.checked; tick().catch(fail); } });
  const curveBar = el("div", { class: "curve-bar" }, el("label", { class: "inline" }, trainToggle, " Training curves"),
    el("span", { class: "muted small", text: "Each run keeps one look in every chart: a shade of its model's colour and its own marker; the paper's curves are dashed." }));
  const csv = el("a", { download: "blocklab-compare.csv", id: "download-csv", title: "one row per run: its config, best accuracy and its seed group's statistics" },
    el("button", { type: "button", text: "Summary CSV" }));
  const epochsCsv = el("a", { download: "blocklab-epochs.csv", id: "download-epochs-csv", title: "one row per run and epoch: losses, accuracies, learning rate, epoch time" },
    el("button", { type: "button", text: "Epochs CSV" }));
  const reportHtml = el("a", { download: "", id: "report-html", text: "Report (HTML)" });
  const reportMd = el("a", { download: "", id: "report-md", text: "Report (Markdown)" });
  // New repeats join the comparison at once (their curves and the group's row fill in as they run).
  const panel = repeatPanel((res) => apply([...new Set([...ids, ...res.created.map((e) => e.jobs[0].id)])]));
  const seedBody = el("tbody", {});
  const seedHint = el("p", { class: "muted", id: "seeds-hint" });
  const seedTable = el("table", { id: "seeds-table" }, el("thead", {}, el("tr", {}, SEED_COLUMNS.map((h) => el("th", { text: h })))), seedBody);
  const tbody = el("tbody", {});
  const table = el("table", { id: "compare-table" }, el("thead", {}, el("tr", {}, COLUMNS.map((h) => el("th", { text: h })))), tbody);
  const fig2 = chartBox("plot-fig2", "plot tall");
  const results = el("div", { id: "results" }, curveBar, el("div", { class: "curve-pair" }, curves, lossCurves),
    el("div", { class: "card" }, el("div", { class: "card-head" }, el("h3", { text: "Runs beside Table 1" }),
      el("span", { class: "downloads" }, reportHtml, " ", reportMd, " ", csv, " ", epochsCsv)),
      el("div", { class: "table-wrap" }, table)),
    el("div", { class: "card", id: "seeds" }, el("div", { class: "card-head" }, el("h3", { text: "Seeds and confidence" })),
      seedHint, panel, el("div", { class: "table-wrap" }, seedTable)),
    el("div", { class: "card" }, fig2));
  const hint = el("p", { class: "muted card", id: "pick-hint", hidden: true });
  view.append(picker, hint, results);

  let stats = null;  // the server's repeat groups of the chosen runs
  let statsFor = "";  // what they were computed from: ids, epochs and statuses
  let timer = null;
  let busy = false;
  let again = false;  // a change (Compare selected, archive, delete) arrived during a tick: run one more at once
  async function tick() {
    if (signal.aborted) return;
    if (busy) { again = true; return; }
    busy = true;
    try {
      runs = await loadRuns(picker.archivedMode());
      picker.update(runs);
      const chosen = runs.filter((r) => ids.includes(r.id)).sort((a, b) => a.id - b.id);
      results.hidden = !chosen.length;
      hint.hidden = Boolean(chosen.length);
      hint.textContent = ids.length ? "The chosen runs are gone (deleted, or archived: tick show archived)."
        : "Pick runs in the table above, then Compare selected.";
      if (!chosen.length) return;
      // Metrics only for runs that gained an epoch since their last fetch (a run without one needs no request),
      // at most METRIC_FETCHES_PER_TICK at a time, all of them before the charts are drawn.
      const stale = chosen.filter((r) => fetched.get(r.id) !== r.epochs_done);
      for (const r of stale) if (!r.epochs_done) { metrics.set(r.id, []); fetched.set(r.id, 0); }
      const wanted = stale.filter((r) => r.epochs_done);
      for (let i = 0; i < wanted.length; i += METRIC_FETCHES_PER_TICK) {
        const part = wanted.slice(i, i + METRIC_FETCHES_PER_TICK);
        const rows = await Promise.all(part.map((r) => api(`/api/jobs/${r.id}/metrics`)));
        part.forEach((r, j) => { metrics.set(r.id, rows[j]); fetched.set(r.id, r.epochs_done); });
      }
      const list = chosen.map((r) => r.id).join(",");
      const sig = chosen.map((r) => `${r.id}:${r.epochs_done}:${r.status}`).join(",");
      if (sig !== statsFor) { stats = await api(`/api/compare/stats?jobs=${list}`); statsFor = sig; }
      csv.href = `/api/compare.csv?jobs=${list}`;
      epochsCsv.href = `/api/epochs.csv?jobs=${list}`;
      reportHtml.href = `/api/report.html?jobs=${list}`;
      reportMd.href = `/api/report.md?jobs=${list}`;
      picker.setLooks(stats.looks);
      const varies = new Map(stats.groups.flatMap((g) => g.jobs.map((id) => [id, g.varies])));
      tbody.replaceChildren(...tableRows(chosen, varies, stats.looks));
      seedBody.replaceChildren(...seedRows(stats, new Map(chosen.map((r) => [r.id, r])), panel));
      seedHint.textContent = stats.groups.some((g) => g.jobs.length > 1)
        ? `Runs that differ only by seed share a row; the curves show their mean with a band (${stats.band}).`
        : "No run here has a repeat under another seed yet: Repeat… queues them, then pick them all.";
      drawCurves(curves, chosen, metrics, stats, CURVES.val_acc, showTrain);
      drawCurves(lossCurves, chosen, metrics, stats, CURVES.val_loss, showTrain);
      await drawFig2(fig2, chosen, stats.looks);
    } finally {
      busy = false;
      if (!signal.aborted) {
        clearTimeout(timer);
        const active = runs.some((r) => can("waiting", r) || can("progressing", r));
        timer = setTimeout(() => tick().catch(fail), again ? 0 : active ? POLL_ACTIVE_MS : POLL_IDLE_MS);
        again = false;
      }
    }
  }
  onLeave(() => clearTimeout(timer));
  await tick();
}
