"""The models `dpt-live bench --archs` names: the bundled trained ones, and architectures of
training/archs sizes (with variants) built with random weights — speed does not depend on the
weights — once, in a cache outside the checkout."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from diffposetalk.errors import UserError
from diffposetalk.paths import MODELS_DIR

log = logging.getLogger("dpt_live.bench")

# --archs names of bundled trained models, and the architecture whose reference each is compared with
TRAINED = {"demo": (MODELS_DIR / "demo", "demo"), "demo-student": (MODELS_DIR / "demo-student", "demo")}


# the bundled student's design (models/demo-student): a 4-frame window (hop + lookahead at 80/80,
# or one regenerated + one new + two lookahead frames at the default 40/80) continuing from 4
# previous frames: 1 + 4 + 4 tokens per pass instead of the teacher's 1 + 10 + 100
STUDENT_WINDOW, STUDENT_PREV = 4, 4


def reference_arch(arch: str) -> str:
    """The architecture whose reference sampler an --archs entry is compared with: a bundled
    model's own, a variant's base (full+student -> full)."""
    return TRAINED[arch][1] if arch in TRAINED else arch.split("+")[0]


def stream_encoder_design(feature_dim: int) -> dict:
    """The streaming audio encoder (diffposetalk/stream_encoder.py) of an architecture: the
    bundled student's design (128-d, 3 layers) for a small model, a wider and deeper one
    (256-d, 4 layers, 1024-d feed-forward, wider convs) for a full-size one (512-d features)."""
    from diffposetalk.stream_encoder import StreamEncoderConfig

    if feature_dim <= 128:
        return StreamEncoderConfig(out_dim=feature_dim).to_dict()
    return StreamEncoderConfig(conv_dim=(64, 128, 256), d_model=256, n_layers=4, n_heads=4, ffn_dim=1024,
                               out_dim=feature_dim).to_dict()


def arch_config(arch: str):
    """The ModelConfig of an --archs entry: a training/archs size, optionally with modifiers
    '+student[N][pK]' (a distilled 1-step student with an N-frame window continuing from K previous
    frames; default the bundled student's design, :data:`STUDENT_WINDOW` / :data:`STUDENT_PREV`),
    '+small-encoder' (the demo model's 2-layer 128-d HuBERT in place of the arch's:
    what a distilled small audio encoder would cost) and '+stream-encoder' (a streaming audio
    encoder, :func:`stream_encoder_design`, which sessions then use instead of HuBERT)."""
    import dataclasses
    import re

    from diffposetalk.archs import ARCHS, HUBERT_DEMO, make_config

    base, *mods = arch.split("+")
    if base not in ARCHS:
        raise UserError(f"--archs: unknown architecture {base!r} in {arch!r} (choose from {', '.join(ARCHS)}, "
                        "optionally +student[N][pK], +small-encoder, +stream-encoder)")
    cfg = make_config(base)
    for mod in mods:
        student = re.fullmatch(r"student(\d*)(?:p(\d+))?", mod)
        if mod == "small-encoder":
            cfg = dataclasses.replace(cfg, hubert=dict(HUBERT_DEMO), audio_hidden=HUBERT_DEMO["hidden_size"])
        elif student:
            cfg = dataclasses.replace(cfg, kind="student", student_steps=1,
                                      n_motions=int(student.group(1) or STUDENT_WINDOW),
                                      n_prev_motions=int(student.group(2) or STUDENT_PREV))
        elif mod == "stream-encoder":
            cfg = dataclasses.replace(cfg, stream_encoder=stream_encoder_design(cfg.feature_dim))
        else:
            raise UserError(f"--archs: unknown modifier {mod!r} in {arch!r} (+student[N][pK], +small-encoder, "
                            "+stream-encoder)")
    cfg.description = f"random weights ({arch}), for timing only: dpt-live bench"
    return cfg.validate(f"--archs {arch}")


def arch_model_dir(arch: str, cache_dir: Path, seed: int = 0) -> Path:
    """demo, demo-student: the bundled trained models. Anything else (see arch_config): random
    weights, built once under ``cache_dir`` and rebuilt if the config changed."""
    if arch in TRAINED:
        path = TRAINED[arch][0]
        if not (path / "config.json").is_file():
            raise UserError(f"--archs {arch}: the bundled model {path} is not in this checkout")
        return path
    cfg = arch_config(arch)
    out = cache_dir / arch
    text = cfg.to_json() + "\n"
    if (out / "weights.safetensors").is_file() and (out / "config.json").is_file() \
            and (out / "config.json").read_text() == text \
            and (cfg.stream_encoder is None or (out / "stream_encoder.safetensors").is_file()):
        return out
    from diffposetalk.model import DiffPoseTalk
    from diffposetalk.model_dir import save_model_dir

    log.info("building the %s architecture with random weights under %s (once)", arch, out)
    torch.manual_seed(seed)
    model = DiffPoseTalk(cfg)
    rng = np.random.default_rng(seed)
    stats = {"shape_mean": np.zeros(100), "shape_std": np.ones(100), "exp_mean": np.zeros(50),
             "exp_std": np.ones(50), "pose_mean": np.zeros(6), "pose_std": np.full(6, 0.1)}
    styles = {"default": rng.normal(size=cfg.d_style).astype(np.float32)} if cfg.use_style else None
    tmp = cache_dir / f".{arch}.partial"
    save_model_dir(tmp, cfg, model, stats, styles)
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.rename(out)  # a half-written cache is never mistaken for a built one
    return out
