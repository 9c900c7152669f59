"""Import the reference's pickled checkpoints into a dpt-live model directory.

Denoiser file: {'args': Namespace, 'model': state_dict, 'iter': int}; style-encoder file:
{'args': Namespace, 'encoder': state_dict, 'iter': int}. Both are read with the allow-list loader.
Structure (dims, layers, indicator, PE kind, head pose) is read from tensor shapes where possible and
from the options otherwise, with the reference's defaults for options old checkpoints lack."""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffposetalk.config import HUBERT_BASE, ModelConfig, StyleEncoderConfig
from diffposetalk.model import DiffPoseTalk
from diffposetalk.model_dir import load_stats, save_model_dir
from diffposetalk.safe_pickle import CheckpointError, load_torch_checkpoint

log = logging.getLogger(__name__)

# Keys recomputed here instead of imported (the reference also recomputes TE.pe).
DROPPED = ("denoising_net.TE.pe", "denoising_net.alignment_mask", "denoising_net.PE.pe")
# Present only in some HuBERT checkpoints, unused at inference.
OPTIONAL = ("audio_encoder.hubert.masked_spec_embed",)


def _opt(args: Any, name: str, default: Any = None) -> Any:
    return getattr(args, name, default) if args is not None else default


def _require(state: dict, key: str, source: Path) -> torch.Tensor:
    if key not in state:
        raise CheckpointError(f"{source}: not a DiffPoseTalk checkpoint (missing '{key}')")
    return state[key]


def _read(path: Path, key: str) -> tuple[Any, dict[str, torch.Tensor]]:
    data = load_torch_checkpoint(path)
    if not isinstance(data, dict) or key not in data or not isinstance(data[key], dict):
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"{path}: expected a dict with '{key}' (found {found})")
    args = data.get("args")
    if args is not None and not isinstance(args, argparse.Namespace):
        raise CheckpointError(f"{path}: 'args' is {type(args).__name__}, expected argparse.Namespace")
    state = {k: v for k, v in data[key].items()}
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: non-tensor entries in '{key}': {bad[:5]}")
    return args, state


def _hubert_key(key: str) -> str:
    """Reference (older transformers) HuBERT keys -> current HubertModel keys."""
    key = "audio_encoder.hubert." + key[len("audio_encoder."):]
    key = key.replace("pos_conv_embed.conv.weight_g", "pos_conv_embed.conv.parametrizations.weight.original0")
    return key.replace("pos_conv_embed.conv.weight_v", "pos_conv_embed.conv.parametrizations.weight.original1")


def _count_layers(state: dict, prefix: str) -> int:
    idx = {int(m.group(1)) for k in state for m in [re.match(re.escape(prefix) + r"(\d+)\.", k)] if m}
    return max(idx) + 1 if idx else 0


