"""In real Chromium: a page from another origin cannot start, cancel or resume a job (form posts, no-cors fetches,
preflighted fetches), a DNS-rebinding page gets nothing, and the lab's own UI still can do all of it."""
from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from tests.lab import free_port, wait_for

from .conftest import ARGS, CHROMIUM, shot

pytestmark = pytest.mark.browser
XRW = {"X-Requested-With": "BlockLab"}


@pytest.fixture
def lab_with_jobs(make_lab):
    """A lab with no worker: one experiment with a queued job, one with a cancelled job."""
    lab = make_lab()
    queued = lab.client.post("/api/experiments", json={"name": "queued one", "config": {"epochs": 1}}).json()
    other = lab.client.post("/api/experiments", json={"name": "cancelled one", "config": {"epochs": 1}}).json()
    cancelled = other["jobs"][0]["id"]
    assert lab.client.post(f"/api/jobs/{cancelled}/cancel", headers=XRW).json()["status"] == "cancelled"
    lab.ids = {"experiment": queued["id"], "queued": queued["jobs"][0]["id"], "cancelled": cancelled}
    return lab


def _state(lab) -> tuple:
    jobs = lab.client.get("/api/jobs").json()
    return len(lab.client.get("/api/experiments").json()), sorted((j["id"], j["status"], j["attempt"]) for j in jobs)


def _hostile_page(lab) -> str:
    """What an attacker's page does: every way to send a write that needs no preflight, and two that do."""
    ids = lab.ids
    targets = [f"{lab.url}/api/experiments/{ids['experiment']}/jobs", f"{lab.url}/api/jobs/{ids['queued']}/cancel",
               f"{lab.url}/api/jobs/{ids['cancelled']}/resume"]
    forms = "".join(f'<iframe name="sink{i}"></iframe><form id="f{i}" method="POST" action="{t}" target="sink{i}">'
                    f"</form>" for i, t in enumerate(targets))
    # The classic CSRF on a JSON API: a text/plain form whose body happens to be JSON.
    forms += (f'<iframe name="sink3"></iframe><form id="f3" method="POST" enctype="text/plain" target="sink3" '
              f'action="{lab.url}/api/experiments"><input name=\'{{"name": "csrf", "x": "\' value=\'"}}\'></form>')
    return f"""<!doctype html><title>a page on another site</title>{forms}
<script>
const targets = {targets!r};
async function post(i) {{
  const sink = document.querySelector(`iframe[name=sink${{i}}]`);
  const loaded = new Promise(r => sink.addEventListener("load", r, {{once: true}}));
  document.getElementById(`f${{i}}`).submit();
  await loaded;
  return "form sent";
}}
async function tryFetch(url, opts) {{
  try {{ const r = await fetch(url, {{method: "POST", ...opts}}); return r.type === "opaque" ? "opaque" : r.status; }}
  catch (e) {{ return "blocked: " + e.name; }}
}}
window.attack = async () => {{
  const out = [];
  for (let i = 0; i < 4; i++) out.push(await post(i));
  const body = JSON.stringify({{name: "csrf"}});
  for (const url of [...targets, "{lab.url}/api/experiments"]) {{
    out.push(await tryFetch(url, {{mode: "no-cors", body}}));
    // Not safelisted: a no-cors request silently drops these headers.
    out.push(await tryFetch(url, {{mode: "no-cors", body, headers: {{"Content-Type": "application/json",
                                                                   "X-Requested-With": "BlockLab"}}}}));
    // Need a preflight, which the lab does not answer.
    out.push(await tryFetch(url, {{body, headers: {{"Content-Type": "application/json"}}}}));
    out.push(await tryFetch(url, {{headers: {{"X-Requested-With": "BlockLab"}}}}));
  }}
  return out;
}};
</script>"""


class _Site(ThreadingHTTPServer):
    daemon_threads = True


