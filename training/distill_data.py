"""Distillation data: the teacher's full-context targets paired with the exact inputs a live
streaming session gives the student.

For one (clip, target set):

1. draw the guidance scales (and whether a style is given) and a noise seed;
2. the teacher generates the whole clip offline (diffposetalk.generate.generate_motion, DDIM, whole-clip
   audio normalisation, 100-frame windows) from a recorded x_T — the target;
3. a real :class:`streaming.session.StreamSession` runs over the clip's audio with a
   :class:`RecordingEngine` in place of the motion engine. It stores what the session hands a
   motion engine each step (audio features, indicator, previous frames and their features, style)
   and answers with the teacher's frames for that window (teacher forcing). The stored inputs are
   therefore exactly the live ones: running normalisation, left context, padding, indicator,
   continuation from emitted frames.

Each (clip, set) is one ``.npz`` shard in the targets folder; building skips shards that exist, so
it resumes, and every shard's draws come from its own seed so shards can be built in parallel."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from diffposetalk.errors import UserError

log = logging.getLogger("dpt_live.distill")

DEFAULT_CONFIGS = ((80, 80), (80, 40), (160, 80))  # (hop ms, lookahead ms) users pick
DEFAULT_CONTEXT_MS = 1600
DEFAULT_SCALES = (1.15, 3.0)
# guidance draw per target set: P(no style), P(the default scales); otherwise uniform ranges
P_NO_STYLE, P_DEFAULT = 0.15, 0.4
W_AUDIO_RANGE, W_STYLE_RANGE = (1.0, 2.0), (1.0, 4.0)


@dataclass
class TargetDraw:
    hop_ms: int
    lookahead_ms: int
    w_audio: float
    w_style: float  # 0 when no style is given
    has_style: bool
    noise_seed: int


def draw_target(seed: int, set_idx: int, clip_idx: int, configs=DEFAULT_CONFIGS) -> TargetDraw:
    """Deterministic per (seed, set, clip): independent of build order and parallel builds. The
    window configuration cycles over clips so every configuration gets the same share."""
    rng = np.random.default_rng([seed, set_idx, clip_idx])
    hop, la = configs[(clip_idx + set_idx) % len(configs)]
    u = rng.random()
    if u < P_NO_STYLE:
        w_a = DEFAULT_SCALES[0] if rng.random() < 0.5 else float(rng.uniform(*W_AUDIO_RANGE))
        return TargetDraw(hop, la, w_a, 0.0, False, int(rng.integers(2**31)))
    if u < P_NO_STYLE + P_DEFAULT:
        return TargetDraw(hop, la, *DEFAULT_SCALES, True, int(rng.integers(2**31)))
    return TargetDraw(hop, la, float(rng.uniform(*W_AUDIO_RANGE)), float(rng.uniform(*W_STYLE_RANGE)), True,
                      int(rng.integers(2**31)))


class RecordingEngine:
    """A streaming MotionEngine (same attributes as streaming.motion.SamplingMotionEngine) that
    records each step's inputs and returns the teacher's frames for the window (teacher forcing).

    ``teacher`` (T, D) normalised motion of the whole clip; ``n_motions`` the *student's* window;
    ``hop`` frames per step (the window of step k starts at frame k * hop)."""

    def __init__(self, teacher: np.ndarray, n_motions: int, hop: int, start_motion: np.ndarray,
                 start_audio: np.ndarray, null_style: np.ndarray | None):
        self.n_motions, self.hop = n_motions, hop
        self.n_prev, self.motion_dim = start_motion.shape
        self.start_motion, self.start_audio, self.null_style = start_motion, start_audio, null_style
        # zero frames past the clip: they only ever sit under indicator 0
        self.teacher = np.concatenate([teacher, np.zeros((n_motions, self.motion_dim), np.float32)])
        self.records: dict[str, list] = {k: [] for k in ("audio_feat", "indicator", "prev_motion", "prev_audio",
                                                         "style", "first")}

    def sample(self, audio_feat, indicator, prev_motion, prev_audio, style, step):
        first = step * self.hop
        r = self.records
        r["audio_feat"].append(np.array(audio_feat, np.float32))
        r["indicator"].append(np.array(indicator, np.float32))
        r["prev_motion"].append(np.array(prev_motion, np.float32))
        r["prev_audio"].append(np.array(prev_audio, np.float32))
        r["style"].append(None if style is None else np.array(style, np.float32))
        r["first"].append(first)
        return self.teacher[first:first + self.n_motions].copy()


def teacher_motion(loaded, audio: np.ndarray, shape_n: torch.Tensor, style: np.ndarray | None,
                   draw: TargetDraw, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """The teacher's offline generation of a whole clip: (motion (T, D), x_T (n_motions, D))."""
    from diffposetalk.generate import generate_motion
    from diffposetalk.model import Guidance
    from diffposetalk.sampler import DDIMSampler, RandomNoise

    cfg, model = loaded.config, loaded.model
    scales = {"audio": draw.w_audio, "style": draw.w_style}
    style_t = torch.from_numpy(style).float() if (style is not None and draw.has_style) else None
    motion = generate_motion(model, audio, shape_n, style_t, DDIMSampler(steps), Guidance(scales=scales),
                             RandomNoise(draw.noise_seed, model.device))
    # the same first draw generate_motion made: the x_T every window of the clip started from
    x_T = RandomNoise(draw.noise_seed, "cpu").initial((1, cfg.n_motions, cfg.motion_dim))[0]
    return motion[0].cpu().numpy().astype(np.float32), x_T.numpy().astype(np.float32)


