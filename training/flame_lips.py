"""Lip shapes measured on the FLAME mesh (`dpt-live fit-avatar-map --flame`).

A converted official DiffPoseTalk model speaks in real FLAME's expression space, where the
SynthTalk-fitted map means nothing. FLAME itself says what each coefficient and the jaw do to
the lips: this module poses the user's FLAME file (diffposetalk/flame.py, no unpickling of code)
and measures, per frame, in the head's own frame (global rotation zero, the mean face), in mm:

    aperture    signed gap between the inner upper and lower lip on the midline (y)
    width       distance between the two mouth corners
    protrusion  forward (z) offset of the lips' midline from FLAME's rest face
    corner_lift height of the mouth corners (y; a smile raises them, an open jaw lowers them)

The lip vertices are found on the user's file, from its topology, never from shipped index
lists: FLAME's mouth is a hole in the face mesh, so the inner lip contour (the line on which
FLAME's landmark embedding places the inner-lip landmarks 61-68 of the 68-point scheme) is the
boundary loop of the mesh that lies on the midline and furthest forward (the other loops are the
eyelids, off the midline, and the neck, at the back). Its extreme-x vertices are the corners, its
midline vertices above/below the corners the inner upper/lower lip; the lips' midline body is the
loop's central vertices and their two rings of neighbours.

The measured features then fit the same ``fit`` JSON the SynthTalk fit writes (training/
avatar_map.py; evaluated by clients/vmc_map.py without FLAME):

    jaw     = jaw_x (radians)                     open    = aperture
    closure = -aperture (lips pressed: FLAME's blendshapes let the lips interpenetrate)
    round   = protrusion - 0.5 * (width - rest)   forward and narrower
    spread  = width - rest                        smile   = corner_lift
(each read relative to its value at rest by the clients; rest = the model's quiet frames).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from diffposetalk.errors import UserError
from diffposetalk.units import FPS

MM = 1000.0  # FLAME is in metres
MIN_SPAN = {"jaw": 0.05, "open": 2.0, "closure": 1.0, "round": 1.0, "spread": 1.5, "smile": 1.0}
SHARPNESS = 3.0  # vowel logits per unit of rest-relative feature (one clear shape, not a blur)
# Vowel rule on rest-relative features (jaw, open, closure, round, spread, smile), 1 = full:
# A: open, neither rounded nor spread; I: spread, little opening; U: rounded, little opening;
# E: spread and open; O: rounded and open. The jaw counts as half an opening.
VOWEL_RULE = {
    "A": (0.5, 1.0, 0.0, -1.0, -1.0, 0.0),
    "I": (-0.25, -0.5, 0.0, -0.5, 1.5, 0.0),
    "U": (-0.25, -0.5, 0.0, 1.5, -0.5, 0.0),
    "E": (0.25, 0.5, 0.0, -0.75, 1.0, 0.0),
    "O": (0.25, 0.5, 0.0, 1.0, -0.75, 0.0),
}


@dataclasses.dataclass(frozen=True)
class LipVertices:
    """Vertex indices of the lips in the user's FLAME topology (found by find_lip_vertices)."""

    contour: np.ndarray   # the inner lip contour (the mouth hole's boundary loop)
    upper: np.ndarray     # inner upper lip on the midline (1-2 vertices, averaged)
    lower: np.ndarray     # inner lower lip on the midline
    left: np.ndarray      # corner on +x (the avatar's left)
    right: np.ndarray     # corner on -x
    body: np.ndarray      # the lips' central body (for protrusion)

    def describe(self) -> str:
        return (f"inner lip contour {len(self.contour)} vertices; upper {self.upper.tolist()}, lower "
                f"{self.lower.tolist()}, corners {self.left.tolist()} / {self.right.tolist()}; "
                f"{len(self.body)} body vertices")


def boundary_loops(faces: np.ndarray) -> list[np.ndarray]:
    """Vertex sets of the mesh's boundary components (edges used by exactly one triangle)."""
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    uniq, counts = np.unique(edges, axis=0, return_counts=True)
    border = uniq[counts == 1]
    parent = {int(v): int(v) for v in border.ravel()}

    def root(v: int) -> int:
        while parent[v] != v:
            parent[v] = parent[parent[v]]
            v = parent[v]
        return v

    for a, b in border:
        ra, rb = root(int(a)), root(int(b))
        if ra != rb:
            parent[ra] = rb
    groups: dict[int, list[int]] = {}
    for v in parent:
        groups.setdefault(root(v), []).append(v)
    return [np.array(sorted(g)) for g in groups.values()]


