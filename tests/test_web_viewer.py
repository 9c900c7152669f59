"""The browser viewer in real headless Chromium, served by a real `dpt-live serve`: frames arrive
and render (proxy head and FLAME mesh), the FLAME vertex shader matches diffposetalk.flame.Flame, the HUD
controls reach the server, the microphone streams upstream, and the page reconnects by itself."""

from __future__ import annotations

import io
import pathlib
import time

import numpy as np
import pytest
from test_flame import write_flame2020
from test_record import TOKEN, LiveServerProcess, fast_model_dir  # noqa: F401 - fixture

from server.flame_asset import FlameAssetError, build_flame_asset, parse_flame_asset

CHROMIUM = pathlib.Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is not installed "
                                "(make system installs Debian's chromium)")

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--use-angle=swiftshader",
                 "--enable-unsafe-swiftshader", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run",
                 # a fake microphone (a tone) that needs no permission prompt
                 "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]


# --- a synthetic, head-like FLAME model (real FLAME files cannot be downloaded or committed) -----

def synthetic_head(rows: int = 18, cols: int = 24, seed: int = 0) -> dict[str, np.ndarray]:
    """FLAME pickle keys for an ellipsoid head: a jaw-weighted lower face, smooth shape/expression
    fields (a few mm), pose correctives, joints regressed from rings of vertices."""
    rng = np.random.default_rng(seed)
    radii = np.array([0.078, 0.1, 0.09])
    dirs = [[0.0, 1.0, 0.0]]
    for i in range(1, rows):
        th = np.pi * i / rows
        dirs += [[np.sin(th) * np.sin(2 * np.pi * j / cols), np.cos(th), np.sin(th) * np.cos(2 * np.pi * j / cols)]
                 for j in range(cols)]
    dirs.append([0.0, -1.0, 0.0])
    d = np.array(dirs)
    n_verts = len(d)
    verts = d * radii

    def ring(i):  # vertex ids of latitude ring i (1..rows-1)
        return 1 + (i - 1) * cols + np.arange(cols)

    faces = []
    for j in range(cols):
        k = (j + 1) % cols
        faces += [[0, ring(1)[j], ring(1)[k]], [n_verts - 1, ring(rows - 1)[k], ring(rows - 1)[j]]]
    for i in range(1, rows - 1):
        a, b = ring(i), ring(i + 1)
        for j in range(cols):
            k = (j + 1) % cols
            faces += [[a[j], b[j], b[k]], [a[j], b[k], a[k]]]

    def ring_near(y):
        heights = np.cos(np.pi * np.arange(1, rows) / rows) * radii[1]
        return ring(int(np.argmin(np.abs(heights - y))) + 1)

    j_regressor = np.zeros((5, n_verts))
    for joint, y in ((0, -0.085), (1, -0.06), (2, -0.02)):  # global, neck, jaw: ring centres
        j_regressor[joint, ring_near(y)] = 1
    for joint, side in ((3, 1), (4, -1)):  # eyes: surface patches in front
        near = np.argsort(np.linalg.norm(verts - [0.03 * side, 0.02, 0.085], axis=1))[:3]
        j_regressor[joint, near] = 1
    j_regressor /= j_regressor.sum(1, keepdims=True)

    jaw = 1 / (1 + np.exp((verts[:, 1] + 0.02) / 0.006)) / (1 + np.exp(-(verts[:, 2] + 0.01) / 0.01))
    weights = np.zeros((n_verts, 5))
    weights[:, 2], weights[:, 1], weights[:, 0] = jaw, 0.3 * (1 - jaw), 0.7 * (1 - jaw)

    basis = np.stack([np.ones(n_verts), *d.T, d[:, 0] * d[:, 1], d[:, 1] * d[:, 2], *(d.T ** 2)], 1)

    def fields(n, scale):
        return np.einsum("vb,bcn->vcn", basis, rng.normal(size=(basis.shape[1], 3, n)) * scale)

    shapedirs = np.concatenate([fields(300, 0.002), fields(100, 0.001)], 2)
    lips = np.exp(-((verts[:, 1] + 0.02) ** 2) / 4e-4 - verts[:, 0] ** 2 / 2e-3) * (verts[:, 2] > 0.03)
    shapedirs[:, 1, 300] = -0.006 * lips * np.sign(verts[:, 1] + 0.02 + 1e-9)  # exp 0 parts the lips
    return {"v_template": verts, "shapedirs": shapedirs, "posedirs": fields(36, 5e-4),
            "J_regressor": j_regressor, "weights": weights,
            "kintree_table": np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.int64),
            "f": np.array(faces, dtype=np.uint32)}


