"""FLAME motion -> VTuber controls: VRM 0 visemes (A I U E O), blinks, Head/Neck/eye bone rotations
and, for Perfect Sync avatars, ARKit blendshape names. Pure arithmetic, no I/O (clients/vmc.py
sends the result); the table and its tuning are documented in docs/CLIENTS.md.

FLAME's expression basis has no named semantics, so the mouth is read through a documented linear
map. Its default is the inverse of SynthTalk's articulation map (training/synth/visemes.EXP_MAP:
features (open, closure, round, spread, smile) -> exp[0:5]), so the bundled demo model — trained
on SynthTalk — drives visemes sensibly; for a model trained on real FLAME data, replace the
``features`` rows in a mapping file (see docs/CLIENTS.md, "Tuning").

    f      = features @ (exp[0:n] - exp_offset)                      (open, closure, round, spread, smile)
    f.round, f.spread -= their running average over closed-jaw frames   (auto_neutral_s)
    jaw    = clip(pose.jaw_x / jaw_open_rad, 0, 1)
    o      = clip(open_mix * jaw + (1 - open_mix) * f.open, 0, 1)      mouth openness
    r, s   = clip(round_gain * f.round, 0, 1), clip(spread_gain * f.spread, 0, 1)
    A = o (1-r)(1-s)    E = o s (1-r)    O = o r    I = (1-o) s (1-r)    U = (1-o) r
    each value: gain * max(0, v - deadzone) / (1 - deadzone), clipped to 0..1
"""

from __future__ import annotations

import copy
import json
import math
import pathlib
import tomllib
from typing import Any

import numpy as np

FEATURES = ("open", "closure", "round", "spread", "smile")
VISEMES = ("A", "I", "U", "E", "O")
BLINKS = ("Blink_L", "Blink_R")
ARKIT = ("jawOpen", "mouthClose", "mouthFunnel", "mouthPucker", "mouthSmileLeft", "mouthSmileRight",
         "mouthStretchLeft", "mouthStretchRight", "eyeBlinkLeft", "eyeBlinkRight",
         "eyeLookInLeft", "eyeLookOutLeft", "eyeLookInRight", "eyeLookOutRight",
         "eyeLookUpLeft", "eyeLookUpRight", "eyeLookDownLeft", "eyeLookDownRight")

DEFAULT_MAPPING: dict[str, Any] = {
    # Rows: feature <- exp[0:5]. inv(training.synth.visemes.EXP_MAP), rounded (tests check it).
    "features": {
        "open":    [0.520833, 0.138889, 0.0, 0.0, 0.0],
        "closure": [0.104167, 0.694444, 0.0, 0.0, 0.0],
        "round":   [0.0, 0.0, 0.669014, 0.234742, -0.070423],
        "spread":  [0.0, 0.0, 0.176056, 0.938967, -0.28169],
        "smile":   [0.0, 0.0, -0.035211, -0.187793, 1.056338],
    },
    "exp_offset": [0.0, 0.0, 0.0, 0.0, 0.0],  # the avatar's neutral exp[0:5] (subtracted first)
    "jaw_open_rad": 0.25,     # jaw_x (radians) that counts as a fully open mouth (SynthTalk "AA")
    "open_mix": 0.5,          # openness from the jaw (1) vs from the lip-opening feature (0)
    "round_gain": 1.0,        # rounding feature -> r (U/O)
    "spread_gain": 1.5,       # spreading feature -> s (I/E): SynthTalk's EH (spread 0.5) reads as E
    "deadzone": 0.05,         # values below this are 0 (a resting mouth shows no viseme)
    # Rest-pose calibration: the round/spread features of frames with a nearly closed jaw are
    # averaged (time constant auto_neutral_s; 0 = off) and subtracted, so a speaker's constant lip
    # spread or pout (a style's offset) does not read as a held I or U.
    "auto_neutral_s": 5.0,
    "neutral_jaw_rad": 0.03,
    "gains": {},              # per output name (A, Blink_L, jawOpen, ...): multiplier, default 1
    "smoothing_ms": {"mouth": 0.0, "blink": 0.0, "head": 0.0, "eyes": 0.0},  # one-pole time constants
    "neck_share": 0.4,        # part of the head rotation given to the Neck bone (rest: Head)
    "head_gain": 1.0,         # scales the global rotation before the split
    "gaze_gain": 1.0,         # scales gaze angles for the eye bones / eyeLook* values
    "gaze_full_rad": 0.3,     # gaze angle that counts as 1.0 for eyeLook* (ARKit)
    "bone_positions": {"Neck": [0.0, 0.1, 0.0], "Head": [0.0, 0.1, 0.0],
                       "LeftEye": [0.03, 0.06, 0.05], "RightEye": [-0.03, 0.06, 0.05]},
    "mirror": False,          # swap left/right (webcam-like mirror image)
}


