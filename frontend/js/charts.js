// Shared chart helpers: one colour per model everywhere (a look per run), layouts whose legend sits below the axes and whose mode
// bar covers no title, a waiting message in place of empty axes, and labels placed so that they do not overlap.
"use strict";
import { el, state } from "./util.js";

// A model's colour as the server declares it (core/palette.py, with GET /api/models): the same in every view, every
// visit and the reproduction report, whatever else is shown beside it.
export function modelColour(modelId) {
  const m = (state.models || []).find((x) => x.id === modelId);
  return m ? m.colour : "#444";
}

// A run's look (core/palette.py, sent by GET /api/compare/stats: a shade of its model's colour and a marker) as a
// table shows it: the marker's character in the run's colour.
export function lookSwatch(look) {
  return el("span", { class: "look", style: `color:${look.colour}`, title: `${look.colour} ${look.symbol}`,
    "data-colour": look.colour, "data-symbol": look.symbol, text: look.glyph });
}

// Plotly's mode bar sits top right and the title top left with room above the plot; the legend lies below the
// plot area, anchored to the bottom of the figure, so it never covers an axis title (margins grow to fit it).
export function layout(title, ytitle, extra = {}) {
  return {
    title: { text: title, x: 0, xanchor: "left", xref: "paper", y: 0.99, yanchor: "top", yref: "container", automargin: true },
    uirevision: "keep",
    margin: { t: 48, r: 16, b: 16, l: 60 },
    xaxis: { title: { text: "epoch" }, dtick: 1, automargin: true },
    yaxis: { title: { text: ytitle }, automargin: true },
    legend: { orientation: "h", x: 0, xanchor: "left", y: 0, yanchor: "bottom", yref: "container" },
    ...extra,
  };
}

// The mode bar without buttons a student never needs here: short enough to stay clear of a left-aligned title.
export const PLOT_CONFIG = { responsive: true, displaylogo: false,
  modeBarButtonsToRemove: ["select2d", "lasso2d", "zoomIn2d", "zoomOut2d", "autoScale2d", "toggleSpikelines",
                           "hoverClosestCartesian", "hoverCompareCartesian"] };

// A chart box: a plot, or a message saying what the chart waits for (never empty axes). `show(message)` or
// `draw(traces, layout)`; the plot div keeps its id for tests and other views.
export function chartBox(id, cls = "plot") {
  const note = el("p", { class: "plot-wait muted", id: `${id}-wait`, text: "Loading…" });
  const plot = el("div", { id, class: cls, hidden: true });
  const box = el("div", { class: "chart" }, note, plot);
  box.show = (message) => {
    if (!plot.hidden) { Plotly.purge(plot); plot.hidden = true; }
    note.textContent = message;
    note.hidden = false;
  };
  box.draw = (traces, lay, config = PLOT_CONFIG) => {
    note.hidden = true;
    plot.hidden = false;
    return Plotly.react(plot, traces, lay, config);
  };
  box.plot = plot;
  return box;
}

// Label placement: for each point, the nearest candidate position (rings of growing distance, eight directions)
// whose label box overlaps no label placed before, no point and no edge of the plot area; a label that finds none
// goes where it overlaps least. Displaced labels get a leader line. Boxes are estimated from the text length (no
// font metrics needed), generously, so that the labels Plotly draws stay apart.
const DIRECTIONS = [[0, -1], [0, 1], [1, 0], [-1, 0], [1, -1], [-1, -1], [1, 1], [-1, 1]];
const RINGS = [0, 14, 30, 48, 68, 90, 115];

export function placeLabels(points, toPixel, area, fontPx = 11) {
  const boxes = [];
  const dots = points.map((p) => toPixel(p.x, p.y));
  const overlap = (a, b) => a.x0 < b.x1 && b.x0 < a.x1 && a.y0 < b.y1 && b.y0 < a.y1;
  return points.map((p, i) => {
    const [px, py] = dots[i];
    const w = p.text.length * fontPx * 0.62 + 8;
    const h = fontPx + 8;
    let best = null;
    search: for (const ring of RINGS) {
      for (const [ux, uy] of DIRECTIONS) {
        const dx = ux * (w / 2 + 6 + ring);
        const dy = uy * (h / 2 + 4 + ring * 0.6);
        const box = { x0: px + dx - w / 2, x1: px + dx + w / 2, y0: py + dy - h / 2, y1: py + dy + h / 2 };
        const out = area && (box.x0 < 0 || box.y0 < 0 || box.x1 > area.w || box.y1 > area.h) ? 1 : 0;
        const hits = out + boxes.filter((b) => overlap(b, box)).length
          + dots.filter(([x, y]) => x > box.x0 - 5 && x < box.x1 + 5 && y > box.y0 - 5 && y < box.y1 + 5).length;
        if (!best || hits < best.hits) best = { hits, dx, dy, box };
        if (hits === 0) break search;
      }
    }
    boxes.push(best.box);
    return { ...p, ax: Math.round(best.dx), ay: Math.round(best.dy) };
  });
}
