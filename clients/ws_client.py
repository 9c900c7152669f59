"""The Python clients' connection to `dpt-live serve` (docs/PROTOCOL.md): connect to /ws with a
token, read and check the hello, yield decoded frames, reconnect with backoff after a drop; and the
control messages a client sends (``*_control``).

Used by the VMC bridge and the recorder. Blocking (websockets' sync client): both are small
command-line loops, and a background reader thread is all the VMC bridge needs."""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

from server.protocol import WireFrame, dumps

log = logging.getLogger(__name__)


class ClientError(Exception):
    """A problem the user must fix: a bad option, URL or token, an unreachable server. The clients
    depend on the wire protocol alone, so this is their own error type; the CLI reports it as it
    reports diffposetalk's UserError (a message and exit status 2)."""


@dataclasses.dataclass
class Frame(WireFrame):
    """A decoded frame (server.protocol.WireFrame: seq, audio_time, emit_time, exp, pose, eyes,
    dropped, reset) plus when it arrived here (Unix epoch s, this machine's clock)."""
    recv_time: float = dataclasses.field(kw_only=True)


def ws_url(url: str, token: str | None = None, session: str | None = None, mode: str = "binary") -> str:
    """``url`` (ws://host:port, ws://host:port/ws, http://... also accepted) with the /ws path and
    the token/session/mode query filled in. Raises ClientError for anything else."""
    parts = urllib.parse.urlsplit(url.strip())
    scheme = {"ws": "ws", "wss": "wss", "http": "ws", "https": "wss"}.get(parts.scheme.lower())
    if scheme is None or not parts.hostname:
        raise ClientError(f"bad server URL {url!r}: expected ws://HOST:PORT[/ws] (or http://...)")
    try:
        parts.port  # noqa: B018 - raises ValueError for a non-numeric port
    except ValueError as exc:
        raise ClientError(f"bad server URL {url!r}: {exc}") from exc
    path = parts.path.rstrip("/")
    if path in ("", "/"):
        path = "/ws"
    elif path != "/ws":
        raise ClientError(f"bad server URL {url!r}: the WebSocket path is /ws, not {parts.path!r}")
    query = dict(urllib.parse.parse_qsl(parts.query))
    if token is not None:
        query["token"] = token
    if session is not None:
        query["session"] = session
    query["mode"] = mode
    return urllib.parse.urlunsplit((scheme, parts.netloc, path, urllib.parse.urlencode(query), ""))