def record_stream(loaded, audio: np.ndarray, teacher: np.ndarray, n_motions: int, hop_ms: int,
                  lookahead_ms: int, context_ms: int, style: np.ndarray | None,
                  encoder=None) -> dict[str, np.ndarray]:
    """Run a real StreamSession over ``audio`` with a RecordingEngine; returns the stacked inputs
    of every step and the session's emitted motion (which must equal the teacher's). ``encoder``:
    a model whose streaming audio encoder makes the audio features (as a live session using it
    does); None: the teacher's audio encoder over each step's window."""
    from diffposetalk.units import FRAME_SAMPLES
    from engines.networks import TorchNetworks
    from streaming.motion import CoefDecoder, NetworkAudioFeatures, NetworkStreamingFeatures
    from streaming.runner import stream_array
    from streaming.session import StreamConfig, StreamSession

    model = loaded.model
    config = StreamConfig(hop_ms, lookahead_ms, context_ms)
    spec = config.spec()
    null = getattr(model, "null_style_feat", None)
    engine = RecordingEngine(teacher, n_motions, spec.hop, model.start_motion_feat[0].detach().cpu().numpy(),
                             model.start_audio_feat[0].detach().cpu().numpy(),
                             None if null is None else null[0, 0].detach().cpu().numpy())
    if encoder is None:
        features = NetworkAudioFeatures(TorchNetworks(model), spec.window_samples)
    else:
        features = NetworkStreamingFeatures(TorchNetworks(encoder), spec.window_samples,
                                            spec.new_frames * FRAME_SAMPLES, spec.hop * FRAME_SAMPLES)
    session = StreamSession(features, engine, CoefDecoder(loaded.stats, loaded.config.head_pose), config, style)
    frames = stream_array(session, audio)
    r = engine.records
    return {"audio_feat": np.stack(r["audio_feat"]), "indicator": np.stack(r["indicator"]),
            "prev_motion": np.stack(r["prev_motion"]), "prev_audio": np.stack(r["prev_audio"]),
            "first": np.asarray(r["first"], np.int32),
            "emitted": np.stack([f.motion for f in frames]).astype(np.float32)}


def split_styles(loaded, clips, stats) -> dict[str, np.ndarray]:
    """Per clip: its speaker's style from the speaker's OTHER clips (leave-one-clip-out mean of the
    style encoder over 100-frame GT windows), as `dpt-live eval` conditions generation."""
    from diffposetalk.model import coef_to_motion
    from training.evaluate import gt_clip_styles, speaker_styles

    head_pose = loaded.config.head_pose
    gt_motion = {c.entry: coef_to_motion(c.exp, c.pose, stats, head_pose).astype(np.float32) for c in clips}
    clip_styles = gt_clip_styles(loaded.model, clips, gt_motion)
    galleries = speaker_styles(clip_styles)
    return {e: galleries[e][person].astype(np.float32) for e, (person, _) in clip_styles.items()}


def shard_name(split: str, set_idx: int, clip_idx: int) -> str:
    return f"{split}_set{set_idx}_{clip_idx:04d}.npz"


