"""Wire protocol v1 (streaming/protocol.py): pure encode/decode/validation, no sockets."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from clients import ws_client as c  # the control messages clients send
from server import protocol as p


def frame(eyes=True, **kw) -> p.WireFrame:
    rng = np.random.default_rng(1)
    args = dict(seq=41, audio_time=1.66, emit_time=1767225600.125, exp=rng.normal(size=50).astype(np.float32),
                pose=rng.normal(size=6).astype(np.float32),
                eyes=rng.uniform(size=4).astype(np.float32) if eyes else None)
    args.update(kw)
    return p.WireFrame(**args)


def test_binary_layout_matches_the_spec():
    f = frame(reset=True, dropped=3)
    data = p.encode_binary_frame(f)
    assert len(data) == 272 == p.FRAME_BYTES
    magic, version, flags, seq, dropped, at, et = struct.unpack_from("<4sHHIIdd", data)
    assert (magic, version, flags, seq, dropped) == (b"DPTF", 1, 0b11, 41, 3)
    assert (at, et) == (1.66, 1767225600.125)
    payload = np.frombuffer(data, "<f4", offset=32)
    np.testing.assert_array_equal(payload[0:50], f.exp)
    np.testing.assert_array_equal(payload[50:56], f.pose)
    np.testing.assert_array_equal(payload[56:60], f.eyes)


def test_binary_round_trip_and_dropped_patch():
    f = frame()
    data = p.encode_binary_frame(f)
    g = p.decode_binary_frame(p.with_dropped(data, 7))
    assert (g.seq, g.dropped, g.reset, g.audio_time, g.emit_time) == (41, 7, False, 1.66, 1767225600.125)
    np.testing.assert_array_equal(g.exp, f.exp)
    np.testing.assert_array_equal(g.eyes, f.eyes)
    assert p.with_dropped(data, 0) is data
    no_eyes = p.decode_binary_frame(p.encode_binary_frame(frame(eyes=False)))
    assert no_eyes.eyes is None


def test_json_round_trip_is_exact_for_float32():
    f = frame(eyes=False, reset=True)
    text = p.encode_json_frame(f)
    obj = json.loads(text)
    assert set(obj) >= {"type", "seq", "dropped", "audio_time", "emit_time", "exp", "pose", "eyes"}
    assert obj["eyes"] is None and obj["reset"] is True
    g = p.decode_server_message(text)
    np.testing.assert_array_equal(g.exp, f.exp)  # float32 -> JSON double -> float32 is exact
    np.testing.assert_array_equal(g.pose, f.pose)


@pytest.mark.parametrize("data, problem", [
    (b"x" * 271, "271 bytes"),
    (b"XXXX" + bytes(268), "magic"),
    (struct.pack("<4sHHIIdd", b"DPTF", 2, 0, 0, 0, 0, 0) + bytes(240), "version 2"),
])
def test_bad_binary_frames_are_refused_by_name(data, problem):
    with pytest.raises(p.ProtocolError, match=problem):
        p.decode_binary_frame(data)


def test_hello_round_trip_and_version_check():
    hello = p.make_hello(session="default", mode="binary", shape=np.zeros(100), flame_asset=None,
                         model={"path": "m", "kind": "teacher"}, styles=["calm"], style="calm",
                         guidance={"audio": 1.15, "style": 3.0}, source="file", limits={"max_message": 1})
    obj = p.parse_hello(p.dumps(hello))
    assert obj["header"] == "<4sHHIIdd" and obj["header_bytes"] == 32 and obj["frame_floats"] == 60
    assert [x["name"] for x in obj["layout"]] == ["exp", "pose", "eyes"]
    assert len(obj["template"]["shape"]) == 100
    with pytest.raises(p.ProtocolError, match="protocol 2"):
        p.parse_hello(dict(hello, protocol=2))
    with pytest.raises(p.ProtocolError, match="first message"):
        p.parse_hello('{"type": "state"}')


def test_control_messages_validate():
    assert p.parse_control(c.style_control(None)) == {"type": "style", "name": None}
    assert p.parse_control(c.guidance_control(1, 2.5)) == {"type": "guidance", "audio": 1.0, "style": 2.5}
    assert p.parse_control(c.pause_control(True))["paused"] is True
    start = p.parse_control(c.audio_start_control(48000, 2, "s16le"))
    assert start["dtype"] == "int16" and p.audio_frame_bytes(start) == 4
    for builder in (c.reset_control, c.audio_end_control, c.ping_control):
        assert p.parse_control(builder())["type"] in p.CONTROL_TYPES


@pytest.mark.parametrize("text, problem", [
    ("{not json", "malformed JSON"),
    ("[1, 2]", "JSON object"),
    ('{"name": "x"}', "without a string 'type'"),
    ('{"type": "dance"}', "unknown control message type 'dance'"),
    ('{"type": "style"}', "missing field 'name'"),
    ('{"type": "style", "name": 3}', "preset name or null"),
    ('{"type": "guidance", "audio": "1", "style": 2}', "'audio' must be a finite number"),
    ('{"type": "guidance", "audio": 1, "style": -1}', "outside"),
    ('{"type": "guidance", "audio": 1}', "'style' must be a finite number"),
    ('{"type": "pause", "paused": 1}', "true or false"),
    ('{"type": "audio_start", "rate": 1000, "channels": 1, "format": "f32le"}', "rate 1000 outside"),
    ('{"type": "audio_start", "rate": 16000, "channels": 3, "format": "f32le"}', "channels must be 1 or 2"),
    ('{"type": "audio_start", "rate": 16000, "channels": 1, "format": "mp3"}', "format must be one of"),
])
def test_bad_control_messages_name_the_problem(text, problem):
    with pytest.raises(p.ProtocolError, match=problem):
        p.parse_control(text)


def test_close_reason_fits_a_control_frame():
    long = "é" * 200
    assert len(p.clip_reason(long).encode()) <= 123
    assert p.clip_reason("short") == "short"


def test_degraded_flag_round_trips():
    """bit2 marks a frame the batching scheduler shed work for (docs/PROTOCOL.md)."""
    f = frame(degraded=True)
    data = p.encode_binary_frame(f)
    assert struct.unpack_from("<4sHH", data)[2] == 0b101
    assert p.decode_binary_frame(data).degraded is True
    assert p.decode_binary_frame(p.encode_binary_frame(frame())).degraded is False
    obj = json.loads(p.encode_json_frame(f))
    assert obj["degraded"] is True and p.decode_server_message(json.dumps(obj)).degraded is True
