"""Bootstrap intervals over speakers for `dpt-live eval` results (`eval --bootstrap N`,
`dpt-live eval-compare`).

Why speakers and not clips: a speaker's clips share a voice and a style, so they are not
independent; resampling clips would give intervals that are too narrow. Each resample draws the
evaluated speakers with replacement and takes every clip of each drawn speaker (a cluster
bootstrap); the interval is the 2.5th..97.5th percentile of the statistic over resamples.

Works on the ``per_clip`` records an eval JSON holds (lip_error, mouth_corr and style_hits lists,
one value per seed), so two results on the same clips can be compared after the fact."""

from __future__ import annotations

import numpy as np

from diffposetalk.errors import UserError

# per-clip values the intervals are computed for: key in the per_clip records -> metric name
CLIP_METRICS = {"lip_error": "lip_error", "mouth_corr": "mouth_corr_mean",
                "style_hits_generated": "style_retrieval_generated"}


def clip_values(per_clip: list[dict], key: str) -> dict[str, float]:
    """entry -> the clip's mean over seeds of ``key``."""
    return {r["entry"]: float(np.mean(r[key])) for r in per_clip if key in r and len(r[key])}


def speaker_draws(people: list[str], n: int, seed: int) -> list[list[str]]:
    """``n`` resamples of ``people`` with replacement (deterministic per seed)."""
    rng = np.random.default_rng(seed)
    names = sorted(set(people))
    return [[names[i] for i in rng.integers(len(names), size=len(names))] for _ in range(n)]


def _interval(values: list[float]) -> dict[str, float]:
    lo, hi = np.percentile(values, [2.5, 97.5])
    return {"lo": float(lo), "hi": float(hi)}


def bootstrap_metrics(per_clip: list[dict], n: int, seed: int = 0) -> dict:
    """Per metric of CLIP_METRICS: the value over all clips and its speaker-bootstrap interval."""
    if n < 1:
        raise UserError(f"--bootstrap {n}: must be positive")
    by_person: dict[str, list[str]] = {}
    for r in per_clip:
        by_person.setdefault(r["person"], []).append(r["entry"])
    draws = speaker_draws(list(by_person), n, seed)
    out = {"resamples": n, "unit": "speaker", "speakers": len(by_person), "interval": "95 % percentile"}
    for key, name in CLIP_METRICS.items():
        vals = clip_values(per_clip, key)
        if not vals:
            continue
        stats = [np.mean([vals[e] for p in d for e in by_person[p] if e in vals]) for d in draws]
        out[name] = {"value": float(np.mean(list(vals.values()))), **_interval(stats)}
    return out


def compare(base: dict, other: dict, n: int, seed: int = 0) -> dict:
    """``other`` against ``base`` (two eval results on the same clips), paired per speaker:
    relative lip error (other / base - 1), and the differences in mouth correlation and style
    retrieval, each with its speaker-bootstrap interval."""
    a, b = base["per_clip"], other["per_clip"]
    common = sorted({r["entry"] for r in a} & {r["entry"] for r in b})
    if not common:
        raise UserError("the two results share no evaluated clip (same --data and --split?)")
    person = {r["entry"]: r["person"] for r in a}
    by_person: dict[str, list[str]] = {}
    for e in common:
        by_person.setdefault(person[e], []).append(e)
    draws = speaker_draws(list(by_person), n, seed)
    out = {"clips": len(common), "speakers": len(by_person), "resamples": n, "unit": "speaker",
           "base": base.get("model"), "other": other.get("model")}
    same_gallery = {r["entry"] for r in a} == {r["entry"] for r in b}
    if not same_gallery:
        # retrieval is among the evaluated speakers: with other clip sets the galleries differ
        out["note"] = "style retrieval not compared: the two results evaluated different clips"
    for key, name in CLIP_METRICS.items():
        if name == "style_retrieval_generated" and not same_gallery:
            continue
        va, vb = clip_values(a, key), clip_values(b, key)
        entries = [e for e in common if e in va and e in vb]
        if not entries:
            continue
        keep = set(entries)

        def stat(sel: list[str], name=name, va=va, vb=vb):
            ma, mb = np.mean([va[e] for e in sel]), np.mean([vb[e] for e in sel])
            return mb / ma - 1 if name == "lip_error" else mb - ma

        boot = [stat([e for p in d for e in by_person[p] if e in keep]) for d in draws]
        label = "lip_error_relative" if name == "lip_error" else f"{name}_difference"
        out[label] = {"base": float(np.mean([va[e] for e in entries])),
                      "other": float(np.mean([vb[e] for e in entries])), "value": float(stat(entries)),
                      **_interval(boot)}
    return out


def format_compare(result: dict) -> str:
    lines = [f"{result['other']} vs {result['base']}: {result['clips']} clips, {result['speakers']} speakers, "
             f"{result['resamples']} speaker resamples (95 % intervals)"]
    for k, v in result.items():
        if k == "note":
            lines.append(f"  ({v})")
        elif isinstance(v, dict):
            pct = k == "lip_error_relative"
            fmt = (lambda x: f"{100 * x:+.1f} %") if pct else (lambda x: f"{x:+.3f}")
            lines.append(f"  {k:<36} {v['base']:.3f} -> {v['other']:.3f}: {fmt(v['value'])} "
                         f"[{fmt(v['lo'])} .. {fmt(v['hi'])}]")
    return "\n".join(lines)


def format_bootstrap(boot: dict) -> str:
    lines = [f"speaker bootstrap ({boot['resamples']} resamples of {boot['speakers']} speakers, 95 % intervals):"]
    for name in CLIP_METRICS.values():
        if name in boot:
            v = boot[name]
            lines.append(f"  {name:<36} {v['value']:.3f} [{v['lo']:.3f} .. {v['hi']:.3f}]")
    return "\n".join(lines)
