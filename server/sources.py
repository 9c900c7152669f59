"""The server's own audio sources on top of streaming.sources: a file played in a loop, and a
client's PCM upstream that can be woken (light: no torch, so argument errors come fast)."""

from __future__ import annotations

import queue
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
    most of the process's GIL traffic."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._direct: Callable[[AudioBlock], None] | None = None
        self._on_stop: Callable[[], None] | None = None
        self.failure: BaseException | None = None  # what the direct consumer raised
        self.stopped: str | None = None  # direct mode: "end", or why the source was lost

    def wake(self) -> None:
        self._queue.put(AudioBlock(np.zeros(0, np.float32), self.clock()))

    def attach(self, consume: Callable[[AudioBlock], None], on_stop: Callable[[], None],
               first: AudioBlock | None = None) -> None:
        """Hand every block to ``consume`` from now on: ``first`` (a block a reader took already),
        then what is queued, in order, then each block as it is pushed. ``on_stop()`` is called
        when the source ends or is lost (:attr:`stopped`) or ``consume`` raises (:attr:`failure`;
        nothing more is consumed)."""
        with self._lock:
            self._direct, self._on_stop = consume, on_stop
            if first is not None:
                self._consume(first)
            while self._direct is not None:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _END or isinstance(item, AudioSourceLost):
                    self._stop("end" if item is _END else str(item))
                    break
                self._consume(item)

    def detach(self) -> None:
        """Back to queueing (for the next reader); a stop already seen is queued again for it."""
        with self._lock:
            self._direct = self._on_stop = None
            if self.stopped is not None:
                self._queue.put(_END if self.stopped == "end" else AudioSourceLost(self.stopped))

    def _consume(self, block: AudioBlock) -> None:
        if not len(block.samples) or self.failure is not None:
            return
        try:
            self._direct(block)
        except Exception as exc:  # noqa: BLE001 - the pipeline reports it; the pusher (the event loop) goes on
            self.failure = exc
            self._on_stop()

    def _stop(self, why: str) -> None:
        self.stopped = why
        self._on_stop()

    def _deliver(self, block: AudioBlock) -> None:
        if self._direct is not None:
            self._consume(block)
        else:
            super()._deliver(block)

    def _finish(self, item) -> None:
        if self._direct is not None:
            self._stop("end" if item is _END else str(item))
        else:
            super()._finish(item)
