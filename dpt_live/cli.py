"""`dpt-live` console script. Each capability registers its subcommands from its own module;
heavy imports (torch, transformers) happen inside the command functions, not at registration."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from diffposetalk.errors import UserError
from dpt_live import __version__

# Modules that expose register(subparsers). Order = order in --help.
COMMAND_MODULES = [
    "dpt_live.commands.model",
    "dpt_live.commands.flame",
    "dpt_live.commands.synth",
    "dpt_live.commands.train",
    "dpt_live.commands.evaluate",  # eval, probe
    "dpt_live.commands.presets",
    "dpt_live.commands.avatar_map",  # fit-avatar-map
    "dpt_live.commands.voices",  # voices fetch, voice-check
    "dpt_live.commands.distill",
    "dpt_live.commands.distill_encoder",
    "dpt_live.commands.stream",
    "dpt_live.commands.export",
    "dpt_live.commands.serve",
    "dpt_live.commands.clients",
    "dpt_live.commands.bench",
    "dpt_live.commands.bench_e2e",
    "dpt_live.commands.doctor",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dpt-live", description="DiffPoseTalk as a real-time streaming FLAME avatar driver.")
    parser.add_argument("--version", action="version", version=f"dpt-live {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    from clients.ws_client import ClientError
    from diffposetalk.safe_pickle import CheckpointError, UnsafePickleError

    try:
        return int(args.func(args) or 0)
    except (UserError, ClientError, CheckpointError, UnsafePickleError) as exc:
        print(f"dpt-live {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
