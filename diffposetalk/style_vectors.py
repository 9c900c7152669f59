"""Style vectors from motion, as the reference's style extraction does: 100 frames of raw FLAME
exp/pose, normalised with the model's statistics, jaw y/z dropped, through the style encoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from diffposetalk.errors import UserError
from diffposetalk.model import coef_to_motion
from diffposetalk.model_dir import LoadedModel


@torch.no_grad()
def style_from_coef(loaded: LoadedModel, exp: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """exp (T,50), pose (T,6) raw, T = the style encoder's window -> (d_style,)."""
    model = loaded.model
    if model.style_encoder is None:
        raise UserError(f"model {loaded.path} has no style encoder")
    stats = loaded.stats
    exp_t = torch.as_tensor(exp, dtype=torch.float32, device=model.device)
    pose_t = torch.as_tensor(pose, dtype=torch.float32, device=model.device)
    motion = coef_to_motion(exp_t, pose_t, stats, loaded.config.head_pose)
    return model.style_encoder(motion.unsqueeze(0))[0].cpu().numpy()


def style_from_coef_file(loaded: LoadedModel, path: str | Path, start: int = 0) -> np.ndarray:
    n = loaded.config.style_encoder.n_motions if loaded.config.style_encoder else 100
    try:
        with np.load(path, allow_pickle=False) as data:
            exp, pose = data["exp"], data["pose"]
    except KeyError as exc:
        raise UserError(f"motion file {path}: missing {exc} (need exp (T,50) and pose (T,6))") from exc
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read motion file {path}: {exc}") from exc
    if exp.ndim != 2 or exp.shape[1] != 50 or pose.ndim != 2 or pose.shape[1] != 6:
        raise UserError(f"motion file {path}: exp {exp.shape} / pose {pose.shape}, need (T,50) / (T,6)")
    if start < 0 or start + n > min(len(exp), len(pose)):
        raise UserError(f"motion file {path}: need frames {start}..{start + n - 1}, it has {len(exp)}")
    return style_from_coef(loaded, exp[start:start + n], pose[start:start + n])
