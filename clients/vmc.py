"""VMC bridge: frames from `dpt-live serve` -> VMC protocol (OSC over UDP) for VTuber apps
(VSeeFace, VNyan, Warudo, ...). `dpt-live vmc --url ws://HOST:PORT --token T`.

25 fps frames arrive with network jitter; an adaptive jitter buffer (clients/playout.py) places
them on this machine's clock and the bridge sends one OSC bundle per tick at the app's rate (default 60 Hz),
interpolating between frames. The mapping itself is clients/vmc_map.py."""

from __future__ import annotations

import logging
import math
import signal
import threading
import time

import numpy as np

from clients.playout import Playout
from clients.vmc_map import ALL_BLINKS, BlinkShaper, VmcMapper, smoothstep

log = logging.getLogger(__name__)


def _smoothing_group(name: str) -> str:
    """The mapping's smoothing_ms group of a blendshape name."""
    return "blink" if name in ALL_BLINKS else "eyes" if name.startswith("eyeLook") else "mouth"


def _pack(exp, pose, eyes) -> np.ndarray:
    """One vector per frame for interpolation: exp (50) + pose (6) + eyes (4) + eyes-valid (1)."""
    out = np.zeros(61, dtype=np.float64)
    out[:50] = np.asarray(exp, dtype=np.float64)[:50]
    out[50:56] = pose
    if eyes is not None:
        out[56:60] = eyes
        out[60] = 1.0
    return out


