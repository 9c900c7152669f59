"""The live server in-process on 127.0.0.1 (port 0) with a tiny model and real WebSocket clients:
fan-out, slow viewers, malformed/oversized messages, token and Origin checks, audio upstream,
control messages, /healthz, /metrics, graceful shutdown."""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.error
import urllib.request

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from clients import ws_client as c  # the control messages clients send
from server import protocol as p

TOKEN = "test-token"


@pytest.fixture(scope="module")
def engine(loaded):
    from diffposetalk.sampler import DDIMSampler
    from server.engine import Engine
    from streaming.session import StreamConfig

    return Engine(loaded=loaded, sampler=DDIMSampler(1), config=StreamConfig(80, 80, 400, eyes=True),
                  backend="torch", default_style_name="calm", default_style=loaded.styles["calm"])


def run(coro, timeout=60):
    async def guarded():
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(guarded())


class Harness:
    """A started LiveServer and helpers to reach it."""

    def __init__(self, server):
        self.server = server
        self.base = f"127.0.0.1:{server.port}"

    def ws_url(self, token=TOKEN, **query):
        params = ([f"token={token}"] if token else []) + [f"{k}={v}" for k, v in query.items()]
        return f"ws://{self.base}/ws?{'&'.join(params)}"

    async def get(self, path) -> tuple[int, bytes]:
        """(status, body) of a plain HTTP GET, from a thread: the server shares this event loop."""
        def fetch():
            try:
                with urllib.request.urlopen(f"http://{self.base}{path}", timeout=10) as r:
                    return r.status, r.read()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read()
        return await asyncio.to_thread(fetch)

    async def text(self, path) -> str:
        return (await self.get(path))[1].decode()


async def start(engine, own=None, **config):
    from server.app import LiveServer, ServerConfig

    cfg = ServerConfig(host="127.0.0.1", port=0, token=TOKEN, **config)
    factory, kind = own if own else (None, "none")
    server = LiveServer(engine, cfg, factory, kind)
    await server.start()
    return Harness(server)


def file_source(path, realtime=True):
    from server.sources import LoopingFileSource

    return (lambda: LoopingFileSource(path, loop=True, realtime=realtime)), "file"


async def hello_of(ws):
    return p.parse_hello(await ws.recv())


async def frames_of(ws, n, timeout=20):
    """The next n frames (WireFrame) and the notices seen on the way."""
    frames, notices = [], []
    while len(frames) < n:
        msg = p.decode_server_message(await asyncio.wait_for(ws.recv(), timeout))
        (notices if isinstance(msg, dict) else frames).append(msg)
    return frames, notices


async def frames_until_sourceless(ws, notices=None, timeout=30):
    """A client's frames until its session reports no audio source (notices go to ``notices``)."""
    frames = []
    while True:
        msg = p.decode_server_message(await asyncio.wait_for(ws.recv(), timeout))
        if not isinstance(msg, dict):
            frames.append(msg)
            continue
        if notices is not None:
            notices.append(msg)
        if msg.get("change") == "source" and msg["source"] == "none":
            return frames


async def stream_upstream(h, session, data, chunk=1280, rate=16000, channels=1, fmt="f32le", pause=0.0,
                          at_half=(), timeout=30):
    """Connect to ``session``, send ``data`` upstream in ``chunk``-byte messages (``pause`` s
    apart; the ``at_half`` controls halfway), end it, and return every frame received meanwhile —
    read while sending: a viewer that does not read loses its oldest frames."""
    async with connect(h.ws_url(session=session)) as ws:
        await hello_of(ws)
        reader = asyncio.create_task(frames_until_sourceless(ws, timeout=timeout))
        await ws.send(c.audio_start_control(rate, channels, fmt))
        half = len(data) // 2 // chunk * chunk
        for i in range(0, len(data), chunk):
            if i == half:
                for control in at_half:
                    await ws.send(control)
            await ws.send(data[i:i + chunk])
            await asyncio.sleep(pause)
        await ws.send(c.audio_end_control())
        return await reader


async def until(ws, kind, change=None, timeout=20):
    """Skip messages until a notice of type ``kind`` (a state: with ``change``); returns it and
    the frames skipped."""
    frames = []
    while True:
        msg = p.decode_server_message(await asyncio.wait_for(ws.recv(), timeout))
        if isinstance(msg, dict) and msg["type"] == kind and (change is None or msg.get("change") == change):
            return msg, frames
        if not isinstance(msg, dict):
            frames.append(msg)


