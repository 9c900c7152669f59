"""`dpt-live bench` on tiny models and two seconds of audio: the JSON, markdown and PNG it writes,
the numbers' consistency, student rows against their teacher's reference, the random-weight
architecture cache (in the user cache by default) and bad input; `dpt-live stream-bench` as a
preset of the same benchmark family."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from dpt_live.cli import main
from tests.conftest import make_tiny_model_dir

ROW_KEYS = {"model", "kind", "backend", "precision", "engine", "hop_ms", "lookahead_ms", "context_ms",
            "denoiser_steps", "status", "rtf", "stage_ms", "stage_rtf", "step_ms", "replayed_latency_ms",
            "measured_latency_ms", "worst_latency_ms", "passes_per_step", "passes_per_audio_s", "gflop_per_audio_s",
            "speedup_time", "speedup_compute", "targets_met"}
REF_KEYS = {"model", "audio_seconds", "windows", "diffusion_steps", "steps_timed", "passes_per_step", "seconds",
            "denoise_s", "other_s", "rtf", "passes_per_audio_s", "gflop_per_audio_s"}


@pytest.fixture(scope="module", autouse=True)
def graph_cache(tmp_path_factory):
    """Exported ONNX graphs go to a temporary cache, not the user's."""
    old = os.environ.get("DPT_LIVE_CACHE")
    os.environ["DPT_LIVE_CACHE"] = str(tmp_path_factory.mktemp("dpt-cache"))
    yield
    if old is None:
        del os.environ["DPT_LIVE_CACHE"]
    else:
        os.environ["DPT_LIVE_CACHE"] = old


