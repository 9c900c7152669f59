"""Session style: the vector a run starts with (choose_style), switched mid-stream by crossfading.

The denoiser takes one style vector per window, so a switch is spread over the steps of the fade
(~0.5 s): each step uses the vector interpolated at the time of its first emitted frame, eased
with smoothstep so the rate of change is zero at both ends (no visible pop or kink)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffposetalk.errors import UserError


@dataclass(frozen=True)
class ChosenStyle:
    """The style a run starts with. ``vector`` None: the model's null style (no style guidance)."""
    vector: np.ndarray | None
    name: str | None  # what the server announces: the preset's name, the file's name, None (null)
    label: str  # what a report says: the --style given, "preset NAME", "null style", ...

    @property
    def tensor(self):
        """The vector as offline generation (diffposetalk.generate) takes it."""
        import torch

        return None if self.vector is None else torch.from_numpy(self.vector)


def choose_style(loaded, spec: str | None, *, any_preset: bool = False,
                 random_seed: int | None = None) -> ChosenStyle:
    """Which style vector a run uses (every command that generates motion asks this): ``spec``
    (--style, see resolve_style) when given, else the model's 'default' preset, else the null style.
    Benchmarks and the export fidelity check must exercise the style-guidance pass, so they fall
    back further: ``any_preset`` to the first preset by name, then ``random_seed`` to a random
    vector drawn with that seed."""
    if not loaded.config.use_style:
        if spec:
            raise UserError(f"model {loaded.path} takes no style input (--style {spec})")
        return ChosenStyle(None, None, "none (the model takes no style)")
    if spec:
        return ChosenStyle(resolve_style(loaded, spec), spec if spec in loaded.styles else Path(spec).name, spec)
    if "default" in loaded.styles or (any_preset and loaded.styles):
        key = "default" if "default" in loaded.styles else sorted(loaded.styles)[0]
        return ChosenStyle(loaded.styles[key], key, f"preset {key}")
    if random_seed is not None:
        vec = np.random.default_rng(random_seed).normal(size=loaded.config.d_style).astype(np.float32)
        return ChosenStyle(vec, None, "random vector")
    return ChosenStyle(None, None, "null style")


def resolve_style(loaded, spec: str) -> np.ndarray:
    """A style vector by spec: a preset name of the model, a ``.npy`` vector, or a reference motion
    clip ``.npz`` (exp, pose) run through the style encoder (an ``.npz`` without exp/pose is read
    as a saved vector, as LoadedModel.style reads it)."""
    if not loaded.config.use_style:
        raise UserError(f"model {loaded.path} takes no style input")
    if spec not in loaded.styles and Path(spec).suffix == ".npz" and _holds_motion(spec):
        from diffposetalk.style_vectors import style_from_coef_file

        return style_from_coef_file(loaded, spec).astype(np.float32)
    return loaded.style(spec)


def _holds_motion(path: str) -> bool:
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return True  # unreadable: style_from_coef_file says so, naming the motion file
    if not isinstance(data, np.lib.npyio.NpzFile):
        return False
    with data:
        return bool({"exp", "pose"} & set(data.files))


class StyleCache:
    """resolve_style with each spec resolved once (a motion clip runs the style encoder once)."""

    def __init__(self, loaded):
        self.loaded = loaded
        self._cache: dict[str, np.ndarray] = {}

    def get(self, spec: str) -> np.ndarray:
        if spec not in self._cache:
            self._cache[spec] = resolve_style(self.loaded, spec)
        return self._cache[spec]


def smoothstep(x: float) -> float:
    x = min(max(x, 0.0), 1.0)
    return x * x * (3 - 2 * x)


class StyleFader:
    """The style vector as a function of the frame index. ``None`` means the model's null style;
    fades to or from it go through the model's learned null vector."""

    def __init__(self, style: np.ndarray | None, null_style: np.ndarray | None, fade_frames: float):
        self.null = null_style
        self.fade_frames = max(fade_frames, 0.0)
        self._from = self._to = style
        self._start = 0.0

    def _vec(self, v: np.ndarray | None) -> np.ndarray:
        if v is not None:
            return np.asarray(v, dtype=np.float32)
        if self.null is None:
            raise UserError("this model has no style input")
        return self.null

    def set(self, style: np.ndarray | None, at_frame: float) -> None:
        """Start fading from the current value (mid-fade too) towards ``style`` at ``at_frame``."""
        current = self.at(at_frame)
        self._from, self._to, self._start = current, style, at_frame

    def at(self, frame: float) -> np.ndarray | None:
        if self._from is None and self._to is None:
            return None
        if self.fade_frames == 0:
            w = 1.0 if frame >= self._start else 0.0
        else:
            w = smoothstep((frame - self._start) / self.fade_frames)
        if w >= 1.0:
            return None if self._to is None else self._vec(self._to)
        if w <= 0.0:
            return None if self._from is None else self._vec(self._from)
        return (1 - w) * self._vec(self._from) + w * self._vec(self._to)
