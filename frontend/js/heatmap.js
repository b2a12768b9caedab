// The confusion matrix as a heatmap: light (few) to dark (many), counts or row percentages in the cells, a hover
// that names the true class, the predicted class, the count and the share of that true class. With many classes
// (CIFAR-100's 100) the cells carry no text and the axes no tick labels (100 names cannot be read there): the hover
// names the classes, and topConfusions() lists the largest mistakes as text beside the plot.
"use strict";
import { plotText } from "./util.js";

// White to dark blue: the eye reads darker as more (Plotly's own "Blues" runs the other way).
export const LIGHT_TO_DARK = [[0, "#ffffff"], [0.15, "#deebf7"], [0.4, "#9ecae1"], [0.7, "#3182bd"], [1, "#08306b"]];

// Beyond this many classes a per-class view names its classes on hover (and in text lists), not on its axes.
export const MANY_CLASSES = 20;
export const manyClasses = (classes) => classes.length > MANY_CLASSES;

// {z, text, custom} for mode "count" or "row" (percent of each true class's images).
export function confusionCells(confusion, mode) {
  const rows = confusion.map((r) => r.reduce((a, b) => a + b, 0));
  const share = confusion.map((r, i) => r.map((c) => (rows[i] ? (100 * c) / rows[i] : 0)));
  const z = mode === "row" ? share : confusion;
  const text = mode === "row" ? share.map((r) => r.map((v) => `${v.toFixed(v >= 10 || v === 0 ? 0 : 1)}%`))
                              : confusion.map((r) => r.map(String));
  const custom = confusion.map((r, i) => r.map((c, j) => [c, share[i][j].toFixed(1), rows[i]]));
  return { z, text, custom };
}

export function confusionFigure(confusion, classes, mode, title) {
  const { z, text, custom } = confusionCells(confusion, mode);
  const names = classes.map(plotText);
  const many = manyClasses(classes);
  const trace = {
    type: "heatmap", z, x: names, y: names, text, texttemplate: many ? "" : "%{text}", customdata: custom,
    colorscale: LIGHT_TO_DARK, zmin: 0, zmax: mode === "row" ? 100 : undefined, xgap: many ? 0 : 1, ygap: many ? 0 : 1,
    hovertemplate: "true: %{y}<br>predicted: %{x}<br>count: %{customdata[0]} of %{customdata[2]}"
      + "<br>%{customdata[1]}% of true %{y}<extra></extra>",
    colorbar: { title: { text: mode === "row" ? "% of true class" : "images", side: "right" }, thickness: 14 },
  };
  const hint = many ? ` (${classes.length}, hover for names)` : "";
  const layout = {
    title: { text: title, x: 0, xanchor: "left" }, uirevision: "keep",
    margin: many ? { t: 44, r: 10, b: 40, l: 40 } : { t: 44, r: 10, b: 70, l: 80 },
    xaxis: { title: { text: `predicted class${hint}` }, tickangle: -40, automargin: true, showticklabels: !many },
    yaxis: { title: { text: `true class${hint}` }, autorange: "reversed", automargin: true, showticklabels: !many },
  };
  return { data: [trace], layout };
}

// The n largest off-diagonal cells, largest first: [{truth, predicted, count, share (% of the true class)}].
export function topConfusions(confusion, classes, n = 10) {
  const cells = [];
  confusion.forEach((r, i) => {
    const row = r.reduce((a, b) => a + b, 0);
    r.forEach((c, j) => { if (i !== j && c > 0) cells.push({ truth: classes[i], predicted: classes[j], count: c, share: row ? (100 * c) / row : 0 }); });
  });
  cells.sort((a, b) => b.count - a.count || b.share - a.share);
  return cells.slice(0, n);
}
