"""Only the lab's own pages change state (Host, Origin, content-type rules), the body limit counts the bytes read,
422s are short strict JSON, the Bearer scheme is case-insensitive, CSV cells cannot become formulas."""
import asyncio
import csv
import io
import json

import pytest
from fastapi.testclient import TestClient

from backend.app.csv_export import to_csv
from backend.app.security import guard, host_allowed, host_name, same_origin

from .conftest import TINY

XRW = {"X-Requested-With": "BlockLab"}


@pytest.fixture
def bare(api):
    """The same app through a client with no default headers (conftest's may add X-Requested-With)."""
    return TestClient(api.app)


def _experiment(client, name="exp", start=False, **cfg) -> dict:
    r = client.post("/api/experiments", json={"name": name, "start": start, "config": {**TINY, **cfg}})
    assert r.status_code == 201, r.text
    return r.json()


def _counts(client) -> tuple[int, list]:
    jobs = client.get("/api/jobs").json()
    return len(client.get("/api/experiments").json()), sorted((j["id"], j["status"], j["attempt"]) for j in jobs)


def _clear_settings():
    from core.settings import get_settings
    get_settings.cache_clear()


# --- the body limit ------------------------------------------------------------------------------------------

def _padded_json(total: int) -> bytes:
    head = b'{"name": "big", "start": false'
    return head + b" " * (total - len(head) - 1) + b"}"


def test_a_chunked_body_over_the_limit_gets_413_and_is_not_parsed(bare):
    body = _padded_json(300 * 1024)  # valid JSON: the old Content-Length-only check let it through as a 201

    def chunks():
        for i in range(0, len(body), 1024):
            yield body[i:i + 1024]

    r = bare.post("/api/experiments", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "bytes" in r.json()["detail"]
    assert bare.get("/api/experiments").json() == []  # the route handler never ran
    ok = bare.post("/api/experiments", content=_padded_json(4000), headers={"content-type": "application/json"})
    assert ok.status_code == 201  # under the limit, chunked or not, bodies still work


def _scope(method, path, headers, client=("testclient", 1), server=("testserver", 80)) -> dict:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
            "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "client": client,
            "server": server, "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}


def _call(app, scope, chunks: list[bytes]) -> tuple[int, bytes, int]:
    """Run one request through an ASGI app; returns (status, body, how many body chunks the app pulled)."""
    pulled = 0
    out = {"status": None, "body": b""}

    async def receive():
        nonlocal pulled
        if pulled < len(chunks):
            pulled += 1
            return {"type": "http.request", "body": chunks[pulled - 1], "more_body": pulled < len(chunks)}
        await asyncio.sleep(3600)  # a client that sends nothing more

    async def send(message):
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
        elif message["type"] == "http.response.body":
            out["body"] += message.get("body", b"")

    asyncio.run(asyncio.wait_for(app(scope, receive, send), 30))
    return out["status"], out["body"], pulled


def test_the_limit_stops_reading_a_chunked_body_once_it_is_exceeded(bare):
    body = _padded_json(300 * 1024)
    chunks = [body[i:i + 1024] for i in range(0, len(body), 1024)]
    status, text, pulled = _call(bare.app, _scope("POST", "/api/experiments", {
        "host": "testserver", "content-type": "application/json"}), chunks)
    assert status == 413 and b"bytes" in text
    assert pulled == 64 * 1024 // 1024 + 1 < len(chunks)  # read one chunk past 64 KiB, then stopped
    assert bare.get("/api/experiments").json() == []


def test_an_oversized_content_length_is_refused_before_reading(bare):
    status, _, pulled = _call(bare.app, _scope("POST", "/api/experiments", {
        "host": "testserver", "content-type": "application/json", "content-length": str(10**6)}), [b"{}"])
    assert status == 413 and pulled == 0


def test_the_guard_does_not_buffer_a_streamed_response():
    """Pure ASGI middlewares: the first event of a stream reaches the client while the stream is still open."""
    first_sent = asyncio.Event()
    got = []

    async def streaming_app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"event: one\n\n", "more_body": True})
        await asyncio.wait_for(first_sent.wait(), 5)  # would time out if the guard held the body back
        await send({"type": "http.response.body", "body": b"event: end\n\n"})

    async def main():
        async def receive():
            return {"type": "http.request", "body": b""}

        async def send(message):
            got.append(message)
            if message.get("body", b"").startswith(b"event: one"):
                first_sent.set()

        await guard(streaming_app)(_scope("GET", "/api/jobs/1/events", {"host": "127.0.0.1:8000"}), receive, send)

    asyncio.run(main())
    assert [m.get("body") for m in got[1:]] == [b"event: one\n\n", b"event: end\n\n"]


