"""`dpt-live serve` as a subprocess: prints the viewer URL with its token, serves frames, refuses
bad arguments by name, and shuts down gracefully on SIGTERM (viewers closed with 1001)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import read_until
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from server import protocol as p

ROOT = Path(__file__).resolve().parent.parent


def serve_cmd(*args):
    return [sys.executable, "-m", "dpt_live.cli", "serve", *map(str, args)]


def test_backend_choices_match_the_factory():
    from dpt_live.commands.serve import BACKENDS as SERVE_BACKENDS
    from streaming.factory import BACKENDS

    assert SERVE_BACKENDS == BACKENDS


def test_bad_arguments_are_refused_by_name(tmp_path):
    out = subprocess.run(serve_cmd("--audio", tmp_path / "missing.wav", "--port", "0"), cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "audio file not found" in out.stderr
    out = subprocess.run(serve_cmd("--loop", "--port", "0"), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "--loop needs --audio" in out.stderr


def test_serve_prints_url_streams_and_stops_gracefully(tiny_model_dir, speech_like_wav):
    proc = subprocess.Popen(
        serve_cmd("--model", tiny_model_dir, "--audio", speech_like_wav, "--loop", "--port", "0",
                  "--token", "s3cret", "--hop-ms", 80, "--lookahead-ms", 80, "--context-ms", 400, "--steps", 1,
                  "--backend", "torch", "--style", "calm"),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        m, _ = read_until(proc, r"viewer: (http://127\.0\.0\.1:\d+/\?token=s3cret)", 120)
        url = m.group(1)
        ws_url = url.replace("http://", "ws://").replace("/?", "/ws?")

        async def scenario():
            async with connect(ws_url) as ws:
                hello = p.parse_hello(await ws.recv())
                frames = []
                while len(frames) < 5:
                    msg = p.decode_server_message(await asyncio.wait_for(ws.recv(), 20))
                    if isinstance(msg, p.WireFrame):
                        frames.append(msg)
                proc.send_signal(signal.SIGTERM)
                with pytest.raises(ConnectionClosed) as info:
                    while True:
                        await asyncio.wait_for(ws.recv(), 20)
                return hello, frames, info.value.rcvd

        hello, frames, close = asyncio.run(scenario())
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert hello["style"] == "calm" and hello["source"] == "file" and hello["model"]["kind"] == "teacher"
    assert all(f.eyes is not None for f in frames), "--eyes is on by default for serve"
    assert close.code == 1001 and close.reason == "server shutting down"
    assert proc.returncode == 0 and "dpt-live serve: stopped" in rest
