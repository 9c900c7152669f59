"""The server's own audio sources on top of streaming.sources: a file played in a loop, and a
client's PCM upstream that can be woken (light: no torch, so argument errors come fast)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from streaming.sources import AudioBlock, AudioSource, FileSource, PushSource


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
    view skips) so that a pause or a switch takes effect while the client sends nothing."""

    def wake(self) -> None:
        self._queue.put(AudioBlock(np.zeros(0, np.float32), self.clock()))