# --- state-changing requests: content type or custom header, Origin, Host ----------------------------------------

def test_a_change_without_json_or_the_custom_header_gets_415_and_changes_nothing(bare):
    e = _experiment(bare, start=True)
    eid, jid = e["id"], e["jobs"][0]["id"]
    before = _counts(bare)
    simple = [{}, {"content-type": "text/plain"}, {"content-type": "application/x-www-form-urlencoded"},
              {"content-type": "multipart/form-data; boundary=x"}, {"X-Requested-With": "XMLHttpRequest"},
              {"content-type": "text/plain; application/json"}]
    for headers in simple:
        for path in (f"/api/experiments/{eid}/jobs", f"/api/jobs/{jid}/cancel", f"/api/jobs/{jid}/resume"):
            r = bare.post(path, headers=headers)
            assert r.status_code == 415, (path, headers, r.text)
            assert "X-Requested-With: BlockLab" in r.json()["detail"]
        r = bare.post("/api/experiments", content=json.dumps({"name": "x"}), headers=headers)
        assert r.status_code == 415
    assert bare.delete(f"/api/jobs/{jid}").status_code == 415 and bare.put(f"/api/jobs/{jid}").status_code == 415
    assert _counts(bare) == before
    # What the lab's own UI sends is accepted: the custom header, or JSON with or without parameters.
    assert bare.post(f"/api/jobs/{jid}/cancel", headers=XRW).json()["status"] == "cancelled"
    assert bare.post(f"/api/jobs/{jid}/resume",
                    headers={"content-type": "application/json; charset=utf-8"}).json()["status"] == "queued"
    bare.post(f"/api/jobs/{jid}/cancel", headers=XRW)  # one live job per experiment
    assert bare.post(f"/api/experiments/{eid}/jobs", headers={"x-requested-with": "blocklab"}).status_code == 201


def test_a_foreign_origin_cannot_change_state(bare):
    eid = _experiment(bare)["id"]
    before = _counts(bare)
    for origin in ("http://evil.example", "null", "http://localhost", "http://testserver.evil.example",
                   "http://testserver:8080", "http://evil.example/http://testserver", "testserver",
                   "https://testserver"):  # the lab is served over http here: an https page is another origin
        r = bare.post(f"/api/experiments/{eid}/jobs", headers={**XRW, "Origin": origin})
        assert r.status_code == 403, (origin, r.text)
        assert bare.post("/api/experiments", json={"name": "x"}, headers={"Origin": origin}).status_code == 403
    assert _counts(bare) == before
    assert bare.get("/api/experiments", headers={"Origin": "http://evil.example"}).status_code == 200  # reads: SOP
    for origin in ("http://testserver", "http://TestServer:80"):
        fresh = _experiment(bare)["id"]  # one live job per experiment
        assert bare.post(f"/api/experiments/{fresh}/jobs", headers={**XRW, "Origin": origin}).status_code == 201


def test_the_origin_must_match_the_scheme_too():
    assert same_origin("https://lab.example", "lab.example", "https")
    assert not same_origin("http://lab.example", "lab.example", "https")  # a plain-http page on the lab's name
    assert not same_origin("https://127.0.0.1:8000", "127.0.0.1:8000", "http")
    assert same_origin("HTTP://127.0.0.1:8000", "127.0.0.1:8000", "http")


