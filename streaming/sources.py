"""Audio sources behind one interface: ``blocks()`` yields 16 kHz mono float32 blocks stamped with
the wall time (``time.perf_counter``) at which they arrived, and ends with the stream.

- :class:`FileSource`: a file read block by block, as fast as possible or paced in real time;
- :class:`PushSource`: blocks pushed by other code (a server, tests) from any thread;
- :class:`MicrophoneSource`: a sounddevice/PortAudio input device.

Every source converts its own format (declared rate and channels, int or float PCM) with
streaming/audio_io.py; a source that stops mid-stream raises :class:`AudioSourceLost`, which the
runner turns into a clean end of the session."""

from __future__ import annotations

import logging
import queue
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffposetalk.audio_io import StreamResampler, pcm_to_float
from diffposetalk.errors import UserError
from diffposetalk.units import SAMPLE_RATE

log = logging.getLogger("dpt_live.stream")


LIVE_QUALITY = "live"  # resampling for live sources: ~3 ms of filter delay (diffposetalk/audio_io.py)


class AudioSourceError(UserError):
    """A source cannot be opened (no device, missing library, unreadable file)."""


class AudioSourceLost(Exception):
    """A source stopped delivering audio in the middle of a stream."""


@dataclass
class AudioBlock:
    samples: np.ndarray  # (n,) float32, 16 kHz mono
    time: float  # time.perf_counter() when the block had arrived


