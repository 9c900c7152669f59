"""`dpt-live distill`: a few-step streaming student from a DiffPoseTalk teacher.

Guidance + step + streaming distillation in one: the student (engines kind "student") takes the
guidance scales (w_audio, w_style) as an input and maps the teacher's noise to the teacher's
full-context, CFG-guided DDIM output in 1, 2 or 4 passes, from the inputs a live streaming
session gives it (training/distill_data.py). Multi-step students are trained unrolled: each step's
x0 is compared with the teacher's, and the next step starts from the DDIM re-noise of the
*detached* previous x0, exactly as diffposetalk.sampler.DDIMSampler runs it.

The student is initialised from the teacher (the learnable positional embedding truncated to the
shorter window); audio encoder, style encoder and the learned start/null vectors are frozen, so the
audio features are computed once when the targets are built and training touches only the
denoiser."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from collections import defaultdict, deque
from pathlib import Path

import numpy as np

from diffposetalk.errors import UserError

log = logging.getLogger("dpt_live.distill")

STEP_CHOICES = (1, 2, 4)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("distill", help="distil a teacher model into a 1/2/4-step streaming student")
    p.add_argument("--teacher", required=True, type=Path, help="teacher model directory")
    p.add_argument("--data", required=True, type=Path, help="HDTF_TFHP-layout lmdb (or a SynthTalk folder)")
    p.add_argument("-o", "--out", required=True, type=Path, help="student model directory (checkpoints)")
    p.add_argument("--steps", type=int, choices=STEP_CHOICES, default=2, help="student denoising steps")
    p.add_argument("--init", type=Path, help="start from this student (e.g. progressive: a 2-step student "
                                              "for a 1-step one) instead of the teacher")
    g = p.add_argument_group("targets (built once, cached, resumable)")
    g.add_argument("--targets", type=Path, help="targets folder (default: <out>-targets next to --out)")
    g.add_argument("--target-sets", type=int, default=2,
                   help="passes over the train clips, each with its own guidance/noise/window draw")
    g.add_argument("--target-set", type=int, action="append",
                   help="build only this set (repeatable; for parallel builds with --only-targets)")
    g.add_argument("--target-steps", type=int, default=25, help="teacher DDIM steps for the targets")
    g.add_argument("--window", type=int, default=8, help="student window in frames (>= hop + lookahead)")
    g.add_argument("--configs", default="80/80,80/40,160/80", help="hop/lookahead ms pairs the student sees")
    g.add_argument("--context-ms", type=int, default=1600)
    g.add_argument("--val-clips", type=int, default=10, help="val clips for the validation loss")
    g.add_argument("--train-clips", type=int, help="only the first N train clips (default: all)")
    g.add_argument("--style-swap", type=float, default=0.0,
                   help="share of targets conditioned on another speaker's style, so the student cannot "
                        "read the style off the voice (docs/DISTILL.md)")
    g.add_argument("--reverse", action="store_true",
                   help="build the missing shards last clip first (a second parallel builder)")
    g.add_argument("--only-targets", action="store_true", help="build the targets and stop")
    g.add_argument("--no-build", action="store_true",
                   help="train on the shards already in --targets (e.g. while parallel builders still run)")
    g = p.add_argument_group("training")
    g.add_argument("--iters", type=int, default=3000)
    g.add_argument("--batch", type=int, default=64)
    g.add_argument("--lr", type=float, default=2e-4)
    g.add_argument("--warmup", type=int, default=100)
    g.add_argument("--schedule", choices=["constant", "cosine"], default="cosine")
    g.add_argument("--clip", type=float, default=1.0, help="gradient norm clip")
    g.add_argument("--vel-weight", type=float, default=5.0, help="velocity term weight")
    g.add_argument("--mouth-weight", type=float, default=1.0, help="weight of the mouth dims in the loss")
    g.add_argument("--context-mix", type=float, default=0.0,
                   help="probability per training window that its previous frames come from another style "
                        "draw of the same clip, amplitude-jittered (decorrelates context and style)")
    g.add_argument("--val-every", type=int, default=250)
    g.add_argument("--save-every", type=int, default=250)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--resume", action="store_true", help="continue the run in --out")
    g.add_argument("--threads", type=int, default=1)
    g.add_argument("--device", default="cpu")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_distill)


def parse_configs(text: str, window: int) -> tuple[tuple[int, int], ...]:
    """--configs: (hop ms, lookahead ms) pairs that fit the student's window."""
    from streaming.windowing import WindowSpec, parse_windows

    out = []
    for hop, la, ctx in parse_windows(text, "--configs", default_context_ms=0, pairs_only=True):
        spec = WindowSpec.from_ms(hop, la, ctx)
        if spec.new_frames > window:
            raise UserError(f"--configs {hop}/{la}: hop + lookahead = {spec.new_frames} frames exceeds the student "
                            f"window of {window} frames (--window)")
        out.append((hop, la))
    return tuple(out)


