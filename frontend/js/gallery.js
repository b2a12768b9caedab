// The job page's gallery of mistakes: thumbnails of the misclassified validation images of the best (or latest)
// epoch, most confident first, filterable by true and predicted class, one page at a time (GET
// /api/jobs/{id}/mistakes). Each says its true class, the prediction and its confidence, and whether epoch 1 had
// it right. Clicking a confusion-matrix cell opens that cell (`open(trueIndex, predIndex)`). Class names reach the
// page as text only (a class folder may be named like HTML).
"use strict";
import { el, api, isAbort, int } from "./util.js";

const PER_PAGE = 24;

export function mistakesGallery(jobId, signal) {
  const epochPick = el("select", { id: "mistakes-epoch" },
    el("option", { value: "best", text: "best epoch" }), el("option", { value: "latest", text: "latest epoch" }));
  const truePick = el("select", { id: "mistakes-true" }, el("option", { value: "", text: "any" }));
  const predPick = el("select", { id: "mistakes-pred" }, el("option", { value: "", text: "any" }));
  const summary = el("p", { class: "muted", id: "mistakes-summary", text: "Loading…" });
  const grid = el("div", { class: "mistakes-grid", id: "mistakes-grid" });
  const prev = el("button", { type: "button", class: "secondary", id: "mistakes-prev", text: "← Previous" });
  const next = el("button", { type: "button", class: "secondary", id: "mistakes-next", text: "Next →" });
  const pageText = el("span", { id: "mistakes-page" });
  const node = el("div", { class: "card", id: "job-mistakes" },
    el("div", { class: "card-head" }, el("h3", { text: "Mistakes: misclassified validation images" })),
    el("div", { class: "detail-controls mistakes-controls" },
      el("label", {}, "Epoch: ", epochPick), el("label", {}, "True class: ", truePick),
      el("label", {}, "Predicted: ", predPick)),
    summary, grid, el("div", { class: "mistakes-pager" }, prev, pageText, next));
  let page = 1, classes = null, seq = 0;
  const filter = { true: "", pred: "" };  // class indices ("" = any): kept apart from the selects, which fill late

  const fillClasses = (names) => {
    if (classes && classes.length === names.length && classes.every((c, i) => c === names[i])) return;
    classes = names;
    for (const pick of [truePick, predPick]) {
      pick.replaceChildren(el("option", { value: "", text: "any" }), ...names.map((c, i) => el("option", { value: i, text: c })));
    }
  };

  const card = (it) => el("figure", { class: "mistake", "data-row": it.row },
    el("img", { src: it.thumbnail, alt: `true ${it.true}, predicted ${it.pred}`, loading: "lazy", width: 96, height: 96 }),
    el("figcaption", {},
      el("div", { class: "mistake-true" }, el("b", { text: "true " }), it.true),
      el("div", { class: "mistake-pred" }, el("b", { text: "predicted " }), it.pred, ` (${(100 * it.confidence).toFixed(1)}%)`),
      it.right_at_epoch_1 === null ? "" : el("div", { class: `mistake-first ${it.right_at_epoch_1 ? "was-right" : "was-wrong"}`,
        text: it.right_at_epoch_1 ? "right at epoch 1" : "wrong at epoch 1 too" })));

  const refresh = async () => {
    const mine = ++seq;
    const q = new URLSearchParams({ epoch: epochPick.value, page, per_page: PER_PAGE });
    if (filter.true !== "") q.set("true", filter.true);
    if (filter.pred !== "") q.set("pred", filter.pred);
    let r;
    try { r = await api(`/api/jobs/${jobId}/mistakes?${q}`, { signal }); } catch (e) {
      if (isAbort(e) || mine !== seq) return;
      summary.textContent = e.status === 404 ? e.message : `Mistakes not available: ${e.message}`;
      grid.replaceChildren(); prev.disabled = next.disabled = true; pageText.textContent = "";
      return;
    }
    if (mine !== seq) return;
    fillClasses(r.classes);
    truePick.value = filter.true; predPick.value = filter.pred;
    if (r.page > r.pages && r.total) { page = r.pages; return refresh(); }
    const chosen = [r.true !== null ? `true ${r.true}` : "", r.pred !== null ? `predicted ${r.pred}` : ""].filter(Boolean).join(", ");
    summary.textContent = `Epoch ${r.epoch} (${r.kept_as}): ${int(r.mistakes_all)} of ${int(r.images)} validation images misclassified`
      + (chosen ? `; ${int(r.total)} with ${chosen}` : "") + ". Most confident mistakes first.";
    grid.replaceChildren(...(r.items.length ? r.items.map(card)
      : [el("p", { class: "muted", id: "mistakes-none", text: chosen ? "No mistakes with this filter." : "No mistakes." })]));
    page = r.page;
    pageText.textContent = ` page ${page} of ${r.pages} `;
    prev.disabled = page <= 1; next.disabled = page >= r.pages;
  };
  for (const pick of [epochPick, truePick, predPick]) pick.addEventListener("change", () => {
    filter.true = truePick.value; filter.pred = predPick.value; page = 1; refresh();
  });
  prev.addEventListener("click", () => { page -= 1; refresh(); });
  next.addEventListener("click", () => { page += 1; refresh(); });

  // A confusion-matrix cell: its true and predicted class (a diagonal cell: that class's mistakes of any kind).
  const open = (trueIndex, predIndex) => {
    filter.true = String(trueIndex);
    filter.pred = trueIndex === predIndex ? "" : String(predIndex);
    page = 1;
    refresh().then(() => node.scrollIntoView({ behavior: "smooth", block: "start" }));
  };
  return { node, refresh, open };
}