class MappingError(ValueError):
    pass


def _merge(base: dict, over: dict, where: str) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if key not in base:
            raise MappingError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(base))})")
        if isinstance(base[key], dict) and key not in ("gains",):
            if not isinstance(value, dict):
                raise MappingError(f"{where}: {key!r} must be a table/object")
            out[key] = _merge(base[key], value, f"{where}.{key}") if key != "features" else {**base[key], **value}
        else:
            out[key] = value
    return out


def load_mapping(path: str | pathlib.Path | None = None, **overrides) -> dict[str, Any]:
    """Defaults, then a JSON or TOML file (only the keys it names), then non-None ``overrides``."""
    mapping = copy.deepcopy(DEFAULT_MAPPING)
    if path is not None:
        path = pathlib.Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise MappingError(f"{path}: cannot read mapping file ({exc.strerror})") from exc
        try:
            data = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
        except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
            raise MappingError(f"{path}: not valid {'TOML' if path.suffix.lower() == '.toml' else 'JSON'} ({exc})") from exc
        if not isinstance(data, dict):
            raise MappingError(f"{path}: the mapping must be an object/table")
        mapping = _merge(mapping, data, str(path))
    mapping = _merge(mapping, {k: v for k, v in overrides.items() if v is not None}, "options")
    validate(mapping)
    return mapping


def _num(x, where: str, lo=-math.inf, hi=math.inf) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or not lo <= x <= hi:
        raise MappingError(f"{where} must be a number in [{lo}, {hi}], got {x!r}")
    return float(x)


def validate(m: dict) -> None:
    rows = m["features"]
    for name in FEATURES:
        if name not in rows:
            raise MappingError(f"features: missing row {name!r}")
    for name, row in rows.items():
        if name not in FEATURES:
            raise MappingError(f"features: unknown feature {name!r} (known: {', '.join(FEATURES)})")
        if not isinstance(row, list) or not 1 <= len(row) <= 50:
            raise MappingError(f"features.{name} must be a list of 1..50 coefficients (exp[0], exp[1], ...)")
        for i, x in enumerate(row):
            _num(x, f"features.{name}[{i}]")
    if not isinstance(m["exp_offset"], list) or len(m["exp_offset"]) > 50:
        raise MappingError("exp_offset must be a list of at most 50 numbers")
    for i, x in enumerate(m["exp_offset"]):
        _num(x, f"exp_offset[{i}]")
    _num(m["jaw_open_rad"], "jaw_open_rad", 1e-3, 2.0)
    _num(m["open_mix"], "open_mix", 0.0, 1.0)
    _num(m["round_gain"], "round_gain", 0.0, 10.0)
    _num(m["spread_gain"], "spread_gain", 0.0, 10.0)
    _num(m["deadzone"], "deadzone", 0.0, 0.9)
    _num(m["auto_neutral_s"], "auto_neutral_s", 0.0, 600.0)
    _num(m["neutral_jaw_rad"], "neutral_jaw_rad", 0.0, 1.0)
    known = set(VISEMES) | set(BLINKS) | set(ARKIT)
    for name, g in m["gains"].items():
        if name not in known:
            raise MappingError(f"gains: unknown output {name!r}")
        _num(g, f"gains.{name}", 0.0, 10.0)
    for name, ms in m["smoothing_ms"].items():
        _num(ms, f"smoothing_ms.{name}", 0.0, 2000.0)
    _num(m["neck_share"], "neck_share", 0.0, 1.0)
    _num(m["head_gain"], "head_gain", 0.0, 5.0)
    _num(m["gaze_gain"], "gaze_gain", 0.0, 5.0)
    _num(m["gaze_full_rad"], "gaze_full_rad", 1e-3, 2.0)
    for bone, pos in m["bone_positions"].items():
        if not isinstance(pos, list) or len(pos) != 3:
            raise MappingError(f"bone_positions.{bone} must be [x, y, z]")
        for x in pos:
            _num(x, f"bone_positions.{bone}")
    if not isinstance(m["mirror"], bool):
        raise MappingError("mirror must be true or false")