# --- the student ---------------------------------------------------------------------------------

def make_student(teacher, n_motions: int, steps: int):
    """A student DiffPoseTalk initialised from a loaded teacher: same networks, window
    ``n_motions``, kind "student"; the new guidance embedding starts at zero (= the teacher's plain
    conditional pass)."""
    import torch

    from diffposetalk.model import DiffPoseTalk

    tcfg = teacher.config
    if tcfg.kind != "teacher":
        raise UserError(f"{teacher.path} is already a distilled student: pass a teacher (--init takes a student)")
    if n_motions < 1 or n_motions > tcfg.n_motions:
        raise UserError(f"--window {n_motions}: must be in 1..{tcfg.n_motions} (the teacher's window)")
    cfg = dataclasses.replace(
        # the student is trained to output the clean motion (x0) whatever the teacher predicts, so its
        # config says so and the samplers read its output as x0
        tcfg, n_motions=n_motions, kind="student", student_steps=steps, target="sample",
        description=f"{steps}-step student distilled from {teacher.path.name} ({n_motions}-frame streaming window)")
    cfg.validate("student")
    student = DiffPoseTalk(cfg)
    state = {k: v.detach().clone().cpu() for k, v in teacher.model.state_dict().items()}
    if cfg.learnable_pe:
        state["denoising_net.PE"] = state["denoising_net.PE"][:, :1 + cfg.seq_len].clone()
    missing, unexpected = student.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("denoising_net.guidance_map.") for k in missing):
        raise UserError(f"teacher weights do not fit the student: missing {missing}, unexpected {unexpected}")
    torch.nn.init.zeros_(student.denoising_net.guidance_map[2].weight)
    torch.nn.init.zeros_(student.denoising_net.guidance_map[2].bias)
    return cfg, student.eval()


def trainable(student) -> list:
    """Only the denoiser learns: audio features were computed once with the (shared) audio encoder
    and the start/null vectors are part of the recorded inputs."""
    for p in student.parameters():
        p.requires_grad = False
    for p in student.denoising_net.parameters():
        p.requires_grad = True
    return list(student.denoising_net.parameters())


def unrolled(student, b, steps: int, dim_w, vel_weight: float):
    """Run the student's DDIM steps from the teacher's noise; returns (loss, terms of the last step,
    per-step coef losses). The next step's input is the re-noise of the detached x0."""
    import torch

    from diffposetalk.sampler import DDIMSampler
    from training.distill_losses import student_losses, total

    sched = student.diffusion_sched
    ts = DDIMSampler(steps).timesteps(student)
    n, P = b.x_T.shape[0], student.cfg.n_prev_motions
    null = student.null_style_feat.expand(n, -1, -1)[:, 0] if student.cfg.use_style else None
    style = torch.where(b.has_style[:, None], b.style, null) if null is not None else None
    person = student._person(b.shape, style)
    x, loss, per_step, terms = b.x_T, 0.0, [], {}
    for i, t in enumerate(ts):
        step = torch.full((n,), t, dtype=torch.long, device=x.device)
        out = student.denoising_net(x, b.audio_feat, person, b.prev_motion, b.prev_audio, step,
                                    b.indicator if student.cfg.use_indicator else None, b.guidance)
        x0 = out[:, P:]
        terms = student_losses(x0, b.target, b.indicator, dim_w)
        loss = loss + total(terms, vel_weight) / len(ts)
        per_step.append(terms["coef"].detach())
        if i + 1 < len(ts):
            x0d = x0.detach()
            abar, abar_next = sched.alpha_bars[t], sched.alpha_bars[ts[i + 1]]
            eps = (x - torch.sqrt(abar) * x0d) / torch.sqrt(1 - abar)
            x = torch.sqrt(abar_next) * x0d + torch.sqrt(1 - abar_next) * eps
    return loss, terms, per_step


