"""Only the lab's own pages can change its state, and no error response echoes more than a snippet of the input.

Two browser attacks reach a lab on 127.0.0.1 from any web page its user visits:
- Cross-site requests (CSRF). A form post or a `fetch(..., {mode: "no-cors"})` is a "simple" request: the browser
  sends it without asking the server first, with at most a form or text/plain content type. Every state-changing
  request here must therefore carry `Content-Type: application/json` or `X-Requested-With: BlockLab`; a foreign
  page can set either only after a CORS preflight, and the lab answers no preflight (no CORS middleware: OPTIONS
  gets 405 and no Access-Control-Allow-* header). An Origin header, when sent, must be the lab's own.
- DNS rebinding. A page on evil.example re-resolves its own name to 127.0.0.1 and is then "same-origin" with the
  lab. The browser still sends `Host: evil.example`, so only Host names the lab serves are answered: loopback
  names, the configured host and BLOCKLAB_ALLOWED_HOSTS.
- Clickjacking. A foreign page could frame the lab and trick a click; every response says `frame-ancestors 'self'`
  (and BLOCKLAB_FRAME_ANCESTORS: the notebook's own page, which shows the lab in its output).
- Behind a notebook platform's port proxy (Colab) the page is https on a per-session name while the lab listens on
  plain http: BLOCKLAB_ALLOWED_HOSTS and BLOCKLAB_TRUSTED_ORIGINS name the proxy's domain ("*.prod.colab.dev"),
  set by backend/notebook_lab.py only where that platform is detected.

The guards below are small pure ASGI middlewares, one concern each (GUARDS, outermost first): the frame header,
the Host check, the cross-site rules, the access token (BLOCKLAB_TOKEN: every API route but the health check, reads
included), HEAD as GET, and the body limit (the bytes actually received, chunked bodies included: 413 past the
limit, 408 when the whole body is not in by its deadline).
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import itertools
import json
import math
import re
from http.cookies import CookieError, SimpleCookie

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.settings import get_settings

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
CUSTOM_HEADER = ("x-requested-with", "blocklab")
_HOST = re.compile(r"^(?:\[(?P<v6>[0-9a-f:.]+)\]|(?P<name>[^:\[\]/@\s]+))(?::(?P<port>\d{1,5}))?$",
                   re.IGNORECASE)


_DNS_NETLOC = re.compile(r"[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?(?::\d{1,5})?")


def host_name(host: str) -> str | None:
    """The name in a Host header value, lower case, without port or IPv6 brackets; None if malformed."""
    m = _HOST.match(host.strip())
    return (m.group("v6") or m.group("name")).lower().rstrip(".") if m else None


def _is_test_transport(scope: Scope, name: str) -> bool:
    # Starlette's TestClient talks to the app in-process as client "testclient" with server and Host
    # "testserver". uvicorn fills "server" from the socket (always an IP address), so no real request matches
    # all three; and a browser cannot make Host "testserver" unless the user's own resolver serves that name.
    return (name == "testserver" and (scope.get("client") or ("",))[0] == "testclient"
            and (scope.get("server") or ("",))[0] == "testserver")


def host_allowed(name: str | None, scope: Scope) -> bool:
    if not name:
        return False
    if name == "localhost":
        return True
    try:
        if ipaddress.ip_address(name).is_loopback:  # 127.0.0.0/8 and ::1
            return True
    except ValueError:
        pass
    s = get_settings()
    entries = {h.strip().strip("[]").lower().rstrip(".") for h in s.allowed_hosts}
    patterns = {h for h in entries if h.startswith("*.")}
    served = entries - patterns  # a pattern is never a name: "Host: *.example.org" is not served
    if s.host not in ("0.0.0.0", "::", ""):
        served.add(s.host.strip("[]").lower())
    return name in served or _under_wildcard(name, patterns) or _is_test_transport(scope, name)


def _under_wildcard(name: str, patterns) -> bool:
    """Is `name` under one of the "*.suffix" patterns (a proper subdomain: "*.a.b" is not "a.b" itself)?"""
    return "*" not in name and any(p.startswith("*.") and name.endswith(p[1:]) and len(name) > len(p) - 1
                                   for p in patterns)


def trusted_origin(origin: str) -> bool:
    """Is `origin` one the settings trust besides the lab's own (BLOCKLAB_TRUSTED_ORIGINS: exact origins, or
    "https://*.suffix" for every name under suffix, on that scheme and its default port only)?"""
    scheme, sep, netloc = origin.strip().lower().partition("://")
    if not sep or scheme not in ("http", "https") or not _DNS_NETLOC.fullmatch(netloc):  # a DNS name[:port] only
        return False
    netloc = _netloc(netloc, scheme)
    for entry in get_settings().trusted_origins:
        t_scheme, _, t_netloc = entry.strip().lower().rstrip("/").partition("://")
        if t_scheme != scheme:
            continue
        t_netloc = _netloc(t_netloc, scheme)
        if netloc == t_netloc or (":" not in netloc and _under_wildcard(netloc, [t_netloc])):
            return True
    return False


def _netloc(netloc: str, scheme: str) -> str:
    """host[:port] in lower case, without the scheme's default port."""
    netloc = netloc.strip().lower()
    default = {"http": ":80", "https": ":443"}.get(scheme, "")
    return netloc.removesuffix(default) if default else netloc


