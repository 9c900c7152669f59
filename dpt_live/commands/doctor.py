"""`dpt-live doctor`: what this machine has for the GPU paths (driver, CUDA torch, TensorRT,
pycuda, cuda-python, onnxruntime-gpu) and how to get what is missing; engines/gpu_doctor.py
does the looking. `make gpu-check` prints it first and asks it (--need) which steps can run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

NEED_KEYS = ("driver", "torch-cuda", "tensorrt", "pycuda", "cuda-python", "onnxruntime-gpu", "tensorrt-backend")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="report what this machine has for the GPU paths and how to get what is missing")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the report as JSON")
    p.add_argument("--need", metavar="KEY[,KEY]",
                   help=f"print nothing and exit 0 when all of these are there, else print why not and exit 1 "
                        f"(keys: {', '.join(NEED_KEYS)})")
    p.set_defaults(func=cmd_doctor)


def cmd_doctor(args) -> int:
    from diffposetalk.errors import UserError
    from engines import gpu_doctor

    checks = gpu_doctor.gpu_report()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(gpu_doctor.report_json(checks), indent=2) + "\n")
    if args.need:
        keys = [k.strip() for k in args.need.split(",") if k.strip()]
        unknown = [k for k in keys if k not in NEED_KEYS]
        if unknown:
            raise UserError(f"--need: unknown {', '.join(unknown)} (keys: {', '.join(NEED_KEYS)})")
        by_key = {c.key: c for c in checks}
        missing = [by_key[k] for k in keys if not by_key[k].ok]
        for c in missing:
            print(f"{c.title}: {c.detail}")
        return 1 if missing else 0
    print(gpu_doctor.format_report(checks))
    return 0
