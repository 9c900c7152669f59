"""What a viewer sees, measured (`dpt-live eval`): head rotation spread against the data's, mouth
shapes (a viseme score), and whether the mouth rests shut in the clip's pauses.

The viseme score needs a world that knows what the mouth should show: SynthTalk writes each clip's
phoneme timings (``phonemes/<person>_<video>.json``). Frames are labelled with a viewer's mouth
classes (closed lips, open, spread, rounded); a linear classifier is fit on ground-truth motion of
the training split and scores generated motion of the test split. Its score on ground truth is the
ceiling generated motion is compared with: a model that only opens and shuts the jaw scores near
chance (1 / number of classes) however well its jaw follows the audio."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from diffposetalk.units import FPS

# viewer mouth classes from the world's visemes (training/synth/visemes.py); consonants whose shape
# follows their neighbours (t d n k g h ...) are not scored
MOUTH_CLASSES = {"closed": ("PBM",), "open": ("AA", "AH"), "spread": ("IY", "EH", "Y"), "round": ("UW", "OH", "W")}
_CLASS_OF = {v: name for name, vs in MOUTH_CLASSES.items() for v in vs}
CLASS_NAMES = tuple(MOUTH_CLASSES)
STABLE_S = 0.02  # a frame is labelled only when the class holds this long either side of it
PAUSE_MARGIN_S = 0.2  # a rest frame lies at least this far from any phoneme

DEFINITIONS = {
    "head_spread": "per clip the std over frames of each head rotation axis pose[0:3] (deg), mean over clips "
                   "(and seeds); most_active_axis: the axis whose GT spread is largest; ratio: generated over GT "
                   "on that axis",
    "viseme_score": f"balanced accuracy (mean recall over the mouth classes {', '.join(CLASS_NAMES)}; chance "
                    f"{1 / len(CLASS_NAMES):.2f}) of a linear discriminant fit on GT motion of the training "
                    f"split and applied per frame to the test clips' GT (gt) and generated motion (generated). "
                    f"Features: jaw opening pose[3] and exp[0:10], less the clip's median (speakers rest "
                    f"differently). Frames are labelled from the world's phoneme timings at the frame centre "
                    f"plus the speaker's anticipation, where the class holds ±{STABLE_S * 1000:.0f} ms",
    "rest_closure": f"frames of the clip's pauses at least {PAUSE_MARGIN_S * 1000:.0f} ms from any phoneme: "
                    f"jaw opening mean there (rad), and the fraction of clips (and seeds) whose pause mean is "
                    f"below the 20th percentile of their jaw opening in vowel frames (rests_shut)",
}


def _phoneme_file(data: Path, entry: str) -> Path:
    person, video = entry.split("/")
    return data / "phonemes" / f"{person}_{int(video):03d}.json"


def has_phonemes(data: str | Path) -> bool:
    return (Path(data) / "phonemes").is_dir()


def frame_labels(timing: dict, n_frames: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mouth class index per frame or -1, rest mask, vowel mask) from a clip's phoneme timings."""
    from training.synth.visemes import is_pause, is_vowel, visemes_of

    t = (np.arange(n_frames) + 0.5) / FPS + float(timing.get("anticipation", 0.0))
    segments = []  # (start, end, class index or -1, vowel)
    speech = []
    for name, start, end in timing["phonemes"]:
        if is_pause(name):
            continue
        speech.append((start, end))
        pos = start
        for viseme, share in visemes_of(name):
            stop = pos + share * (end - start)
            cls = _CLASS_OF.get(viseme)
            segments.append((pos, stop, CLASS_NAMES.index(cls) if cls else -1, is_vowel(name)))
            pos = stop
    labels = np.full(n_frames, -1, int)
    vowel = np.zeros(n_frames, bool)
    for start, stop, cls, v in segments:
        inside = (t >= start) & (t < stop)
        vowel |= inside & v
        if cls >= 0:
            labels[inside & (t - STABLE_S >= start) & (t + STABLE_S < stop)] = cls
    rest = np.ones(n_frames, bool)
    for start, end in speech:
        rest &= (t < start - PAUSE_MARGIN_S) | (t > end + PAUSE_MARGIN_S)
    return labels, rest, vowel