def test_the_origin_must_match_the_host_with_its_port():
    assert same_origin("http://127.0.0.1:8000", "127.0.0.1:8000")
    assert same_origin("http://localhost", "localhost:80") and same_origin("https://lab.example", "lab.example:443")
    assert same_origin("http://[::1]:8000", "[::1]:8000")
    assert not same_origin("http://127.0.0.1:8001", "127.0.0.1:8000")
    assert not same_origin("http://localhost:8000", "127.0.0.1:8000")
    assert not same_origin("ftp://127.0.0.1:8000", "127.0.0.1:8000") and not same_origin("null", "127.0.0.1:8000")


def test_a_preflight_is_not_answered(bare):
    jid = _experiment(bare, start=True)["jobs"][0]["id"]
    r = bare.options(f"/api/jobs/{jid}/cancel", headers={
        "Origin": "http://evil.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type, x-requested-with"})
    assert r.status_code in (403, 405)
    assert not [h for h in r.headers if h.lower().startswith("access-control-")]


def test_only_hosts_the_lab_serves_are_answered(bare, monkeypatch):
    for path in ("/api/models", "/", "/api/experiments"):
        r = bare.get(path, headers={"Host": "evil.example"})
        assert r.status_code == 400 and "BLOCKLAB_ALLOWED_HOSTS" in r.json()["detail"], path
    r = bare.post("/api/experiments", json={"name": "x"}, headers={"Host": "evil.example:8000"})
    assert r.status_code == 400 and bare.get("/api/experiments").json() == []
    for host in ("localhost", "localhost:8000", "127.0.0.1:8000", "127.3.2.1", "[::1]:8000", "LOCALHOST:1"):
        assert bare.get("/api/models", headers={"Host": host}).status_code == 200, host
    for host in ("evil.example", "127.0.0.1.evil.example", "localhost.evil.example", "0.0.0.0:8000", "10.0.0.5",
                 "a:b:c", "user@127.0.0.1", "[::2]:8000", ""):
        assert bare.get("/api/models", headers={"Host": host}).status_code == 400, host
    # Names added by settings, read at request time.
    monkeypatch.setenv("BLOCKLAB_ALLOWED_HOSTS", '["lab.example", "Box.LAN"]')
    monkeypatch.setenv("BLOCKLAB_HOST", "10.0.0.5")
    _clear_settings()
    for host in ("lab.example", "lab.example:8000", "box.lan", "10.0.0.5:8000"):
        assert bare.get("/api/models", headers={"Host": host}).status_code == 200, host
    assert bare.get("/api/models", headers={"Host": "evil.example"}).status_code == 400
    monkeypatch.setenv("BLOCKLAB_HOST", "0.0.0.0")  # listening everywhere does not make "0.0.0.0" a served name
    _clear_settings()
    assert bare.get("/api/models", headers={"Host": "0.0.0.0:8000"}).status_code == 400


def test_testserver_is_served_only_to_the_in_process_test_client(bare):
    c = TestClient(bare.app, client=("127.0.0.1", 5000))  # a request from a socket, as under uvicorn
    assert c.get("/api/models").status_code == 400
    assert c.get("/api/models", headers={"Host": "127.0.0.1:8000"}).status_code == 200
    assert host_name("[::1]:8000") == "::1" and host_name("Lab.Example.:80") == "lab.example"
    scope = {"client": ("testclient", 1), "server": ("127.0.0.1", 8000)}  # e.g. X-Forwarded-For: testclient
    assert not host_allowed("testserver", scope)


# --- 422s: short, strict JSON -------------------------------------------------------------------------------

def _strict_json(r) -> dict:
    def refuse(token):
        raise AssertionError(f"non-JSON token {token} in {r.text[:200]}")
    data = json.loads(r.content.decode("utf-8"), parse_constant=refuse)  # strict UTF-8, no NaN/Infinity
    json.dumps(data, allow_nan=False)
    return data