@pytest.fixture(scope="module")
def head_pkl(tmp_path_factory):
    path = tmp_path_factory.mktemp("flame") / "head_flame2020.pkl"
    write_flame2020(path, synthetic_head())
    return path


# --- the asset format -------------------------------------------------------------------------

def test_flame_asset_round_trip_and_skinning_reference(head_pkl):
    import torch

    from diffposetalk.flame import Flame, axis_angle_to_matrix, load_flame

    data = load_flame(head_pkl)
    shape = np.random.default_rng(3).normal(size=100)
    blob = build_flame_asset(data, shape)
    a = parse_flame_asset(blob)
    b = parse_flame_asset(build_flame_asset(Flame(data), shape))  # a Flame module gives the same asset
    for key in ("verts", "faces", "expdirs", "posedirs", "weights", "joints", "jexpdirs", "parents"):
        assert np.allclose(a[key].astype(np.float64), b[key].astype(np.float64), atol=1e-6), key
    assert (a["V"], a["J"], a["K"]) == (data.n_vertices, 5, 50)
    assert a["verts"].shape == (a["V"], 3) and a["faces"].dtype == np.uint32
    assert a["expdirs"].dtype == np.float16 and a["expdirs"].shape == (50, a["V"], 3)

    # The documented LBS over the asset's arrays reproduces diffposetalk.flame.Flame.
    rng = np.random.default_rng(4)
    exp, pose = rng.normal(size=50), rng.normal(size=6) * 0.3
    with torch.no_grad():
        rots = axis_angle_to_matrix(torch.tensor(np.stack([pose[:3], np.zeros(3), pose[3:], np.zeros(3),
                                                            np.zeros(3)]))).numpy()
        ref = Flame(data)(torch.tensor(shape, dtype=torch.float32), torch.tensor(exp[None], dtype=torch.float32),
                          torch.tensor(pose[None], dtype=torch.float32))[0].numpy()
    feat = (rots[1:] - np.eye(3)).reshape(-1)
    rest = (a["verts"] + np.einsum("k,kvc->vc", exp, a["expdirs"].astype(np.float64))
            + np.einsum("p,pvc->vc", feat, a["posedirs"].astype(np.float64)))
    joints = a["joints"] + np.einsum("k,kjc->jc", exp, a["jexpdirs"])
    G, T = [rots[0]], [joints[0]]
    for j in range(1, 5):
        p = a["parents"][j]
        T.append(G[p] @ (joints[j] - joints[p]) + T[p])
        G.append(G[p] @ rots[j])
    posed = sum(a["weights"][:, j:j + 1] * ((rest - joints[j]) @ G[j].T + T[j]) for j in range(5))
    assert np.abs(posed - ref).max() < 1e-4


