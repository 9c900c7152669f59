"""Recorder and the shared Python client against a real `dpt-live serve` (subprocess, tiny model),
plus LiveServerProcess, the launcher the VMC and web-viewer tests reuse."""

from __future__ import annotations

import os
import pathlib
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from conftest import make_tiny_model_dir

REPO = pathlib.Path(__file__).resolve().parent.parent
SPEECH = REPO / "clients" / "demo" / "speech.flac"
TOKEN = "test-token-123"


class LiveServerProcess:
    """`dpt-live serve` in a subprocess on a free port: the real server, started the way users do."""

    def __init__(self, model_dir, *extra: str, token: str = TOKEN, port: int = 0):
        self.cmd = [sys.executable, "-m", "dpt_live.cli", "serve", "--model", str(model_dir),
                    "--audio", str(SPEECH), "--loop", "--host", "127.0.0.1", "--port", str(port),
                    "--token", token, "--hop-ms", "80", "--lookahead-ms", "80", "--context-ms", "400",
                    "--threads", "1", "--backend", "torch", *extra]  # torch: no ONNX export at start-up
        self.token = token
        self.lines: list[str] = []
        self.proc = None
        self.port = None

    def launch(self) -> LiveServerProcess:
        """Start the process without waiting (launch several, then wait_ready each)."""
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(self.cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self._ready = threading.Event()

        def drain():  # keep reading so the pipe never fills
            for line in self.proc.stdout:
                self.lines.append(line.rstrip())
                m = re.match(r"viewer: http://127\.0\.0\.1:(\d+)/", line)
                if m:
                    self.port = int(m.group(1))
                    self._ready.set()
            self._ready.set()

        threading.Thread(target=drain, daemon=True).start()
        return self

    def wait_ready(self, timeout: float = 180.0) -> LiveServerProcess:
        if not self._ready.wait(timeout) or self.port is None:
            self.stop()
            raise RuntimeError("server did not start:\n" + "\n".join(self.lines[-30:]))
        return self

    def start(self, timeout: float = 180.0) -> LiveServerProcess:
        return self.launch().wait_ready(timeout)

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture(scope="session")
def fast_model_dir(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("live") / "tiny")


@pytest.fixture(scope="module")
def server(fast_model_dir):
    srv = LiveServerProcess(fast_model_dir).start()
    yield srv
    srv.stop()


def record_cli(*args: str) -> subprocess.CompletedProcess:
    """`dpt-live record ARGS` in this process (a subprocess pays seconds of imports per call)."""
    import contextlib
    import io

    from dpt_live.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["record", *args])
    return subprocess.CompletedProcess(args, rc, out.getvalue(), err.getvalue())


# --- against the real server ------------------------------------------------------------------

def test_client_reads_hello_and_frames(server):
    from clients.ws_client import StreamClient

    with StreamClient(server.ws_url, token=TOKEN, reconnect=False) as client:
        frames = []
        for f in client.frames(timeout=30):
            frames.append(f)
            if len(frames) == 10:
                break
        hello = client.hello
    assert hello["protocol"] == 1 and hello["fps"] == 25 and len(hello["template"]["shape"]) == 100
    seq = np.array([f.seq for f in frames])
    assert np.all(np.diff(seq) == 1 + np.array([f.dropped for f in frames[1:]]))
    times = np.array([f.audio_time for f in frames])
    assert np.allclose(np.diff(times), 0.04, atol=1e-6)
    assert all(f.exp.shape == (50,) and f.pose.shape == (6,) and f.eyes.shape == (4,) for f in frames)
    # Same machine, same clock: a frame arrives after the server emitted it, and soon.
    lag = np.array([f.recv_time - f.emit_time for f in frames])
    assert np.all(lag > -0.01) and np.all(lag < 5.0)


