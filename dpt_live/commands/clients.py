"""`dpt-live vmc` and `dpt-live record`: the Python render clients of `dpt-live serve`."""

from __future__ import annotations

import argparse
import pathlib


def _connection_args(p: argparse.ArgumentParser, url_required: bool = True) -> None:
    p.add_argument("--url", required=url_required,
                   help="server WebSocket URL, e.g. ws://127.0.0.1:8765 (the /ws path is added)")
    p.add_argument("--token", help="access token the server printed (or gave with --token)")
    p.add_argument("--session", help="session name (default: the server's 'default')")


def register(sub) -> None:
    p = sub.add_parser(
        "vmc", help="drive a VTuber app (VSeeFace, VNyan, Warudo) over the VMC protocol",
        description="Receive FLAME motion from `dpt-live serve` and send VMC protocol (OSC/UDP): VRM 0 "
                    "visemes A I U E O and VRM 1.0 aa ih ou ee oh, Blink/Blink_L/Blink_R (blink, blinkLeft, "
                    "blinkRight), Neck/Head/eye bone rotations, optionally ARKit blendshapes for Perfect "
                    "Sync avatars, through the model's measured map (avatar_map.json, sent by the server). "
                    "Mapping, calibration and per-app notes: docs/CLIENTS.md.")
    _connection_args(p, url_required=False)
    p.add_argument("--target", default="127.0.0.1:39539",
                   help="HOST:PORT the VTuber app listens on for VMC (default 127.0.0.1:39539)")
    p.add_argument("--rate", type=float, default=60.0, help="bundles per second sent to the app (default 60)")
    p.add_argument("--delay-ms", type=float,
                   help="jitter buffer: play frames this long after their earliest arrival (default: sized "
                        "automatically from the measured arrival jitter, clients/playout.py)")
    p.add_argument("--arkit", action="store_true", help="also send ARKit (Perfect Sync) blendshape names")
    p.add_argument("--mapping", type=pathlib.Path, help="JSON or TOML file overriding mapping keys")
    p.add_argument("--smooth-ms", type=float, help="mouth smoothing time constant (ms; mapping smoothing_ms.mouth)")
    p.add_argument("--mouth-gain", type=float, help="gain on A I U E O (mapping gains)")
    p.add_argument("--neck-share", type=float, help="part of the head rotation sent to the Neck bone (0..1)")
    p.add_argument("--mirror", action="store_true", help="mirror left/right")
    p.add_argument("--calibrate", type=float, metavar="SECONDS",
                   help="rest pose = the first SECONDS of motion (sit quiet), then fixed (default: automatic "
                        "from quiet stretches)")
    p.add_argument("--bones", choices=["all", "head", "none"],
                   help="bones sent: all (Neck, Head, eyes; default), head (Neck, Head), none (blendshapes only)")
    p.add_argument("--seconds", type=float, help="stop after this many seconds")
    p.add_argument("--print-mapping", action="store_true", help="print the effective mapping as JSON and exit")
    p.set_defaults(func=_cmd_vmc)

    p = sub.add_parser(
        "vmc-check", help="measure what a VTuber app receives from the VMC bridge (independent OSC receiver)",
        description="Run the VMC bridge (--arkit) against a live server into a python-osc receiver of its own, "
                    "pause and resume the session in the middle (a generator reset) and print the figures of "
                    "docs/CLIENTS.md: names, mouth at rest, blink peaks, vowel shares, head rotation and jumps.")
    _connection_args(p)
    p.add_argument("--seconds", type=float, default=30.0, help="how long to receive (default 30)")
    p.add_argument("--rate", type=float, default=60.0, help="bundles per second (default 60)")
    p.add_argument("--pause-at", type=float, default=12.0, help="pause the session after this many seconds (0: never)")
    p.add_argument("--pause-s", type=float, default=3.0, help="how long the pause lasts (default 3)")
    p.add_argument("--mapping", type=pathlib.Path, help="JSON or TOML file overriding mapping keys")
    p.add_argument("--json", type=pathlib.Path, help="also write the figures here")
    p.set_defaults(func=_cmd_vmc_check)

    p = sub.add_parser(
        "record", help="record a server's frames to an .npz (animate's layout + timing)",
        description="Write exp (T,50), pose (T,6), shape (T,100) plus seq, audio_time, emit_time, recv_time, "
                    "eyes (NaN when not sent), dropped and reset. Ctrl-C stops and writes.")
    _connection_args(p)
    p.add_argument("-o", "--output", required=True, type=pathlib.Path, help="the .npz to write")
    limit = p.add_mutually_exclusive_group()
    limit.add_argument("--seconds", type=float, help="stop after this many seconds of frames")
    limit.add_argument("--frames", type=int, help="stop after this many frames")
    p.add_argument("--idle-timeout", type=float, default=10.0,
                   help="stop when the server sends nothing for this long (s, default 10)")
    p.add_argument("--reconnect", action="store_true",
                   help="reconnect after a dropped connection instead of stopping")
    p.set_defaults(func=_cmd_record)


def _cmd_vmc(args) -> int:
    from clients.vmc import run_bridge

    return run_bridge(args)


def _cmd_vmc_check(args) -> int:
    from clients.vmc_check import run_check

    return run_check(args)


def _cmd_record(args) -> int:
    from clients.record import run_record

    return run_record(args)
