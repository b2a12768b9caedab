// BlockLab's browser app: submit jobs, watch them live, compare them with the paper. No framework, no CDN, no
// build step: ES modules under js/, one per view.
"use strict";
import { $, el, api, catalogue, clearMessage, fail, leaveView, showMessage } from "./js/util.js";
import { renderNew } from "./js/new.js";
import { renderJobs } from "./js/jobs.js";
import { renderJob } from "./js/job.js";
import { renderCompare } from "./js/compare.js";
import { renderDepth } from "./js/depth.js";

// ---------------------------------------------------------------------------------------------------- routing
// Each visit renders into a fresh container; leaving aborts the old view's fetches and streams, and anything it
// still appends lands in its own detached container, never in the new page.
async function route() {
  const signal = leaveView();
  clearMessage();
  const [path, query] = (location.hash.slice(1) || "/new").split("?");
  const params = new URLSearchParams(query || "");
  const view = el("div", { class: "view" });
  $("#view").replaceChildren(view);
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", path.startsWith(a.getAttribute("href").slice(1)));
  try {
    await catalogue();
    if (path === "/new") renderNew(view);
    else if (path === "/jobs") renderJobs(view);
    else if (path.startsWith("/job/")) await renderJob(view, Number(path.split("/")[2]));
    else if (path === "/compare") await renderCompare(view, params);
    else if (path.startsWith("/depth/")) await renderDepth(view, decodeURIComponent(path.slice("/depth/".length)));
    else view.append(el("p", { text: "Nothing here. " }, el("a", { href: "#/new", text: "Start a job" })));
  } catch (e) { if (!signal.aborted) fail(e); }
}
window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", () => {
  $("#token-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      await api("/api/session", { method: "POST", headers: { "X-BlockLab-Token": $("#token-input").value } });
    } catch (e) { fail(e); return; }
    $("#token-input").value = "";
    $("#token-box").hidden = true;
    await route();  // the view that was refused, now with the session
    showMessage("Token accepted: this browser keeps a session for 30 days.", "info");
  });
  route();
});
