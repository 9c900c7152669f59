"""FLAME motion -> VTuber controls: VRM 0 visemes (A I U E O) and VRM 1.0 expressions (aa ih ou ee
oh), blinks, Head/Neck/eye bone rotations and, for Perfect Sync avatars, ARKit blendshape names.
Pure arithmetic, no I/O (clients/vmc.py sends the result; clients/web/avatar_map.js evaluates the
same mapping in the browser); the table and its tuning are documented in docs/CLIENTS.md.

A model directory ships a *measured* mapping (``avatar_map.json``, key ``fit``; fitted on
SynthTalk ground truth by ``dpt-live fit-avatar-map``, training/avatar_map.py), which the server
hands to its clients in the hello. With a fit the mouth is read as (FittedMouth):

    x      = (exp[0:K], jaw)                    dx = x - x_rest (calibrated on quiet frames, RestCalibration)
    rel    = W dx / (full - rest)               (jaw, open, closure, round, spread, smile), fitted
    p      = softmax(V dx / x_scale + c)        which vowel (A I U E O), fitted on GT visemes
    o      = clip((rel.jaw + rel.open) / 2)     openness; vowel k = o * p_k^2 / sum p^2

Without a fit (a model nobody fitted) the older documented linear map below is used. Its default
is the inverse of SynthTalk's articulation map (training/synth/visemes.EXP_MAP: features (open,
closure, round, spread, smile) -> exp[0:5]):

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
VRM1_OF_VRM0 = {"A": "aa", "I": "ih", "U": "ou", "E": "ee", "O": "oh", "Blink": "blink",
                "Blink_L": "blinkLeft", "Blink_R": "blinkRight"}
BLINKS = ("Blink_L", "Blink_R")
ALL_BLINKS = frozenset(("Blink", "Blink_L", "Blink_R", "blink", "blinkLeft", "blinkRight",
                        "eyeBlinkLeft", "eyeBlinkRight"))
FIT_FEATURES = ("jaw", "open", "closure", "round", "spread", "smile")
ARKIT_FITTED = ("mouthPressLeft", "mouthPressRight", "mouthLowerDownLeft", "mouthLowerDownRight",
                "mouthUpperUpLeft", "mouthUpperUpRight")
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
    # Local positions (Unity frame: x = the avatar's right, y up, z forward) of a typical VRM
    # humanoid; receivers that apply bone positions should get the avatar's own (docs/CLIENTS.md).
    "bone_positions": {"Neck": [0.0, 0.12, -0.01], "Head": [0.0, 0.09, 0.01],
                       "LeftEye": [-0.032, 0.06, 0.06], "RightEye": [0.032, 0.06, 0.06]},
    "mirror": False,          # swap left/right (webcam-like mirror image)
    "fit": None,              # the measured mapping of a model (avatar_map.json; training/avatar_map.py)
    "vrm1": True,             # also send VRM 1.0 expression names (aa ih ou ee oh blink ...)
    "blink_names": "all",     # all | combined (Blink/blink only) | per_eye (Blink_L/Blink_R ...)
    # Blinks re-drawn at the bundle rate so the lid closes fully (a 25 fps sample misses the peak),
    # following the stream's blinks and blinking on its own while no frames come (paused).
    "blink": {"shape": True, "close_ms": 70.0, "hold_ms": 40.0, "open_ms": 130.0, "threshold": 0.4,
              "idle_min_s": 2.0, "idle_max_s": 6.0},
    "calibrate_s": 0.0,       # > 0: rest pose = mean of the first seconds, then fixed; 0: automatic
    "head_rest": "auto",      # auto: subtract the head's resting rotation (slow average); off
    "head_rest_s": 8.0,       # time constant of the automatic head rest
    "reset_ease_ms": 200.0,   # ease from the old to the new motion when the server restarts its generator
    "bones": "all",           # all (Neck, Head, eyes) | head (Neck, Head) | none (blendshapes only)
}


class MappingError(ValueError):
    pass


def _merge(base: dict, over: dict, where: str) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if key not in base:
            raise MappingError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(base))})")
        if isinstance(base[key], dict) and key not in ("gains",) and key != "fit":
            if not isinstance(value, dict):
                raise MappingError(f"{where}: {key!r} must be a table/object")
            out[key] = _merge(base[key], value, f"{where}.{key}") if key != "features" else {**base[key], **value}
        else:
            out[key] = value
    return out


def load_mapping(path: str | pathlib.Path | None = None, base: dict | None = None, **overrides) -> dict[str, Any]:
    """Defaults, then ``base`` (the model's avatar_map.json the server sent), then a JSON or TOML
    file (only the keys it names), then non-None ``overrides``."""
    mapping = copy.deepcopy(DEFAULT_MAPPING)
    if base:
        if not isinstance(base, dict):
            raise MappingError("the server's avatar map must be an object")
        mapping = _merge(mapping, base, "avatar map")
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
    if not isinstance(m["vrm1"], bool):
        raise MappingError("vrm1 must be true or false")
    for key, choices in (("blink_names", ("all", "combined", "per_eye")), ("head_rest", ("auto", "off")),
                         ("bones", ("all", "head", "none"))):
        if m[key] not in choices:
            raise MappingError(f"{key} must be one of {', '.join(choices)}, got {m[key]!r}")
    b = m["blink"]
    if not isinstance(b.get("shape"), bool):
        raise MappingError("blink.shape must be true or false")
    for key in ("close_ms", "hold_ms", "open_ms"):
        _num(b[key], f"blink.{key}", 0.0, 1000.0)
    _num(b["threshold"], "blink.threshold", 0.05, 0.95)
    _num(b["idle_min_s"], "blink.idle_min_s", 0.5, 60.0)
    _num(b["idle_max_s"], "blink.idle_max_s", b["idle_min_s"], 60.0)
    _num(m["calibrate_s"], "calibrate_s", 0.0, 600.0)
    _num(m["head_rest_s"], "head_rest_s", 0.1, 600.0)
    _num(m["reset_ease_ms"], "reset_ease_ms", 0.0, 2000.0)
    if m["fit"] is not None:
        validate_fit(m["fit"])


def validate_fit(fit) -> None:
    """The shape of a fitted mapping (training/avatar_map.py writes it)."""
    if not isinstance(fit, dict):
        raise MappingError("fit must be an object (avatar_map.json's 'fit')")
    try:
        k = int(fit["inputs"]["exp"])
        n_in = k + 1
        nf = len(FIT_FEATURES)
        if not 1 <= k <= 50 or list(fit["features"]) != list(FIT_FEATURES):
            raise MappingError("fit: inputs.exp must be 1..50 and features " + ", ".join(FIT_FEATURES))
        shapes = {"weights": (nf, n_in), "bias": (nf,), "rest": (nf,), "full": (nf,), "head_rest": (3,),
                  "x_rest": (n_in,), "x_scale": (n_in,),
                  "vowel_weights": (len(VISEMES), n_in), "vowel_bias": (len(VISEMES),)}
        for key, shape in shapes.items():
            arr = np.asarray(fit[key], dtype=np.float64)
            if arr.shape != shape or not np.all(np.isfinite(arr)):
                raise MappingError(f"fit.{key} must be finite numbers of shape {shape}")
        if list(fit["vowels"]) != list(VISEMES):
            raise MappingError("fit.vowels must be " + " ".join(VISEMES))
        if np.any(np.asarray(fit["full"]) - np.asarray(fit["rest"]) <= 0):
            raise MappingError("fit: every full value must exceed its rest value")
        if np.any(np.asarray(fit["x_scale"]) <= 0):
            raise MappingError("fit: x_scale must be positive")
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, MappingError):
            raise
        raise MappingError(f"fit: malformed ({type(exc).__name__}: {exc})") from exc


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


class RestCalibration:
    """The resting value of a vector of controls. Automatic: an average over quiet frames with
    time constant ``tau_s`` (starting at ``initial``, or the first quiet frame). ``fixed_s`` > 0:
    the mean of every frame in the first ``fixed_s`` seconds, then frozen (`--calibrate`)."""

    def __init__(self, n: int, tau_s: float, fixed_s: float = 0.0, initial=None):
        self.tau_s, self.fixed_s = tau_s, fixed_s
        self.value = None if initial is None else np.asarray(initial, dtype=np.float64).copy()
        self.seen_s = 0.0
        self.total = np.zeros(n)
        self.count = 0

    def observe(self, x, quiet: bool, dt: float = 0.04) -> None:
        x = np.asarray(x, dtype=np.float64)
        if self.fixed_s > 0:
            if self.seen_s < self.fixed_s:
                self.total += x
                self.count += 1
                self.seen_s += dt
                self.value = self.total / self.count
            return
        if not quiet or self.tau_s <= 0:
            return
        if self.value is None:
            self.value = x.copy()
        else:
            self.value += min(1.0, dt / self.tau_s) * (x - self.value)

    def remove(self, x) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        return x if self.value is None else x - self.value


class FittedMouth:
    """A model's measured mapping (``fit``): model inputs x = (exp[0:K], jaw) -> articulation
    features g = W x + b and vowel probabilities, both relative to the calibrated rest of x."""

    def __init__(self, fit: dict, tau_s: float, fixed_s: float):
        self.k = int(fit["inputs"]["exp"])
        self.w = np.asarray(fit["weights"], dtype=np.float64)
        self.span = np.asarray(fit["full"], dtype=np.float64) - np.asarray(fit["rest"], dtype=np.float64)
        self.x_scale = np.asarray(fit["x_scale"], dtype=np.float64)
        self.vw = np.asarray(fit["vowel_weights"], dtype=np.float64)
        self.vb = np.asarray(fit["vowel_bias"], dtype=np.float64)
        self.rest = RestCalibration(self.k + 1, tau_s, fixed_s, fit["x_rest"])

    def inputs(self, exp, pose) -> np.ndarray:
        x = np.zeros(self.k + 1)
        e = np.asarray(exp, dtype=np.float64)[:self.k]
        x[:len(e)] = e
        x[self.k] = float(pose[3])
        return x

    def observe(self, exp, pose, quiet: bool, dt: float) -> None:
        self.rest.observe(self.inputs(exp, pose), quiet, dt)

    def controls(self, exp, pose) -> dict[str, float]:
        """Rest-relative, 0..1: jaw, open, closure, round, spread, smile, and the vowel weights."""
        dx = self.rest.remove(self.inputs(exp, pose))
        rel = (self.w @ dx) / self.span  # (g - g_rest) / (full - rest): g is linear in x
        out = {name: _clip01(v) for name, v in zip(FIT_FEATURES, rel)}
        z = self.vw @ (dx / self.x_scale) + self.vb
        p = np.exp(z - z.max())
        p = p ** 2 / np.sum(p ** 2)  # sharpened: one clear shape rather than a mix of five
        o = _clip01(0.5 * (out["jaw"] + out["open"]))
        out["openness"] = o
        out.update({v: o * float(pk) for v, pk in zip(VISEMES, p)})
        return out


def smoothstep(x: float) -> float:
    x = _clip01(x)
    return x * x * (3 - 2 * x)


class BlinkShaper:
    """Lid closure drawn at the bundle rate: close, hold at 1.0, open. A blink starts when the
    stream's blink channel rises through ``threshold``; without stream blinks (paused, no eyes) it
    blinks by itself every idle_min_s..idle_max_s."""

    def __init__(self, cfg: dict, seed: int = 0):
        self.cfg = cfg
        self.rng = np.random.default_rng(seed)
        self.start: float | None = None
        self.above = False
        self.next_idle: float | None = None

    def _duration(self) -> float:
        c = self.cfg
        return (c["close_ms"] + c["hold_ms"] + c["open_ms"]) / 1000.0

    def _trigger(self, now: float) -> None:
        if self.start is None or now - self.start >= self._duration():
            self.start = now
        self.next_idle = now + self._duration() + self.rng.uniform(self.cfg["idle_min_s"], self.cfg["idle_max_s"])

    def value(self, now: float, lid: float | None) -> float:
        """Closure at ``now``; ``lid``: the stream's blink channel there (None: no stream blinks)."""
        if self.next_idle is None:
            self.next_idle = now + self.rng.uniform(self.cfg["idle_min_s"], self.cfg["idle_max_s"])
        if lid is not None:
            rising = lid >= self.cfg["threshold"] and not self.above
            self.above = lid >= self.cfg["threshold"]
            if rising:
                self._trigger(now)
        elif now >= self.next_idle:
            self._trigger(now)
        if self.start is None:
            return 0.0
        s = now - self.start
        close, hold, open_ = (self.cfg[k] / 1000.0 for k in ("close_ms", "hold_ms", "open_ms"))
        if s < 0 or s >= close + hold + open_:
            return 0.0
        if s < close:
            return smoothstep(s / close) if close > 0 else 1.0
        if s < close + hold:
            return 1.0
        return 1.0 - smoothstep((s - close - hold) / open_) if open_ > 0 else 0.0


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
        fit = self.m["fit"]
        fixed = self.m["calibrate_s"]
        self.fitted = None if fit is None else FittedMouth(fit, self.m["auto_neutral_s"], fixed)
        self.head_rest = None
        if self.m["head_rest"] == "auto":
            self.head_rest = RestCalibration(3, self.m["head_rest_s"], fixed,
                                             None if fit is None else fit["head_rest"])

    def observe(self, exp, pose, dt: float = 0.04) -> None:
        """Feed one network frame to the rest-pose calibration (auto_neutral_s, head_rest_s)."""
        quiet = abs(float(pose[3])) <= self.m["neutral_jaw_rad"]
        if self.head_rest is not None:
            self.head_rest.observe(np.asarray(pose[:3], dtype=np.float64), True, dt)
        if self.fitted is not None:
            self.fitted.observe(exp, pose, quiet, dt)
            return
        tau = self.m["auto_neutral_s"]
        if tau <= 0 or not quiet:
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
        if self.fitted is not None:
            c = self.fitted.controls(exp, pose)
            out = {name: self._shape(name, c[name]) for name in VISEMES}
            f = {"closure": c["closure"], "smile": c["smile"]}
            jaw, o, r, s = c["jaw"], c["openness"], c["round"], c["spread"]
        else:
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
        out["Blink"] = min(out["Blink_L"], out["Blink_R"])
        if self.arkit:
            if self.fitted is not None:
                out.update(self._arkit_fitted(f, jaw, o, r, s))
                out.update(self._arkit_eyes(out["Blink_L"], out["Blink_R"], eyes))
            else:
                out.update(self._arkit(f, jaw, o, r, s, out["Blink_L"], out["Blink_R"], eyes))
        return self.names(out)

    def names(self, out: dict[str, float]) -> dict[str, float]:
        """The VRM 0 names plus their VRM 1.0 twins (vrm1), minus the blinks blink_names leaves out."""
        if self.m["vrm1"]:
            out.update({VRM1_OF_VRM0[k]: out[k] for k in list(out) if k in VRM1_OF_VRM0})
        drop = {"combined": ("Blink_L", "Blink_R", "blinkLeft", "blinkRight"),
                "per_eye": ("Blink", "blink")}.get(self.m["blink_names"], ())
        for k in drop:
            out.pop(k, None)
        return out

    def _arkit_fitted(self, f, jaw, o, r, s) -> dict[str, float]:
        smile = f["smile"]
        closure = f["closure"]
        lips_apart = o * (1 - r)
        raw = {"jawOpen": jaw,
               # mouthClose closes the lips *against an open jaw*: never more than jawOpen
               "mouthClose": min(closure, jaw),
               "mouthPressLeft": closure * (1 - jaw), "mouthPressRight": closure * (1 - jaw),
               "mouthFunnel": o * r, "mouthPucker": (1 - o) * r,
               "mouthSmileLeft": smile, "mouthSmileRight": smile,
               "mouthStretchLeft": s * (1 - smile), "mouthStretchRight": s * (1 - smile),
               "mouthLowerDownLeft": lips_apart, "mouthLowerDownRight": lips_apart,
               "mouthUpperUpLeft": 0.5 * lips_apart, "mouthUpperUpRight": 0.5 * lips_apart}
        return {name: self._shape(name, v) for name, v in raw.items()}

    def _arkit_eyes(self, blink_l, blink_r, eyes) -> dict[str, float]:
        out = {"eyeBlinkLeft": blink_l, "eyeBlinkRight": blink_r}
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

    def _arkit(self, f, jaw, o, r, s, blink_l, blink_r, eyes) -> dict[str, float]:
        smile = _clip01(f["smile"])
        raw = {"jawOpen": jaw, "mouthClose": _clip01(f["closure"]) * (1 - o),
               "mouthFunnel": o * r, "mouthPucker": (1 - o) * r,
               "mouthSmileLeft": smile, "mouthSmileRight": smile,
               "mouthStretchLeft": s * (1 - smile), "mouthStretchRight": s * (1 - smile)}
        out = {name: self._shape(name, v) for name, v in raw.items()}
        out.update(self._arkit_eyes(blink_l, blink_r, eyes))
        return out

    def head_rotation(self, pose) -> np.ndarray:
        """The head's axis-angle (FLAME frame) after the rest offset, gain and mirror."""
        rot = np.asarray(pose[:3], dtype=np.float64)
        if self.head_rest is not None:
            rot = self.head_rest.remove(rot)
        rot = rot * self.m["head_gain"]
        if self.m["mirror"]:
            rot = rot * np.array([1.0, -1.0, -1.0])  # reflect x: yaw and roll change sign
        return rot

    def bones(self, pose, eyes) -> dict[str, tuple[tuple[float, float, float], tuple[float, float, float, float]]]:
        return self.bones_from(self.head_rotation(pose), eyes)

    def bones_from(self, rot, eyes) -> dict:
        """Bone name -> (local position, local rotation quaternion) in Unity's frame."""
        if self.m["bones"] == "none":
            return {}
        share = self.m["neck_share"]
        # Same axis for both parts, so Neck then Head composes to the whole rotation exactly.
        pos = self.m["bone_positions"]
        out = {"Neck": (tuple(pos["Neck"]), unity_quaternion(rot * share)),
               "Head": (tuple(pos["Head"]), unity_quaternion(rot * (1 - share)))}
        if eyes is not None and self.m["bones"] == "all":
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
