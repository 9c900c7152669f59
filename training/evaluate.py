"""`dpt-live eval`: generate motion for the clips of a split and compare it with ground truth.

Every metric's definition is written next to its value in the JSON (DEFINITIONS) and in
docs/TRAINING.md. Generation conditions each clip on its speaker's style taken from *other* GT
material of that speaker (see speaker_styles), so style retrieval is not a copy of the input."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from diffposetalk.metrics import JAW, LIP_DIMS_EXP, lip_error, pearson  # noqa: F401  (re-exported)

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
    "wall_seconds_per_audio_second": "wall-clock seconds of generation (audio encoder included) per "
                                     "second of audio per sample; offline mode batches the seeds, "
                                     "stream mode runs one session per seed",
}



def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="metrics of a model on a split of an lmdb dataset (writes JSON)")
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--data", required=True, type=Path, help="HDTF_TFHP-layout lmdb (or a SynthTalk folder)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--json", type=Path, help="write the metrics here")
    p.add_argument("--sampler", choices=["ddpm", "ddim"], default="ddim")
    p.add_argument("--steps", type=int, help="ddim steps (default 25, or a distilled student's own)")
    p.add_argument("--seeds", type=int, default=2, help="samples per clip (diversity needs >= 2)")
    p.add_argument("--max-clips", type=int, help="first M clips of the split")
    p.add_argument("--max-seconds", type=float, default=20.0, help="evaluate at most this much of each clip")
    p.add_argument("--cfg-audio", type=float, default=1.15)
    p.add_argument("--cfg-style", type=float, default=3.0)
    p.add_argument("--flame", type=Path, help="FLAME model: adds the lip-vertex error")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    # --stream: the same metrics on the live pipeline (StreamSession over each clip's audio)
    p.add_argument("--stream", action="store_true", help="generate through the streaming session")
    p.add_argument("--presets", type=int, default=0, metavar="N",
                   help="also drive the first N clips with every style preset (same audio) and compare them")
    p.add_argument("--swap-styles", action="store_true",
                   help="also drive every clip with another test speaker's style and check which speaker "
                        "the motion is retrieved as (the style's, not the voice's)")
    p.add_argument("--hop-ms", type=int, default=80)
    p.add_argument("--lookahead-ms", type=int, default=80)
    p.add_argument("--context-ms", type=int, default=1600)
    p.set_defaults(func=cmd_eval)


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


# --- the command -----------------------------------------------------------------------------------

def eval_sampler(name: str, steps: int | None, model):
    """The sampler `eval` and `voice-check` run offline: ddim 25 steps unless asked (a distilled
    student gets its own count from make_sampler); ddpm all the model's steps."""
    from diffposetalk.sampler import make_sampler

    if name == "ddim" and steps is None and model.cfg.kind != "student":
        steps = 25
    return make_sampler(name, steps if name == "ddim" else None, model)


