"""The streaming audio encoder: per-frame features whose compute is proportional to the new audio.

HuBERT re-encodes its whole window every step (at 80/80/1600 ms each 80 ms hop encodes 1.76 s).
This encoder is causal, so a step encodes only its own new audio and carries a tensor state:

    audio chunk (B, n*640) --causal strided convs--> (B, n, d) at 25 fps
      --causal frame conv (2 frames of state)-->
      --transformer layers: each new frame attends to itself and the P frames before it
        (their keys/values cached in the state), with a learned bias per distance-->
      --two heads-->  final (B, n, F): features of frame t - delay (it heard ``delay`` frames of
                                       audio after that frame: the encoder's lookahead)
                      provisional (B, n, F): features of frame t from audio up to its end
                                       (used for the newest ``delay`` frames until final ones exist)

No statistic spans the window (no group norm over time): every operation is per frame or over a
bounded causal past, so running the whole clip in one call (:meth:`StreamEncoder.forward`) equals
running it chunk by chunk with the state carried (:meth:`StreamEncoder.step`) up to float
reassociation. The state is one float tensor per row (B, state_size) — conv tails, cached
keys/values, which cache slots are filled — so it exports to ONNX/TensorRT as one input and one
output and a batching scheduler batches it by stacking rows. A zero state is a fresh stream."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from diffposetalk.units import FRAME_SAMPLES


@dataclass
class StreamEncoderConfig:
    conv_dim: tuple[int, ...] = (48, 96, 128)  # channels after each waveform conv
    conv_stride: tuple[int, ...] = (20, 8, 4)  # product with the last stage = 640 samples per frame
    first_kernel: int = 40  # the first conv overlaps its neighbour by kernel - stride samples
    d_model: int = 128
    n_layers: int = 3
    n_heads: int = 4
    ffn_dim: int = 256
    past: int = 24  # frames of cached keys/values each new frame attends to (0.96 s)
    delay: int = 2  # frames of lookahead of the final features (80 ms)
    out_dim: int = 128  # the denoiser's audio feature size (the model's feature_dim)

    def __post_init__(self):
        self.conv_dim, self.conv_stride = tuple(self.conv_dim), tuple(self.conv_stride)
        if len(self.conv_dim) != len(self.conv_stride) or not self.conv_dim:
            raise ValueError("conv_dim and conv_stride need one entry per conv")
        if FRAME_SAMPLES % math.prod(self.conv_stride):
            raise ValueError(f"the conv strides must divide {FRAME_SAMPLES} samples (one frame)")
        if self.first_kernel < self.conv_stride[0]:
            raise ValueError("first_kernel must be at least the first stride")
        if self.d_model % self.n_heads:
            raise ValueError("d_model must be divisible by n_heads")
        if self.past < 1 or self.delay < 0:
            raise ValueError("past >= 1 and delay >= 0 frames")

    @property
    def last_stride(self) -> int:
        """The frame-level conv's stride: what is left of 640 after the waveform convs."""
        return FRAME_SAMPLES // math.prod(self.conv_stride)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["conv_dim"], d["conv_stride"] = list(self.conv_dim), list(self.conv_stride)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StreamEncoderConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown stream_encoder keys {unknown}")
        return cls(**data)


def tiny_stream_config(out_dim: int, **overrides: Any) -> StreamEncoderConfig:
    """A structurally complete encoder small enough for unit tests."""
    base = dict(conv_dim=(8, 16, 32), d_model=32, n_layers=2, n_heads=2, ffn_dim=64, past=6, delay=2,
                out_dim=out_dim)
    base.update(overrides)
    return StreamEncoderConfig(**base)


def state_layout(cfg: StreamEncoderConfig) -> dict[str, tuple[int, ...]]:
    """Name -> per-row shape of each part of the flat state, in order."""
    tail = cfg.first_kernel - cfg.conv_stride[0]
    layout = {"wave": (tail,), "frames": (2, cfg.d_model), "filled": (cfg.past,)}
    for i in range(cfg.n_layers):
        layout[f"k{i}"] = (cfg.past, cfg.d_model)
        layout[f"v{i}"] = (cfg.past, cfg.d_model)
    return layout


def state_size(cfg: StreamEncoderConfig) -> int:
    return sum(math.prod(s) for s in state_layout(cfg).values())


class _Layer(nn.Module):
    """Pre-norm transformer layer over a band: each new frame sees the ``past`` frames before it
    (cached keys/values, masked until filled) and the new frames up to itself."""

    def __init__(self, cfg: StreamEncoderConfig):
        super().__init__()
        d, self.h, self.P = cfg.d_model, cfg.n_heads, cfg.past
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.ff = nn.Sequential(nn.Linear(d, cfg.ffn_dim), nn.GELU(), nn.Linear(cfg.ffn_dim, d))
        # learned bias per head and distance 0..past: order without absolute positions
        self.dist_bias = nn.Parameter(torch.zeros(cfg.n_heads, cfg.past + 1))

    def forward(self, x, k_cache, v_cache, allowed, dist):
        """x (B, n, d); caches (B, P, d); allowed (B, n, P + n) bool; dist (n, P + n) long."""
        B, n, d = x.shape
        hd = d // self.h
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        keys = torch.cat([k_cache, k], dim=1)
        vals = torch.cat([v_cache, v], dim=1)

        def heads(t):
            return t.reshape(B, t.shape[1], self.h, hd).transpose(1, 2)

        scores = heads(q) @ heads(keys).transpose(-1, -2) / math.sqrt(hd)  # (B, h, n, P + n)
        scores = scores + self.dist_bias[:, dist.clamp(0, self.P)].unsqueeze(0)
        scores = scores.masked_fill(~allowed.unsqueeze(1), -1e4)
        att = torch.softmax(scores, dim=-1) @ heads(vals)
        x = x + self.out(att.transpose(1, 2).reshape(B, n, d))
        x = x + self.ff(self.norm2(x))
        return x, keys, vals