def _neighbours(faces: np.ndarray, verts: np.ndarray) -> np.ndarray:
    touched = np.isin(faces, verts).any(1)
    return np.unique(faces[touched])


def find_lip_vertices(v_template: np.ndarray, faces: np.ndarray) -> LipVertices:
    """The lips of a FLAME-topology mesh: see the module docstring for the rule."""
    v = np.asarray(v_template, dtype=np.float64)
    head_width = float(np.ptp(v[:, 0])) or 1.0
    loops = [lp for lp in boundary_loops(np.asarray(faces)) if len(lp) >= 4]
    midline = [lp for lp in loops if abs(v[lp, 0].mean() - np.median(v[:, 0])) < 0.1 * head_width
               and np.ptp(v[lp, 0]) < 0.6 * head_width]
    if not midline:
        raise UserError("this FLAME file has no mouth opening (no boundary loop of the mesh on the face's "
                        "midline): is it a FLAME model?")
    contour = max(midline, key=lambda lp: v[lp, 2].mean())
    pts = v[contour]
    mouth_w = float(np.ptp(pts[:, 0]))
    tol = 0.03 * mouth_w
    left = contour[pts[:, 0] >= pts[:, 0].max() - tol]
    right = contour[pts[:, 0] <= pts[:, 0].min() + tol]
    mid_x = 0.5 * (pts[:, 0].max() + pts[:, 0].min())
    corner_y = 0.5 * (v[left, 1].mean() + v[right, 1].mean())
    central = np.abs(pts[:, 0] - mid_x)
    up, down = pts[:, 1] > corner_y, pts[:, 1] <= corner_y
    if not up.any() or not down.any():
        raise UserError("FLAME mouth opening: no lip above or below the corners")
    upper = contour[up & (central <= central[up].min() + tol)]
    lower = contour[down & (central <= central[down].min() + tol)]
    ring = _neighbours(faces, _neighbours(faces, contour[central <= 0.25 * mouth_w]))
    body = ring[np.abs(v[ring, 0] - mid_x) <= 0.3 * mouth_w]
    return LipVertices(contour=contour, upper=upper, lower=lower, left=left, right=right, body=body)


def lip_measures(verts: np.ndarray, lips: LipVertices, rest_body_z: float) -> np.ndarray:
    """(T, 4) aperture, width, protrusion, corner height in mm from posed vertices (T, V, 3) in metres."""
    up, lo = verts[:, lips.upper].mean(1), verts[:, lips.lower].mean(1)
    left, right = verts[:, lips.left].mean(1), verts[:, lips.right].mean(1)
    aperture = up[:, 1] - lo[:, 1]
    width = np.linalg.norm(left - right, axis=1)
    protrusion = verts[:, lips.body, 2].mean(1) - rest_body_z
    lift = 0.5 * (left[:, 1] + right[:, 1])
    return np.column_stack([aperture, width, protrusion, lift]) * MM


class LipMeter:
    """Poses a FLAME model (mean face, head frame) and measures the lips of (exp, jaw) frames."""

    def __init__(self, flame_data, n_exp: int):
        from diffposetalk.flame import SHAPE_COMPONENTS, Flame

        have = flame_data.shapedirs.shape[2] - SHAPE_COMPONENTS
        if have < n_exp:
            raise UserError(f"the FLAME file has {max(have, 0)} expression components, the model uses {n_exp}")
        self.flame = Flame(flame_data, n_shape=0, n_exp=n_exp)
        self.n_exp = n_exp
        self.lips = find_lip_vertices(flame_data.v_template, flame_data.faces)
        self.rest_body_z = float(np.asarray(flame_data.v_template, np.float64)[self.lips.body, 2].mean())

    def measure(self, exp: np.ndarray, jaw: np.ndarray, batch: int = 256) -> np.ndarray:
        """(T, 4) lip measures of exp (T, n_exp) and jaw (T, 3) axis-angle."""
        import torch

        out = []
        with torch.no_grad():
            for i in range(0, len(exp), batch):
                e = torch.as_tensor(exp[i:i + batch, :self.n_exp], dtype=torch.float32)
                pose = torch.zeros(len(e), 6)
                pose[:, 3:] = torch.as_tensor(jaw[i:i + batch], dtype=torch.float32)
                verts = self.flame(torch.zeros(0), e, pose).numpy().astype(np.float64)
                out.append(lip_measures(verts, self.lips, self.rest_body_z))
        return np.concatenate(out) if out else np.zeros((0, 4))


def features_of(measures: np.ndarray, jaw_x: np.ndarray, rest_width: float) -> np.ndarray:
    """(T, 6) fit features (jaw, open, closure, round, spread, smile) from lip measures."""
    aperture, width, protrusion, lift = measures.T
    spread = width - rest_width
    return np.column_stack([jaw_x, aperture, -aperture, protrusion - 0.5 * spread, spread, lift])


