"""VTuber-grade output: the measured avatar map (training/avatar_map.py) and what the VMC bridge
makes of it — VRM 0 and VRM 1.0 names, the mouth at rest, full blinks (also while paused), the
head's rest offset, eased generator resets, bone positions — checked with an independent
python-osc receiver on a real UDP socket."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from test_vmc import Receiver, blends, bones, synth_frame

from clients.vmc import VmcBridge
from clients.vmc_check import figures
from clients.vmc_map import MappingError, VmcMapper, load_mapping
from training.avatar_map import frame_visemes, gt_features, model_inputs
from training.synth.visemes import VISEMES

VOWEL_OF = {"AA": "A", "IY": "I", "UW": "U", "EH": "E", "OH": "O"}
SEQUENCE = ["sil", "PBM", "AA", "TDN", "IY", "KG", "UW", "FV", "EH", "R", "OH", "sil", "W", "AH", "CH", "Y", "TH"]


def world_frames(rng, n_per: int = 40, smile: float = 0.0):
    """(exp, pose, labels) of held visemes with SynthTalk's articulation, amplitude and noise."""
    exps, poses, labels = [], [], []
    for _ in range(n_per):
        for v in SEQUENCE:
            exp, pose = synth_frame(v, amp=rng.uniform(0.7, 1.3))
            exp[:5] += rng.normal(0, 0.02, 5)
            exp[4] += smile
            pose[3] += rng.normal(0, 0.004)
            pose[:3] = np.array([0.05, -0.03, 0.01]) + rng.normal(0, 0.01, 3)
            exps.append(exp)
            poses.append(pose)
            labels.append(v)
    return np.array(exps), np.array(poses), np.array(labels)


@pytest.fixture(scope="module")
def fit():
    """A fit of a perfect "model" (its output is the world's motion) from fit_arrays."""
    from training.avatar_map import fit_arrays

    rng = np.random.default_rng(0)
    exp, pose, lab = world_frames(rng)
    expt, poset, labt = world_frames(rng, 10)
    return fit_arrays(model_inputs(exp, pose), gt_features(exp, pose), lab, pose[:, :3],
                      model_inputs(expt, poset), gt_features(expt, poset), labt, log=lambda *_: None)


def fitted_mapping(fit, **kw):
    return load_mapping(base={"fit": json.loads(json.dumps(fit))}, **kw)  # through JSON, as served


def test_fit_recovers_the_world_and_its_vowels(fit):
    assert fit["held_out"]["r2"]["jaw"] > 0.95 and fit["held_out"]["r2"]["open"] > 0.95
    assert fit["held_out"]["vowel_accuracy_balanced"] > 0.9
    mapper = VmcMapper(fitted_mapping(fit), arkit=True)
    for viseme, expected in VOWEL_OF.items():
        out = mapper.blendshapes(*synth_frame(viseme), None)
        vis = {k: out[k] for k in "AIUEO"}
        assert max(vis, key=vis.get) == expected, (viseme, vis)
        assert vis[expected] > 0.25, (viseme, vis)
        assert out[{"A": "aa", "I": "ih", "U": "ou", "E": "ee", "O": "oh"}[expected]] == vis[expected]


def test_rest_shows_nothing_and_mouth_close_needs_an_open_jaw(fit):
    mapper = VmcMapper(fitted_mapping(fit), arkit=True)
    for viseme in ("sil", "PBM"):
        out = mapper.blendshapes(*synth_frame(viseme), None)
        assert all(out[k] < 0.05 for k in "AIUEO"), out
        assert out["mouthClose"] <= out["jawOpen"] + 1e-9 and out["mouthClose"] < 0.05
        assert out["mouthSmileLeft"] < 0.1
    assert mapper.blendshapes(*synth_frame("PBM"), None)["mouthPressLeft"] > 0.5  # pressed lips, jaw shut
    for viseme in VISEMES:
        out = mapper.blendshapes(*synth_frame(viseme), None)
        assert out["mouthClose"] <= out["jawOpen"] + 1e-9