def _redacted(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    query = "&".join(f"{k}=***" if k == "token" else urllib.parse.urlencode({k: v})
                     for k, v in urllib.parse.parse_qsl(parts.query))
    return urllib.parse.urlunsplit(parts._replace(query=query))


class StreamClient:
    """One viewer connection with automatic reconnects.

    ``frames()`` yields Frame objects for as long as the caller iterates; control messages go out
    with ``send()``. Refusals a retry cannot fix (401, 403, 404, bad URL, other protocol version)
    raise ClientError at once; a server that is down or drops the connection is retried with
    exponential backoff (``reconnect=False``: raised instead; ``retry_first=False``: only after
    the first successful connection)."""

    def __init__(self, url: str, token: str | None = None, session: str | None = None,
                 reconnect: bool = True, retry_first: bool = False, backoff=(0.5, 8.0),
                 open_timeout: float = 5.0):
        self.url = ws_url(url, token, session)
        self.reconnect, self.retry_first = reconnect, retry_first
        self.backoff = backoff
        self.open_timeout = open_timeout
        self.hello: dict[str, Any] | None = None
        self.connections = 0   # successful connections (hello received)
        self.dropped_total = 0  # frames the server reported lost for this client
        self.notices: list[dict] = []  # state/error/dropped messages, newest last (bounded)
        self._ws = None
        self._closed = False

    # --- connection ---------------------------------------------------------------------------

    def _connect_once(self):
        from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI
        from websockets.sync.client import connect

        from server.protocol import ProtocolError, parse_hello

        where = _redacted(self.url)
        try:
            # __enter__: a long-lived connection closed by close(), not a with-block.
            ws = connect(self.url, open_timeout=self.open_timeout, max_size=2 ** 20,
                         compression=None).__enter__()
        except InvalidStatus as exc:
            status = exc.response.status_code
            hint = {401: "the token was refused (pass --token, or the one the server printed)",
                    403: "the server refused this client's Origin",
                    404: "no WebSocket endpoint there (is it a dpt-live server?)"}.get(status, "")
            raise ClientError(f"{where}: HTTP {status} {hint}".rstrip()) from exc
        except InvalidURI as exc:
            raise ClientError(f"bad server URL {where}: {exc}") from exc
        except InvalidHandshake as exc:
            raise ClientError(f"{where}: WebSocket handshake failed ({exc})") from exc
        # OSError (refused, unreachable, DNS), TimeoutError: the caller decides whether to retry.
        try:
            first = ws.recv(timeout=self.open_timeout)
            self.hello = parse_hello(first)
        except (ProtocolError, TimeoutError) as exc:
            ws.close()
            raise ClientError(f"{where}: no valid hello from the server ({exc})") from exc
        self._ws = ws
        self.connections += 1
        log.info("connected to %s (session %s, model %s)", where, self.hello.get("session"),
                 (self.hello.get("model") or {}).get("path"))
        return ws

    def _connect(self):
        from websockets.exceptions import ConnectionClosed

        delay = self.backoff[0]
        while not self._closed:
            try:
                return self._connect_once()
            except ClientError:
                raise
            except (OSError, TimeoutError, ConnectionClosed) as exc:
                first = self.connections == 0
                if not self.reconnect or (first and not self.retry_first):
                    raise ClientError(f"cannot reach {_redacted(self.url)}: {exc}") from exc
                log.warning("server unreachable (%s); retrying in %.1f s", exc, delay)
            time.sleep(delay * random.uniform(0.8, 1.2))  # jitter: many clients do not retry in lockstep
            delay = min(delay * 2, self.backoff[1])
        return None

    # --- use ----------------------------------------------------------------------------------

    def frames(self, timeout: float | None = None, stop: threading.Event | None = None) -> Iterator[Frame]:
        """Decoded frames; notices (state, error, dropped, pong) are kept in ``notices``.
        ``timeout``: seconds without any message before TimeoutError (None: wait forever).
        ``stop``: set from elsewhere (e.g. a SIGINT handler) to end the iteration cleanly within a
        quarter second — safer than an exception raised inside the WebSocket library's receive."""
        from websockets.exceptions import ConnectionClosed

        from server.protocol import ProtocolError, decode_server_message

        while not self._closed:
            ws = self._ws or self._connect()
            if ws is None:
                return
            try:
                while True:
                    message = self._recv(ws, timeout, stop)
                    if message is None:
                        return
                    recv_time = time.time()
                    try:
                        item = decode_server_message(message)
                    except ProtocolError as exc:
                        raise ClientError(f"server sent a message this client cannot read: {exc}") from exc
                    if isinstance(item, WireFrame):
                        self.dropped_total += item.dropped
                        yield Frame(**vars(item), recv_time=recv_time)
                    else:
                        self._notice(item)
            except ConnectionClosed as exc:
                self._ws = None
                if self._closed:
                    return
                code = exc.rcvd.code if exc.rcvd else None
                reason = exc.rcvd.reason if exc.rcvd else ""
                if code in (1008, 1009):  # the server refused something we sent: retrying repeats it
                    raise ClientError(f"server closed the connection ({code}: {reason})") from exc
                if not self.reconnect:
                    if code in (1000, 1001):  # the server ended the stream or shut down
                        return
                    raise ClientError(f"connection closed ({code}: {reason or 'no reason'})") from exc
                log.warning("connection closed (%s %s); reconnecting", code, reason)

    @staticmethod
    def _recv(ws, timeout: float | None, stop: threading.Event | None):
        """ws.recv with ``timeout``, in short slices when ``stop`` may end it (None when it did)."""
        if stop is None:
            return ws.recv(timeout=timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while not stop.is_set():
            left = 0.25 if deadline is None else min(0.25, deadline - time.monotonic())
            if left <= 0:
                raise TimeoutError(f"no message for {timeout:g} s")
            try:
                return ws.recv(timeout=left)
            except TimeoutError:
                continue
        return None

    def _notice(self, msg: dict) -> None:
        kind = msg.get("type")
        if kind == "dropped":
            log.warning("server dropped %s frames for this client (total %s)", msg.get("count"), msg.get("total"))
        elif kind == "error":
            log.warning("server: %s", msg.get("message"))
        elif kind == "hello":  # a rebuilt session may greet again
            self.hello = msg
        self.notices = self.notices[-99:] + [msg]

    def send(self, text: str) -> None:
        """Send a control message (build it with this module's *_control functions)."""
        if self._ws is None:
            raise ClientError("not connected")
        self._ws.send(text)

    def close(self) -> None:
        self._closed = True
        ws, self._ws = self._ws, None
        if ws is not None:
            ws.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --- control messages a client sends (docs/PROTOCOL.md; the server checks them with
# server.protocol.parse_control) ------------------------------------------------------------------

def style_control(name: str | None) -> str:
    return dumps({"type": "style", "name": name})


def guidance_control(audio: float, style: float) -> str:
    return dumps({"type": "guidance", "audio": float(audio), "style": float(style)})


def reset_control() -> str:
    return dumps({"type": "reset"})


def pause_control(paused: bool) -> str:
    return dumps({"type": "pause", "paused": bool(paused)})


def audio_start_control(rate: int, channels: int = 1, fmt: str = "f32le") -> str:
    return dumps({"type": "audio_start", "rate": int(rate), "channels": int(channels), "format": fmt})


def audio_end_control() -> str:
    return dumps({"type": "audio_end"})


def ping_control() -> str:
    return dumps({"type": "ping"})