def quiet_frames(audio: np.ndarray, n_frames: int, sample_rate: int = 16000) -> np.ndarray:
    """Frames whose audio is 30 dB below the clip's loud frames (silence between words)."""
    hop = sample_rate // FPS
    n = min(n_frames, len(audio) // hop)
    rms = np.sqrt(np.mean(audio[:n * hop].reshape(n, hop).astype(np.float64) ** 2, axis=1) + 1e-12)
    loud = np.percentile(rms, 95) if n else 1.0
    quiet = np.ones(n_frames, dtype=bool)
    quiet[:n] = rms < loud * 10 ** (-30 / 20)
    return quiet


def sampled_motion(stats: dict, n_exp: int, n_frames: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(exp, jaw) drawn around the model's training mean within its training spread (normal, one
    standard deviation per coefficient; the jaw's x only, never below closed): the ranges a model
    outputs, for a fit without audio. The first tenth of the frames are FLAME's neutral face (all
    zero), the rest a fit without audio assumes; at run time the rest calibration refines it."""
    rng = np.random.default_rng(seed)
    mean, std = np.asarray(stats["exp_mean"], np.float64)[:n_exp], np.asarray(stats["exp_std"], np.float64)[:n_exp]
    exp = mean + std * rng.standard_normal((n_frames, n_exp))
    jaw = np.zeros((n_frames, 3))
    jm, js = float(np.asarray(stats["pose_mean"])[3]), float(np.asarray(stats["pose_std"])[3])
    jaw[:, 0] = np.maximum(jm + js * rng.standard_normal(n_frames), 0.0)
    n_rest = n_frames // 10
    exp[:n_rest], jaw[:n_rest] = 0.0, 0.0
    return exp, jaw


def fit_flame_arrays(meter: LipMeter, exp: np.ndarray, jaw: np.ndarray, quiet: np.ndarray,
                     heads: np.ndarray | None, n_in: int, log=print) -> dict:
    """The ``fit`` JSON from model motion (exp (T, >= n_in), jaw (T, 3)) and its quiet frames."""
    from training.avatar_map import FEATURES, VRM_VOWELS, ridge

    if quiet.sum() < 5 or (~quiet).sum() < 20:
        raise UserError(f"need quiet and speaking frames to fit (have {int(quiet.sum())} quiet, "
                        f"{int((~quiet).sum())} speaking): give speech with pauses")
    measures = meter.measure(exp, jaw)
    rest_width = float(np.median(measures[quiet, 1]))
    g = features_of(measures, jaw[:, 0], rest_width)
    x = np.column_stack([exp[:, :n_in], jaw[:, 0]]).astype(np.float64)
    w, b = ridge(x, g, lam=1e-6)
    pred = x @ w.T + b
    r2 = 1 - ((pred - g) ** 2).sum(0) / np.maximum(((g - g.mean(0)) ** 2).sum(0), 1e-12)
    x_rest = np.median(x[quiet], axis=0)
    rest = w @ x_rest + b
    speak = ~quiet
    full = np.array([max(np.percentile(pred[speak, k], 90), rest[k] + MIN_SPAN[name])
                     for k, name in enumerate(FEATURES)])
    span = full - rest
    x_scale = np.maximum(x[speak].std(0), 1e-6)
    rule = np.array([VOWEL_RULE[v] for v in VRM_VOWELS])
    # logits = SHARPNESS * rule . (W dx / span), written on dx / x_scale as the clients evaluate it.
    vw = SHARPNESS * (rule / span) @ w * x_scale
    vb = np.zeros(len(VRM_VOWELS))
    rel = np.clip((pred[speak] - rest) / span, 0, 1)
    opened = 0.5 * (rel[:, 0] + rel[:, 1]) > 0.1
    logits = ((x[speak] - x_rest) / x_scale) @ vw.T + vb
    strongest = logits[opened].argmax(1) if opened.any() else np.zeros(0, int)
    shares = {v: round(float(np.mean(strongest == k)), 3) if len(strongest) else 0.0
              for k, v in enumerate(VRM_VOWELS)}
    log("lip features from the FLAME mesh, linear fit R^2: " + ", ".join(f"{n} {v:.3f}" for n, v in zip(FEATURES, r2))
        + "; rest -> full: " + ", ".join(f"{n} {r:.2f}->{f:.2f}" for n, r, f in zip(FEATURES, rest, full))
        + f"; strongest vowel in {int(opened.sum())} open frames {shares}")

    def rnd(a):
        return np.round(np.asarray(a, dtype=np.float64), 6).tolist()

    head_rest = np.zeros(3) if heads is None or not len(heads) else np.median(heads, axis=0)
    return {
        "version": 1,
        "inputs": {"exp": n_in, "jaw": True},
        "features": FEATURES, "weights": rnd(w), "bias": rnd(b),
        "rest": rnd(rest), "full": rnd(full), "x_rest": rnd(x_rest), "x_scale": rnd(x_scale),
        "head_rest": rnd(head_rest),
        "vowels": VRM_VOWELS, "vowel_weights": rnd(vw), "vowel_bias": rnd(vb),
        "flame": {"units": "jaw radians, lip features mm", "rest_width_mm": round(rest_width, 3),
                  "r2": dict(zip(FEATURES, (round(float(v), 4) for v in r2))),
                  "vowel_rule": VOWEL_RULE, "sharpness": SHARPNESS,
                  "vowel_argmax_share": shares, "open_frames": int(opened.sum()),
                  "lips": {"upper": meter.lips.upper.tolist(), "lower": meter.lips.lower.tolist(),
                           "corners": [meter.lips.left.tolist(), meter.lips.right.tolist()],
                           "contour": len(meter.lips.contour), "body": len(meter.lips.body)}},
    }


def audio_files(folder: Path) -> list[Path]:
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in (".wav", ".flac", ".ogg", ".mp3"))
    if not files:
        raise UserError(f"{folder}: no audio files (.wav .flac .ogg .mp3)")
    return files


def fit_flame_map(model_dir: str | Path, flame_file: str | Path, audio: str | Path | None = None,
                  data: str | Path | None = None, split: str = "val", max_clips: int | None = None,
                  log=print, device: str = "cpu") -> dict:
    """The mesh-measured ``fit`` of ``model_dir``: on its own motion streamed over ``audio`` (a
    folder of speech files) or the clips of ``data``'s ``split``, else on sampled coefficients."""
    from diffposetalk.flame import load_flame
    from diffposetalk.model_dir import load_model_dir
    from training.avatar_map import N_EXP_IN, stream_clips

    model_dir = Path(model_dir)
    loaded = load_model_dir(model_dir, "cpu")
    n_exp = len(np.asarray(loaded.stats["exp_mean"].cpu() if hasattr(loaded.stats["exp_mean"], "cpu")
                           else loaded.stats["exp_mean"]).ravel())
    meter = LipMeter(load_flame(flame_file), n_exp)
    log(f"{flame_file}: {meter.lips.describe()}")
    source: dict = {"model": model_dir.name, "flame": Path(flame_file).name}
    if audio is None and data is None:
        stats = {k: v.cpu().numpy() if hasattr(v, "cpu") else v for k, v in loaded.stats.items()}
        exp, jaw = sampled_motion(stats, n_exp)
        quiet = np.zeros(len(exp), dtype=bool)
        quiet[:len(exp) // 10] = True
        heads = None
        source["motion"] = f"sampled: {len(exp)} frames around the training mean (1 std)"
    else:
        clips = _clips(audio, data, split, max_clips)
        styles: list[str | None] = [None] + sorted(loaded.styles) if loaded.config.use_style else [None]
        log(f"streaming {len(clips)} clips through {model_dir} (styles: {styles})")
        t0 = time.time()
        motion = stream_clips(model_dir, clips, styles, log, device)
        exps, jaws, quiets, heads_l = [], [], [], []
        for c, (e, p) in zip(clips, motion):
            exps.append(e)
            jaws.append(p[:, 3:6])
            heads_l.append(p[:, :3])
            quiets.append(quiet_frames(c.audio, len(e)))
        exp, jaw, quiet, heads = (np.concatenate(a) for a in (exps, jaws, quiets, heads_l))
        source["motion"] = (f"streamed: {len(clips)} clips, {len(exp)} frames ({time.time() - t0:.0f} s), "
                            f"styles {[s or 'null' for s in styles]}")
    fit = fit_flame_arrays(meter, exp, jaw, quiet, heads, min(N_EXP_IN, n_exp), log)
    fit["fitted_on"] = source
    return fit


@dataclasses.dataclass
class _AudioClip:
    audio: np.ndarray
    shape: np.ndarray | None = None


def _clips(audio, data, split: str, max_clips: int | None) -> list:
    if audio is not None:
        from diffposetalk.audio_io import load_audio

        files = audio_files(Path(audio))[:max_clips]
        return [_AudioClip(load_audio(f)) for f in files]
    from training.train_data import load_split

    return load_split(data, split, max_clips)