def test_calibration_removes_a_styles_grin(fit):
    """A style that smiles all the time (the issue's big_mouth grin): after a few seconds of quiet
    frames the rest-relative smile is gone; --calibrate freezes the first seconds instead."""
    grin = 0.6
    rest_exp, rest_pose = synth_frame("sil")
    rest_exp[4] += grin
    mapper = VmcMapper(fitted_mapping(fit), arkit=True)
    assert mapper.blendshapes(rest_exp, rest_pose, None)["mouthSmileLeft"] > 0.3  # before: a grin
    for _ in range(250):  # 10 s of quiet frames
        mapper.observe(rest_exp, rest_pose)
    assert mapper.blendshapes(rest_exp, rest_pose, None)["mouthSmileLeft"] < 0.05
    fixed = VmcMapper(fitted_mapping(fit, calibrate_s=1.0), arkit=True)
    for _ in range(25):
        fixed.observe(rest_exp, rest_pose)
    open_exp, open_pose = synth_frame("AA")
    open_exp[4] += grin
    for _ in range(100):  # later frames do not move a fixed calibration
        fixed.observe(open_exp, open_pose)
    assert fixed.blendshapes(rest_exp, rest_pose, None)["mouthSmileLeft"] < 0.05
    assert max("AIUEO", key=fixed.blendshapes(open_exp, open_pose, None).get) == "A"


def test_names_blinks_and_options(fit):
    out = VmcMapper(fitted_mapping(fit)).blendshapes(*synth_frame("sil"), np.array([0.3, 0.8, 0, 0]))
    assert {"A", "I", "U", "E", "O", "Blink", "Blink_L", "Blink_R",
            "aa", "ih", "ou", "ee", "oh", "blink", "blinkLeft", "blinkRight"} <= set(out)
    assert out["Blink"] == pytest.approx(0.3) and out["blinkRight"] == pytest.approx(0.8)
    combined = VmcMapper(fitted_mapping(fit, blink_names="combined")).blendshapes(*synth_frame("sil"), None)
    assert "Blink" in combined and "Blink_L" not in combined and "blinkLeft" not in combined
    vrm0 = VmcMapper(load_mapping(base={"vrm1": False})).blendshapes(*synth_frame("sil"), None)
    assert "aa" not in vrm0 and "A" in vrm0
    for bad, needle in [({"fit": {"inputs": {"exp": 3}}}, "fit"), ({"bones": "hips"}, "bones"),
                        ({"blink": {"threshold": 2}}, "blink.threshold")]:
        with pytest.raises(MappingError, match=needle):
            load_mapping(base=bad)


def test_bone_positions_are_in_unitys_frame():
    m = VmcMapper(load_mapping())
    b = m.bones(np.zeros(6), np.zeros(4))
    assert b["LeftEye"][0][0] < 0 < b["RightEye"][0][0]  # Unity: x = the avatar's right
    assert b["Head"][0][1] > 0 and b["Neck"][0][1] > 0  # each above its parent
    assert set(VmcMapper(load_mapping(bones="head")).bones(np.zeros(6), np.zeros(4))) == {"Neck", "Head"}
    assert VmcMapper(load_mapping(bones="none")).bones(np.zeros(6), np.zeros(4)) == {}


def _run(bridge, frames, receiver, rate=60.0, extra_s=0.0):
    """Push (t, exp, pose, eyes, reset) frames as they come (no delay) and tick at ``rate`` over
    the stream plus ``extra_s`` without frames; returns the received bundles as figures() wants."""
    end = frames[-1][0] + extra_s
    ticks = np.arange(frames[0][0], end, 1.0 / rate)
    fi = 0
    before = len(receiver.packets)
    for k, t in enumerate(ticks):
        while fi < len(frames) and frames[fi][0] <= t:
            ft, exp, pose, eyes, reset = frames[fi]
            bridge.push(exp, pose, eyes, audio_time=ft, now=ft, reset=reset)
            fi += 1
        bridge.tick(t)
        if k % 10 == 9:  # let the receiver keep up: a burst of UDP bundles overflows its socket buffer
            receiver.wait(before + k + 1)
    packets = receiver.wait(before + len(ticks))[before:]
    assert len(packets) == len(ticks)
    return [(t, blends(p), bones(p)) for t, p in zip(ticks, packets)], ticks


