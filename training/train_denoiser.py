"""Denoiser training, following the reference scheme.

Each sample is two consecutive 100-frame windows of one clip. Window 0 continues from the learned
start features; window 1 from window 0's last 10 GT frames and their audio features. The style
comes from the *other* window through the frozen style encoder. Audio features are extracted once
over both windows (whole-sample normalisation), as generation extracts them over a whole clip."""

from __future__ import annotations

import json
import logging
from collections import defaultdict, deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from diffposetalk.audio_encoder import normalize_clip
from diffposetalk.config import ModelConfig
from diffposetalk.errors import UserError
from diffposetalk.model import DiffPoseTalk, coef_to_motion, motion_to_coef
from diffposetalk.model_dir import save_model_dir
from diffposetalk.units import FRAME_SAMPLES
from training.losses import LossWeights, snr_weights, total_loss, window_losses
from training.train_data import WindowBank, load_split, load_stats_np
from training.train_loop import TrainOptions, optimizer_step, run_training
from training.train_state import resume_model_dir, save_state

log = logging.getLogger("dpt_live.train")

TRUNC_PROB = (0.3, 0.4)  # per window, as the reference
DROP_STYLE, DROP_AUDIO = 0.55, 0.9  # u ~ U(0,1): style nulled if u > 0.55, audio too if u > 0.9


@dataclass
class Batch:
    """One denoiser batch (numpy, so it is cheap to build and easy to test). L = window length."""

    audio: np.ndarray  # (B, 2L*FRAME_SAMPLES) raw 16 kHz
    motion: np.ndarray  # (B, 2L, D) normalised
    shape: np.ndarray  # (B, 100) normalised
    shape_raw: np.ndarray  # (B, 100)
    person: list[str]
    end: np.ndarray  # (B, 2) int: real frames per window (L = not truncated)
    u: np.ndarray  # (B,) condition-dropout draw
    t: np.ndarray  # (B, 2) diffusion step per window
    eps: np.ndarray  # (B, 2, L, D)
    feats: np.ndarray | None = None  # (B, 2L, F) cached audio features (frozen audio encoder)


def draw_truncation(rng: np.random.Generator, batch: int, length: int,
                    probs: tuple[float, float] = TRUNC_PROB) -> np.ndarray:
    """(B, 2) real-frame counts: window w is cut at a random 1..L-1 with probability probs[w].

    The reference draws truncation once per batch; per sample mixes padded and full windows in
    every step, which gives the same proportions with less variance."""
    end = np.full((batch, 2), length, dtype=np.int64)
    for w, p in enumerate(probs):
        cut = rng.random(batch) < p
        end[cut, w] = rng.integers(1, length, size=int(cut.sum()))
    return end