def same_origin(origin: str, host: str, request_scheme: str | None = None) -> bool:
    """Is `origin` (scheme://host[:port]) the lab's own, given the request's (already allowed) Host header and,
    when known, its scheme? An origin is scheme, host and port: a page served over plain http (which anyone on
    the network can write into) is not the https lab of the same name. Behind a TLS proxy the request's scheme
    is the one the proxy reports (uvicorn reads X-Forwarded-Proto from a trusted proxy)."""
    scheme, sep, netloc = origin.strip().partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ("http", "https") or not netloc or "/" in netloc:
        return False  # also "null": sandboxed frames, file: pages, cross-origin redirects
    if request_scheme is not None and scheme != request_scheme.lower():
        return False
    return _netloc(netloc, scheme) == _netloc(host, scheme)


def _frame_header() -> tuple[bytes, bytes]:
    """Who may show the lab in a frame: its own pages and BLOCKLAB_FRAME_ANCESTORS only. Without it any page the
    user visits could frame the lab and trick a click on Queue or Delete (clickjacking: the clicks are the lab's
    own requests, so the CSRF rules pass them)."""
    sources = " ".join(s for s in get_settings().frame_ancestors if re.fullmatch(r"[\w*.:/-]+", s))
    return (b"content-security-policy", f"frame-ancestors 'self' {sources}".strip().encode())


def _json_content(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip().lower() == "application/json"


class BodyTooLarge(HTTPException):
    """Raised from `receive`: FastAPI re-raises HTTPExceptions met while reading a body, so it becomes a 413."""

    def __init__(self, limit: int):
        super().__init__(413, f"request body over {limit} bytes (BLOCKLAB_MAX_BODY_BYTES)")


class BodyTimeout(HTTPException):
    """Raised from `receive` when a request body is not complete in time: a half-open or trickled request is
    answered 408."""

    def __init__(self, seconds: float):
        super().__init__(408, f"the request body did not arrive within {seconds:g} s (BLOCKLAB_BODY_TIMEOUT_S)")


# --- the guards: one concern each, outermost first (guard() stacks them) ----------------------------------------
# Each is a pure ASGI middleware: none buffers a response, so event streams flow through untouched.

class _Guard:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan; the lab has no websockets
            return await self.app(scope, receive, send)
        await self.http(scope, receive, send)

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError


class FrameHeader(_Guard):
    """Every response, refusals included, says who may frame the lab (see _frame_header)."""

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        header = _frame_header()

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), header]}
            await send(message)
        await self.app(scope, receive, send_with_header)


class HostCheck(_Guard):
    """Only the host names the lab serves are answered (DNS rebinding)."""

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not host_allowed(host_name(Headers(scope=scope).get("host", "")), scope):
            return await _refuse(scope, receive, send, 400,
                                 "this lab does not serve the host name in this request (DNS rebinding defence); "
                                 "to reach it by another name, add that name to BLOCKLAB_ALLOWED_HOSTS")
        await self.app(scope, receive, send)


class CrossSiteCheck(_Guard):
    """A state-changing request comes from the lab's own pages (or a trusted origin) and is not a simple one."""

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] not in SAFE_METHODS:
            headers = Headers(scope=scope)
            origin = headers.get("origin")
            if (origin is not None and not same_origin(origin, headers.get("host", ""), scope.get("scheme", "http"))
                    and not trusted_origin(origin)):
                return await _refuse(scope, receive, send, 403,
                                     "cross-origin request refused: only the lab's own pages can change its state")
            if not (_json_content(headers.get("content-type", ""))
                    or headers.get(CUSTOM_HEADER[0], "").lower() == CUSTOM_HEADER[1]):
                return await _refuse(scope, receive, send, 415,
                                     "a request that changes state needs Content-Type: application/json "
                                     "or the header X-Requested-With: BlockLab")
        await self.app(scope, receive, send)