# --- rotations --------------------------------------------------------------------------------

def unity_quaternion(rvec) -> tuple[float, float, float, float]:
    """FLAME axis-angle (right-handed: x = avatar's left, y up, z = avatar's forward) -> Unity
    quaternion (x, y, z, w) in Unity's left-handed frame (x = avatar's right). Mirroring x maps
    the rotation R to S R S (S = diag(-1, 1, 1)), i.e. the axis-angle to (ax, -ay, -az)."""
    ax, ay, az = float(rvec[0]), -float(rvec[1]), -float(rvec[2])
    angle = math.sqrt(ax * ax + ay * ay + az * az)
    if angle < 1e-12:
        return (0.0, 0.0, 0.0, 1.0)
    s = math.sin(angle / 2) / angle
    return (ax * s, ay * s, az * s, math.cos(angle / 2))


def _clip01(x: float) -> float:
    return 0.0 if x < 0 else 1.0 if x > 1 else float(x)


class VmcMapper:
    """One frame (exp, pose, eyes) -> blendshape values and bone rotations."""

    def __init__(self, mapping: dict | None = None, arkit: bool = False):
        self.m = mapping or load_mapping()
        validate(self.m)
        self.arkit = arkit
        width = max(len(r) for r in self.m["features"].values())
        self.n_in = max(width, len(self.m["exp_offset"]))
        self.matrix = np.zeros((len(FEATURES), self.n_in))
        for i, name in enumerate(FEATURES):
            row = self.m["features"][name]
            self.matrix[i, :len(row)] = row
        self.offset = np.zeros(self.n_in)
        self.offset[:len(self.m["exp_offset"])] = self.m["exp_offset"]
        self.neutral: dict[str, float] | None = None  # rest round/spread (auto_neutral_s)

    def observe(self, exp, pose, dt: float = 0.04) -> None:
        """Feed one network frame to the rest-pose calibration (auto_neutral_s)."""
        tau = self.m["auto_neutral_s"]
        if tau <= 0 or abs(float(pose[3])) > self.m["neutral_jaw_rad"]:
            return
        f = self.features(exp)
        if self.neutral is None:
            self.neutral = {"round": f["round"], "spread": f["spread"]}
            return
        a = min(1.0, dt / tau)
        for k in self.neutral:
            self.neutral[k] += a * (f[k] - self.neutral[k])

    def features(self, exp) -> dict[str, float]:
        x = np.asarray(exp, dtype=np.float64)[:self.n_in] - self.offset[:min(self.n_in, len(exp))]
        f = self.matrix[:, :x.shape[0]] @ x
        return dict(zip(FEATURES, (float(v) for v in f)))

    def _shape(self, name: str, v: float) -> float:
        dz = self.m["deadzone"]
        v = max(0.0, v - dz) / (1.0 - dz)
        return _clip01(v * self.m["gains"].get(name, 1.0))

    def blendshapes(self, exp, pose, eyes) -> dict[str, float]:
        f = self.features(exp)
        jaw = _clip01(float(pose[3]) / self.m["jaw_open_rad"])
        mix = self.m["open_mix"]
        o = _clip01(mix * jaw + (1 - mix) * f["open"])
        if self.neutral is not None:
            f["round"] -= self.neutral["round"]
            f["spread"] -= self.neutral["spread"]
        r, s = _clip01(self.m["round_gain"] * f["round"]), _clip01(self.m["spread_gain"] * f["spread"])
        raw = {"A": o * (1 - r) * (1 - s), "E": o * s * (1 - r), "O": o * r,
               "I": (1 - o) * s * (1 - r), "U": (1 - o) * r}
        out = {name: self._shape(name, raw[name]) for name in VISEMES}
        blink_l, blink_r = (0.0, 0.0) if eyes is None else (float(eyes[0]), float(eyes[1]))
        if self.m["mirror"]:
            blink_l, blink_r = blink_r, blink_l
        # Blinks skip the dead zone: a half-closed lid is meaningful.
        out["Blink_L"] = _clip01(blink_l * self.m["gains"].get("Blink_L", 1.0))
        out["Blink_R"] = _clip01(blink_r * self.m["gains"].get("Blink_R", 1.0))
        if self.arkit:
            out.update(self._arkit(f, jaw, o, r, s, out["Blink_L"], out["Blink_R"], eyes))
        return out

    def _arkit(self, f, jaw, o, r, s, blink_l, blink_r, eyes) -> dict[str, float]:
        smile = _clip01(f["smile"])
        raw = {"jawOpen": jaw, "mouthClose": _clip01(f["closure"]) * (1 - o),
               "mouthFunnel": o * r, "mouthPucker": (1 - o) * r,
               "mouthSmileLeft": smile, "mouthSmileRight": smile,
               "mouthStretchLeft": s * (1 - smile), "mouthStretchRight": s * (1 - smile)}
        out = {name: self._shape(name, v) for name, v in raw.items()}
        out["eyeBlinkLeft"], out["eyeBlinkRight"] = blink_l, blink_r
        yaw, pitch = (0.0, 0.0) if eyes is None else (float(eyes[2]), float(eyes[3]))
        full = self.m["gaze_full_rad"] / self.m["gaze_gain"] if self.m["gaze_gain"] > 0 else math.inf
        if self.m["mirror"]:
            yaw = -yaw
        left, right = _clip01(yaw / full), _clip01(-yaw / full)  # + yaw = looking to the avatar's left
        up, down = _clip01(pitch / full), _clip01(-pitch / full)
        # Looking left: the left eye looks out, the right eye in.
        out.update({"eyeLookOutLeft": left, "eyeLookInRight": left, "eyeLookInLeft": right,
                    "eyeLookOutRight": right, "eyeLookUpLeft": up, "eyeLookUpRight": up,
                    "eyeLookDownLeft": down, "eyeLookDownRight": down})
        return out

    def bones(self, pose, eyes) -> dict[str, tuple[tuple[float, float, float], tuple[float, float, float, float]]]:
        """Bone name -> (local position, local rotation quaternion) in Unity's frame."""
        rot = np.asarray(pose[:3], dtype=np.float64) * self.m["head_gain"]
        if self.m["mirror"]:
            rot = rot * np.array([1.0, -1.0, -1.0])  # reflect x: yaw and roll change sign
        share = self.m["neck_share"]
        # Same axis for both parts, so Neck then Head composes to the whole rotation exactly.
        pos = self.m["bone_positions"]
        out = {"Neck": (tuple(pos["Neck"]), unity_quaternion(rot * share)),
               "Head": (tuple(pos["Head"]), unity_quaternion(rot * (1 - share)))}
        if eyes is not None:
            yaw, pitch = float(eyes[2]), float(eyes[3])
            if self.m["mirror"]:
                yaw = -yaw
            g = self.m["gaze_gain"]
            # FLAME frame: + yaw turns towards the avatar's left (about +y); + pitch looks up,
            # which is a rotation about -x (x = avatar's left, forward z tilts up to +y).
            q = unity_quaternion((-pitch * g, yaw * g, 0.0))
            out["LeftEye"] = (tuple(pos["LeftEye"]), q)
            out["RightEye"] = (tuple(pos["RightEye"]), q)
        return out
