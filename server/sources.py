"""The server's own audio sources on top of streaming.sources: a file played in a loop, and a
client's PCM upstream that can be woken (light: no torch, so argument errors come fast)."""

from __future__ import annotations

import queue
from collections import deque
from collections.abc import Callable
from pathlib import Path

import numpy as np

from streaming.sources import _END, AudioBlock, AudioSource, AudioSourceLost, FileSource, PushSource


class LoopingFileSource(AudioSource):
    """``--audio FILE [--loop]``: the file in real time, started again at its end with ``loop``
    (one continuous stream: the pipeline is not rebuilt at the loop point)."""

    def __init__(self, path: str | Path, loop: bool = True, realtime: bool = True):
        self.path, self.loop, self.realtime = Path(path), loop, realtime
        self._current = FileSource(self.path, realtime=realtime)  # opened now: errors show at start-up
        self._closed = False

    def blocks(self):
        while not self._closed:
            got = 0
            for block in self._current.blocks():
                got += 1
                yield block
            self._current.close()
            if not self.loop or self._closed or got == 0:  # got == 0: an empty file would spin
                return
            self._current = FileSource(self.path, realtime=self.realtime)

    def close(self):
        self._closed = True
        self._current.close()


class UpstreamSource(PushSource):
    """A client's PCM upstream. ``wake`` unblocks a reader waiting for audio (an empty block the
    view skips) so that a pause or a switch takes effect while the client sends nothing.

    Direct mode (:meth:`attach`): the blocks are handed to a consumer in the pushing thread (the
    server's event loop) instead of queued for a reader thread. A session whose steps run on the
    batching scheduler takes a block in a fraction of a millisecond without waiting, so its
    pipeline thread need not wake 50 times a second: with tens of sessions those wake-ups were
    most of the process's GIL traffic. The pushing thread must never wait, though: a block the
    consumer cannot take at once (``accepts``: a client sending faster than real time has its
    session seconds behind) is *held*, with everything after it, and the reader thread feeds the
    held blocks itself (:meth:`take_held`, where waiting is fine) until none is left."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._direct: Callable[[AudioBlock], None] | None = None
        self._on_stop: Callable[[], None] | None = None
        self._accepts: Callable[[int], bool] | None = None
        self._held: deque = deque()  # blocks (and a stop) for the reader thread, in order
        self._draining = False  # the reader thread is feeding held blocks: new ones queue behind them
        self.failure: BaseException | None = None  # what the direct consumer raised
        self.stopped: str | None = None  # direct mode: "end", or why the source was lost

    def wake(self) -> None:
        self._queue.put(AudioBlock(np.zeros(0, np.float32), self.clock()))

    def attach(self, consume: Callable[[AudioBlock], None], on_stop: Callable[[], None],
               first: AudioBlock | None = None, accepts: Callable[[int], bool] | None = None) -> None:
        """Hand every block to ``consume`` from now on: ``first`` (a block a reader took already),
        then what is queued, in order, then each block as it is pushed. ``on_stop()`` is called
        when the source ends or is lost (:attr:`stopped`), when ``consume`` raises
        (:attr:`failure`; nothing more is consumed) and when blocks start being held
        (:attr:`backlog`: ``accepts(samples)`` said the consumer would have to wait)."""
        with self._lock:
            self._direct, self._on_stop, self._accepts = consume, on_stop, accepts
            if first is not None:
                self._offer(first)
            while self._direct is not None and self.stopped is None:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _END or isinstance(item, AudioSourceLost):
                    self._end_direct(item)
                    break
                self._offer(item)

    def detach(self) -> None:
        """Back to queueing (for the next reader): held blocks go back in front of the queue, and
        a stop already seen is queued again for it."""
        with self._lock:
            self._direct = self._on_stop = self._accepts = None
            rest = []
            while True:
                try:
                    rest.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            for item in [*self._held, *rest]:
                self._queue.put(item)
            self._held.clear()
            self._draining = False
            if self.stopped is not None:
                self._queue.put(_END if self.stopped == "end" else AudioSourceLost(self.stopped))

    @property
    def backlog(self) -> bool:
        """Blocks are held for the reader thread (or it is feeding them)."""
        return bool(self._held) or self._draining

    def take_held(self) -> AudioBlock | None:
        """For the reader thread: the oldest held block — None once none is left, and pushed
        blocks go straight to the consumer again. A held stop ends it (:attr:`stopped`)."""
        with self._lock:
            while self._held:
                item = self._held.popleft()
                if item is _END or isinstance(item, AudioSourceLost):
                    self._held.clear()
                    self._draining = False
                    self.stopped = "end" if item is _END else str(item)
                    return None
                return item
            self._draining = False
            return None

    def _offer(self, block: AudioBlock) -> None:
        if not len(block.samples) or self.failure is not None:
            return
        if self.backlog or (self._accepts is not None and not self._accepts(len(block.samples))):
            wake = not self.backlog
            self._held.append(block)
            self._draining = True
            if wake:
                self._on_stop()
            return
        try:
            self._direct(block)
        except Exception as exc:  # noqa: BLE001 - the pipeline reports it; the pusher (the event loop) goes on
            self.failure = exc
            self._on_stop()

    def _end_direct(self, item) -> None:
        if self.backlog:  # after the held audio
            self._held.append(item)
        else:
            self._stop("end" if item is _END else str(item))

    def _stop(self, why: str) -> None:
        self.stopped = why
        self._on_stop()

    def _deliver(self, block: AudioBlock) -> None:
        if self._direct is not None:
            self._offer(block)
        else:
            super()._deliver(block)

    def _finish(self, item) -> None:
        if self._direct is not None:
            self._end_direct(item)
        else:
            super()._finish(item)