def test_protocol_round_trip_and_fan_out(engine, speech_like_wav):
    """A binary and a JSON viewer of one session decode the same frames, equal to what the
    session's pipeline produced."""
    async def scenario():
        h = await start(engine, file_source(speech_like_wav))
        produced = {}
        session = h.server.sessions["default"]
        publish = session.publish

        def spy(items):  # record what the pipeline handed to the hub, then publish as usual
            for it in items:
                produced[it.wire.seq] = it.wire
            publish(items)
        session.publish = spy
        try:
            async with connect(h.ws_url()) as a, connect(h.ws_url(mode="json")) as b:
                ha, hb = await hello_of(a), await hello_of(b)
                assert ha["mode"] == "binary" and hb["mode"] == "json"
                assert ha["session"] == "default" and ha["source"] == "file" and ha["style"] == "calm"
                assert ha["styles"] == ["calm"] and ha["template"]["flame_asset"] is None
                assert ha["model"]["kind"] == "teacher" and ha["limits"]["max_message"] == 1 << 20
                fa, _ = await frames_of(a, 15)
                fb, _ = await frames_of(b, 15)
        finally:
            await h.server.stop()
        return fa, fb, produced

    fa, fb, produced = run(scenario())
    common = sorted({f.seq for f in fa} & {f.seq for f in fb})
    assert len(common) >= 8, "both viewers see the same frames"
    by_a, by_b = {f.seq: f for f in fa}, {f.seq: f for f in fb}
    for seq in common:
        want, x, y = produced[seq], by_a[seq], by_b[seq]
        for got in (x, y):
            np.testing.assert_array_equal(got.exp, want.exp.astype(np.float32))
            np.testing.assert_array_equal(got.pose, want.pose.astype(np.float32))
            np.testing.assert_array_equal(got.eyes, want.eyes.astype(np.float32))
            assert got.audio_time == want.audio_time and got.emit_time == want.emit_time
            assert got.dropped == 0
    seqs = [f.seq for f in fa]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "no gaps for a reading viewer"
    assert all(np.isclose(f.audio_time, (f.seq + 0.5) / 25) for f in fa), "first pipeline: seq = frame index"


