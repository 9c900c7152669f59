"""`dpt-live bench-e2e`: glass-to-glass latency, measured through real components.

One run starts `dpt-live serve` (as `make run` does: the default model, --style big_mouth, the
demo speech looping until a microphone streams), a plain WebSocket client (`dpt-live record`,
clients/ws_client.py), the VMC bridge (`dpt-live vmc`) sending to an OSC receiver here
(python-osc), and headless Chromium (Debian's, through playwright) whose fake microphone plays
the onset recording (bench/e2e_signal.py). The page streams its microphone upstream exactly as a
user's does (clients/web/mic.js); a test hook (clients/web/e2e-hook.js, injected by playwright,
never loaded by the viewer itself) records the capture, frame arrival and render times. The page
is 320x240: there is no GPU here, so Chromium rasterises WebGL in software (SwiftShader) and a
larger canvas would make the measurement mostly about that. bench/e2e_stages.py turns all of it into
per-onset latencies and their stages.

Clocks: everything runs on this machine, and every time ends up on its system clock
(CLOCK_REALTIME, seconds since the Unix epoch). The server stamps emit_time with time.time(); the
Python clients (recorder) and the OSC receiver use time.time(). The page stamps its events with
performance.timeOrigin + performance.now() (monotonic, sub-millisecond) and samples Date.now()
(the system clock) once a second; the median difference moves the page's times onto the system
clock, and its spread (drift) is reported. At the start and the end of a run, the page's Date.now()
is read between two time.time() calls: the offset must stay within MAX_CLOCK_OFFSET_S plus half
that bracket, or the run is refused (the stages would not add up). A second check is built in:
no frame may be emitted before the audio it needed was sent, nor arrive before it was emitted
(the server and network stages stay >= 0)."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.e2e_signal import make_onset_recording
from bench.e2e_stages import Frames, Onset, Upstream, find_onsets, first_output, measure_path, mouth_threshold
from diffposetalk.errors import UserError

REPO = Path(__file__).resolve().parent.parent
HOOK = REPO / "clients" / "web" / "e2e-hook.js"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--use-angle=swiftshader",
                 "--enable-unsafe-swiftshader", "--autoplay-policy=no-user-gesture-required",
                 "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
                 # two viewer pages render side by side: neither is a throttled background tab
                 "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
                 "--disable-backgrounding-occluded-windows"]
MAX_CLOCK_OFFSET_S = 0.005
CLOCK_SLACK_MS = 5.0
# a bundle's mouth opening: the sum of its VRM 0 visemes, else of its VRM 1 ones, else ARKit's jawOpen
VMC_MOUTH = (("A", "I", "U", "E", "O"), ("aa", "ih", "ou", "ee", "oh"), ("jawOpen",))
LARGEST = "-largest"  # suffix of the same bridge measured by its largest viseme (the first measure)
MAKE_RUN_ARGS = ["--style", "big_mouth", "--audio", str(REPO / "clients" / "demo" / "speech.flac"), "--loop"]


@dataclass
class E2EOptions:
    onsets: int = 24
    gap_s: float = 0.9
    serve_args: list[str] = field(default_factory=list)  # extra `serve` options (model, window, backend)
    viewer_query: str = ""  # extra viewer URL query, e.g. "&delay=300"
    vmc_args: list[str] = field(default_factory=list)  # extra `dpt-live vmc` options
    vmc: bool = True
    ws: bool = True
    extra_viewers: dict[str, str] = field(default_factory=dict)  # name -> URL query of more viewer pages
    extra_vmc: dict[str, list[str]] = field(default_factory=dict)  # name -> options of more VMC bridges
    viewport: dict = field(default_factory=lambda: {"width": 320, "height": 240})
    out_dir: Path = Path("runs/e2e")
    start_timeout_s: float = 300.0
    label: str = ""


class _Proc:
    """A `dpt-live` subprocess whose output is kept (and scanned for a line)."""

    def __init__(self, args: list[str], wait_for: str | None = None):
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO))
        self.proc = subprocess.Popen([sys.executable, "-m", "dpt_live.cli", *args], cwd=REPO, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.match: re.Match | None = None
        self.ready = threading.Event()
        pattern = re.compile(wait_for) if wait_for else None

        def drain():
            for line in self.proc.stdout:
                self.lines.append(line.rstrip())
                if pattern is not None and self.match is None:
                    self.match = pattern.search(line)
                    if self.match:
                        self.ready.set()
            self.ready.set()

        self.drain = threading.Thread(target=drain, daemon=True)
        self.drain.start()
        if pattern is None:
            self.ready.set()

    def wait(self, timeout: float, what: str) -> re.Match:
        if not self.ready.wait(timeout) or self.match is None:
            self.stop()
            raise UserError(f"{what} did not start:\n" + "\n".join(self.lines[-30:]))
        return self.match

    def stop(self, sig=signal.SIGTERM, timeout: float = 15.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.drain.join(2.0)  # its last lines (a bridge's buffer summary) are still in the pipe
        return self.proc.returncode


class OscReceiver:
    """A real OSC/UDP receiver (python-osc) that keeps, per VMC bundle, when it arrived
    (time.time(), at /VMC/Ext/Blend/Apply) and its mouth opening: the sum of its visemes (a VRM
    face's viseme clips are additive morph targets, so what opens on screen is their sum; the
    largest alone dips when the vowel changes at the same opening), and its largest viseme."""

    def __init__(self):
        from pythonosc.dispatcher import Dispatcher
        from pythonosc.osc_server import BlockingOSCUDPServer

        self.times: list[float] = []
        self.values: list[float] = []
        self.largest: list[float] = []
        self._blends: dict[str, float] = {}
        d = Dispatcher()
        d.map("/VMC/Ext/Blend/Val", self._blend)
        d.map("/VMC/Ext/Blend/Apply", self._apply)
        self.server = BlockingOSCUDPServer(("127.0.0.1", 0), d)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def _blend(self, _address, name, value):
        self._blends[name] = float(value)

    def _apply(self, _address, *_):
        self.times.append(time.time())
        names = next((group for group in VMC_MOUTH if any(n in self._blends for n in group)), ())
        values = [self._blends.get(n, 0.0) for n in names] or [0.0]
        self.values.append(sum(values))
        self.largest.append(max(values))
        self._blends = {}

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _page_clock_offset(page) -> dict:
    """The page's Date.now() minus time.time(), bracketed by two time.time() reads: the offset and
    half the bracket (its uncertainty). Both read the system clock, so it should be within that."""
    best = None
    for _ in range(5):
        a = time.time()
        p = page.evaluate("() => Date.now()") / 1000
        b = time.time()
        if best is None or b - a < best[1]:
            best = (p - (a + b) / 2, b - a)
    return {"offset_ms": round(best[0] * 1000, 3), "uncertainty_ms": round(best[1] * 500, 3)}


def _upstream_from_page(rec: dict) -> Upstream:
    if not rec["starts"]:
        raise UserError("the page never started its microphone upstream (audio_start)")
    start, rate = rec["starts"][-1]
    blocks = [b for b in rec["blocks"] if b[0] >= start]
    if not blocks:
        raise UserError("the page sent no microphone audio")
    env = np.asarray(rec["envelope"], np.float32)
    return Upstream(rate=int(rate), start=start / 1000, sent=np.array([b[0] for b in blocks]) / 1000,
                    sizes=np.array([b[1] for b in blocks]), envelope=env)


def _upstream_segment(arrival, audio_time, reset, start: float) -> np.ndarray:
    """Indices of the frames made from the upstream: from the first reset frame that arrived after
    audio_start up to the next reset or the next jump back in audio_time (the next generation)."""
    after = np.flatnonzero(reset & (arrival >= start))
    if not len(after):
        return np.zeros(0, int)
    first = after[0]
    back = np.diff(audio_time[first:]) < -0.5
    ends = np.flatnonzero(reset[first + 1:] | back)
    end = first + 1 + ends[0] if len(ends) else len(arrival)
    return np.arange(first, end)


def page_on_system_clock(rec: dict) -> tuple[dict, dict]:
    """The page's records moved onto the system clock. The hook stamps with performance.timeOrigin
    + performance.now() (monotonic since the page opened) and samples Date.now() — the system's
    CLOCK_REALTIME, the clock Python's time.time() reads — once a second; the median difference is
    added to every page time. Returns (shifted records, {offset_ms, drift_ms})."""
    pairs = np.asarray(rec.get("clock") or [], np.float64).reshape(-1, 2)
    if not len(pairs):
        return rec, {"offset_ms": 0.0, "drift_ms": float("nan")}
    d = pairs[:, 1] - pairs[:, 0]
    off = float(np.median(d))
    out = dict(rec)
    out["starts"] = [[t + off, r] for t, r in rec["starts"]]
    out["blocks"] = [[t + off, n] for t, n in rec["blocks"]]
    out["frames"] = [[f[0] + off, *f[1:]] for f in rec["frames"]]
    out["renders"] = [[r[0] + off, *r[1:]] for r in rec["renders"]]
    out["rafs"] = [t + off for t in rec["rafs"]]
    return out, {"offset_ms": round(off, 3), "drift_ms": round(float(d.max() - d.min()), 3)}


def _browser_path(name: str, rec: dict, up: Upstream, onsets: list[Onset], lookahead_s: float):
    """A viewer page's path: its frames as they arrived, its renders, its animation frames."""
    fr = np.asarray(rec["frames"], np.float64).reshape(-1, 6)
    seg = _upstream_segment(fr[:, 0] / 1000, fr[:, 2], (fr[:, 4].astype(int) & 2) > 0, up.start)
    if not len(seg):
        raise UserError(f"{name}: no frame made from the microphone reached the page")
    frames = Frames(fr[seg, 0] / 1000, fr[seg, 2], fr[seg, 3], fr[seg, 5])
    renders = np.asarray(rec["renders"], np.float64).reshape(-1, 3)
    rafs = np.asarray(rec["rafs"], np.float64) / 1000
    r_t, r_jaw = renders[:, 0] / 1000, renders[:, 1]

    def shown(onset: Onset, i: int, frames: Frames, thr: float):
        # the first drawn frame after F arrived whose mouth is open; it is on screen at the next
        # animation frame (the compositor presents what the previous one drew)
        k = first_output(r_t, r_jaw, max(onset.capture, frames.arrival[i]), thr)
        if k is None:
            return None
        nxt = rafs[rafs > r_t[k] + 1e-4]
        return r_t[k], (float(nxt[0]) if len(nxt) else r_t[k] + 1 / 60)

    res = measure_path(name, up, onsets, frames, lookahead_s, shown)
    series = {"degraded": int(((fr[seg, 4].astype(int) & 4) > 0).sum()), "frame_count": int(len(seg)),
              "frames": np.stack([frames.arrival, frames.audio_time, frames.jaw], 1).tolist(),
              "renders": np.stack([r_t, r_jaw], 1)[r_t >= up.start].tolist()}
    return res, series


