"""Reports of the benchmark family (bench/matrix.py results): JSON, the markdown tables of
`dpt-live bench`, its PNG plot (matplotlib, Agg: no display needed), and the row and table of
`dpt-live stream-bench` (the streaming grid: speed, latency, seams, fidelity to offline generation)."""

from __future__ import annotations

import json
from pathlib import Path


def write_json(result: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")


def _window(r: dict) -> str:
    """hop/lookahead/context ms, "+rN" when N ms are regenerated (a 40 ms hop, as stream/serve run it)."""
    return f"{r['hop_ms']}/{r['lookahead_ms']}/{r['context_ms']}" + (f"+r{r['regen_ms']}" if r.get("regen_ms") else "")


def _backend(r: dict) -> str:
    return r["backend"] if r.get("precision", "fp32") == "fp32" else f"{r['backend']} {r['precision']}"


def _mark(ok: bool) -> str:
    return "✓" if ok else "✗"


def _x(v) -> str:
    return "—" if v is None else f"{v:,.0f}×" if v >= 10 else f"{v:.1f}×"


def reference_table(result: dict) -> str:
    lines = ["| model | audio s | steps timed | s per s of audio | denoise / other s | network passes per s of audio "
             "| GFLOP per s of audio |", "|---|---|---|---|---|---|---|"]
    for r in result["references"]:
        lines.append(f"| {r['model']} | {r['audio_seconds']:.2f} | {r['steps_timed']} of {r['diffusion_steps']} "
                     f"× {r['passes_per_step']} passes | {r['rtf']:.2f} | {r['denoise_s']:.1f} / {r['other_s']:.2f} "
                     f"| {r['passes_per_audio_s']:.0f} | {r['gflop_per_audio_s']:,.1f} |")
    return "\n".join(lines)


def matrix_table(result: dict) -> str:
    head = ("| model | backend | steps | hop/la/ctx ms | RTF | ms per step: features / denoise / other "
            "| step p50/p95/p99 ms | worst latency ms | passes per s audio | GFLOP per s audio "
            "| speedup time / compute | targets RTF · latency · 300× |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    # rows that did not run for the same reason (e.g. no TensorRT here) are listed once
    groups: dict[tuple, list[dict]] = {}
    for r in result["rows"]:
        if r["status"] != "ok":
            groups.setdefault((r["model"], _backend(r), r["status"], r["reason"]), []).append(r)
    done = set()
    for r in result["rows"]:
        steps = r.get("denoiser_steps", "—")
        if r["status"] != "ok":
            key = (r["model"], _backend(r), r["status"], r["reason"])
            if key in done:
                continue
            done.add(key)
            same = groups[key]
            steps = ", ".join(dict.fromkeys(str(x.get("denoiser_steps", "—")) for x in same))
            windows = ", ".join(dict.fromkeys(_window(x) for x in same))
            lines.append(f"| {r['model']} | {_backend(r)} | {steps} | {windows} | {r['status']}: "
                         f"{r['reason'].replace('|', '/')} | — | — | — | — | — | — | — |")
            continue
        s, st, t = r["step_ms"], r["stage_ms"], r["targets_met"]
        lines.append(
            f"| {r['model']} | {_backend(r)} | {steps} | {_window(r)} | {r['rtf']:.2f} "
            f"| {st['features']:.0f} / {st['denoise']:.0f} / {st['other']:.0f} "
            f"| {s['p50']:.0f}/{s['p95']:.0f}/{s['p99']:.0f} | {r['worst_latency_ms']:.0f} "
            f"| {r['passes_per_audio_s']:.1f} | {r['gflop_per_audio_s']:,.1f} "
            f"| {_x(r.get('speedup_time'))} / {_x(r.get('speedup_compute'))} "
            f"| {_mark(t['rtf'])} · {_mark(t['latency'])} · {_mark(t['compute_speedup'])} |")
    return "\n".join(lines)


def concurrent_table(result: dict) -> str | None:
    rows = [(r, c) for r in result["rows"] for c in (r.get("concurrent_curve") or [r["concurrent"]] if r.get("concurrent")
                                                     else [])]
    if not rows:
        return None
    lines = ["| model | backend | steps | hop/la/ctx ms | streams | mode | keep up | within latency budget "
             "| steps shed | RTF per stream, worst | worst latency ms, worst stream | feed lag p95 / max ms "
             "| CPU s per stream-s | load |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r, c in rows:
        per = c["per_session"]
        lines.append(f"| {r['model']} | {_backend(r)} | {r['denoiser_steps']} | {_window(r)} | {c['n']} "
                     f"| {c.get('mode', 'per-thread')} | {c['keep_up']} of {c['n']} "
                     f"| {c['within_budget']} of {c['n']} (≤ {c['latency_budget_ms']:.0f} ms) "
                     f"| {c.get('shed_steps', 0)} | {max(p['rtf'] for p in per):.2f} "
                     f"| {max(p['worst_latency_ms'] for p in per):.0f} | {_lag(c.get('feed_lag_ms'))} "
                     f"| {c.get('cpu_per_stream_s', float('nan')):.4f} | {c.get('load_average', float('nan')):.2f} |")
    return "\n".join(lines)


def _lag(lag: dict | None) -> str:
    """How late the feeding thread handed the blocks over ("–": a thread per stream)."""
    return "–" if not lag else f"{lag['p95']:.0f} / {lag['max']:.0f}"


def markdown(result: dict) -> str:
    s, m = result["settings"], result["machine"]
    latency = "measured (audio fed in real time)" if s["realtime"] else \
        f"replayed from the measured step times for audio arriving in real time in {s['block_ms']} ms blocks"
    parts = [
        f"Audio: {s['audio']}, first {s['audio_seconds']:.2f} s. Clock: {s['clock']} "
        f"({'thread CPU time: the cost on a dedicated core' if s['clock'] == 'cpu' else 'wall clock'}), "
        f"{s['threads']} torch thread(s); {m['cpus']} CPUs, load average {m['load_average'][0]} at start, "
        f"{m.get('load_average_end', ['?'])[0]} at end; torch {m['torch']}"
        f"{', onnxruntime ' + m['onnxruntime'] if 'onnxruntime' in m else ''}. Worst frame latency: {latency}.",
    ]
    if result["references"]:
        parts += ["", "Reference offline sampler (DDPM, every step, all guided passes; PyTorch):", "",
                  reference_table(result)]
    parts += ["", "Streaming (speedup time: the reference's seconds per second of audio over the row's RTF, same "
                  "clock; speedup compute: GFLOP per second of audio, reference over row; both against the reference "
                  "of the same network sizes; targets: RTF ≤ "
                  f"{s['targets']['rtf']}, worst latency ≤ {s['targets']['worst_latency_ms']:.0f} ms, "
                  f"≥ {s['targets']['compute_speedup']:.0f}× less compute per second of audio):", "",
              matrix_table(result)]
    conc = concurrent_table(result)
    if conc:
        parts += ["", "Concurrent streams (threads sharing one loaded model, wall clock):", "", conc]
    if s.get("offline"):
        ok = [r for r in result["rows"] if r["status"] == "ok"]
        parts += ["", "Seams and fidelity to offline generation (same sampler, seed, style and x_T; seam/inside: "
                      "frame-to-frame change across step boundaries over that inside steps):", "",
                  grid_table([grid_row(r) for r in ok], with_backend=True)]
    return "\n".join(parts) + "\n"


# --- the streaming grid (`dpt-live stream-bench`) ------------------------------------------------
def grid_row(row: dict) -> dict:
    """A matrix row as `stream-bench` reports it (its JSON rows and table)."""
    out = {"model": row["model"], "hop_ms": row["hop_ms"], "lookahead_ms": row["lookahead_ms"],
           "context_ms": row["context_ms"], "denoiser_steps": row["denoiser_steps"], "rtf": row["rtf"],
           "step_ms": row["step_ms"], "features_ms": row["features_ms"], "latency_ms": row["replayed_latency_ms"],
           "seams": row["seams"], **({"regen_ms": row["regen_ms"]} if row.get("regen_ms") else {})}
    if "fidelity" in row:
        out["fidelity"] = row["fidelity"]
    if row.get("backend", "torch") != "torch" or row.get("precision", "fp32") != "fp32":
        out["backend"] = _backend(row)
    return out


def grid_table(rows: list[dict], with_backend: bool = False) -> str:
    """rows: grid_row results."""
    head = ("| model | hop/la/ctx ms | RTF | step p50/p95/p99 ms | encoder p50 ms | worst latency ms "
            "| seam/inside | feature cos | jaw corr / rmse | exp corr / rmse |")
    if with_backend:
        head = head.replace("| model |", "| model | backend | steps |", 1)
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        s, f = r["step_ms"], r.get("fidelity")
        fid = ("—", "—", "—") if f is None else (f"{f['feature_cos']:.3f}", f"{f['jaw_corr']:.3f} / {f['jaw_rmse']:.4f}",
                                                 f"{f['exp_corr']:.3f} / {f['exp_rmse']:.3f}")
        ratio = r["seams"]["ratio"] if r["seams"] else None
        model = f"{r['model']} | {r.get('backend', 'torch')} | {r['denoiser_steps']}" if with_backend else r["model"]
        lines.append(f"| {model} | {_window(r)} | {r['rtf']:.2f} "
                     f"| {s['p50']:.0f}/{s['p95']:.0f}/{s['p99']:.0f} | {r['features_ms']['p50']:.0f} "
                     f"| {r['latency_ms']['max']:.0f} | {'—' if ratio is None else f'{ratio:.2f}'} "
                     f"| {fid[0]} | {fid[1]} | {fid[2]} |")
    return "\n".join(lines)


def write_markdown(result: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown(result))


def _label(r: dict) -> str:
    return f"{r['model']} · {_backend(r)} · {r['denoiser_steps']} st · {_window(r)}"


def write_plot(result: dict, path: Path) -> None:
    """Left: real-time factor split into stages per configuration, with the target and real time.
    Right: worst frame latency against compute per second of audio (log-log), the reference
    sampler's compute as vertical lines."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if r["status"] == "ok"]
    s = result["settings"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, max(4.0, 0.32 * len(rows) + 1.8)),
                                   gridspec_kw={"width_ratios": [1.25, 1]})
    if not rows:
        for ax in (ax1, ax2):
            ax.text(0.5, 0.5, "no configuration ran (all skipped or failed)", ha="center", va="center")
            ax.set_axis_off()
    else:
        # log scale (the rows span two orders of magnitude): the stages side by side, the total as a mark
        y = list(range(len(rows)))
        feats = [max(r["stage_rtf"]["features"], 1e-4) for r in rows]
        dens = [max(r["stage_rtf"]["denoise"], 1e-4) for r in rows]
        totals = [r["rtf"] for r in rows]
        lo = min(feats + dens) / 2
        ax1.barh([i - 0.2 for i in y], [f - lo for f in feats], left=lo, height=0.38, color="#4c72b0",
                 label="audio features")
        ax1.barh([i + 0.2 for i in y], [d - lo for d in dens], left=lo, height=0.38, color="#dd8452", label="denoise")
        ax1.scatter(totals, y, marker="|", s=150, color="k", zorder=3, label="total (+ other)")
        for i, t in enumerate(totals):
            ax1.text(t * 1.08, i, f"{t:.2f}", va="center", fontsize=7)
        ax1.set_xscale("log")
        ax1.set_xlim(lo, max(totals + [1.0]) * 2)
        ax1.axvline(s["targets"]["rtf"], color="green", ls="--", lw=1, label=f"target {s['targets']['rtf']}")
        ax1.axvline(1.0, color="red", ls=":", lw=1, label="real time")
        ax1.set_yticks(y, [_label(r) for r in rows], fontsize=7)
        ax1.set_ylim(len(rows) - 0.5, -0.5)
        ax1.set_xlabel(f"real-time factor = compute s per audio s ({s['clock']} clock), by stage")
        ax1.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=5, frameon=False)

        models = sorted({r["model"] for r in rows})
        colours = {m: plt.cm.tab10(i % 10) for i, m in enumerate(models)}
        markers = {"torch": "o", "onnxruntime": "s", "tensorrt": "^", "auto": "D"}
        for r in rows:  # hollow markers: reduced precision (int8 / fp16)
            full = r.get("precision", "fp32") == "fp32"
            ax2.scatter(r["gflop_per_audio_s"], r["worst_latency_ms"], marker=markers.get(r["backend"], "x"),
                        s=30 + 15 * r["denoiser_steps"], facecolors=colours[r["model"]] if full else "none",
                        edgecolors=colours[r["model"]])
        for ref in result["references"]:
            ax2.axvline(ref["gflop_per_audio_s"], color=colours.get(ref["model"], "k"), ls="--", lw=1)
            ax2.axvline(ref["gflop_per_audio_s"] / s["targets"]["compute_speedup"],
                        color=colours.get(ref["model"], "k"), ls=":", lw=1)
        ax2.axhline(s["targets"]["worst_latency_ms"], color="green", ls="--", lw=1)
        ax2.set_xscale("log")
        ax2.set_yscale("log")
        lat = [r["worst_latency_ms"] for r in rows] + [s["targets"]["worst_latency_ms"]]
        ticks = [25 * 2 ** i for i in range(14) if min(lat) / 2 <= 25 * 2 ** i <= max(lat) * 2]
        ax2.set_yticks(ticks, [str(t) for t in ticks])
        ax2.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax2.set_xlabel("GFLOP per s of audio (--: reference sampler, ··: reference / 300)", fontsize=9)
        ax2.set_ylabel("worst frame latency ms")
        handles = [plt.Line2D([], [], color=colours[m], marker="o", ls="", label=m) for m in models]
        handles += [plt.Line2D([], [], color="k", marker=mk, ls="", label=b) for b, mk in markers.items()
                    if any(r["backend"] == b for r in rows)]
        if any(r.get("precision", "fp32") != "fp32" for r in rows):
            handles.append(plt.Line2D([], [], color="k", marker="o", mfc="none", ls="", label="int8 / fp16"))
        handles.append(plt.Line2D([], [], color="green", ls="--", label=f"{s['targets']['worst_latency_ms']:.0f} ms target"))
        ax2.legend(handles=handles, fontsize=7)
        ax2.set_title("worst latency vs compute (marker size: denoiser steps)", fontsize=9)
    fig.suptitle(f"dpt-live bench: {s['audio_seconds']:.1f} s of {Path(s['audio']).name}, {s['threads']} thread(s)",
                 fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
