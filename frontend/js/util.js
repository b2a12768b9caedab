// Shared plumbing: DOM building, the API client, messages, the catalogue. User text reaches the page through
// textContent (never innerHTML) or plotText() for Plotly.
"use strict";

export const $ = (sel, root = document) => root.querySelector(sel);

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "class") node.className = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

export const pct = (v) => (v === null || v === undefined ? "–" : (100 * v).toFixed(2) + "%");
export const int = (v) => (v === null || v === undefined ? "–" : Number(v).toLocaleString("en-US"));
export const secs = (v) => (v === null || v === undefined ? "–" : v < 90 ? `${Math.round(v)} s` : `${(v / 60).toFixed(1)} min`);
// Plotly renders a little HTML in legends and hover text: user text goes in as entities only.
// A timm name (deit_tiny_patch16_224) may wrap after its underscores, never inside a word ("…patch16_22" / "4"):
// its pieces with a <wbr> after each underscore (the text itself, copied or searched, is unchanged).
export const breakable = (name) => String(name).split(/(?<=_)/).flatMap((part, i) => (i ? [document.createElement("wbr"), part] : [part]));
export const plotText = (s) => String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");

// With BLOCKLAB_TOKEN set the page asks for the token once and trades it for a session cookie (POST /api/session:
// HttpOnly, so no script here ever holds it, and event streams carry it; see backend/app/security.py).
localStorage.removeItem("blocklab-token");  // where an older version kept the token itself
export const state = { models: null, paper: null, cards: {} };

// Every view registers what must stop when the user leaves it (timers, event streams, Plotly listeners), and its
// fetches carry the view's abort signal: leaving a page aborts them, so a late answer never draws into the next.
let leaving = [];
let controller = new AbortController();
export const onLeave = (fn) => { leaving.push(fn); };
export const viewSignal = () => controller.signal;
export function leaveView() {
  controller.abort();
  leaving.forEach((f) => { try { f(); } catch (e) { /* a view's cleanup must not block the next view */ } });
  leaving = [];
  controller = new AbortController();
  return controller.signal;
}
export const isAbort = (e) => e && e.name === "AbortError";

export class ApiError extends Error {
  constructor(status, detail) {
    super(typeof detail === "string" ? detail : `request failed (${status})`);
    this.status = status;
    this.detail = detail;
  }
}

export async function api(path, opts = {}) {
  // A custom header makes every write a CORS-preflighted request: a foreign page cannot send one (see security.py).
  const headers = { "X-Requested-With": "BlockLab", ...(opts.headers || {}) };
  if (opts.json !== undefined) headers["Content-Type"] = "application/json";
  let r;
  try {
    r = await fetch(path, { method: opts.method || "GET", headers, signal: opts.signal || viewSignal(),
                            body: opts.json !== undefined ? JSON.stringify(opts.json) : undefined });
  } catch (e) {
    if (isAbort(e)) throw e;
    throw new ApiError(0, "The BlockLab server cannot be reached. Is it running?");
  }
  if (r.status === 401) {
    $("#token-box").hidden = false;
    throw new ApiError(401, "This lab needs its access token: enter it above, then try again.");
  }
  if (r.status === 204) return null;  // DELETE: no body, whatever its content type says
  const isJson = (r.headers.get("content-type") || "").includes("json");
  const body = isJson ? await r.json() : await r.text();
  if (!r.ok) throw new ApiError(r.status, isJson ? body.detail : body);
  return body;
}

export function showMessage(text, kind = "error") {
  const m = $("#message");
  m.textContent = text;
  m.className = kind === "info" ? "info" : "";
  m.hidden = false;
}
export function clearMessage() { $("#message").hidden = true; }
export function fail(e) {
  if (isAbort(e)) return;  // the user left the view: nothing to report
  showMessage(e instanceof ApiError ? e.message : `Something went wrong: ${e.message || e}`);
}

window.addEventListener("error", (e) => showMessage(`Something went wrong: ${e.message}`));
window.addEventListener("unhandledrejection", (e) => fail(e.reason));

// The catalogue, the training options and the job statuses come from the API: nothing here lists them.
export async function catalogue() {
  if (!state.models) {
    [state.models, state.paper, state.options, state.statuses] = await Promise.all(
      [api("/api/models"), api("/api/paper"), api("/api/options"), api("/api/statuses")]);
  }
  return { models: state.models, paper: state.paper };
}
export const can = (what, j) => state.statuses[what].includes(j.status);  // a list of GET /api/statuses
export const modelById = (id) => (state.models || []).find((m) => m.id === id);
export const paperCurve = (model) => (model && model.paper_name ? state.paper.curves[model.paper_name] : null);
