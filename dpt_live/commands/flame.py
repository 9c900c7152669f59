"""CLI command `flame-verts`: FLAME coefficients to vertices."""

from __future__ import annotations

import pathlib

import numpy as np

from diffposetalk.errors import UserError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "flame-verts", help="turn FLAME coefficients (.npz: shape, exp, pose) into vertices (.npy)",
        description="Run FLAME on a coefficient file (DiffPoseTalk output: exp (T,50), pose (T,6), "
                    "shape (T,100) or (100,)) and write (T, 5023, 3) float32 vertices.")
    p.add_argument("--flame", required=True, type=pathlib.Path,
                   help="FLAME model: generic_model.pkl (2020), flame2023_Open.pkl or .npz")
    p.add_argument("--coef", required=True, type=pathlib.Path, help="coefficient .npz")
    p.add_argument("-o", "--output", required=True, type=pathlib.Path, help="vertices .npy to write")
    p.add_argument("--batch", type=int, default=256, help="frames per forward pass (bounds memory)")
    p.set_defaults(func=cmd_flame_verts)


def cmd_flame_verts(args) -> int:
    import torch

    from diffposetalk.flame import Flame, load_coefficients, load_flame

    if args.batch < 1:
        raise UserError("--batch must be at least 1")
    shape, exp, pose = load_coefficients(args.coef)
    data = load_flame(args.flame)
    try:
        flame = Flame(data, n_shape=shape.shape[-1], n_exp=exp.shape[1])
    except ValueError as exc:
        raise UserError(f"{args.coef} does not fit {args.flame}: {exc}") from exc

    out = np.empty((exp.shape[0], data.n_vertices, 3), dtype=np.float32)
    with torch.no_grad():
        for start in range(0, exp.shape[0], args.batch):
            sl = slice(start, start + args.batch)
            shape_sl = shape if shape.ndim == 1 else shape[sl]  # one identity: Flame broadcasts it
            out[sl] = flame(torch.from_numpy(shape_sl), torch.from_numpy(exp[sl]),
                            torch.from_numpy(pose[sl])).numpy()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    np.save(args.output, out)
    print(f"wrote {args.output}: {out.shape[0]} frames x {out.shape[1]} vertices")
    return 0
