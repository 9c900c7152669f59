"""`dpt-live distill-encoder`: train a model's streaming audio encoder (diffposetalk/stream_encoder.py)
to give, from streamed input, the teacher encoder's WHOLE-CLIP features.

Each training example is built from speech (SynthTalk clips, or any folder of recordings) as a
live microphone would hear it, while its target stays clean:

- timeline: noise-only stretches before, between and after speech (or, sometimes, no speech at
  all); the target's audio has digital silence there;
- input: the speech (coloured like a cheap microphone, with mild room reverb) at a random level,
  room noise throughout (white/pink room tone from -95 dBFS up, mains hum, fan, babble) or noise
  under speech at 0-30 dB SNR;
- input normalisation: the streaming session's running normaliser, updated hop by hop exactly as
  a session does (the first step with hop + lookahead, then one hop per step), then ``delay``
  frames of padding as a session's end adds;
- target: the teacher's audio features of the clean timeline, whole clip normalised, one encoder
  pass (offline generation's features).

The encoder runs over the whole example in one call, which equals streaming it (tests check it),
and is trained on both outputs: final features (frame t - delay) and provisional ones (frame t).
Checkpoints: ``<out>/stream_encoder.safetensors`` + ``train_state.*`` (no pickle); ``--resume``
continues. The output model directory is the given model with the encoder in its config and
weights."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffposetalk.errors import UserError
from diffposetalk.units import FRAME_SAMPLES, SAMPLE_RATE

log = logging.getLogger("dpt_live.distill")

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
CHECKPOINT = "stream_encoder.safetensors"  # = diffposetalk.model_dir.STREAM_FILE
RESUME_KEYS = ("frames", "seed", "hop_ms", "lookahead_ms", "noise", "encoder")


@dataclass(kw_only=True)
class EncoderDistillOptions:
    teacher: Path  # model directory whose audio path (HuBERT + feature map) is the target
    audio: list[Path]  # SynthTalk folders / lmdbs (train split) or folders of recordings
    out: Path  # output model directory (checkpoints are written here)
    model: Path | None = None  # the model that gets the encoder (default: the teacher)
    encoder: str = "default"  # "default" or "tiny" (tests)
    iters: int = 2000
    batch: int = 8
    frames: int = 160  # frames per example (6.4 s), speech and noise-only stretches together
    lr: float = 2e-3
    warmup: int = 100
    clip: float = 1.0
    hop_ms: int = 80  # the session's hop and lookahead the running normaliser is stepped with
    lookahead_ms: int = 80
    noise: bool = True  # room tone / noise / reverb / level augmentation
    val_clips: int = 8  # held-out clips for the validation cosine (SynthTalk val split)
    val_every: int = 250
    save_every: int = 250
    seed: int = 0
    device: str = "cpu"
    threads: int = 1
    resume: bool = False
    max_clips: int | None = None  # only the first N training clips
    quiet: bool = False


# --- audio ------------------------------------------------------------------------------------------

def _is_synthtalk(path: Path) -> bool:
    return (path / "data.mdb").is_file() or (path / "lmdb" / "data.mdb").is_file()


def load_corpus(paths: list[Path], split: str, max_clips: int | None = None) -> list[np.ndarray]:
    """Speech clips (16 kHz float32) from SynthTalk lmdbs (the ``split`` entries) and folders of
    recordings (every file, for the train split only: held-out audio comes from SynthTalk)."""
    from diffposetalk.audio_io import load_audio

    clips: list[np.ndarray] = []
    for path in paths:
        if not path.exists():
            raise UserError(f"--audio {path}: not found")
        if _is_synthtalk(path):
            from training.dataset import TfhpLmdb

            db = TfhpLmdb(path)
            for entry in db.list_entries(split):
                clips.append(db.read_clip(entry)["audio"].astype(np.float32))
                if max_clips and len(clips) >= max_clips:
                    return clips
        elif split == "train":
            files = sorted(f for f in path.rglob("*") if f.suffix.lower() in AUDIO_SUFFIXES)
            if not files:
                raise UserError(f"--audio {path}: neither a SynthTalk folder nor a folder of audio files")
            clips += [load_audio(f) for f in files]
    clips = [c for c in clips if len(c) >= 2 * FRAME_SAMPLES]
    return clips[:max_clips] if max_clips else clips


def stream_normalise(audio: np.ndarray, hop: int, lookahead: int, delay: int) -> np.ndarray:
    """``audio`` (T*640,) normalised as a StreamSession does it step by step (first step: hop +
    lookahead frames, then hop frames; each chunk with the statistics after its own update), then
    ``delay`` frames of padding (0) as a session's end adds."""
    from streaming.conditioning import RunningNormalizer

    norm = RunningNormalizer()
    out = np.zeros(len(audio) + delay * FRAME_SAMPLES, np.float32)
    start, end = 0, (hop + lookahead) * FRAME_SAMPLES
    while start < len(audio):
        end = min(end, len(audio))
        norm.update(audio[start:end])
        out[start:end] = norm.normalise(audio[start:end])
        start, end = end, end + hop * FRAME_SAMPLES
    return out


