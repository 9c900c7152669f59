"""Model configuration: every option of the reference DiffPoseTalk, stored as ``config.json``.

Field names follow the reference's training options where one exists, so a converted checkpoint's
options map one to one (see engines/convert.py)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffposetalk.safe_pickle import CheckpointError

# facebook/hubert-base-ls960 (the audio encoder the reference fine-tunes). Written out here
# because nothing may be fetched from a model hub at run time.
HUBERT_BASE: dict[str, Any] = {
    "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
    "intermediate_size": 3072, "hidden_act": "gelu", "layer_norm_eps": 1e-5,
    "feat_extract_norm": "group", "feat_extract_activation": "gelu",
    "conv_dim": [512] * 7, "conv_stride": [5, 2, 2, 2, 2, 2, 2], "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
    "conv_bias": False, "num_conv_pos_embeddings": 128, "num_conv_pos_embedding_groups": 16,
    "do_stable_layer_norm": False, "feat_proj_layer_norm": True,
    "hidden_dropout": 0.1, "activation_dropout": 0.1, "attention_dropout": 0.1,
    "feat_proj_dropout": 0.1, "layerdrop": 0.1, "apply_spec_augment": True,
    "mask_time_prob": 0.05, "mask_time_length": 10, "mask_feature_prob": 0.0,
}

# A HuBERT of the same structure, small enough for unit tests (same conv strides: 320-sample hop).
HUBERT_TINY: dict[str, Any] = {
    **HUBERT_BASE, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 1,
    "intermediate_size": 128, "conv_dim": [16] * 7, "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 4, "layerdrop": 0.0, "mask_time_prob": 0.0,
}

SCHEDULES = ("linear", "cosine", "quadratic", "sigmoid")
CFG_MODES = ("incremental", "independent")
TARGETS = ("sample", "noise")


@dataclass
class StyleEncoderConfig:
    feature_dim: int = 128  # = the style vector's size (d_style of the denoiser)
    n_heads: int = 4
    n_layers: int = 4
    mlp_ratio: int = 4
    n_motions: int = 100


@dataclass
class ModelConfig:
    # motion
    head_pose: bool = True
    n_motions: int = 100
    n_prev_motions: int = 10
    fps: int = 25
    pad_mode: str = "zero"  # how the last audio window is padded: zero | replicate
    # denoiser ("decoder" architecture)
    feature_dim: int = 512
    n_heads: int = 8
    n_layers: int = 8
    mlp_ratio: int = 4
    align_mask_width: int = 1  # <= 0: no alignment mask
    learnable_pe: bool = True
    use_indicator: bool = True
    use_style: bool = True
    d_style: int = 128
    shape_dim: int = 100
    audio_hidden: int = 768  # HuBERT hidden size feeding audio_feature_map
    # diffusion
    n_diff_steps: int = 500
    diff_schedule: str = "cosine"
    target: str = "sample"
    cfg_mode: str = "incremental"
    guiding_conditions: list[str] = field(default_factory=lambda: ["audio", "style"])
    # sub-networks
    hubert: dict[str, Any] = field(default_factory=lambda: dict(HUBERT_BASE))
    style_encoder: StyleEncoderConfig | None = field(default_factory=StyleEncoderConfig)
    # the streaming audio encoder (diffposetalk/stream_encoder.py), when the model has one
    stream_encoder: dict[str, Any] | None = None
    # what this directory holds: "teacher" (reference sampler) or "student" (distilled)
    kind: str = "teacher"
    student_steps: int | None = None
    description: str = ""

    @property
    def motion_dim(self) -> int:
        """Network motion vector: exp(50) + global(3) + jaw_x(1) with head pose, else exp + jaw_x."""
        return 50 + (4 if self.head_pose else 1)

    @property
    def seq_len(self) -> int:
        return self.n_prev_motions + self.n_motions

    def validate(self, source: str = "config") -> ModelConfig:
        problems = []
        if self.diff_schedule not in SCHEDULES:
            problems.append(f"diff_schedule {self.diff_schedule!r} not in {SCHEDULES}")
        if self.cfg_mode not in CFG_MODES:
            problems.append(f"cfg_mode {self.cfg_mode!r} not in {CFG_MODES}")
        if self.target not in TARGETS:
            problems.append(f"target {self.target!r} not in {TARGETS}")
        if self.pad_mode not in ("zero", "replicate"):
            problems.append(f"pad_mode {self.pad_mode!r} not in ('zero', 'replicate')")
        bad = [c for c in self.guiding_conditions if c not in ("audio", "style")]
        if bad:
            problems.append(f"unknown guiding conditions {bad}")
        if "style" in self.guiding_conditions and not self.use_style:
            problems.append("style guidance needs use_style")
        if self.feature_dim % self.n_heads:
            problems.append("feature_dim must be divisible by n_heads")
        if self.style_encoder is not None and self.use_style and self.style_encoder.feature_dim != self.d_style:
            problems.append("style_encoder.feature_dim must equal d_style")
        if self.stream_encoder is not None:
            from diffposetalk.stream_encoder import StreamEncoderConfig

            try:
                enc = StreamEncoderConfig.from_dict(self.stream_encoder)
            except (TypeError, ValueError) as exc:
                problems.append(f"stream_encoder: {exc}")
            else:
                if enc.out_dim != self.feature_dim:
                    problems.append(f"stream_encoder.out_dim {enc.out_dim} must equal feature_dim {self.feature_dim}")
        if self.kind not in ("teacher", "student"):
            problems.append(f"kind {self.kind!r} not in ('teacher', 'student')")
        if problems:
            raise CheckpointError(f"{source}: invalid model config: " + "; ".join(problems))
        return self

    def to_json(self) -> str:
        return json.dumps({"format": "dpt-live-model", "version": 1, **dataclasses.asdict(self)}, indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> ModelConfig:
        data = dict(data)
        if data.pop("format", "dpt-live-model") != "dpt-live-model":
            raise CheckpointError(f"{source}: not a dpt-live model config")
        data.pop("version", None)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CheckpointError(f"{source}: unknown config keys {unknown}")
        se = data.get("style_encoder")
        if isinstance(se, dict):
            data["style_encoder"] = StyleEncoderConfig(**se)
        try:
            return cls(**data).validate(source)
        except TypeError as exc:
            raise CheckpointError(f"{source}: {exc}") from exc

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{path}: cannot read model config ({exc})") from exc
        return cls.from_dict(data, str(path))


def tiny_config(**overrides: Any) -> ModelConfig:
    """A structurally complete model small enough for unit tests."""
    base = dict(feature_dim=32, n_heads=4, n_layers=2, mlp_ratio=2, d_style=16, audio_hidden=64,
                n_diff_steps=20, hubert=dict(HUBERT_TINY),
                style_encoder=StyleEncoderConfig(feature_dim=16, n_heads=2, n_layers=1, mlp_ratio=2))
    base.update(overrides)
    return ModelConfig(**base).validate("tiny_config")
