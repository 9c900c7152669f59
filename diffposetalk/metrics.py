"""Motion metrics on FLAME coefficient arrays (pure numpy), shared by evaluation, benchmarks and
export checks: the lip error of docs/TRAINING.md and Pearson correlation."""

from __future__ import annotations

import numpy as np

LIP_DIMS_EXP = slice(0, 5)


JAW = 3


def pearson(a: np.ndarray, b: np.ndarray, axis: int | None = None) -> float:
    """Pearson r of two equally shaped arrays. ``axis=None``: one mean removed from each array;
    ``axis=0`` on (T, D) arrays: each column's own mean removed (a coefficient's offset does not
    count as correlation), then one r over all entries."""
    a = a - a.mean(axis=axis, keepdims=True)
    b = b - b.mean(axis=axis, keepdims=True)
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else float("nan")


def lip_error(pred: dict, gt: dict, stats: dict) -> float:
    """pred/gt: {'exp' (T,50), 'pose' (T,6)} raw. See DEFINITIONS['lip_error']."""
    def mouth(c):
        return np.concatenate([c["pose"][:, JAW:JAW + 1] / stats["pose_std"][JAW],
                               c["exp"][:, LIP_DIMS_EXP] / stats["exp_std"][LIP_DIMS_EXP]], axis=1)
    return float(np.sqrt(np.mean((mouth(pred) - mouth(gt)) ** 2)))