# The cookie the UI gets once it has shown the token (POST /api/session): an EventSource cannot set a header, and
# a token in the URL would land in the access log, the browser's history and Referer headers. HttpOnly (no script
# reads it), SameSite=Strict (no other site's page sends it) and the CSRF rules above still apply to changes.
SESSION_COOKIE = "blocklab_session"
OPEN_PATHS = frozenset({"/api/health"})  # answered without the token: a liveness probe shows no data


def session_value(token: str) -> str:
    """The cookie's value: derived from the token (the token itself is never stored in the browser's cookie jar),
    so changing BLOCKLAB_TOKEN ends every session."""
    return hmac.new(token.encode(), b"blocklab-session", hashlib.sha256).hexdigest()


def token_given(headers: Headers, token: str) -> bool:
    """Does the request carry the token: `Authorization: Bearer`, X-BlockLab-Token, or the session cookie?"""
    given = headers.get("x-blocklab-token") or bearer(headers.get("authorization"))
    if given and hmac.compare_digest(given.encode(), token.encode()):
        return True
    cookie = SimpleCookie()
    try:
        cookie.load(headers.get("cookie", ""))
    except CookieError:
        return False
    morsel = cookie.get(SESSION_COOKIE)
    return morsel is not None and hmac.compare_digest(morsel.value.encode(), session_value(token).encode())


def bearer(authorization: str | None) -> str | None:
    """The credentials of `Authorization: Bearer <token>`; the scheme is case-insensitive (RFC 9110), and a
    header without it is no token."""
    scheme, _, credentials = (authorization or "").strip().partition(" ")
    return (credentials.strip() or None) if scheme.lower() == "bearer" else None


class TokenGate(_Guard):
    """With BLOCKLAB_TOKEN set, every API route but the health check needs the token, reads included: jobs,
    experiments, reports, event streams and the workers' host paths are the lab's data too. The pages themselves
    (no data) load without it, so the UI can ask for it."""

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        token = get_settings().token
        path = scope["path"]
        if (token and (path.startswith("/api/") or path == "/api") and path not in OPEN_PATHS
                and not token_given(Headers(scope=scope), token)):
            return await _refuse(scope, receive, send, 401, "this lab requires its access token (BLOCKLAB_TOKEN): "
                                 "send it as Authorization: Bearer or X-BlockLab-Token, or enter it in the page")
        await self.app(scope, receive, send)


# HEAD is GET without the body (RFC 9110), but FastAPI's routes answer GET alone and a HEAD fell through to the
# static files' 404. On these paths the middleware runs the GET and sends its status and headers only.
_HEAD_AS_GET = ("/api/", "/vendor/", "/openapi.json", "/docs")


class HeadAsGet(_Guard):
    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] == "HEAD" and scope["path"].startswith(_HEAD_AS_GET):
            try:
                await self.app({**scope, "method": "GET"}, receive, _headers_only(send))
            except _HeadDone:
                pass
            return
        await self.app(scope, receive, send)


class _HeadDone(Exception):
    """A HEAD's response is complete while the app still streams a body nobody reads: stop the app."""


def _headers_only(send: Send) -> Send:
    """A `send` that passes a response's start and ends its body at once. A stream's next piece stops the app
    (an event stream would otherwise go on, unread, until its time is up)."""
    done = False

    async def send_head(message: Message) -> None:
        nonlocal done
        if message["type"] == "http.response.start":
            await send(message)
        elif message["type"] == "http.response.body":
            if done:
                raise _HeadDone
            done = True
            await send({"type": "http.response.body", "body": b"", "more_body": False})
    return send_head


class BodyLimit(_Guard):
    """The request body counted as it arrives, chunked bodies included: 413 past BLOCKLAB_MAX_BODY_BYTES, 408 when
    the whole body is not in BLOCKLAB_BODY_TIMEOUT_S after the request began. A deadline for the whole body, not
    for each read: one byte every 20 s never stalls a read, and would hold a connection open for weeks."""

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        s = get_settings()
        limit, timeout = s.max_body_bytes, s.body_timeout_s
        size = Headers(scope=scope).get("content-length", "")
        # Fast path: refused before a byte of the body is read ("¹".isdigit() is true: ASCII digits only).
        if size.isascii() and size.isdigit() and int(size) > limit:
            return await _refuse(scope, receive, send, 413, BodyTooLarge(limit).detail)

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        received = 0
        body_done = False
        started = False

        async def counted_receive() -> Message:
            nonlocal received, body_done
            if body_done:  # later receives wait for a disconnect (an event stream): no deadline
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise BodyTimeout(timeout) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if not body_done:  # answered before its body was in (a 408, a 413): the rest is not read
                    message = {**message, "headers": [*message.get("headers", []), _CLOSE]}
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except (BodyTooLarge, BodyTimeout) as e:  # read outside FastAPI's body parsing: answer it here
            if started:
                raise
            await _refuse(scope, receive, send, e.status_code, e.detail)