class VmcBridge:
    """Frames in (``push``), one OSC bundle out per ``tick``. Thread-safe between one pushing
    thread and the ticking thread."""

    def __init__(self, target: tuple[str, int], mapper: VmcMapper, rate: float = 60.0, delay: float | None = None,
                 stale_s: float = 0.5):
        from pythonosc.udp_client import UDPClient

        self.client = UDPClient(*target)
        self.mapper = mapper
        self.rate = rate
        self.playout = Playout(delay=delay)
        self.stale_s = stale_s  # after this long without new frames the mouth relaxes to rest
        self.tau_s = {group: ms / 1000.0 for group, ms in mapper.m["smoothing_ms"].items()}
        self.lock = threading.Lock()
        self.smoothed: dict[str, float] = {}
        self.head: dict | None = None
        self.last_tick: float | None = None
        self.packets = 0
        self.frames_in = 0
        self.blink = BlinkShaper(mapper.m["blink"]) if mapper.m["blink"]["shape"] else None
        self.ease_s = mapper.m["reset_ease_ms"] / 1000.0
        self.reset_pending = False
        self.ease: tuple[float, dict[str, float], np.ndarray] | None = None  # (start, blend offsets, rot offset)
        self.last_out: tuple[dict[str, float], np.ndarray] | None = None
        self.delays: list[float] = []  # the jitter buffer's delay at each bundle (s), for the summary

    def push(self, exp, pose, eyes, audio_time: float, now: float, reset: bool = False) -> None:
        with self.lock:
            self.playout.push(audio_time, _pack(exp, pose, eyes), now, reset)
            self.frames_in += 1
            self.mapper.observe(exp, pose)
            if reset and self.frames_in > 1:
                self.reset_pending = True

    def _smooth(self, name: str, target: float, dt: float) -> float:
        tau = self.tau_s.get(_smoothing_group(name), 0.0)
        prev = self.smoothed.get(name)
        value = target if prev is None or tau <= 0 else prev + (1 - math.exp(-dt / tau)) * (target - prev)
        self.smoothed[name] = value
        return value

    def values(self, now: float):
        """(blendshapes, bones) for time ``now``; None when no frame has arrived yet."""
        with self.lock:
            vec, past = self.playout.sample(now)
        if vec is None:
            return None
        dt = 1.0 / self.rate if self.last_tick is None else max(now - self.last_tick, 1e-4)
        self.last_tick = now
        exp, pose = vec[:50], vec[50:56]
        eyes = vec[56:60] if vec[60] > 0.5 else None
        stale = past > self.stale_s
        blends = self.mapper.blendshapes(exp, pose, eyes)
        rot = self.mapper.head_rotation(pose)
        if stale:  # stream stalled, paused or ended: relax the face (over ~0.1 s) instead of freezing it
            keep = math.exp(-dt / 0.1)
            blends = {k: keep * self.smoothed.get(k, 0.0) for k in blends}
        blends, rot = self._eased(blends, rot, now)
        if self.blink is not None:  # full, natural blinks at the bundle rate, also while paused
            lid = None if eyes is None or stale else max(float(eyes[0]), float(eyes[1]))
            closure = self.blink.value(now, lid)
            blends.update({k: closure for k in blends if k in ALL_BLINKS})
        blends = {k: v if (k in ALL_BLINKS and self.blink is not None) else self._smooth(k, v, dt)
                  for k, v in blends.items()}
        bones = self.mapper.bones_from(rot, eyes)
        tau = self.tau_s.get("head", 0.0)
        if tau > 0 and self.head is not None:  # nlerp towards the new rotation
            a = 1 - math.exp(-dt / tau)
            for name, (p, q) in bones.items():
                if name in self.head:
                    q0 = np.array(self.head[name][1])
                    q1 = np.array(q) * (1 if np.dot(q0, q) >= 0 else -1)
                    qn = q0 + a * (q1 - q0)
                    bones[name] = (p, tuple(float(x) for x in qn / np.linalg.norm(qn)))
        self.head = bones
        return blends, bones

    def _eased(self, blends: dict[str, float], rot: np.ndarray, now: float):
        """After a generator reset the new motion starts where the old one was and takes over
        within reset_ease_ms (smoothstep), so nothing jumps."""
        with self.lock:
            pending, self.reset_pending = self.reset_pending, False
        if pending and self.last_out is not None and self.ease_s > 0:
            old_blends, old_rot = self.last_out
            self.ease = (now, {k: old_blends.get(k, v) - v for k, v in blends.items()}, old_rot - rot)
        if self.ease is not None:
            start, db, dr = self.ease
            w = 1.0 - smoothstep((now - start) / self.ease_s)
            if w <= 0:
                self.ease = None
            else:
                blends = {k: min(1.0, max(0.0, v + w * db.get(k, 0.0))) for k, v in blends.items()}
                rot = rot + w * dr
        self.last_out = (dict(blends), rot.copy())
        return blends, rot

    def bundle(self, blends: dict[str, float], bones: dict, now: float) -> bytes:
        from pythonosc.osc_bundle_builder import IMMEDIATELY, OscBundleBuilder
        from pythonosc.osc_message_builder import OscMessageBuilder

        def msg(address, *args):
            b = OscMessageBuilder(address=address)
            for a in args:
                b.add_arg(a, "s" if isinstance(a, str) else "i" if isinstance(a, int) else "f")
            return b.build()

        bb = OscBundleBuilder(IMMEDIATELY)
        bb.add_content(msg("/VMC/Ext/OK", 1))
        bb.add_content(msg("/VMC/Ext/T", float(now)))
        for name, (p, q) in bones.items():
            bb.add_content(msg("/VMC/Ext/Bone/Pos", name, *(float(x) for x in p), *(float(x) for x in q)))
        for name, v in blends.items():
            bb.add_content(msg("/VMC/Ext/Blend/Val", name, float(v)))
        bb.add_content(msg("/VMC/Ext/Blend/Apply"))
        return bb.build()

    def tick(self, now: float) -> bool:
        """Send one bundle for time ``now``; False when there is nothing to send yet."""
        vals = self.values(now)
        if vals is None:
            return False
        self.client.send(self.bundle(*vals, now))
        self.packets += 1
        if len(self.delays) < 1_000_000:
            self.delays.append(self.playout.delay)
        return True

    def summary(self) -> str:
        """Bundles, frames and the jitter buffer's delay (what the bridge adds to the latency)."""
        text = f"sent {self.packets} bundles from {self.frames_in} frames"
        if self.delays:
            p50, p95 = np.percentile(np.array(self.delays) * 1000, [50, 95])
            mode = "fixed" if self.playout.fixed else "adaptive"
            text += (f"; {mode} buffer delay p50 {p50:.0f} ms, p95 {p95:.0f} ms, "
                     f"{self.playout.underruns} late frames, {self.playout.resets} resets")
        return text


def parse_target(text: str) -> tuple[str, int]:
    from clients.ws_client import ClientError

    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ClientError(f"--target {text!r}: expected HOST:PORT, e.g. 127.0.0.1:39539")
    return host.strip("[]"), int(port)