def test_record_writes_animate_layout(server, tmp_path):
    from clients.ws_client import StreamClient

    with StreamClient(server.ws_url, token=TOKEN, reconnect=False) as client:
        next(client.frames(timeout=30))
        shape = np.asarray(client.hello["template"]["shape"], np.float32)
    out = tmp_path / "rec.npz"
    res = record_cli("--url", server.ws_url, "--token", TOKEN, "-o", str(out), "--frames", "30")
    assert res.returncode == 0, res.stderr
    assert "30 frames" in res.stdout
    with np.load(out) as d:
        rec = {k: d[k] for k in d.files}
    assert rec["exp"].shape == (30, 50) and rec["exp"].dtype == np.float32
    assert rec["pose"].shape == (30, 6) and rec["shape"].shape == (30, 100)
    assert np.array_equal(rec["shape"][0], shape) and np.all(rec["shape"] == rec["shape"][0])
    for key in ("seq", "audio_time", "emit_time", "recv_time", "dropped"):
        assert rec[key].shape == (30,), key
    assert rec["eyes"].shape == (30, 4) and np.all(np.isfinite(rec["eyes"]))  # serve has eyes on
    assert np.all(np.diff(rec["seq"]) >= 1) and np.all(np.diff(rec["audio_time"]) > 0)
    assert np.all(rec["recv_time"] >= rec["emit_time"] - 0.01)
    assert np.all(np.isfinite(rec["exp"])) and rec["exp"].std() > 0  # real motion, not zeros
    # The recording is what flame-verts/animate read.
    from diffposetalk.flame import load_coefficients

    s, e, p = load_coefficients(out)
    assert e.shape == (30, 50) and p.shape == (30, 6) and s.shape == (30, 100)


def test_record_flushes_on_ctrl_c(server, tmp_path):
    out = tmp_path / "ctrlc.npz"
    proc = subprocess.Popen([sys.executable, "-m", "dpt_live.cli", "record", "--url", server.ws_url,
                             "--token", TOKEN, "-o", str(out)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        head = []
        while not head or "recording session" not in head[-1]:  # printed at the first frame
            head.append(proc.stdout.readline())
            assert head[-1], "".join(head)
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=30)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, rest
    assert "Ctrl-C" in rest
    with np.load(out) as d:
        assert d["exp"].shape[0] >= 5 and d["exp"].shape[0] == d["seq"].shape[0]


def test_record_refused_token_is_a_clear_error(server, tmp_path):
    out = tmp_path / "bad.npz"
    res = record_cli("--url", server.ws_url, "--token", "wrong", "-o", str(out), "--frames", "3")
    assert res.returncode == 2
    assert "HTTP 401" in res.stderr and "token" in res.stderr
    assert "wrong" not in res.stderr  # the token is never echoed
    assert not out.exists()


def test_record_bad_url_and_unreachable_server(tmp_path):
    out = tmp_path / "x.npz"
    res = record_cli("--url", "ftp://example/ws", "-o", str(out), "--frames", "3")
    assert res.returncode == 2 and "bad server URL" in res.stderr
    res = record_cli("--url", "ws://127.0.0.1:9/ws", "-o", str(out), "--frames", "3", "--token", "t")
    assert res.returncode == 2 and "cannot reach" in res.stderr
    res = record_cli("--url", "ws://127.0.0.1:9", "-o", str(tmp_path / "x.txt"), "--frames", "3")
    assert res.returncode == 2 and ".npz" in res.stderr
    assert not out.exists()


# --- units ------------------------------------------------------------------------------------

def test_ws_url_forms():
    from clients.ws_client import ClientError, ws_url

    assert ws_url("ws://h:1", "t", "s") == "ws://h:1/ws?token=t&session=s&mode=binary"
    assert ws_url("http://h:1/ws/") == "ws://h:1/ws?mode=binary"
    assert ws_url("https://h/ws?token=a") == "wss://h/ws?token=a&mode=binary"
    for bad in ("h:1", "ws://", "ws://h:x", "ws://h:1/other"):
        with pytest.raises(ClientError):
            ws_url(bad)


def test_recording_save_is_atomic_and_complete(tmp_path):
    from clients.record import Recording
    from clients.ws_client import Frame

    rec = Recording(np.arange(100))
    for i in range(3):
        rec.add(Frame(seq=i, audio_time=0.02 + 0.04 * i, emit_time=10.0 + i, recv_time=10.1 + i,
                      exp=np.full(50, i, np.float32), pose=np.zeros(6, np.float32),
                      eyes=None if i == 1 else np.ones(4, np.float32), dropped=i, reset=i == 0))
    path = tmp_path / "sub" / "r.npz"
    rec.save(path)
    assert not (tmp_path / "sub" / "r.npz.part").exists()
    with np.load(path) as d:
        assert d["exp"][:, 0].tolist() == [0, 1, 2] and d["dropped"].tolist() == [0, 1, 2]
        assert np.isnan(d["eyes"][1]).all() and d["eyes"][0].tolist() == [1, 1, 1, 1]
        assert d["reset"].tolist() == [True, False, False] and d["shape"][2, 99] == 99
