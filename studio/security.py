"""One ASGI middleware in front of every route: local does not mean trusted.

A web page in the user's browser can send requests to 127.0.0.1 (cross-site POSTs) and, through
DNS rebinding, even read the answers. So for every request, in this order:
  1. `Host` must name this studio: a loopback name or the --host value (DNS-rebinding defence;
     any name is accepted when the studio listens on all interfaces or shares a link, which
     needs a login anyway);
  2. the body may not exceed the size limit (413), whatever it claims in Content-Length;
  3. state-changing requests (POST, PUT, PATCH, DELETE) and WebSockets must come from this
     studio's own pages: an `Origin` that is not ours, or `Sec-Fetch-Site` cross-site/same-site
     without one, is a 403. Clients that are not browsers send no Origin and pass;
  4. a body sent to /api, /v1 or /sdapi must be JSON (415): a form or text/plain body is what a
     cross-site page can send without a CORS preflight;
  5. /docs and /openapi.json need the studio's login when auth is on;
  6. until every route is mounted, /api, /v1 and /sdapi answer 503 with Retry-After, and
     `GET /api/health` says {"ready": false}.
Refusals are JSON: OpenAI's error shape under /v1, FastAPI's {"detail": ...} elsewhere.
"""
from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable
from urllib.parse import urlsplit

import studio.images  # noqa: F401  (sets Pillow's pixel bound for every decode, Gradio's uploads too)
from studio.api.auth import check_authorization

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
API_PREFIXES = ("/api/", "/v1/", "/sdapi/")
DOCS_PATHS = ("/docs", "/openapi.json", "/docs/oauth2-redirect")
DEFAULT_MAX_BODY_MB = 64  # an img2img request: a 32 MB image as base64 (43 MB) plus a mask

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]


class BodyTooLarge(Exception):
    pass


def _host_name(value: str) -> str:
    """'Example.COM:7860' -> 'example.com'; '[::1]:7860' -> '::1'."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    if value.count(":") == 1:
        value = value.partition(":")[0]
    return value.rstrip(".")


def _netloc(scheme: str, netloc: str) -> str:
    """Lower-case host:port without the scheme's default port, for comparing origins."""
    netloc = netloc.strip().lower()
    default = {"http": ":80", "https": ":443", "ws": ":80", "wss": ":443"}.get(scheme)
    return netloc[: -len(default)] if default and netloc.endswith(default) else netloc


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class Guard:
    """What the middleware checks against; `ready` is set by serve() once every route exists."""
    hosts: frozenset[str] = LOOPBACK_HOSTS
    any_host: bool = False  # listening on every interface or sharing: Host cannot be pinned
    auth: tuple[tuple[str, str], ...] = ()
    max_body_bytes: int = DEFAULT_MAX_BODY_MB << 20
    extra_origins: set[str] = field(default_factory=set)  # e.g. the share link's host
    ready: bool = False

    @classmethod
    def from_config(cls, config) -> "Guard":
        host = _host_name(config.host)
        hosts = set(LOOPBACK_HOSTS) | {host} | {_host_name(h) for h in getattr(config, "allowed_hosts", ())}
        max_mb = getattr(config, "max_request_mb", DEFAULT_MAX_BODY_MB)
        return cls(hosts=frozenset(hosts), any_host=host in WILDCARD_HOSTS or bool(config.share),
                   auth=tuple(config.auth), max_body_bytes=int(max_mb * (1 << 20)))

    def allow_origin(self, url: str | None) -> None:
        """Accept pages served from `url` (the share link) as our own."""
        if url:
            parts = urlsplit(url)
            self.extra_origins.add(_netloc(parts.scheme, parts.netloc))

    def middleware(self):
        from starlette.middleware import Middleware

        return Middleware(SecurityMiddleware, guard=self)

    # ------------------------------------------------------------ the checks, in order
    def refusal(self, scope: Scope, headers: dict[str, str]) -> tuple[int, str, dict] | None:
        """(status, message, extra headers) when the request must be refused, else None."""
        path, method = scope.get("path", ""), scope.get("method", "GET")
        host = headers.get("host")
        if host is not None and not self.any_host and _host_name(host) not in self.hosts:
            return 403, (f"this studio does not answer to the host name {_host_name(host)!r} "
                         "(DNS rebinding protection; open it at 127.0.0.1 or --host)"), {}
        length = headers.get("content-length")
        if length is not None and not length.strip().isdigit():
            return 400, f"malformed Content-Length {length[:40]!r}", {}
        if length is not None and int(length) > self.max_body_bytes:
            return 413, f"the request body is larger than {self.max_body_bytes >> 20} MB", {}
        if scope["type"] == "websocket" or method in STATE_CHANGING:
            reason = self._cross_site(headers)
            if reason:
                return 403, reason, {}
        is_api = path.startswith(API_PREFIXES)
        if is_api and method in STATE_CHANGING and _has_body(headers) and not _is_json(headers):
            kind = headers.get("content-type", "none").split(";")[0].strip() or "none"
            return 415, f"send the request body as JSON (Content-Type: application/json), not {kind}", {}
        if self.auth and path in DOCS_PATHS and not check_authorization(self.auth, headers.get("authorization")):
            return 401, "authentication required: use the studio's user and password", {
                "www-authenticate": 'Basic realm="GenStudio"'}
        if is_api and not self.ready and path != "/api/health":
            return 503, "the studio is starting; try again in a moment", {"retry-after": "1"}
        return None

    def _cross_site(self, headers: dict[str, str]) -> str | None:
        origin = headers.get("origin")
        if origin is not None:
            parts = urlsplit(origin)
            mine = _netloc(parts.scheme, parts.netloc)
            own = {_netloc(scheme, headers.get("host", "")) for scheme in ("http", "https")}
            if origin == "null" or not parts.netloc or mine not in own | self.extra_origins:
                return f"cross-site request refused (Origin {origin[:100]!r} is not this studio)"
            return None
        site = headers.get("sec-fetch-site")
        if site in ("cross-site", "same-site"):
            return f"cross-site request refused (Sec-Fetch-Site: {site})"
        return None


