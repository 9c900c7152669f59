"""The live server: one port for the WebSocket (`/ws`, protocol v1 in docs/PROTOCOL.md) and plain
HTTP (the web viewer's static files, /healthz, /metrics, /flame.bin), on the `websockets` asyncio
server. Sessions and fan-out live in server/hub.py, the pipeline threads in server/pipeline.py,
the HTTP side in server/http.py. Every refusal and timeout is logged (one line, with the peer)
and counted in /metrics."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import socket
import time
import weakref
from collections.abc import Callable
from urllib.parse import quote

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from server.config import ServerConfig
from server.engine import Engine
from server.http import (
    SESSION_NAME,
    default_origins,
    origin_ok,
    request_token,
    respond,
    split_request,
    static_file,
    token_ok,
    vendor_file,
)
from server.hub import HubSession, Viewer, peer_name
from server.metrics import ServerMetrics
from server.protocol import (
    CLOSE_GOING_AWAY,
    CLOSE_POLICY,
    CLOSE_TOO_BIG,
    MODES,
    ProtocolError,
    dumps,
    make_hello,
    parse_control,
)

log = logging.getLogger("dpt_live.serve")

DEFAULT_SESSION = "default"
CLOSE_TRY_AGAIN = 1013
CLOSE_INTERNAL = 1011



# path -> (ServerConfig attribute holding the bytes, the 404 text, content type)
PRIVATE_ASSETS = {
    "/flame.bin": ("flame_asset", "this server has no FLAME model (start it with --flame MODEL.pkl)\n",
                   "application/octet-stream"),
    "/avatar.vrm": ("avatar_vrm", "this server has no avatar (start it with --avatar FILE.vrm)\n", "model/gltf-binary"),
}

class LiveServer:
    """``own_factory`` opens the default session's own audio source (``--audio``/``--mic``) and
    ``own_kind`` names it ("file"/"mic"); without it the default session waits for upstream audio."""

    def __init__(self, engine: Engine, config: ServerConfig | None = None,
                 own_factory: Callable | None = None, own_kind: str = "none"):
        self.engine, self.config = engine, config or ServerConfig()
        self.own_factory, self.own_kind = own_factory, own_kind if own_factory else "none"
        self.metrics = ServerMetrics()
        self.sessions: dict[str, HubSession] = {}
        self.viewers: set[Viewer] = set()
        self.origins: list[str] = []
        self.port = self.config.port
        self.started = time.time()
        self._server = None
        self._janitor: asyncio.Task | None = None
        self._lag_probe: asyncio.Task | None = None
        self._closing = False
        self._refused: weakref.WeakSet[ServerConnection] = weakref.WeakSet()  # refused by _reject (logged)
        self.loop: asyncio.AbstractEventLoop | None = None

    # --- lifecycle ----------------------------------------------------------------------------------
    async def start(self) -> None:
        cfg = self.config
        self.loop = asyncio.get_running_loop()
        self.sessions[DEFAULT_SESSION] = self._new_session(DEFAULT_SESSION, self.own_factory, self.own_kind, True)
        # websockets' own lines (one per HTTP request, per refused handshake) stay quiet: this module
        # logs each refusal and timeout once, with its reason
        quiet = logging.getLogger("dpt_live.serve.websockets")
        quiet.setLevel(logging.WARNING)
        self._server = await serve(
            self._handler, cfg.host, cfg.port, process_request=self._process_request,
            process_response=self._process_response,
            max_size=cfg.max_message, ping_interval=cfg.ping_interval, ping_timeout=cfg.ping_timeout,
            write_limit=cfg.write_limit, close_timeout=2, logger=quiet, server_header="dpt-live")
        self.port = self._server.sockets[0].getsockname()[1]
        self.origins = default_origins(cfg.host, self.port) + list(cfg.allow_origins)
        self.started = time.time()
        self._janitor = asyncio.create_task(self._janitor_loop())
        self._lag_probe = asyncio.create_task(self._loop_lag_loop())

    def url(self, with_token: bool = True) -> str:
        host = self.config.host
        if host in ("", "0.0.0.0", "::"):
            host = socket.gethostname()
        elif ":" in host:
            host = f"[{host}]"
        tail = f"?token={quote(self.config.token)}" if with_token and self.config.token else ""
        return f"http://{host}:{self.port}/{tail}"

    async def stop(self) -> None:
        """Graceful: stop listening, finish every session (their last frames still go out), then
        close the connections with 1001."""
        if self._closing:
            return
        self._closing = True
        if self._janitor is not None:
            self._janitor.cancel()
        if self._lag_probe is not None:
            self._lag_probe.cancel()
        self._server.close(close_connections=False)  # no new connections while sessions finish
        await asyncio.gather(*(s.close() for s in list(self.sessions.values())))
        await asyncio.sleep(0.05)  # let the pipelines' last call_soon_threadsafe frames land
        deadline = time.monotonic() + 1.0
        while any(v.queue for v in self.viewers) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await asyncio.gather(*(v.close(CLOSE_GOING_AWAY, "server shutting down") for v in list(self.viewers)),
                             return_exceptions=True)
        self._server.close()
        await self._server.wait_closed()

    def _new_session(self, name: str, own_factory=None, own_kind="none", persistent=False) -> HubSession:
        session = HubSession(name, self.engine, self.metrics, self.loop, self.config.viewer_queue,
                             own_factory, own_kind, persistent)
        if own_factory is not None:
            session.source = own_kind
        log.info("session %s opened", name)
        return session

    async def _loop_lag_loop(self, period: float = 0.05) -> None:
        """Sample how late the loop runs a timer. Upstream audio is resampled and fed in the loop,
        and its arrival is stamped when the loop gets to it, so a loop running late adds latency
        no deadline sees: this makes it visible (/metrics, /healthz, a warning at most every 10 s)."""
        warned = -math.inf
        while True:
            due = time.perf_counter() + period
            await asyncio.sleep(period)
            lag = max(time.perf_counter() - due, 0.0)
            self.metrics.loop_lag.observe(lag)
            if lag > 0.1 and time.monotonic() - warned > 10:
                warned = time.monotonic()
                log.warning("the event loop ran %.0f ms late: the server is overloaded (upstream audio waits that "
                            "long before its session sees it)", lag * 1000)

    async def _janitor_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.janitor_interval)
            self._close_stalled_viewers()
            for name, session in list(self.sessions.items()):
                session.check_upstream_idle(self.config.upstream_idle)
                if not session.persistent and session.idle_for() > self.config.session_idle:
                    del self.sessions[name]
                    await session.close()
                    log.info("session %s closed (idle)", name)

    def _close_stalled_viewers(self) -> None:
        """Close viewers whose frames have waited ``stall_timeout`` s without the viewer taking any
        (no pong to a delivery probe, or a write stuck on a full socket)."""
        limit = self.config.stall_timeout
        now = time.perf_counter()
        for viewer in list(self.viewers):
            if viewer.closing or viewer.stalled_for(now) <= limit:
                continue
            self.metrics.add_timeout("stalled")
            log.warning("session %s: closing %s: it took no frame for %g s (sent %d, dropped %d)", viewer.session,
                        viewer.peer, limit, viewer.sent, viewer.dropped_total)
            viewer.close_soon(CLOSE_POLICY, f"not reading: no frame delivered for {limit:g} s")

    # --- HTTP and the upgrade checks -----------------------------------------------------------------
    def _reject(self, connection: ServerConnection, path: str, status: int, text: str) -> Response:
        """Refuse a request before the upgrade: counted by status and logged with the peer (a bad or
        missing token, a foreign origin or a full server as a warning)."""
        self.metrics.add_rejected(str(status))
        level = logging.WARNING if status in (401, 403, 503) else logging.INFO
        log.log(level, "refused %s from %s: %d %s", path, peer_name(connection), status, text)
        self._refused.add(connection)
        return respond(status, text + "\n")

    def _process_response(self, connection: ServerConnection, request: Request, response: Response) -> None:
        """websockets' own refusals of a /ws request that passed our checks (not a WebSocket
        upgrade, an unsupported version...): logged and counted like ours."""
        path = split_request(request)[0]
        if path != "/ws" or response.status_code == 101 or connection in self._refused:
            return
        self.metrics.add_rejected(str(response.status_code))
        body = (response.body or b"").decode("utf-8", "replace")
        why = " ".join(line.strip() for line in body.splitlines() if line.strip()) or response.reason_phrase
        log.info("refused %s from %s: %d %s", path, peer_name(connection), response.status_code, why)

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path, query = split_request(request)
        cfg = self.config
        if path == "/ws":
            def reject(status: int, text: str) -> Response:
                return self._reject(connection, path, status, text)
            if not token_ok(cfg.token, request_token(request, query)):
                return reject(401, "missing or wrong access token (token= or Authorization: Bearer)")
            origin = request.headers.get("Origin")
            if not origin_ok(origin, self.origins):
                return reject(403, f"origin {origin} is not allowed (server option --allow-origin)")
            name = query.get("session", DEFAULT_SESSION)
            if not SESSION_NAME.match(name):
                return reject(400, "bad session name (1-64 characters of A-Z a-z 0-9 _ . -)")
            if query.get("mode", "binary") not in MODES:
                return reject(400, f"mode must be one of {', '.join(MODES)}")
            if self._closing:
                return reject(503, "server shutting down")
            if len(self.viewers) >= cfg.max_viewers:
                return reject(503, f"too many viewers (--max-viewers {cfg.max_viewers})")
            if name not in self.sessions and len(self.sessions) >= cfg.max_sessions:
                return reject(503, f"too many sessions (--max-sessions {cfg.max_sessions})")
            return None  # on to the WebSocket handshake
        if path == "/healthz":
            return respond(200, json.dumps(self.health()), "application/json")
        if path == "/metrics":
            text = self.metrics.render(len(self.viewers), len(self.sessions), cfg.lag_bound, self.viewers_behind())
            if self.engine.scheduler is not None:  # batch sizes, queue depth, call times, shed work
                text = text.rstrip("\n") + "\n" + self.engine.scheduler.prometheus().rstrip("\n") + "\n"
            return respond(200, text, "text/plain; version=0.0.4; charset=utf-8")
        if path in PRIVATE_ASSETS:  # the session's own files: behind the token
            attr, missing, mime = PRIVATE_ASSETS[path]
            if not token_ok(cfg.token, request_token(request, query)):
                return self._reject(connection, path, 401, "missing or wrong access token")
            if getattr(cfg, attr) is None:
                return respond(404, missing)
            return respond(200, getattr(cfg, attr), mime)
        if path.startswith("/vendor/"):
            found = vendor_file(cfg.node_modules, path[len("/vendor/"):])
            if found is None:
                return respond(404, "not found (the VRM viewer's npm packages: run `make run`, or `npm ci`)\n")
            return respond(200, found[0], found[1])
        found = static_file(cfg.web_root, path)
        if found is None:
            if path in ("", "/"):
                return respond(404, f"the web viewer is not installed ({cfg.web_root / 'index.html'} missing)\n")
            return respond(404, "not found\n")
        return respond(200, found[0], found[1])

    def viewers_behind(self) -> int:
        return sum(1 for v in self.viewers if v.blocked_since is not None)

    def health(self) -> dict:
        oh, dl, lag = self.metrics.overhead, self.metrics.delivery, self.metrics.loop_lag
        counts = self.metrics.counts()
        by_session = counts["dropped_by_session"]
        return {"status": "stopping" if self._closing else "ok", "uptime": round(time.time() - self.started, 3),
                "sessions": len(self.sessions), "viewers": len(self.viewers),
                "frames": self.metrics.frames_total, "model": str(self.engine.loaded.path),
                "server_overhead_ms": {"p50": _ms(oh.quantile(0.5)), "p95": _ms(oh.quantile(0.95)),
                                       "count": oh.count},
                "lag_bound_s": self.config.lag_bound, "stall_timeout_s": self.config.stall_timeout,
                "viewer_delivery_ms": {"p50": _ms(dl.quantile(0.5)), "p95": _ms(dl.quantile(0.95)),
                                       "count": dl.count},
                "event_loop_lag_ms": {"p50": _ms(lag.quantile(0.5)), "p95": _ms(lag.quantile(0.95)),
                                      "count": lag.count},
                "viewers_behind": self.viewers_behind(),
                "dropped": {"queue": counts["dropped_by_cause"].get("queue", 0),
                            "lag": counts["dropped_by_cause"].get("lag", 0)},
                "rejected": counts["rejected"], "timeouts": counts["timeouts"],
                "scheduler": None if self.engine.scheduler is None else _scheduler_health(self.engine.scheduler.stats()),
                "cluster": self.engine.cluster_health(),
                "session_detail": {name: s.summary() | {"dropped": by_session.get(name, 0)}
                                   for name, s in self.sessions.items()}}

    # --- WebSocket ------------------------------------------------------------------------------------
    def hello(self, session: HubSession, mode: str) -> dict:
        cfg = self.config
        return make_hello(
            session=session.name, mode=mode, shape=self.engine.shape_raw,
            flame_asset="/flame.bin" if cfg.flame_asset is not None else None,
            model=self.engine.model_info(), styles=self.engine.styles, style=session.style_name,
            guidance=session.scales, source=session.source,
            limits={"max_message": cfg.max_message, "viewer_queue": cfg.viewer_queue,
                    "max_viewers": cfg.max_viewers, "max_sessions": cfg.max_sessions,
                    "session_idle_s": cfg.session_idle, "upstream_idle_s": cfg.upstream_idle,
                    "ping_interval_s": cfg.ping_interval, "ping_timeout_s": cfg.ping_timeout,
                    "lag_bound_s": cfg.lag_bound, "stall_timeout_s": cfg.stall_timeout},
            avatar_map=cfg.avatar_map, avatar="/avatar.vrm" if cfg.avatar_vrm is not None else None) | {
            "paused": session.paused}

    async def _handler(self, ws: ServerConnection) -> None:
        _, query = split_request(ws.request)
        name, mode = query.get("session", DEFAULT_SESSION), query.get("mode", "binary")
        peer = peer_name(ws)
        if len(self.viewers) >= self.config.max_viewers:  # raced past the check before the upgrade
            self.metrics.add_rejected(str(CLOSE_TRY_AGAIN))
            log.warning("refused %s after the upgrade: too many viewers (%d)", peer, self.config.max_viewers)
            await ws.close(CLOSE_TRY_AGAIN, "too many viewers")
            return
        session = self.sessions.get(name)
        if session is None:
            if len(self.sessions) >= self.config.max_sessions or self._closing:
                self.metrics.add_rejected(str(CLOSE_TRY_AGAIN))
                log.warning("refused %s after the upgrade: too many sessions or shutting down", peer)
                await ws.close(CLOSE_TRY_AGAIN, "too many sessions")
                return
            session = self.sessions[name] = self._new_session(name)
        if self.config.send_buffer:
            sock = ws.transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.config.send_buffer)
        viewer = Viewer(ws, mode, self.config.viewer_queue, self.metrics, name, self.config.lag_bound)
        # joined before the hello is sent (no await in between): the janitor cannot close the
        # session under a new viewer, and frames wait in the queue until the sender starts
        session.add(viewer)
        self.viewers.add(viewer)
        self.metrics.add_connection()
        try:
            await ws.send(dumps(self.hello(session, mode)))
            viewer.task = asyncio.create_task(viewer.run_sender())
            async for message in ws:
                if isinstance(message, str):
                    session.control(viewer, parse_control(message))
                else:
                    session.audio(viewer, message)
        except ProtocolError as exc:
            self.metrics.add_rejected(str(CLOSE_POLICY))
            log.info("session %s: closing %s with 1008: %s", name, peer, exc)
            await viewer.close(CLOSE_POLICY, str(exc))
        except ConnectionClosed as exc:
            self._closed_by_websockets(exc, name, peer)
        except Exception as exc:  # noqa: BLE001 - one connection's bug must not reach the others
            log.exception("session %s: connection handler failed", name)
            await viewer.close(CLOSE_INTERNAL, f"internal error: {exc}")
        finally:
            session.remove(viewer)
            self.viewers.discard(viewer)
            if viewer.task is not None:
                viewer.task.cancel()
            if viewer.dropped_total:
                log.info("session %s: %s left after %d frames; dropped %d (%d older than the lag bound, "
                         "%d queue full)", name, peer, viewer.sent, viewer.dropped_total,
                         viewer.dropped_by_cause["lag"], viewer.dropped_by_cause["queue"])

    def _closed_by_websockets(self, exc: ConnectionClosed, session: str, peer: str) -> None:
        """websockets closes a connection itself for an oversized message (1009) and an unanswered
        keep-alive ping (1011): count and log those (our own closes are counted where they are made)."""
        sent = exc.sent
        if sent is None:
            return
        if sent.code == CLOSE_TOO_BIG:
            self.metrics.add_rejected(str(CLOSE_TOO_BIG))
            log.warning("session %s: closed %s with 1009: %s (--max-message %d)", session, peer, sent.reason,
                        self.config.max_message)
        elif sent.code == CLOSE_INTERNAL and "keepalive" in sent.reason:
            self.metrics.add_timeout("keepalive")
            log.warning("session %s: closed %s: no pong within %g s (keepalive ping timeout)", session, peer,
                        self.config.ping_timeout)


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000, 4)


def _scheduler_health(stats: dict) -> dict:
    """The batching scheduler in /healthz: the figures an operator watches (the rest: /metrics)."""
    return {"sessions": stats["sessions"], "max_batch": stats["max_batch"],
            "latency_budget_ms": stats["latency_budget_ms"], "queue_depth": stats["queue_depth"],
            "calls": stats["calls"], "shed": stats["shed"], "late": stats["late"], "errors": stats["errors"]}


async def run_server(server: LiveServer, stop: asyncio.Event, on_started: Callable[[LiveServer], None] | None = None):
    """Start, call on_started, wait for ``stop``, shut down gracefully."""
    await server.start()
    if on_started is not None:
        on_started(server)
    try:
        await stop.wait()
    finally:
        await server.stop()