def validate(student, val, idx_batches, steps: int, dim_w, vel_weight: float, device) -> dict:
    import torch

    student.eval()
    sums = defaultdict(float)
    n = sum(len(i) for i in idx_batches)
    with torch.no_grad():
        for idx in idx_batches:
            b = val.batch(idx, device)
            loss, terms, per_step = unrolled(student, b, steps, dim_w, vel_weight)
            w = len(idx) / n
            sums["val_loss"] += float(loss) * w
            sums["val_coef"] += float(terms["coef"]) * w
            sums["val_vel"] += float(terms["vel"]) * w
            sums["val_lip"] += float(terms["lip"]) * w
            for k, c in enumerate(per_step):
                sums[f"val_coef_step{k + 1}"] += float(c) * w
    student.denoising_net.train()
    return dict(sums)


def build_targets(args, teacher, window: int, configs) -> tuple[list[Path], list[Path]]:
    from training.distill_data import build_shards

    sets = args.target_set if args.target_set else list(range(args.target_sets))
    bad = [s for s in sets if not 0 <= s < args.target_sets]
    if bad:
        raise UserError(f"--target-set {bad}: must be in 0..{args.target_sets - 1}")
    common = dict(n_motions=window, steps=args.target_steps, seed=args.seed, configs=configs,
                  context_ms=args.context_ms, reverse=args.reverse)
    train = build_shards(teacher, args.data, "train", args.targets, sets, max_clips=args.train_clips,
                         style_swap=args.style_swap, **common)
    val = build_shards(teacher, args.data, "val", args.targets, [0], max_clips=args.val_clips, **common)
    return train, val