def test_flame_asset_errors(head_pkl):
    from diffposetalk.flame import load_flame

    data = load_flame(head_pkl)
    blob = build_flame_asset(data, np.zeros(100))
    with pytest.raises(FlameAssetError, match="magic"):
        parse_flame_asset(b"X" * len(blob))
    with pytest.raises(FlameAssetError, match="do not fit"):
        parse_flame_asset(blob[: len(blob) // 2])
    with pytest.raises(FlameAssetError, match="NaN"):
        build_flame_asset(data, np.full(100, np.nan))
    with pytest.raises(FlameAssetError, match="n_exp=200"):
        build_flame_asset(data, np.zeros(100), n_exp=200)


# --- real server + real Chromium --------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def servers(fast_model_dir, head_pkl):  # noqa: F811 - fixture
    """Two real servers, started side by side: one without FLAME (proxy head), one with it."""
    procs = {"proxy": LiveServerProcess(fast_model_dir).launch(),
             "flame": LiveServerProcess(fast_model_dir, "--flame", str(head_pkl)).launch()}
    try:
        for srv in procs.values():
            srv.wait_ready()
        yield procs
    finally:
        for srv in procs.values():
            srv.stop()


@pytest.fixture(scope="module")
def proxy_server(servers):
    return servers["proxy"]


@pytest.fixture(scope="module")
def flame_server(servers):
    return servers["flame"]


def open_viewer(browser, server, token=TOKEN, query=""):
    page = browser.new_page(viewport={"width": 480, "height": 360})
    page.errors = []
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.goto(f"{server.http_url}/?token={token}{query}")
    return page


def stats(page, *keys):
    return page.evaluate(f"() => ({{{', '.join(f'{k}: window.dptViewer.{k}' for k in keys)}}})")


def canvas_image(page) -> np.ndarray:
    from PIL import Image

    page.add_style_tag(content="#hud { display: none }")  # only the rendering, not the counters
    png = page.locator("#view").screenshot()
    return np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float64)


def assert_renders_motion(page, mode):
    page.wait_for_function("() => window.dptViewer && window.dptViewer.framesReceived >= 15 "
                           "&& window.dptViewer.framesRendered >= 10", timeout=60000)
    s = stats(page, "mode", "state", "lastSeq", "dropped", "renderCount", "errors")
    assert s["mode"] == mode and s["state"] == "connected" and s["lastSeq"] >= 14, s
    assert s["errors"] == [] and page.errors == []
    px = page.evaluate("() => window.dptViewer.pixelStats()")
    assert px["width"] > 100 and px["std"] > 10, px  # a lit head on a dark background, not uniform
    first = canvas_image(page)
    assert first.std() > 10
    for _ in range(20):  # a loaded machine may render a few frames late: look again for a while
        time.sleep(0.8)
        second = canvas_image(page)
        if np.abs(second - first).mean() > 0.05:
            break
    assert np.abs(second - first).mean() > 0.05, "the canvas did not change over time"
    assert stats(page, "renderCount")["renderCount"] > s["renderCount"]


def test_proxy_viewer_renders_frames(browser, proxy_server):
    page = open_viewer(browser, proxy_server)
    assert_renders_motion(page, "proxy")
    hud = page.inner_text("#hud")
    assert "connected" in hud and "latency" in hud and "proxy head" in hud
    assert "audio_time" in page.get_attribute("#hud-latency", "title")  # the definition is on the page
    s = stats(page, "latencyMs", "fps", "antialias")
    assert 0 <= s["latencyMs"] < 5000 and s["fps"] > 0
    # this Chromium rasterises WebGL in software (SwiftShader): no multisampling unless asked for
    assert s["antialias"] is False
    page.close()
    page = open_viewer(browser, proxy_server, query="&aa=1")
    assert_renders_motion(page, "proxy")
    assert stats(page, "antialias")["antialias"] is True
    page.close()


def test_style_selector_and_server_errors(browser, proxy_server):
    page = open_viewer(browser, proxy_server)
    page.wait_for_function("() => window.dptViewer && window.dptViewer.connected", timeout=60000)
    options = page.eval_on_selector_all("#hud-style option", "els => els.map(e => e.value)")
    assert options == ["", "calm"]  # (model default) + hello.styles of the tiny model
    page.select_option("#hud-style", "calm")
    page.wait_for_function("() => window.dptViewer.style === 'calm'", timeout=20000)
    page.evaluate("() => window.dptViewer.sendControl({type: 'style', name: 'no_such_style'})")
    page.wait_for_function("() => window.dptViewer.errors.some(e => e.includes('no_such_style'))", timeout=20000)
    assert stats(page, "connected")["connected"]  # a refused style keeps the connection
    page.close()


def test_microphone_streams_upstream(browser, proxy_server):
    page = open_viewer(browser, proxy_server)
    page.wait_for_function("() => window.dptViewer && window.dptViewer.framesReceived > 0", timeout=60000)
    page.click("#hud-mic")
    page.wait_for_function("() => window.dptViewer.micActive && window.dptViewer.source === 'upstream' "
                           "&& window.dptViewer.micSamples > 8000", timeout=30000)
    seq = stats(page, "lastSeq")["lastSeq"]
    page.wait_for_function(f"() => window.dptViewer.lastSeq > {seq + 10}", timeout=30000)  # frames from the mic
    page.click("#hud-mic")
    page.wait_for_function("() => !window.dptViewer.micActive && window.dptViewer.source === 'file'", timeout=30000)
    assert page.errors == []
    page.close()


def test_refused_token_is_explained(browser, proxy_server):
    page = open_viewer(browser, proxy_server, token="wrong")
    # The browser cannot see the 401; the page infers it from /healthz answering and says so.
    page.wait_for_function("() => window.dptViewer && window.dptViewer.state === 'reconnecting' "
                           "&& window.dptViewer.stateDetail.includes('refused by the server')", timeout=30000)
    assert stats(page, "framesReceived")["framesReceived"] == 0
    page.close()


def skin_in_browser(page, exp, pose, gaze):
    return np.asarray(page.evaluate("([e, p, y]) => window.dptViewer.debugSkin(e, p, y)",
                                    [exp.tolist(), pose.tolist(), [0, 0, *gaze]])).reshape(-1, 3)


def test_flame_viewer_renders_and_matches_flame(browser, flame_server, head_pkl):
    import torch

    from diffposetalk.flame import Flame, load_flame

    page = open_viewer(browser, flame_server)
    page.wait_for_function("() => window.dptViewer && window.dptViewer.mode === 'flame'", timeout=60000)
    assert_renders_motion(page, "flame")
    assert "FLAME" in page.inner_text("#hud-mode")
    # Software WebGL (SwiftShader here) sums the blendshapes in JS; ?blend=gpu forces the shader path.
    assert stats(page, "flame")["flame"]["blend"] == "cpu"
    gpu = open_viewer(browser, flame_server, query="&blend=gpu")
    gpu.wait_for_function("() => window.dptViewer && window.dptViewer.mode === 'flame' "
                          "&& window.dptViewer.framesRendered > 3", timeout=60000)
    assert stats(gpu, "flame")["flame"]["blend"] == "gpu" and gpu.errors == []

    # The live vertex shader (read back by transform feedback) against diffposetalk.flame.Flame with the
    # session's identity shape from the hello.
    shape = np.asarray(page.evaluate("() => window.dptViewer.hello.template.shape"), np.float32)
    rng = np.random.default_rng(7)
    exp = rng.normal(size=50).astype(np.float32)
    pose = (rng.normal(size=6) * 0.3).astype(np.float32)
    yaw, pitch = 0.2, -0.1
    with torch.no_grad():
        eye = torch.tensor([[-pitch, yaw, 0.0] * 2])
        ref = Flame(load_flame(head_pkl))(torch.from_numpy(shape), torch.from_numpy(exp)[None],
                                          torch.from_numpy(pose)[None], eye_pose=eye)[0].numpy()
    for p in (page, gpu):
        got = skin_in_browser(p, exp, pose, (yaw, pitch))
        assert got.shape == ref.shape
        assert np.abs(got - ref).max() < 1e-4  # fp16 blendshapes: ~10 um on a 20 cm head
    # and a different frame gives different vertices (the comparison is not vacuous)
    assert np.abs(skin_in_browser(gpu, exp * 0, pose * 0, (0, 0)) - ref).max() > 1e-3
    gpu.close()
    page.close()


def test_viewer_reconnects_by_itself(browser, proxy_server):
    page = open_viewer(browser, proxy_server)
    page.wait_for_function("() => window.dptViewer && window.dptViewer.framesReceived > 5", timeout=60000)
    received = stats(page, "framesReceived")["framesReceived"]
    # A malformed message makes the server close this connection (1008); the page backs off and
    # comes back with a new hello and more frames.
    page.evaluate("() => window.dptViewer.sendRaw('{not json')")
    page.wait_for_function("() => window.dptViewer.state === 'reconnecting'", timeout=20000)
    assert "1008" in stats(page, "stateDetail")["stateDetail"]
    page.wait_for_function(f"() => window.dptViewer.connects >= 2 && window.dptViewer.framesReceived > {received + 5}",
                           timeout=30000)
    assert stats(page, "state")["state"] == "connected"
    page.close()