def _has_body(headers: dict[str, str]) -> bool:
    return headers.get("content-length", "0").strip() not in ("0", "") or "transfer-encoding" in headers


def _is_json(headers: dict[str, str]) -> bool:
    kind = headers.get("content-type", "").split(";")[0].strip().lower()
    return kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))


def _too_deep(body: bytes) -> bool:
    if body.count(b"[") + body.count(b"{") < 500:  # cannot be deep: skip the parse
        return False
    try:
        json.loads(body)
    except RecursionError:
        return True
    except ValueError:  # not JSON at all: the handler says so in its own words
        return False
    return False


def error_body(path: str, status: int, message: str) -> bytes:
    if path.startswith("/v1/"):  # OpenAI clients read error.message
        kind = {401: "authentication_error", 503: "server_error"}.get(status, "invalid_request_error")
        return json.dumps({"error": {"message": message, "type": kind, "param": None,
                                     "code": status}}).encode()
    return json.dumps({"detail": message}).encode()


class SecurityMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware), so streamed responses pass through untouched."""

    def __init__(self, app, guard: Guard) -> None:
        self.app, self.guard = app, guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
        refusal = self.guard.refusal(scope, headers)
        if refusal is not None:
            await self._refuse(scope, send, *refusal)
            return
        if scope["type"] == "http" and scope.get("path") == "/api/health" and scope.get("method") == "GET":
            await _send_json(send, 200, json.dumps({"ready": self.guard.ready}).encode(), {})
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope.get("path", "").startswith(API_PREFIXES) and _is_json(headers):
            await self._buffered_json(scope, receive, send)
            return
        await self._limited(scope, receive, send)

    async def _buffered_json(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A JSON body for /api, /v1 or /sdapi: read it whole (within the limit), refuse one
        nested too deep for any parser to read (a RecursionError, a 500, in handlers that parse
        it themselves), then hand the same bytes on."""
        limit, parts, size = self.guard.max_body_bytes, [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            parts.append(message.get("body", b""))
            size += len(parts[-1])
            if size > limit:
                await self._refuse(scope, send, 413, f"the request body is larger than {limit >> 20} MB", {})
                return
            if not message.get("more_body", False):
                break
        body = b"".join(parts)
        if _too_deep(body):
            await self._refuse(scope, send, 400, "the JSON body is nested too deeply to read", {})
            return
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _limited(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Count the body as it arrives (chunked bodies have no Content-Length) and answer 413 in
        place of whatever the app was about to say once it exceeds the limit."""
        state = {"bytes": 0, "over": False, "started": False}
        limit = self.guard.max_body_bytes

        async def counting_receive() -> dict:
            message = await receive()
            if message["type"] == "http.request":
                state["bytes"] += len(message.get("body", b""))
                if state["bytes"] > limit:
                    state["over"] = True
                    raise BodyTooLarge()
            return message

        async def guarded_send(message: dict) -> None:
            if state["over"]:
                if message["type"] == "http.response.start" and not state["started"]:
                    state["started"] = True
                    await self._refuse(scope, send, 413, f"the request body is larger than {limit >> 20} MB", {})
                return
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except BodyTooLarge:
            if not state["started"]:
                await self._refuse(scope, send, 413, f"the request body is larger than {limit >> 20} MB", {})

    @staticmethod
    async def _refuse(scope: Scope, send: Send, status: int, message: str, extra: dict) -> None:
        if scope["type"] == "websocket":  # close before accepting: the handshake fails
            await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})
            return
        await _send_json(send, status, error_body(scope.get("path", ""), status, message), extra)


async def _send_json(send: Send, status: int, body: bytes, extra: dict) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in extra.items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def gradio_paths(config) -> tuple[list[str], list[str]]:
    """(allowed, blocked) folders for Gradio's file route: the outputs, thumbnails, the UI's own
    cache (text cards, downloads), user styles' previews and the shipped assets; never the
    database, its backups, the models or the options file, which also live in the data dir."""
    assets = Path(__file__).resolve().parent.parent / "assets"
    allowed = [config.outputs_dir, config.thumbnails_dir, config.data_dir / "cache",
               config.styles_dir, assets]
    database = config.database_path
    blocked = [database, database.with_name(database.name + "-wal"),
               database.with_name(database.name + "-shm"), config.models_dir]
    return [str(Path(p).resolve()) for p in allowed], [str(Path(p).resolve()) for p in blocked]