def evaluate(args) -> dict:
    import torch

    from diffposetalk.errors import UserError
    from diffposetalk.generate import generate_motion, motion_to_arrays
    from diffposetalk.model import Guidance, coef_to_motion
    from diffposetalk.model_dir import load_model_dir
    from diffposetalk.sampler import RandomNoise
    from diffposetalk.units import FRAME_SAMPLES, SAMPLE_RATE
    from training.train_data import load_split

    torch.set_num_threads(args.threads)
    loaded = load_model_dir(args.model, args.device)
    model, cfg = loaded.model, loaded.config
    if model.style_encoder is None:
        raise UserError(f"{args.model}: eval needs a model with a style encoder")
    stats_t = loaded.stats
    stats = {k: v.cpu().numpy() for k, v in stats_t.items()}
    clips = load_split(args.data, args.split, args.max_clips)
    max_frames = int(args.max_seconds * cfg.fps) if args.max_seconds else None
    sampler = eval_sampler(args.sampler, args.steps, model)
    stream = getattr(args, "stream", False)
    counter = _PassCounter(model)
    guidance = Guidance(scales={"audio": args.cfg_audio, "style": args.cfg_style})

    gt_motion = {c.entry: coef_to_motion(c.exp, c.pose, stats, cfg.head_pose).astype(np.float32) for c in clips}
    clip_styles = gt_clip_styles(model, clips, gt_motion)
    galleries = speaker_styles(clip_styles)
    clip_moments = {e: (p, motion_moments(gt_motion[e])) for e, (p, _) in clip_styles.items()}
    moment_galleries = speaker_styles(clip_moments)

    def generate(c, n: int, style, seeds: int):
        """(seeds, n, D) normalised motion for clip c's first n frames under ``style``."""
        if stream:
            return _stream_motion(loaded, sampler, guidance, args, c.audio[:n * FRAME_SAMPLES], style, c.shape,
                                  counter, seeds)
        shape = torch.from_numpy((c.shape - stats["shape_mean"]) / stats["shape_std"]).float()
        with counter:
            return generate_motion(model, c.audio[:n * FRAME_SAMPLES], shape, style, sampler, guidance,
                                   RandomNoise(seed=0, device=args.device), repeats=seeds)

    lip_vertex = _lip_vertex_fn(args.flame, stats) if args.flame else None
    per_clip, gt_queries, gen_queries, gen_moments = [], [], [], []
    pooled_pred, pooled_gt = {}, []
    gen_wall = gen_audio_s = 0.0
    t0 = time.time()
    for c in clips:
        if c.entry not in clip_styles:
            continue
        n = min(c.n_frames, max_frames or c.n_frames)
        gt = {"exp": c.exp[:n], "pose": c.pose[:n]}
        gallery = galleries[c.entry]
        style = torch.from_numpy(gallery[c.person]).float()
        gt_queries.append((c.person, clip_styles[c.entry][1]))
        t_gen = time.perf_counter()
        motion = generate(c, n, style, args.seeds)
        gen_wall += time.perf_counter() - t_gen
        gen_audio_s += n * FRAME_SAMPLES / SAMPLE_RATE
        arrays = motion_to_arrays(motion, stats_t, cfg.head_pose, torch.from_numpy(c.shape))
        motion_np = motion.cpu().numpy()
        m = min(n, motion_np.shape[1])
        rec = {"entry": c.entry, "person": c.person, "frames": m, "lip_error": [], "mouth_corr": [],
               "head_pose_error_deg": [], "pred_stats": [],
               "gt_stats": motion_stats({k: v[:m] for k, v in gt.items()}, gt_motion[c.entry][:m])}
        for r in range(args.seeds):
            pred = {"exp": arrays["exp"][r, :m], "pose": arrays["pose"][r, :m]}
            g = {k: v[:m] for k, v in gt.items()}
            rec["lip_error"].append(lip_error(pred, g, stats))
            rec["mouth_corr"].append(pearson(pred["pose"][:, JAW], g["pose"][:, JAW]))
            rec["head_pose_error_deg"].append(head_pose_error_deg(pred, g))
            rec["pred_stats"].append(motion_stats(pred, motion_np[r, :m]))
            if lip_vertex is not None:
                rec.setdefault("lip_vertex_error", []).append(lip_vertex(pred, g, c.shape))
            pooled_pred.setdefault(r, []).append(pred["pose"][:, JAW])
            s = motion_style(model, motion_np[r, :m])
            if s is not None:
                gen_queries.append((c.person, s))
                gen_moments.append((c.person, motion_moments(motion_np[r, :m])))
        pooled_gt.append(gt["pose"][:m, JAW])
        rec["diversity"] = diversity(motion_np[:, :m]) if args.seeds > 1 else None
        per_clip.append(rec)
        print(f"  {c.entry}: lip {np.mean(rec['lip_error']):.3f}  corr {np.mean(rec['mouth_corr']):.3f}",
              flush=True)
    if not per_clip:
        raise UserError(f"split {args.split}: no clip has the 100 frames the style encoder needs")

    def mean(key):
        return float(np.mean([np.mean(r[key]) for r in per_clip]))

    def stat_mean(key, which):  # pred_stats: a list per clip (seeds); gt_stats: one per clip
        flat = [v for r in per_clip for v in (r[which] if isinstance(r[which], list) else [r[which]])]
        return float(np.mean([f[key] for f in flat]))

    gt_cat = np.concatenate(pooled_gt)
    metrics = {
        "lip_error": mean("lip_error"),
        "mouth_corr_mean": mean("mouth_corr"),
        "mouth_corr_pooled": float(np.mean([pearson(np.concatenate(v), gt_cat) for v in pooled_pred.values()])),
        "head_pose_error_deg": mean("head_pose_error_deg"),
        "motion_stats": {w: {k: stat_mean(k, f"{w}_stats") for k in ("jaw_std", "head_std_deg", "speed")}
                         for w in ("pred", "gt")},
        # leave-one-clip-out galleries: each query is matched against its own clip's gallery
        "style_retrieval_gt": _loo_retrieval(gt_queries, per_clip, galleries, 1),
        "style_retrieval_generated": _loo_retrieval(gen_queries, per_clip, galleries, args.seeds),
        "style_retrieval_moments_gt": _loo_retrieval([(p, v) for p, v in clip_moments.values()], per_clip,
                                                     moment_galleries, 1, "euclidean"),
        "style_retrieval_moments_generated": _loo_retrieval(gen_moments, per_clip, moment_galleries,
                                                            args.seeds, "euclidean"),
        "diversity": (float(np.mean([r["diversity"] for r in per_clip])) if args.seeds > 1 else None),
        "network_passes_per_audio_second": counter.rows / args.seeds / gen_audio_s,
        "wall_seconds_per_audio_second": gen_wall / args.seeds / gen_audio_s,
    }
    if lip_vertex is not None:
        metrics["lip_vertex_error"] = mean("lip_vertex_error")
    if getattr(args, "swap_styles", False):
        metrics["style_swap"] = style_swap(model, clips, clip_styles, galleries, max_frames, generate)
    if getattr(args, "presets", 0) and loaded.styles:
        used = [c for c in clips if c.entry in {r["entry"] for r in per_clip}][:args.presets]
        metrics["presets"] = preset_contrast(loaded, used, max_frames, generate)
    return {"model": str(args.model), "data": str(args.data), "split": args.split, "clips": len(per_clip),
            "speakers": len({r["person"] for r in per_clip}), "sampler": args.sampler,
            "steps": len(sampler.timesteps(model)), "seeds": args.seeds,
            "kind": cfg.kind, "mode": "stream" if stream else "offline",
            "window": ({"hop_ms": args.hop_ms, "lookahead_ms": args.lookahead_ms, "context_ms": args.context_ms}
                       if stream else None),
            "guidance": guidance.scales, "max_seconds": args.max_seconds, "seconds": round(time.time() - t0, 1),
            "metrics": metrics, "definitions": DEFINITIONS, "per_clip": per_clip}


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