def test_bridge_blinks_fully_also_while_paused_and_eases_resets(fit):
    """Streamed frames: 25 fps, a head offset of 10 degrees with small nods, the procedural eyes'
    150 ms blinks (a 25 fps sample rarely meets the lid's peak), then the stream pauses for 10 s and
    resumes with a reset whose head sits 6 degrees elsewhere."""
    receiver = Receiver()
    try:
        bridge = VmcBridge(("127.0.0.1", receiver.port), VmcMapper(fitted_mapping(fit), arkit=True), rate=60, delay=0.0)
        frames, resume = paused_stream()
        got, ticks = _run(bridge, frames, receiver)
        f = figures(got, [resume])
        assert f["vrm0_names"] and f["vrm1_names"]
        assert f["Blink_max"] >= 0.98 and f["eyeBlinkLeft_max"] >= 0.98 and f["blinkLeft_max"] >= 0.98
        paused = [b["Blink"] for t, b, _ in got if 11.0 <= t < resume]
        assert max(paused) >= 0.98, "no blink during the 9 s without frames"
        assert f["arkit_rest_smile_median"] <= 0.1 and f["arkit_rest_mouthClose_median"] <= 0.05
        assert f["head_jump_deg_max_at_reset"] < 1.0, f
        assert 0.5 < max(_head_deg(bn) for t, _, bn in got if t >= resume + 1.0) < 8  # it got there, eased
        early = [_head_deg(bn) for t, _, bn in got if 5.0 <= t < 10.0]
        assert np.median(early) <= 3.0 and np.std(early) >= 0.3  # rest offset removed, nods kept
    finally:
        receiver.close()


def paused_stream():
    """10 s of 25 fps frames (head offset 10 degrees with nods, procedural eyes), a 10 s pause,
    then 2 s after a generator reset with the head 6 degrees further down; (frames, resume time)."""
    from streaming.eyes import ProceduralEyes

    eyes = ProceduralEyes(seed=1)
    frames = []
    offset = np.array([math.radians(10), 0.0, 0.0])
    for i in range(250):
        t = i * 0.04
        pose = np.zeros(6)
        pose[:3] = offset + np.array([0.05 * math.sin(2 * math.pi * 0.5 * t), 0.04 * math.sin(2 * math.pi * 0.3 * t), 0])
        frames.append((t, synth_frame("sil")[0], pose, eyes.next(), False))
    resume = 20.0
    for i in range(50):
        pose = np.zeros(6)
        pose[:3] = offset + np.array([math.radians(6), 0, 0])
        frames.append((resume + i * 0.04, synth_frame("sil")[0], pose, None, i == 0))
    return frames, resume


def test_without_the_ease_a_reset_jumps(fit):
    """The control for the ease above: the same stream with reset_ease_ms = 0 jumps by degrees."""
    receiver = Receiver()
    try:
        bridge = VmcBridge(("127.0.0.1", receiver.port), VmcMapper(fitted_mapping(fit, reset_ease_ms=0.0)),
                           rate=60, delay=0.0)
        frames, resume = paused_stream()
        got, _ = _run(bridge, frames[240:], receiver)
        assert figures(got, [resume])["head_jump_deg_max_at_reset"] > 3.0
    finally:
        receiver.close()


def test_fit_refuses_data_without_timings(tmp_path, tiny_model_dir):
    from diffposetalk.errors import UserError
    from training.avatar_map import fit_avatar_map

    (tmp_path / "lmdb").mkdir()
    (tmp_path / "lmdb" / "data.mdb").write_bytes(b"")  # an lmdb without SynthTalk's phonemes/
    with pytest.raises(UserError, match="phonemes"):
        fit_avatar_map(tiny_model_dir, tmp_path)


def _head_deg(bone_map) -> float:
    from clients.vmc_check import _angle_deg, _qmul

    return _angle_deg(_qmul(bone_map["Neck"][1], bone_map["Head"][1]))


def test_frame_visemes_follow_the_timings():
    timings = {"anticipation": 0.04, "phonemes": [["_", 0.0, 0.2], ["m", 0.2, 0.3], ["a", 0.3, 0.5], ["i:", 0.5, 0.7]]}
    labels = frame_visemes(timings, 20)
    assert labels[0] == "sil" and labels[5] == "PBM" and labels[9] == "AA" and labels[14] == "IY"
    assert labels[18] == "sil"
    assert labels[4] == "PBM"  # 0.16 s + 0.04 s anticipation: the lips are already closing