def style_donor(seed: int, set_idx: int, clip_idx: int, clips, swap: float) -> int | None:
    """With probability ``swap``, the index of another speaker's clip whose style conditions this
    target instead of the clip's own (deterministic per seed/set/clip).

    Why: in a SynthTalk set (as in real data) each speaker has one voice, so with its own style a
    student can read the style off the voice and ignore the style input; that is how the first
    demo student came to swap calm and animated. A foreign style breaks the shortcut."""
    rng = np.random.default_rng([seed, set_idx, clip_idx, 7])
    if swap <= 0 or rng.random() >= swap:
        return None
    others = [j for j, c in enumerate(clips) if c.person != clips[clip_idx].person]
    return others[int(rng.integers(len(others)))] if others else None


def style_partner(seed: int, set_idx: int, clip_idx: int, clips, mix: float) -> tuple[int, float] | None:
    """With probability ``mix``, (index of another speaker's clip, weight w): the target is then
    conditioned on w x its own style + (1 - w) x that speaker's, w ~ U[0.2, 0.8] (deterministic per
    seed/set/clip). Why: styles between the train speakers' give the student a denser sample of the
    style space than one point per speaker, so unseen speakers' styles are less of an extrapolation."""
    rng = np.random.default_rng([seed, set_idx, clip_idx, 11])
    if mix <= 0 or rng.random() >= mix:
        return None
    others = [j for j, c in enumerate(clips) if c.person != clips[clip_idx].person]
    if not others:
        return None
    return others[int(rng.integers(len(others)))], float(rng.uniform(0.2, 0.8))


@dataclass
class TargetSource:
    """One clip the teacher generates targets for."""

    entry: str
    person: str
    audio: np.ndarray  # (n,) float32 16 kHz
    shape_n: np.ndarray  # normalised FLAME shape (shape_dim,)
    pad_s: float = 0.0  # digital silence added before and after the clip's own audio


def padded(sources: list[TargetSource], pad_s: float) -> list[TargetSource]:
    """The sources with ``pad_s`` seconds of digital silence before and after each clip: long
    pauses (the start of a stream, a speaker listening) that datasets of read sentences lack, so
    the student also learns the teacher's rest after and before speech."""
    if pad_s <= 0:
        return sources
    from diffposetalk.units import SAMPLE_RATE

    z = np.zeros(int(round(pad_s * SAMPLE_RATE)), np.float32)
    return [TargetSource(c.entry, c.person, np.concatenate([z, c.audio, z]), c.shape_n, c.pad_s + pad_s)
            for c in sources]


# (set, clip index, draw) -> (style or None, where it came from): how a target's style is chosen
StyleChooser = Callable[[int, int, TargetDraw], tuple[np.ndarray | None, str | None]]


def build_shards(loaded, data: Path, split: str, out: Path, sets: list[int], n_motions: int, steps: int,
                 seed: int, configs=DEFAULT_CONFIGS, context_ms: int = DEFAULT_CONTEXT_MS,
                 max_clips: int | None = None, progress=None, reverse: bool = False,
                 style_swap: float = 0.0, style_mix: float = 0.0, encoder=None, pad_s: float = 0.0) -> list[Path]:
    """Build the missing shards of a dataset ``split`` for target sets ``sets``; each target is
    conditioned on its speaker's style from GT (or, with ``style_swap``, another speaker's:
    :func:`style_donor`; with ``style_mix``, a mix with another speaker's: :func:`style_partner`).
    Returns every shard path."""
    from training.train_data import load_split

    clips = load_split(data, split, max_clips)
    stats = {k: v.cpu().numpy() for k, v in loaded.stats.items()}
    sources = padded([TargetSource(c.entry, c.person, c.audio, ((c.shape - stats["shape_mean"]) / stats["shape_std"])
                                   .astype(np.float32)) for c in clips], pad_s)

    def chooser() -> StyleChooser:  # the GT styles are computed only when a shard is missing
        styles = split_styles(loaded, clips, stats) if loaded.config.use_style else {}

        def choose(set_idx: int, i: int, draw: TargetDraw):
            donor = style_donor(seed, set_idx, i, clips, style_swap)
            entry = clips[donor].entry if donor is not None else clips[i].entry
            style = styles.get(entry)
            partner = style_partner(seed, set_idx, i, clips, style_mix)
            if style is None or partner is None or styles.get(clips[partner[0]].entry) is None:
                return style, (entry if style is not None else None)
            other, w = clips[partner[0]].entry, partner[1]
            return (w * style + (1 - w) * styles[other]).astype(np.float32), f"{entry}*{w:.2f}+{other}*{1 - w:.2f}"
        return choose

    return write_shards(loaded, split, sources, chooser, out, sets, n_motions, steps, seed, configs, context_ms,
                        progress, reverse, encoder)