def _stream_motion(loaded, sampler, guidance, args, audio, style, shape_raw, counter, seeds: int):
    """(seeds, T, D) normalised motion from one streaming session per seed over the whole clip."""
    import torch

    from streaming.factory import open_session
    from streaming.runner import stream_array
    from streaming.session import StreamConfig

    out = []
    for r in range(seeds):
        config = StreamConfig(args.hop_ms, args.lookahead_ms, args.context_ms, seed=r)
        session = open_session(loaded, sampler, guidance, config, style, shape_raw)
        with counter:
            frames = stream_array(session, audio)
        out.append(np.stack([f.motion for f in frames]))
    return torch.from_numpy(np.stack(out))


def _loo_retrieval(queries, per_clip, galleries, per_query_clip: int, metric: str = "cosine") -> float:
    """queries are in per_clip order, ``per_query_clip`` each (generated ones may skip a clip
    whose generated motion is too short, which cannot happen here: clips are >= 100 frames)."""
    if not queries:
        return float("nan")
    hits, i = 0, 0
    for rec in per_clip:
        for _ in range(per_query_clip):
            if i >= len(queries):
                break
            who, q = queries[i]
            hits += retrieval_top1([(who, q)], galleries[rec["entry"]], metric) == 1.0
            i += 1
    return hits / i


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
    if "presets" in m:
        pr = m["presets"]
        rows += [(f"preset {k} jaw std / head std", f"{v['jaw_std']:.4f} rad / {v['head_std_deg']:.2f} deg")
                 for k, v in pr["per_preset"].items()]
        rows.append(("preset jaw std max / min", pr["jaw_std_ratio_max_min"]))
        if "big_small_jaw_ratio" in pr:
            rows.append(("preset jaw std big_mouth / small_mouth", pr["big_small_jaw_ratio"]))
    head = f"{result['split']}: {result['clips']} clips, {result['speakers']} speakers, {result['sampler']} " \
           f"{result['steps']} steps, {result['seeds']} seeds, {result.get('mode', 'offline')}"
    lines = [head] + [f"  {k:<36} {v:.4f}" if isinstance(v, float) else f"  {k:<36} {v}" for k, v in rows]
    return "\n".join(lines)


def cmd_eval(args) -> int:
    result = evaluate(args)
    print(format_table(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1, default=float) + "\n")
        print(f"metrics written to {args.json}")
    return 0
