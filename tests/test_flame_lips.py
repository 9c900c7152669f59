"""`fit-avatar-map --flame`: lips found on a FLAME-format mesh, measured, and fitted into a map.

The synthetic FLAME below is a curved face-like grid with a slit for a mouth (the real FLAME's
mouth is a hole in its mesh too). Its first four expression components move the lips in known
ways: 0 lowers the lower lip (aperture), 1 pulls the corners apart (width), 2 pushes the lips
forward (protrusion), 3 raises the corners (smile); the jaw joint sits behind the mouth and
carries every vertex below it."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from clients.vmc_map import VmcMapper, load_mapping
from diffposetalk.errors import UserError
from diffposetalk.flame import FlameData, save_flame_npz
from training.flame_lips import LipMeter, features_of, find_lip_vertices, fit_flame_arrays, quiet_frames, sampled_motion

N = 13          # grid points per side
STEP = 0.008    # metres between grid points
MID = N // 2    # the midline column
LOWER, UPPER = 5, 6            # rows of the lower and upper inner lip
LEFT_COL, RIGHT_COL = 9, 3     # corner columns (+x is the avatar's left)
UNIT = 0.002    # metres a lip moves per unit of coefficient


def vid(row: int, col: int) -> int:
    return row * N + col


def synthetic_flame() -> FlameData:
    cols, rows = np.meshgrid(np.arange(N), np.arange(N))
    x, y = (cols.ravel() - MID) * STEP, (rows.ravel() - MID) * STEP
    z = -3.0 * (x ** 2 + y ** 2)  # a bulge: the middle of the face is in front
    v = np.column_stack([x, y, z])
    pivot = np.array([[0.0, (LOWER + 0.5 - MID) * STEP, -0.06]])  # the jaw joint, behind the mouth
    v_template = np.concatenate([v, pivot]).astype(np.float32)
    n_v = len(v_template)
    faces = []
    for r in range(N - 1):
        for c in range(N - 1):
            if r == LOWER and RIGHT_COL <= c < LEFT_COL:
                continue  # the mouth: a slit between the lower and upper lip rows
            a, b, cc, d = vid(r, c), vid(r, c + 1), vid(r + 1, c + 1), vid(r + 1, c)
            faces += [(a, b, cc), (a, cc, d)]
    shapedirs = np.zeros((n_v, 3, 400), dtype=np.float32)
    lips = [(r, c) for r in range(N) for c in range(N) if LOWER - 1 <= r <= UPPER + 1 and RIGHT_COL <= c <= LEFT_COL]
    for r, c in lips:
        i = vid(r, c)
        taper = 1.0 - abs(c - MID) / (LEFT_COL - MID + 1)
        if r <= LOWER:
            shapedirs[i, 1, 300] = -UNIT * taper                     # 0: lower lip down
        shapedirs[i, 0, 301] = UNIT * (c - MID) / (LEFT_COL - MID)   # 1: corners apart
        shapedirs[i, 2, 302] = UNIT * taper                          # 2: lips forward
        if c in (LEFT_COL, RIGHT_COL):
            shapedirs[i, 1, 303] = UNIT                              # 3: corners up
    weights = np.zeros((n_v, 5), dtype=np.float32)
    below = np.arange(n_v - 1) // N <= LOWER
    weights[:-1][below, 2] = 1.0   # the jaw carries the lower face
    weights[:-1][~below, 0] = 1.0
    weights[-1, 2] = 1.0
    j_reg = np.zeros((5, n_v), dtype=np.float32)
    for j, target in enumerate([vid(MID, MID), vid(MID, MID), n_v - 1, vid(9, 4), vid(9, 8)]):
        j_reg[j, target] = 1.0
    return FlameData(v_template=v_template, shapedirs=shapedirs, posedirs=np.zeros((n_v, 3, 36), np.float32),
                     j_regressor=j_reg, weights=weights, parents=np.array([-1, 0, 1, 1, 1]),
                     faces=np.array(faces, dtype=np.int64))


@pytest.fixture(scope="module")
def meter() -> LipMeter:
    return LipMeter(synthetic_flame(), 50)


def frame(**kw) -> tuple[np.ndarray, np.ndarray]:
    exp = np.zeros(50)
    for k, i in (("open", 0), ("wide", 1), ("forward", 2), ("smile", 3)):
        exp[i] = kw.get(k, 0.0)
    return exp, np.array([0.0, 0.0, 0.0, kw.get("jaw", 0.0), 0.0, 0.0])


def test_lips_are_found_from_the_mouth_opening():
    d = synthetic_flame()
    lips = find_lip_vertices(d.v_template, d.faces)
    assert lips.upper.tolist() == [vid(UPPER, MID)]
    assert lips.lower.tolist() == [vid(LOWER, MID)]
    assert sorted(lips.left.tolist()) == [vid(LOWER, LEFT_COL), vid(UPPER, LEFT_COL)]
    assert sorted(lips.right.tolist()) == [vid(LOWER, RIGHT_COL), vid(UPPER, RIGHT_COL)]
    assert len(lips.contour) == 2 * (LEFT_COL - RIGHT_COL + 1)  # the slit, not the face's outer border
    assert vid(MID, MID) in lips.body and vid(0, 0) not in lips.body


def test_a_mesh_without_a_mouth_opening_is_refused():
    d = synthetic_flame()
    grid = [(vid(r, c), vid(r, c + 1), vid(r + 1, c + 1)) for r in range(N - 1) for c in range(N - 1)]
    grid += [(vid(r, c), vid(r + 1, c + 1), vid(r + 1, c)) for r in range(N - 1) for c in range(N - 1)]
    with pytest.raises(UserError, match="no mouth opening"):
        find_lip_vertices(d.v_template, np.array(grid))


def test_each_coefficient_moves_its_own_measure(meter):
    exp = np.zeros((6, 50))
    exp[1, 0] = exp[2, 1] = exp[3, 2] = exp[4, 3] = 1.0
    jaw = np.zeros((6, 3))
    jaw[5, 0] = 0.2
    m = meter.measure(exp, jaw)  # aperture, width, protrusion, corner lift (mm)
    rest = m[0]
    assert rest[0] == pytest.approx(STEP * 1000, abs=1e-3) and rest[2] == pytest.approx(0, abs=1e-6)
    d = m - rest
    # lower lip down 2 mm at the midline, 0.5 mm at its corner vertex (the corner: -0.25 mm)
    assert d[1].tolist() == pytest.approx([2.0, 0, 0, -0.25], abs=1e-3)
    assert d[2].tolist() == pytest.approx([0, 4.0, 0, 0], abs=1e-3)     # corners 2 mm out each
    assert d[3, 2] > 0.5 and abs(d[3, 0]) < 1e-3 and abs(d[3, 1]) < 1e-3
    assert d[4].tolist() == pytest.approx([0, 0, 0, 2.0], abs=1e-3)
    assert d[5, 0] > 5.0  # the jaw opens the mouth: the lower lip swings down about the pivot
    g = features_of(m, jaw[:, 0], rest[1])
    assert g[2, 4] == pytest.approx(4.0, abs=1e-3) and g[2, 3] == pytest.approx(-2.0, abs=1e-3)


def test_quiet_frames_follow_the_audio_energy():
    rng = np.random.default_rng(0)
    audio = np.concatenate([rng.normal(0, 0.3, 16000), rng.normal(0, 1e-3, 16000)]).astype(np.float32)
    q = quiet_frames(audio, 50)
    assert not q[:25].any() and q[25:].all()


@pytest.fixture(scope="module")
def fitted(meter) -> dict:
    stats = {"exp_mean": np.zeros(50), "exp_std": np.r_[np.ones(4), np.full(46, 0.05)],
             "pose_mean": np.array([0, 0, 0, 0.03, 0, 0]), "pose_std": np.array([0.1, 0.1, 0.1, 0.08, 0, 0])}
    exp, jaw = sampled_motion(stats, 50, n_frames=3000)
    quiet = np.zeros(len(exp), dtype=bool)
    quiet[:300] = True
    return fit_flame_arrays(meter, exp, jaw, quiet, None, 10, log=lambda *_: None)


def controls(fit: dict, **kw) -> dict[str, float]:
    mapper = VmcMapper(load_mapping(base={"fit": fit}), arkit=True)
    exp, pose = frame(**kw)
    return mapper.blendshapes(exp, pose, None)


def strongest(c: dict) -> str:
    return max("AIUEO", key=lambda v: c[v])


def test_the_fit_is_a_valid_client_map_with_measured_features(fitted):
    load_mapping(base={"fit": fitted})  # the clients' own validation
    assert min(fitted["flame"]["r2"][k] for k in ("open", "round", "spread", "smile")) > 0.99
    json.dumps(fitted)


def test_rest_reads_zero(fitted):
    c = controls(fitted)
    assert max(c[k] for k in ("A", "I", "U", "E", "O", "jawOpen", "mouthClose", "mouthFunnel", "mouthPucker",
                              "mouthSmileLeft", "mouthStretchLeft")) < 0.02


def test_aperture_and_jaw_drive_jaw_and_a(fitted):
    c = controls(fitted, open=2.0)  # lips apart, jaw shut: half of the openness
    assert strongest(c) == "A" and c["A"] > 0.1 and c["jawOpen"] == 0
    c = controls(fitted, jaw=0.2)
    assert c["jawOpen"] > 0.9 and strongest(c) == "A" and c["A"] > 0.3


def test_width_drives_i_and_e(fitted):
    assert strongest(controls(fitted, jaw=0.1)) == "A"
    c = controls(fitted, jaw=0.1, wide=2.0)  # vowels show as the mouth opens: some jaw
    assert strongest(c) in ("I", "E") and c[strongest(c)] > 0.1
    assert c["mouthStretchLeft"] > 0.5 and c["mouthPucker"] == 0 and c["mouthFunnel"] == 0


def test_protrusion_drives_u_and_o(fitted):
    c = controls(fitted, jaw=0.1, forward=2.0)
    assert strongest(c) in ("U", "O") and c[strongest(c)] > 0.1
    assert c["mouthFunnel"] + c["mouthPucker"] > 0.3 and c["mouthStretchLeft"] == 0


def test_corner_lift_drives_smile(fitted):
    assert controls(fitted, smile=2.0)["mouthSmileLeft"] > 0.5
    assert controls(fitted, smile=-2.0)["mouthSmileLeft"] == 0


def test_cli_fits_a_model_on_the_flame_file(tmp_path):
    flame_file = tmp_path / "flame.npz"
    save_flame_npz(synthetic_flame(), flame_file)
    out = tmp_path / "map.json"
    r = subprocess.run([sys.executable, "-m", "dpt_live.cli", "fit-avatar-map", "--model", "models/demo-student",
                        "--flame", str(flame_file), "-o", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "inner lip contour 14 vertices" in r.stdout
    fit = json.loads(out.read_text())["fit"]
    load_mapping(base={"fit": fit})
    assert fit["fitted_on"]["flame"] == "flame.npz" and fit["fitted_on"]["motion"].startswith("sampled")
    bad = subprocess.run([sys.executable, "-m", "dpt_live.cli", "fit-avatar-map", "--model", "models/demo-student",
                          "--flame", str(tmp_path / "missing.pkl"), "-o", str(out)], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode != 0 and "missing.pkl" in bad.stderr and "Traceback" not in bad.stderr


def test_cli_fits_on_the_models_own_speech_motion(tmp_path):
    """--audio: the model streams the files; quiet frames (the trailing silence) give the rest."""
    import wave

    from diffposetalk.audio_io import load_audio

    speech = load_audio("clients/demo/speech.flac")[:4 * 16000]
    pcm = np.concatenate([speech / max(1e-6, np.abs(speech).max()) * 0.5, np.zeros(24000)])
    (tmp_path / "speech").mkdir()
    with wave.open(str(tmp_path / "speech" / "a.wav"), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
        w.writeframes((pcm * 32767).astype("<i2").tobytes())
    flame_file = tmp_path / "flame.npz"
    save_flame_npz(synthetic_flame(), flame_file)
    out = tmp_path / "map.json"
    r = subprocess.run([sys.executable, "-m", "dpt_live.cli", "fit-avatar-map", "--model", "models/demo-student",
                        "--flame", str(flame_file), "--audio", str(tmp_path / "speech"), "-o", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    fit = json.loads(out.read_text())["fit"]
    load_mapping(base={"fit": fit})
    assert fit["fitted_on"]["motion"].startswith("streamed: 1 clips, 137 frames")
    assert fit["flame"]["open_frames"] > 0