def hubert_config(state: dict, source: Path) -> dict[str, Any]:
    """hubert-base's config, with sizes read from the weights (strides cannot be read; HuBERT's are
    kept). Heads = hidden / 64, HuBERT's head width."""
    hubert = dict(HUBERT_BASE)
    proj = _require(state, "audio_encoder.feature_projection.projection.weight", source)
    hidden = int(proj.shape[0])
    convs = [state[f"audio_encoder.feature_extractor.conv_layers.{i}.conv.weight"]
             for i in range(_count_layers(state, "audio_encoder.feature_extractor.conv_layers."))]
    pos_prefix = "audio_encoder.encoder.pos_conv_embed.conv."
    pos = next((state[pos_prefix + k] for k in ("weight_v", "parametrizations.weight.original1", "weight")
                if pos_prefix + k in state), None)  # old weight-norm names, new ones, or none
    ff = _require(state, "audio_encoder.encoder.layers.0.feed_forward.intermediate_dense.weight", source)
    hubert.update(
        hidden_size=hidden, num_attention_heads=max(1, hidden // 64), intermediate_size=int(ff.shape[0]),
        num_hidden_layers=_count_layers(state, "audio_encoder.encoder.layers."),
        conv_dim=[int(c.shape[0]) for c in convs], conv_kernel=[int(c.shape[2]) for c in convs],
        num_feat_extract_layers=len(convs),
        feat_proj_layer_norm="audio_encoder.feature_projection.layer_norm.weight" in state)
    if len(convs) != len(hubert["conv_stride"]):
        raise CheckpointError(f"{source}: {len(convs)} HuBERT conv layers, expected 7")
    if pos is not None:
        hubert.update(num_conv_pos_embeddings=int(pos.shape[2]),
                      num_conv_pos_embedding_groups=hidden // int(pos.shape[1]))
    return hubert


def denoiser_config(args: Any, state: dict, source: Path) -> ModelConfig:
    start_motion = _require(state, "start_motion_feat", source)
    fmap = _require(state, "audio_feature_map.weight", source)
    fproj = _require(state, "denoising_net.feature_proj.weight", source)
    pproj = _require(state, "denoising_net.person_proj.weight", source)
    lin1 = _require(state, "denoising_net.transformer.layers.0.linear1.weight", source)
    n_prev, motion_dim = start_motion.shape[1], start_motion.shape[2]
    if motion_dim not in (51, 54):
        raise CheckpointError(f"{source}: start_motion_feat has {motion_dim} channels, expected 54 or 51")
    feature_dim = fmap.shape[0]
    learnable_pe = "denoising_net.PE" in state
    n_motions = (state["denoising_net.PE"].shape[1] - 1 - n_prev) if learnable_pe else _opt(args, "n_motions", 100)
    person_in = pproj.shape[1]
    use_style = person_in > 100
    # align_mask_width: the stored mask is authoritative; otherwise options as the reference reads them
    if "denoising_net.alignment_mask" in state:
        row = state["denoising_net.alignment_mask"][1 + n_prev + n_motions // 2]
        width = (int((~row.bool()).sum()) + 1) // 2
    else:
        width = _opt(args, "align_mask_width")
        if width is None:
            width = 1 if _opt(args, "use_alignment_mask") else 0
    conds = _opt(args, "guiding_conditions")
    conds = [c for c in conds.split(",") if c in ("audio", "style")] if conds else []
    hubert = hubert_config(state, source)
    cfg = ModelConfig(
        head_pose=motion_dim == 54, n_motions=int(n_motions), n_prev_motions=int(n_prev),
        fps=int(_opt(args, "fps", 25) or 25), pad_mode=_opt(args, "pad_mode", "zero") or "zero",
        feature_dim=int(feature_dim), n_heads=int(_opt(args, "n_heads", 8) or 8),
        n_layers=_count_layers(state, "denoising_net.transformer.layers."),
        mlp_ratio=int(lin1.shape[0] // feature_dim), align_mask_width=int(width), learnable_pe=learnable_pe,
        use_indicator=fproj.shape[1] == motion_dim + 1, use_style=use_style,
        d_style=int(person_in - 100) if use_style else 128, audio_hidden=int(fmap.shape[1]),
        n_diff_steps=int(state["diffusion_sched.betas"].shape[0] - 1) if "diffusion_sched.betas" in state
        else int(_opt(args, "n_diff_steps", 500)),
        diff_schedule=_opt(args, "diff_schedule", "cosine") or "cosine",
        target=_opt(args, "target", "sample") or "sample",
        cfg_mode=_opt(args, "cfg_mode", "incremental") or "incremental",
        guiding_conditions=conds, hubert=hubert, style_encoder=None,
    )
    return cfg


def style_encoder_config(args: Any, state: dict, source: Path, motion_dim: int) -> StyleEncoderConfig:
    proj = _require(state, "motion_proj.weight", source)
    lin1 = _require(state, "transformer.layers.0.linear1.weight", source)
    if proj.shape[1] != motion_dim:
        raise CheckpointError(f"{source}: style encoder takes {proj.shape[1]}-d motion but the denoiser "
                              f"uses {motion_dim}-d (head pose and no-head-pose sets mixed?)")
    d = int(proj.shape[0])
    return StyleEncoderConfig(feature_dim=d, n_heads=int(_opt(args, "n_heads", 4) or 4),
                              n_layers=_count_layers(state, "transformer.layers."),
                              mlp_ratio=int(lin1.shape[0] // d), n_motions=int(_opt(args, "n_motions", 100) or 100))


def convert(denoiser_path: str | Path, style_encoder_path: str | Path | None, stats_path: str | Path,
            out: str | Path, styles: dict[str, np.ndarray] | None = None) -> Path:
    denoiser_path, stats_path = Path(denoiser_path), Path(stats_path)
    args, state = _read(denoiser_path, "model")
    cfg = denoiser_config(args, state, denoiser_path)
    se_state = None
    if style_encoder_path is not None:
        style_encoder_path = Path(style_encoder_path)
        se_args, se_state = _read(style_encoder_path, "encoder")
        cfg.style_encoder = style_encoder_config(se_args, se_state, style_encoder_path, cfg.motion_dim)
    elif cfg.use_style:
        log.warning("no --style-encoder: the model takes style vectors but cannot extract new ones")
    cfg.description = f"converted from {denoiser_path.name}" + (
        f" + {Path(style_encoder_path).name}" if style_encoder_path else "")
    cfg.validate(str(denoiser_path))

    model = DiffPoseTalk(cfg)
    target = model.state_dict()
    new_state: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in DROPPED:
            continue
        new_key = _hubert_key(key) if key.startswith("audio_encoder.") else key
        new_state[new_key] = value
    if se_state is not None:
        for key, value in se_state.items():
            if key.startswith(("motion_proj.", "transformer.")):
                new_state["style_encoder." + key] = value
    if "denoising_net.alignment_mask" in state and cfg.align_mask_width > 0:
        ours = model.denoising_net.alignment_mask
        if not torch.equal(state["denoising_net.alignment_mask"].bool(), ours):
            raise CheckpointError(f"{denoiser_path}: stored alignment mask differs from width "
                                  f"{cfg.align_mask_width}")
    missing = [k for k in target if k not in new_state and k not in OPTIONAL]
    if missing:
        raise CheckpointError(f"{denoiser_path}: missing weights {missing[:6]}")
    unexpected = [k for k in new_state if k not in target]
    if unexpected:
        raise CheckpointError(f"{denoiser_path}: unexpected weights {unexpected[:6]}")
    for k, v in new_state.items():
        if v.shape != target[k].shape:
            raise CheckpointError(f"{denoiser_path}: {k} has shape {tuple(v.shape)}, expected {tuple(target[k].shape)}")
    model.load_state_dict(new_state, strict=False)
    stats = load_stats(stats_path)
    return save_model_dir(out, cfg, model, stats, styles)