def cmd_distill(args) -> int:
    import torch
    from tqdm import tqdm

    from diffposetalk.model_dir import load_model_dir, save_model_dir
    from training.distill_data import DistillSet
    from training.distill_losses import dim_weights
    from training.train_denoiser import set_dropout
    from training.train_state import lr_at, resume_model_dir, save_state

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    out = Path(args.out)
    args.targets = args.targets or out.parent / f"{out.name}-targets"
    configs = parse_configs(args.configs, args.window)
    if args.target_set and not args.only_targets:
        raise UserError("--target-set builds part of the targets: use it with --only-targets")
    if args.iters < 1 or args.batch < 1:
        raise UserError("--iters and --batch must be positive")
    if not 0.0 <= args.style_swap <= 1.0:
        raise UserError(f"--style-swap {args.style_swap}: must be a probability in [0, 1]")
    if not 0.0 <= args.context_mix <= 1.0:
        raise UserError(f"--context-mix {args.context_mix}: must be a probability in [0, 1]")
    if not args.resume and not args.only_targets and out.exists() and any(out.iterdir()):
        raise UserError(f"--out {out} is not empty (use --resume to continue a run)")
    teacher = load_model_dir(args.teacher, "cpu")
    if args.no_build:
        train_paths = sorted(args.targets.glob("train_set*.npz"))
        val_paths = sorted(args.targets.glob("val_set*.npz"))
        if not train_paths or not val_paths:
            raise UserError(f"--no-build: {args.targets} holds {len(train_paths)} train and {len(val_paths)} val "
                            "shards; both are needed")
    else:
        train_paths, val_paths = build_targets(args, teacher, args.window, configs)
    if args.only_targets:
        print(f"targets in {args.targets}: {len(train_paths)} train, {len(val_paths)} val shards")
        return 0

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    if args.init:
        init = load_model_dir(args.init, "cpu")
        if init.config.kind != "student" or init.config.n_motions != args.window:
            raise UserError(f"--init {args.init}: needs a student with a {args.window}-frame window")
        cfg = dataclasses.replace(init.config, student_steps=args.steps,
                                  description=f"{args.steps}-step student distilled from "
                                              f"{teacher.path.name}, initialised from {args.init.name}")
        student = init.model
    else:
        cfg, student = make_student(teacher, args.window, args.steps)
    student.to(device).eval()
    student.denoising_net.train()  # the only part that learns (and the only one that runs)
    set_dropout(student.denoising_net, 0.0)  # distillation regresses a deterministic map
    params = trainable(student)
    optimizer = torch.optim.Adam(params, lr=args.lr)
    options = {"teacher": str(args.teacher), "steps": args.steps, "window": args.window, "batch": args.batch,
               "seed": args.seed, "target_sets": args.target_sets, "target_steps": args.target_steps,
               "configs": args.configs, "context_ms": args.context_ms, "vel_weight": args.vel_weight,
               "mouth_weight": args.mouth_weight, "context_mix": args.context_mix, "lr": args.lr, "iters": args.iters,
               "init": str(args.init) if args.init else None}
    step, history = 0, []
    if args.resume:
        step, history = resume_model_dir(out, cfg, student, optimizer, rng, options,
                                         ("teacher", "steps", "window", "batch", "seed", "target_sets",
                                          "target_steps", "configs", "context_ms", "vel_weight",
                                          "mouth_weight", "init", "context_mix"),
                                         "is not this run's student (--teacher/--steps/--window)")

    train = DistillSet(train_paths, args.window)
    val = DistillSet(val_paths, args.window)
    log.info("train targets: %s; val: %s", train.describe(), val.describe())
    # what this student was trained on (with --no-build the shard list is not implied by the options)
    out.mkdir(parents=True, exist_ok=True)
    (out / "distill.json").write_text(json.dumps(
        {"options": options, "train": train.describe(), "val": val.describe(),
         "train_shards": [p.name for p in train_paths], "val_shards": [p.name for p in val_paths]}, indent=1) + "\n")
    stats = {k: v.cpu().numpy() for k, v in teacher.stats.items()}
    dim_w = dim_weights(cfg.motion_dim, cfg.head_pose, args.mouth_weight, device)
    val_idx = np.linspace(0, len(val) - 1, min(len(val), 2048)).astype(int)
    val_batches = [val_idx[i:i + 256] for i in range(0, len(val_idx), 256)]

    def checkpoint(at: int) -> None:
        save_model_dir(out, cfg, student, stats, teacher.styles)
        save_state(out, at, optimizer, rng, options, history)
        (out / "history.json").write_text(json.dumps(history, indent=1) + "\n")

    recent = defaultdict(lambda: deque(maxlen=50))
    bar = tqdm(range(step, args.iters), initial=step, total=args.iters, dynamic_ncols=True, disable=args.quiet)
    for it in bar:
        for g in optimizer.param_groups:
            g["lr"] = lr_at(it, args.lr, args.warmup, args.schedule, args.iters)
        idx = rng.integers(0, len(train), size=args.batch)
        prev = train.decorrelate(idx, rng, args.context_mix) if args.context_mix > 0 else None
        b = train.batch(idx, device, prev)
        loss, terms, per_step = unrolled(student, b, args.steps, dim_w, args.vel_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, args.clip)
        optimizer.step()
        recent["loss"].append(float(loss.detach()))
        for k in ("coef", "vel", "lip"):
            recent[k].append(float(terms[k].detach()))
        bar.set_postfix({k: f"{np.mean(v):.3g}" for k, v in recent.items()})
        done = it + 1
        if done % args.val_every == 0 or done == args.iters:
            v = validate(student, val, val_batches, args.steps, dim_w, args.vel_weight, device)
            history.append({"step": done, **{f"train_{k}": float(np.mean(x)) for k, x in recent.items()}, **v})
            bar.write(f"step {done}: train {np.mean(recent['loss']):.4f}  val {v['val_loss']:.4f} "
                      f"(coef {v['val_coef']:.4f}, lip {v['val_lip']:.4f}, per step "
                      + " ".join(f"{v[f'val_coef_step{k + 1}']:.4f}" for k in range(len(per_step))) + ")")
        if done % args.save_every == 0 or done == args.iters:
            checkpoint(done)
    if step >= args.iters:
        log.info("already at step %d of %d: nothing to do", step, args.iters)
    print(f"student written to {out} ({cfg.student_steps} steps, {cfg.n_motions}-frame window)")
    return 0