def build_audio_shards(loaded, split: str, clips, styles: dict[str, np.ndarray], style_mix: float, out: Path,
                       sets: list[int], n_motions: int, steps: int, seed: int, configs=DEFAULT_CONFIGS,
                       context_ms: int = DEFAULT_CONTEXT_MS, progress=None, reverse: bool = False,
                       encoder=None, pad_s: float = 0.0) -> list[Path]:
    """Build the missing shards for speech alone (training/distill_audio.py): ``clips`` are
    AudioClips, every style-conditioned target takes one of ``styles`` (or a mix of two), the face
    is the mean shape. Returns every shard path."""
    from training.distill_audio import describe_style, draw_style, mixed_style

    stats = {k: v.cpu().numpy() for k, v in loaded.stats.items()}
    mean_face = ((0.0 - stats["shape_mean"]) / stats["shape_std"]).astype(np.float32)
    sources = padded([TargetSource(c.entry, c.person, c.audio, mean_face) for c in clips], pad_s)
    names = sorted(styles)

    def chooser() -> StyleChooser:
        def choose(set_idx: int, i: int, draw: TargetDraw):
            if not names:
                return None, None
            parts = draw_style(seed, set_idx, i, names, style_mix)
            return mixed_style(styles, parts), describe_style(parts)
        return choose

    return write_shards(loaded, split, sources, chooser, out, sets, n_motions, steps, seed, configs, context_ms,
                        progress, reverse, encoder)


def write_shards(loaded, split: str, sources: list[TargetSource], chooser: Callable[[], StyleChooser], out: Path,
                 sets: list[int], n_motions: int, steps: int, seed: int, configs, context_ms: int,
                 progress=None, reverse: bool = False, encoder=None) -> list[Path]:
    """Generate and record the shards of ``sources`` missing in ``out`` (see the module doc).
    ``reverse``: last clip first (a second parallel builder then starts where the first ends);
    ``encoder``: record the student's inputs with this model's streaming audio encoder."""
    out.mkdir(parents=True, exist_ok=True)
    todo = [(s, i) for s in sets for i in range(len(sources)) if not (out / shard_name(split, s, i)).is_file()]
    if reverse:
        todo = todo[::-1]
    paths = [out / shard_name(split, s, i) for s in sets for i in range(len(sources))]
    if not todo:
        return paths
    choose = chooser()
    for n, (set_idx, i) in enumerate(todo):
        if (out / shard_name(split, set_idx, i)).is_file():  # built meanwhile by a parallel builder
            continue
        c = sources[i]
        t0 = time.time()
        draw = draw_target(seed, set_idx, i, configs)
        style, style_from = choose(set_idx, i, draw) if (draw.has_style and loaded.config.use_style) else (None, None)
        if draw.has_style and style is None:  # no style available (clip shorter than the style window)
            draw = TargetDraw(draw.hop_ms, draw.lookahead_ms, draw.w_audio, 0.0, False, draw.noise_seed)
        shape_n = torch.from_numpy(c.shape_n).float()
        teacher, x_T = teacher_motion(loaded, c.audio, shape_n, style, draw, steps)
        rec = record_stream(loaded, c.audio, teacher, n_motions, draw.hop_ms, draw.lookahead_ms, context_ms, style,
                            encoder)
        if not np.allclose(rec["emitted"], teacher[:len(rec["emitted"])], atol=1e-5):
            raise RuntimeError(f"{c.entry}: the recorded session did not replay the teacher's frames")
        d = loaded.config.d_style if loaded.config.use_style else 0
        meta = {"entry": c.entry, "person": c.person, "split": split, "set": set_idx, "clip": i,
                "hop_ms": draw.hop_ms, "lookahead_ms": draw.lookahead_ms, "context_ms": context_ms,
                "w_audio": draw.w_audio, "w_style": draw.w_style, "has_style": draw.has_style,
                "noise_seed": draw.noise_seed, "teacher_steps": steps, "n_motions": n_motions,
                "style_from": style_from if style is not None else None,
                "features": "window" if encoder is None else "stream", "pad_s": c.pad_s}
        tmp = out / (shard_name(split, set_idx, i) + ".partial")  # renamed when complete
        with open(tmp, "wb") as fh:
            np.savez(fh, audio_feat=rec["audio_feat"].astype(np.float16), prev_audio=rec["prev_audio"].astype(np.float16),
                     prev_motion=rec["prev_motion"], indicator=rec["indicator"].astype(np.uint8), first=rec["first"],
                     teacher=teacher, x_T=x_T, shape=shape_n.numpy(),
                     style=style if style is not None else np.zeros(d, np.float32), meta=np.array(json.dumps(meta)))
        tmp.rename(out / shard_name(split, set_idx, i))
        log.info("%s set %d clip %d (%s): %d frames, %d steps, %s/%s ms, w %.2f/%.2f, style %s in %.1f s", split,
                 set_idx, i, c.entry, len(teacher), len(rec["first"]), draw.hop_ms, draw.lookahead_ms, draw.w_audio,
                 draw.w_style, style_from, time.time() - t0)
        if progress is not None:
            progress(n + 1, len(todo))
    return paths