def _post_raw(bare, path, raw: bytes):
    return bare.post(path, content=raw, headers={"content-type": "application/json"})


NUMERIC = ("epochs", "batch_size", "lr", "train_per_class", "val_limit", "image_size", "seed", "lr_factor",
           "lr_patience", "min_lr", "head_hidden", "head_dropout")


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"])
def test_non_finite_numbers_get_a_strict_json_422(bare, token):
    for field in NUMERIC:
        r = _post_raw(bare, "/api/experiments", b'{"name": "x", "config": {"%s": %s}}' % (field.encode(), token.encode()))
        assert r.status_code == 422, (field, token, r.text)
        detail = _strict_json(r)["detail"]
        assert any(d["loc"][-1] == field for d in detail) and all({"loc", "msg", "type"} <= set(d) for d in detail)
    r = _post_raw(bare, "/api/reproduce", b'{"overrides": {"lr": %s}}' % token.encode())
    assert r.status_code == 422 and _strict_json(r)["detail"][0]["loc"][-3:] == ["body", "overrides", "lr"]
    assert bare.get("/api/experiments").json() == []


def test_lone_surrogates_get_a_strict_json_422(bare):
    for raw in (b'{"name": "\\ud800"}', b'{"name": "ok", "group": "\\udfff"}',
                b'{"name": "\\ud800", "config": {"epochs": 0, "model": "\\udc00x"}}',
                b'{"name": "x", "\\ud800": 1}', b'{"overrides": {"model": "\\ud800", "epochs": "\\ud800"}}'):
        r = _post_raw(bare, "/api/reproduce" if b"overrides" in raw else "/api/experiments", raw)
        assert r.status_code == 422, (raw, r.text)
        _strict_json(r)
    assert bare.get("/api/experiments").json() == []


def test_a_422_echoes_only_a_short_snippet_of_the_input(bare):
    big = "A" * 30_000  # two of them still fit in the 64 KiB body limit
    cases = [{"name": big}, {"name": "x", "config": {"model": big}}, {"name": "x", big: 1},
             {"name": "x", "config": {"epochs": [big, big]}}, {"name": ["x"] * 5000}, {"overrides": [1] * 20_000},
             {"name": "x", **{f"k{i}": 1 for i in range(5000)}}]
    for body in cases:
        r = bare.post("/api/reproduce" if "overrides" in body else "/api/experiments", json=body)
        assert r.status_code == 422, r.text[:300]
        data = _strict_json(r)
        assert len(r.content) < 4000, (len(r.content), r.text[:300])
        for d in data["detail"]:
            assert {"loc", "msg", "type"} <= set(d)
            if isinstance(d.get("input"), str):
                assert len(d["input"]) <= 101
    r = _post_raw(bare, "/api/experiments", b'{"name": "' + b"B" * 60_000)  # not JSON at all
    assert r.status_code == 422 and len(r.content) < 1500 and _strict_json(r)["detail"][0]["type"] == "json_invalid"


# --- the access token -----------------------------------------------------------------------------------------

def test_the_bearer_scheme_is_case_insensitive_and_required(bare, monkeypatch):
    monkeypatch.setenv("BLOCKLAB_TOKEN", "s3cret")
    _clear_settings()
    ok = [{"Authorization": "Bearer s3cret"}, {"Authorization": "bearer s3cret"}, {"Authorization": "BEARER s3cret"},
          {"Authorization": "bEaReR   s3cret "}, {"X-BlockLab-Token": "s3cret"}]
    refused = [{}, {"Authorization": "s3cret"}, {"Authorization": "Basic s3cret"}, {"Authorization": "Bearer"},
               {"Authorization": "Bearer wrong"}, {"Authorization": "Bearers3cret"}, {"Authorization": "Token s3cret"},
               {"X-BlockLab-Token": "wrong"}]
    for headers in refused:
        r = bare.post("/api/experiments", json={"name": "x", "start": False}, headers=headers)
        assert r.status_code == 401, headers
        assert bare.get("/api/experiments", headers=headers).status_code == 401, headers  # reads too
    assert bare.get("/api/experiments", headers=ok[0]).json() == []
    for headers in ok:
        r = bare.post("/api/experiments", json={"name": "x", "start": False}, headers=headers)
        assert r.status_code == 201, headers
        assert bare.get("/api/experiments", headers=headers).status_code == 200, headers
    assert len(bare.get("/api/experiments", headers=ok[0]).json()) == len(ok)


