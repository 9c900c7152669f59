"""Evaluation (`dpt-live eval`): generate motion for the clips of a split and compare it with ground truth.

Every metric's definition is written next to its value in the JSON (DEFINITIONS) and in
docs/TRAINING.md. Generation conditions each clip on its speaker's style taken from *other* GT
material of that speaker (see speaker_styles), so style retrieval is not a copy of the input."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from diffposetalk.metrics import JAW, LIP_DIMS_EXP, lip_error, pearson  # noqa: F401  (re-exported)
from streaming.options import DEFAULT_CONTEXT_MS, DEFAULT_HOP_MS, DEFAULT_LOOKAHEAD_MS
from streaming.windowing import default_regen_ms
from training.viewer_metrics import DEFINITIONS as VIEWER_DEFINITIONS

DEFINITIONS = {
    "lip_error": "parameter space: RMS over frames and the 6 mouth coefficients (jaw opening pose[3] "
                 "and exp[0:5]) of prediction - GT, in normalised units (divided by the training "
                 "stats' std); mean over clips and seeds",
    "lip_vertex_error": "with --flame: per frame the max over lip vertices of the L2 distance (mm) "
                        "between predicted and GT vertices (global rotation removed), mean over frames, "
                        "clips and seeds. Lip vertices: the 5% of vertices that move most when the "
                        "jaw opens by 0.2 rad on the mean face",
    "mouth_corr_mean": "Pearson r between predicted and GT jaw opening pose[3] per clip, mean over "
                       "clips and seeds",
    "mouth_corr_pooled": "Pearson r of jaw opening pose[3], all clips' frames concatenated (per seed, "
                         "then mean over seeds)",
    "head_pose_error_deg": "RMS over frames and the 3 axes of (predicted - GT) global head rotation "
                           "pose[0:3], in degrees; mean over clips and seeds",
    "motion_stats": "std over frames of jaw opening pose[3] (rad) and of the head angles pose[0:3] "
                    "(deg, mean over axes), and mean per-frame speed (L2 norm of the frame-to-frame "
                    "difference of the normalised motion vector); mean over clips (and seeds) for "
                    "pred, over clips for gt",
    "style_retrieval_gt": "top-1 accuracy: the style vector of each GT clip (mean of the style "
                          "encoder over its 100-frame windows, stride 50) is matched by cosine "
                          "similarity to every test speaker's reference style (mean over that "
                          "speaker's windows in their OTHER clips; all clips if they have one); "
                          "correct when the nearest is the clip's speaker",
    "style_retrieval_generated": "as style_retrieval_gt with the style vector of the generated "
                                 "motion (each seed counted)",
    "style_retrieval_moments_gt": "encoder-free cross-check of style retrieval: a clip's vector is the "
                                  "per-dimension mean and std over frames of its normalised motion "
                                  "(2 x motion dims); nearest test speaker by Euclidean distance to "
                                  "each speaker's mean vector over their OTHER clips (as "
                                  "style_retrieval_gt); GT clips",
    "style_retrieval_moments_generated": "as style_retrieval_moments_gt with the generated motion (each "
                                         "seed counted)",
    "style_swap": "with --swap-styles: each clip is generated once more (seed 0, one sample) under the "
                  "reference style of another test speaker (speakers sorted, the one half the list "
                  "further on), and its style vector matched as in style_retrieval_gt; "
                  "retrieved_as_style_speaker: the fraction retrieved as that speaker (style followed); "
                  "retrieved_as_voice_speaker: the fraction retrieved as the clip's own speaker (style "
                  "read off the voice instead)",
    "diversity": "mean over clips of the mean pairwise RMS distance (normalised motion) between "
                 "samples of different seeds on the same audio and style",
    "network_passes_per_audio_second": "denoiser network passes (one sample's forward; CFG passes "
                                       "counted separately, audio encoder not counted) per second of "
                                       "audio per sample",
    "presets": "with --presets N: every style preset of the model drives the first N evaluated clips "
               "(same audio, seed 0, one sample); per preset the jaw-opening std and mean (rad) and the "
               "head-angle std (deg), means over the clips. jaw_std_ratio_max_min: the largest over the "
               "smallest preset jaw std; big_small_jaw_ratio: big_mouth over small_mouth when both exist",
    "bootstrap": "with --bootstrap N: for lip_error, mouth_corr_mean and style_retrieval_generated, the "
                 "value and a 95 % interval (2.5th..97.5th percentile) over N resamples of the evaluated "
                 "speakers with replacement, each taking all clips of the drawn speakers (per-clip values "
                 "are means over seeds)",
    "wall_seconds_per_audio_second": "wall-clock seconds of generation (audio encoder included) per "
                                     "second of audio per sample; offline mode batches the seeds, "
                                     "stream mode runs one session per seed",
    **{f"viewer.{k}": v for k, v in VIEWER_DEFINITIONS.items()},
}



VISEME_TRAIN_CLIPS = 80

# --- metrics on arrays (pure numpy; tested on known inputs) ---------------------------------------





def head_pose_error_deg(pred: dict, gt: dict) -> float:
    return float(np.degrees(np.sqrt(np.mean((pred["pose"][:, :3] - gt["pose"][:, :3]) ** 2))))


def motion_stats(c: dict, motion: np.ndarray) -> dict[str, float]:
    return {"jaw_std": float(c["pose"][:, JAW].std()),
            "head_std_deg": float(np.degrees(c["pose"][:, :3].std(axis=0)).mean()),
            "speed": float(np.linalg.norm(np.diff(motion, axis=0), axis=1).mean()) if len(motion) > 1 else 0.0}


def diversity(motions: np.ndarray) -> float:
    """motions (S, T, D): mean pairwise RMS distance between seeds."""
    d = [np.sqrt(np.mean((motions[i] - motions[j]) ** 2))
         for i in range(len(motions)) for j in range(i + 1, len(motions))]
    return float(np.mean(d)) if d else float("nan")


def retrieval_top1(queries: list[tuple[str, np.ndarray]], gallery: dict[str, np.ndarray],
                   metric: str = "cosine") -> float:
    """queries: (true speaker, style vector); gallery: speaker -> reference style. Nearest
    neighbour by cosine similarity, or by Euclidean distance (``metric="euclidean"``)."""
    if not queries:
        return float("nan")
    names = sorted(gallery)
    g = np.stack([gallery[n] for n in names])
    if metric == "cosine":
        g = g / np.linalg.norm(g, axis=1, keepdims=True)
    hits = 0
    for who, q in queries:
        if metric == "cosine":
            best = int(np.argmax(g @ (q / np.linalg.norm(q))))
        else:
            best = int(np.argmin(np.linalg.norm(g - q, axis=1)))
        hits += names[best] == who
    return hits / len(queries)


def motion_moments(motion: np.ndarray) -> np.ndarray:
    """Per-dimension mean and std over frames of a normalised motion (T, D) -> (2D,): the
    encoder-free style vector of DEFINITIONS['style_retrieval_moments_gt']."""
    return np.concatenate([motion.mean(0), motion.std(0)])


# --- style vectors ---------------------------------------------------------------------------------

def window_starts(n_frames: int, length: int = 100, stride: int = 50) -> list[int]:
    return list(range(0, max(n_frames - length, 0) + 1, stride)) if n_frames >= length else []


def motion_style(model, motion: np.ndarray) -> np.ndarray | None:
    """Mean style over 100-frame windows (stride 50) of a normalised motion (T, D)."""
    import torch

    starts = window_starts(len(motion), model.cfg.style_encoder.n_motions)
    if not starts:
        return None
    n = model.cfg.style_encoder.n_motions
    win = torch.from_numpy(np.stack([motion[s:s + n] for s in starts]).astype(np.float32)).to(model.device)
    with torch.no_grad():
        return model.style_encoder(win).mean(0).cpu().numpy()


def gt_clip_styles(model, clips, gt_motion: dict[str, np.ndarray]) -> dict[str, tuple[str, np.ndarray]]:
    """entry -> (speaker, style of the clip's GT motion); clips too short for the style encoder
    are left out."""
    out = {}
    for c in clips:
        s = motion_style(model, gt_motion[c.entry])
        if s is not None:
            out[c.entry] = (c.person, s)
    return out


def speaker_styles(clip_styles: dict[str, tuple[str, np.ndarray]]) -> dict[str, dict[str, np.ndarray]]:
    """For each clip, every speaker's reference style excluding that clip (leave-one-clip-out)."""
    by_person: dict[str, list[tuple[str, np.ndarray]]] = {}
    for entry, (person, s) in clip_styles.items():
        by_person.setdefault(person, []).append((entry, s))
    out = {}
    for entry, (person, _) in clip_styles.items():
        gal = {}
        for p, items in by_person.items():
            others = [s for e, s in items if e != entry] if p == person else [s for _, s in items]
            gal[p] = np.mean(others if others else [s for _, s in items], axis=0)
        out[entry] = gal
    return out


# --- the evaluation -----------------------------------------------------------------------------------

def eval_sampler(name: str, steps: int | None, model):
    """The sampler `eval` and `voice-check` run offline: ddim 25 steps unless asked (a distilled
    student gets its own count from make_sampler); ddpm all the model's steps."""
    from diffposetalk.sampler import make_sampler

    if name == "ddim" and steps is None and model.cfg.kind != "student":
        steps = 25
    return make_sampler(name, steps if name == "ddim" else None, model)


EVAL_SPLITS = ("train", "val", "test", "all")


def eval_clips(data: Path, split: str, max_clips: int | None):
    """The clips of ``split``; "all": every split's clips (train, val, test in that order), for a
    dataset none of whose speakers a model has seen (e.g. `synth` with a new --seed)."""
    from diffposetalk.errors import UserError
    from training.train_data import SPLITS, load_split

    if split not in EVAL_SPLITS:
        raise UserError(f"unknown split {split!r} (choose from {', '.join(EVAL_SPLITS)})")
    if split != "all":
        return load_split(data, split, max_clips)
    clips = [c for s in SPLITS for c in load_split(data, s)]
    return clips[:max_clips] if max_clips is not None else clips


@dataclasses.dataclass(kw_only=True)
class EvalOptions:
    """`dpt-live eval` (the options of the same names)."""

    model: Path
    data: Path  # HDTF_TFHP-layout lmdb (or a SynthTalk folder)
    split: str = "test"  # or "all" (EVAL_SPLITS)
    sampler: str = "ddim"  # ddpm | ddim
    steps: int | None = None  # ddim steps (default 25, or a distilled student's own)
    seeds: int = 2  # samples per clip (diversity needs >= 2)
    max_clips: int | None = None  # first M clips of the split
    max_seconds: float | None = 20.0  # evaluate at most this much of each clip
    cfg_audio: float = 1.15
    cfg_style: float = 3.0
    flame: Path | None = None  # FLAME model: adds the lip-vertex error
    threads: int = 2
    device: str = "cpu"
    stream: bool = False  # generate through the streaming session (the window below)
    presets: int = 0  # also drive the first N clips with every style preset
    swap_styles: bool = False  # also drive every clip with another test speaker's style
    hop_ms: int = DEFAULT_HOP_MS
    lookahead_ms: int = DEFAULT_LOOKAHEAD_MS
    context_ms: int = DEFAULT_CONTEXT_MS
    regen_ms: int | None = None  # None: streaming.windowing.default_regen_ms
    bootstrap: int = 0  # speaker-bootstrap resamples for intervals (training/eval_intervals.py); 0: none


@dataclasses.dataclass
class ReferenceStyles:
    """GT material of the evaluated clips: normalised motion, style vectors and the
    leave-one-clip-out speaker galleries (style encoder and encoder-free moments)."""

    gt_motion: dict[str, np.ndarray]  # entry -> (T, D) normalised GT motion
    clip_styles: dict[str, tuple[str, np.ndarray]]  # entry -> (speaker, style); clips >= 100 frames
    galleries: dict[str, dict[str, np.ndarray]]  # entry -> speaker -> reference style
    clip_moments: dict[str, tuple[str, np.ndarray]]
    moment_galleries: dict[str, dict[str, np.ndarray]]


def reference_styles(model, clips, stats: dict, head_pose: bool) -> ReferenceStyles:
    from diffposetalk.model import coef_to_motion

    gt_motion = {c.entry: coef_to_motion(c.exp, c.pose, stats, head_pose).astype(np.float32) for c in clips}
    clip_styles = gt_clip_styles(model, clips, gt_motion)
    clip_moments = {e: (p, motion_moments(gt_motion[e])) for e, (p, _) in clip_styles.items()}
    return ReferenceStyles(gt_motion, clip_styles, speaker_styles(clip_styles), clip_moments,
                           speaker_styles(clip_moments))


@dataclasses.dataclass
class ClipScores:
    """What the per-clip loop collects for the summary metrics."""

    per_clip: list[dict] = dataclasses.field(default_factory=list)
    gt_queries: list = dataclasses.field(default_factory=list)  # (speaker, GT style) per clip
    gen_queries: list = dataclasses.field(default_factory=list)  # (speaker, generated style) per sample
    gen_moments: list = dataclasses.field(default_factory=list)
    pooled_pred: dict[int, list] = dataclasses.field(default_factory=dict)  # seed -> jaw per clip
    pooled_gt: list = dataclasses.field(default_factory=list)
    gen_wall: float = 0.0
    gen_audio_s: float = 0.0
    viewer: list = dataclasses.field(default_factory=list)  # (entry, GT arrays, generated arrays per seed)

    def mean(self, key: str) -> float:
        return float(np.mean([np.mean(r[key]) for r in self.per_clip]))

    def stat_mean(self, key: str, which: str) -> float:  # pred_stats: a list per clip (seeds); gt_stats: one
        flat = [v for r in self.per_clip for v in (r[which] if isinstance(r[which], list) else [r[which]])]
        return float(np.mean([f[key] for f in flat]))


def evaluate(opts: EvalOptions) -> dict:
    """Generate motion for the clips of a split and compare it with GT: the result `eval` writes."""
    import torch

    from diffposetalk.errors import UserError
    from diffposetalk.model import Guidance
    from diffposetalk.model_dir import load_model_dir
    torch.set_num_threads(opts.threads)
    loaded = load_model_dir(opts.model, opts.device)
    model, cfg = loaded.model, loaded.config
    if model.style_encoder is None:
        raise UserError(f"{opts.model}: eval needs a model with a style encoder")
    stats = {k: v.cpu().numpy() for k, v in loaded.stats.items()}
    if opts.bootstrap < 0:
        raise UserError(f"--bootstrap {opts.bootstrap}: must be 0 (none) or a number of resamples")
    clips = eval_clips(opts.data, opts.split, opts.max_clips)
    max_frames = int(opts.max_seconds * cfg.fps) if opts.max_seconds else None
    sampler = eval_sampler(opts.sampler, opts.steps, model)
    counter = _PassCounter(model)
    guidance = Guidance(scales={"audio": opts.cfg_audio, "style": opts.cfg_style})
    refs = reference_styles(model, clips, stats, cfg.head_pose)
    generate = _motion_generator(loaded, sampler, guidance, opts, counter)
    lip_vertex = _lip_vertex_fn(opts.flame, stats) if opts.flame else None
    scores = ClipScores()
    t0 = time.time()
    for c in clips:
        if c.entry in refs.clip_styles:
            score_clip(c, min(c.n_frames, max_frames or c.n_frames), loaded, refs, generate, opts.seeds,
                       lip_vertex, scores)
    if not scores.per_clip:
        raise UserError(f"split {opts.split}: no clip has the 100 frames the style encoder needs")
    metrics = summary_metrics(scores, refs, counter.rows, opts.seeds)
    if lip_vertex is not None:
        metrics["lip_vertex_error"] = scores.mean("lip_vertex_error")
    metrics["viewer"] = _viewer_metrics(opts, scores)
    if opts.swap_styles:
        metrics["style_swap"] = style_swap(model, clips, refs.clip_styles, refs.galleries, max_frames, generate)
    if opts.presets and loaded.styles:
        used = [c for c in clips if c.entry in {r["entry"] for r in scores.per_clip}][:opts.presets]
        metrics["presets"] = preset_contrast(loaded, used, max_frames, generate)
    if opts.bootstrap:
        from training.eval_intervals import bootstrap_metrics

        metrics["bootstrap"] = bootstrap_metrics(scores.per_clip, opts.bootstrap)
    return {"model": str(opts.model), "data": str(opts.data), "split": opts.split, "clips": len(scores.per_clip),
            "speakers": len({r["person"] for r in scores.per_clip}), "sampler": opts.sampler,
            "steps": len(sampler.timesteps(model)), "seeds": opts.seeds,
            "kind": cfg.kind, "mode": "stream" if opts.stream else "offline",
            "window": ({"hop_ms": opts.hop_ms, "lookahead_ms": opts.lookahead_ms, "context_ms": opts.context_ms,
                        "regen_ms": default_regen_ms(opts.hop_ms, opts.regen_ms),
                        # what made the audio features: the model's streaming encoder when it has one
                        "audio_encoder": "window" if cfg.stream_encoder is None else "stream"}
                       if opts.stream else None),
            "guidance": guidance.scales, "max_seconds": opts.max_seconds, "seconds": round(time.time() - t0, 1),
            "metrics": metrics, "definitions": DEFINITIONS, "per_clip": scores.per_clip}


def _viewer_metrics(opts: EvalOptions, scores: ClipScores) -> dict:
    """Head spread, viseme score and rest closure (training/viewer_metrics.py); the viseme classifier
    is fit on up to VISEME_TRAIN_CLIPS ground-truth clips of the training split."""
    from training.train_data import load_split
    from training.viewer_metrics import has_phonemes, viewer_metrics

    train = load_split(opts.data, "train", VISEME_TRAIN_CLIPS) if has_phonemes(opts.data) else []
    return viewer_metrics(opts.data, train, scores.viewer)


def _motion_generator(loaded, sampler, guidance, opts: EvalOptions, counter):
    """generate(clip, n, style, seeds) -> (seeds, n, D) normalised motion for the clip's first n
    frames under ``style``: offline (the seeds batched) or one streaming session per seed."""
    import torch

    from diffposetalk.generate import generate_motion
    from diffposetalk.sampler import RandomNoise
    from diffposetalk.units import FRAME_SAMPLES

    stats = {k: v.cpu().numpy() for k, v in loaded.stats.items()}

    def generate(c, n: int, style, seeds: int):
        if opts.stream:
            return _stream_motion(loaded, sampler, guidance, opts, c.audio[:n * FRAME_SAMPLES], style, c.shape,
                                  counter, seeds)
        shape = torch.from_numpy((c.shape - stats["shape_mean"]) / stats["shape_std"]).float()
        with counter:
            return generate_motion(loaded.model, c.audio[:n * FRAME_SAMPLES], shape, style, sampler, guidance,
                                   RandomNoise(seed=0, device=opts.device), repeats=seeds)
    return generate


def score_clip(c, n: int, loaded, refs: ReferenceStyles, generate, seeds: int, lip_vertex,
               scores: ClipScores) -> None:
    """Generate clip ``c``'s first ``n`` frames under its speaker's reference style, ``seeds``
    samples, and add its per-sample metrics and retrieval queries to ``scores``."""
    import torch

    from diffposetalk.generate import motion_to_arrays
    from diffposetalk.units import FRAME_SAMPLES, SAMPLE_RATE

    model, cfg = loaded.model, loaded.config
    stats = {k: v.cpu().numpy() for k, v in loaded.stats.items()}
    gt = {"exp": c.exp[:n], "pose": c.pose[:n]}
    style = torch.from_numpy(refs.galleries[c.entry][c.person]).float()
    scores.gt_queries.append((c.person, refs.clip_styles[c.entry][1]))
    t_gen = time.perf_counter()
    motion = generate(c, n, style, seeds)
    scores.gen_wall += time.perf_counter() - t_gen
    scores.gen_audio_s += n * FRAME_SAMPLES / SAMPLE_RATE
    arrays = motion_to_arrays(motion, loaded.stats, cfg.head_pose, torch.from_numpy(c.shape))
    motion_np = motion.cpu().numpy()
    m = min(n, motion_np.shape[1])
    g = {k: v[:m] for k, v in gt.items()}
    rec = {"entry": c.entry, "person": c.person, "frames": m, "lip_error": [], "mouth_corr": [],
           "head_pose_error_deg": [], "pred_stats": [], "gt_stats": motion_stats(g, refs.gt_motion[c.entry][:m])}
    for r in range(seeds):
        pred = {"exp": arrays["exp"][r, :m], "pose": arrays["pose"][r, :m]}
        rec["lip_error"].append(lip_error(pred, g, stats))
        rec["mouth_corr"].append(pearson(pred["pose"][:, JAW], g["pose"][:, JAW]))
        rec["head_pose_error_deg"].append(head_pose_error_deg(pred, g))
        rec["pred_stats"].append(motion_stats(pred, motion_np[r, :m]))
        if lip_vertex is not None:
            rec.setdefault("lip_vertex_error", []).append(lip_vertex(pred, g, c.shape))
        scores.pooled_pred.setdefault(r, []).append(pred["pose"][:, JAW])
        s = motion_style(model, motion_np[r, :m])
        if s is not None:
            scores.gen_queries.append((c.person, s))
            scores.gen_moments.append((c.person, motion_moments(motion_np[r, :m])))
    scores.pooled_gt.append(gt["pose"][:m, JAW])
    scores.viewer.append((c.entry, g, [{"exp": arrays["exp"][r, :m], "pose": arrays["pose"][r, :m]} for r in range(seeds)]))
    rec["diversity"] = diversity(motion_np[:, :m]) if seeds > 1 else None
    scores.per_clip.append(rec)
    print(f"  {c.entry}: lip {np.mean(rec['lip_error']):.3f}  corr {np.mean(rec['mouth_corr']):.3f}", flush=True)


def summary_metrics(scores: ClipScores, refs: ReferenceStyles, network_rows: int, seeds: int) -> dict:
    """The metrics of DEFINITIONS over the scored clips (lip_vertex_error, style_swap and presets
    are added by the caller when asked for)."""
    per_clip = scores.per_clip
    gt_cat = np.concatenate(scores.pooled_gt)
    # kept per clip too: the speaker bootstrap (training/eval_intervals.py) resamples them
    for rec, hits in zip(per_clip, _loo_hits(scores.gen_queries, per_clip, refs.galleries, seeds)):
        rec["style_hits_generated"] = hits
    return {
        "lip_error": scores.mean("lip_error"),
        "mouth_corr_mean": scores.mean("mouth_corr"),
        "mouth_corr_pooled": float(np.mean([pearson(np.concatenate(v), gt_cat) for v in scores.pooled_pred.values()])),
        "head_pose_error_deg": scores.mean("head_pose_error_deg"),
        "motion_stats": {w: {k: scores.stat_mean(k, f"{w}_stats") for k in ("jaw_std", "head_std_deg", "speed")}
                         for w in ("pred", "gt")},
        # leave-one-clip-out galleries: each query is matched against its own clip's gallery
        "style_retrieval_gt": _loo_retrieval(scores.gt_queries, per_clip, refs.galleries, 1),
        "style_retrieval_generated": _loo_retrieval(scores.gen_queries, per_clip, refs.galleries, seeds),
        "style_retrieval_moments_gt": _loo_retrieval([(p, v) for p, v in refs.clip_moments.values()], per_clip,
                                                     refs.moment_galleries, 1, "euclidean"),
        "style_retrieval_moments_generated": _loo_retrieval(scores.gen_moments, per_clip, refs.moment_galleries,
                                                            seeds, "euclidean"),
        "diversity": (float(np.mean([r["diversity"] for r in per_clip])) if seeds > 1 else None),
        "network_passes_per_audio_second": network_rows / seeds / scores.gen_audio_s,
        "wall_seconds_per_audio_second": scores.gen_wall / seeds / scores.gen_audio_s,
    }


def preset_contrast(loaded, clips, max_frames: int | None, generate) -> dict:
    """Every style preset on the same clips (see DEFINITIONS["presets"])."""
    import torch

    from diffposetalk.generate import motion_to_arrays

    out = {}
    for name, vec in sorted(loaded.styles.items()):
        rows = []
        for c in clips:
            n = min(c.n_frames, max_frames or c.n_frames)
            motion = generate(c, n, torch.from_numpy(vec).float(), 1)
            pose = motion_to_arrays(motion, loaded.stats, loaded.config.head_pose, torch.from_numpy(c.shape))["pose"][0]
            rows.append((pose[:, JAW].std(), pose[:, JAW].mean(), np.degrees(pose[:, :3].std(axis=0)).mean()))
        jaw_std, jaw_mean, head_std = (float(np.mean(col)) for col in zip(*rows))
        out[name] = {"jaw_std": jaw_std, "jaw_mean": jaw_mean, "head_std_deg": head_std}
    stds = [v["jaw_std"] for v in out.values()]
    result = {"clips": len(clips), "per_preset": out, "jaw_std_ratio_max_min": max(stds) / max(min(stds), 1e-9)}
    if "big_mouth" in out and "small_mouth" in out:
        result["big_small_jaw_ratio"] = out["big_mouth"]["jaw_std"] / max(out["small_mouth"]["jaw_std"], 1e-9)
    return result


def style_swap(model, clips, clip_styles, galleries, max_frames: int | None, generate) -> dict:
    """See DEFINITIONS["style_swap"]."""
    import torch

    people = sorted({p for p, _ in clip_styles.values()})
    swappable = [c for c in clips if c.entry in clip_styles] if len(people) > 1 else []
    as_style = as_voice = n = 0
    for c in swappable:
        other = people[(people.index(c.person) + len(people) // 2) % len(people)]
        gallery = galleries[c.entry]
        frames = min(c.n_frames, max_frames or c.n_frames)
        motion = generate(c, frames, torch.from_numpy(gallery[other]).float(), 1)[0].cpu().numpy()
        s = motion_style(model, motion)
        if s is None:
            continue
        as_style += retrieval_top1([(other, s)], gallery) == 1.0
        as_voice += retrieval_top1([(c.person, s)], gallery) == 1.0
        n += 1
    return {"clips": n, "retrieved_as_style_speaker": as_style / n if n else float("nan"),
            "retrieved_as_voice_speaker": as_voice / n if n else float("nan")}


class _PassCounter:
    """Counts denoiser rows (one sample's network pass each) while active (``with counter:``), so
    warm-up passes outside generation are not counted."""

    def __init__(self, model):
        self.rows, self.active = 0, False
        model.denoising_net.register_forward_pre_hook(self._hook)

    def _hook(self, module, inputs):
        if self.active:
            self.rows += int(inputs[0].shape[0])

    def __enter__(self):
        self.active = True

    def __exit__(self, *exc):
        self.active = False


def _stream_motion(loaded, sampler, guidance, opts: EvalOptions, audio, style, shape_raw, counter, seeds: int):
    """(seeds, T, D) normalised motion from one streaming session per seed over the whole clip."""
    import torch

    from streaming.factory import open_session
    from streaming.runner import stream_array
    from streaming.session import StreamConfig

    out = []
    for r in range(seeds):
        config = StreamConfig(opts.hop_ms, opts.lookahead_ms, opts.context_ms,
                              default_regen_ms(opts.hop_ms, opts.regen_ms), seed=r)
        session = open_session(loaded, sampler, guidance, config, style, shape_raw)
        with counter:
            frames = stream_array(session, audio)
        out.append(np.stack([f.motion for f in frames]))
    return torch.from_numpy(np.stack(out))


def _loo_hits(queries, per_clip, galleries, per_query_clip: int, metric: str = "cosine") -> list[list[bool]]:
    """Per clip, whether each of its queries was retrieved as its speaker. Queries are in per_clip
    order, ``per_query_clip`` each (generated ones may skip a clip whose generated motion is too
    short, which cannot happen here: clips are >= 100 frames)."""
    out, i = [], 0
    for rec in per_clip:
        hits = []
        for _ in range(per_query_clip):
            if i >= len(queries):
                break
            who, q = queries[i]
            hits.append(retrieval_top1([(who, q)], galleries[rec["entry"]], metric) == 1.0)
            i += 1
        out.append(hits)
    return out


def _loo_retrieval(queries, per_clip, galleries, per_query_clip: int, metric: str = "cosine") -> float:
    flat = [h for hits in _loo_hits(queries, per_clip, galleries, per_query_clip, metric) for h in hits]
    return sum(flat) / len(flat) if flat else float("nan")


def _lip_vertex_fn(flame_path: Path, stats: dict):
    """See DEFINITIONS['lip_vertex_error']."""
    import torch

    from diffposetalk.flame import Flame, load_flame

    flame = Flame(load_flame(flame_path)).eval()
    with torch.no_grad():
        zero_shape, zero_exp = torch.zeros(1, 100), torch.zeros(1, 50)
        closed = flame(zero_shape, zero_exp, torch.zeros(1, 6))[0]
        opened = flame(zero_shape, zero_exp, torch.tensor([[0, 0, 0, 0.2, 0, 0]]))[0]
        move = (opened - closed).norm(dim=1)
        lips = torch.argsort(move, descending=True)[: max(1, int(0.05 * len(move)))]

    def fn(pred: dict, gt: dict, shape: np.ndarray) -> float:
        with torch.no_grad():
            verts = []
            for c in (pred, gt):
                pose = torch.from_numpy(c["pose"]).float().clone()
                pose[:, :3] = 0
                shp = torch.from_numpy(shape).float()[None].expand(len(pose), -1)
                verts.append(flame(shp, torch.from_numpy(c["exp"]).float(), pose)[:, lips])
            err = (verts[0] - verts[1]).norm(dim=-1).max(dim=1).values * 1000.0  # m -> mm
        return float(err.mean())
    return fn


def format_table(result: dict) -> str:
    m = result["metrics"]
    rows = [("lip error (normalised RMS)", m["lip_error"]),
            ("mouth-opening corr (mean / pooled)", f"{m['mouth_corr_mean']:.3f} / {m['mouth_corr_pooled']:.3f}"),
            ("head-pose error (deg RMS)", m["head_pose_error_deg"]),
            ("jaw std pred / gt (rad)", f"{m['motion_stats']['pred']['jaw_std']:.4f} / {m['motion_stats']['gt']['jaw_std']:.4f}"),
            ("head std pred / gt (deg)", f"{m['motion_stats']['pred']['head_std_deg']:.2f} / {m['motion_stats']['gt']['head_std_deg']:.2f}"),
            ("speed pred / gt", f"{m['motion_stats']['pred']['speed']:.3f} / {m['motion_stats']['gt']['speed']:.3f}"),
            ("style retrieval GT / generated", f"{m['style_retrieval_gt']:.3f} / {m['style_retrieval_generated']:.3f}"),
            ("moments retrieval GT / generated",
             f"{m['style_retrieval_moments_gt']:.3f} / {m['style_retrieval_moments_generated']:.3f}"),
            ("diversity across seeds", m["diversity"]),
            *([("swapped style: retrieved as style / voice speaker",
                f"{m['style_swap']['retrieved_as_style_speaker']:.3f} / {m['style_swap']['retrieved_as_voice_speaker']:.3f}")]
              if "style_swap" in m else []),
            ("network passes / audio second", m["network_passes_per_audio_second"]),
            ("wall seconds / audio second", m["wall_seconds_per_audio_second"])]
    if "lip_vertex_error" in m:
        rows.insert(1, ("lip vertex error (mm)", m["lip_vertex_error"]))
    v = m.get("viewer", {})
    if "head_spread" in v:
        hs = v["head_spread"]
        rows.append(("head spread per axis pred / gt (deg)",
                     " ".join(f"{a:.2f}/{b:.2f}" for a, b in zip(hs["generated_deg"], hs["gt_deg"]))
                     + f"  (most active axis {hs['most_active_axis']}: ratio {hs['ratio']:.2f})"))
    if "viseme_score" in v:
        rows.append(("viseme score pred / gt (chance)",
                     f"{v['viseme_score']['generated']:.3f} / {v['viseme_score']['gt']:.3f} ({v['viseme_score']['chance']:.2f})"))
        rc = v["rest_closure"]
        rows.append(("rests shut in pauses pred / gt", f"{rc['generated']['rests_shut']:.2f} / {rc['gt']['rests_shut']:.2f}"))
    if "presets" in m:
        pr = m["presets"]
        rows += [(f"preset {k} jaw std / head std", f"{v['jaw_std']:.4f} rad / {v['head_std_deg']:.2f} deg")
                 for k, v in pr["per_preset"].items()]
        rows.append(("preset jaw std max / min", pr["jaw_std_ratio_max_min"]))
        if "big_small_jaw_ratio" in pr:
            rows.append(("preset jaw std big_mouth / small_mouth", pr["big_small_jaw_ratio"]))
    if "bootstrap" in m:
        from training.eval_intervals import format_bootstrap

        tail = "\n" + format_bootstrap(m["bootstrap"])
    else:
        tail = ""
    head = f"{result['split']}: {result['clips']} clips, {result['speakers']} speakers, {result['sampler']} " \
           f"{result['steps']} steps, {result['seeds']} seeds, {result.get('mode', 'offline')}"
    lines = [head] + [f"  {k:<36} {v:.4f}" if isinstance(v, float) else f"  {k:<36} {v}" for k, v in rows]
    return "\n".join(lines) + tail