class StreamEncoder(nn.Module):
    def __init__(self, cfg: StreamEncoderConfig):
        super().__init__()
        self.cfg = cfg
        convs, c_in = [], 1
        for i, (c, s) in enumerate(zip(cfg.conv_dim, cfg.conv_stride)):
            convs.append(nn.Conv1d(c_in, c, cfg.first_kernel if i == 0 else s, stride=s))
            c_in = c
        self.convs = nn.ModuleList(convs)
        self.to_frame = nn.Conv1d(c_in, cfg.d_model, cfg.last_stride, stride=cfg.last_stride)
        self.in_norm = nn.LayerNorm(cfg.d_model)
        self.frame_conv = nn.Conv1d(cfg.d_model, cfg.d_model, 3)  # causal: 2 frames of state
        self.layers = nn.ModuleList([_Layer(cfg) for _ in range(cfg.n_layers)])
        self.out_norm = nn.LayerNorm(cfg.d_model)
        self.final = nn.Linear(cfg.d_model, cfg.out_dim)
        self.provisional = nn.Linear(cfg.d_model, cfg.out_dim)
        self.layout = state_layout(cfg)
        self.state_size = state_size(cfg)

    def initial_state(self, batch: int, device=None) -> torch.Tensor:
        """A fresh stream's state (zeros: empty conv tails, no cached frame)."""
        return torch.zeros(batch, self.state_size, device=device)

    def _unpack(self, state: torch.Tensor) -> dict[str, torch.Tensor]:
        out, i = {}, 0
        for name, shape in self.layout.items():
            n = math.prod(shape)
            out[name] = state[:, i:i + n].reshape(state.shape[0], *shape)
            i += n
        return out

    def step(self, audio: torch.Tensor, state: torch.Tensor, peek: int = 0):
        """audio (B, n*640) running-normalised new samples, state (B, state_size) ->
        final (B, n + peek, F) (frames t - delay), provisional (B, n + peek, F) (frames t), new
        state. ``peek`` frames of silence are encoded after the chunk without entering the state:
        with peek = delay the last rows are the newest frames' final features as if silence
        followed (what a live step uses for them; the next chunk replaces them). Causal, so the
        chunk's own rows do not depend on the peek."""
        B, S = audio.shape
        if S % FRAME_SAMPLES:
            raise ValueError(f"a chunk of {S} samples is not a whole number of 40 ms frames")
        n, P = S // FRAME_SAMPLES, self.cfg.past
        st = self._unpack(state)
        tail = st["wave"].shape[1]
        wave = torch.cat([st["wave"], audio], dim=1)
        new_wave = wave[:, S:S + tail]
        if peek:
            wave = torch.cat([wave, torch.zeros(B, peek * FRAME_SAMPLES, dtype=wave.dtype, device=wave.device)], 1)
        m = n + peek  # frames encoded
        h = wave.unsqueeze(1)
        for conv in self.convs:
            h = F.gelu(conv(h))
        h = self.in_norm(self.to_frame(h).transpose(1, 2))  # (B, n, d)
        frames = torch.cat([st["frames"], h], dim=1)  # (B, 2 + m, d)
        h = h + F.gelu(self.frame_conv(frames.transpose(1, 2)).transpose(1, 2))
        new_frames = frames[:, n:n + 2]  # the last two of the chunk (not of the peek)

        # new frame i (key index P + i) sees keys P + i - past .. P + i: cached ones once filled
        qi = torch.arange(m, device=audio.device).unsqueeze(1) + P
        kj = torch.arange(P + m, device=audio.device).unsqueeze(0)
        dist = qi - kj  # (m, P + m)
        band = (dist >= 0) & (dist <= P)
        filled = torch.cat([st["filled"], torch.ones(B, m, device=audio.device, dtype=state.dtype)], dim=1)
        allowed = band.unsqueeze(0) & (filled > 0.5).unsqueeze(1)
        caches = []
        for i, layer in enumerate(self.layers):
            h, k, v = layer(h, st[f"k{i}"], st[f"v{i}"], allowed, dist)
            caches += [k[:, n:n + P], v[:, n:n + P]]  # the past after the chunk: the peek is not kept
        h = self.out_norm(h)
        parts = [new_wave, new_frames, filled[:, n:n + P], *caches]
        new_state = torch.cat([p.reshape(B, -1) for p in parts], dim=1)
        return self.final(h), self.provisional(h), new_state

    def forward(self, audio: torch.Tensor):
        """The whole (B, T*640) audio of a stream in one call from a fresh state: what streaming
        it chunk by chunk gives. Returns (final, provisional), each (B, T, F)."""
        final, prov, _ = self.step(audio, self.initial_state(audio.shape[0], audio.device))
        return final, prov


def align_final(final: torch.Tensor, prov: torch.Tensor, delay: int) -> torch.Tensor:
    """Per-frame features of a whole stream from one-shot outputs: final features where the
    encoder heard ``delay`` frames after the frame, provisional ones for the last ``delay``
    frames. (B, T, F) x2 -> (B, T, F)."""
    if delay == 0:
        return final
    return torch.cat([final[:, delay:], prov[:, -delay:]], dim=1)
