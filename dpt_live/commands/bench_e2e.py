"""`dpt-live bench-e2e`: glass-to-glass latency (speech onset captured by the browser's microphone
-> the mouth opening on screen, on a VMC receiver and on a plain WebSocket client) through a real
server, real headless Chromium and the real clients (bench/e2e.py; docs/PERFORMANCE.md)."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench-e2e", help="glass-to-glass latency through headless Chromium, the VMC bridge and a "
                                         "WebSocket client (docs/PERFORMANCE.md)")
    p.add_argument("--onsets", type=int, default=24, help="speech bursts in the test recording (default 24)")
    p.add_argument("--gap-s", type=float, default=0.9, help="silence between bursts (s)")
    p.add_argument("--serve-args", default="",
                   help="extra `dpt-live serve` options after make run's (--style big_mouth, the demo speech), "
                        "e.g. '--hop-ms 40 --lookahead-ms 40' (one option alone: --serve-args=--no-batch)")
    p.add_argument("--viewer-query", default="", help="extra viewer URL query, e.g. '&delay=100' (a fixed buffer)")
    p.add_argument("--vmc-args", default="", help="extra `dpt-live vmc` options, e.g. '--delay-ms 100'")
    p.add_argument("--compare-viewer", action="append", default=[], metavar="NAME=QUERY",
                   help="one more viewer page (no microphone) in the same run, e.g. 'fixed100=&delay=100' "
                        "(repeatable): A/B under the same load")
    p.add_argument("--compare-vmc", action="append", default=[], metavar="NAME=ARGS",
                   help="one more VMC bridge in the same run, e.g. 'vmc-fixed100=--delay-ms 100' (repeatable)")
    p.add_argument("--no-vmc", action="store_true", help="skip the VMC bridge")
    p.add_argument("--no-ws", action="store_true", help="skip the plain WebSocket client")
    p.add_argument("--out", type=Path, default=Path("runs/e2e"), help="folder for e2e.json/.md/.png (default runs/e2e)")
    p.add_argument("--label", default="", help="a name for this configuration in the report")
    p.add_argument("--reanalyse", action="store_true",
                   help="do not measure: analyse the run kept in --out again (raw.json) and rewrite its report")
    p.set_defaults(func=_cmd)


def _cmd(args) -> int:
    from bench.e2e import E2EOptions, run_e2e
    from bench.e2e_report import write_report
    from diffposetalk.errors import UserError

    if args.reanalyse:
        from bench.e2e import reanalyse

        print(write_report(reanalyse(args.out), args.out))
        return 0
    if not 1 <= args.onsets <= 200:
        raise UserError(f"--onsets {args.onsets}: expected 1..200")
    def pairs(items, what):
        out = {}
        for item in items:
            name, sep, value = item.partition("=")
            if not sep or not name.strip():
                raise UserError(f"{what} {item!r}: expected NAME=VALUE")
            out[name.strip()] = value
        return out

    viewers = pairs(args.compare_viewer, "--compare-viewer")
    bridges = {k: shlex.split(v) for k, v in pairs(args.compare_vmc, "--compare-vmc").items()}
    opts = E2EOptions(onsets=args.onsets, gap_s=args.gap_s, serve_args=shlex.split(args.serve_args),
                      viewer_query=args.viewer_query, vmc_args=shlex.split(args.vmc_args), vmc=not args.no_vmc,
                      ws=not args.no_ws, out_dir=args.out, label=args.label,
                      extra_viewers=viewers, extra_vmc=bridges)
    result = run_e2e(opts)
    print(write_report(result, args.out))
    return 0
