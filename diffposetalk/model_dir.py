"""A model is a directory: config.json + weights.safetensors + stats.npz (+ styles/*.npy presets,
+ stream_encoder.safetensors when config.json names a streaming audio encoder).

Nothing here unpickles: safetensors holds tensors only, npz/npy are read with allow_pickle=False."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from diffposetalk.config import ModelConfig
from diffposetalk.model import DiffPoseTalk
from diffposetalk.safe_pickle import CheckpointError

STREAM_FILE = "stream_encoder.safetensors"  # the streaming audio encoder's weights, when the model has one
STREAM_PREFIX = "stream_encoder."
STAT_KEYS = ("shape_mean", "shape_std", "exp_mean", "exp_std", "pose_mean", "pose_std")
STAT_SHAPES = {"shape": 100, "exp": 50, "pose": 6}


@dataclass
class LoadedModel:
    path: Path
    config: ModelConfig
    model: DiffPoseTalk
    stats: dict[str, torch.Tensor]
    styles: dict[str, np.ndarray] = field(default_factory=dict)

    def style(self, name_or_path: str) -> np.ndarray:
        """A preset name from styles/ or a path to a .npy style vector."""
        from diffposetalk.errors import UserError

        if name_or_path in self.styles:
            return self.styles[name_or_path]
        p = Path(name_or_path)
        if p.suffix == ".npy" or p.exists():
            vec = load_vector(p, self.config.d_style, "style")
            return vec
        known = ", ".join(sorted(self.styles)) or "none"
        raise UserError(f"unknown style {name_or_path!r}: not a preset of {self.path} (presets: {known}) "
                        "and not a .npy file")


def load_vector(path: Path, dim: int, what: str) -> np.ndarray:
    from diffposetalk.errors import UserError

    try:
        vec = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {what} file {path}: {exc}") from exc
    if isinstance(vec, np.lib.npyio.NpzFile):
        key = what if what in vec.files else vec.files[0]
        vec = vec[key]
    vec = np.asarray(vec, dtype=np.float32)
    if vec.ndim == 2:  # per-frame arrays (e.g. shape (T,100)): the first frame, as the reference
        vec = vec[0]
    if vec.shape != (dim,):
        raise UserError(f"{what} file {path}: shape {vec.shape}, expected ({dim},)")
    if not np.all(np.isfinite(vec)):
        raise UserError(f"{what} file {path}: contains NaN/inf")
    return vec


def load_stats(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            stats = {k: np.asarray(data[k], dtype=np.float32) for k in STAT_KEYS}
    except KeyError as exc:
        raise CheckpointError(f"{path}: missing statistics {exc}") from exc
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read statistics ({exc})") from exc
    for k, v in stats.items():
        n = STAT_SHAPES[k.split("_")[0]]
        if v.shape != (n,):
            raise CheckpointError(f"{path}: {k} has shape {v.shape}, expected ({n},)")
        if k.endswith("_std") and np.any(v <= 0):
            raise CheckpointError(f"{path}: {k} has non-positive entries")
    return stats


def save_model_dir(out: str | Path, config: ModelConfig, model: DiffPoseTalk, stats: dict[str, np.ndarray],
                   styles: dict[str, np.ndarray] | None = None) -> Path:
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(config.to_json() + "\n")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    # the streaming audio encoder is a file of its own (its state-dict keys without the prefix):
    # added to or replaced in a model directory without rewriting the rest
    stream = {k[len(STREAM_PREFIX):]: state.pop(k) for k in [k for k in state if k.startswith(STREAM_PREFIX)]}
    save_file(state, str(out / "weights.safetensors"), metadata={"format": "dpt-live"})
    if stream:
        save_file(stream, str(out / STREAM_FILE), metadata={"format": "dpt-live"})
    np.savez(out / "stats.npz", **{k: np.asarray(stats[k], dtype=np.float32) for k in STAT_KEYS})
    if styles:
        (out / "styles").mkdir(exist_ok=True)
        for name, vec in styles.items():
            np.save(out / "styles" / f"{name}.npy", np.asarray(vec, dtype=np.float32))
    return out


def load_model_dir(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: model directory not found")
    for name in ("config.json", "weights.safetensors", "stats.npz"):
        if not (path / name).is_file():
            raise CheckpointError(f"{path / name}: missing (a model directory holds config.json, "
                                  "weights.safetensors, stats.npz)")
    config = ModelConfig.load(path / "config.json")
    model = DiffPoseTalk(config)
    wpath = path / "weights.safetensors"
    try:
        state = load_file(str(wpath))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{wpath}: corrupt weights ({exc})") from exc
    if config.stream_encoder is not None and not any(k.startswith(STREAM_PREFIX) for k in state):
        spath = path / STREAM_FILE
        if not spath.is_file():
            raise CheckpointError(f"{spath}: missing (config.json names a streaming audio encoder)")
        try:
            state.update({STREAM_PREFIX + k: v for k, v in load_file(str(spath)).items()})
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{spath}: corrupt weights ({exc})") from exc
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{wpath}: weights do not fit config.json: missing {missing[:5]}"
                              f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}")
    for k, v in state.items():
        if v.shape != expected[k].shape:
            raise CheckpointError(f"{wpath}: {k} has shape {tuple(v.shape)}, config needs "
                                  f"{tuple(expected[k].shape)}")
    model.load_state_dict(state)
    model.to(device).eval()
    stats_np = load_stats(path / "stats.npz")
    stats = {k: torch.from_numpy(v).to(device) for k, v in stats_np.items()}
    styles = {}
    if (path / "styles").is_dir():
        for f in sorted((path / "styles").glob("*.npy")):
            styles[f.stem] = load_vector(f, config.d_style, "style")
    return LoadedModel(path, config, model, stats, styles)


def describe(loaded: LoadedModel) -> dict:
    n_params = sum(p.numel() for p in loaded.model.parameters())
    return {"path": str(loaded.path), "kind": loaded.config.kind, "head_pose": loaded.config.head_pose,
            "parameters": n_params, "styles": sorted(loaded.styles),
            "description": loaded.config.description}


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
