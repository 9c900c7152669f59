"""One server session's audio → motion worker thread.

The thread owns every audio source object of its session (sources are read and closed only here,
so a FileSource is never closed under a reader) and runs ``streaming.runner.run_stream`` over one
**generation** at a time: a fresh ``StreamSession`` fed from the active source through a
:class:`_View` that ends the generation when the session asks for a rebuild (reset, guidance),
pauses, switches source (upstream start/end) or closes. Between generations the source keeps
running, so a rebuild loses no audio. Frames leave through ``emit`` (the hub posts them to the
event loop); nothing here waits for a viewer."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from server.protocol import WireFrame, encode_binary_frame
from server.sources import UpstreamSource
from streaming.runner import run_stream
from streaming.session import Frame, StepInfo, StreamSession
from streaming.sources import AudioBlock, AudioSource, AudioSourceLost

log = logging.getLogger("dpt_live.serve")


@dataclass
class FrameItem:
    """A frame ready for the viewers: the wire frame, its binary encoding (done once, here) and
    the perf_counter time the pipeline emitted it (start of the server-overhead measurement)."""
    wire: WireFrame
    binary: bytes
    t_emit: float
    json_text: str | None = None  # filled by the first JSON viewer


class Pipeline:
    """build(on_step) -> StreamSession; own_factory() -> AudioSource (the session's own file/mic
    source, or None); emit(items: list[FrameItem], latencies_s: list[float]), on_source(kind),
    on_step(StepInfo), on_error(message) are called from the worker thread."""

    def __init__(self, name: str, build: Callable[..., StreamSession],
                 own_factory: Callable[[], AudioSource] | None, own_kind: str,
                 emit: Callable[[list[FrameItem]], None], on_source: Callable[[str], None],
                 on_step: Callable[[StepInfo], None] | None = None,
                 on_error: Callable[[str], None] | None = None):
        self.name, self.build, self.own_factory, self.own_kind = name, build, own_factory, own_kind
        self.emit, self.on_source, self.on_step, self.on_error = emit, on_source, on_step, on_error
        self._cond = threading.Condition()
        self._closing = False
        self._paused = False
        self._rebuilds = 0
        self._own_enabled = own_factory is not None
        self._upstream: UpstreamSource | None = None
        self._actions: list[Callable[[StreamSession], None]] = []
        self._carry: tuple[Iterator[AudioBlock], AudioBlock] | None = None  # read, for the next generation
        self.source = "none"
        self.seq = 0  # frames of this session over all generations
        self.generations = 0
        self._thread = threading.Thread(target=self._run, name=f"pipeline-{name}", daemon=True)

    # --- called from the event loop ----------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def _changed(self) -> None:
        self._cond.notify_all()
        if self._upstream is not None:
            self._upstream.wake()

    def set_style(self, vec: np.ndarray | None) -> None:
        with self._cond:
            self._actions.append(lambda s: s.set_style(vec))
            self._cond.notify_all()  # a generation fed directly by its upstream waits here

    def rebuild(self) -> None:
        with self._cond:
            self._rebuilds += 1
            self._changed()

    def set_paused(self, paused: bool) -> None:
        with self._cond:
            self._paused = paused
            self._changed()

    def set_upstream(self, source: UpstreamSource | None) -> None:
        with self._cond:
            old, self._upstream = self._upstream, source
            if old is not None and old is not source:
                old.close()
                old.wake()
            self._changed()

    def close(self, timeout: float = 10.0) -> None:
        """Ends the current generation (its last frames are still emitted) and the thread."""
        with self._cond:
            self._closing = True
            self._changed()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # --- worker thread -----------------------------------------------------------------------------
    def _key(self):
        with self._cond:
            return self._key_locked()

    def _key_locked(self):
        return (self._closing, self._paused, self._rebuilds, id(self._upstream))

    def _take_actions(self) -> list[Callable[[StreamSession], None]]:
        with self._cond:
            actions, self._actions = self._actions, []
        return actions

    def _set_source(self, kind: str) -> None:
        if kind != self.source:
            self.source = kind
            self.on_source(kind)

    def _run(self) -> None:
        own: tuple[AudioSource, Iterator[AudioBlock]] | None = None
        up_iter: tuple[UpstreamSource, Iterator[AudioBlock]] | None = None
        try:
            while True:
                with self._cond:
                    while not self._closing and self._upstream is None and not self._own_enabled:
                        self._cond.wait()
                    if self._closing:
                        return
                    upstream, paused = self._upstream, self._paused
                if upstream is not None:
                    if own is not None:  # suspended: closed here, reopened when the upstream ends
                        own[0].close()
                        own = None
                    if up_iter is None or up_iter[0] is not upstream:
                        up_iter = (upstream, upstream.blocks())
                    it, kind = up_iter[1], "upstream"
                else:
                    up_iter = None
                    if own is None:
                        try:
                            src = self.own_factory()
                            own = (src, src.blocks())
                        except Exception as exc:  # noqa: BLE001 - e.g. the microphone went away
                            log.error("session %s: cannot open its %s source: %s", self.name, self.own_kind, exc)
                            self._own_enabled = False
                            self._set_source("none")
                            continue
                    it, kind = own[1], self.own_kind
                self._set_source(kind)
                try:
                    ended = self._drain_one(it) if paused else self._generation(it, upstream)
                except Exception as exc:  # noqa: BLE001 - a broken pipeline must not take the server down
                    log.exception("session %s: pipeline failed", self.name)
                    if self.on_error is not None:
                        self.on_error(f"pipeline failed: {exc}; the audio source was stopped")
                    ended = True  # the source is dropped: the session waits for a new one
                if ended:
                    if kind == "upstream":
                        with self._cond:
                            if self._upstream is upstream:
                                self._upstream = None
                        up_iter = None
                        if not self._own_enabled:
                            self._set_source("none")
                    else:
                        own[0].close()
                        own = None
                        self._own_enabled = False
                        log.info("session %s: its %s source ended", self.name, kind)
                        self._set_source("none")
        finally:
            if own is not None:
                own[0].close()
            with self._cond:
                if self._upstream is not None:
                    self._upstream.close()

    def _drain_one(self, it: Iterator[AudioBlock]) -> bool:
        """Paused: read a block and throw it away (a live source must not queue up). True at the
        end of the source."""
        self._carry = None
        try:
            next(it)
        except StopIteration:
            return True
        except AudioSourceLost as exc:
            log.error("session %s: audio source lost while paused: %s", self.name, exc)
            return True
        return False

    def _generation(self, it: Iterator[AudioBlock], upstream: UpstreamSource | None = None) -> bool:
        """One StreamSession over the source until the view ends it; True when the source ended."""
        key = self._key()
        self._take_actions()  # a fresh session is built with the current style already
        stream = self.build(on_step=self.on_step)
        self.generations += 1
        view = _View(self, it, key, stream)
        first = [True]

        def on_frames(frames: list[Frame]) -> None:
            items = []
            for f in frames:
                wire = WireFrame(seq=self.seq, audio_time=f.audio_time, emit_time=stream.start_wall + f.emit_time,
                                 exp=f.exp, pose=f.pose, eyes=f.eyes, reset=first[0], degraded=bool(f.shed))
                first[0] = False
                self.seq += 1
                items.append(FrameItem(wire, encode_binary_frame(wire), stream.t0 + f.emit_time))
            self.emit(items, [f.latency for f in frames])

        if upstream is not None and stream.run_async(on_frames):
            return self._direct_generation(upstream, it, key, stream, on_frames)
        result = run_stream(view, stream, on_frames)
        log.debug("session %s: generation %d ended (%s, %d frames)", self.name, self.generations,
                  result.reason, result.frames)
        return view.exhausted or result.reason.startswith("source lost")


    def _direct_generation(self, upstream: UpstreamSource, it: Iterator[AudioBlock], key, stream: StreamSession,
                           on_frames: Callable[[list[Frame]], None]) -> bool:
        """A generation fed by the upstream in the event loop's thread (UpstreamSource.attach):
        this thread only applies queued style changes and waits for the key to change or the
        upstream to stop. True when the upstream ended or was lost."""
        carry, self._carry = self._carry, None
        first = carry[1] if carry is not None and carry[0] is it else None
        upstream.attach(lambda block: stream.feed(block.samples, block.time), self._wake, first, stream.can_take)
        try:
            while True:
                with self._cond:
                    while True:
                        actions, self._actions = self._actions, []
                        for action in actions:
                            action(stream)
                        changed = self._key_locked() != key
                        if changed or upstream.stopped is not None or upstream.failure is not None or upstream.backlog:
                            break
                        self._cond.wait()
                if changed or upstream.stopped is not None or upstream.failure is not None:
                    break
                # a client ahead of its session (faster than real time): feed what the event loop
                # held here, where waiting for the session's steps stalls no one else
                while self._key() == key and (block := upstream.take_held()) is not None:
                    stream.feed(block.samples, block.time)
        finally:
            upstream.detach()
        stopped, failure = upstream.stopped, upstream.failure
        if failure is not None:
            raise failure
        if stopped is not None and stopped != "end":
            log.error("audio source lost: %s; ending the session with the audio received so far", stopped)
        on_frames(stream.finish())
        log.debug("session %s: generation %d ended (direct, %s)", self.name, self.generations, stopped or "changed")
        return stopped is not None

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()


class _View(AudioSource):
    """The active source as seen by one generation: applies queued style changes between blocks,
    skips wake-up blocks, and ends when the pipeline's key (pause, rebuild, upstream, closing)
    changes. Closing it leaves the real source open (the pipeline owns it)."""

    def __init__(self, pipeline: Pipeline, it: Iterator[AudioBlock], key, stream: StreamSession):
        self.pipeline, self.it, self.key, self.stream = pipeline, it, key, stream
        self.exhausted = False

    def blocks(self):
        p = self.pipeline
        carry, p._carry = p._carry, None
        if carry is not None and carry[0] is self.it:
            yield carry[1]
        while True:
            for action in p._take_actions():
                action(self.stream)
            if p._key() != self.key:
                return
            try:
                block = next(self.it)
            except StopIteration:
                self.exhausted = True
                return
            if len(block.samples) == 0:
                continue
            if p._key() != self.key:  # changed while waiting: this audio belongs to the next generation
                p._carry = (self.it, block)
                return
            yield block

    def close(self):
        pass