def _serve(html: str) -> tuple[_Site, str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = html.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    port = free_port()
    site = _Site(("127.0.0.1", port), Handler)
    threading.Thread(target=site.serve_forever, daemon=True).start()
    return site, f"http://localhost:{port}"  # localhost vs the lab's 127.0.0.1: another origin, another site


def test_a_page_from_another_origin_cannot_start_cancel_or_resume_jobs(lab_with_jobs, page):
    lab = lab_with_jobs
    before = _state(lab)
    site, origin = _serve(_hostile_page(lab))
    answers = []  # what the lab itself answered to the requests that reached it
    page.on("response", lambda r: r.url.startswith(lab.url) and answers.append((r.request.method, r.status)))
    try:
        page.goto(origin + "/")
        out = page.evaluate("attack()")
    finally:
        site.shutdown()
        site.server_close()
    print(f"\ncross-site: {len(out)} attempts from {origin} -> {sorted(set(map(str, out)))}; "
          f"the lab answered {sorted(set(answers))}")
    assert out[:4] == ["form sent"] * 4
    assert out[4:].count("opaque") == 8 and out[4:].count("blocked: TypeError") == 8, out
    posts = [status for method, status in answers if method == "POST"]
    assert len(posts) >= 4 and all(s in (403, 415) for s in posts), answers  # refused by the lab, not the browser
    assert _state(lab) == before  # no new experiment or job, statuses and attempts unchanged
    assert lab.client.get(f"/api/jobs/{lab.ids['queued']}").json()["status"] == "queued"


def test_the_labs_own_ui_still_starts_cancels_and_resumes(lab_with_jobs, page):
    lab = lab_with_jobs
    ids = lab.ids
    page.goto(lab.url + "/#/jobs")
    row = f"tr[data-job='{ids['queued']}']"
    page.click(f"{row} button.cancel")
    page.wait_for_selector(f"{row} .status-cancelled", timeout=15_000)
    page.click(f"{row} button.resume")
    page.wait_for_selector(f"{row} .status-queued", timeout=15_000)
    j = lab.client.get(f"/api/jobs/{ids['queued']}").json()
    assert (j["status"], j["attempt"]) == ("queued", 2)
    # The page's own origin may also call the API directly, the way app.js does (once the experiment's live job
    # is cancelled: an experiment runs one job at a time).
    lab.client.post(f"/api/jobs/{ids['queued']}/cancel")
    started = page.evaluate(f"""async () => {{
        const r = await fetch("/api/experiments/{ids['experiment']}/jobs",
                              {{method: "POST", headers: {{"X-Requested-With": "BlockLab"}}}});
        return [r.status, (await r.json()).status];
    }}""")
    assert started == [201, "queued"]
    # The event stream still flows through the guard (a pure ASGI middleware buffers nothing).
    event = page.evaluate(f"""() => new Promise((ok, fail) => {{
        const es = new EventSource("/api/jobs/{ids['queued']}/events");
        es.addEventListener("progress", (e) => {{ es.close(); ok(JSON.parse(e.data).status); }});
        setTimeout(() => fail("no event in 10 s"), 10000);
    }})""")
    assert event == "cancelled"  # the job cancelled above, as its stream reports it
    page.goto(lab.url + "/#/new")
    page.fill("#f-name", "from the lab's own form")
    page.click("#submit")
    page.wait_for_url("**/#/job/*")
    assert "from the lab's own form" in [e["name"] for e in lab.client.get("/api/experiments").json()]
    assert not page.errors
    shot(page, "own-ui-still-writes")


def test_a_dns_rebinding_page_gets_nothing(lab_with_jobs, browser):
    """evil.example re-resolved to 127.0.0.1: same-origin with the lab, so it may set any header; its Host gives it
    away."""
    lab = lab_with_jobs
    before = _state(lab)
    for method, path in (("GET", "/api/jobs"), ("GET", "/"), ("POST", f"/api/jobs/{lab.ids['queued']}/cancel")):
        r = httpx.request(method, lab.url + path, headers={"Host": "evil.example", **XRW})
        assert r.status_code == 400 and "BLOCKLAB_ALLOWED_HOSTS" in r.json()["detail"], (method, path, r.text)
    rebound = browser.browser_type.launch(executable_path=CHROMIUM, headless=True,
                                          args=[*ARGS, "--host-resolver-rules=MAP evil.example 127.0.0.1"])
    try:
        pg = rebound.new_page()
        first = pg.goto(f"http://evil.example:{lab.port}/")
        assert first.status == 400
        got = pg.evaluate(f"""async () => {{
            const read = await fetch("/api/jobs");
            const write = await fetch("/api/jobs/{lab.ids['queued']}/cancel",
                                      {{method: "POST", headers: {{"X-Requested-With": "BlockLab"}}}});
            return [read.status, write.status, await read.text()];
        }}""")
    finally:
        rebound.close()
    assert got[:2] == [400, 400] and "queued one" not in got[2]  # nothing read, nothing written
    assert _state(lab) == before
    assert lab.client.get("/api/jobs").status_code == 200  # by its own name the lab still answers


def test_a_page_from_another_origin_cannot_show_the_lab_in_a_frame(lab_with_jobs, page):
    """Clickjacking (issue 16 review): a foreign page framing the lab to trick a click on Queue or Delete. Every
    response says frame-ancestors 'self': Chromium refuses to render the lab in the foreign frame."""
    lab = lab_with_jobs
    site, origin = _serve(f'<!doctype html><title>another site</title><iframe id="f" src="{lab.url}/#/jobs" '
                          'width="800" height="600"></iframe>')
    blocked = []
    page.on("console", lambda m: "frame-ancestors" in m.text and blocked.append(m.text))
    try:
        page.goto(origin + "/")
        page.wait_for_function("document.getElementById('f') && document.readyState === 'complete'")
        frame = page.frame_locator("#f")
        assert frame.locator("#jobs-table, table").count() == 0  # nothing of the lab is drawn there
        wait_for(lambda: blocked, 30, "Chromium's frame-ancestors refusal")
    finally:
        site.shutdown()
        site.server_close()
    page.goto(lab.url + "/#/jobs")  # the lab itself still renders
    page.wait_for_selector("table")
