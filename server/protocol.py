"""Wire protocol v1 of `dpt-live serve` (docs/PROTOCOL.md): pure encode/decode/validate functions
shared by the server (server/) and the Python clients (clients/, which build the control messages
they send in clients/ws_client.py). No I/O here.

Server -> viewer: a text JSON ``hello`` first, then frames (binary ``<4sHHIIdd`` header + 60
float32, or JSON in ``mode=json``) and text JSON notices (``dropped``, ``state``, ``error``,
``pong``). Viewer -> server: text JSON control messages, and raw PCM binary messages between
``audio_start`` and ``audio_end``."""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from diffposetalk.units import FPS  # the hello's fps: the model's frame rate

PROTOCOL_VERSION = 1
MAGIC = b"DPTF"
HEADER_FORMAT = "<4sHHIIdd"
HEADER = struct.Struct(HEADER_FORMAT)
HEADER_BYTES = HEADER.size  # 32
FRAME_FLOATS = 60
FRAME_BYTES = HEADER_BYTES + 4 * FRAME_FLOATS  # 272
DROPPED_OFFSET = 12  # byte offset of the uint32 ``dropped`` field (patched per viewer)
LAYOUT = [{"name": "exp", "offset": 0, "size": 50},
          {"name": "pose", "offset": 50, "size": 6},
          {"name": "eyes", "offset": 56, "size": 4}]
POSE_LAYOUT = ["global_x", "global_y", "global_z", "jaw_x", "jaw_y", "jaw_z"]
EYES_LAYOUT = ["blink_l", "blink_r", "gaze_yaw", "gaze_pitch"]
FLAG_EYES = 1  # bit0: the eyes floats are valid
FLAG_RESET = 2  # bit1: first frame of a new pipeline (audio_time restarts, motion does not continue)
FLAG_DEGRADED = 4  # bit2: the scheduler shed work for this frame under overload (fewer steps, or held)

MODES = ("binary", "json", "upstream")  # upstream: a send-only connection (no frames), e.g. a page's microphone worker
AUDIO_FORMATS = {"f32le": "float32", "s16le": "int16"}  # wire name -> streaming.sources dtype
AUDIO_RATE_RANGE = (8000, 192000)
AUDIO_CHANNELS = (1, 2)
GUIDANCE_RANGE = (0.0, 100.0)
CONTROL_TYPES = ("style", "guidance", "reset", "pause", "audio_start", "audio_end", "ping")
SERVER_TYPES = ("hello", "frame", "dropped", "state", "error", "pong")

# WebSocket close codes the server uses
CLOSE_GOING_AWAY = 1001  # server shutdown / session closed
CLOSE_POLICY = 1008  # malformed or refused message
CLOSE_TOO_BIG = 1009  # message larger than --max-message
MAX_REASON_BYTES = 123  # RFC 6455: a close reason fits in a 125-byte control frame


class ProtocolError(ValueError):
    """A message that breaks the protocol; str() is the reason sent with the 1008 close."""


@dataclass
class WireFrame:
    """One motion frame as it travels: what a viewer decodes from binary or JSON."""
    seq: int  # frame number in the server session (continues across pipeline rebuilds)
    audio_time: float  # s since the pipeline's stream start, centre of the frame's audio
    emit_time: float  # server wall clock (Unix epoch s) when the frame was produced
    exp: np.ndarray  # (50,) float32
    pose: np.ndarray  # (6,) float32
    eyes: np.ndarray | None  # (4,) float32, None when the session has no eyes
    dropped: int = 0  # frames this viewer lost since its previous frame
    reset: bool = False  # FLAG_RESET
    degraded: bool = False  # FLAG_DEGRADED

    @property
    def flags(self) -> int:
        return ((FLAG_EYES if self.eyes is not None else 0) | (FLAG_RESET if self.reset else 0)
                | (FLAG_DEGRADED if self.degraded else 0))


def clip_reason(reason: str) -> str:
    """A close reason cut to what a close frame can carry (UTF-8 safe)."""
    data = reason.encode("utf-8")
    if len(data) <= MAX_REASON_BYTES:
        return reason
    return data[:MAX_REASON_BYTES - 3].decode("utf-8", "ignore") + "..."


# --- frames ---------------------------------------------------------------------------------------

def _vec(values, n: int, what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float32).reshape(-1)
    if arr.shape != (n,):
        raise ProtocolError(f"frame field {what!r} has {arr.size} values, expected {n}")
    return arr


def encode_binary_frame(frame: WireFrame) -> bytes:
    payload = np.zeros(FRAME_FLOATS, dtype="<f4")
    payload[0:50] = _vec(frame.exp, 50, "exp")
    payload[50:56] = _vec(frame.pose, 6, "pose")
    if frame.eyes is not None:
        payload[56:60] = _vec(frame.eyes, 4, "eyes")
    header = HEADER.pack(MAGIC, PROTOCOL_VERSION, frame.flags, frame.seq & 0xFFFFFFFF,
                         min(int(frame.dropped), 0xFFFFFFFF), float(frame.audio_time), float(frame.emit_time))
    return header + payload.tobytes()


