"""HuBERT audio encoder with the reference feature path.

audio (16 kHz, already normalised) -> reflect padding to HuBERT's 320-sample hop -> CNN at 50 fps
-> linear resample to 2L frames -> transformer at 50 fps -> linear resample to L frames. The
768->512 projection (``audio_feature_map``) belongs to the DiffPoseTalk model, not here."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

HOP = 320  # HuBERT CNN stride product (samples per 50 fps frame)


def normalize_clip(audio: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Whole-clip normalisation of the reference: (a - mean) / (unbiased std + 1e-5)."""
    return (audio - audio.mean()) / (audio.std() + eps)


def pad_audio(audio: torch.Tensor, unit: int = HOP, threshold: int = 80) -> torch.Tensor:
    """(N, S) -> reflect-padded so the CNN yields exactly S // unit frames (the reference rule:
    pad both sides by ceil((unit * n_units + threshold - S) / 2), as two reflect pads of half that
    and one replicate sample when it is odd)."""
    n_units = audio.shape[1] // unit
    side = math.ceil((unit * n_units + threshold - audio.shape[1]) / 2)
    if side >= 0:
        reflect, replicate = side // 2, side % 2
        if reflect > 0:
            # two passes: a single reflect pad may not exceed the input length - 1
            audio = F.pad(audio, (reflect, reflect), mode="reflect")
            audio = F.pad(audio, (reflect, reflect), mode="reflect")
        if replicate > 0:
            audio = F.pad(audio, (1, 1), mode="replicate")
    return audio


def build_hubert(hubert_config: dict[str, Any], attn_implementation: str = "eager"):
    from transformers import HubertConfig, HubertModel

    config = HubertConfig(**hubert_config)
    # eager attention is what the reference runs (it asks for attention maps); sdpa differs ~1e-6
    config._attn_implementation = attn_implementation
    return HubertModel(config)


class AudioEncoder(nn.Module):
    """Wraps transformers' HubertModel; state-dict keys are HubertModel's own."""

    def __init__(self, hubert_config: dict[str, Any], fps: int = 25):
        super().__init__()
        self.hubert = build_hubert(hubert_config)
        self.fps = fps
        self.hidden_size = hubert_config["hidden_size"]

    def forward(self, audio: torch.Tensor, n_frames: int) -> torch.Tensor:
        """audio (N, S) normalised 16 kHz -> hidden states (N, n_frames, hidden)."""
        h = self.hubert
        cnn = h.feature_extractor(pad_audio(audio))  # (N, C, ~S/320) at 50 fps
        n50 = 2 * n_frames
        cnn = cnn[:, :, : round(n50 * 50 / self.fps)]
        cnn = F.interpolate(cnn, size=n50, mode="linear", align_corners=False)
        hidden = h.feature_projection(cnn.transpose(1, 2))
        hidden = h._mask_hidden_states(hidden)  # SpecAugment-style masking in training, no-op in eval
        hidden = h.encoder(hidden).last_hidden_state  # (N, 2L, hidden)
        hidden = F.interpolate(hidden.transpose(1, 2), size=n_frames, mode="linear", align_corners=False)
        return hidden.transpose(1, 2)

    def freeze_reference_layers(self, frozen_layers: tuple[int, ...] = (0, 1)) -> None:
        """Training freezes the CNN, the feature projection and transformer layers 0-1."""
        for name, param in self.hubert.named_parameters():
            if name.startswith(("feature_extractor", "feature_projection")):
                param.requires_grad = False
            elif name.startswith("encoder.layers.") and int(name.split(".")[2]) in frozen_layers:
                param.requires_grad = False
