"""Recorder: `dpt-live record --url ws://HOST:PORT -o out.npz` writes the frames a server streams
in animate's coefficient layout (exp (T,50), pose (T,6), shape (T,100)) plus the stream's timing
(seq, audio_time, emit_time, recv_time), eyes and drop counts. Whatever arrived is written on
Ctrl-C, at the limit, or when the server goes away."""

from __future__ import annotations

import logging
import pathlib
import signal
import threading
import time

import numpy as np

from server.protocol import FPS

log = logging.getLogger(__name__)


class Recording:
    """Frames collected in memory (a 25 fps stream is ~1 MB per minute)."""

    def __init__(self, shape):
        self.shape = np.asarray(shape, dtype=np.float32).reshape(-1)
        self.rows: list[tuple] = []

    def add(self, f) -> None:
        eyes = np.full(4, np.nan, np.float32) if f.eyes is None else np.asarray(f.eyes, np.float32)
        self.rows.append((f.seq, f.audio_time, f.emit_time, f.recv_time, f.dropped, f.reset,
                          np.asarray(f.exp, np.float32), np.asarray(f.pose, np.float32), eyes))

    def __len__(self) -> int:
        return len(self.rows)

    def arrays(self) -> dict[str, np.ndarray]:
        n = len(self.rows)
        cols = list(zip(*self.rows)) if n else [[]] * 9
        return {
            "exp": np.stack(cols[6]) if n else np.zeros((0, 50), np.float32),
            "pose": np.stack(cols[7]) if n else np.zeros((0, 6), np.float32),
            "shape": np.tile(self.shape, (n, 1)),
            "seq": np.asarray(cols[0], np.int64),
            "audio_time": np.asarray(cols[1], np.float64),
            "emit_time": np.asarray(cols[2], np.float64),
            "recv_time": np.asarray(cols[3], np.float64),
            "dropped": np.asarray(cols[4], np.int64),
            "reset": np.asarray(cols[5], bool),
            "eyes": np.stack(cols[8]) if n else np.zeros((0, 4), np.float32),  # NaN rows: no eyes sent
        }

    def save(self, path: pathlib.Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        with open(tmp, "wb") as fh:  # np.savez on a handle: no '.npz' appended to the temp name
            np.savez(fh, **self.arrays())
        tmp.replace(path)  # a crash mid-write never leaves a truncated out.npz


def run_record(args) -> int:
    from clients.ws_client import ClientError, StreamClient

    if args.seconds is not None and args.seconds <= 0:
        raise ClientError(f"--seconds {args.seconds}: must be positive")
    if args.frames is not None and args.frames < 1:
        raise ClientError(f"--frames {args.frames}: must be at least 1")
    out = pathlib.Path(args.output)
    if out.suffix != ".npz":
        raise ClientError(f"-o {out}: the recording is an .npz file")
    if out.parent.exists() and not out.parent.is_dir():
        raise ClientError(f"-o {out}: {out.parent} is not a directory")

    client = StreamClient(args.url, token=args.token, session=args.session, reconnect=args.reconnect)
    rec: Recording | None = None
    reason = "end of stream"
    start = None
    error: BaseException | None = None
    # Ctrl-C sets a flag the frame loop checks: a KeyboardInterrupt raised inside the WebSocket
    # library's receive could leave the connection half-closed and the recording unsaved
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set()) \
        if threading.current_thread() is threading.main_thread() else None
    try:
        # Frames are read with a timeout so --seconds ends a silent stream too.
        stream = client.frames(timeout=args.idle_timeout, stop=stop)
        for frame in stream:
            if rec is None:
                rec = Recording(client.hello["template"]["shape"])
                start = time.monotonic()
                print(f"recording session {client.hello.get('session')!r} -> {out} (Ctrl-C stops)")
            rec.add(frame)
            if args.frames is not None and len(rec) >= args.frames:
                reason = f"{args.frames} frames"
                break
            if args.seconds is not None and time.monotonic() - start >= args.seconds:
                reason = f"{args.seconds:g} s"
                break
    except KeyboardInterrupt:
        reason = "Ctrl-C"
    except TimeoutError:
        reason = f"no message for {args.idle_timeout:g} s"
    except ClientError as exc:
        error = exc
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        client.close()
    if stop.is_set():
        reason = "Ctrl-C"
    if rec is None:
        rec = Recording(client.hello["template"]["shape"]) if client.hello else None
    if rec is not None and (len(rec) or error is None):
        rec.save(out)
        dropped = int(sum(r[4] for r in rec.rows))
        print(f"wrote {out}: {len(rec)} frames ({len(rec) / FPS:.1f} s), {dropped} dropped; stopped: "
              f"{reason if error is None else error}")
    if error is not None:
        raise error
    return 0
