"""`dpt-live serve --cluster ray` as a subprocess: it starts a local Ray, streams frames without
sequence gaps, reports its replicas in /healthz, and Ctrl-C (SIGINT to its process group, as a
terminal sends it) stops the server and every process it started within 30 s."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import read_until

pytest.importorskip("ray")

from websockets.asyncio.client import connect  # noqa: E402

from server import protocol as p  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in found:
                found.add(c)
                todo.append(c)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_serve_on_a_local_ray_streams_and_ctrl_c_stops_everything(tiny_model_dir, speech_like_wav):
    cmd = [sys.executable, "-m", "dpt_live.cli", "serve", "--model", str(tiny_model_dir), "--audio", str(speech_like_wav),
           "--loop", "--port", "0", "--no-token", "--hop-ms", "80", "--lookahead-ms", "80", "--context-ms", "400",
           "--steps", "1", "--backend", "torch", "--cluster", "ray", "--replicas", "1", "--replica-cpus", "0.5"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"), start_new_session=True)
    try:
        m, _ = read_until(proc, r"health: (http://127\.0\.0\.1:\d+/)healthz", 240)
        base = m.group(1)
        health = json.load(urllib.request.urlopen(base + "healthz", timeout=10))
        assert health["cluster"] == {"kind": "ray", "replicas": 1, "healthy": 1}

        async def frames():
            async with connect(base.replace("http://", "ws://") + "ws") as ws:
                p.parse_hello(await ws.recv())
                got = []
                while len(got) < 40:
                    msg = p.decode_server_message(await asyncio.wait_for(ws.recv(), 20))
                    if isinstance(msg, p.WireFrame):
                        got.append(msg)
                return got

        got = asyncio.run(frames())
        seqs = [f.seq for f in got]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs  # no sequence gaps
        started = descendants(proc.pid)
        assert started, "the server started no Ray processes"
        t = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
        stopped_in = time.monotonic() - t
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    deadline = time.monotonic() + max(0.0, 30 - stopped_in)
    while any(alive(pid) for pid in started) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [pid for pid in started if alive(pid)]
    for pid in left:  # leave nothing behind even when failing
        os.kill(pid, signal.SIGKILL)
    assert not left, f"Ray processes still running {30:.0f} s after Ctrl-C: {left}"
    assert proc.returncode == 0 and "dpt-live serve: stopped" in rest, rest[-2000:]
