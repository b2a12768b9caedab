// The confusion matrix as a heatmap: light (few) to dark (many), counts or row percentages in the cells, a hover
// that names the true class, the predicted class, the count and the share of that true class.
"use strict";
import { plotText } from "./util.js";

// White to dark blue: the eye reads darker as more (Plotly's own "Blues" runs the other way).
export const LIGHT_TO_DARK = [[0, "#ffffff"], [0.15, "#deebf7"], [0.4, "#9ecae1"], [0.7, "#3182bd"], [1, "#08306b"]];

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
  const trace = {
    type: "heatmap", z, x: names, y: names, text, texttemplate: "%{text}", customdata: custom,
    colorscale: LIGHT_TO_DARK, zmin: 0, zmax: mode === "row" ? 100 : undefined, xgap: 1, ygap: 1,
    hovertemplate: "true: %{y}<br>predicted: %{x}<br>count: %{customdata[0]} of %{customdata[2]}"
      + "<br>%{customdata[1]}% of true %{y}<extra></extra>",
    colorbar: { title: { text: mode === "row" ? "% of true class" : "images", side: "right" }, thickness: 14 },
  };
  const layout = {
    title: { text: title, x: 0, xanchor: "left" }, uirevision: "keep", margin: { t: 44, r: 10, b: 70, l: 80 },
    xaxis: { title: { text: "predicted class" }, tickangle: -40, automargin: true },
    yaxis: { title: { text: "true class" }, autorange: "reversed", automargin: true },
  };
  return { data: [trace], layout };
}
