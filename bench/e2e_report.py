"""The glass-to-glass report: a markdown summary (p50/p95 per path and stage) and a PNG timeline
(the captured audio envelope against the mouth opening, each onset's latency marked)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.e2e_stages import STAGES

STAGE_NAMES = {"audio_window": "audio window (hop+lookahead)", "capture_upstream": "capture+upstream",
               "server": "server queue+compute", "network": "network", "client_buffer": "client buffer",
               "render": "render"}


def markdown(result: dict) -> str:
    s = result
    load = ", ".join(f"{x:.2f}" for x in s.get("load", []))
    w = s.get("window_ms", {})
    lines = [f"### bench-e2e {s.get('label') or ''}".rstrip(), "",
             f"serve {' '.join(s.get('serve_args', []))} · window hop/lookahead/context "
             f"{w.get('hop')}/{w.get('lookahead')}/{w.get('context')} ms"
             + (f", {w['regen']} ms regenerated" if w.get("regen") else ""),
             "viewers (URL query): " + ", ".join(f"{k} '{v}'" for k, v in s.get("viewers", {}).items())
             + " · VMC bridges: " + (", ".join(f"{k} '{' '.join(v)}'" for k, v in s.get("bridges", {}).items())
                                     or "none"),
             f"{len(s['onsets'])} onsets found · load average {load} on {s.get('cpus')} CPUs · page Date.now() − "
             f"time.time(): start {s['clock'].get('start', {}).get('offset_ms')} ms, "
             f"end {s['clock'].get('end', {}).get('offset_ms')} ms; page clock − Date.now(): "
             + ", ".join(f"{k} {c['offset_ms']} ms (drift {c['drift_ms']} ms)" for k, c in s.get("page_clock", {}).items()),
             f"frames the server shed work for (degraded flag): {s['series'].get('degraded', '?')} of "
             f"{s['series'].get('frame_count', '?')} · viewport {s.get('viewport')} · onsets whose server or network "
             f"stage came out < −5 ms (a clock disagreement): {s.get('clock_violations', '?')}",
             "mouth over the run, rest (p10) → open (p90): " + " · ".join(
                 f"{'jaw_x' if k == 'jaw_rad' else k} {v['p10']:.3f} → {v['p90']:.3f}{' rad' if k == 'jaw_rad' else ''}"
                 for k, v in s.get("mouth", {}).items()),
             "",
             "| path | onsets | total p50 / p95 ms | " + " | ".join(STAGE_NAMES[k] for k in STAGES) + " |",
             "|---|---|---|" + "---|" * len(STAGES)]
    for name, p in s["paths"].items():
        sm = p["summary"]
        if "total_ms" not in sm:
            lines.append(f"| {name} | 0 (missed {sm['missed']}) | – |" + " – |" * len(STAGES))
            continue
        cells = []
        for k in STAGES:
            v = sm.get(f"{k}_ms")
            cells.append(f"{v['p50']:.0f} / {v['p95']:.0f}" if v else "–")
        t = sm["total_ms"]
        lines.append(f"| {name} | {sm['onsets']} (missed {sm['missed']}) | **{t['p50']:.0f} / {t['p95']:.0f}** | "
                     + " | ".join(cells) + " |")
    lines += ["", "Stages are p50 / p95 over the onsets, each on its own (they add up per onset, not across "
              "percentiles)."]
    return "\n".join(lines) + "\n"


def timeline_png(result: dict, path: Path, seconds: float = 8.0) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ser = result["series"]
    t0 = ser["capture_start"]
    env = np.asarray(ser["envelope_ms"])
    fr = np.asarray(ser["frames"]).reshape(-1, 3)
    rd = np.asarray(ser["renders"]).reshape(-1, 2)
    fig, ax = plt.subplots(figsize=(12, 4.2))
    te = np.arange(len(env)) / 1000
    m = te <= seconds + 1
    ax.fill_between(te[m], 0, env[m] / max(1e-6, env.max()), color="0.8", label="captured audio (peak, 1 ms)")
    jaw_lo, jaw_hi = np.percentile(fr[:, 2], [1, 99]) if len(fr) else (0, 1)

    def norm(x):
        return (x - jaw_lo) / max(1e-9, jaw_hi - jaw_lo)
    # on the capture clock: a frame is plotted where the browser drew it
    if len(rd):
        tr = rd[:, 0] - t0
        k = tr <= seconds + 1
        ax.plot(tr[k], norm(rd[k, 1]), color="tab:blue", lw=1.2, label="mouth opening drawn (browser)")
    palette = ["tab:blue", "tab:green", "tab:orange", "tab:red", "tab:purple", "tab:brown"]
    colors = {name: palette[i % len(palette)] for i, name in enumerate(result["paths"])}
    for name, p in result["paths"].items():
        for r in p["rows"]:
            a, b = r["capture"] - t0, r["shown"] - t0
            if a > seconds:
                continue
            y = 1.05 + 0.08 * list(colors).index(name)
            ax.annotate("", xy=(b, y), xytext=(a, y), arrowprops={"arrowstyle": "->", "color": colors[name]})
            if name == "browser":
                ax.text((a + b) / 2, y + 0.02, f"{r['total_ms']:.0f}", ha="center", fontsize=7, color=colors[name])
    for name, c in colors.items():
        if name in result["paths"]:
            ax.plot([], [], color=c, label=f"onset → mouth open: {name}")
    ax.set_xlim(0, seconds)
    ax.set_ylim(-0.05, 1.4)
    ax.set_xlabel("s since the microphone upstream started (capture clock)")
    ax.set_yticks([])
    ax.legend(loc="upper right", fontsize=7, ncol=2)
    ax.set_title(f"glass-to-glass {result.get('label') or ''}: audio envelope vs mouth opening")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(result: dict, out: Path) -> str:
    out = Path(out)
    text = markdown(result)
    (out / "e2e.md").write_text(text)
    timeline_png(result, out / "e2e.png")
    return text