# --- CSV --------------------------------------------------------------------------------------------------------

HOSTILE = ['x;=HYPERLINK("http://evil")', "=1+1", "+cmd", "-2+3", "@SUM(A1)", "a,=b", "a\t@b", "a;  +b",
           "a\r\n=c", "\t=x", "plain; text, here", 'say "hi"']
DELIMITERS = (",", ";", "\t")


def _assert_no_formula(text: str):
    for delimiter in DELIMITERS:
        for row in csv.reader(io.StringIO(text), delimiter=delimiter):
            for cell in row:
                for piece in (cell, cell.lstrip()):
                    if piece[:1] in ("=", "+", "-", "@"):
                        float(piece)  # only a number may start with a sign (ValueError otherwise)


def test_csv_text_is_quoted_and_cannot_start_a_formula_after_any_separator():
    text = to_csv(["job_id", "name", "acc", "diff"], [[i + 1, name, 0.5, -0.0645] for i, name in enumerate(HOSTILE)])
    _assert_no_formula(text)
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["job_id", "name", "acc", "diff"]
    assert rows[1] == ["1", "x;'=HYPERLINK(\"http://evil\")", "0.5", "-0.0645"]  # read back, neutralized
    assert [r[1] for r in rows[2:6]] == ["'=1+1", "'+cmd", "'-2+3", "'@SUM(A1)"]
    assert rows[-1][1] == 'say "hi"' and rows[-2][1] == "plain; text, here"  # harmless text unchanged
    first = text.splitlines()[1]
    assert first.startswith('1,"x;') and first.endswith(",0.5,-0.0645")  # text quoted, numbers bare
    assert list(csv.reader(io.StringIO(to_csv(["a"], [[None]]))))[1] == [""]


def test_the_compare_csv_is_safe_with_semicolon_and_tab_delimiters(bare):
    ids = [_experiment(bare, name=name, start=True)["jobs"][0]["id"] for name in HOSTILE[:4]]
    r = bare.get("/api/compare.csv?jobs=" + ",".join(map(str, ids)))
    assert r.status_code == 200
    _assert_no_formula(r.text)
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert rows[0]["experiment"] == "x;'=HYPERLINK(\"http://evil\")" and [int(x["job_id"]) for x in rows] == ids
    assert f'\n{ids[0]},"x;' in r.text  # the id is a bare number, the name a quoted text cell


def test_a_port_proxy_domain_is_served_and_trusted_only_when_configured(bare, monkeypatch):
    """Colab serves the lab over https on a per-session name (issue 16): "*.suffix" in BLOCKLAB_ALLOWED_HOSTS
    answers names under it, and BLOCKLAB_TRUSTED_ORIGINS lets that https page change state although the lab
    listens on plain http. Without them both are refused, and the wildcard never matches the bare domain or a
    look-alike."""
    proxy = "8000-abc123-xyz.prod.colab.dev"
    post = dict(headers={"Host": proxy, "Origin": f"https://{proxy}", **XRW}, json={"name": "e"})
    assert bare.get("/api/models", headers={"Host": proxy}).status_code == 400
    monkeypatch.setenv("BLOCKLAB_ALLOWED_HOSTS", '["*.prod.colab.dev"]')
    _clear_settings()
    assert bare.get("/api/models", headers={"Host": proxy}).status_code == 200
    for host in ("prod.colab.dev", "evilprod.colab.dev", "prod.colab.dev.evil.example"):
        assert bare.get("/api/models", headers={"Host": host}).status_code == 400, host
    assert bare.post("/api/experiments", **post).status_code == 403  # https page, http lab: not same-origin
    monkeypatch.setenv("BLOCKLAB_TRUSTED_ORIGINS", '["https://*.prod.colab.dev"]')
    _clear_settings()
    assert bare.post("/api/experiments", **post).status_code == 201  # past the guard
    for origin in ("https://evil.example", "https://prod.colab.dev", "https://x.prod.colab.dev:444",
                   "null"):
        r = bare.post("/api/experiments", headers={**post["headers"], "Origin": origin}, json={"name": "e"})
        assert r.status_code == 403, origin