class AudioSource(ABC):
    @abstractmethod
    def blocks(self) -> Iterator[AudioBlock]:
        """Blocks until the end of the stream; raises AudioSourceLost if the source dies."""

    def close(self) -> None:
        """Release the device/file; blocks() ends soon after."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class FileSource(AudioSource):
    """An audio file read in ``block_ms`` blocks (memory stays flat for long files). With
    ``realtime`` each block is released when it would have been spoken, and stamped with that
    time, so latency is measured against when audio really arrives even if the consumer lags."""

    def __init__(self, path: str | Path, realtime: bool = False, block_ms: int = 20,
                 clock: Callable[[], float] = time.perf_counter, sleep: Callable[[float], None] = time.sleep):
        import soundfile as sf

        self.path = Path(path)
        if not self.path.is_file():
            raise AudioSourceError(f"audio file not found: {self.path}")
        try:
            self._file = sf.SoundFile(str(self.path))
        except Exception as exc:  # libsndfile's message names the problem
            raise AudioSourceError(f"cannot read audio file {self.path}: {exc}") from exc
        self.rate = self._file.samplerate
        self.realtime, self.clock, self.sleep = realtime, clock, sleep
        self.block = max(1, self.rate * block_ms // 1000)
        self.duration = self._file.frames / self.rate if self._file.frames > 0 else None

    def blocks(self):
        resample = StreamResampler(self.rate)
        t0 = self.clock()
        read = 0
        while True:
            data = self._file.read(self.block, dtype="float32", always_2d=True)
            if len(data) == 0:
                break
            read += len(data)
            due = t0 + read / self.rate
            if self.realtime:
                wait = due - self.clock()
                if wait > 0:
                    self.sleep(wait)
            out = resample(data)
            if len(out):
                yield AudioBlock(out, due if self.realtime else self.clock())
        tail = resample.flush()
        if len(tail):
            yield AudioBlock(tail, t0 + read / self.rate if self.realtime else self.clock())

    def close(self):
        self._file.close()


_END = object()


class PushSource(AudioSource):
    """Fed from other code: ``push(pcm)`` (bytes or array, interleaved, in the declared rate,
    channels and sample type), then ``end()``; ``lost(reason)`` reports a dead upstream (a
    dropped connection). Conversion runs in the pushing thread, so ``blocks()`` only hands over."""

    def __init__(self, rate: int = SAMPLE_RATE, channels: int = 1, dtype: str = "float32",
                 clock: Callable[[], float] = time.perf_counter):
        if channels < 1:
            raise UserError("channels must be >= 1")
        self.channels, self.dtype, self.clock = channels, dtype, clock
        self._resample = StreamResampler(rate, quality=LIVE_QUALITY)
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.RLock()  # the resampler's stream state is not thread-safe; blocks leave in order
        self._ended = False

    def push(self, data) -> None:
        if self._ended:
            raise RuntimeError("push after end()")
        pcm = pcm_to_float(data, self.dtype, self.channels)
        with self._lock:
            out = self._resample(pcm)
            if len(out):
                self._deliver(AudioBlock(out, self.clock()))

    def end(self) -> None:
        with self._lock:
            if self._ended:
                return
            self._ended = True
            tail = self._resample.flush()
            if len(tail):
                self._deliver(AudioBlock(tail, self.clock()))
            self._finish(_END)

    def lost(self, reason: str) -> None:
        with self._lock:
            self._ended = True
            self._finish(AudioSourceLost(reason))

    # under the lock: blocks and the end leave in the order they were made
    def _deliver(self, block: AudioBlock) -> None:
        self._queue.put(block)

    def _finish(self, item) -> None:
        self._queue.put(item)

    def blocks(self):
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if isinstance(item, AudioSourceLost):
                raise item
            yield item

    def close(self):
        if not self._ended:
            self._ended = True
            self._queue.put(_END)


def import_sounddevice():
    """sounddevice, or a clear error: it needs the PortAudio shared library at import time."""
    try:
        import sounddevice
    except OSError as exc:  # sounddevice raises OSError when libportaudio is missing
        raise AudioSourceError(f"microphone input needs the PortAudio library ({exc}); install it, e.g. "
                               "`apt-get install libportaudio2`, or stream a file with --audio") from exc
    except ImportError as exc:
        raise AudioSourceError("microphone input needs the 'sounddevice' package "
                               "(`pip install sounddevice`), or stream a file with --audio") from exc
    return sounddevice


def input_devices(sd) -> list[tuple[int, str, float]]:
    """(index, name, default rate) of every device with input channels."""
    try:
        devices = sd.query_devices()
    except Exception as exc:  # PortAudio errors when the audio system itself is broken
        raise AudioSourceError(f"cannot list audio devices: {exc}") from exc
    return [(i, d["name"], float(d["default_samplerate"])) for i, d in enumerate(devices)
            if d.get("max_input_channels", 0) > 0]


class MicrophoneSource(AudioSource):
    """A live input device. ``device``: index, a part of its name, or None for the default input.
    If no audio arrives for ``stall_s`` or PortAudio ends the stream (device unplugged), blocks()
    raises AudioSourceLost."""

    def __init__(self, device: int | str | None = None, block_ms: int = 20, stall_s: float = 2.0,
                 sd=None):
        self.sd = sd or import_sounddevice()
        inputs = input_devices(self.sd)
        if not inputs:
            raise AudioSourceError("no audio input device found (no sound card or microphone on this "
                                   "machine?); stream a file with --audio instead")
        self.index, self.name, self.rate = self._pick(inputs, device)
        self.stall_s = stall_s
        self._queue: queue.Queue = queue.Queue()
        self._closing = False
        self.overflows = 0
        try:
            self._stream = self.sd.InputStream(
                device=self.index, channels=1, samplerate=self.rate, dtype="float32",
                blocksize=int(self.rate * block_ms / 1000), callback=self._callback,
                finished_callback=self._finished)
            self._stream.start()
        except Exception as exc:
            raise AudioSourceError(f"cannot open audio input {self.name!r}: {exc}") from exc
        log.info("microphone: %s (device %d, %d Hz)", self.name, self.index, self.rate)

    @staticmethod
    def _pick(inputs, device):
        if device is None:
            return inputs[0][0], inputs[0][1], int(inputs[0][2])
        for idx, name, rate in inputs:
            if (isinstance(device, int) or str(device).isdigit()) and idx == int(device):
                return idx, name, int(rate)
            if not str(device).isdigit() and str(device).lower() in name.lower():
                return idx, name, int(rate)
        listing = "; ".join(f"{i}: {n}" for i, n, _ in inputs)
        raise AudioSourceError(f"no audio input device {device!r} (inputs: {listing})")

    def _callback(self, indata, frames, time_info, status):  # PortAudio's thread: keep it short
        if status and status.input_overflow:
            self.overflows += 1
        self._queue.put((indata[:, 0].copy(), time.perf_counter()))

    def _finished(self):
        if not self._closing:
            self._queue.put(AudioSourceLost(f"the input stream of {self.name!r} stopped (device lost?)"))

    def blocks(self):
        resample = StreamResampler(self.rate, quality=LIVE_QUALITY)
        while True:
            try:
                item = self._queue.get(timeout=self.stall_s)
            except queue.Empty:
                item = _END if self._closing else AudioSourceLost(
                    f"{self.name!r} delivered no audio for {self.stall_s:g} s (device unplugged?)")
            if item is _END or isinstance(item, AudioSourceLost):
                tail = resample.flush()  # the audio still inside the resampler belongs to the stream
                if len(tail):
                    yield AudioBlock(tail, time.perf_counter())
                if item is _END:
                    return
                raise item
            samples, t = item
            out = resample(samples)
            if len(out):
                yield AudioBlock(out, t)

    def close(self):
        if self._closing:
            return
        self._closing = True
        try:
            self._stream.stop()
            self._stream.close()
        except Exception as exc:  # noqa: BLE001 - the device may already be gone; best effort
            log.debug("closing the input stream of %r: %s", self.name, exc)
        self._queue.put(_END)