@pytest.fixture(scope="module")
def bench_run(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    rc = main(["bench", "--archs", "none", "--model", str(tiny_model_dir), "--backends", "torch,onnxruntime,tensorrt",
               "--steps", "1,2", "--windows", "80/80/800", "--seconds", "1.6", "--reference-seconds", "1",
               "--clock", "wall", "--json", str(out / "r.json"),
               "--markdown", str(out / "r.md"), "--plot", str(out / "r.png")])
    return rc, out


def test_json_report(bench_run):
    rc, out = bench_run
    assert rc == 0
    r = json.loads((out / "r.json").read_text())
    assert {"settings", "machine", "references", "rows", "failed"} <= set(r)
    assert r["settings"]["audio_seconds"] == 1.6 and r["settings"]["clock"] == "wall"
    (ref,) = r["references"]
    assert REF_KEYS <= set(ref)
    # 1 s of audio = one 100-frame window: 20 steps x 3 guided passes (audio + style CFG)
    assert ref["windows"] == 1 and ref["steps_timed"] == 20 and ref["passes_per_step"] == 3
    assert ref["passes_per_audio_s"] == pytest.approx(60)

    rows = r["rows"]
    assert [(x["backend"], x["denoiser_steps"]) for x in rows] == [
        ("torch", 1), ("torch", 2), ("onnxruntime", 1), ("onnxruntime", 2), ("tensorrt", 1), ("tensorrt", 2)]
    for row in rows:
        assert row["status"] in ("ok", "skipped"), row
        if row["status"] == "skipped":  # e.g. no GPU / no TensorRT here: the reason says which
            assert "tensorrt" in row["reason"].lower()
    assert "onnxruntime" in rows[2]["engine"] and rows[0]["engine"].startswith("torch")
    for row in rows[:4]:
        assert row["status"] == "ok" and ROW_KEYS <= set(row)
        steps = row["steps_run"]
        assert steps == 20  # 1.6 s / 80 ms hop
        assert row["passes_per_step"] == 3 * row["denoiser_steps"]
        assert row["passes_per_audio_s"] == pytest.approx(steps * row["passes_per_step"] / 1.6)
        st = row["stage_ms"]
        assert st["features"] > 0 and st["denoise"] > 0
        assert sum(st.values()) == pytest.approx(row["step_ms"]["mean"], abs=0.05)
        assert row["rtf"] == pytest.approx(sum(row["stage_rtf"].values()), rel=1e-6)
        # every frame waits at least for its lookahead audio
        assert row["worst_latency_ms"] >= 80 and row["measured_latency_ms"] is None
        assert row["speedup_compute"] == pytest.approx(ref["gflop_per_audio_s"] / row["gflop_per_audio_s"])
        assert row["speedup_time"] == pytest.approx(ref["rtf"] / row["rtf"])
        assert set(row["targets_met"]) == {"rtf", "latency", "compute_speedup"}
    # two denoiser steps cost more compute than one (same encoder, twice the passes); the backend
    # runs the same networks
    assert rows[1]["gflop_per_audio_s"] > rows[0]["gflop_per_audio_s"]
    assert rows[2]["gflop_per_audio_s"] == pytest.approx(rows[0]["gflop_per_audio_s"])


def test_markdown_and_plot(bench_run):
    _, out = bench_run
    md = (out / "r.md").read_text()
    lines = md.splitlines()
    assert sum(" | torch | " in ln for ln in lines) == 2
    assert sum(" | onnxruntime | " in ln for ln in lines) == 2
    assert any(ln.startswith("| model | backend | steps | hop/la/ctx ms | RTF |") for ln in lines)
    trt = [x for x in json.loads((out / "r.json").read_text())["rows"] if x["backend"] == "tensorrt"]
    # rows skipped for one reason (e.g. no TensorRT here) share one line
    assert sum(" | tensorrt | " in ln for ln in lines) == (1 if all(x["status"] == "skipped" for x in trt) else 2)
    assert "Reference offline sampler" in md and "| 20 of 20 × 3 passes |" in md
    # every table line of a table has the same number of cells as its header
    for block in md.split("\n\n"):
        rows = [ln for ln in block.splitlines() if ln.startswith("|")]
        if rows:
            assert len({ln.count(" | ") for ln in rows if not ln.startswith("|---")}) == 1, block
    png = (out / "r.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_concurrent_sessions(tiny_model_dir, tmp_path):
    rc = main(["bench", "--archs", "none", "--model", str(tiny_model_dir), "--backends", "torch", "--steps", "1",
               "--windows", "80/80/800", "--seconds", "1.6", "--reference-seconds", "0", "--sessions", "2",
               "--json", str(tmp_path / "r.json"), "--markdown", str(tmp_path / "r.md")])
    assert rc == 0
    (row,) = json.loads((tmp_path / "r.json").read_text())["rows"]
    c = row["concurrent"]
    assert c["n"] == 2 and len(c["per_session"]) == 2 and 0 <= c["within_budget"] <= c["keep_up"] <= 2
    assert all(p["rtf"] > 0 and p["worst_latency_ms"] >= 80 for p in c["per_session"])
    assert c["keep_up"] == sum(p["rtf"] < 1 for p in c["per_session"])
    assert "| tiny | torch | 1 | 80/80/800 | 2 | " in (tmp_path / "r.md").read_text()
    # the process's CPU per second of one stream (two streams did real work) and the load it ran at
    assert 0 < c["cpu_per_stream_s"] < 50 and c["load_average"] >= 0


def test_students_use_their_teachers_reference(tmp_path):
    student = make_tiny_model_dir(tmp_path / "student", kind="student", student_steps=1)
    rc = main(["bench", "--archs", "tiny+student", "--cache-dir", str(tmp_path / "cache"), "--model",
               str(student), "--backends", "torch", "--steps", "2", "--windows", "80/80/400", "--seconds", "1.5",
               "--reference-seconds", "1", "--reference-steps", "4", "--json", str(tmp_path / "r.json")])
    assert rc == 0
    r = json.loads((tmp_path / "r.json").read_text())
    # one reference run: the variant's base architecture, built in the cache although it is not
    # measured itself; 4 of its 20 steps timed and scaled
    (ref,) = r["references"]
    assert ref["model"] == "tiny" and ref["steps_timed"] == 4 and ref["passes_per_audio_s"] == pytest.approx(60)
    assert (tmp_path / "cache" / "tiny" / "config.json").is_file()
    assert (tmp_path / "cache" / "tiny+student" / "config.json").is_file()
    variant, stud = r["rows"]
    # the arch variant is compared with its base, the student directory with the teacher of the
    # same network sizes
    assert variant["model"] == "tiny+student" and variant["reference"] == "tiny"
    assert stud["kind"] == "student" and stud["reference"] == "tiny"
    assert stud["denoiser_steps"] == 1 and stud["passes_per_step"] == 1
    assert variant["passes_per_step"] == 1 and variant["speedup_compute"] > 1


def test_random_architecture_is_built_once(tmp_path):
    from bench.archs import arch_model_dir

    d = arch_model_dir("tiny", tmp_path)
    assert (d / "config.json").is_file() and (d / "styles" / "default.npy").is_file()
    stamp = (d / "weights.safetensors").stat().st_mtime_ns
    assert arch_model_dir("tiny", tmp_path) == d
    assert (d / "weights.safetensors").stat().st_mtime_ns == stamp
    (d / "config.json").write_text((d / "config.json").read_text().replace('"n_layers": 2', '"n_layers": 3'))
    arch_model_dir("tiny", tmp_path)  # a stale cache (config differs) is rebuilt
    assert '"n_layers": 2' in (d / "config.json").read_text()
    assert not list(tmp_path.glob(".*partial"))


@pytest.mark.parametrize("args, message", [
    (["--windows", "80/x"], "--windows"),
    (["--windows", "50/80"], "multiple of 40"),
    (["--backends", "torch,cuda"], "unknown backend 'cuda'"),
    (["--steps", "0"], "--steps"),
    (["--archs", "huge"], "unknown architecture 'huge'"),
    (["--clock", "cpu", "--threads", "2"], "--threads 1"),
    (["--clock", "cpu", "--realtime"], "--realtime"),
    (["--audio", "/nonexistent.wav"], "not found"),
])
def test_bad_input_is_named(args, message, capsys, tmp_path):
    rc = main(["bench", "--archs", "none", "--model", str(tmp_path)] + args)
    assert rc == 2
    assert message in capsys.readouterr().err


def test_realtime_run_measures_latency(tiny_model_dir, tmp_path):
    rc = main(["bench", "--archs", "none", "--model", str(tiny_model_dir), "--backends", "torch", "--steps", "1",
               "--windows", "80/40/400", "--audio", "synthetic", "--seconds", "1.2", "--reference-seconds", "0",
               "--realtime", "--json", str(tmp_path / "r.json")])
    assert rc == 0
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["references"] == []
    (row,) = r["rows"]
    lat = row["measured_latency_ms"]
    assert lat is not None and row["worst_latency_ms"] == lat["max"]
    assert lat["max"] >= 40 and row["wall_s"] >= 1.1  # fed at the speed of speech
    assert "speedup_time" not in row and np.isfinite(row["gflop_per_audio_s"])


def test_stream_bench_is_a_preset_of_bench(tiny_model_dir, tmp_path, capsys):
    """stream-bench's rows come out of the shared runner: `bench --fidelity` on the same model,
    audio, sampler, style and window gives the same (deterministic) seams and fidelity."""
    rc = main(["stream-bench", "--model", str(tiny_model_dir), "--seconds", "1.6", "--grid", "80/80/800,160/80/400",
               "--style", "calm", "--json", str(tmp_path / "grid.json")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "| model | hop/la/ctx ms | RTF | step p50/p95/p99 ms | encoder p50 ms |" in out
    assert "1.6 s of synthetic speech-like audio, ddim sampler" in out
    grid = json.loads((tmp_path / "grid.json").read_text())
    assert [(r["model"], r["hop_ms"], r["lookahead_ms"], r["context_ms"]) for r in grid] == [
        ("tiny", 80, 80, 800), ("tiny", 160, 80, 400)]
    for r in grid:
        assert set(r) == {"model", "hop_ms", "lookahead_ms", "context_ms", "denoiser_steps", "rtf", "step_ms",
                          "features_ms", "latency_ms", "seams", "fidelity"}
        assert r["denoiser_steps"] == 2  # the stream commands' DDIM default
        assert r["latency_ms"]["max"] >= r["lookahead_ms"] and -1 <= r["fidelity"]["feature_cos"] <= 1

    rc = main(["bench", "--archs", "none", "--model", str(tiny_model_dir), "--backends", "torch", "--steps", "2",
               "--windows", "80/80/800,160/80/400", "--audio", "synthetic", "--seconds", "1.6", "--style", "calm",
               "--reference-seconds", "0", "--fidelity", "--json", str(tmp_path / "r.json"),
               "--markdown", str(tmp_path / "r.md")])
    assert rc == 0
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    for g, r in zip(grid, rows, strict=True):
        assert r["fidelity"] == g["fidelity"] and r["seams"] == g["seams"]
        assert r["replayed_latency_ms"]["max"] == pytest.approx(r["worst_latency_ms"])
    assert "Seams and fidelity to offline generation" in (tmp_path / "r.md").read_text()


def test_stream_bench_long_defaults_to_the_bundled_stream_model(capsys):
    from diffposetalk.paths import DEFAULT_STREAM_MODEL

    if not (DEFAULT_STREAM_MODEL / "config.json").is_file():
        pytest.skip("the bundled stream model is not in this checkout")
    assert main(["stream-bench", "--long", "2", "--grid", "80/80/400"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("2 s: 50 frames (floor(seconds x 25) = 50), " + DEFAULT_STREAM_MODEL.name)


def test_random_architectures_go_to_the_user_cache(tmp_path, monkeypatch):
    """Without --cache-dir the ~500 MB of random-weight models go to $DPT_LIVE_CACHE/bench-models
    (else ~/.cache/dpt-live/bench-models), never into the checkout."""
    from bench.common import default_cache_dir
    from diffposetalk.paths import REPO_ROOT
    from dpt_live.cli import build_parser

    assert build_parser().parse_args(["bench"]).cache_dir is None
    monkeypatch.delenv("DPT_LIVE_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "dpt-live" / "bench-models"
    monkeypatch.setenv("DPT_LIVE_CACHE", str(tmp_path / "cache"))
    assert default_cache_dir() == tmp_path / "cache" / "bench-models"
    assert not default_cache_dir().resolve().is_relative_to(REPO_ROOT.resolve())
    rc = main(["bench", "--archs", "tiny", "--backends", "torch", "--steps", "1", "--windows", "80/80/400",
               "--audio", "synthetic", "--seconds", "0.8", "--reference-seconds", "0"])
    assert rc == 0
    assert (tmp_path / "cache" / "bench-models" / "tiny" / "config.json").is_file()


def test_batch_sizes_report_cost_per_batch(tiny_model_dir, tmp_path):
    out = tmp_path / "batch.json"
    assert main(["bench", "--batch-sizes", "1,3", "--archs", "none", "--model", str(tiny_model_dir),
                 "--windows", "80/80/400", "--steps", "2", "--json", str(out)]) == 0
    (res,) = json.loads(out.read_text())["results"]
    assert res["window_ms"] == 560 and res["hop_ms"] == 80 and res["steps"] == 2
    assert [r["batch"] for r in res["rows"]] == [1, 3]
    for r in res["rows"]:
        assert r["rows_per_stream"] == 3  # the tiny teacher guides audio and style: 3 CFG rows
        assert r["audio_ms"] > 0 and r["denoise_ms"] > 0
        assert r["hop_ms"] == pytest.approx(r["audio_ms"] + 2 * r["denoise_ms"])
    assert 0 <= res["streams"] <= 3


def test_batch_sizes_refuse_a_missing_device(tiny_model_dir, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["bench", "--batch-sizes", "1", "--archs", "none", "--model", str(tiny_model_dir),
                 "--device", "cuda"]) == 2
    assert "PyTorch sees no CUDA device" in capsys.readouterr().err


def test_sessions_curve_through_the_scheduler_and_per_thread(tiny_model_dir, tmp_path):
    """--sessions 2,3: a curve, fed in real time through one batching scheduler; --per-thread: the
    streams call the networks themselves (the mode before the scheduler), for comparison."""
    base = ["bench", "--archs", "none", "--model", str(tiny_model_dir), "--backends", "torch", "--steps", "1",
            "--windows", "80/80/800", "--seconds", "1.2", "--reference-seconds", "0", "--sessions", "2,3"]
    for extra, mode in (([], "scheduler"), (["--per-thread"], "per-thread")):
        out = tmp_path / f"{mode}.json"
        assert main(base + extra + ["--json", str(out), "--markdown", str(tmp_path / f"{mode}.md")]) == 0
        (row,) = json.loads(out.read_text())["rows"]
        assert [c["n"] for c in row["concurrent_curve"]] == [2, 3] and row["concurrent"]["n"] == 3
        for c in row["concurrent_curve"]:
            assert c["mode"] == mode and len(c["per_session"]) == c["n"]
            assert c["latency"] == ("measured" if mode == "scheduler" else "replayed")
        if mode == "scheduler":
            assert sum(row["concurrent"]["scheduler"]["batch_sizes"]["audio"].values()) > 0
        assert f"| 3 | {mode} | " in (tmp_path / f"{mode}.md").read_text()