def condition_drop(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Incremental CFG dropout: (drop_style, drop_audio) boolean per sample."""
    return u > DROP_STYLE, u > DROP_AUDIO


class FeatureCache:
    """Audio features of whole clips from a frozen audio encoder (``--freeze-audio all``).

    Each clip is encoded once, normalised over the whole clip, exactly as offline generation
    encodes a file; a batch then slices its windows out. This skips the audio encoder's forward
    and backward passes, about two thirds of a demo-size training step on a CPU. Padded frames of
    a truncated window keep the clip's real audio features (the indicator marks them as padding)."""

    def __init__(self, model: DiffPoseTalk, clips, device):
        self.feats: dict[str, np.ndarray] = {}
        with torch.no_grad():
            for clip in clips:
                audio = normalize_clip(torch.from_numpy(clip.audio).to(device))
                out = model.audio_features(audio[None], clip.n_frames)[0]
                self.feats[clip.entry] = out.cpu().numpy()

    def window(self, entry: str, start: int, length: int) -> np.ndarray:
        return self.feats[entry][start:start + length]


def make_batch(bank: WindowBank, rng: np.random.Generator, batch: int, stats: dict, cfg: ModelConfig,
               truncate: bool = True, cache: FeatureCache | None = None) -> Batch:
    L, D = cfg.n_motions, cfg.motion_dim
    audio, motion, shape_raw, people, feats = [], [], [], [], []
    for _ in range(batch):
        clip, s = bank.random_window(rng)
        e = s + 2 * L
        audio.append(clip.audio[s * FRAME_SAMPLES:e * FRAME_SAMPLES])
        motion.append(coef_to_motion(clip.exp[s:e], clip.pose[s:e], stats, cfg.head_pose))
        shape_raw.append(clip.shape)
        people.append(clip.person)
        if cache is not None:
            feats.append(cache.window(clip.entry, s, 2 * L))
    shape_raw = np.stack(shape_raw).astype(np.float32)
    end = draw_truncation(rng, batch, L) if truncate else np.full((batch, 2), L, dtype=np.int64)
    return Batch(
        audio=np.stack(audio).astype(np.float32), motion=np.stack(motion).astype(np.float32),
        shape=((shape_raw - stats["shape_mean"]) / stats["shape_std"]).astype(np.float32),
        shape_raw=shape_raw, person=people, end=end, u=rng.random(batch),
        t=rng.integers(1, cfg.n_diff_steps + 1, size=(batch, 2)),
        eps=rng.standard_normal((batch, 2, L, D)).astype(np.float32),
        feats=np.stack(feats) if cache is not None else None)


def _normalised_padded(audio: torch.Tensor, n_real: np.ndarray, total: int) -> torch.Tensor:
    """Per row: whole-clip normalisation of the first n_real samples, zeros after (the padding
    generation applies to a clip's last window)."""
    out = torch.zeros(audio.shape[0], total, dtype=audio.dtype, device=audio.device)
    for i, n in enumerate(n_real):
        out[i, :n] = normalize_clip(audio[i, :n])
    return out


def audio_features(model: DiffPoseTalk, b: Batch, device) -> torch.Tensor:
    """(B, 2, L, F) features of each window as the denoiser sees them.

    One HuBERT pass over both windows (the second window's padding, if any, at the end of the
    sample, like a clip's last window). A truncated first window is its own one-window clip: those
    rows get a second, 1-window pass."""
    L = model.cfg.n_motions
    if b.feats is not None:
        feats = torch.from_numpy(b.feats).to(device)
        return torch.stack([feats[:, :L], feats[:, L:]], dim=1), feats[:, L - model.cfg.n_prev_motions:L]
    audio = torch.from_numpy(b.audio).to(device)
    n_real = (L + b.end[:, 1]) * FRAME_SAMPLES
    feats = model.audio_features(_normalised_padded(audio, n_real, 2 * L * FRAME_SAMPLES), 2 * L)
    w0, w1 = feats[:, :L], feats[:, L:]
    cut0 = np.nonzero(b.end[:, 0] < L)[0]
    if len(cut0):
        sub = _normalised_padded(audio[cut0, :L * FRAME_SAMPLES], b.end[cut0, 0] * FRAME_SAMPLES, L * FRAME_SAMPLES)
        w0 = w0.clone()
        w0[torch.from_numpy(cut0).to(device)] = model.audio_features(sub, L)
    return torch.stack([w0, w1], dim=1), feats[:, L - model.cfg.n_prev_motions:L]


def make_vertex_fn(flame, stats: dict[str, torch.Tensor], head_pose: bool):
    """motion (N, T, D) -> vertices (N, T, V, 3) without global rotation (as the reference)."""
    def to_vertices(motion: torch.Tensor, shape_raw: torch.Tensor) -> torch.Tensor:
        n, t = motion.shape[:2]
        coef = motion_to_coef(motion, stats, head_pose)
        pose = coef["pose"].clone()
        pose[..., :3] = 0
        shape = shape_raw[:, None].expand(n, t, -1).reshape(n * t, -1)
        verts = flame(shape, coef["exp"].reshape(n * t, -1), pose.reshape(n * t, 6))
        return verts.view(n, t, -1, 3)
    return to_vertices


def denoiser_losses(model: DiffPoseTalk, b: Batch, device, vertex_fn=None,
                    snr_gamma: float = 0.0, weights: LossWeights | None = None) -> dict[str, torch.Tensor]:
    """Both windows through the denoiser in one batched pass; returns the loss terms (window terms
    averaged over the two windows; the head transition term belongs to window 1 only).
    The optional terms "style" (style_consistency) and "std" (std_matching) are computed only
    when ``weights`` gives them a weight above 0."""
    cfg = model.cfg
    L, P, B = cfg.n_motions, cfg.n_prev_motions, len(b.u)
    motion = torch.from_numpy(b.motion).to(device)
    frames = torch.arange(L, device=device)
    end = torch.from_numpy(b.end).to(device)
    mask = frames[None, None, :] < end[:, :, None]  # (B, 2, L)
    gt = torch.stack([motion[:, :L], motion[:, L:]], dim=1) * mask[..., None]  # zero padding

    feats, prev_audio = audio_features(model, b, device)
    drop_style, drop_audio = (torch.from_numpy(x).to(device) for x in condition_drop(b.u))
    feats = torch.where(drop_audio[:, None, None, None], model.null_audio_feat[:, None], feats)

    shape = torch.from_numpy(b.shape).to(device)
    style = own_style = None
    if cfg.use_style:
        with torch.no_grad():  # frozen encoder; each window is conditioned on the *other* one's style
            se = model.style_encoder
            own_style = torch.stack([se(motion[:, :L]), se(motion[:, L:])], dim=1)  # (B, 2, d)
        style = torch.where(drop_style[:, None, None], model.null_style_feat, own_style.flip(1))

    def pair(x):  # (B, 2, ...) -> (2B, ...) with window 0 rows first
        return torch.cat([x[:, 0], x[:, 1]])

    person = model._person(torch.cat([shape, shape]), None if style is None else pair(style))
    t = torch.from_numpy(b.t).to(device)
    x_t = model.diffusion_sched.add_noise(pair(gt), pair(t), torch.from_numpy(b.eps).to(device).transpose(0, 1).reshape(2 * B, L, -1))
    prev_motion = torch.cat([model.start_motion_feat.expand(B, -1, -1), motion[:, L - P:L]])
    prev_aud = torch.cat([model.start_audio_feat.expand(B, -1, -1), prev_audio])
    indicator = pair(mask.float()) if cfg.use_indicator else None
    out = model.denoising_net(x_t, pair(feats), person, prev_motion, prev_aud, pair(t), indicator)

    shape_raw = torch.from_numpy(b.shape_raw).to(device)
    terms = defaultdict(lambda: 0.0)
    per_sample = snr_weights(model.diffusion_sched.alpha_bars[t], snr_gamma) if snr_gamma > 0 else None  # (B, 2)
    for w in range(2):
        pred = out[w * B:(w + 1) * B]
        target = gt[:, w] if w == 0 else torch.cat([motion[:, L - P:L], gt[:, 1]], dim=1)
        vf = None if vertex_fn is None else (lambda m: vertex_fn(m, shape_raw))
        sw = None if per_sample is None else per_sample[:, w]
        for k, v in window_losses(pred, target, mask[:, w], P, w == 1, cfg.head_pose, vf, sw).items():
            terms[k] = terms[k] + (v if k == "head_trans" else v / 2)
    want_style = weights is not None and weights.style > 0 and own_style is not None
    want_std = weights is not None and weights.std > 0
    if want_style or want_std:
        pred_windows = torch.stack([out[:B, P:], out[B:, P:]], dim=1)  # (B, 2, L, D)
        keep = ~drop_style[:, None] & (end == L)  # style-conditioned whole windows
        if want_style:
            terms["style"] = style_consistency(model.style_encoder, pred_windows, own_style, keep)
        if want_std:
            terms["std"] = std_matching(pred_windows, gt, keep)
    return dict(terms)


def std_matching(pred: torch.Tensor, gt: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``--std-loss``: mean squared difference between the per-dimension std over frames of the
    predicted x0 window and of its GT window, over the kept windows. pred, gt (B, 2, L, D).

    Why: per-frame losses shrink whatever the model is unsure of towards the mean, so jaw and head
    amplitudes come out damped and a style's mouth amplitude barely shows; matching each window's
    spread asks for the right amplitude without asking for any frame's phase."""
    if not bool(keep.any()):
        return pred.sum() * 0.0
    return ((pred[keep].std(dim=1) - gt[keep].std(dim=1)) ** 2).mean()


def style_consistency(encoder, pred: torch.Tensor, target_style: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``--style-loss``: mean 1 - cos(style of the predicted x0 window, style of its GT window)
    over the kept (style-conditioned, untruncated) windows. pred (B, 2, L, D); target_style
    (B, 2, d); keep (B, 2) bool.

    Why: the x0 losses are per frame, so what the audio does not determine (a speaker's resting
    expression, mouth amplitude) is pulled towards the mean over speakers; the frozen encoder
    pools over the window, so this term asks for the speaker's style without asking for any
    frame's phase. The encoder stays frozen: only the denoiser's output is pulled towards it."""
    if not bool(keep.any()):
        return pred.sum() * 0.0
    got = encoder(pred[keep])
    return (1 - torch.nn.functional.cosine_similarity(got, target_style[keep], dim=-1)).mean()


@torch.no_grad()
def validate(model: DiffPoseTalk, batches: list[Batch], device, weights: LossWeights, vertex_fn) -> dict:
    model.eval()
    sums = defaultdict(float)
    for b in batches:
        terms = denoiser_losses(model, b, device, vertex_fn, weights=weights)
        sums["val_loss"] += total_loss(terms, weights).item() / len(batches)
        sums["val_coef"] += terms["coef"].item() / len(batches)
        for k in ("style", "std"):
            if k in terms:
                sums[f"val_{k}"] += terms[k].item() / len(batches)
    model.train()
    model.style_encoder is not None and model.style_encoder.eval()
    return dict(sums)


def set_dropout(model: torch.nn.Module, p: float) -> None:
    """Override the reference's dropout (0.1 in every transformer layer). A short CPU run on a
    small set underfits, and dropout only slows it down; the saved model is unaffected."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = p
        elif isinstance(m, torch.nn.MultiheadAttention):
            m.dropout = p


def set_trainable(model: DiffPoseTalk, freeze_audio: str) -> list[torch.nn.Parameter]:
    if freeze_audio == "reference":
        model.audio_encoder.freeze_reference_layers()
    elif freeze_audio == "all":  # the whole audio path, so its features can be cached
        for module in (model.audio_encoder, model.audio_feature_map):
            for p in module.parameters():
                p.requires_grad = False
    if model.style_encoder is not None:
        for p in model.style_encoder.parameters():
            p.requires_grad = False
    # SpecAugment's embedding is unused unless masking is on; leave it out of the optimizer
    return [p for p in model.parameters() if p.requires_grad]


def init_from_model_dir(model: DiffPoseTalk, path: Path) -> None:
    """``--init``: start from a model directory's weights (fine-tuning). Its architecture must be
    this run's; the style encoder comes from --style-encoder as always."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights = Path(path) / "weights.safetensors"
    if not weights.is_file():
        raise UserError(f"--init {path}: no weights.safetensors (a model directory is expected)")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise UserError(f"--init {weights}: unreadable ({exc})") from exc
    state = {k: v for k, v in state.items() if not k.startswith("style_encoder.")}
    own = model.state_dict()
    bad = [k for k, v in state.items() if k not in own or own[k].shape != v.shape]
    missing = [k for k in own if not k.startswith("style_encoder.") and k not in state]
    if bad or missing:
        raise UserError(f"--init {weights}: not this architecture (--arch / style encoder); "
                        f"{len(bad)} mismatched and {len(missing)} missing tensors, e.g. {(bad + missing)[0]}")
    model.load_state_dict(state, strict=False)


@dataclass(kw_only=True)
class DenoiserOptions(TrainOptions):
    """`dpt-live train denoiser`."""

    style_encoder: Path  # directory from `train style-encoder` (or a model directory)
    arch: str = "full"  # demo | full | tiny
    # reference: freeze HuBERT's CNN, feature projection and layers 0-1; all: the whole audio path
    # (features cached per clip); none: train all. None: reference for arch "full", else none.
    freeze_audio: str | None = None
    init: Path | None = None  # start from this model directory's weights (fine-tuning)
    snr_gamma: float = 0.0  # weight each window's losses by 1 + min(SNR(t), gamma); 0: the reference
    style_loss: float = 0.0  # weight of the style-consistency term (0: off)
    std_loss: float = 0.0  # weight of the spread term (0: off)
    flame: Path | None = None  # FLAME model: enables the vertex losses
    dropout: float | None = None  # override the denoiser's dropout (reference: 0.1)
    val_batches: int = 4

    def __post_init__(self) -> None:
        if self.freeze_audio is None:
            self.freeze_audio = "reference" if self.arch == "full" else "none"


def train_denoiser(opts: DenoiserOptions) -> Path:
    """Train (or with ``opts.resume`` continue) a denoiser into ``opts.out``; returns it."""
    from training.train_style import load_style_encoder

    torch.set_num_threads(opts.threads)
    out, device = Path(opts.out), torch.device(opts.device)
    stats = load_stats_np(opts.data)
    se_cfg, style_enc = load_style_encoder(opts.style_encoder)
    cfg = _denoiser_config(opts.arch, se_cfg)
    train_bank = WindowBank(load_split(opts.data, "train"), 2 * cfg.n_motions, "train split")
    val_bank = WindowBank(load_split(opts.data, "val"), 2 * cfg.n_motions, "val split")
    options = _recorded_options(opts)

    torch.manual_seed(opts.seed)
    rng = np.random.default_rng(opts.seed)
    model, params, optimizer = _new_model(opts, cfg, style_enc, device)
    step, history = 0, []
    if opts.resume:
        step, history = resume_model_dir(out, cfg, model, optimizer, rng, options,
                                         ("arch", "batch", "seed", "freeze_audio", "flame", "dropout", "init", "snr_gamma",
                                          "style_loss", "std_loss"),
                                         f"differs from --arch {opts.arch} / the style encoder")
    elif out.exists() and any(out.iterdir()):
        raise UserError(f"--out {out} is not empty (use --resume to continue a run)")

    vertex_fn = _vertex_fn(opts.flame, stats, cfg.head_pose, device) if opts.flame else None
    weights = LossWeights(style=opts.style_loss, std=opts.std_loss)
    train_cache, val_cache = _feature_caches(model, opts.freeze_audio, train_bank, val_bank, device)
    val_rng = np.random.default_rng(10_000 + opts.seed)
    val_batches = [make_batch(val_bank, val_rng, opts.batch, stats, cfg, cache=val_cache)
                   for _ in range(opts.val_batches)]
    recent = defaultdict(lambda: deque(maxlen=50))

    def train_step() -> dict:
        b = make_batch(train_bank, rng, opts.batch, stats, cfg, cache=train_cache)
        terms = denoiser_losses(model, b, device, vertex_fn, opts.snr_gamma, weights)
        loss = total_loss(terms, weights)
        optimizer_step(optimizer, loss, params, opts.clip)
        recent["loss"].append(loss.item())
        for k, v in terms.items():
            recent[k].append(v.item())
        return {k: f"{np.mean(v):.3g}" for k, v in recent.items() if k in ("loss", "coef", "head_angle", "style", "std")}

    def validate_now(done: int) -> str:
        v = validate(model, val_batches, device, weights, vertex_fn)
        history.append({"step": done, **{f"train_{k}": float(np.mean(x)) for k, x in recent.items()}, **v})
        return (f"step {done}: train {np.mean(recent['loss']):.4f}  val {v['val_loss']:.4f} "
                f"(coef {v['val_coef']:.4f}" + "".join(f", {k} {v[f'val_{k}']:.4f}" for k in ("style", "std")
                                                 if f"val_{k}" in v) + ")")

    def checkpoint(at: int) -> None:
        save_model_dir(out, cfg, model, stats)
        save_state(out, at, optimizer, rng, options, history)

    run_training(step, opts, optimizer, train_step, validate_now, checkpoint)
    (out / "history.json").write_text(json.dumps(history, indent=1) + "\n")
    return out


def _denoiser_config(arch: str, style_encoder_config: ModelConfig) -> ModelConfig:
    """The architecture ``arch`` around a trained style encoder (its head-pose choice included)."""
    from diffposetalk.archs import make_config

    return make_config(arch, head_pose=style_encoder_config.head_pose,
                       style_encoder=style_encoder_config.style_encoder)


def _recorded_options(opts: DenoiserOptions) -> dict:
    """The options saved with the checkpoints (and checked on --resume)."""
    return {"arch": opts.arch, "batch": opts.batch, "lr": opts.lr, "seed": opts.seed, "iters": opts.iters,
            "freeze_audio": opts.freeze_audio, "style_encoder": str(opts.style_encoder),
            "flame": str(opts.flame) if opts.flame else None, "dropout": opts.dropout,
            "init": str(opts.init) if opts.init else None, "snr_gamma": opts.snr_gamma,
            "style_loss": opts.style_loss, "std_loss": opts.std_loss}


def _new_model(opts: DenoiserOptions, cfg: ModelConfig, style_enc, device):
    """The model to train (frozen trained style encoder, --init weights, --dropout), its trainable
    parameters and their optimizer."""
    model = DiffPoseTalk(cfg)
    model.style_encoder.load_state_dict(style_enc.state_dict())
    if opts.init:
        init_from_model_dir(model, opts.init)
    model.to(device).train()
    model.style_encoder.eval()
    params = set_trainable(model, opts.freeze_audio)
    if opts.dropout is not None:
        set_dropout(model.denoising_net, opts.dropout)
    return model, params, torch.optim.Adam(params, lr=opts.lr)


def _feature_caches(model: DiffPoseTalk, freeze_audio: str, train_bank: WindowBank, val_bank: WindowBank,
                    device) -> tuple[FeatureCache | None, FeatureCache | None]:
    """--freeze-audio all: every clip's audio features, computed once (train, val); else none."""
    if freeze_audio != "all":
        return None, None
    return FeatureCache(model, train_bank.clips, device), FeatureCache(model, val_bank.clips, device)


def _vertex_fn(flame_path: Path, stats: dict, head_pose: bool, device):
    """--flame: the vertex function of the vertex losses."""
    from diffposetalk.flame import Flame, load_flame

    stats_t = {k: torch.from_numpy(v).to(device) for k, v in stats.items()}
    return make_vertex_fn(Flame(load_flame(flame_path)).to(device), stats_t, head_pose)
