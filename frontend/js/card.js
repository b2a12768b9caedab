// Method cards: what a model runs, and where it differs from the authors' runs.
"use strict";
import { $, el, pct, int, secs, plotText, state, api, ApiError, showMessage, clearMessage, fail, onLeave, viewSignal, isAbort, catalogue, can, modelById, paperCurve } from "./util.js";

// ---------------------------------------------------------------------------------------------------- method card
// A model's method card (GET /api/models/{id}, built from the catalogue): what it runs, as rows, and each known
// deviation from the authors' runs with its likely effect. On the job page, the card of the job's own config
// (its options as query parameters) with where the job leaves the paper preset; nothing here lists an option.
// `forJob`: true on the job page ("this job"), "form" beside the new-job form ("this config": what Start job would
// submit, with where it leaves the paper preset and how its length differs).
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
    const length = card.length_differences || [];
    const what = forJob === "form" ? "This config" : "This job";
    const item = (d) => el("li", { "data-option": d.option }, el("strong", { text: d.label }),
      `: ${shown(d.value, d.option)} (paper preset: ${shown(d.paper, d.option)})`);
    box.append(el("h4", { text: differs.length || length.length ? `${what} leaves the paper preset` : `${what} runs the paper preset` }),
      differs.length ? el("ul", { class: "job-differs" }, differs.map(item)) : "",
      // Epochs change no epoch's result (a checkpoint resumes across them), but a 3-epoch run is not the paper's run.
      length.length ? el("ul", { class: "length-differs" }, length.map((d) => el("li", { "data-option": d.option },
        el("strong", { text: d.label }), `: ${shown(d.value, d.option)} (paper preset: ${shown(d.paper, d.option)}; the run's length)`))) : "");
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

// `forJob` as cardView's (default: the job page's when a config is given). Resolves the card shown, or null. A
// config the server refuses (a 422 while a field is half typed) keeps the card shown, with the reason above it.
export async function showCard(box, id, jobConfig, forJob = Boolean(jobConfig)) {
  // Only the options a browser sets (GET /api/options): a job's effective config also lists the engine-only ones.
  const web = new Set((state.options || []).map((o) => o.name));
  const query = jobConfig ? "?" + new URLSearchParams(Object.entries(jobConfig).filter(([k]) => k !== "model" && web.has(k))
    .map(([k, v]) => [k, v === null || v === undefined ? "" : String(v)])).toString() : "";
  const want = id + query;
  box.dataset.want = want;  // a slower answer for a model or values chosen before must not overwrite this one
  const shown = box.querySelector(".method-card-body");
  if (!state.cards[want] && !shown) box.replaceChildren(el("p", { class: "muted", text: "Loading the method card…" }));
  try {
    const card = state.cards[want] = state.cards[want] || await api(`/api/models/${encodeURIComponent(id)}${query}`);
    if (box.dataset.want !== want) return null;
    box.replaceChildren(cardView(card, forJob));
    box.dataset.shown = want;
    return card;
  } catch (e) {
    if (box.dataset.want !== want) return null;
    const why = e instanceof ApiError && e.status === 422 && Array.isArray(e.detail)
      ? e.detail.map((d) => `${d.loc[d.loc.length - 1]}: ${d.msg}`).join("; ") : e.message;
    if (shown && forJob === "form" && shown.dataset.model === id) {
      box.querySelectorAll(".card-stale").forEach((n) => n.remove());
      box.prepend(el("p", { class: "warn card-stale", text: `The card shows the last valid values (${why}).` }));
    } else box.replaceChildren(el("p", { class: "error-text", text: `No method card: ${why}` }));
    return null;
  }
}
