"""What every trainer here shares (style encoder, denoiser, distilled student): the common
options, and the loop that sets the learning rate, takes a step, validates and saves. Importing
this module (for the options) does not import torch."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(kw_only=True)
class TrainOptions:
    """Options of every trainer (the `dpt-live train` / `distill` options of the same names)."""

    data: Path  # HDTF_TFHP-layout lmdb (or a SynthTalk folder)
    out: Path  # output directory; checkpoints are written here
    iters: int = 10000
    batch: int = 16
    lr: float = 1e-4
    warmup: int = 100  # linear learning-rate warm-up steps
    schedule: str = "constant"  # after warm-up: "constant", or "cosine" decay to 10 % at iters
    clip: float = 1.0  # gradient-norm clipping
    seed: int = 0
    device: str = "cpu"
    threads: int = 2  # torch CPU threads
    resume: bool = False  # continue the run saved in out
    val_every: int = 250
    save_every: int = 250
    quiet: bool = False  # no progress bar


def is_due(done: int, every: int, total: int) -> bool:
    """Validate / save every ``every`` steps and after the last one."""
    return done % every == 0 or done == total


def optimizer_step(optimizer, loss, params, clip: float) -> None:
    """Backward, clip the gradient norm, step."""
    import torch

    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, clip)
    optimizer.step()


def run_training(start: int, opts: TrainOptions, optimizer, train_step: Callable[[], dict],
                 validate: Callable[[int], str], checkpoint: Callable[[int], None]) -> None:
    """Iterations ``start`` .. ``opts.iters``: set the learning rate, ``train_step()`` (returns the
    progress bar's postfix), ``validate(done)`` when due (returns the line to print) and
    ``checkpoint(done)`` when due."""
    from tqdm import tqdm

    from training.train_state import lr_at  # torch: imported when training starts

    bar = tqdm(range(start, opts.iters), initial=start, total=opts.iters, dynamic_ncols=True, disable=opts.quiet)
    for it in bar:
        for g in optimizer.param_groups:
            g["lr"] = lr_at(it, opts.lr, opts.warmup, opts.schedule, opts.iters)
        bar.set_postfix(train_step())
        done = it + 1
        if is_due(done, opts.val_every, opts.iters):
            bar.write(validate(done))
        if is_due(done, opts.save_every, opts.iters):
            checkpoint(done)