def test_a_pattern_is_no_host_name_and_a_malformed_origin_is_never_trusted(bare, monkeypatch):
    """Review findings (issue 16): the literal Host "*.prod.colab.dev" was served, and origins with userinfo,
    a query or a fragment before the trusted suffix were trusted."""
    monkeypatch.setenv("BLOCKLAB_ALLOWED_HOSTS", '["*.prod.colab.dev"]')
    monkeypatch.setenv("BLOCKLAB_TRUSTED_ORIGINS", '["https://*.prod.colab.dev"]')
    _clear_settings()
    assert bare.get("/api/models", headers={"Host": "*.prod.colab.dev"}).status_code == 400
    from backend.app.security import trusted_origin
    assert trusted_origin("https://x.prod.colab.dev")
    for origin in ("https://evil.com@x.prod.colab.dev", "https://evil.com?.prod.colab.dev",
                   "https://evil.com#.prod.colab.dev", "https://evil.com/.prod.colab.dev", "https://a b.prod.colab.dev"):
        assert not trusted_origin(origin), origin


def test_only_the_labs_own_pages_may_frame_it(bare, monkeypatch):
    """Review finding (issue 16): no response said who may frame the lab, so any page could show it in a frame
    and trick a click on Queue or Delete. Every response (pages, API, errors) now says frame-ancestors 'self';
    BLOCKLAB_FRAME_ANCESTORS adds the notebook's page."""
    for path in ("/", "/api/models", "/api/jobs/999999"):
        assert bare.get(path).headers["content-security-policy"] == "frame-ancestors 'self'", path
    monkeypatch.setenv("BLOCKLAB_FRAME_ANCESTORS", '["http://localhost:*", "bad source;script-src *"]')
    _clear_settings()
    assert bare.get("/").headers["content-security-policy"] == "frame-ancestors 'self' http://localhost:*"


def _get_routes(app) -> list[str]:
    """Every GET route of the API (from its OpenAPI description), path parameters filled in (1 for ids, a word
    for names)."""
    import re
    paths = [p for p, ops in app.openapi()["paths"].items() if "get" in ops and p.startswith("/api/")]
    return [re.sub(r"\{(\w+)\}", lambda m: "1" if m[1].endswith("id") else "g", p) for p in paths]


def test_with_a_token_every_api_route_but_health_needs_it_reads_included(bare, monkeypatch):
    """Issue 25: with BLOCKLAB_TOKEN set, jobs, experiments, reports, event streams, plans and the workers' host
    paths were readable without it."""
    monkeypatch.setenv("BLOCKLAB_TOKEN", "s3cret")
    _clear_settings()
    from backend.app import workers
    workers.store({"worker": {"name": "w@host", "pid": 4242, "weights": "/secret/weights"}, "ts": 1.0})
    try:
        paths = _get_routes(bare.app)
        assert {"/api/jobs", "/api/experiments", "/api/workers", "/api/jobs/1/events", "/api/health"} <= set(paths)
        for path in paths:
            r = bare.get(path)
            if path == "/api/health":
                assert r.status_code == 200
            else:
                assert r.status_code == 401 and "BLOCKLAB_TOKEN" in r.json()["detail"], (path, r.status_code)
                assert "/secret" not in r.text and "4242" not in r.text
        for method, path in (("POST", "/api/plan"), ("POST", "/api/reproduce"), ("HEAD", "/api/workers")):
            assert bare.request(method, path, json={}, headers=XRW).status_code == 401, path
        assert bare.get("/api/workers", headers={"X-BlockLab-Token": "s3cret"}).json()[0]["pid"] == 4242
        assert bare.get("/").status_code == 200  # the page itself loads, so it can ask for the token
    finally:
        workers.clear()


