"""`dpt-live eval` (metrics of a model on a dataset split, training/evaluate.py), `dpt-live eval-compare`
(two results, paired, with speaker-bootstrap intervals: training/eval_intervals.py) and `dpt-live probe`
(does a denoiser use its noisy input, training/probe.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from diffposetalk.errors import UserError
from dpt_live.commands.arguments import options_from
from streaming.options import DEFAULT_CONTEXT_MS, DEFAULT_HOP_MS, DEFAULT_LOOKAHEAD_MS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="metrics of a model on a split of an lmdb dataset (writes JSON)")
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--data", required=True, type=Path, help="HDTF_TFHP-layout lmdb (or a SynthTalk folder)")
    p.add_argument("--split", default="test", choices=["train", "val", "test", "all"],
                   help="'all': every split (a dataset made with a seed no model was trained on)")
    p.add_argument("--json", type=Path, help="write the metrics here")
    p.add_argument("--bootstrap", type=int, default=0, metavar="N",
                   help="95 %% intervals of lip error, mouth corr and style retrieval from N resamples of the "
                        "speakers (docs/DISTILL.md)")
    p.add_argument("--sampler", choices=["ddpm", "ddim"], default="ddim")
    p.add_argument("--steps", type=int, help="ddim steps (default 25, or a distilled student's own)")
    p.add_argument("--seeds", type=int, default=2, help="samples per clip (diversity needs >= 2)")
    p.add_argument("--max-clips", type=int, help="first M clips of the split")
    p.add_argument("--max-seconds", type=float, default=20.0, help="evaluate at most this much of each clip")
    p.add_argument("--cfg-audio", type=float, default=1.15)
    p.add_argument("--cfg-style", type=float, default=3.0)
    p.add_argument("--flame", type=Path, help="FLAME model: adds the lip-vertex error")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    # --stream: the same metrics on the live pipeline (StreamSession over each clip's audio)
    p.add_argument("--stream", action="store_true", help="generate through the streaming session")
    p.add_argument("--presets", type=int, default=0, metavar="N",
                   help="also drive the first N clips with every style preset (same audio) and compare them")
    p.add_argument("--swap-styles", action="store_true",
                   help="also drive every clip with another test speaker's style and check which speaker "
                        "the motion is retrieved as (the style's, not the voice's)")
    # with --stream: the window of `dpt-live stream` / `serve` (see their --help)
    p.add_argument("--hop-ms", type=int, default=DEFAULT_HOP_MS)
    p.add_argument("--lookahead-ms", type=int, default=DEFAULT_LOOKAHEAD_MS)
    p.add_argument("--context-ms", type=int, default=DEFAULT_CONTEXT_MS)
    p.add_argument("--regen-ms", type=int, help="default 40 at a 40 ms hop, else 0")
    p.set_defaults(func=cmd_eval)

    register_probe(sub)
    register_compare(sub)


def register_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval-compare", help="two eval results on the same clips: paired differences with "
                                            "speaker-bootstrap intervals")
    p.add_argument("base", type=Path, help="eval JSON of the reference (e.g. the offline teacher)")
    p.add_argument("other", type=Path, help="eval JSON of the model compared with it (e.g. the student)")
    p.add_argument("--bootstrap", type=int, default=2000, metavar="N", help="speaker resamples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path)
    p.set_defaults(func=cmd_compare)


def cmd_compare(args) -> int:
    from training.eval_intervals import compare, format_compare

    results = []
    for path in (args.base, args.other):
        try:
            results.append(json.loads(path.read_text()))
        except (OSError, ValueError) as exc:
            raise UserError(f"{path}: not a readable eval JSON ({exc})") from exc
        if "per_clip" not in results[-1]:
            raise UserError(f"{path}: no per_clip records (written by `dpt-live eval --json`?)")
    if args.bootstrap < 1:
        raise UserError(f"--bootstrap {args.bootstrap}: must be positive")
    result = compare(results[0], results[1], args.bootstrap, args.seed)
    print(format_compare(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


def register_probe(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("probe", help="does a trained denoiser use its noisy input? x0 error per diffusion step")
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--data", required=True, type=Path, help="HDTF_TFHP-layout lmdb (or a SynthTalk folder)")
    p.add_argument("--split", default="val", choices=["train", "val", "test"])
    p.add_argument("--windows", type=int, default=16, help="GT windows (drawn with --seed)")
    p.add_argument("--steps", default="5,25,50,100,200,350,499", help="diffusion steps to probe")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path)
    p.set_defaults(func=cmd_probe)


def cmd_eval(args) -> int:
    from training.evaluate import EvalOptions, evaluate, format_table

    result = evaluate(options_from(args, EvalOptions))
    print(format_table(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1, default=float) + "\n")
        print(f"metrics written to {args.json}")
    return 0


def cmd_probe(args) -> int:
    from training.probe import format_table, probe_model_dir

    try:
        steps = [int(x) for x in args.steps.split(",") if x.strip()]
    except ValueError as exc:
        raise UserError(f"--steps {args.steps!r}: comma-separated integers expected") from exc
    result = probe_model_dir(args.model, args.data, args.split, steps, args.windows, args.seed, args.threads)
    print(format_table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0
