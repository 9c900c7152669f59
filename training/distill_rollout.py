"""Rollout losses for a distilled student (`dpt-live distill --rollout N`): train it as it runs.

The per-window loss (training/distill_losses.py ``unrolled``) is teacher-forced: every window continues
from the *teacher's* previous frames. Live, a student continues from its own, so small errors
compound, and nothing in a 4- or 8-frame window tells it whether 4 s of its motion still carry the
speaker's style. A rollout takes K consecutive recorded steps of one clip and runs the student
over them as a streaming session does: after the first step the previous frames are the frames it
emitted itself (the first ``hop`` of each window), with gradients through the whole chain. Losses:

- ``coef``: each window's coefficient error against the teacher's frames (as the per-window loss);
- ``vel``: the velocity error of the emitted sequence against the teacher's sequence (continuity
  across step boundaries, measured on what a viewer sees);
- ``style``: 1 − cosine between the frozen style encoder's vectors of the emitted sequence and of
  the teacher's frames over the same span (K × hop ≥ the style encoder's window, 4 s at 25 fps) —
  the measure `eval` retrieves a speaker's style with.

Audio features, indicator and previous audio features do not depend on the motion, so the recorded
ones are exact; only the previous motion frames change."""

from __future__ import annotations

from collections import Counter

import numpy as np

from diffposetalk.errors import UserError
from diffposetalk.units import FPS

FRAME_MS = 1000 // FPS


class Rollouts:
    """Where rollouts can start in a DistillSet: K consecutive steps of one shard whose emitted
    frames are all real. Only shards with the most common hop are used, so a batch of rollouts
    steps in lockstep."""

    def __init__(self, ds, frames: int):
        hops = [sh["meta"]["hop_ms"] // FRAME_MS for sh in ds.shards]
        self.hop = Counter(hops).most_common(1)[0][0]
        self.K = -(-frames // self.hop)
        first, shard = ds.cols["first"], ds.cols["shard"]
        starts = []
        for j, sh in enumerate(ds.shards):
            if hops[j] != self.hop:
                continue
            rows = np.nonzero(shard == j)[0]  # a shard's steps are consecutive rows, in order
            ok = rows[first[rows] + self.hop <= len(sh["teacher"])]
            if len(ok) >= self.K:
                starts.append(ok[:len(ok) - self.K + 1])
        if not starts:
            raise UserError(f"--rollout: no clip has {self.K} steps of {self.hop * FRAME_MS} ms "
                            f"({frames} frames) in the targets")
        self.starts = np.concatenate(starts)

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """(n, K) row indices of n rollouts."""
        return rng.choice(self.starts, size=n)[:, None] + np.arange(self.K)[None]


def rollout_losses(student, ds, rows: np.ndarray, hop: int, steps: int, dim_w, device) -> dict:
    """Run the student over ``rows`` (n, K) as a session does and return the three loss terms
    (module doc), as tensors."""
    import torch
    import torch.nn.functional as F

    from training.distill_losses import unrolled

    P = student.cfg.n_prev_motions
    hist, emitted, teacher, coef = None, [], [], []
    for k in range(rows.shape[1]):
        b = ds.batch(rows[:, k], device)
        if hist is not None:
            b.prev_motion = hist[:, -P:]
        _, terms, _, x0 = unrolled(student, b, steps, dim_w, 0.0)
        coef.append(terms["coef"])
        emitted.append(x0[:, :hop])
        teacher.append(b.target[:, :hop])
        hist = torch.cat([b.prev_motion, x0[:, :hop]], dim=1)
    seq, ref = torch.cat(emitted, dim=1), torch.cat(teacher, dim=1)
    vel = ((torch.diff(seq, dim=1) - torch.diff(ref, dim=1)) ** 2 * dim_w).mean()
    enc = student.style_encoder
    style = (1 - F.cosine_similarity(enc(seq), enc(ref), dim=-1)).mean() if enc is not None else seq.new_zeros(())
    return {"coef": torch.stack(coef).mean(), "vel": vel, "style": style}
