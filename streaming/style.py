"""Session style: resolved once and cached, switched mid-stream by crossfading the style vectors.

The denoiser takes one style vector per window, so a switch is spread over the steps of the fade
(~0.5 s): each step uses the vector interpolated at the time of its first emitted frame, eased
with smoothstep so the rate of change is zero at both ends (no visible pop or kink)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from diffposetalk.errors import UserError


class StyleCache:
    """Style vectors by spec: a preset name of the model, a ``.npy`` vector, or a reference motion
    clip ``.npz`` (exp, pose) run once through the style encoder."""

    def __init__(self, loaded):
        self.loaded = loaded
        self._cache: dict[str, np.ndarray] = {}

    def get(self, spec: str) -> np.ndarray:
        if spec not in self._cache:
            self._cache[spec] = self._resolve(spec)
        return self._cache[spec]

    def _resolve(self, spec: str) -> np.ndarray:
        if not self.loaded.config.use_style:
            raise UserError(f"model {self.loaded.path} takes no style input")
        if spec not in self.loaded.styles and Path(spec).suffix == ".npz":
            from diffposetalk.style_vectors import style_from_coef_file

            return style_from_coef_file(self.loaded, spec).astype(np.float32)
        return self.loaded.style(spec)


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