def small_socket(rcvbuf=4096):
    """A client socket with a tiny receive buffer, connected later by websockets."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    return s


def pcm_speech(seconds, rate=16000, channels=1, fmt="f32le", seed=0):
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    x = 0.2 * np.sin(2 * np.pi * 170 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)) + 0.01 * rng.normal(size=t.size)
    x = np.repeat(x[:, None], channels, axis=1).reshape(-1)
    if fmt == "s16le":
        return (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()
    return x.astype("<f4").tobytes()


async def push_audio(ws, data, chunk_bytes, rate, channels, fmt):
    await ws.send(c.audio_start_control(rate, channels, fmt))
    for i in range(0, len(data), chunk_bytes):
        await ws.send(data[i:i + chunk_bytes])
    await ws.send(c.audio_end_control())


def test_slow_viewer_loses_oldest_frames_others_and_pipeline_unaffected(engine):
    """Audio pushed faster than real time makes frames pour out; a viewer that never reads
    loses its oldest frames and is told how many; a reading viewer gets every frame."""
    seconds = 14.0
    expected = int(seconds * 16000) // 640

    async def scenario():
        # the slow viewer reads nothing until the push is over: not closed as stalled meanwhile
        h = await start(engine, viewer_queue=16, send_buffer=4096, write_limit=4096, stall_timeout=120)
        try:
            async with connect(h.ws_url(session="slow"), max_queue=1, sock=_connected(small_socket(), h)) as slow, \
                    connect(h.ws_url(session="slow")) as fast, \
                    connect(h.ws_url(session="slow")) as pusher:
                for ws in (slow, fast, pusher):
                    await hello_of(ws)
                got_fast = []

                async def read_fast():
                    while len(got_fast) < expected:
                        msg = p.decode_server_message(await asyncio.wait_for(fast.recv(), 30))
                        if not isinstance(msg, dict):
                            got_fast.append(msg)
                async def drain(ws):  # the pusher is a viewer too: it must read to close quickly
                    async for _ in ws:
                        pass
                reader = asyncio.create_task(read_fast())
                drainer = asyncio.create_task(drain(pusher))
                await push_audio(pusher, pcm_speech(seconds), 3200, 16000, 1, "f32le")
                await reader
                session = h.server.sessions["slow"]
                for _ in range(100):  # the pipeline has flushed the last frames of the upstream
                    if session.frames >= expected:
                        break
                    await asyncio.sleep(0.05)
                produced = session.frames
                # now the slow viewer reads what is left for it
                slow_frames, slow_notices = [], []
                while True:
                    try:
                        msg = p.decode_server_message(await asyncio.wait_for(slow.recv(), 1.5))
                    except TimeoutError:
                        break
                    (slow_notices if isinstance(msg, dict) else slow_frames).append(msg)
                metrics = await h.text("/metrics")
            await drainer
        finally:
            await h.server.stop()
        return got_fast, produced, slow_frames, slow_notices, metrics

    got_fast, produced, slow_frames, slow_notices, metrics = run(scenario(), timeout=120)
    assert produced == expected, "the pipeline produced every frame despite the stuck viewer"
    assert [f.seq for f in got_fast] == list(range(expected)) and all(f.dropped == 0 for f in got_fast)
    dropped_msgs = [n for n in slow_notices if n["type"] == "dropped"]
    assert dropped_msgs, "the slow viewer is told it lost frames"
    lost = sum(f.dropped for f in slow_frames)
    assert lost > 0 and lost == sum(n["count"] for n in dropped_msgs)
    assert dropped_msgs[-1]["total"] == lost
    assert len(slow_frames) + lost == expected, "every frame was either delivered or counted as dropped"
    seqs = [f.seq for f in slow_frames]
    assert seqs == sorted(seqs) and seqs[-1] == expected - 1, "oldest dropped, newest kept"
    for prev, cur in zip(slow_frames, slow_frames[1:]):
        assert cur.seq - prev.seq - 1 == cur.dropped
    assert f'dpt_dropped_frames_total{{session="slow"}} {lost}' in metrics


def _connected(sock, h):
    sock.connect(("127.0.0.1", h.server.port))
    return sock


def test_malformed_and_oversized_messages_close_only_that_connection(engine, speech_like_wav):
    async def scenario():
        h = await start(engine, file_source(speech_like_wav), max_message=1024)
        try:
            async with connect(h.ws_url()) as watcher, connect(h.ws_url()) as bad_json, \
                    connect(h.ws_url()) as too_big, connect(h.ws_url()) as bad_field, \
                    connect(h.ws_url()) as early_pcm:
                for ws in (watcher, bad_json, too_big, bad_field, early_pcm):
                    await hello_of(ws)
                before, _ = await frames_of(watcher, 3)
                await bad_json.send("{not json")
                await too_big.send("x" * 2000)
                await bad_field.send('{"type": "guidance", "audio": 1, "style": "loud"}')
                await early_pcm.send(b"\x00" * 64)
                closes = {}
                for name, ws in (("json", bad_json), ("big", too_big), ("field", bad_field), ("pcm", early_pcm)):
                    with pytest.raises(ConnectionClosed) as info:
                        while True:
                            await asyncio.wait_for(ws.recv(), 10)
                    closes[name] = info.value.rcvd
                after, _ = await frames_of(watcher, 10)
                metrics = await h.text("/metrics")
        finally:
            await h.server.stop()
        return before, after, closes, metrics

    before, after, closes, metrics = run(scenario())
    assert closes["json"].code == 1008 and "malformed JSON" in closes["json"].reason
    assert closes["big"].code == 1009 and "exceeds limit of 1024 bytes" in closes["big"].reason
    assert closes["field"].code == 1008 and "'style' must be a finite number" in closes["field"].reason
    assert closes["pcm"].code == 1008 and "binary audio before audio_start" in closes["pcm"].reason
    assert after[0].seq > before[-1].seq and [f.seq for f in after] == list(range(after[0].seq, after[0].seq + 10))
    assert 'dpt_rejected_total{reason="1008"} 3' in metrics and 'dpt_rejected_total{reason="1009"} 1' in metrics


def test_token_and_origin_are_checked_before_the_upgrade(engine):
    async def scenario():
        h = await start(engine, allow_origins=["https://app.example"])
        statuses = {}
        try:
            for name, url, kw in (
                    ("no token", h.ws_url(token=None), {}),
                    ("bad token", h.ws_url(token="nope"), {}),
                    ("bad origin", h.ws_url(), {"origin": "http://evil.example"}),
                    ("bad session", h.ws_url(session="a/b"), {}),
                    ("bad mode", h.ws_url(mode="xml"), {})):
                with pytest.raises(InvalidStatus) as info:
                    async with connect(url, **kw):
                        pass
                statuses[name] = (info.value.response.status_code, info.value.response.body.decode())
            # accepted: own origin, an allowed origin, no Origin header, the token as a bearer header
            async with connect(h.ws_url(), origin=f"http://127.0.0.1:{h.server.port}") as ws:
                assert (await hello_of(ws))["type"] == "hello"
            async with connect(h.ws_url(), origin="https://app.example") as ws:
                await hello_of(ws)
            async with connect(f"ws://{h.base}/ws", additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
                await hello_of(ws)
            flame = {q: (await h.get(f"/flame.bin{q}"))[0] for q in ("", f"?token={TOKEN}")}
            traversal = [(await h.get(path))[0] for path in
                         ("/../pyproject.toml", "/%2e%2e/pyproject.toml", "/.git/config", "/nothing.js")]
        finally:
            await h.server.stop()
        return statuses, flame, traversal

    statuses, flame, traversal = run(scenario())
    assert statuses["no token"][0] == 401 and statuses["bad token"][0] == 401
    assert statuses["bad origin"][0] == 403 and "http://evil.example" in statuses["bad origin"][1]
    assert statuses["bad session"][0] == 400 and statuses["bad mode"][0] == 400
    assert flame == {"": 401, f"?token={TOKEN}": 404}, "/flame.bin needs the token; 404 without --flame"
    assert traversal == [404, 404, 404, 404]


def test_audio_upstream_drives_an_on_demand_session(engine):
    """s16le stereo at 48 kHz pushed by a client into a session that did not exist: frames come
    out for it (resampled to 16 kHz), the session reports source upstream, then none."""
    seconds = 3.0
    expected = int(seconds * 16000) // 640

    async def scenario():
        h = await start(engine)
        try:
            async with connect(h.ws_url(session="booth-1")) as mic:
                hello = await hello_of(mic)
                assert hello["session"] == "booth-1" and hello["source"] == "none"
                await push_audio(mic, pcm_speech(seconds, 48000, 2, "s16le"), 3840, 48000, 2, "s16le")
                frames, states = [], []
                while len(frames) < expected:
                    msg = p.decode_server_message(await asyncio.wait_for(mic.recv(), 30))
                    if isinstance(msg, dict):
                        states.append(msg)
                    else:
                        frames.append(msg)
                state, _ = await until(mic, "state")
                states.append(state)
                health = json.loads(await h.text("/healthz"))
        finally:
            await h.server.stop()
        return frames, states, health

    frames, states, health = run(scenario())
    assert len(frames) == expected
    assert frames[0].reset and not any(f.reset for f in frames[1:])
    assert [f.seq for f in frames] == list(range(expected))
    np.testing.assert_allclose([f.audio_time for f in frames], (np.arange(expected) + 0.5) / 25)
    assert all(f.eyes is not None for f in frames)
    jaw = np.array([f.pose[3] for f in frames])
    assert np.all(np.isfinite(jaw)) and jaw.std() > 0
    sources = [s["source"] for s in states if s.get("change") == "source"]
    assert sources[0] == "upstream" and sources[-1] == "none"
    assert health["session_detail"]["booth-1"]["frames"] == expected


def test_an_upstream_only_client_sends_audio_and_receives_no_frames(engine):
    """mode=upstream (the viewer page's microphone worker): its audio drives the session, whose
    viewer gets the frames; the upstream connection itself gets its hello and notices only."""
    seconds = 2.0
    expected = int(seconds * 16000) // 640

    async def scenario():
        h = await start(engine)
        try:
            async with connect(h.ws_url(session="booth-2", mode="upstream")) as mic, \
                    connect(h.ws_url(session="booth-2")) as viewer:
                hello = await hello_of(mic)
                await hello_of(viewer)
                await push_audio(mic, pcm_speech(seconds), 1280, 16000, 1, "f32le")
                frames, _ = await frames_of(viewer, expected, timeout=30)
                await mic.send(c.ping_control())
                got = []
                while True:  # everything the upstream client received, up to the pong
                    msg = p.decode_server_message(await asyncio.wait_for(mic.recv(), 20))
                    got.append(msg)
                    if isinstance(msg, dict) and msg["type"] == "pong":
                        break
        finally:
            await h.server.stop()
        return hello, frames, got

    hello, frames, got = run(scenario())
    assert hello["mode"] == "upstream"
    assert len(frames) == expected
    assert all(isinstance(m, dict) for m in got), "an upstream-only client was sent frames"
    assert any(m.get("change") == "source" and m.get("source") == "upstream" for m in got)


def test_controls_style_guidance_pause_and_errors(engine, speech_like_wav):
    async def scenario():
        h = await start(engine, file_source(speech_like_wav))
        out = {}
        try:
            async with connect(h.ws_url()) as ws, connect(h.ws_url()) as other:
                await hello_of(ws)
                await hello_of(other)
                await frames_of(ws, 2)
                await ws.send(c.ping_control())
                out["pong"], _ = await until(ws, "pong")
                await ws.send(c.style_control("no-such-style"))
                out["style_error"], _ = await until(ws, "error")
                await ws.send(c.style_control(None))
                out["style"], _ = await until(other, "state", "style")  # every viewer hears about it
                await ws.send(c.guidance_control(2.0, 1.5))
                out["guidance"], _ = await until(ws, "state", "guidance")
                # the guidance change rebuilt the pipeline: a frame with the reset flag follows
                for _ in range(50):
                    f, _ = await frames_of(ws, 1)
                    if f[0].reset:
                        out["reset_frame"] = f[0]
                        break
                await ws.send(c.pause_control(True))
                out["paused"], _ = await until(ws, "state", "pause")
                await asyncio.sleep(0.4)  # frames of audio heard before the pause may still arrive
                while True:
                    try:
                        await asyncio.wait_for(ws.recv(), 0.05)
                    except TimeoutError:
                        break
                seq_before = h.server.sessions["default"].pipeline.seq
                await asyncio.sleep(0.6)
                out["frames_while_paused"] = h.server.sessions["default"].pipeline.seq - seq_before
                await ws.send(c.pause_control(False))
                await until(ws, "state", "pause")
                f, _ = await frames_of(ws, 1)
                out["after_pause"] = f[0]
                await ws.send(c.audio_end_control())
                out["end_error"], _ = await until(ws, "error")
                out["summary"] = h.server.sessions["default"].summary()
        finally:
            await h.server.stop()
        return out

    out = run(scenario())
    assert out["pong"] == {"type": "pong"}
    assert "unknown style 'no-such-style'" in out["style_error"]["message"]
    assert out["style"]["style"] is None and out["style"]["change"] == "style"
    assert out["guidance"]["guidance"] == {"audio": 2.0, "style": 1.5}
    assert out["reset_frame"].audio_time == pytest.approx(0.02)
    assert out["paused"]["paused"] is True
    assert out["frames_while_paused"] == 0
    assert out["after_pause"].reset
    assert "audio_end without audio_start" in out["end_error"]["message"]
    assert out["summary"]["generations"] >= 3  # start, guidance, unpause


def test_healthz_metrics_idle_session_close_and_graceful_shutdown(engine, speech_like_wav):
    async def scenario():
        h = await start(engine, file_source(speech_like_wav), session_idle=0.3, janitor_interval=0.1)
        async with connect(h.ws_url(session="brief")) as ws:
            await hello_of(ws)
        async with connect(h.ws_url()) as ws:
            await hello_of(ws)
            await frames_of(ws, 10)
            health = json.loads(await h.text("/healthz"))
            metrics = await h.text("/metrics")
            await asyncio.sleep(0.8)
            health_later = json.loads(await h.text("/healthz"))
            stopper = asyncio.create_task(h.server.stop())
            with pytest.raises(ConnectionClosed) as info:
                while True:
                    await asyncio.wait_for(ws.recv(), 10)
            await stopper
        return health, metrics, health_later, info.value.rcvd

    health, metrics, later, close = run(scenario())
    assert health["status"] == "ok" and health["viewers"] == 1 and health["uptime"] > 0
    assert health["server_overhead_ms"]["count"] > 0
    assert later["sessions"] == 1 and "brief" not in later["session_detail"], "idle session closed"
    for name in ("dpt_frames_total", "dpt_viewers 1", "dpt_sessions", "dpt_frame_latency_seconds_bucket",
                 "dpt_step_seconds_count", "dpt_server_overhead_seconds_sum", 'le="+Inf"'):
        assert name in metrics
    from bench.server_load import parse_histogram, quantile_from_cumulative

    bounds, cum, _, count = parse_histogram(metrics, "dpt_server_overhead_seconds")
    assert count == cum[-1] > 0 and quantile_from_cumulative(bounds, cum, 0.5) > 0
    assert close.code == 1001 and close.reason == "server shutting down"


def test_a_client_that_sends_but_never_reads_is_closed(engine):
    """Answers (pong) to a client that never reads pile up only to a bound, then it is closed."""
    from server.hub import MAX_NOTICES

    async def scenario():
        h = await start(engine, send_buffer=4096, write_limit=4096)
        try:
            async with connect(h.ws_url(session="spam"), max_queue=1, sock=_connected(small_socket(), h)) as ws, \
                    connect(h.ws_url(session="spam")) as other:
                await hello_of(ws)
                await hello_of(other)
                with pytest.raises(ConnectionClosed) as info:
                    for _ in range(MAX_NOTICES * 4):
                        await ws.send(c.ping_control())
                    while True:
                        await asyncio.wait_for(ws.recv(), 10)
                await other.send(c.ping_control())
                pong, _ = await until(other, "pong")
        finally:
            await h.server.stop()
        return info.value.rcvd, pong

    close, pong = run(scenario())
    assert close.code == 1008 and "not reading" in close.reason
    assert pong == {"type": "pong"}, "the other connection of the session is unaffected"


def synthetic_flame_npz(path, V=30, F=40):
    """A tiny FLAME-shaped model (the real one cannot be downloaded or committed)."""
    rng = np.random.default_rng(0)
    weights = rng.random((V, 5)) + 0.05
    weights /= weights.sum(1, keepdims=True)
    j_reg = rng.random((5, V)) + 0.1
    j_reg /= j_reg.sum(1, keepdims=True)
    np.savez(path, v_template=rng.normal(size=(V, 3)) * 0.1, shapedirs=rng.normal(size=(V, 3, 400)) * 0.01,
             posedirs=rng.normal(size=(V, 3, 36)) * 0.01, J_regressor=j_reg, weights=weights,
             kintree_table=np.array([[-1, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.int64),
             f=rng.integers(0, V, size=(F, 3)).astype(np.int64))
    return path


def test_static_viewer_files_and_flame_asset(engine, tmp_path):
    """`/` serves the viewer's files; --flame's asset (built by server/flame_asset.py for the
    session's shape) is served at /flame.bin with the token and announced in hello."""
    import argparse

    from server.flame_asset import parse_flame_asset
    from server.setup import flame_asset

    web = tmp_path / "web"
    web.mkdir()
    (web / "index.html").write_text("<!doctype html><title>viewer</title>")
    (web / "main.js").write_text("export const x = 1;")
    shape = np.linspace(-1, 1, 100).astype(np.float32)
    asset = flame_asset(argparse.Namespace(flame=synthetic_flame_npz(tmp_path / "flame.npz")), shape)
    assert parse_flame_asset(asset)["verts"].shape == (30, 3)

    async def scenario():
        h = await start(engine, web_root=web, flame_asset=asset)
        try:
            got = {path: await h.get(path) for path in ("/", "/main.js", f"/flame.bin?token={TOKEN}")}
            async with connect(h.ws_url()) as ws:
                hello = await hello_of(ws)
        finally:
            await h.server.stop()
        return got, hello

    got, hello = run(scenario())
    assert got["/"] == (200, b"<!doctype html><title>viewer</title>")
    assert got["/main.js"] == (200, b"export const x = 1;")
    assert got[f"/flame.bin?token={TOKEN}"] == (200, asset)
    assert hello["template"]["flame_asset"] == "/flame.bin"


def test_probe_pins_the_backend_auto_resolved_to(loaded):
    """Sessions are rebuilt on reset, guidance, pause and source switches: "auto" is chosen once
    at start-up (Engine.probe), so a rebuild neither chooses again nor retries a failed export."""
    from diffposetalk.sampler import DDIMSampler
    from server.engine import Engine
    from streaming.session import StreamConfig

    e = Engine(loaded=loaded, sampler=DDIMSampler(1), config=StreamConfig(80, 80, 400), backend="auto")
    probe = e.probe()
    assert e.backend in ("torch", "onnxruntime", "tensorrt") and e.backend_desc == probe.backend
    assert e.build(None, e.default_scales).backend == probe.backend


def test_sessions_share_the_batching_scheduler(loaded, speech_like_wav):
    """An engine that probed gets one batching scheduler: every session's network calls go through
    it, and /healthz and /metrics show its batches and shed work."""
    from diffposetalk.sampler import DDIMSampler
    from server.engine import Engine
    from streaming.session import StreamConfig

    e = Engine(loaded=loaded, sampler=DDIMSampler(1), config=StreamConfig(80, 80, 400), backend="torch",
               scheduler_options={"max_batch": 8, "latency_budget_ms": 400})
    e.probe()
    assert e.scheduler is not None and e.model_info()["batching"] == {"max_batch": 8, "latency_budget_ms": 400}

    async def scenario():
        h = await start(e, file_source(speech_like_wav))
        try:
            async with connect(h.ws_url()) as a, connect(h.ws_url(session="second")) as b:
                await hello_of(a)
                await hello_of(b)
                got, _ = await frames_of(a, 10)
                health = json.loads(await h.text("/healthz"))
                metrics = await h.text("/metrics")
        finally:
            await h.server.stop()
        return got, health, metrics

    try:
        got, health, metrics = run(scenario())
    finally:
        e.close()
    assert [f.seq for f in got] == list(range(10)) and not any(f.degraded for f in got)
    sched = health["scheduler"]
    assert sched["calls"]["audio"] > 0 and sched["calls"]["motion"] > 0 and sched["errors"] == 0
    assert "dpt_scheduler_calls_total{kind=\"motion\"" in metrics and "dpt_scheduler_shed_steps_total" in metrics


@pytest.fixture()
def enc_engine(tmp_path):
    """A server engine on the batching scheduler with a tiny student that has a streaming audio
    encoder: its sessions step asynchronously."""
    from conftest import make_tiny_model_dir

    from diffposetalk.model_dir import load_model_dir
    from diffposetalk.stream_encoder import tiny_stream_config
    from server.engine import Engine
    from streaming.session import StreamConfig
    from streaming.setup import pick_sampler

    loaded = load_model_dir(make_tiny_model_dir(tmp_path / "m", seed=4, kind="student", student_steps=1, n_motions=8,
                                                stream_encoder=tiny_stream_config(32).to_dict()))
    e = Engine(loaded=loaded, sampler=pick_sampler("ddim", None, loaded), config=StreamConfig(80, 80, 400),
               backend="torch", scheduler_options={"max_batch": 8, "latency_budget_ms": 1e6})
    e.probe()
    assert e.scheduler is not None
    yield e
    e.close()


def test_serve_bench_upstream_clients_measure_every_frame_of_every_stream(enc_engine):
    """serve-bench --upstream's clients against a real server: each stream gets all its frames,
    their latencies (arrival minus the send time of their audio) are positive and below a second,
    and the summary counts the streams and frames."""
    from bench.server_load import _upstream_clients

    seconds = 1.6
    audio = np.frombuffer(pcm_speech(seconds), "<f4").copy()

    async def scenario():
        h = await start(enc_engine)
        try:
            return await _upstream_clients(f"http://{h.base}", TOKEN, 2, audio, seconds, 1000.0)
        finally:
            await h.server.stop()

    row = run(scenario())
    expected = int(seconds * 16000) // 640
    assert row["streams"] == 2 and row["frames"] == 2 * expected and row["degraded_frames"] == 0
    assert 0 < row["latency_ms"]["p50"] <= row["latency_ms"]["max"] < 1000
    assert row["within_budget"] == 2 and all(0 < w < 1000 for w in row["worst_ms_per_stream"])


def test_upstream_sessions_on_the_scheduler_are_fed_from_the_event_loop(enc_engine, monkeypatch):
    """With the batching scheduler and a streaming audio encoder, an upstream client's audio is
    fed to its session in the event loop (UpstreamSource.attach) and the steps run on the
    scheduler's workers: two clients pushing faster than real time, one changing its style and
    resetting on the way, each get every frame once, in order, while a third floods NaN samples
    (only its own session sees them, and its frames stay finite); audio_end still flushes the
    last frames and the session falls back to no source."""
    from server.sources import UpstreamSource

    attached = []
    original = UpstreamSource.attach

    def spy(self, *args, **kwargs):
        attached.append(self)
        return original(self, *args, **kwargs)
    monkeypatch.setattr(UpstreamSource, "attach", spy)
    e = enc_engine
    seconds = 3.0
    nan_flood = np.frombuffer(pcm_speech(seconds, seed=2), "<f4").copy()
    nan_flood[::7] = np.nan  # a broken client: its session only
    nan_flood = nan_flood.tobytes()

    async def scenario():
        h = await start(e)
        try:
            return await asyncio.gather(
                stream_upstream(h, "a", pcm_speech(seconds, 48000, 2, "s16le"), 3840, 48000, 2, "s16le", 0.002),
                stream_upstream(h, "b", pcm_speech(seconds, seed=1), pause=0.002,
                                at_half=(c.style_control("calm"), c.reset_control())),
                stream_upstream(h, "nan", nan_flood, pause=0.002))
        finally:
            await h.server.stop()

    a, b, flood = run(scenario())
    stats = e.scheduler.stats()
    expected = int(seconds * 16000) // 640
    assert len(attached) >= 2  # both upstreams fed from the loop
    assert [f.seq for f in a] == list(range(expected)) and not any(f.degraded for f in a)
    assert [f.seq for f in b] == list(range(len(b))) and not any(f.degraded for f in b)
    # the reset started a new generation: frames restart at audio time 0 once, none is lost
    resets = [i for i, f in enumerate(b) if f.reset]
    assert resets[0] == 0 and len(b) >= expected
    assert all(np.isfinite(f.pose).all() and np.isfinite(f.exp).all() for f in a + b + flood)
    assert [f.seq for f in flood] == list(range(expected))
    assert stats["calls"]["audio"] > 0 and stats["errors"] == 0


def test_an_upstream_that_stops_sending_ends_only_its_own_session(enc_engine):
    """Asynchronous sessions fed from the event loop: a client that stops sending mid-stream (no
    audio_end, still connected) is timed out by --upstream-idle — its frames so far are flushed,
    it is told why and its session falls back to no source — while a client streaming in real
    time beside it gets every frame, none degraded."""
    seconds, stop_after = 2.4, 0.8

    async def stopper(h):
        async with connect(h.ws_url(session="stopper")) as ws:
            await hello_of(ws)
            await ws.send(c.audio_start_control(16000, 1, "f32le"))
            await ws.send(pcm_speech(stop_after, seed=3))
            notices = []
            frames = await frames_until_sourceless(ws, notices)  # then silence: no audio_end
            return frames, next((n for n in notices if n["type"] == "error"), None)

    async def scenario():
        h = await start(enc_engine, upstream_idle=0.4, janitor_interval=0.1)
        try:
            return await asyncio.gather(stream_upstream(h, "steady", pcm_speech(seconds), pause=0.02), stopper(h))
        finally:
            await h.server.stop()

    good, (stopped, error) = run(scenario())
    assert [f.seq for f in good] == list(range(int(seconds * 16000) // 640)) and not any(f.degraded for f in good)
    assert [f.seq for f in stopped] == list(range(int(stop_after * 16000) // 640))
    assert error is not None and "no upstream audio for 0.4 s" in error["message"]


def test_a_client_faster_than_real_time_never_makes_the_event_loop_wait(enc_engine, monkeypatch):
    """A client pushing 40 s of audio at once runs seconds ahead of its session: the event loop
    never feeds it a block it would have to wait for (those are held, and the session's pipeline
    thread feeds them), the flood's frames all arrive in order, and a real-time neighbour loses
    nothing."""
    import threading

    from server.sources import UpstreamSource
    from streaming.session import StreamSession

    loop_waits, held = [], []
    feed_async, take_held = StreamSession._feed_async, UpstreamSource.take_held

    def spy_feed(self, samples, arrival):
        if threading.current_thread() is threading.main_thread() and not self.can_take(len(samples)):
            loop_waits.append(len(samples))
        return feed_async(self, samples, arrival)

    def spy_take(self):
        block = take_held(self)
        if block is not None:
            held.append(len(block.samples))
        return block
    monkeypatch.setattr(StreamSession, "_feed_async", spy_feed)
    monkeypatch.setattr(UpstreamSource, "take_held", spy_take)
    flood_s, steady_s = 40.0, 2.0

    async def scenario():
        h = await start(enc_engine, max_message=1 << 20)
        try:
            # the flood: 250 ms a message, at once — far faster than its steps
            return await asyncio.gather(stream_upstream(h, "flood", pcm_speech(flood_s, seed=5), 16000, timeout=60),
                                        stream_upstream(h, "steady", pcm_speech(steady_s, seed=6), pause=0.02))
        finally:
            await h.server.stop()

    flood, steady = run(scenario(), timeout=120)
    assert not loop_waits
    assert held, "the flood never ran ahead of its session: the held path was not exercised"
    assert [f.seq for f in flood] == list(range(int(flood_s * 16000) // 640))
    assert [f.seq for f in steady] == list(range(int(steady_s * 16000) // 640)) and not any(f.degraded for f in steady)


def test_the_event_loop_lag_is_measured_and_a_stall_shows(engine, caplog):
    """/healthz and /metrics carry how late the event loop runs (where upstream audio is fed); a
    known 350 ms stall of the loop shows up there and in a warning."""
    import logging
    import time as _time

    caplog.set_level(logging.WARNING, logger="dpt_live.serve")

    async def scenario():
        h = await start(engine)
        try:
            await asyncio.sleep(0.3)
            quiet = json.loads(await h.text("/healthz"))["event_loop_lag_ms"]
            _time.sleep(0.35)  # the loop itself stalls: a timer due in the stall fires >= 300 ms late
            await asyncio.sleep(0.2)
            health = json.loads(await h.text("/healthz"))["event_loop_lag_ms"]
            metrics = await h.text("/metrics")
        finally:
            await h.server.stop()
        return quiet, health, metrics

    quiet, health, metrics = run(scenario())
    assert quiet["count"] >= 3 and quiet["p50"] < 50
    assert health["count"] > quiet["count"]
    assert "dpt_event_loop_lag_seconds_bucket" in metrics
    assert 'dpt_event_loop_lag_seconds_bucket{le="0.2"}' in metrics
    count_le_02 = int(metrics.split('dpt_event_loop_lag_seconds_bucket{le="0.2"} ')[1].split()[0])
    total = int(metrics.split("dpt_event_loop_lag_seconds_count ")[1].split()[0])
    assert total - count_le_02 >= 1  # the stall: one sample over 200 ms late
    assert any("event loop ran" in r.getMessage() and "overloaded" in r.getMessage() for r in caplog.records)
