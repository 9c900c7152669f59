"""Style-encoder training: NT-Xent over pairs of 100-frame windows of the same speaker.

The output directory holds config.json (a ModelConfig whose style_encoder is set),
style_encoder.safetensors, stats.npz and the resumable training state."""

from __future__ import annotations

import json
import logging
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from diffposetalk.config import ModelConfig
from diffposetalk.errors import UserError
from diffposetalk.model import coef_to_motion
from diffposetalk.model_dir import STAT_KEYS
from diffposetalk.style_encoder import StyleEncoder
from training.losses import nt_xent
from training.train_data import WindowBank, load_split, load_stats_np
from training.train_loop import TrainOptions, optimizer_step, run_training
from training.train_state import check_resume_options, load_state, save_state

log = logging.getLogger("dpt_live.train")
WEIGHTS = "style_encoder.safetensors"


def style_pair_batch(bank: WindowBank, rng: np.random.Generator, batch: int, stats: dict,
                     head_pose: bool) -> tuple[np.ndarray, np.ndarray]:
    """Two windows of each of ``batch`` speakers, as normalised network motion (B, L, D).

    Speakers are distinct within a batch when there are enough of them: a repeated speaker would
    be a false negative for NT-Xent."""
    people = bank.people
    chosen = rng.choice(len(people), size=batch, replace=batch > len(people))
    pairs = []
    for p in chosen:
        for _ in range(2):
            clip, s = bank.person_window(rng, people[p])
            e = s + bank.length
            pairs.append(coef_to_motion(clip.exp[s:e], clip.pose[s:e], stats, head_pose))
    motion = np.stack(pairs).astype(np.float32)
    return motion[0::2], motion[1::2]


def load_style_encoder(path: str | Path, device: str = "cpu") -> tuple[ModelConfig, StyleEncoder]:
    """A trained style encoder: a directory from ``train style-encoder`` or any full model directory."""
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / "config.json").is_file():
        raise UserError(f"--style-encoder {path}: no config.json (train one with `dpt-live train style-encoder`)")
    cfg = ModelConfig.load(path / "config.json")
    if cfg.style_encoder is None:
        raise UserError(f"--style-encoder {path}: its config has no style encoder")
    enc = StyleEncoder(cfg.style_encoder, cfg.motion_dim)
    if (path / WEIGHTS).is_file():
        state = load_file(str(path / WEIGHTS))
    elif (path / "weights.safetensors").is_file():
        full = load_file(str(path / "weights.safetensors"))
        state = {k[len("style_encoder."):]: v for k, v in full.items() if k.startswith("style_encoder.")}
    else:
        raise UserError(f"--style-encoder {path}: no {WEIGHTS} or weights.safetensors")
    enc.load_state_dict(state)
    return cfg, enc.to(device).eval()


def save_style_dir(out: Path, cfg: ModelConfig, enc: StyleEncoder, stats: dict) -> None:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(cfg.to_json() + "\n")
    state = {k: v.detach().cpu().contiguous() for k, v in enc.state_dict().items()}
    save_file(state, str(out / (WEIGHTS + ".tmp")), metadata={"format": "dpt-live-style-encoder"})
    (out / (WEIGHTS + ".tmp")).replace(out / WEIGHTS)
    np.savez(out / "stats.npz", **{k: np.asarray(stats[k], dtype=np.float32) for k in STAT_KEYS})


@torch.no_grad()
def validate(enc: StyleEncoder, batches, temperature: float, device) -> dict[str, float]:
    """Mean NT-Xent and pair top-1 (is a window's nearest other window its partner?)."""
    enc.eval()
    losses, hits, total = [], 0, 0
    for a, b in batches:
        fa, fb = enc(torch.from_numpy(a).to(device)), enc(torch.from_numpy(b).to(device))
        losses.append(nt_xent(fa, fb, temperature).item())
        z = torch.nn.functional.normalize(torch.cat([fa, fb]), dim=1)
        sim = (z @ z.T).fill_diagonal_(-2)
        n = fa.shape[0]
        partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(sim.device)
        hits += int((sim.argmax(1) == partner).sum())
        total += 2 * n
    enc.train()
    return {"val_loss": float(np.mean(losses)), "val_pair_top1": hits / total}


