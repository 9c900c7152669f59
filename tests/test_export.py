"""`dpt-live export onnx|tensorrt`: graphs at fixed shapes with printed parity, refusal over the
tolerance, int8 with measured lip fidelity, fp16 graphs with fp32 normalisation, clear errors."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from diffposetalk.model_dir import load_model_dir
from dpt_live.cli import main
from engines.artefacts import model_hash
from engines.networks import backend_unavailable
from export.onnx_export import ParityError, export_model


def run(args, capsys):
    rc = main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_export_onnx_writes_checked_graphs_and_int8(tiny_model_dir, tmp_path, capsys, speech_like_wav):
    out = tmp_path / "onnx"
    rc, stdout, _ = run(["export", "onnx", "--model", str(tiny_model_dir), "-o", str(out), "--window-ms", "560,400",
                         "--int8", "--audio", str(speech_like_wav)], capsys)
    print(stdout)
    assert rc == 0
    files = sorted(p.name for p in out.glob("*.onnx"))
    assert files == ["audio_6400.int8.onnx", "audio_6400.onnx", "audio_8960.int8.onnx", "audio_8960.onnx",
                     "denoiser.int8.onnx", "denoiser.onnx", "style.onnx"]
    for name in ("audio_6400.onnx", "audio_8960.onnx", "denoiser.onnx", "style.onnx"):
        assert f"{name}" in stdout and "max |onnx - torch|" in stdout
    key = model_hash(load_model_dir(tiny_model_dir).model)
    summary = json.loads((out / "export.json").read_text())
    assert summary["model_hash"] == key
    assert all(g["max_abs_diff"] < 1e-4 for g in summary["graphs"])
    fid = summary["int8"]
    assert "int8 fidelity vs fp32" in stdout and f"lip error {fid['lip_error']:.4f}" in stdout
    assert 0 < fid["max_abs_motion_diff"] and fid["lip_error"] < 0.25 and fid["window_ms"] == 560
    assert fid["frames"] == 132  # the 5.3 s fixture: floor(5.3 * 25)

    # fixed shapes but the batch: one audio window per file, batch-dynamic audio encoder (issue 14:
    # one call for every session's window) and denoiser, fixed sequence lengths
    def dims(model, name):
        inp = next(i for i in model.graph.input if i.name == name)
        return [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]

    assert dims(onnx.load(out / "audio_8960.onnx"), "audio") == ["N", 8960]
    den = onnx.load(out / "denoiser.onnx")
    assert dims(den, "motion") == ["N", 100, 54] and dims(den, "step") == ["N"]
    q = onnx.load(out / "denoiser.int8.onnx")
    ops = {n.op_type for n in q.graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops
    assert sum(i.data_type == onnx.TensorProto.INT8 for i in q.graph.initializer) >= 4  # int8 weights


def test_parity_failure_refuses_the_graph(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "strict"
    rc, _, err = run(["export", "onnx", "--model", str(tiny_model_dir), "-o", str(out), "--window-ms", "400",
                      "--tolerance", "1e-12"], capsys)
    assert rc == 2
    assert "differs from PyTorch by" in err and "over the tolerance 1e-12; not written" in err
    assert not list(out.glob("*.onnx")) and not list(out.glob("*.tmp*"))


def test_fp16_graphs_keep_normalisation_in_fp32(loaded, tmp_path):
    records = export_model(loaded.model, tmp_path, [6400], precision="fp16")
    assert [r.file for r in records] == ["audio_6400.fp16.onnx", "denoiser.fp16.onnx", "style.onnx"]
    for r in records[:2]:
        assert r.precision == "fp16" and r.max_abs_diff < r.tolerance == 5e-2
        print(r.summary())
    g = onnx.load(tmp_path / "denoiser.fp16.onnx")
    inits = {i.name: i.data_type for i in g.graph.initializer}
    # the exporter shares equal initializers (fresh LayerNorms are all ones) through Identity nodes
    alias = {n.output[0]: n.input[0] for n in g.graph.node if n.op_type == "Identity"}

    def init_type(name):
        while name in alias:
            name = alias[name]
        return inits.get(name)

    matmul_w = [init_type(n.input[1]) for n in g.graph.node if n.op_type == "MatMul" and init_type(n.input[1])]
    norm_w = [init_type(n.input[1]) for n in g.graph.node if n.op_type == "LayerNormalization"]
    assert matmul_w and set(matmul_w) == {onnx.TensorProto.FLOAT16}
    assert norm_w and set(norm_w) == {onnx.TensorProto.FLOAT}
    # the graph's interface stays fp32: callers feed the same arrays at every precision
    assert {i.type.tensor_type.elem_type for i in g.graph.input if i.name != "step"} == {onnx.TensorProto.FLOAT}


def test_export_model_raises_parity_error(loaded, tmp_path):
    with pytest.raises(ParityError, match="denoiser.onnx: ONNX Runtime differs"):
        from export.onnx_export import export_denoiser

        export_denoiser(loaded.model, tmp_path, tolerance=1e-12)
    assert not (tmp_path / "denoiser.onnx").exists()


@pytest.mark.parametrize("args, message", [
    (["--window-ms", "50"], "multiple of 40 ms"),
    (["--window-ms", "1760,abc"], "comma-separated whole milliseconds"),
    (["--tolerance", "-1"], "--tolerance must be positive"),
])
def test_export_onnx_bad_arguments(tiny_model_dir, tmp_path, capsys, args, message):
    rc, _, err = run(["export", "onnx", "--model", str(tiny_model_dir), "-o", str(tmp_path / "x"), *args], capsys)
    assert rc == 2 and message in err


def test_export_onnx_missing_model(tmp_path, capsys):
    rc, _, err = run(["export", "onnx", "--model", str(tmp_path / "nope"), "-o", str(tmp_path / "x")], capsys)
    assert rc == 2 and "model directory not found" in err


@pytest.mark.skipif(backend_unavailable("tensorrt") is None, reason="checks the no-GPU error path")
def test_export_tensorrt_without_gpu(tiny_model_dir, capsys):
    rc, _, err = run(["export", "tensorrt", "--model", str(tiny_model_dir)], capsys)
    assert rc == 2 and "TensorRT export needs a CUDA GPU with TensorRT and pycuda" in err


@pytest.mark.skipif(backend_unavailable("tensorrt") is not None,
                    reason=f"TensorRT unavailable here: {backend_unavailable('tensorrt')}")
def test_export_tensorrt_builds_checked_plans(tiny_model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DPT_LIVE_CACHE", str(tmp_path))
    for precision in ("fp32", "fp16"):
        rc, stdout, _ = run(["export", "tensorrt", "--model", str(tiny_model_dir), "--window-ms", "560",
                             "--precision", precision], capsys)
        print(stdout)
        assert rc == 0 and stdout.count("max |trt - torch|") == 3
    plans = list(tmp_path.glob("tensorrt/*/*.plan"))
    assert len(plans) == 5  # audio + denoiser at fp32 and fp16, one fp32 style encoder
    for p in plans:
        meta = json.loads(p.with_name(p.name + ".json").read_text())
        assert meta["max_abs_diff"] < meta["tolerance"] and np.isfinite(meta["max_abs_diff"])


# --- TensorRT plan files and the doctor, without a GPU -----------------------------------------------------

def test_plan_files_are_written_under_unique_temporary_names(tmp_path):
    """Threads of one process writing one plan never share a temporary file, and a reader only
    ever sees a whole file."""
    import os
    import threading

    from export.tensorrt_build import temporary_sibling, write_atomic

    target = tmp_path / "cache" / "denoiser.plan"
    names = {temporary_sibling(target) for _ in range(50)}
    assert len(names) == 50 and all(n.parent == target.parent and n.name.endswith(".tmp") for n in names)
    assert all(f".{os.getpid()}.{threading.get_ident()}." in n.name for n in names)
    payloads = [bytes([i]) * 50_000 for i in range(8)]
    seen, errors = [], []

    def writer(data):
        try:
            for _ in range(20):
                write_atomic(target, data)
                seen.append(target.read_bytes())
        except Exception as exc:  # collected: an exception in a thread would not fail the test
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(s in payloads for s in seen) and target.read_bytes() in payloads
    assert [p.name for p in target.parent.iterdir()] == ["denoiser.plan"]  # no temporary file left


def test_plan_profiles_are_fixed_batch_buckets(tiny_model_dir, tmp_path, capsys):
    """One fixed-shape profile per batch bucket: an execution context (and CUDA graph) each."""
    from engines.artefacts import read_record
    from export.tensorrt_build import MAX_WINDOWS, batch_buckets, plan_profiles

    assert batch_buckets(1) == [1] and batch_buckets(3) == [1, 2, 3] and batch_buckets(4) == [1, 2, 3, 4]
    assert batch_buckets(64) == [1, 2, 3, 4, 8, 16, 32, 64] and batch_buckets(48) == [1, 2, 3, 4, 8, 16, 32, 48]
    out = tmp_path / "onnx"
    assert run(["export", "onnx", "--model", str(tiny_model_dir), "-o", str(out), "--window-ms", "560"], capsys)[0] == 0
    cfg = load_model_dir(tiny_model_dir).config
    den = plan_profiles("denoiser", cfg, read_record(out / "denoiser.onnx"))
    # a teacher's CFG passes (1..3 rows) for one window, up to a batching scheduler's MAX_WINDOWS windows
    assert [p["motion"][0][0] for p in den] == batch_buckets(3 * MAX_WINDOWS)
    for profile in den:
        b = profile["motion"][0][0]
        assert set(profile) == set(read_record(out / "denoiser.onnx").inputs)
        assert all(lo == opt == hi and lo[0] == b for lo, opt, hi in profile.values())
        assert profile["motion"][0] == (b, cfg.n_motions, cfg.motion_dim)
    style = plan_profiles("style", cfg, read_record(out / "style.onnx"))
    assert [p["motion"][0][0] for p in style] == [1, 2, 3, 4]
    audio = plan_profiles("audio", cfg, read_record(out / "audio_8960.onnx"))
    assert [p["audio"][0] for p in audio] == [(b, 8960) for b in batch_buckets(MAX_WINDOWS)]


def test_doctor_reports_this_machine(tmp_path, capsys):
    from engines.gpu_doctor import gpu_report

    rc, stdout, _ = run(["doctor", "--json", str(tmp_path / "doctor.json")], capsys)
    assert rc == 0
    for title in ("NVIDIA driver", "PyTorch CUDA", "TensorRT", "pycuda", "cuda-python", "ONNX Runtime GPU",
                  "TensorRT backend", "--backend auto picks"):
        assert title in stdout
    report = json.loads((tmp_path / "doctor.json").read_text())
    checks = {c["key"]: c for c in report["checks"]}
    assert checks["tensorrt-backend"]["ok"] == (backend_unavailable("tensorrt") is None)
    assert report["backends"]["tensorrt"] == backend_unavailable("tensorrt")
    assert all(c["fix"] for c in checks.values() if not c["ok"] and c["key"] != "tensorrt-backend")
    assert "http" not in stdout  # indexes are described in words, never as an address
    # --need: silent and 0 when there, the reasons and 1 when not
    missing = [c.key for c in gpu_report() if not c.ok]
    present = [c.key for c in gpu_report() if c.ok]
    if present:
        assert run(["doctor", "--need", ",".join(present)], capsys)[:2] == (0, "")
    if missing:
        rc, stdout, _ = run(["doctor", "--need", missing[0]], capsys)
        assert rc == 1 and checks[missing[0]]["detail"] in stdout
    rc, _, err = run(["doctor", "--need", "gpu"], capsys)
    assert rc == 2 and "unknown gpu" in err
