"""The browser viewer's VRM avatar in real headless Chromium: a small VRM made in code
(tests/vrm_builder.py), `dpt-live serve --avatar` with the bundled student and its measured map,
three.js and @pixiv/three-vrm from node_modules (package.json; `make test` installs them). The
avatar's expression weights move with speech and rest at zero in silence, and the viewer's
mapping is the VMC bridge's."""

from __future__ import annotations

import pathlib
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from test_record import TOKEN, LiveServerProcess
from test_web_viewer import CHROMIUM, browser  # noqa: F401 - fixture
from vrm_builder import build_vrm

REPO = pathlib.Path(__file__).resolve().parent.parent
STUDENT = REPO / "models" / "demo-student"
SPEECH_S, SILENCE_S = 5.0, 4.0
VOWELS = ("aa", "ih", "ou", "ee", "oh")

pytestmark = [
    pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is not installed (make system)"),
    pytest.mark.skipif(not (REPO / "node_modules" / "@pixiv" / "three-vrm").is_dir(),
                       reason="the viewer's npm packages are not installed (make test runs npm ci)"),
]


@pytest.fixture(scope="module")
def vrm_server(tmp_path_factory):
    import soundfile as sf

    tmp = tmp_path_factory.mktemp("vrm")
    (tmp / "head.vrm").write_bytes(build_vrm())
    speech, sr = sf.read(REPO / "clients" / "demo" / "speech.flac", dtype="float32")
    audio = np.concatenate([speech[:int(SPEECH_S * sr)], np.zeros(int(SILENCE_S * sr), np.float32)])
    sf.write(tmp / "speech_pause.wav", audio, sr)
    srv = LiveServerProcess(STUDENT, "--avatar", str(tmp / "head.vrm"), "--audio", str(tmp / "speech_pause.wav")).start()
    yield srv
    srv.stop()


def open_vrm_page(browser, server):  # noqa: F811 - fixture
    page = browser.new_page(viewport={"width": 480, "height": 360})
    page.errors = []
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.goto(f"{server.http_url}/?token={TOKEN}")
    page.wait_for_function("() => window.dptViewer && window.dptViewer.mode === 'vrm' "
                           "&& window.dptViewer.framesRendered > 10", timeout=60000)
    return page


def test_vrm_expressions_move_with_speech_and_rest_in_silence(browser, vrm_server):  # noqa: F811 - fixture
    page = open_vrm_page(browser, vrm_server)
    s = page.evaluate("() => ({vrm: window.dptViewer.vrm, map: window.dptViewer.avatarMap, errors: window.dptViewer.errors})")
    assert s["map"] == "measured" and s["errors"] == [], s
    assert set(s["vrm"]["expressions"]) == {*VOWELS, "blink", "blinkLeft", "blinkRight"}
    rows = []
    end = time.monotonic() + 2 * (SPEECH_S + SILENCE_S)  # two loops of the file
    while time.monotonic() < end:
        rows.append(page.evaluate("() => [window.dptViewer.vrmAudioTime, window.dptViewer.vrmExpressions()]"))
        time.sleep(0.04)
    assert page.errors == []
    t = np.array([r[0] for r in rows]) % (SPEECH_S + SILENCE_S)
    vowels = np.array([[r[1][v] for v in VOWELS] for r in rows])
    speaking = (t > 0.5) & (t < SPEECH_S - 0.3)
    silent = (t > SPEECH_S + 1.0) & (t < SPEECH_S + SILENCE_S - 0.3)
    assert speaking.sum() > 20 and silent.sum() > 20, (speaking.sum(), silent.sum())
    assert vowels[speaking].max() > 0.2 and vowels[speaking].max(1).std() > 0.03  # the mouth moves
    assert len({int(k) for k in vowels[speaking].argmax(1)[vowels[speaking].max(1) > 0.1]}) >= 2  # not one shape
    assert vowels[silent].max() < 0.05, vowels[silent].max(0)  # and rests at zero
    page.close()


def test_viewer_mapping_is_the_bridges(browser, vrm_server):  # noqa: F811 - fixture
    from clients.vmc_map import VmcMapper, load_mapping

    page = open_vrm_page(browser, vrm_server)
    served = page.evaluate("() => window.dptViewer.hello.avatar_map")
    assert served and served["fit"]["vowels"] == ["A", "I", "U", "E", "O"]
    rng = np.random.default_rng(0)
    stats = np.load(STUDENT / "stats.npz")
    for _ in range(6):
        exp = stats["exp_mean"] + rng.normal(0, 1, 50) * stats["exp_std"]  # frames like the model's
        pose = np.zeros(6)
        pose[3] = rng.uniform(0, 0.2)
        js = page.evaluate("([e, p]) => window.dptViewer.avatarMouth(e, p)", [exp.tolist(), pose.tolist()])
        py = VmcMapper(load_mapping(base=served)).blendshapes(exp, pose, None)
        for v0, v1 in zip("AIUEO", VOWELS):
            assert js[v1] == pytest.approx(py[v0], abs=1e-6), (v0, js, py)
    page.close()


def test_vendor_and_avatar_routes(vrm_server):
    def get(path):
        try:
            with urllib.request.urlopen(f"{vrm_server.http_url}{path}", timeout=10) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    status, body = get("/vendor/three-vrm/lib/three-vrm.module.js")
    assert status == 200 and b"VRMLoaderPlugin" in body
    assert get("/vendor/left-pad/index.js")[0] == 404  # only the viewer's packages
    assert get("/vendor/three/../../package.json")[0] == 404
    assert get("/avatar.vrm")[0] == 401  # the avatar needs the token, as the stream does
    status, body = get(f"/avatar.vrm?token={TOKEN}")
    assert status == 200 and body[:4] == b"glTF"