def with_dropped(data: bytes, dropped: int) -> bytes:
    """The same binary frame with another ``dropped`` count (the server encodes a frame once and
    patches this field for each viewer)."""
    if dropped == 0:
        return data
    buf = bytearray(data)
    struct.pack_into("<I", buf, DROPPED_OFFSET, min(int(dropped), 0xFFFFFFFF))
    return bytes(buf)


def decode_binary_frame(data: bytes | bytearray | memoryview) -> WireFrame:
    data = bytes(data)
    if len(data) != FRAME_BYTES:
        raise ProtocolError(f"binary frame of {len(data)} bytes, expected {FRAME_BYTES}")
    magic, version, flags, seq, dropped, audio_time, emit_time = HEADER.unpack_from(data, 0)
    if magic != MAGIC:
        raise ProtocolError(f"binary frame magic {magic!r}, expected {MAGIC!r}")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"binary frame version {version}, this client speaks {PROTOCOL_VERSION}")
    payload = np.frombuffer(data, dtype="<f4", count=FRAME_FLOATS, offset=HEADER_BYTES).astype(np.float32)
    return WireFrame(seq=seq, audio_time=audio_time, emit_time=emit_time, exp=payload[0:50].copy(),
                     pose=payload[50:56].copy(),
                     eyes=payload[56:60].copy() if flags & FLAG_EYES else None,
                     dropped=dropped, reset=bool(flags & FLAG_RESET), degraded=bool(flags & FLAG_DEGRADED))


def frame_json_dict(frame: WireFrame) -> dict[str, Any]:
    return {"type": "frame", "seq": int(frame.seq), "dropped": int(frame.dropped),
            "audio_time": float(frame.audio_time), "emit_time": float(frame.emit_time),
            "reset": bool(frame.reset), "degraded": bool(frame.degraded),
            "exp": _vec(frame.exp, 50, "exp").tolist(),
            "pose": _vec(frame.pose, 6, "pose").tolist(),
            "eyes": None if frame.eyes is None else _vec(frame.eyes, 4, "eyes").tolist()}


def encode_json_frame(frame: WireFrame) -> str:
    return json.dumps(frame_json_dict(frame), separators=(",", ":"))


def _number(obj: dict, key: str, where: str) -> float:
    v = obj.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ProtocolError(f"{where}: field {key!r} must be a finite number, got {v!r}")
    return float(v)


def _integer(obj: dict, key: str, where: str) -> int:
    v = obj.get(key)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ProtocolError(f"{where}: field {key!r} must be an integer, got {v!r}")
    return v


def _float_list(obj: dict, key: str, n: int, where: str) -> np.ndarray:
    v = obj.get(key)
    if not isinstance(v, list) or len(v) != n or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
        raise ProtocolError(f"{where}: field {key!r} must be a list of {n} numbers")
    return np.asarray(v, dtype=np.float32)


def json_frame_from_dict(obj: dict) -> WireFrame:
    eyes = obj.get("eyes")
    return WireFrame(seq=_integer(obj, "seq", "frame"), dropped=_integer(obj, "dropped", "frame"),
                     audio_time=_number(obj, "audio_time", "frame"),
                     emit_time=_number(obj, "emit_time", "frame"),
                     exp=_float_list(obj, "exp", 50, "frame"), pose=_float_list(obj, "pose", 6, "frame"),
                     eyes=None if eyes is None else _float_list(obj, "eyes", 4, "frame"),
                     reset=bool(obj.get("reset", False)), degraded=bool(obj.get("degraded", False)))


# --- server messages ------------------------------------------------------------------------------

def make_hello(*, session: str, mode: str, shape, flame_asset: str | None, model: dict, styles: list[str],
               style: str | None, guidance: dict[str, float], source: str, limits: dict,
               avatar_map: dict | None = None, avatar: str | None = None) -> dict[str, Any]:
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} not in {MODES}")
    return {"type": "hello", "protocol": PROTOCOL_VERSION, "fps": FPS, "session": session, "mode": mode,
            "frame_floats": FRAME_FLOATS, "header": HEADER_FORMAT, "header_bytes": HEADER_BYTES,
            "layout": LAYOUT, "pose_layout": POSE_LAYOUT, "eyes_layout": EYES_LAYOUT,
            "template": {"flame_asset": flame_asset, "shape": [float(x) for x in np.asarray(shape).reshape(-1)]},
            "model": model, "styles": list(styles), "style": style, "guidance": dict(guidance),
            "source": source, "limits": dict(limits),
            # the model's measured FLAME -> avatar-controls map (clients/vmc_map.py) and the VRM to show
            "avatar_map": avatar_map, "avatar": avatar}


