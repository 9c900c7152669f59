"""Sessions and viewers on the event loop: fan-out of frames with a bounded queue per viewer,
session control (style, guidance, reset, pause) and audio upstream.

A frame reaches the loop once (``call_soon_threadsafe`` from the pipeline thread) and is offered
to every viewer's queue; each viewer has its own sender task, so a slow or dead viewer only ever
delays itself. What a viewer is behind is bounded (``lag_bound``, docs/SERVER.md): it may have
only a few frames in flight (server/delivery.py: written but not yet confirmed by the pong to a
delivery probe), a queued frame older than half the bound is dropped when a newer one is queued,
and when the queue is full the oldest frame is dropped; every drop is counted and the next frame
it gets says how many it lost. A viewer that takes nothing for ``stall_timeout`` is closed by the
server's janitor (server/app.py)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace

from websockets.exceptions import ConnectionClosed

from server.delivery import DeliveryWindow
from server.engine import Engine
from server.metrics import ServerMetrics
from server.pipeline import FrameItem, Pipeline
from server.protocol import (
    CLOSE_POLICY,
    ProtocolError,
    audio_frame_bytes,
    clip_reason,
    dropped_message,
    dumps,
    encode_json_frame,
    error_message,
    state_message,
    with_dropped,
)
from server.sources import UpstreamSource

log = logging.getLogger("dpt_live.serve")


MAX_NOTICES = 256  # queued JSON notices (state, pong, error) a non-reading client may pile up
CATCH_UP_S = 0.1  # a viewer that does not keep up skips queued frames older than this
CLOSE_TIMEOUT_S = 3.0  # a peer that does not read cannot take even the close frame: aborted after this


def peer_name(ws) -> str:
    """host:port of a connection's peer, for log lines."""
    addr = getattr(ws, "remote_address", None)
    if not addr:
        return "?"
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