@dataclass
class Example:
    noisy: np.ndarray  # (T*640,) what the microphone hears
    clean: np.ndarray  # (T*640,) the speech alone, digital silence elsewhere


def make_example(clips: list[np.ndarray], frames: int, rng: np.random.Generator, noise: bool) -> Example:
    """One training example of ``frames`` frames (see the module docstring)."""
    from training.room_noise import ROOM_KINDS, colour, dbfs, reverb, room_noise, speech_rms

    n = frames * FRAME_SAMPLES
    clean = np.zeros(n)
    if not noise or rng.random() > 0.06:  # a few examples are room noise alone
        # noise-only stretches: lead, tail and one gap, in whole frames
        lead = int(rng.integers(0, max(1, frames // 4))) if noise and rng.random() < 0.7 else 0
        tail = int(rng.integers(0, max(1, frames // 4))) if noise and rng.random() < 0.7 else 0
        gap = int(rng.integers(5, max(6, frames // 5))) if noise and rng.random() < 0.5 else 0
        speech = max(frames - lead - tail - gap, 10)
        clip = clips[int(rng.integers(len(clips)))]
        take = min(speech * FRAME_SAMPLES, len(clip) // FRAME_SAMPLES * FRAME_SAMPLES)
        s0 = int(rng.integers(0, len(clip) - take + 1)) // FRAME_SAMPLES * FRAME_SAMPLES
        piece = clip[s0:s0 + take].astype(np.float64)
        cut = int(rng.integers(0, take // FRAME_SAMPLES + 1)) * FRAME_SAMPLES if gap else take
        at = lead * FRAME_SAMPLES
        first = piece[:cut][: n - at]
        clean[at:at + len(first)] = first
        at2 = at + cut + gap * FRAME_SAMPLES
        if at2 < n and cut < take:
            rest = piece[cut:][: n - at2]
            clean[at2:at2 + len(rest)] = rest
    if not noise:
        return Example(clean.astype(np.float32), clean.astype(np.float32))

    level = dbfs(rng.uniform(-35, -12))  # speech level at the microphone
    rms = speech_rms(clean)
    speech = clean * (level / rms) if rms > 1e-6 else clean
    target = speech.copy()
    if rng.random() < 0.5:
        speech = colour(speech, rng)
    if rng.random() < 0.3:
        speech = reverb(speech, rng)
    mode = rng.random()
    room = np.zeros(n)
    for _ in range(1 + int(rng.random() < 0.3)):  # sometimes two sources (hum + room tone)
        kind = str(rng.choice(ROOM_KINDS))
        if mode < 0.55:  # room tone at an absolute level, from inaudible to loud
            amp = dbfs(rng.uniform(-95, -35))
        elif mode < 0.9 and rms > 1e-6:  # noise under speech at an SNR
            amp = level / 10 ** (rng.uniform(0, 30) / 20)
        else:
            amp = 0.0  # digital silence between words
        room += amp * room_noise(kind, n, rng)
    noisy = np.clip(speech + room, -1.0, 32767 / 32768)
    return Example(noisy.astype(np.float32), target.astype(np.float32))


# --- training -----------------------------------------------------------------------------------------

def teacher_features(model, clean, n_motions: int):
    """Whole-clip features of a batch of clean timelines (B, T*640) as offline generation
    computes them (each clip normalised alone, padded to whole windows): (B, T, F)."""
    import math

    import torch

    T = clean.shape[1] // FRAME_SAMPLES
    x = (clean - clean.mean(1, keepdim=True)) / (clean.std(1, keepdim=True) + 1e-5)
    n_win = max(1, math.ceil(T / n_motions))
    x = torch.nn.functional.pad(x, (0, n_win * n_motions * FRAME_SAMPLES - x.shape[1]))
    return model.audio_features(x, n_win * n_motions)[:, :T]


def encoder_config(kind: str, feature_dim: int):
    from diffposetalk.stream_encoder import StreamEncoderConfig, tiny_stream_config

    if kind == "tiny":
        return tiny_stream_config(feature_dim)
    if kind == "default":
        return StreamEncoderConfig(out_dim=feature_dim)
    if kind == "small":  # 2 layers of 96: ~45 % of default's multiply-adds, weights that fit a core's L2
        return StreamEncoderConfig(conv_dim=(32, 64, 96), d_model=96, n_layers=2, n_heads=4, ffn_dim=192,
                                   out_dim=feature_dim)
    raise UserError(f"--encoder {kind!r}: default, small or tiny")


def feature_loss(pred, target, scale):
    """Scaled MSE plus (1 - cosine) per frame, averaged."""
    import torch.nn.functional as F

    mse = (((pred - target) / scale) ** 2).mean()
    cos = F.cosine_similarity(pred, target, dim=-1).mean()
    return mse + (1 - cos), cos


def cosine_frames(a: np.ndarray, b: np.ndarray) -> float:
    """Mean per-frame cosine similarity."""
    return float(np.mean(np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)))


@dataclass
class EncoderDistillResult:
    out: Path
    steps: int
    val_cos: float | None
    history: list[dict]


def distill_encoder(opts: EncoderDistillOptions) -> EncoderDistillResult:
    import torch
    from safetensors.torch import load_file
    from tqdm import tqdm

    from diffposetalk.model import DiffPoseTalk
    from diffposetalk.model_dir import load_model_dir, save_model_dir
    from diffposetalk.stream_encoder import StreamEncoder
    from streaming.windowing import WindowSpec
    from training.train_state import check_resume_options, load_state, lr_at, save_state

    torch.set_num_threads(opts.threads)
    torch.manual_seed(opts.seed)
    rng = np.random.default_rng(opts.seed)
    dev = torch.device(opts.device)
    teacher = load_model_dir(opts.teacher, dev)
    target_model = load_model_dir(opts.model or opts.teacher)
    if target_model.config.feature_dim != teacher.config.feature_dim:
        raise UserError(f"--model {target_model.path} has {target_model.config.feature_dim}-d audio features, "
                        f"the teacher {teacher.config.feature_dim}-d")
    spec = WindowSpec.from_ms(opts.hop_ms, opts.lookahead_ms, 0)
    enc_cfg = encoder_config(opts.encoder, teacher.config.feature_dim)
    encoder = StreamEncoder(enc_cfg).to(dev)
    D = enc_cfg.delay

    train = load_corpus(opts.audio, "train", opts.max_clips)
    if not train:
        raise UserError("--audio: no training speech found")
    val = []
    for p in opts.audio:
        if _is_synthtalk(p):
            try:
                val += load_corpus([p], "val", opts.val_clips)
            except UserError:  # a set without a val split: validated on train clips below
                pass
    val = val[:opts.val_clips] if val else train[-opts.val_clips:]
    log.info("distill-encoder: %d train clips (%.0f s), %d val clips", len(train),
             sum(len(c) for c in train) / SAMPLE_RATE, len(val))

    optimizer = torch.optim.AdamW(encoder.parameters(), lr=opts.lr, weight_decay=1e-4)
    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(opts).items()
               if k not in ("audio", "resume", "quiet")}
    opts.out.mkdir(parents=True, exist_ok=True)
    start, history = 0, []
    if opts.resume:
        ckpt = opts.out / CHECKPOINT
        if not ckpt.is_file():
            raise UserError(f"--resume: {ckpt} not found")
        encoder.load_state_dict(load_file(str(ckpt)))
        start, saved, history = load_state(opts.out, optimizer, rng)
        check_resume_options(saved, options, RESUME_KEYS)

    val_rng = np.random.default_rng(12345)  # the same validation examples every time
    val_examples = [make_example([c], opts.frames, val_rng, opts.noise) for c in val]

    def batch_of(examples):
        noisy = np.stack([stream_normalise(e.noisy, spec.hop, spec.lookahead, D) for e in examples])
        clean = np.stack([e.clean for e in examples])
        return torch.from_numpy(noisy).to(dev), torch.from_numpy(clean).to(dev)

    with torch.no_grad():
        _, clean = batch_of([make_example(train, opts.frames, np.random.default_rng(7), False) for _ in range(8)])
        feats = teacher_features(teacher.model, clean, teacher.config.n_motions)
        # per-dimension scale of the targets (a floor so near-constant dimensions do not dominate)
        scale = feats.std((0, 1))
        scale = scale.clamp_min(0.2 * float(scale.mean()))
        if not opts.resume:  # start both heads at the targets' mean
            for head in (encoder.final, encoder.provisional):
                head.bias.copy_(feats.mean((0, 1)))

    def predict(noisy):
        final, prov = encoder(noisy)
        return final[:, D:], prov[:, :-D] if D else prov

    @torch.no_grad()
    def validate() -> float:
        encoder.eval()
        cos = []
        for i in range(0, len(val_examples), opts.batch):
            noisy, clean = batch_of(val_examples[i:i + opts.batch])
            target = teacher_features(teacher.model, clean, teacher.config.n_motions)
            final, _ = predict(noisy)
            cos.append(cosine_frames(final.cpu().numpy(), target.cpu().numpy()))
        encoder.train()
        return float(np.mean(cos))

    def checkpoint(done: int) -> None:
        write_model(done)  # the encoder's weights are the model directory's stream_encoder.safetensors
        save_state(opts.out, done, optimizer, rng, options, history)

    def write_model(done: int) -> None:
        cfg = dataclasses.replace(target_model.config, stream_encoder=enc_cfg.to_dict())
        cfg.validate("distill-encoder")
        model = DiffPoseTalk(cfg)
        state = {k: v.detach().cpu() for k, v in target_model.model.state_dict().items()
                 if not k.startswith("stream_encoder.")}
        state.update({f"stream_encoder.{k}": v.detach().cpu() for k, v in encoder.state_dict().items()})
        model.load_state_dict(state)
        stats = {k: v.cpu().numpy() for k, v in target_model.stats.items()}
        save_model_dir(opts.out, cfg, model, stats, target_model.styles)
        (opts.out / "stream_encoder.json").write_text(json.dumps(
            {"teacher": str(opts.teacher), "steps": done, "history": history[-5:]}, indent=1) + "\n")

    encoder.train()
    bar = tqdm(range(start, opts.iters), initial=start, total=opts.iters, dynamic_ncols=True,
               disable=opts.quiet, desc="distill-encoder")
    val_cos = None
    t0 = time.perf_counter()
    for it in bar:
        for g in optimizer.param_groups:
            g["lr"] = lr_at(it, opts.lr, opts.warmup, "cosine", opts.iters)
        noisy, clean = batch_of([make_example(train, opts.frames, rng, opts.noise) for _ in range(opts.batch)])
        with torch.no_grad():
            target = teacher_features(teacher.model, clean, teacher.config.n_motions)
        final, prov = predict(noisy)
        loss_f, cos_f = feature_loss(final, target, scale)
        loss_p, _ = feature_loss(prov, target, scale)
        loss = loss_f + 0.5 * loss_p
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(encoder.parameters(), opts.clip)
        optimizer.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", cos=f"{cos_f.item():.3f}")
        done = it + 1
        if done % opts.val_every == 0 or done == opts.iters:
            val_cos = validate()
            history.append({"step": done, "loss": round(loss.item(), 4), "val_cos": round(val_cos, 4),
                            "seconds": round(time.perf_counter() - t0, 1)})
            bar.write(f"step {done}: val cosine to whole-clip teacher features {val_cos:.4f}")
        if done % opts.save_every == 0 or done == opts.iters:
            checkpoint(done)
    if start >= opts.iters:  # nothing left to train: make sure the model directory exists
        write_model(start)
    return EncoderDistillResult(opts.out, max(start, opts.iters), val_cos, history)