# --- the training view of the shards -----------------------------------------------------------

@dataclass
class DistillBatch:
    audio_feat: torch.Tensor  # (B, L, F)
    prev_audio: torch.Tensor  # (B, P, F)
    prev_motion: torch.Tensor  # (B, P, D)
    indicator: torch.Tensor  # (B, L)
    shape: torch.Tensor  # (B, shape_dim) normalised
    style: torch.Tensor  # (B, d_style) (zeros where has_style is False)
    has_style: torch.Tensor  # (B,) bool
    guidance: torch.Tensor  # (B, 2) (w_audio, w_style)
    x_T: torch.Tensor  # (B, L, D) the teacher's noise for these frames
    target: torch.Tensor  # (B, L, D) the teacher's frames


class DistillSet:
    """All steps of a list of shards, kept in memory (features as float16). ``n_prev``: the
    student's previous frames, the last ones of the recorded (teacher's) previous frames."""

    def __init__(self, paths: list[Path], n_motions: int, n_prev: int | None = None):
        if not paths:
            raise UserError("no distillation targets found")
        self.L = n_motions
        cols = {k: [] for k in ("audio_feat", "prev_audio", "prev_motion", "indicator", "first", "shard")}
        self.shards = []
        for j, p in enumerate(paths):
            try:
                with np.load(p, allow_pickle=False) as z:
                    meta = json.loads(str(z["meta"]))
                    if meta["n_motions"] != n_motions:
                        raise UserError(f"{p}: built for a {meta['n_motions']}-frame student window, this "
                                        f"run uses {n_motions} (use another --targets folder)")
                    for k in cols:
                        if k != "shard":
                            cols[k].append(z[k])
                    cols["shard"].append(np.full(len(z["first"]), j, np.int32))
                    self.shards.append({"teacher": z["teacher"], "x_T": z["x_T"], "shape": z["shape"],
                                        "style": z["style"], "meta": meta})
            except (OSError, ValueError, KeyError) as exc:
                raise UserError(f"{p}: unreadable distillation shard ({exc}); delete it to rebuild") from exc
        self.cols = {k: np.concatenate(v) for k, v in cols.items()}
        recorded = self.cols["prev_motion"].shape[1]
        if n_prev is not None and n_prev != recorded:
            if n_prev > recorded:
                raise UserError(f"the targets hold {recorded} previous frames per step, the student takes {n_prev}")
            for k in ("prev_motion", "prev_audio"):  # a view: no copy of the features
                self.cols[k] = self.cols[k][:, recorded - n_prev:]
        # which audio features the inputs hold: the teacher's window ("window") or a streaming encoder's
        kinds = sorted({s["meta"].get("features", "window") for s in self.shards})
        if len(kinds) > 1:
            raise UserError(f"these shards mix audio features ({', '.join(kinds)}): use one --targets folder per kind")
        self.features = kinds[0]
        # targets and noise per step, gathered once (small: L frames per step)
        L = n_motions
        idx = self.cols["first"][:, None] + np.arange(L)[None]
        self.target = np.empty((len(idx), L, self.shards[0]["teacher"].shape[1]), np.float32)
        self.noise = np.empty_like(self.target)
        for j, sh in enumerate(self.shards):
            rows = np.nonzero(self.cols["shard"] == j)[0]
            t = np.concatenate([sh["teacher"], np.zeros((L, sh["teacher"].shape[1]), np.float32)])
            self.target[rows] = t[idx[rows]]
            # frame f of the teacher's clip was generated from x_T[f % n]: the student gets the same noise
            self.noise[rows] = sh["x_T"][idx[rows] % len(sh["x_T"])]
        self.shape = np.stack([s["shape"] for s in self.shards])
        self.style = np.stack([s["style"] for s in self.shards])
        self.has_style = np.array([s["meta"]["has_style"] for s in self.shards])
        self.guidance = np.array([[s["meta"]["w_audio"], s["meta"]["w_style"]] for s in self.shards], np.float32)
        self._alt = None

    @property
    def alt_prev(self) -> np.ndarray:
        """Per step, the previous frames of the same clip window from *another* target set (another
        guidance/style draw), shifted so their last frame is the recorded last frame (continuity
        into the window is unchanged). Steps without such frames (no partner set, window starts
        inside the start context) keep their own."""
        if self._alt is not None:
            return self._alt  # built on first use: only --context-mix needs this copy
        prev = self.cols["prev_motion"]
        alt = prev.copy()
        P = prev.shape[1]
        by_clip: dict[tuple, list[int]] = {}
        for j, sh in enumerate(self.shards):
            by_clip.setdefault((sh["meta"].get("split"), sh["meta"].get("clip")), []).append(j)
        for group in (g for g in by_clip.values() if len(g) > 1):
            for k, j in enumerate(group):
                other = self.shards[group[(k + 1) % len(group)]]["teacher"]
                rows = np.nonzero((self.cols["shard"] == j) & (self.cols["first"] >= P)
                                  & (self.cols["first"] <= len(other)))[0]
                seg = other[self.cols["first"][rows, None] + np.arange(-P, 0)[None]]
                alt[rows] = seg - seg[:, -1:] + prev[rows, -1:]
        self._alt = alt
        return alt

    def decorrelate(self, idx: np.ndarray, rng: np.random.Generator, p: float,
                    scale: tuple[float, float] = (0.5, 2.0)) -> np.ndarray:
        """Previous frames for a batch where, with probability ``p`` per step, the context comes from
        another style draw of the same clip (:attr:`alt_prev`) and its amplitude around the last
        frame is scaled by a log-uniform factor in ``scale``: the context no longer tells the
        style's amplitude, so the student has to take it from the style vector and guidance input."""
        prev = self.cols["prev_motion"][idx].astype(np.float32)
        pick = rng.random(len(idx)) < p
        s = np.exp(rng.uniform(np.log(scale[0]), np.log(scale[1]), len(idx))).astype(np.float32)
        alt = self.alt_prev[idx]
        alt = alt[:, -1:] + s[:, None, None] * (alt - alt[:, -1:])
        prev[pick] = alt[pick]
        return prev

    def __len__(self) -> int:
        return len(self.cols["first"])

    def describe(self) -> dict:
        m = [s["meta"] for s in self.shards]
        return {"shards": len(m), "steps": len(self), "frames": int(sum(len(s["teacher"]) for s in self.shards)),
                "configs": sorted({f"{x['hop_ms']}/{x['lookahead_ms']}/{x['context_ms']}" for x in m}),
                "no_style_share": float(np.mean([not x["has_style"] for x in m])), "features": self.features}

    def batch(self, idx: np.ndarray, device, prev_motion: np.ndarray | None = None) -> DistillBatch:
        """``prev_motion`` replaces the recorded previous frames (e.g. from :meth:`decorrelate`)."""
        c, sh = self.cols, self.cols["shard"][idx]

        def t(a, dtype=torch.float32):
            return torch.from_numpy(np.ascontiguousarray(a)).to(device=device, dtype=dtype)

        return DistillBatch(
            audio_feat=t(c["audio_feat"][idx]), prev_audio=t(c["prev_audio"][idx]),
            prev_motion=t(c["prev_motion"][idx] if prev_motion is None else prev_motion),
            indicator=t(c["indicator"][idx]), shape=t(self.shape[sh]),
            style=t(self.style[sh]), has_style=t(self.has_style[sh], torch.bool), guidance=t(self.guidance[sh]),
            x_T=t(self.noise[idx]), target=t(self.target[idx]))
