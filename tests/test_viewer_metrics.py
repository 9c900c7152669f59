"""Viewer metrics (training/viewer_metrics.py) on constructed worlds with known answers: a mouth
that shapes each class scores near the ceiling, one that only opens the jaw near chance; pauses
and head spread are measured where they are."""

from __future__ import annotations

import json
import types

import numpy as np

from diffposetalk.units import FPS
from training.viewer_metrics import CLASS_NAMES, frame_labels, head_spread, viewer_metrics

# phoneme -> a mouth class through the world's visemes: p (closed), A: (open), i: (spread), u: (round)
PHONES = {"closed": "p", "open": "A:", "spread": "i:", "round": "u:"}
SHAPE = {"closed": (0.0, [0, 1.0, 0, 0]), "open": (0.25, [1.0, 0, 0, 0]), "spread": (0.06, [0.2, 0, 0, 1.0]),
         "round": (0.07, [0.2, 0, 1.0, 0])}


def make_clip(tmp, person, video, rng, shapes=True, seconds=8.0):
    n = int(seconds * FPS)
    t, phonemes = 0.5, []
    while t < seconds - 1.0:
        cls = CLASS_NAMES[rng.integers(len(CLASS_NAMES))]
        d = rng.uniform(0.12, 0.25)
        phonemes.append([PHONES[cls], t, t + d])
        t += d
        if rng.random() < 0.1:
            t += 0.6  # a pause
    timing = {"anticipation": 0.0, "phonemes": phonemes}
    (tmp / "phonemes").mkdir(exist_ok=True)
    (tmp / "phonemes" / f"{person}_{video:03d}.json").write_text(json.dumps(timing))
    exp, pose = np.zeros((n, 50), np.float32), np.zeros((n, 6), np.float32)
    times = (np.arange(n) + 0.5) / FPS
    for name, s, e in phonemes:
        cls = next(k for k, v in PHONES.items() if v == name)
        inside = (times >= s) & (times < e)
        jaw, e4 = SHAPE[cls]
        pose[inside, 3] = jaw
        if shapes:
            exp[inside, :4] = e4
    exp += rng.normal(0, 0.05, exp.shape).astype(np.float32)
    pose[:, :3] = np.radians(rng.normal(0, [1.0, 3.0, 0.5], (n, 3)))
    return types.SimpleNamespace(entry=f"{person}/{video:03d}", person=person, exp=exp, pose=pose, n_frames=n)


def test_frame_labels_follow_the_phonemes():
    timing = {"anticipation": 0.04, "phonemes": [["_", 0.0, 1.0], ["p", 1.0, 1.2], ["A:", 1.2, 1.6], ["_:", 1.6, 3.0]]}
    labels, rest, vowel = frame_labels(timing, 75)
    t = (np.arange(75) + 0.5) / FPS + 0.04
    assert set(labels[(t > 1.05) & (t < 1.15)]) == {CLASS_NAMES.index("closed")}
    assert set(labels[(t > 1.25) & (t < 1.55)]) == {CLASS_NAMES.index("open")}
    assert np.all(labels[t < 0.9] == -1) and vowel[(t > 1.25) & (t < 1.55)].all()
    assert rest[t < 0.8].all() and rest[t > 1.8].all() and not rest[(t > 0.9) & (t < 1.7)].any()


def test_viseme_score_tells_shapes_from_a_jaw_that_only_opens(tmp_path):
    rng = np.random.default_rng(0)
    train = [make_clip(tmp_path, f"T{i}", 0, rng) for i in range(6)]
    test = [make_clip(tmp_path, f"S{i}", 0, rng) for i in range(3)]
    jaw_only = [{"exp": np.zeros_like(c.exp), "pose": c.pose} for c in test]
    scored = [(c.entry, {"exp": c.exp, "pose": c.pose}, [j]) for c, j in zip(test, jaw_only)]
    out = viewer_metrics(tmp_path, train, scored)
    assert out["viseme_score"]["gt"] > 0.9
    assert out["viseme_score"]["generated"] < 0.6  # the jaw alone cannot tell spread from round
    assert out["rest_closure"]["gt"]["rests_shut"] == 1.0
    hs = out["head_spread"]
    assert hs["most_active_axis"] == 1 and abs(hs["gt_deg"][1] - 3.0) < 0.3 and hs["ratio"] == 1.0


def test_head_spread_is_per_axis_degrees():
    pose = np.zeros((100, 6))
    pose[::2, 0], pose[1::2, 0] = np.radians(2.0), -np.radians(2.0)
    np.testing.assert_allclose(head_spread([pose]), [2.0, 0.0, 0.0], atol=1e-9)