_CLOSE = (b"connection", b"close")

# Outermost first: every answer carries the frame header; a request for a host the lab does not serve learns
# nothing more; the token is asked before a byte of the body is read.
GUARDS = (FrameHeader, HostCheck, CrossSiteCheck, TokenGate, HeadAsGet, BodyLimit)


def guard(app: ASGIApp) -> ASGIApp:
    """`app` behind every guard (what main.py's middleware stack adds, in this order)."""
    for middleware in reversed(GUARDS):
        app = middleware(app)
    return app



async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, detail: str) -> None:
    headers = {"connection": "close"} if status in (408, 413) else None  # the unread body ends the connection
    await JSONResponse({"detail": detail}, status, headers=headers)(scope, receive, send)


# --- 422 responses: FastAPI's shape, but short and strict JSON --------------------------------------------------

SNIPPET = 100  # characters of user input an error may echo
_MAX_ITEMS, _MAX_DEPTH = 20, 6


def _utf8(s: str) -> str:
    """Lone surrogates (e.g. from "\\ud800" in a JSON body) spelled out, so the text encodes as UTF-8."""
    return s.encode("utf-8", "backslashreplace").decode("utf-8")


def _cut(s: str, limit: int = SNIPPET) -> str:
    s = _utf8(s)
    return s if len(s) <= limit else s[:limit] + "…"


def _strict(v, depth: int = 0):
    """v as strict-JSON data: non-finite floats as strings, lone surrogates escaped, containers cut short."""
    if v is None or isinstance(v, bool):
        return v
    if isinstance(v, int):
        return v if abs(v) < 10**SNIPPET else _cut(str(v))  # a 4,000-digit integer is text too
    if isinstance(v, float):
        return v if math.isfinite(v) else ("NaN" if math.isnan(v) else "Infinity" if v > 0 else "-Infinity")
    if isinstance(v, str):
        return _utf8(v[: SNIPPET * 4])
    if depth >= _MAX_DEPTH:
        return "…"
    if isinstance(v, dict):
        out = {_cut(str(k)): _strict(x, depth + 1) for k, x in itertools.islice(v.items(), _MAX_ITEMS)}
        return {**out, "…": "…"} if len(v) > _MAX_ITEMS else out
    if isinstance(v, (list, tuple)):
        out = [_strict(x, depth + 1) for x in v[:_MAX_ITEMS]]
        return out + ["…"] if len(v) > _MAX_ITEMS else out
    return _cut(str(v))  # an exception in ctx, a Decimal, ...


def snippet(v, limit: int = SNIPPET):
    """A strict-JSON rendering of v of about `limit` characters at most (a string snippet when longer)."""
    v = _strict(v)
    if isinstance(v, str):
        return _cut(v, limit)
    if isinstance(v, (dict, list)):
        text = json.dumps(v, ensure_ascii=False, allow_nan=False)
        return v if len(text) <= limit else _cut(text, limit)
    return v


def short_errors(errors) -> list[dict]:
    """Validation errors in FastAPI's shape (loc, msg, type, input, ctx), each value a short snippet; the first
    few errors only (a body with 5,000 unknown keys has 5,000)."""
    out = []
    for e in errors[:_MAX_ITEMS]:
        try:
            d = {"loc": [x if isinstance(x, int) else _cut(str(x)) for x in e.get("loc", ())],
                 # pydantic prefixes our validators' sentences with "Value error, ": the form shows them as said
                 "msg": _cut(str(e.get("msg", "")).removeprefix("Value error, "), 2 * SNIPPET),
                 "type": _cut(str(e.get("type", "")))}
            if "input" in e:
                d["input"] = snippet(e["input"])
            if isinstance(e.get("ctx"), dict):
                d["ctx"] = {_cut(str(k)): snippet(x) for k, x in itertools.islice(e["ctx"].items(), _MAX_ITEMS)}
            for k, x in e.items():  # e.g. "url"
                if k not in d and k != "ctx":
                    d[_cut(str(k))] = snippet(x)
        except Exception:  # noqa: BLE001 - an error report must never become a 500
            d = {"loc": [], "msg": "invalid request", "type": "value_error"}
        out.append(d)
    if len(errors) > _MAX_ITEMS:
        out.append({"loc": [], "msg": f"and {len(errors) - _MAX_ITEMS} more errors", "type": "too_many_errors"})
    return out