class Viewer:
    """One WebSocket connection of a session: it receives frames and may control the session or
    be its microphone. Frames and notices leave in the order they were queued; only frames are
    dropped when the viewer falls behind. ``lag_bound`` None: no delivery window, no drop by age
    (only the queue bound)."""

    def __init__(self, ws, mode: str, queue_size: int, metrics: ServerMetrics, session: str,
                 lag_bound: float | None = None):
        self.ws, self.mode, self.queue_size, self.metrics, self.session = ws, mode, queue_size, metrics, session
        self.peer = peer_name(ws)
        self.queue: deque[FrameItem | str] = deque()
        self.queued_frames = 0
        self.wake = asyncio.Event()
        self.dropped_pending = 0  # lost since the last frame sent
        self.dropped_total = 0
        self.dropped_by_cause = {"queue": 0, "lag": 0}
        self.sent = 0
        self.upstream: UpstreamSource | None = None
        self.upstream_spec: dict | None = None
        self.last_audio = 0.0
        self.task: asyncio.Task | None = None
        self.window = DeliveryWindow(lag_bound, time.perf_counter()) if lag_bound else None
        self.max_age = lag_bound / 2 if lag_bound else None  # the other half is for what is in flight
        self.blocked_since: float | None = None  # perf_counter: frames wait for the window since then
        self.write_since: float | None = None  # perf_counter: a write waits for the socket since then
        self.closing = False
        self._close_task: asyncio.Task | None = None

    def offer(self, item: FrameItem) -> int:
        """Queue a frame; returns 1 when the oldest queued frame had to be dropped."""
        dropped = 0
        if self.queued_frames >= self.queue_size:
            for i, old in enumerate(self.queue):  # the oldest frame; notices stay
                if isinstance(old, FrameItem):
                    del self.queue[i]
                    break
            self.queued_frames -= 1
            self.dropped_pending += 1
            self.dropped_total += 1
            self.dropped_by_cause["queue"] += 1
            dropped = 1
        self.queue.append(item)
        self.queued_frames += 1
        if self.window is not None:
            self.window.on_offered()
        self.wake.set()
        return dropped

    def notify(self, msg: dict) -> None:
        if len(self.queue) - self.queued_frames >= MAX_NOTICES:
            if not self.closing:  # a client that sends but never reads: it cannot be served
                self.metrics.add_rejected("not_reading")
                log.warning("session %s: closing %s: more than %d unread messages (the client is not reading)",
                            self.session, self.peer, MAX_NOTICES)
                self.close_soon(CLOSE_POLICY, f"more than {MAX_NOTICES} unread messages: the client is not reading")
            return
        self.queue.append(dumps(msg))
        self.wake.set()

    # --- closing ------------------------------------------------------------------------------------
    def close_soon(self, code: int, reason: str) -> None:
        """Close from synchronous code (a task keeps it alive)."""
        if self._close_task is None:
            self._close_task = asyncio.get_running_loop().create_task(self.close(code, reason))

    async def close(self, code: int, reason: str, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Close with ``code`` and ``reason``; websockets waits for room in the write buffer before
        it even starts the closing handshake, which a peer that does not read never gives: such
        a connection is aborted after ``timeout``."""
        self.closing = True
        try:
            async with asyncio.timeout(timeout):
                await self.ws.close(code, clip_reason(reason))
        except TimeoutError:
            self.ws.transport.abort()

    def stalled_for(self, now: float) -> float:
        """Seconds frames have been waiting for this viewer to take anything (0: not waiting)."""
        since = [t for t in (self.blocked_since, self.write_since) if t is not None]
        return now - min(since) if since else 0.0

    # --- sending ------------------------------------------------------------------------------------
    def _encode(self, item: FrameItem, dropped: int) -> bytes | str:
        if self.mode == "binary":
            return with_dropped(item.binary, dropped)
        if dropped:
            return encode_json_frame(replace(item.wire, dropped=dropped))
        if item.json_text is None:  # encoded once for all JSON viewers
            item.json_text = encode_json_frame(item.wire)
        return item.json_text

    def _stale(self, item: FrameItem, now: float) -> bool:
        """A frame older than the age limit while a newer one is queued: sending it would only
        make the viewer later (the newest frame is always sent). The limit is half the lag bound
        (the other half is for what is in flight), and CATCH_UP_S for a viewer that does not keep
        up: it cannot take every frame anyway, and the newest ones keep it closest to live."""
        if self.max_age is None or self.queued_frames <= 1:
            return False
        limit = self.max_age if self.window.keeps_up(now) else min(CATCH_UP_S, self.max_age)
        return now - item.t_emit > limit

    def _drop(self, cause: str) -> None:
        self.dropped_pending += 1
        self.dropped_total += 1
        self.dropped_by_cause[cause] += 1
        self.metrics.add_dropped(self.session, 1, cause)

    async def _write(self, message: bytes | str) -> None:
        self.write_since = time.perf_counter()
        await self.ws.send(message)
        self.write_since = None

    async def _probe(self, now: float) -> None:
        """Send a delivery probe (a ping) when one is due; its pong confirms the frames before it."""
        window = self.window
        if window is None or not window.probe_due(now):
            return
        probe = window.on_probe(now)
        self.write_since = now
        pong = await self.ws.ping()
        self.write_since = None
        pong.add_done_callback(lambda fut: self._on_pong(fut, probe))

    def _on_pong(self, pong: asyncio.Future, probe) -> None:
        if pong.cancelled() or pong.exception() is not None:  # the connection closed
            return
        lag = self.window.on_pong(probe, time.perf_counter())
        if lag is not None:
            self.metrics.delivery.observe(lag)
        if self.blocked_since is not None:  # it waits for this pong (else: nothing to do, stay asleep)
            self.blocked_since = None
            self.wake.set()

    async def run_sender(self) -> None:
        try:
            while True:
                await self.wake.wait()
                self.wake.clear()
                await self._send_queued()
        except ConnectionClosed:
            pass  # the handler notices the closed connection and removes this viewer

    async def _send_queued(self) -> None:
        """Write what is queued, in order, as far as the delivery window allows; returns when the
        queue is empty or the window is full (the probe's pong wakes the sender again)."""
        while self.queue:
            item = self.queue[0]
            if isinstance(item, str):
                self.queue.popleft()
                await self._write(item)
                continue
            now = time.perf_counter()
            if self._stale(item, now):
                self.queue.popleft()
                self.queued_frames -= 1
                self._drop("lag")
                continue
            if self.window is not None and not self.window.can_send(now):
                if self.blocked_since is None:
                    self.blocked_since = now
                await self._probe(now)
                return
            self.queue.popleft()
            self.queued_frames -= 1
            lost = self.dropped_pending
            self.dropped_pending = 0
            if lost:
                await self._write(dumps(dropped_message(lost, self.dropped_total)))
            await self._write(self._encode(item, lost))
            self.metrics.overhead.observe(time.perf_counter() - item.t_emit)
            self.sent += 1
            if self.window is not None:
                self.window.on_sent(item.t_emit)
                if self.queued_frames == 0:  # end of a burst: one probe covers it
                    await self._probe(time.perf_counter())


class HubSession:
    """A named session: one pipeline (thread), many viewers, at most one upstream client."""

    def __init__(self, name: str, engine: Engine, metrics: ServerMetrics, loop: asyncio.AbstractEventLoop,
                 queue_size: int, own_factory: Callable | None = None, own_kind: str = "none",
                 persistent: bool = False):
        self.name, self.engine, self.metrics, self.loop = name, engine, metrics, loop
        self.queue_size, self.persistent = queue_size, persistent
        self.viewers: set[Viewer] = set()
        self.upstream_owner: Viewer | None = None
        self.style_name = engine.default_style_name
        self.scales = dict(engine.default_scales)
        # read by the pipeline thread when it builds a generation: replaced as a whole, never mutated
        self._build_settings = (engine.default_style, dict(self.scales))
        self.paused = False
        self.source = "none"
        self.created = time.monotonic()
        self.last_active = time.monotonic()
        self.frames = 0
        self.closed = False
        self.pipeline = Pipeline(name, self._build, own_factory, own_kind, self._emit_threadsafe,
                                 self._source_threadsafe, self._on_step, self._error_threadsafe)
        self.pipeline.start()

    # --- pipeline thread -> loop -------------------------------------------------------------------
    def _build(self, on_step=None):
        style, scales = self._build_settings
        return self.engine.build(style, scales, on_step=on_step)

    def _on_step(self, info) -> None:
        self.metrics.step_seconds.observe(info.compute_s)

    def _emit_threadsafe(self, items: list[FrameItem], latencies: list[float]) -> None:
        for lat in latencies:
            self.metrics.frame_latency.observe(lat)
        self._call(self.publish, items)

    def _source_threadsafe(self, kind: str) -> None:
        self._call(self._source_changed, kind)

    def _error_threadsafe(self, message: str) -> None:
        self._call(self.broadcast, error_message(message))

    def _call(self, fn, *args) -> None:
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed (interpreter shutting down): nobody to tell
            pass

    # --- loop ---------------------------------------------------------------------------------------
    def publish(self, items: list[FrameItem]) -> None:
        self.frames += len(items)
        self.metrics.add_frames(len(items))
        dropped = 0
        watching = [v for v in self.viewers if v.mode != "upstream"]  # an upstream-only client takes no frames
        for item in items:
            for viewer in watching:
                dropped += viewer.offer(item)
        if dropped:
            self.metrics.add_dropped(self.name, dropped)

    def _source_changed(self, kind: str) -> None:
        self.source = kind
        self.broadcast_state("source")

    def state(self, change: str | None = None) -> dict:
        fields = {"style": self.style_name, "guidance": dict(self.scales), "paused": self.paused,
                  "source": self.source}
        if change:
            fields["change"] = change
        return state_message(**fields)

    def broadcast(self, msg: dict) -> None:
        for viewer in self.viewers:
            viewer.notify(msg)

    def broadcast_state(self, change: str) -> None:
        self.broadcast(self.state(change))

    def add(self, viewer: Viewer) -> None:
        self.viewers.add(viewer)
        self.last_active = time.monotonic()

    def remove(self, viewer: Viewer) -> None:
        self.viewers.discard(viewer)
        if self.upstream_owner is viewer:
            self._end_upstream(viewer)
        self.last_active = time.monotonic()

    def idle_for(self) -> float:
        """Seconds without viewers and audio (0 while either exists)."""
        if self.viewers or self.upstream_owner is not None or self.source != "none":
            return 0.0
        return time.monotonic() - self.last_active

    # --- control (from a viewer's handler) ---------------------------------------------------------
    def control(self, viewer: Viewer, msg: dict) -> None:
        """A validated control message (server.protocol.parse_control). Refusals that keep the
        connection open go back to ``viewer`` as an error message."""
        kind = msg["type"]
        if kind == "ping":
            viewer.notify({"type": "pong"})
        elif kind == "style":
            try:
                vec = self.engine.preset(msg["name"])
            except KeyError as exc:
                viewer.notify(error_message(str(exc.args[0])))
                return
            self.style_name = msg["name"]
            self._build_settings = (vec, dict(self.scales))
            self.pipeline.set_style(vec)
            self.broadcast_state("style")
        elif kind == "guidance":
            self.scales = {"audio": msg["audio"], "style": msg["style"]}
            self._build_settings = (self._build_settings[0], dict(self.scales))
            self.pipeline.rebuild()
            self.broadcast_state("guidance")
        elif kind == "reset":
            self.pipeline.rebuild()
            self.broadcast_state("reset")
        elif kind == "pause":
            if msg["paused"] != self.paused:
                self.paused = msg["paused"]
                self.pipeline.set_paused(self.paused)
            self.broadcast_state("pause")
        elif kind == "audio_start":
            self._start_upstream(viewer, msg)
        elif kind == "audio_end":
            if self.upstream_owner is not viewer:
                viewer.notify(error_message("audio_end without audio_start"))
                return
            self._end_upstream(viewer)

    def _start_upstream(self, viewer: Viewer, msg: dict) -> None:
        if self.upstream_owner is viewer:
            viewer.notify(error_message("audio already started on this connection (send audio_end first)"))
            return
        if self.upstream_owner is not None:
            viewer.notify(error_message(f"session {self.name!r} already has an upstream audio client"))
            return
        source = UpstreamSource(rate=msg["rate"], channels=msg["channels"], dtype=msg["dtype"])
        viewer.upstream, viewer.upstream_spec = source, msg
        viewer.last_audio = time.monotonic()
        self.upstream_owner = viewer
        self.pipeline.set_upstream(source)
        log.info("session %s: upstream audio from %s (%d Hz, %d ch, %s)", self.name, viewer.peer, msg["rate"],
                 msg["channels"], msg["format"])

    def _end_upstream(self, viewer: Viewer) -> None:
        if viewer.upstream is not None:
            viewer.upstream.end()  # the pipeline flushes its last frames, then resumes the own source
        viewer.upstream, viewer.upstream_spec = None, None
        if self.upstream_owner is viewer:
            self.upstream_owner = None
        self.last_active = time.monotonic()

    def audio(self, viewer: Viewer, data: bytes) -> None:
        """A binary message: PCM from the upstream client. Raises ProtocolError (close 1008)."""
        if viewer.upstream is None or self.upstream_owner is not viewer:
            raise ProtocolError("binary audio before audio_start")
        size = audio_frame_bytes(viewer.upstream_spec)
        if len(data) % size:
            raise ProtocolError(f"PCM message of {len(data)} bytes is not a whole number of "
                                f"{size}-byte sample frames")
        if data:
            viewer.upstream.push(bytes(data))
        viewer.last_audio = time.monotonic()

    def check_upstream_idle(self, idle_s: float) -> None:
        owner = self.upstream_owner
        if owner is not None and time.monotonic() - owner.last_audio > idle_s:
            self.metrics.add_timeout("upstream_idle")
            log.warning("session %s: no upstream audio from %s for %g s: audio_end assumed", self.name,
                        owner.peer, idle_s)
            owner.notify(error_message(f"no upstream audio for {idle_s:g} s: audio_end assumed"))
            self._end_upstream(owner)

    def summary(self) -> dict:
        return {"viewers": len(self.viewers), "source": self.source, "paused": self.paused,
                "style": self.style_name, "guidance": dict(self.scales), "frames": self.frames,
                "generations": self.pipeline.generations}

    async def close(self) -> None:
        """Ends the upstream and the pipeline (its last frames are still published)."""
        self.closed = True
        if self.upstream_owner is not None:
            self._end_upstream(self.upstream_owner)
        await self.loop.run_in_executor(None, self.pipeline.close)
