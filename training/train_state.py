"""Checkpoint plumbing shared by the trainers: the resumable state next to a model directory.

``train_state.safetensors`` holds the optimizer's tensors and torch's RNG state;
``train_state.json`` the step, optimizer hyper-parameters, the numpy sampling RNG and the
command's options. No pickle anywhere, so a checkpoint can be shared and inspected safely."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffposetalk.errors import UserError

STATE_JSON = "train_state.json"
STATE_TENSORS = "train_state.safetensors"


def save_state(out: Path, step: int, optimizer: torch.optim.Optimizer, rng: np.random.Generator,
               options: dict[str, Any], history: list[dict]) -> None:
    from safetensors.torch import save_file

    opt = optimizer.state_dict()
    tensors = {"torch_rng": torch.get_rng_state()}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in opt["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"opt.{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[k] = v
    meta = {"step": step, "param_groups": opt["param_groups"], "opt_scalars": scalars,
            "numpy_rng": rng.bit_generator.state, "options": options, "history": history}
    # write-then-rename: a run killed mid-save leaves the previous checkpoint intact
    tmp_t, tmp_j = out / (STATE_TENSORS + ".tmp"), out / (STATE_JSON + ".tmp")
    save_file(tensors, str(tmp_t))
    tmp_j.write_text(json.dumps(meta, indent=1) + "\n")
    os.replace(tmp_t, out / STATE_TENSORS)
    os.replace(tmp_j, out / STATE_JSON)


def load_state(out: Path, optimizer: torch.optim.Optimizer, rng: np.random.Generator) -> tuple[int, dict, list]:
    """Restores optimizer and RNGs in place; returns (step, options, history)."""
    from safetensors.torch import load_file

    if not (out / STATE_JSON).is_file() or not (out / STATE_TENSORS).is_file():
        raise UserError(f"--resume: {out} holds no training state ({STATE_JSON}, {STATE_TENSORS})")
    meta = json.loads((out / STATE_JSON).read_text())
    tensors = load_file(str(out / STATE_TENSORS))
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        if key.startswith("opt."):
            _, pid, k = key.split(".", 2)
            state.setdefault(int(pid), {})[k] = v
    for pid, sc in meta["opt_scalars"].items():
        state.setdefault(int(pid), {}).update(sc)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    torch.set_rng_state(tensors["torch_rng"])
    rng.bit_generator.state = meta["numpy_rng"]
    return int(meta["step"]), meta["options"], meta.get("history", [])


def resume_model_dir(out: Path, cfg, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     rng: np.random.Generator, options: dict[str, Any], keys: tuple[str, ...],
                     mismatch: str) -> tuple[int, list]:
    """--resume of a trainer that saves a model directory: the saved config must be this run's
    (else ``mismatch`` says which options decide it), then weights, optimizer and RNGs are restored
    and the options in ``keys`` checked. Returns (step, history)."""
    from safetensors.torch import load_file

    from diffposetalk.config import ModelConfig

    if ModelConfig.load(out / "config.json") != cfg:
        raise UserError(f"--resume: {out}/config.json {mismatch}")
    model.load_state_dict(load_file(str(out / "weights.safetensors")))
    step, saved, history = load_state(out, optimizer, rng)
    check_resume_options(saved, options, keys)
    return step, history


def check_resume_options(saved: dict, current: dict, keys: tuple[str, ...]) -> None:
    """Options that change what is trained must not change across --resume."""
    changed = [k for k in keys if k in saved and saved[k] != current.get(k)]
    if changed:
        detail = ", ".join(f"{k}: {saved[k]!r} -> {current.get(k)!r}" for k in changed)
        raise UserError(f"--resume with different options ({detail}); use the original ones")


def lr_at(step: int, base: float, warmup: int, schedule: str, total: int) -> float:
    """Linear warm-up, then constant or cosine decay to 10 % at ``total``."""
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    if schedule == "cosine" and total > warmup:
        progress = min(1.0, (step - warmup) / (total - warmup))
        return base * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * progress)))
    return base
