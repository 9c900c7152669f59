"""Fit a model's avatar mapping on SynthTalk ground truth (`dpt-live fit-avatar-map`).

The world knows what every frame shows: its viseme (the phoneme timings, advanced by the
speaker's anticipation, training/synth/motion.py) and its articulation features (GT exp[0:5]
through the inverse of visemes.EXP_MAP, GT jaw pose[3]). The model is streamed over held-out
clips as `serve` streams it, and three small maps are fitted from its output to that truth:

1. ``features``: ridge regression, model output (exp[0:K], jaw) -> (jaw, open, closure, round,
   spread, smile) in SynthTalk units;
2. ``scale``: each feature's resting value (median over silent frames) and its full value
   (90th percentile over the frames where it is used), so a control reads 0 at rest, 1 when full;
3. ``vowels``: class-balanced softmax regression, rest-relative model inputs -> the VRM vowel
   (A I U E O) of the frame's GT vowel viseme, its biases then set so each vowel is the strongest
   as often as in the world.

The result is the JSON that clients/vmc_map.py and clients/web/avatar_map.js evaluate (the key
``fit`` of a mapping); the model directory ships it as ``avatar_map.json``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from diffposetalk.errors import UserError
from diffposetalk.units import FPS
from training.synth.visemes import EXP_MAP, visemes_of

MAP_FILE = "avatar_map.json"
N_EXP_IN = 10  # exp[0:10] + jaw: the mouth lives in the first coefficients; more only fits noise
FEATURES = ("jaw", "open", "closure", "round", "spread", "smile")
VRM_VOWELS = ("A", "I", "U", "E", "O")
VOWEL_OF_VISEME = {"AA": "A", "AH": "A", "IY": "I", "UW": "U", "EH": "E", "OH": "O"}
LABEL_RATE = 200  # Hz of the label track (as the articulation track)
# Smallest full-minus-rest per feature (jaw radians, else SynthTalk feature units), so a model
# that barely moves a feature does not turn its noise into full-scale controls.
MIN_SPAN = {"jaw": 0.05, "open": 0.2, "closure": 0.2, "round": 0.2, "spread": 0.2, "smile": 1.0}


def frame_visemes(timings: dict, n_frames: int) -> list[str]:
    """The GT viseme of each frame: the one the mouth is heading for at i/25 s + anticipation."""
    n = int(np.ceil(n_frames / FPS * LABEL_RATE)) + LABEL_RATE
    track = np.array(["sil"] * n, dtype=object)
    for phoneme, start, end in timings["phonemes"]:
        t = start
        for viseme, share in visemes_of(phoneme):
            t_end = t + share * (end - start)
            a, b = int(round(t * LABEL_RATE)), int(round(t_end * LABEL_RATE))
            track[a:max(b, a + 1)] = viseme
            t = t_end
    lead = timings.get("anticipation", 0.0)
    idx = np.clip(np.round((np.arange(n_frames) / FPS + lead) * LABEL_RATE).astype(int), 0, n - 1)
    return [str(v) for v in track[idx]]


def gt_features(exp: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """(T, 6) SynthTalk articulation of GT motion: jaw radians + the five exp features."""
    feats = np.linalg.solve(EXP_MAP, exp[:, :5].T.astype(np.float64)).T
    return np.column_stack([pose[:, 3], feats])


def model_inputs(exp: np.ndarray, pose: np.ndarray) -> np.ndarray:
    return np.column_stack([exp[:, :N_EXP_IN], pose[:, 3]]).astype(np.float64)


def ridge(x: np.ndarray, y: np.ndarray, lam: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """y ~ x @ W.T + b with an L2 penalty relative to the inputs' scale; returns (W, b)."""
    mx, my = x.mean(0), y.mean(0)
    xc = x - mx
    gram = xc.T @ xc
    w = np.linalg.solve(gram + lam * np.trace(gram) / len(gram) * np.eye(len(gram)), xc.T @ (y - my))
    return w.T, my - mx @ w


