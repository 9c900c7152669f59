"""Named style presets of a model from speakers of a dataset (`dpt-live presets`).

A preset is the mean style-encoder vector over every 100-frame GT window (stride 50) of one
speaker's clips, encoded with the model's own style encoder and statistics, so it matches what
`dpt-live style` would give for that speaker's motion. Written to the model's styles/NAME.npy."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def parse_pairs(pairs: list[str]) -> dict[str, str]:
    from diffposetalk.errors import UserError

    out = {}
    for pair in pairs:
        name, sep, speaker = pair.partition("=")
        if not sep or not name or not speaker or "/" in name:
            raise UserError(f"{pair!r}: expected NAME=SPEAKER (e.g. calm=S021)")
        out[name] = speaker
    return out


def speaker_presets(loaded, clips, wanted: dict[str, str]) -> dict[str, np.ndarray]:
    """name -> mean style over all windows of that speaker's clips: each clip's mean style
    (evaluate.motion_style) weighted by its number of windows."""
    from diffposetalk.errors import UserError
    from diffposetalk.model import coef_to_motion
    from training.evaluate import motion_style, window_starts

    model, cfg = loaded.model, loaded.config
    if model.style_encoder is None:
        raise UserError(f"{loaded.path}: the model has no style encoder")
    stats = {k: v.cpu().numpy() for k, v in loaded.stats.items()}
    n = cfg.style_encoder.n_motions
    out = {}
    for name, speaker in wanted.items():
        styles, weights = [], []
        for c in clips:
            if c.person == speaker and c.n_frames >= n:
                styles.append(motion_style(model, coef_to_motion(c.exp, c.pose, stats, cfg.head_pose).astype(np.float32)))
                weights.append(len(window_starts(c.n_frames, n)))
        if not styles:
            raise UserError(f"speaker {speaker!r} ({name}): no clip of {n}+ frames in this split")
        out[name] = np.average(np.stack(styles), axis=0, weights=weights).astype(np.float32)
    return out


def write_presets(model_dir: Path, presets: dict[str, np.ndarray]) -> list[Path]:
    """Save each preset as the model directory's styles/NAME.npy; returns the files."""
    (model_dir / "styles").mkdir(exist_ok=True)
    written = []
    for name, vec in presets.items():
        np.save(model_dir / "styles" / f"{name}.npy", vec)
        written.append(model_dir / "styles" / f"{name}.npy")
    return written
