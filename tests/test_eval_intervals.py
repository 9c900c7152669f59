"""Speaker-bootstrap intervals, `eval --split all --bootstrap` and `eval-compare`."""

from __future__ import annotations

import json

import pytest

from diffposetalk.errors import UserError


def _run(argv):
    from dpt_live.cli import build_parser

    args = build_parser().parse_args(argv)
    return args.func(args)


def _records(lips: dict[str, list[float]], hits=None):
    """per_clip records: speaker -> lip error of each of its clips (2 seeds with the same value)."""
    out = []
    for p, vals in lips.items():
        for k, v in enumerate(vals):
            out.append({"entry": f"{p}/{k:03d}", "person": p, "lip_error": [v, v], "mouth_corr": [0.5, 0.5],
                        "style_hits_generated": [True, (hits or {}).get(p, True)]})
    return out


def test_bootstrap_resamples_speakers_not_clips():
    from training.eval_intervals import bootstrap_metrics

    same = bootstrap_metrics(_records({"a": [1.0, 1.0], "b": [1.0, 1.0]}), 200)
    assert same["lip_error"] == {"value": 1.0, "lo": 1.0, "hi": 1.0} and same["speakers"] == 2
    # speaker a: 1.0, speaker b: 3.0. A resample of speakers has mean 1, 2 or 3; the interval
    # reaches both ends. (Resampling the 20 clips instead would stay near 2.)
    boot = bootstrap_metrics(_records({"a": [1.0] * 10, "b": [3.0] * 10}), 400, seed=1)
    assert boot["lip_error"]["value"] == pytest.approx(2.0)
    assert boot["lip_error"]["lo"] == pytest.approx(1.0) and boot["lip_error"]["hi"] == pytest.approx(3.0)
    half = bootstrap_metrics(_records({"a": [1.0], "b": [1.0]}, hits={"b": False}), 50)
    assert half["style_retrieval_generated"]["value"] == pytest.approx(0.75)
    assert boot == bootstrap_metrics(_records({"a": [1.0] * 10, "b": [3.0] * 10}), 400, seed=1)
    with pytest.raises(UserError, match="positive"):
        bootstrap_metrics(_records({"a": [1.0]}), 0)


def test_compare_is_paired():
    from training.eval_intervals import compare

    people = {f"p{i}": [1.0 + i, 2.0 + i] for i in range(8)}
    base = {"model": "t", "per_clip": _records(people)}
    # every clip 10 % worse: the paired interval is exactly +10 %, however different the speakers are
    worse = {"model": "s", "per_clip": _records({p: [1.1 * v for v in vals] for p, vals in people.items()},
                                                hits={"p0": False})}
    res = compare(base, worse, 300)
    rel = res["lip_error_relative"]
    assert rel["value"] == pytest.approx(0.1) and rel["lo"] == pytest.approx(0.1) and rel["hi"] == pytest.approx(0.1)
    assert res["style_retrieval_generated_difference"]["value"] == pytest.approx(-1 / 16)
    assert res["style_retrieval_generated_difference"]["lo"] < -0.0 <= res["style_retrieval_generated_difference"]["hi"]
    assert res["clips"] == 16 and res["speakers"] == 8
    # a result on a subset of the clips: retrieval (among the evaluated speakers) is not comparable
    part = {"model": "s", "per_clip": [r for r in worse["per_clip"] if r["person"] != "p7"]}
    sub = compare(base, part, 50)
    assert sub["clips"] == 14 and "style_retrieval_generated_difference" not in sub and "note" in sub
    assert sub["lip_error_relative"]["value"] == pytest.approx(0.1)
    with pytest.raises(UserError, match="no evaluated clip"):
        compare(base, {"per_clip": _records({"zz": [1.0]})}, 10)


def test_eval_all_splits_with_bootstrap_and_compare(tmp_path):
    import torch

    from diffposetalk.archs import make_config
    from diffposetalk.model import DiffPoseTalk
    from diffposetalk.model_dir import save_model_dir
    from tests.test_train import write_tiny_lmdb
    from training.train_data import load_stats_np

    data = write_tiny_lmdb(tmp_path / "lmdb", n_people=4, clips=2, frames=110)
    torch.manual_seed(0)
    cfg = make_config("tiny")
    model = save_model_dir(tmp_path / "m", cfg, DiffPoseTalk(cfg), load_stats_np(data))
    common = ["eval", "--model", str(model), "--data", str(data), "--split", "all", "--steps", "2", "--seeds", "2",
              "--threads", "1", "--bootstrap", "100"]
    assert _run(common + ["--json", str(tmp_path / "a.json")]) == 0
    a = json.loads((tmp_path / "a.json").read_text())
    assert a["split"] == "all" and a["clips"] == 8 and a["speakers"] == 4  # train + val + test speakers
    boot = a["metrics"]["bootstrap"]
    assert boot["speakers"] == 4 and boot["resamples"] == 100
    for name in ("lip_error", "mouth_corr_mean", "style_retrieval_generated"):
        assert boot[name]["lo"] <= boot[name]["value"] <= boot[name]["hi"], name
    assert boot["lip_error"]["value"] == pytest.approx(a["metrics"]["lip_error"])
    assert boot["style_retrieval_generated"]["value"] == pytest.approx(a["metrics"]["style_retrieval_generated"])
    assert all(len(r["style_hits_generated"]) == 2 for r in a["per_clip"])
    # a second result on the same clips (another sampler step count), compared paired
    assert _run(common[:7] + ["--steps", "1", "--seeds", "2", "--threads", "1", "--json", str(tmp_path / "b.json")]
                + ["--split", "all"]) == 0
    assert _run(["eval-compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--bootstrap", "50",
                 "--json", str(tmp_path / "c.json")]) == 0
    c = json.loads((tmp_path / "c.json").read_text())
    assert c["clips"] == 8 and c["lip_error_relative"]["lo"] <= c["lip_error_relative"]["value"] <= \
        c["lip_error_relative"]["hi"]
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(UserError, match="per_clip"):
        _run(["eval-compare", str(tmp_path / "a.json"), str(tmp_path / "bad.json")])
    with pytest.raises(SystemExit):
        _run(common[:5] + ["--split", "everything"])
