"""VMC bridge: FLAME motion -> OSC bundles on a real UDP socket, decoded by a python-osc server."""

from __future__ import annotations

import json
import math
import threading
import time
import types

import numpy as np
import pytest
from pythonosc.dispatcher import Dispatcher
from pythonosc.osc_server import BlockingOSCUDPServer
from test_record import TOKEN, fast_model_dir, server  # noqa: F401 - fixtures

from clients.vmc import Playout, VmcBridge, parse_target, run_bridge
from clients.vmc_map import DEFAULT_MAPPING, FEATURES, MappingError, VmcMapper, load_mapping, unity_quaternion
from training.synth.visemes import EXP_MAP, VISEMES


class Receiver:
    """A python-osc UDP server on a free port that keeps every packet's decoded messages."""

    def __init__(self):
        self.packets: list[list[tuple]] = []
        self.lock = threading.Lock()
        receiver = self

        class CountingDispatcher(Dispatcher):
            def call_handlers_for_packet(self, data, client_address):
                from pythonosc.osc_packet import OscPacket

                msgs = [(m.message.address, *m.message.params) for m in OscPacket(data).messages]
                with receiver.lock:
                    receiver.packets.append(msgs)
                return super().call_handlers_for_packet(data, client_address)

        d = CountingDispatcher()
        d.set_default_handler(lambda *a: None)
        # one thread handles packets in arrival order (a thread per packet can log them out of order)
        self.server = BlockingOSCUDPServer(("127.0.0.1", 0), d)
        # room for a burst of bundles (a test ticks faster than real time; the kernel caps it at rmem_max)
        import socket

        self.server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait(self, n: int, timeout: float = 5.0) -> list[list[tuple]]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self.lock:
                if len(self.packets) >= n:
                    return list(self.packets)
            time.sleep(0.01)
        with self.lock:
            return list(self.packets)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def blends(packet) -> dict[str, float]:
    return {m[1]: m[2] for m in packet if m[0] == "/VMC/Ext/Blend/Val"}


def bones(packet) -> dict[str, tuple]:
    return {m[1]: (m[2:5], np.array(m[5:9])) for m in packet if m[0] == "/VMC/Ext/Bone/Pos"}


