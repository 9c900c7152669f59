"""The plain-HTTP side of the server's one port and the checks made before a WebSocket upgrade:
access token, Origin allow-list, static files of the web viewer (no directory traversal),
HTTP responses."""

from __future__ import annotations

import email.utils
import http
import ipaddress
import re
import secrets
import socket
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

SESSION_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".mjs": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
                 ".json": "application/json", ".svg": "image/svg+xml", ".png": "image/png",
                 ".ico": "image/x-icon", ".wasm": "application/wasm", ".txt": "text/plain; charset=utf-8",
                 ".glsl": "text/plain; charset=utf-8", ".map": "application/json"}
STATIC_PATH = re.compile(r"^(?:[A-Za-z0-9_-][A-Za-z0-9_.-]*/)*[A-Za-z0-9_-][A-Za-z0-9_.-]*$")


def respond(status: int, body: bytes | str, content_type: str = "text/plain; charset=utf-8",
            headers: dict[str, str] | None = None) -> Response:
    data = body.encode() if isinstance(body, str) else body
    st = http.HTTPStatus(status)
    h = Headers([("Date", email.utils.formatdate(usegmt=True)), ("Connection", "close"),
                 ("Content-Length", str(len(data))), ("Content-Type", content_type),
                 ("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff")])
    for k, v in (headers or {}).items():
        h[k] = v
    return Response(st.value, st.phrase, h, data)


def split_request(request: Request) -> tuple[str, dict[str, str]]:
    """(path, query) — the last value of each query parameter."""
    parts = urlsplit(request.path)
    query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    return parts.path, query


def request_token(request: Request, query: dict[str, str]) -> str | None:
    if "token" in query:
        return query["token"]
    auth = request.headers.get("Authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return None


def token_ok(expected: str | None, given: str | None) -> bool:
    if expected is None:  # --no-token
        return True
    return given is not None and secrets.compare_digest(given.encode(), expected.encode())


def default_origins(host: str, port: int) -> list[str]:
    """The server's own http://host:port origins: the bound host, and for a loopback or wildcard
    bind the loopback names too; for a wildcard bind also this machine's name and addresses."""
    hosts = {host}
    wildcard = host in ("", "0.0.0.0", "::")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if loopback or wildcard:
        hosts |= {"localhost", "127.0.0.1", "[::1]"}
    if wildcard:
        hosts.discard(host)
        name = socket.gethostname()
        hosts.add(name)
        try:
            hosts |= {info[4][0] for info in socket.getaddrinfo(name, None)}
        except OSError:
            pass
    out = []
    for h in sorted(hosts):
        if ":" in h and not h.startswith("["):
            h = f"[{h}]"
        out.append(f"http://{h}:{port}")
    return out


def origin_ok(origin: str | None, allowed: list[str]) -> bool:
    """No Origin header: a non-browser client (allowed). '*' in the list allows every origin."""
    if origin is None:
        return True
    return "*" in allowed or origin.rstrip("/").lower() in {a.rstrip("/").lower() for a in allowed}


def static_file(web_root: Path, path: str) -> tuple[bytes, str] | None:
    """The file of clients/web/ for a URL path, or None. Only plain names (no '..', no hidden
    files, no backslashes) that resolve inside web_root and have a known type."""
    rel = "index.html" if path in ("", "/") else path.lstrip("/")
    if not STATIC_PATH.match(rel):
        return None
    root = web_root.resolve()
    target = (root / rel).resolve()
    if not target.is_relative_to(root) or not target.is_file():
        return None
    ctype = CONTENT_TYPES.get(target.suffix.lower())
    if ctype is None:
        return None
    return target.read_bytes(), ctype


def vendor_file(node_modules: Path, rel: str) -> tuple[bytes, str] | None:
    """A file of one of the viewer's npm packages (config.VENDOR_PACKAGES): /vendor/<name>/<path>."""
    from server.config import VENDOR_PACKAGES

    name, _, rest = rel.partition("/")
    package = VENDOR_PACKAGES.get(name)
    if package is None or not rest:
        return None
    return static_file(node_modules / package, rest)