def parse_hello(text: str | dict) -> dict[str, Any]:
    """Check a hello (a client calls this first) and return it; refuses another protocol version."""
    obj = _parse_object(text, "hello") if not isinstance(text, dict) else text
    if obj.get("type") != "hello":
        raise ProtocolError(f"expected hello as the first message, got type {obj.get('type')!r}")
    if obj.get("protocol") != PROTOCOL_VERSION:
        raise ProtocolError(f"server speaks protocol {obj.get('protocol')!r}, this client {PROTOCOL_VERSION}")
    if obj.get("mode") not in MODES:
        raise ProtocolError(f"hello: unknown mode {obj.get('mode')!r}")
    if obj.get("header") != HEADER_FORMAT or obj.get("frame_floats") != FRAME_FLOATS:
        raise ProtocolError("hello: frame layout differs from protocol 1")
    return obj


def dumps(msg: dict[str, Any]) -> str:
    return json.dumps(msg, separators=(",", ":"))


def dropped_message(count: int, total: int) -> dict[str, Any]:
    return {"type": "dropped", "count": int(count), "total": int(total)}


def state_message(**fields) -> dict[str, Any]:
    return {"type": "state", **fields}


def error_message(message: str) -> dict[str, Any]:
    return {"type": "error", "message": message}


def decode_server_message(message: str | bytes) -> WireFrame | dict[str, Any]:
    """Any server -> viewer message: a WireFrame for binary or JSON frames, else the JSON object
    (hello, dropped, state, error, pong)."""
    if isinstance(message, (bytes, bytearray, memoryview)):
        return decode_binary_frame(message)
    obj = _parse_object(message, "server message")
    kind = obj.get("type")
    if kind == "frame":
        return json_frame_from_dict(obj)
    if kind not in SERVER_TYPES:
        raise ProtocolError(f"unknown server message type {kind!r}")
    return obj


# --- client control messages ----------------------------------------------------------------------

def _parse_object(text, what: str) -> dict:
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"{what} is not UTF-8") from exc
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, TypeError) as exc:
        raise ProtocolError(f"malformed JSON in {what}: {exc}") from exc
    if not isinstance(obj, dict):
        raise ProtocolError(f"{what} must be a JSON object, got {type(obj).__name__}")
    return obj


def parse_control(text: str) -> dict[str, Any]:
    """Validate a client -> server text message; returns it normalised (numbers as float/int,
    ``audio_start`` with ``dtype`` added). Raises ProtocolError naming the problem."""
    obj = _parse_object(text, "control message")
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("control message without a string 'type'")
    if kind not in CONTROL_TYPES:
        raise ProtocolError(f"unknown control message type {kind[:40]!r}")
    where = f"{kind} message"
    if kind == "style":
        if "name" not in obj:
            raise ProtocolError(f"{where}: missing field 'name' (a preset name or null)")
        name = obj["name"]
        if name is not None and (not isinstance(name, str) or not name or len(name) > 200):
            raise ProtocolError(f"{where}: 'name' must be a preset name or null")
        return {"type": kind, "name": name}
    if kind == "guidance":
        out = {"type": kind}
        for key in ("audio", "style"):
            v = _number(obj, key, where)
            lo, hi = GUIDANCE_RANGE
            if not lo <= v <= hi:
                raise ProtocolError(f"{where}: {key!r} = {v:g} outside [{lo:g}, {hi:g}]")
            out[key] = v
        return out
    if kind == "pause":
        if not isinstance(obj.get("paused"), bool):
            raise ProtocolError(f"{where}: field 'paused' must be true or false")
        return {"type": kind, "paused": obj["paused"]}
    if kind == "audio_start":
        rate = _integer(obj, "rate", where)
        lo, hi = AUDIO_RATE_RANGE
        if not lo <= rate <= hi:
            raise ProtocolError(f"{where}: rate {rate} outside {lo}..{hi}")
        channels = _integer(obj, "channels", where)
        if channels not in AUDIO_CHANNELS:
            raise ProtocolError(f"{where}: channels must be 1 or 2, got {channels}")
        fmt = obj.get("format")
        if fmt not in AUDIO_FORMATS:
            raise ProtocolError(f"{where}: format must be one of {', '.join(AUDIO_FORMATS)}, got {fmt!r}")
        return {"type": kind, "rate": rate, "channels": channels, "format": fmt, "dtype": AUDIO_FORMATS[fmt]}
    return {"type": kind}  # reset, audio_end, ping: no fields


def audio_frame_bytes(start: dict[str, Any]) -> int:
    """Bytes of one multi-channel sample in an upstream declared by ``audio_start``."""
    return (4 if start["format"] == "f32le" else 2) * start["channels"]