def synth_frame(viseme: str, amp: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """exp and pose as the SynthTalk articulation model makes them for one held viseme."""
    jaw, open_, closure, round_, spread = VISEMES[viseme]
    exp = np.zeros(50)
    exp[:5] = EXP_MAP @ np.array([open_ * amp, closure, round_ * amp, spread * amp, 0.0])
    pose = np.zeros(6)
    pose[3] = jaw * amp
    return exp, pose


def qmul(a, b):
    ax, ay, az, aw = a
    bx, by, bz, bw = b
    return np.array([aw * bx + ax * bw + ay * bz - az * by, aw * by - ax * bz + ay * bw + az * bx,
                     aw * bz + ax * by - ay * bx + az * bw, aw * bw - ax * bx - ay * by - az * bz])


# --- mapping ----------------------------------------------------------------------------------

def test_default_features_are_the_inverse_of_synthtalk_map():
    rows = np.array([DEFAULT_MAPPING["features"][f] for f in FEATURES])
    assert np.allclose(rows, np.linalg.inv(EXP_MAP), atol=1e-5)


@pytest.mark.parametrize("viseme,expected", [("AA", "A"), ("IY", "I"), ("UW", "U"), ("EH", "E"), ("OH", "O")])
def test_synthtalk_vowels_drive_their_vrm_viseme(viseme, expected):
    exp, pose = synth_frame(viseme)
    out = VmcMapper(load_mapping()).blendshapes(exp, pose, None)
    vis = {k: out[k] for k in "AIUEO"}
    assert max(vis, key=vis.get) == expected, vis
    assert vis[expected] > 0.3


def test_closed_mouth_shows_no_viseme_and_arkit_closes_lips():
    mapper = VmcMapper(load_mapping(), arkit=True)
    for viseme in ("sil", "PBM"):
        exp, pose = synth_frame(viseme)
        out = mapper.blendshapes(exp, pose, np.array([0.0, 1.0, 0.0, 0.0]))
        assert all(out[k] < 0.05 for k in "AIUEO"), out
        assert out["Blink_L"] == 0.0 and out["Blink_R"] == 1.0
        assert out["eyeBlinkRight"] == 1.0 and out["jawOpen"] < 0.1
    exp, pose = synth_frame("PBM")
    assert mapper.blendshapes(exp, pose, None)["mouthClose"] > 0.5
    exp, pose = synth_frame("UW")
    assert mapper.blendshapes(exp, pose, None)["mouthPucker"] > 0.5


def test_auto_neutral_removes_a_speakers_constant_spread():
    # A speaker style with lips spread at rest: SynthTalk's exp_offset adds to exp[0:5].
    rest, pose = synth_frame("sil")
    rest[:5] += EXP_MAP @ np.array([0.0, 0.0, 0.0, 0.3, 0.4])  # spread + smile offset
    fixed = VmcMapper(load_mapping(auto_neutral_s=0.0))
    assert fixed.blendshapes(rest, pose, None)["I"] > 0.2  # without calibration: a held "I"
    mapper = VmcMapper(load_mapping())
    for _ in range(50):  # 2 s of closed-jaw frames
        mapper.observe(rest, pose)
    assert mapper.blendshapes(rest, pose, None)["I"] < 0.05
    open_exp, open_pose = synth_frame("AA")
    mapper.observe(open_exp + rest, open_pose)  # an open jaw does not move the rest estimate
    assert mapper.neutral["spread"] == pytest.approx(0.3, abs=0.02)
    out = mapper.blendshapes(open_exp + rest, open_pose, None)
    assert max("AIUEO", key=out.get) == "A"


def test_quaternion_convention():
    # FLAME +x rotation = nod down; Unity's left-handed frame keeps x (mirror of x flips y, z).
    q = unity_quaternion((0.4, 0.0, 0.0))
    assert q[0] == pytest.approx(math.sin(0.2)) and q[3] == pytest.approx(math.cos(0.2))
    q = unity_quaternion((0.0, 0.4, 0.0))  # turn to the avatar's left
    assert q[1] == pytest.approx(-math.sin(0.2))
    assert unity_quaternion((0.0, 0.0, 0.0)) == (0.0, 0.0, 0.0, 1.0)


def test_mapping_file_overrides_and_errors(tmp_path):
    toml = tmp_path / "m.toml"
    toml.write_text('jaw_open_rad = 0.5\nneck_share = 0.0\n[gains]\nA = 2.0\n[features]\nopen = [1.0]\n')
    m = load_mapping(toml, neck_share=0.25)
    assert m["jaw_open_rad"] == 0.5 and m["gains"] == {"A": 2.0} and m["neck_share"] == 0.25
    assert m["features"]["open"] == [1.0] and m["features"]["round"] == DEFAULT_MAPPING["features"]["round"]
    js = tmp_path / "m.json"
    for text, needle in [('{"jaw_opn": 1}', "unknown key 'jaw_opn'"), ('{"neck_share": 2}', "neck_share"),
                         ('{"gains": {"Q": 1}}', "unknown output 'Q'"), ("{nope", "not valid JSON"),
                         ('{"features": {"open": "x"}}', "features.open")]:
        js.write_text(text)
        with pytest.raises(MappingError, match=needle):
            load_mapping(js)
    with pytest.raises(MappingError, match="cannot read"):
        load_mapping(tmp_path / "missing.json")


def test_parse_target():
    assert parse_target("127.0.0.1:39539") == ("127.0.0.1", 39539)
    assert parse_target("[::1]:9000") == ("::1", 9000)
    from clients.ws_client import ClientError  # the clients' own user-facing error (exit status 2)

    for bad in ("localhost", "h:0", "h:x", ":5"):
        with pytest.raises(ClientError):
            parse_target(bad)


# --- OSC on a real UDP socket -----------------------------------------------------------------

def test_bundles_follow_jaw_eyes_and_head(receiver):
    # raw blinks and head (no re-drawn blinks, no rest offset): the values pass through exactly
    raw = load_mapping(head_rest="off", blink={"shape": False})
    bridge = VmcBridge(("127.0.0.1", receiver.port), VmcMapper(raw), rate=25, delay=0.0)
    jaws = np.linspace(0.0, 0.3, 13)
    for i, jaw in enumerate(jaws):
        pose = np.array([0.02 * i, -0.01 * i, 0.005 * i, jaw, 0, 0])
        eyes = np.array([i / 12, 1 - i / 12, 0.0, 0.0])
        bridge.push(np.zeros(50), pose, eyes, audio_time=0.04 * i, now=0.04 * i)
        assert bridge.tick(0.04 * i)
    packets = receiver.wait(len(jaws))
    assert len(packets) == len(jaws)
    a = np.array([blends(p)["A"] for p in packets])
    # exp = 0: the jaw alone gives openness up to open_mix (0.5)
    assert a[0] == 0.0 and a[-1] > 0.4 and np.all(np.diff(a) >= 0) and np.sum(np.diff(a) > 0) >= 8
    for i, p in enumerate(packets):
        b = blends(p)
        assert b["Blink_L"] == pytest.approx(i / 12, abs=1e-6)
        assert b["Blink_R"] == pytest.approx(1 - i / 12, abs=1e-6)
        assert p[-1] == ("/VMC/Ext/Blend/Apply",) and ("/VMC/Ext/OK", 1) in p
        bn = bones(p)
        full = unity_quaternion(np.array([0.02, -0.01, 0.005]) * i)
        assert np.allclose(qmul(bn["Neck"][1], bn["Head"][1]), full, atol=1e-6)
        assert np.allclose(bn["Neck"][1], unity_quaternion(np.array([0.02, -0.01, 0.005]) * i * 0.4), atol=1e-6)
        assert np.allclose(bn["Head"][1], unity_quaternion(np.array([0.02, -0.01, 0.005]) * i * 0.6), atol=1e-6)
        assert set(bn) == {"Neck", "Head", "LeftEye", "RightEye"}


def test_interpolation_to_60hz_gives_2_4x_packets(receiver):
    def run(rate):
        bridge = VmcBridge(("127.0.0.1", receiver.port), VmcMapper(load_mapping()), rate=rate, delay=0.0)
        for i in range(51):  # 2 s of frames, jaw ramping up and down
            pose = np.array([0, 0, 0, 0.05 + 0.15 * abs(math.sin(math.pi * i / 25)), 0, 0])  # above the dead zone, below saturation
            bridge.push(np.zeros(50), pose, None, audio_time=0.04 * i, now=0.04 * i)
        ticks = np.arange(int(round(2.0 * rate))) / rate  # the bridge's clock over those 2 s
        for t in ticks:
            bridge.tick(t)
        return ticks

    before = len(receiver.packets)
    ticks25 = run(25)
    n25 = len(receiver.wait(before + len(ticks25))) - before
    ticks60 = run(60)
    packets = receiver.wait(before + n25 + len(ticks60))
    n60 = len(packets) - before - n25
    assert (n25, n60) == (50, 120) and n60 / n25 == pytest.approx(2.4)
    # Interpolated, not repeated: every 60 Hz packet between frames carries a new jaw value.
    a60 = np.array([blends(p)["A"] for p in packets[-n60:]])
    moving = np.abs(np.diff(a60)) > 1e-6
    assert moving.mean() > 0.9


def test_playout_jitter_buffer():
    p = Playout(delay=0.1)
    # Frames arrive in bursts of two every 80 ms (a streaming step), 30 ms late at worst.
    for i in range(20):
        arrive = 0.08 * (i // 2) + 0.08 + (0.03 if i % 4 == 0 else 0.0)
        p.push(0.04 * i, np.array([float(i)]), now=arrive)
    assert p.base == pytest.approx(0.08 - 0.04)  # the earliest relative arrival (frame 1)
    v, past = p.sample(now=p.base + 0.1 + 0.3)  # play time 0.3 s: between frames 7 and 8
    assert v[0] == pytest.approx(7.5) and past < 0
    v, past = p.sample(now=10.0)  # long after the last frame: held, and reported as past
    assert v[0] == 19 and past > 9
    p.push(0.0, np.array([100.0]), now=11.0, reset=True)  # pipeline reset: starts over
    assert p.resets == 1 and p.sample(now=11.0)[0][0] == 100.0


# --- the bridge against a real server ---------------------------------------------------------

def test_bridge_against_live_server(server, receiver, capsys):  # noqa: F811 - fixture
    args = types.SimpleNamespace(url=server.ws_url, token=TOKEN, session=None,
                                 target=f"127.0.0.1:{receiver.port}", rate=60.0, delay_ms=100.0, arkit=True,
                                 mapping=None, smooth_ms=20.0, mouth_gain=None, neck_share=None, mirror=False,
                                 seconds=3.0, print_mapping=False)
    assert run_bridge(args) == 0
    packets = receiver.wait(1)
    assert len(packets) >= 60  # ~60 Hz once frames flow (the first arrive after the hello)
    names = set().union(*(blends(p) for p in packets))
    assert {"A", "I", "U", "E", "O", "Blink_L", "Blink_R", "jawOpen", "mouthFunnel", "eyeBlinkLeft"} <= names
    heads = np.array([bones(p)["Head"][1] for p in packets])
    assert np.allclose(np.linalg.norm(heads, axis=1), 1, atol=1e-5) and heads.std(0).max() > 0  # it moves
    # the summary says what the jitter buffer added (fixed 100 ms here)
    assert "fixed buffer delay p50 100 ms, p95 100 ms" in capsys.readouterr().out


def test_bridge_stops_on_sigterm_with_its_summary(server, receiver, capsys):  # noqa: F811 - fixture
    """SIGTERM (a service manager, bench-e2e) ends the bridge like Ctrl-C: socket closed, summary
    printed, the previous handler back. A bridge that ignored it would run its full 10 s."""
    import os
    import signal

    unhandled = []

    def mine(*_):
        unhandled.append(1)

    original = signal.signal(signal.SIGTERM, mine)
    args = types.SimpleNamespace(url=server.ws_url, token=TOKEN, session=None,
                                 target=f"127.0.0.1:{receiver.port}", rate=60.0, delay_ms=None, arkit=False,
                                 mapping=None, smooth_ms=None, mouth_gain=None, neck_share=None, mirror=False,
                                 seconds=10.0, print_mapping=False)
    timer = threading.Timer(2.5, os.kill, (os.getpid(), signal.SIGTERM))
    try:
        timer.start()
        start = time.monotonic()
        assert run_bridge(args) == 0
        took = time.monotonic() - start
        restored = signal.getsignal(signal.SIGTERM)
    finally:
        timer.cancel()
        signal.signal(signal.SIGTERM, original)
    assert not unhandled and took < 8, took
    assert restored is mine
    assert "adaptive buffer delay p50" in capsys.readouterr().out


def test_bridge_refused_token_is_a_clear_error(server, receiver):  # noqa: F811 - fixture
    from clients.ws_client import ClientError

    args = types.SimpleNamespace(url=server.ws_url, token="nope", session=None,
                                 target=f"127.0.0.1:{receiver.port}", rate=60.0, delay_ms=100.0, arkit=False,
                                 mapping=None, smooth_ms=None, mouth_gain=None, neck_share=None, mirror=False,
                                 seconds=5.0, print_mapping=False)
    with pytest.raises(ClientError, match="HTTP 401"):
        run_bridge(args)


def test_print_mapping_cli(capsys):
    from dpt_live.cli import main

    assert main(["vmc", "--print-mapping", "--neck-share", "0.3", "--mouth-gain", "1.5"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["neck_share"] == 0.3 and m["gains"]["A"] == 1.5