def softmax_fit(x: np.ndarray, labels: np.ndarray, n_classes: int, steps: int = 800, lr: float = 0.5,
                l2: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """Class-balanced multinomial logistic regression by gradient descent; (W (C, D), b (C,))."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    weight = (1.0 / np.maximum(counts, 1.0))[labels]
    weight /= weight.sum()
    onehot = np.eye(n_classes)[labels]
    w, b = np.zeros((n_classes, x.shape[1])), np.zeros(n_classes)
    for _ in range(steps):
        z = x @ w.T + b
        z -= z.max(1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(1, keepdims=True)
        g = (p - onehot) * weight[:, None]
        w -= lr * (g.T @ x + l2 * w)
        b -= lr * g.sum(0)
    return w, b


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(1, keepdims=True)


def stream_clips(model_dir: Path, clips, styles: list[str | None], log=print,
                 device: str = "cpu") -> list[tuple[np.ndarray, np.ndarray]]:
    """(exp, pose) of the model streamed over each clip as `serve` runs it (its default
    sampler and guidance, one thread), clip i under styles[i % len(styles)]."""
    import torch

    from diffposetalk.model import Guidance
    from diffposetalk.model_dir import load_model_dir
    from streaming.factory import open_session
    from streaming.runner import stream_array
    from streaming.session import StreamConfig
    from streaming.setup import pick_sampler
    from streaming.style import resolve_style

    torch.set_num_threads(1)
    loaded = load_model_dir(model_dir, device)
    sampler = pick_sampler("ddim", None, loaded)
    guidance = Guidance(scales={"audio": 1.15, "style": 3.0})
    out = []
    t0 = time.time()
    for i, c in enumerate(clips):
        name = styles[i % len(styles)]
        style = resolve_style(loaded, name) if name and loaded.config.use_style else None
        session = open_session(loaded, sampler, guidance, StreamConfig(seed=i), style, c.shape)
        frames = stream_array(session, c.audio)
        out.append((np.stack([f.exp for f in frames]), np.stack([f.pose for f in frames])))
        if (i + 1) % 10 == 0:
            log(f"  streamed {i + 1}/{len(clips)} clips ({time.time() - t0:.0f} s)")
    return out


def fit_avatar_map(model_dir: str | Path, data: str | Path, fit_split: str = "val", test_split: str = "test",
                   max_clips: int | None = None, log=print, cache: str | Path | None = None) -> dict:
    """The fitted mapping of ``model_dir`` (a dict, the ``fit`` part of avatar_map.json)."""
    from diffposetalk.model_dir import load_model_dir
    from training.train_data import load_split, resolve_lmdb_dir

    model_dir, data = Path(model_dir), Path(data)
    phon_dir = resolve_lmdb_dir(data).parent / "phonemes"
    if not phon_dir.is_dir():
        raise UserError(f"{data}: no phonemes/ folder next to the lmdb (a SynthTalk world from `dpt-live synth`)")
    loaded = load_model_dir(model_dir, "cpu")
    styles: list[str | None] = [None] + sorted(loaded.styles) if loaded.config.use_style else [None]

    def collect(split: str):
        saved = None if cache is None else Path(cache) / f"{model_dir.name}-{split}-{max_clips or 'all'}.npz"
        if saved is not None and saved.is_file():  # the streamed motion of an earlier run: refit in seconds
            z = np.load(saved)
            return z["x"], z["g"], z["lab"].astype(str), z["heads"]
        out = _collect(split)
        if saved is not None:
            saved.parent.mkdir(parents=True, exist_ok=True)
            np.savez(saved, x=out[0], g=out[1], lab=out[2], heads=out[3])
        return out

    def _collect(split: str):
        clips = load_split(data, split, max_clips)
        log(f"{split}: streaming {len(clips)} clips through {model_dir} (styles: {styles})")
        motion = stream_clips(model_dir, clips, styles, log)
        xs, gs, labels, heads = [], [], [], []
        for c, (exp, pose) in zip(clips, motion):
            n = min(len(exp), c.n_frames)
            timings = json.loads((phon_dir / f"{c.person}_{c.entry.split('/')[1]}.json").read_text())
            xs.append(model_inputs(exp[:n], pose[:n]))
            gs.append(gt_features(c.exp[:n], c.pose[:n]))
            labels += frame_visemes(timings, n)
            heads.append(pose[:n, :3])
        return np.concatenate(xs), np.concatenate(gs), np.array(labels), np.concatenate(heads)

    x, g, lab, heads = collect(fit_split)
    xt, gt, labt, _ = collect(test_split)
    fit = fit_arrays(x, g, lab, heads, xt, gt, labt, log)
    fit["fitted_on"] = {"model": model_dir.name, "data": data.name, "fit_split": fit_split, "test_split": test_split,
                        "frames": int(len(x)), "test_frames": int(len(xt)), "styles": [s or "null" for s in styles]}
    return fit


def fit_arrays(x, g, lab, heads, xt, gt, labt, log=print) -> dict:
    """The fit from model inputs ``x`` (T, K+1), GT features ``g`` (T, 6), GT visemes ``lab`` (T,)
    and model head rotations ``heads`` (T, 3); ``xt, gt, labt``: the held-out frames."""
    lab, labt = np.asarray(lab), np.asarray(labt)
    w, b = ridge(x, g)
    pred, predt = x @ w.T + b, xt @ w.T + b

    # Rest: the model's inputs over silent frames; features at rest follow linearly. At run time
    # the rest calibration moves x_rest (a style's offset), and every control with it.
    sil = lab == "sil"
    x_rest = np.median(x[sil], axis=0)
    rest = w @ x_rest + b
    vowel = np.isin(lab, list(VOWEL_OF_VISEME))
    full = rest.copy()
    # Full value of each feature: the 90th percentile where that feature is the point of the viseme.
    # Smile is no viseme: its full value is the world's full smile (1 feature unit, docs/SYNTHTALK.md).
    where = {"jaw": vowel, "open": vowel, "closure": lab == "PBM", "round": np.isin(lab, ["UW", "OH", "W"]),
             "spread": np.isin(lab, ["IY", "EH", "Y"])}
    for k, name in enumerate(FEATURES):
        sel = where.get(name)
        hi = np.percentile(pred[sel, k], 90) if sel is not None and sel.any() else rest[k] + 1.0
        full[k] = max(hi, rest[k] + MIN_SPAN[name])

    # Vowel classes straight from the rest-relative inputs (the regression keeps only what predicts
    # the GT features; a vowel may show in other directions), class-balanced.
    x_scale = np.maximum(x[vowel].std(0), 1e-6)
    cls = np.array([VRM_VOWELS.index(VOWEL_OF_VISEME[v]) for v in lab[vowel]])
    z = (x[vowel] - x_rest) / x_scale
    vw, vb = softmax_fit(z, cls, len(VRM_VOWELS))
    # Class priors: shift the biases until each vowel is the strongest as often as the world's
    # vowels are (on the fit frames), so no shape is never shown and none is always shown.
    target = np.bincount(cls, minlength=len(VRM_VOWELS)) / len(cls)
    for _ in range(2000):  # small steps: argmax shares jump when two logits cross
        share = np.bincount((z @ vw.T + vb).argmax(1), minlength=len(VRM_VOWELS)) / len(cls)
        vb += 0.05 * (np.log(target + 1e-3) - np.log(share + 1e-3))
    zt_mask = np.isin(labt, list(VOWEL_OF_VISEME))
    clst = np.array([VRM_VOWELS.index(VOWEL_OF_VISEME[v]) for v in labt[zt_mask]])
    pt = _softmax(((xt[zt_mask] - x_rest) / x_scale) @ vw.T + vb)
    hit = pt.argmax(1) == clst
    balanced = float(np.mean([hit[clst == k].mean() for k in range(len(VRM_VOWELS)) if (clst == k).any()]))
    shares = {v: round(float(np.mean(pt.argmax(1) == k)), 3) for k, v in enumerate(VRM_VOWELS)}
    gt_shares = {v: round(float(np.mean(clst == k)), 3) for k, v in enumerate(VRM_VOWELS)}
    r2 = 1 - ((predt - gt) ** 2).sum(0) / ((gt - gt.mean(0)) ** 2).sum(0)
    log("held-out R^2 per feature: "
        + ", ".join(f"{n} {v:.2f}" for n, v in zip(FEATURES, r2))
        + f"; vowel accuracy (class-balanced) {balanced:.2f}; strongest-vowel shares {shares} (GT {gt_shares})")

    def rnd(a):
        return np.round(np.asarray(a, dtype=np.float64), 6).tolist()

    return {
        "version": 1,
        "inputs": {"exp": int(x.shape[1]) - 1, "jaw": True},
        "features": FEATURES, "weights": rnd(w), "bias": rnd(b),
        "rest": rnd(rest), "full": rnd(full), "x_rest": rnd(x_rest), "x_scale": rnd(x_scale),
        # the model's resting head rotation (median over every style): the head calibration's start
        "head_rest": rnd(np.median(heads, axis=0)),
        "vowels": VRM_VOWELS, "vowel_weights": rnd(vw), "vowel_bias": rnd(vb),
        "held_out": {"r2": dict(zip(FEATURES, (round(float(v), 3) for v in r2))),
                     "vowel_accuracy_balanced": round(balanced, 3), "vowel_argmax_share": shares,
                     "vowel_share_gt": gt_shares},
    }


def write_avatar_map(fit: dict, model_dir: str | Path) -> Path:
    path = Path(model_dir) / MAP_FILE
    path.write_text(json.dumps({"fit": fit}, indent=1) + "\n")
    return path