def analyse(pages: dict[str, dict], lookahead_s: float, ws_npz: dict | None,
            oscs: dict[str, tuple[list, list]]) -> dict:
    """Per-path results from the raw records: ``pages`` (name -> the page hook's record; the first
    is the page that streams its microphone), the recorder's arrays, and per VMC bridge the OSC
    receiver's (times, mouth values)."""
    clocks, shifted = {}, {}
    for name, rec in pages.items():
        shifted[name], clocks[name] = page_on_system_clock(rec)
    mic_page = next(iter(pages))
    up = _upstream_from_page(shifted[mic_page])
    onsets = find_onsets(up)
    paths, series = {}, {}
    for name, rec in shifted.items():
        paths[name], s = _browser_path(name, rec, up, onsets, lookahead_s)
        if name == mic_page:
            series = s
    ws_frames = None
    if ws_npz is not None:
        seg = _upstream_segment(ws_npz["recv_time"], ws_npz["audio_time"], ws_npz["reset"], up.start)
        ws_frames = Frames(ws_npz["recv_time"][seg], ws_npz["audio_time"][seg], ws_npz["emit_time"][seg],
                           ws_npz["pose"][seg, 3].astype(np.float64))
        if len(seg):
            paths["ws"] = measure_path("ws", up, onsets, ws_frames, lookahead_s)
    thresholds = {}
    for name, (times, values) in oscs.items():
        o_t, o_v = np.asarray(times, np.float64), np.asarray(values, np.float64)
        keep = o_t >= up.start
        o_t, o_v = o_t[keep], o_v[keep]
        if ws_frames is None or not len(ws_frames.arrival) or not len(o_v):
            continue
        thresholds[name] = o_thr = mouth_threshold(o_v)

        def shown(onset: Onset, i: int, frames: Frames, thr: float, o_t=o_t, o_v=o_v, o_thr=o_thr):
            k = first_output(o_t, o_v, max(onset.capture, frames.arrival[i]), o_thr)
            return None if k is None else (o_t[k], o_t[k])

        # a bridge is one more WebSocket viewer of the same frames: the recorder's arrival times
        # stand in for the bridge's (same loopback socket, same server send)
        paths[name] = measure_path(name, up, onsets, ws_frames, lookahead_s, shown)
    series.update({"envelope_ms": up.envelope.tolist(), "capture_start": up.capture_time(0.0)})
    # how far the mouth moved over the run (what each 30 % threshold lies between): a window the
    # model was not trained for can win latency by opening the mouth less, and this shows it
    jaw = ws_frames.jaw if ws_frames is not None and len(ws_frames.jaw) else np.asarray(series.get("frames", []))[:, 2:3]
    mouth = {"jaw_rad": _range(jaw)}
    for name, (times, values) in oscs.items():
        v = np.asarray(values, np.float64)[np.asarray(times, np.float64) >= up.start]
        if len(v):
            mouth[name] = _range(v)
    # the clock check built into the data: no frame emitted before the audio it needed was sent,
    # none received before it was emitted (beyond a few ms of timer resolution)
    violations = sum(1 for res in paths.values() for r in res.rows
                     if r["server_ms"] < -CLOCK_SLACK_MS or r["network_ms"] < -CLOCK_SLACK_MS)
    return {"onsets": [{"stream_s": o.stream_s, "capture": o.capture} for o in onsets],
            "paths": {name: {"summary": res.summary(), "rows": res.rows} for name, res in paths.items()},
            "page_clock": clocks, "vmc_thresholds": thresholds, "series": series, "clock_violations": violations,
            "mouth": mouth}


