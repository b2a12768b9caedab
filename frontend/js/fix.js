// A failed job whose file is missing (its weights, its dataset): what to put where, and "Run again" once the worker
// reports the file there, instead of a Resume that fails the same way. The check is the plan's preflight of the
// job's own config (POST /api/plan, from the worker's self-report), so it says what the plan says, in the same words.
"use strict";
import { el, state, api, fail, isAbort, can } from "./util.js";
import { fetchPlan } from "./plan.js";

// The job's config as a browser may send it (its effective config also lists engine-only options).
function webConfig(job) {
  const web = new Set((state.options || []).map((o) => o.name));
  return Object.fromEntries(Object.entries(job.config || {}).filter(([k]) => k === "model" || web.has(k)));
}

// Fills `box` for a failed job (empties it otherwise); hides the job's Resume button (inside `actions`) while a file
// is missing. `then` runs after the job was started again.
export async function offerFix(box, actions, job, { signal, then }) {
  if (!can("errored", job) || !job.config) { box.replaceChildren(); return; }
  const check = async () => {
    const plan = await fetchPlan({ configs: [webConfig(job)] }, signal);
    return plan ? plan.items[0] : null;
  };
  const draw = (item) => {
    const missing = item ? Object.entries(item.preflight).filter(([, p]) => p.state === "missing") : [];
    const resume = actions.querySelector("button.resume");
    if (!missing.length) {
      box.replaceChildren();
      if (resume) resume.hidden = false;
      return;
    }
    if (resume) resume.hidden = true;  // it would fail the same way
    const again = el("button", { type: "button", id: "fix-run-again", text: "Run again", disabled: true,
                                 title: "offered once the worker reports the file there" });
    const recheck = el("button", { type: "button", class: "secondary", id: "fix-check", text: "Check again" });
    const status = el("p", { class: "muted fix-state", id: "fix-state",
                             text: "Run again is offered once the worker reports the file there (it reports every few seconds)." });
    recheck.addEventListener("click", async () => {
      recheck.disabled = true;
      try {
        const now = await check();
        const still = now ? Object.values(now.preflight).filter((p) => p.state === "missing") : [];
        if (still.length) {
          status.textContent = `Still missing: ${still.map((p) => p.message).join("; ")}`;
        } else {
          status.textContent = "The worker has it now: run the job again.";
          again.disabled = false;
          box.dataset.ready = "1";
        }
      } catch (e) { if (!isAbort(e)) fail(e); } finally { recheck.disabled = false; }
    });
    again.addEventListener("click", async () => {
      again.disabled = true;
      try { await api(`/api/jobs/${job.id}/resume`, { method: "POST" }); await then(); }
      catch (e) { again.disabled = false; fail(e); }
    });
    box.replaceChildren(el("div", { class: "card fix-card", id: "fix-card" },
      el("h3", { text: `A file is missing: ${missing.map(([, p]) => p.label).join(" and ")}` }),
      el("ul", { class: "fix-steps" }, missing.map(([k, p]) => el("li", { "data-what": k, text: p.message }))),
      status, el("div", { class: "fix-buttons" }, again, recheck)));
  };
  try { draw(await check()); } catch (e) { if (!isAbort(e)) box.replaceChildren(); }
}