@dataclass(kw_only=True)
class StyleEncoderOptions(TrainOptions):
    """`dpt-live train style-encoder`."""

    batch: int = 32
    arch: str = "full"  # demo | full | tiny
    temperature: float = 0.1  # NT-Xent temperature
    head_pose: bool = True  # False: 51-d motion (no global rotation)


def train_style_encoder(opts: StyleEncoderOptions) -> Path:
    """Train (or with ``opts.resume`` continue) a style encoder into ``opts.out``; returns it."""
    torch.set_num_threads(opts.threads)
    out, device = Path(opts.out), torch.device(opts.device)
    stats = load_stats_np(opts.data)
    train_bank = WindowBank(load_split(opts.data, "train"), 100, "train split")
    val_bank = WindowBank(load_split(opts.data, "val"), 100, "val split")
    options = {"arch": opts.arch, "head_pose": opts.head_pose, "temperature": opts.temperature,
               "batch": opts.batch, "lr": opts.lr, "seed": opts.seed, "iters": opts.iters}

    torch.manual_seed(opts.seed)
    rng = np.random.default_rng(opts.seed)
    cfg, enc, optimizer, step, history = _new_or_resumed_encoder(opts, out, device, rng, options)
    enc.train()

    # fixed validation batches: comparable numbers across checkpoints
    val_rng = np.random.default_rng(10_000 + opts.seed)
    val_batch = min(opts.batch, len(val_bank.people))
    val_batches = [style_pair_batch(val_bank, val_rng, val_batch, stats, cfg.head_pose) for _ in range(4)]
    recent = deque(maxlen=50)

    def train_step() -> dict:
        a, b = style_pair_batch(train_bank, rng, opts.batch, stats, cfg.head_pose)
        loss = nt_xent(enc(torch.from_numpy(a).to(device)), enc(torch.from_numpy(b).to(device)),
                       opts.temperature)
        optimizer_step(optimizer, loss, enc.parameters(), opts.clip)
        recent.append(loss.item())
        return {"loss": f"{np.mean(recent):.3f}"}

    def validate_now(done: int) -> str:
        v = validate(enc, val_batches, opts.temperature, device)
        history.append({"step": done, "train_loss": float(np.mean(recent)), **v})
        return (f"step {done}: train {np.mean(recent):.4f}  val {v['val_loss']:.4f}  "
                f"pair top-1 {v['val_pair_top1']:.3f}")

    def checkpoint(at: int) -> None:
        save_style_dir(out, cfg, enc, stats)
        save_state(out, at, optimizer, rng, options, history)

    run_training(step, opts, optimizer, train_step, validate_now, checkpoint)
    if step >= opts.iters:
        log.info("already trained for %d iterations", step)
    (out / "history.json").write_text(json.dumps(history, indent=1) + "\n")
    return out


def _new_or_resumed_encoder(opts: StyleEncoderOptions, out: Path, device, rng: np.random.Generator,
                            options: dict) -> tuple[ModelConfig, StyleEncoder, torch.optim.Optimizer, int, list]:
    """A fresh encoder and optimizer, or (--resume) the ones saved in ``out`` with the RNGs restored;
    returns (config, encoder, optimizer, step, history)."""
    from diffposetalk.archs import make_config

    cfg = make_config(opts.arch, head_pose=opts.head_pose)
    enc = StyleEncoder(cfg.style_encoder, cfg.motion_dim).to(device)
    optimizer = torch.optim.Adam(enc.parameters(), lr=opts.lr)
    step, history = 0, []
    if opts.resume:
        cfg = ModelConfig.load(out / "config.json")
        _, enc = load_style_encoder(out, opts.device)
        optimizer = torch.optim.Adam(enc.parameters(), lr=opts.lr)
        step, saved, history = load_state(out, optimizer, rng)
        check_resume_options(saved, options, ("arch", "head_pose", "temperature", "batch", "seed"))
    elif out.exists() and any(out.iterdir()):
        raise UserError(f"--out {out} is not empty (use --resume to continue a run)")
    return cfg, enc, optimizer, step, history