def _range(values) -> dict:
    """Rest (10th percentile) and open (90th) of a mouth signal over the run."""
    lo, hi = np.percentile(np.ravel(values), [10, 90]) if np.size(values) else (np.nan, np.nan)
    return {"p10": round(float(lo), 4), "p90": round(float(hi), 4)}


def _healthz(port: int) -> dict:
    """The server's /healthz (its scheduler's shedding counts and estimates) at the end of a run."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            return json.loads(r.read())
    except (OSError, ValueError) as exc:
        return {"error": str(exc)}


def _open_page(browser, url: str, viewport: dict):
    page = browser.new_context(viewport=viewport).new_page()
    page.add_init_script(path=str(HOOK))
    page.goto(url)
    page.wait_for_function("() => window.dptViewer && window.dptViewer.framesReceived > 5", timeout=60000)
    return page


def run_e2e(opts: E2EOptions) -> dict:
    """One measurement; writes e2e.json and raw.json under opts.out_dir (the report: bench.e2e_report)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        raise UserError("bench-e2e needs the playwright package (pip install -e .)") from exc

    if not CHROMIUM.exists():
        raise UserError(f"{CHROMIUM} is not installed (make system installs Debian's chromium)")
    out = Path(opts.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    signal_info = make_onset_recording(out / "onsets.wav", onsets=opts.onsets, gap_s=opts.gap_s)
    token = secrets.token_hex(8)
    serve = _Proc(["serve", *MAKE_RUN_ARGS, "--host", "127.0.0.1", "--port", "0", "--token", token,
                   *opts.serve_args], wait_for=r"viewer: http://127\.0\.0\.1:(\d+)/")
    procs, receivers, pages, clock, hello, health = [serve], {}, {}, {}, None, {}
    bridges = {"vmc": opts.vmc_args} if opts.vmc else {}
    bridges.update(opts.extra_vmc)
    try:
        port = int(serve.wait(opts.start_timeout_s, "dpt-live serve").group(1))
        url = f"ws://127.0.0.1:{port}"
        rec_path = out / "ws-frames.npz"
        rec_path.unlink(missing_ok=True)  # never analyse an earlier run's recording
        if opts.ws or bridges:
            procs.append(_Proc(["record", "--url", url, "--token", token, "-o", str(rec_path),
                                "--idle-timeout", "60"]))
        for name, args in bridges.items():
            receivers[name] = OscReceiver()
            procs.append(_Proc(["vmc", "--url", url, "--token", token,
                                "--target", f"127.0.0.1:{receivers[name].port}", *args]))
        with sync_playwright() as p:
            # playwright gives the browser a fresh temporary profile (--user-data-dir); each viewer
            # page gets a context (window) of its own, so none is a throttled background tab
            browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=[
                *CHROMIUM_ARGS, f"--use-file-for-fake-audio-capture={out / 'onsets.wav'}"])
            try:
                viewer = f"http://127.0.0.1:{port}/?token={token}"
                mic = _open_page(browser, viewer + opts.viewer_query, opts.viewport)
                others = {name: _open_page(browser, viewer + query, opts.viewport)
                          for name, query in opts.extra_viewers.items()}
                clock["start"] = _page_clock_offset(mic)
                mic.click("#hud-mic")
                mic.wait_for_function("() => window.dptViewer.micActive", timeout=30000)
                time.sleep(signal_info["seconds"] + 1.5)
                mic.evaluate("() => window.dptViewer.toggleMic()")
                time.sleep(0.5)
                clock["end"] = _page_clock_offset(mic)
                pages["browser"] = mic.evaluate("() => window.__dptE2E")
                pages.update({name: pg.evaluate("() => window.__dptE2E") for name, pg in others.items()})
                hello = mic.evaluate("() => window.dptViewer.hello")
                health = _healthz(port)
            finally:
                browser.close()
    finally:
        for proc in reversed(procs[1:]):
            proc.stop(signal.SIGINT)
        serve.stop()
        for r in receivers.values():
            r.close()
    for when, c in clock.items():
        if abs(c["offset_ms"]) > MAX_CLOCK_OFFSET_S * 1000 + c["uncertainty_ms"]:
            raise UserError(f"the page's Date.now() is {c['offset_ms']} ms off time.time() at the {when}: "
                            "the stages would not add up")
    window = (hello or {}).get("model", {}).get("window_ms") or {}
    lookahead_s = window.get("lookahead", 80) / 1000
    ws_npz = dict(np.load(rec_path)) if rec_path.exists() else None
    oscs = {name: (r.times, r.values) for name, r in receivers.items()}
    oscs.update({name + LARGEST: (r.times, r.largest) for name, r in receivers.items()})
    (out / "raw.json").write_text(json.dumps({"pages": pages, "oscs": oscs, "lookahead_s": lookahead_s}))
    (out / "serve.log").write_text("\n".join(serve.lines) + "\n")
    for name, proc in zip(bridges, procs[1 + (opts.ws or bool(bridges)):]):  # their buffer summaries
        (out / f"{name}.log").write_text("\n".join(proc.lines) + "\n")
    result = analyse(pages, lookahead_s, ws_npz, oscs)
    if not opts.ws:
        result["paths"].pop("ws", None)
    result.update({"label": opts.label, "clock": clock, "window_ms": window,
                   "serve_args": [*MAKE_RUN_ARGS, *opts.serve_args],
                   "viewers": {"browser": opts.viewer_query, **opts.extra_viewers},
                   "bridges": bridges, "signal": signal_info, "viewport": opts.viewport,
                   "scheduler": health.get("scheduler"),
                   "load": os.getloadavg(), "cpus": os.cpu_count(), "host": socket.gethostname()})
    (out / "e2e.json").write_text(json.dumps(result, indent=1))
    return result


def reanalyse(out_dir: Path) -> dict:
    """Analyse a finished run again from what it kept (raw.json, ws-frames.npz, e2e.json's
    settings): the figures of old runs follow the current bookkeeping."""
    out = Path(out_dir)
    try:
        raw = json.loads((out / "raw.json").read_text())
        old = json.loads((out / "e2e.json").read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"--reanalyse {out}: not a bench-e2e run folder ({exc})") from exc
    rec_path = out / "ws-frames.npz"
    ws_npz = dict(np.load(rec_path)) if rec_path.exists() else None
    result = analyse(raw["pages"], raw["lookahead_s"], ws_npz, {k: tuple(v) for k, v in raw["oscs"].items()})
    if "ws" not in old.get("paths", {}):
        result["paths"].pop("ws", None)
    keep = ("label", "clock", "window_ms", "serve_args", "viewers", "bridges", "signal", "viewport", "scheduler",
            "load", "cpus", "host")
    result.update({k: old[k] for k in keep if k in old})
    (out / "e2e.json").write_text(json.dumps(result, indent=1))
    return result