def bridge_mapping(args, hello: dict | None = None) -> dict:
    """The mapping the bridge runs: defaults, the model's fitted map from the server's hello
    (``avatar_map``), the --mapping file, then the command-line options."""
    from clients.vmc_map import MappingError, load_mapping
    from clients.ws_client import ClientError

    g = getattr
    smoothing = None if g(args, "smooth_ms", None) is None else {"mouth": args.smooth_ms}
    gains = None if g(args, "mouth_gain", None) is None else {v: args.mouth_gain for v in ("A", "I", "U", "E", "O")}
    served = (hello or {}).get("avatar_map") or {}
    try:
        return load_mapping(g(args, "mapping", None), base=served, smoothing_ms=smoothing, gains=gains,
                            neck_share=g(args, "neck_share", None), mirror=g(args, "mirror", False) or None,
                            calibrate_s=g(args, "calibrate", None), bones=g(args, "bones", None))
    except MappingError as exc:
        raise ClientError(str(exc)) from exc


def run_bridge(args) -> int:
    from clients.ws_client import ClientError, StreamClient

    if not 1 <= args.rate <= 240:
        raise ClientError(f"--rate {args.rate}: expected 1..240 Hz")
    if args.delay_ms is not None and not 0 <= args.delay_ms <= 2000:
        raise ClientError(f"--delay-ms {args.delay_ms}: expected 0..2000")
    target = parse_target(args.target)
    mapping = bridge_mapping(args)  # the options are checked before connecting
    if args.print_mapping and not args.url:
        import json

        print(json.dumps(mapping, indent=2))
        return 0
    if not args.url:
        raise ClientError("--url is required (the server's ws://HOST:PORT)")
    client = StreamClient(args.url, token=args.token, session=args.session, retry_first=True)
    failure: list[BaseException] = []
    stop = threading.Event()
    ready = threading.Event()
    holder: list[VmcBridge] = []

    def reader():
        try:
            for f in client.frames(stop=stop):
                if not holder:  # the first frame: the hello (with the model's avatar map) is known
                    m = bridge_mapping(args, client.hello)
                    holder.append(VmcBridge(target, VmcMapper(m, arkit=args.arkit), rate=args.rate,
                                            delay=None if args.delay_ms is None else args.delay_ms / 1000))
                    ready.set()
                    if args.print_mapping:
                        break
                holder[0].push(f.exp, f.pose, f.eyes, f.audio_time, time.monotonic(), f.reset)
                if stop.is_set():
                    break
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            failure.append(exc)
        finally:
            stop.set()
            ready.set()

    thread = threading.Thread(target=reader, name="vmc-reader", daemon=True)
    thread.start()
    print(f"VMC bridge: {args.url} -> udp://{target[0]}:{target[1]} at {args.rate:g} Hz"
          f"{' (+ARKit)' if args.arkit else ''}; Ctrl-C stops")
    period = 1.0 / args.rate
    start = time.monotonic()
    # Ctrl-C and SIGTERM (a service manager, a benchmark) set the stop flag the loops check, so the
    # bridge always closes its socket and prints its summary; installed explicitly because a
    # process started in the background inherits SIGINT ignored
    handled = (signal.SIGINT, signal.SIGTERM) if threading.current_thread() is threading.main_thread() else ()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in handled}
    try:
        while not ready.wait(0.1) and not stop.is_set():
            if args.seconds is not None and time.monotonic() - start >= args.seconds:
                break
        if args.print_mapping and holder:
            import json

            print(json.dumps(holder[0].mapper.m, indent=2))
            return 0
        next_tick = time.monotonic()
        while holder and not stop.is_set():
            now = time.monotonic()
            if args.seconds is not None and now - start >= args.seconds:
                break
            holder[0].tick(now)
            next_tick += period
            if next_tick < now:  # fell behind (suspended, overloaded): do not burst to catch up
                next_tick = now + period
            stop.wait(max(0.0, next_tick - time.monotonic()))
    except KeyboardInterrupt:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        stop.set()
        client.close()
        thread.join(timeout=2)
    if holder:
        fitted = "measured map of the model" if holder[0].mapper.fitted is not None else "default map (no avatar_map.json)"
        print(f"{holder[0].summary()} ({fitted})")
    if failure and not isinstance(failure[0], (KeyboardInterrupt,)):
        exc = failure[0]
        if isinstance(exc, ClientError):
            raise exc
        raise ClientError(f"stream reader failed: {type(exc).__name__}: {exc}") from exc
    return 0