def test_the_token_shown_once_gives_a_cookie_that_event_streams_carry(bare, monkeypatch):
    monkeypatch.setenv("BLOCKLAB_TOKEN", "s3cret")
    _clear_settings()
    assert bare.post("/api/session", headers=XRW).status_code == 401
    assert bare.post("/api/session", headers={**XRW, "X-BlockLab-Token": "wrong"}).status_code == 401
    assert not bare.cookies
    r = bare.post("/api/session", headers={**XRW, "X-BlockLab-Token": "s3cret"})
    assert r.status_code == 204
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/api" in cookie
    assert "s3cret" not in cookie  # a value derived from the token, never the token
    assert bare.get("/api/experiments").status_code == 200  # the client now sends the cookie
    e = _experiment(TestClient(bare.app, headers={**XRW, "X-BlockLab-Token": "s3cret"}), start=True)
    with bare.stream("GET", f"/api/jobs/{e['jobs'][0]['id']}/events") as stream:
        assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
    monkeypatch.setenv("BLOCKLAB_TOKEN", "another")  # a new token ends every session
    _clear_settings()
    assert bare.get("/api/experiments").status_code == 401


def test_forwarded_headers_are_believed_only_from_configured_proxies(monkeypatch):
    """uvicorn believes X-Forwarded-For from loopback unless told otherwise (the stream limit and the access log
    then trust any local client's word: tests/system/test_streams.py shows it against a real server)."""
    from backend.serve import uvicorn_options
    from core.settings import Settings
    for k in ("BLOCKLAB_TRUSTED_PROXIES",):
        monkeypatch.delenv(k, raising=False)
    plain = uvicorn_options(Settings())
    assert plain["proxy_headers"] is False
    monkeypatch.setenv("BLOCKLAB_TRUSTED_PROXIES", '["10.0.0.5", "192.168.1.0/24"]')
    behind = uvicorn_options(Settings())
    assert behind["proxy_headers"] is True and behind["forwarded_allow_ips"] == ["10.0.0.5", "192.168.1.0/24"]


def test_each_guard_is_its_own_middleware_and_refusals_carry_the_frame_header(bare):
    """LabGuard did the Host check, CSRF, HEAD as GET, the body limit and the frame header in one function, and
    its refusals went out without the frame header. Now one middleware per concern, the frame header outermost."""
    from backend.app.security import GUARDS, BodyLimit, CrossSiteCheck, FrameHeader, HeadAsGet, HostCheck, TokenGate
    assert GUARDS == (FrameHeader, HostCheck, CrossSiteCheck, TokenGate, HeadAsGet, BodyLimit)
    stack = [type(m.cls) if not isinstance(m.cls, type) else m.cls for m in bare.app.user_middleware]
    assert stack == list(GUARDS)  # as main.py adds them: the first is outermost
    refusals = [bare.get("/api/health", headers={"host": "evil.example"}),  # Host
                bare.post("/api/experiments", content=b"{}", headers={"content-type": "text/plain"}),  # CSRF
                bare.post("/api/experiments", content=b"{" + b" " * 10**6 + b"}", headers=XRW)]  # body limit
    assert [r.status_code for r in refusals] == [400, 415, 413]
    assert all(r.headers["content-security-policy"].startswith("frame-ancestors 'self'") for r in refusals)
