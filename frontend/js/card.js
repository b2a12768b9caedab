// Method cards: what a model runs, and where it differs from the authors' runs.
"use strict";
import { $, el, pct, int, secs, plotText, state, api, ApiError, showMessage, clearMessage, fail, onLeave, viewSignal, isAbort, catalogue, can, modelById, paperCurve } from "./util.js";

// ---------------------------------------------------------------------------------------------------- method card
// A model's method card (GET /api/models/{id}, built from the catalogue): what it runs, as rows, and each known
// deviation from the authors' runs with its likely effect. On the job page, the card of the job's own config
// (its options as query parameters) with where the job leaves the paper preset; nothing here lists an option.
export function cardView(card, forJob) {
  const box = el("div", { class: "method-card-body", "data-model": card.model });
  box.append(el("h3", { text: `Method card: ${card.paper_name ? `${card.paper_name} · ` : ""}${card.timm_id}` }));
  box.append(el("table", { class: "card-rows" }, el("tbody", {}, card.rows.map((r) =>
    el("tr", {}, el("th", { text: r.label }), el("td", { text: r.value }))))));
  if (forJob) {
    // An empty value reads as its option's meaning ("all" images), from GET /api/options.
    const emptyMeans = (option) => ((state.options || []).find((o) => o.name === option) || {}).none_means || "none";
    const shown = (v, option) => (v === null || v === undefined ? emptyMeans(option) : String(v));
    const differs = card.config_deviations;
    box.append(el("h4", { text: differs.length ? "This job leaves the paper preset" : "This job runs the paper preset" }),
      differs.length ? el("ul", { class: "job-differs" }, differs.map((d) =>
        el("li", {}, el("strong", { text: d.label }), `: ${shown(d.value, d.option)} (paper preset: ${shown(d.paper, d.option)})`))) : "");
  }
  if (card.deviations.length) {
    box.append(el("h4", { text: "Known deviations from the authors' runs" }),
      el("ul", { class: "deviations" }, card.deviations.map((d) =>
        el("li", {}, el("span", { text: d.what }), el("div", { class: "effect", text: `Likely effect: ${d.effect}` })))));
  } else if (!card.in_paper) {
    box.append(el("p", { class: "muted", text: "Not in the paper's Table 1: nothing to compare with." }));
  }
  return box;
}

export async function showCard(box, id, jobConfig) {
  box.dataset.want = id;  // a slower answer for a model picked before must not overwrite this one
  // Only the options a browser sets (GET /api/options): a job's effective config also lists the engine-only ones.
  const web = new Set((state.options || []).map((o) => o.name));
  const query = jobConfig ? "?" + new URLSearchParams(Object.entries(jobConfig).filter(([k]) => k !== "model" && web.has(k))
    .map(([k, v]) => [k, v === null || v === undefined ? "" : String(v)])).toString() : "";
  if (!state.cards[id + query]) box.replaceChildren(el("p", { class: "muted", text: "Loading the method card…" }));
  try {
    const card = state.cards[id + query] = state.cards[id + query] || await api(`/api/models/${encodeURIComponent(id)}${query}`);
    if (box.dataset.want === id) box.replaceChildren(cardView(card, Boolean(jobConfig)));
  } catch (e) {
    if (box.dataset.want === id) box.replaceChildren(el("p", { class: "error-text", text: `No method card: ${e.message}` }));
  }
}
