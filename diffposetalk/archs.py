"""Model sizes the trainers build: ``full`` (the reference), ``demo`` (the bundled CPU-trainable
model, <= ~12 MB fp32) and ``tiny`` (unit tests)."""

from __future__ import annotations

from diffposetalk.config import HUBERT_BASE, HUBERT_TINY, ModelConfig, StyleEncoderConfig

ARCHS = ("demo", "full", "tiny")

# HuBERT trained from scratch on CPU: same conv strides (320-sample hop) and layout as
# hubert-base, ~1/6 the width. The two highest-rate conv layers have 32 channels: at 64 they were
# ~1/4 of a training step's compute. Dropout/layerdrop/SpecAugment off: a short run on a small
# synthetic set underfits, it does not overfit. heads = hidden / 64 as the converter assumes.
HUBERT_DEMO = {
    **HUBERT_BASE, "hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
    "intermediate_size": 512, "conv_dim": [32, 32, 64, 64, 64, 128, 128],
    "num_conv_pos_embeddings": 32, "num_conv_pos_embedding_groups": 8,
    "hidden_dropout": 0.0, "activation_dropout": 0.0, "attention_dropout": 0.0,
    "feat_proj_dropout": 0.0, "layerdrop": 0.0, "mask_time_prob": 0.0,
}


def make_config(arch: str, head_pose: bool = True, style_encoder: StyleEncoderConfig | None = None) -> ModelConfig:
    """The ModelConfig of ``arch``; ``style_encoder`` (from a trained style encoder) overrides the
    arch's own so that d_style always matches the encoder the denoiser is conditioned on."""
    if arch == "full":
        cfg = dict(hubert=dict(HUBERT_BASE), style_encoder=StyleEncoderConfig())
    elif arch == "demo":
        cfg = dict(feature_dim=128, n_heads=4, n_layers=4, mlp_ratio=4, d_style=64, audio_hidden=128,
                   n_diff_steps=500, diff_schedule="cosine", use_indicator=True, learnable_pe=True,
                   align_mask_width=1, hubert=dict(HUBERT_DEMO),
                   style_encoder=StyleEncoderConfig(feature_dim=64, n_heads=4, n_layers=4, mlp_ratio=4))
    elif arch == "tiny":
        cfg = dict(feature_dim=32, n_heads=4, n_layers=2, mlp_ratio=2, d_style=16, audio_hidden=64,
                   n_diff_steps=20, hubert=dict(HUBERT_TINY),
                   style_encoder=StyleEncoderConfig(feature_dim=16, n_heads=2, n_layers=1, mlp_ratio=2))
    else:
        raise ValueError(f"unknown arch {arch!r} (choose from {ARCHS})")
    if style_encoder is not None:
        cfg["style_encoder"] = style_encoder
        cfg["d_style"] = style_encoder.feature_dim
    cfg["description"] = f"trained with dpt-live train ({arch} architecture)"
    return ModelConfig(head_pose=head_pose, **cfg).validate(f"arch {arch}")