def mouth_features(exp: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """(T, 11): jaw opening and exp[0:10], less the clip's median."""
    f = np.concatenate([pose[:, 3:4], exp[:, :10]], axis=1).astype(np.float64)
    return f - np.median(f, axis=0, keepdims=True)


class MouthClassifier:
    """Linear discriminant analysis (class means, pooled covariance): small, deterministic, no
    library needed for 11 features and 4 classes."""

    def fit(self, features: np.ndarray, labels: np.ndarray) -> MouthClassifier:
        keep = labels >= 0
        x, y = features[keep], labels[keep]
        self.means = np.stack([x[y == k].mean(0) for k in range(len(CLASS_NAMES))])
        centred = x - self.means[y]
        cov = centred.T @ centred / max(len(x) - len(CLASS_NAMES), 1)
        self.precision = np.linalg.inv(cov + 1e-6 * np.trace(cov) / len(cov) * np.eye(len(cov)))
        return self

    def predict(self, features: np.ndarray) -> np.ndarray:
        w = self.means @ self.precision  # (K, F)
        b = -0.5 * np.einsum("kf,kf->k", w, self.means)
        return np.argmax(features @ w.T + b, axis=1)

    def balanced_accuracy(self, features: np.ndarray, labels: np.ndarray) -> float:
        keep = labels >= 0
        pred, y = self.predict(features[keep]), labels[keep]
        recalls = [float(np.mean(pred[y == k] == k)) for k in range(len(CLASS_NAMES)) if np.any(y == k)]
        return float(np.mean(recalls)) if recalls else float("nan")


def fit_mouth_classifier(data: str | Path, clips) -> MouthClassifier:
    feats, labels = [], []
    for c in clips:
        timing = json.loads(_phoneme_file(Path(data), c.entry).read_text())
        lab, _, _ = frame_labels(timing, c.n_frames)
        feats.append(mouth_features(c.exp, c.pose))
        labels.append(lab)
    return MouthClassifier().fit(np.concatenate(feats), np.concatenate(labels))


def head_spread(poses: list[np.ndarray]) -> np.ndarray:
    """(3,) per-axis std over frames (deg), mean over the given clips' pose arrays."""
    return np.mean([np.degrees(p[:, :3].std(axis=0)) for p in poses], axis=0)


def viewer_metrics(data: str | Path, train_clips, scored: list[tuple[str, dict, list[dict]]]) -> dict:
    """``scored``: (entry, GT {'exp','pose'}, [generated {'exp','pose'} per seed]) of each test clip."""
    gt_head = head_spread([g["pose"] for _, g, _ in scored])
    gen_head = head_spread([p["pose"] for _, _, preds in scored for p in preds])
    axis = int(np.argmax(gt_head))
    out = {"head_spread": {"gt_deg": gt_head.round(3).tolist(), "generated_deg": gen_head.round(3).tolist(),
                           "most_active_axis": axis, "ratio": float(gen_head[axis] / max(gt_head[axis], 1e-9))}}
    if not has_phonemes(data):
        return out
    clf = fit_mouth_classifier(data, train_clips)
    gt_f, gen_f, gt_l, gen_l = [], [], [], []
    rest = {"gt": [], "generated": []}
    for entry, g, preds in scored:
        timing = json.loads(_phoneme_file(Path(data), entry).read_text())
        labels, rest_mask, vowel = frame_labels(timing, len(g["pose"]))
        for who, arrays in [("gt", g)] + [("generated", p) for p in preds]:
            n = min(len(arrays["pose"]), len(labels))
            (gt_f if who == "gt" else gen_f).append(mouth_features(arrays["exp"][:n], arrays["pose"][:n]))
            (gt_l if who == "gt" else gen_l).append(labels[:n])
            jaw = arrays["pose"][:n, 3]
            if rest_mask[:n].any() and vowel[:n].any():
                mean = float(jaw[rest_mask[:n]].mean())
                rest[who].append((mean, mean < float(np.percentile(jaw[vowel[:n]], 20))))
    out["viseme_score"] = {"gt": clf.balanced_accuracy(np.concatenate(gt_f), np.concatenate(gt_l)),
                           "generated": clf.balanced_accuracy(np.concatenate(gen_f), np.concatenate(gen_l)),
                           "chance": 1 / len(CLASS_NAMES), "classes": list(CLASS_NAMES)}
    out["rest_closure"] = {who: {"jaw_mean": float(np.mean([m for m, _ in v])) if v else None,
                                 "rests_shut": float(np.mean([s for _, s in v])) if v else None, "clips": len(v)}
                           for who, v in rest.items()}
    return out
