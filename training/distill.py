"""Distillation (`dpt-live distill`): a few-step streaming student from a DiffPoseTalk teacher.

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

import dataclasses
import json
import logging
from collections import defaultdict, deque
from pathlib import Path

import numpy as np

from diffposetalk.config import ModelConfig
from diffposetalk.errors import UserError
from training.train_loop import TrainOptions

log = logging.getLogger("dpt_live.distill")

STEP_CHOICES = (1, 2, 4)


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

def make_student(teacher, n_motions: int, steps: int, n_prev: int | None = None):
    """A student DiffPoseTalk initialised from a loaded teacher: same networks, window
    ``n_motions``, kind "student"; the new guidance embedding starts at zero (= the teacher's plain
    conditional pass). ``n_prev`` (default the teacher's) previous frames: fewer make every pass
    cheaper; the student keeps the teacher's *last* previous-frame positions and start vectors, the
    ones next to the window."""
    import torch

    from diffposetalk.model import DiffPoseTalk

    tcfg = teacher.config
    if tcfg.kind != "teacher":
        raise UserError(f"{teacher.path} is already a distilled student: pass a teacher (--init takes a student)")
    if n_motions < 1 or n_motions > tcfg.n_motions:
        raise UserError(f"--window {n_motions}: must be in 1..{tcfg.n_motions} (the teacher's window)")
    P = tcfg.n_prev_motions
    n_prev = P if n_prev is None else n_prev
    if not 1 <= n_prev <= P:
        raise UserError(f"--n-prev {n_prev}: must be in 1..{P} (the teacher's previous frames)")
    cfg = dataclasses.replace(
        # the student is trained to output the clean motion (x0) whatever the teacher predicts, so its
        # config says so and the samplers read its output as x0
        tcfg, n_motions=n_motions, n_prev_motions=n_prev, kind="student", student_steps=steps, target="sample",
        description=f"{steps}-step student distilled from {teacher.path.name} ({n_motions}-frame streaming window"
                    + (f", {n_prev} previous frames)" if n_prev != P else ")"))
    cfg.validate("student")
    student = DiffPoseTalk(cfg)
    state = {k: v.detach().clone().cpu() for k, v in teacher.model.state_dict().items()}
    if cfg.learnable_pe:  # [person] + the last n_prev previous-frame positions + the first n_motions
        pe = state["denoising_net.PE"]
        state["denoising_net.PE"] = torch.cat([pe[:, :1], pe[:, 1 + P - n_prev:1 + P + n_motions]], dim=1).clone()
    for k in ("start_audio_feat", "start_motion_feat"):
        state[k] = state[k][:, P - n_prev:].clone()
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


def validate(student, val, idx_batches, steps: int, dim_w, vel_weight: float, device) -> dict:
    import torch

    from training.distill_losses import unrolled

    student.eval()
    sums = defaultdict(float)
    n = sum(len(i) for i in idx_batches)
    with torch.no_grad():
        for idx in idx_batches:
            b = val.batch(idx, device)
            loss, terms, per_step, _ = unrolled(student, b, steps, dim_w, vel_weight)
            w = len(idx) / n
            sums["val_loss"] += float(loss) * w
            sums["val_coef"] += float(terms["coef"]) * w
            sums["val_vel"] += float(terms["vel"]) * w
            sums["val_lip"] += float(terms["lip"]) * w
            for k, c in enumerate(per_step):
                sums[f"val_coef_step{k + 1}"] += float(c) * w
    student.denoising_net.train()
    return dict(sums)


def build_targets(opts: DistillOptions, teacher, configs) -> tuple[list[Path], list[Path]]:
    """Build the missing target shards (opts.target_set, or every set) -> (train, val) shard paths:
    from a motion dataset (--data) or from speech alone (--audio)."""
    from training.distill_data import build_audio_shards, build_shards

    sets = opts.target_set if opts.target_set else list(range(opts.target_sets))
    bad = [s for s in sets if not 0 <= s < opts.target_sets]
    if bad:
        raise UserError(f"--target-set {bad}: must be in 0..{opts.target_sets - 1}")
    common = dict(n_motions=opts.window, steps=opts.target_steps, seed=opts.seed, configs=configs,
                  context_ms=opts.context_ms, reverse=opts.reverse, encoder=feature_encoder(opts, teacher),
                  pad_s=opts.pad_silence)
    if opts.audio is not None:
        from training.distill_audio import load_audio_clips, split_audio_clips

        styles = audio_styles(opts, teacher)
        train_clips, val_clips = split_audio_clips(load_audio_clips(opts.audio, opts.segment_seconds),
                                                   opts.val_clips, opts.train_clips)
        log.info("speech: %d train and %d val segments; styles: %s", len(train_clips), len(val_clips),
                 ", ".join(sorted(styles)) or "null only")
        # val first (it is small): a --no-build run can then start on part of the train shards
        val = build_audio_shards(teacher, "val", val_clips, styles, opts.style_mix, opts.targets, [0], **common)
        train = build_audio_shards(teacher, "train", train_clips, styles, opts.style_mix, opts.targets, sets,
                                   **common)
        return train, val
    train = build_shards(teacher, opts.data, "train", opts.targets, sets, max_clips=opts.train_clips,
                         style_swap=opts.style_swap, style_mix=opts.style_mix, **common)
    val = build_shards(teacher, opts.data, "val", opts.targets, [0], max_clips=opts.val_clips, **common)
    return train, val


def feature_encoder(opts: DistillOptions, teacher):
    """The model whose streaming audio encoder makes the student's recorded audio features
    (--stream-encoder), or None: the teacher's audio encoder over each step's window."""
    from diffposetalk.model_dir import load_model_dir

    if opts.stream_encoder is None:
        return None
    enc = load_model_dir(opts.stream_encoder, "cpu")
    if enc.config.stream_encoder is None:
        raise UserError(f"--stream-encoder {opts.stream_encoder}: this model has no streaming audio encoder "
                        "(make one with `dpt-live distill-encoder`)")
    if enc.config.feature_dim != teacher.config.feature_dim:
        raise UserError(f"--stream-encoder {opts.stream_encoder}: {enc.config.feature_dim}-d features, the "
                        f"teacher's denoiser takes {teacher.config.feature_dim}")
    return enc.model


def audio_styles(opts: DistillOptions, teacher) -> dict:
    """The style vectors speech-only targets are conditioned on: --styles, else the teacher's presets
    (none: every target uses the null style)."""
    from training.distill_audio import load_styles

    if not teacher.config.use_style:
        return {}
    if opts.styles is not None:
        return load_styles(opts.styles, teacher.config.d_style)
    if not teacher.styles:
        log.warning("%s has no styles/ presets and no --styles was given: every target uses the null style",
                    teacher.path)
    return dict(teacher.styles)


# --- the run --------------------------------------------------------------------------------------

@dataclasses.dataclass(kw_only=True)
class DistillOptions(TrainOptions):
    """`dpt-live distill` (the options of the same names)."""

    teacher: Path  # teacher model directory
    data: Path | None = None  # motion dataset (HDTF_TFHP-layout lmdb or a SynthTalk folder), or
    audio: Path | None = None  # ... speech alone: a folder of .wav/.flac (training/distill_audio.py)
    styles: Path | None = None  # with audio: .npy style vectors (default: the teacher's presets)
    style_mix: float = 0.0  # share of targets conditioned on a mix of two styles (given ones / speakers')
    segment_seconds: float = 20.0  # with audio: longer files are cut into segments this long
    steps: int = 2  # student denoising steps (STEP_CHOICES)
    init: Path | None = None  # start from this student instead of the teacher (progressive distillation)
    stream_encoder: Path | None = None  # record the student's audio features with this model's streaming encoder
    # targets (built once, cached, resumable)
    targets: Path | None = None  # default: <out>-targets next to out
    target_sets: int = 2  # passes over the train clips, each with its own guidance/noise/window draw
    target_set: list[int] | None = None  # build only these sets (with only_targets)
    target_steps: int = 25  # teacher DDIM steps for the targets
    window: int = 8  # student window in frames
    n_prev: int | None = None  # previous frames the student continues from (None: the teacher's)
    configs: str = "80/80,80/40,160/80"  # hop/lookahead ms pairs the student sees
    context_ms: int = 1600
    val_clips: int = 10
    train_clips: int | None = None  # only the first N train clips
    style_swap: float = 0.0  # share of targets conditioned on another speaker's style
    pad_silence: float = 0.0  # seconds of digital silence added before and after every clip
    reverse: bool = False  # build the missing shards last clip first
    only_targets: bool = False  # build the targets and stop
    no_build: bool = False  # train on the shards already in targets
    # training
    iters: int = 3000
    batch: int = 64
    lr: float = 2e-4
    schedule: str = "cosine"
    vel_weight: float = 5.0  # velocity term weight
    mouth_weight: float = 1.0  # weight of the mouth dims in the loss
    context_mix: float = 0.0  # probability that a window's previous frames come from another style draw
    rollout: int = 0  # rollouts per iteration (training/distill_rollout.py); 0: teacher-forced windows only
    style_weight: float = 1.0  # weight of the rollouts' style term
    threads: int = 1

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.targets = self.targets or self.out.parent / f"{self.out.name}-targets"


@dataclasses.dataclass
class DistillResult:
    targets: Path
    train_shards: list[Path]
    val_shards: list[Path]
    config: ModelConfig | None = None  # the student's; None when only the targets were built


@dataclasses.dataclass
class StudentRun:
    """The student being trained and everything a checkpoint saves with it."""

    config: ModelConfig
    student: object  # DiffPoseTalk
    params: list
    optimizer: object  # torch.optim.Adam
    rng: np.random.Generator  # the batch draws
    options: dict  # recorded with the checkpoints, checked on --resume
    step: int = 0
    history: list = dataclasses.field(default_factory=list)


def distill(opts: DistillOptions) -> DistillResult:
    """Build (or reuse) the targets, then, unless ``opts.only_targets``, train the student in
    ``opts.out`` (``opts.resume`` continues a run)."""
    import torch

    from diffposetalk.model_dir import load_model_dir

    torch.set_num_threads(opts.threads)
    device = torch.device(opts.device)
    configs = check_options(opts)
    teacher = load_model_dir(opts.teacher, "cpu")
    train_paths, val_paths = target_shards(opts, teacher, configs)
    if opts.only_targets:
        return DistillResult(opts.targets, train_paths, val_paths)

    run = prepare_student(opts, teacher, device)
    train_student(opts, teacher, run, train_paths, val_paths, device)
    if run.step >= opts.iters:
        log.info("already at step %d of %d: nothing to do", run.step, opts.iters)
    return DistillResult(opts.targets, train_paths, val_paths, run.config)


def check_options(opts: DistillOptions) -> tuple[tuple[int, int], ...]:
    """Refuse contradictory options before anything is loaded; returns the parsed --configs."""
    configs = parse_configs(opts.configs, opts.window)
    if (opts.data is None) == (opts.audio is None):
        raise UserError("give either --data (a motion dataset) or --audio (a folder of speech files)")
    if opts.audio is None and opts.styles is not None:
        raise UserError("--styles goes with --audio (with --data the styles come from the dataset's motion)")
    if opts.audio is not None and opts.style_swap:
        raise UserError("--style-swap needs a motion dataset (--data); with --audio use --style-mix")
    if not 0.0 <= opts.style_mix <= 1.0:
        raise UserError(f"--style-mix {opts.style_mix}: must be a probability in [0, 1]")
    if opts.target_set and not opts.only_targets:
        raise UserError("--target-set builds part of the targets: use it with --only-targets")
    if opts.iters < 1 or opts.batch < 1:
        raise UserError("--iters and --batch must be positive")
    if not 0.0 <= opts.style_swap <= 1.0:
        raise UserError(f"--style-swap {opts.style_swap}: must be a probability in [0, 1]")
    if opts.pad_silence < 0:
        raise UserError(f"--pad-silence {opts.pad_silence}: seconds, not negative")
    if opts.rollout < 0 or opts.style_weight < 0:
        raise UserError("--rollout and --style-weight must not be negative")
    if not 0.0 <= opts.context_mix <= 1.0:
        raise UserError(f"--context-mix {opts.context_mix}: must be a probability in [0, 1]")
    out = opts.out
    if not opts.resume and not opts.only_targets and out.exists() and any(out.iterdir()):
        raise UserError(f"--out {out} is not empty (use --resume to continue a run)")
    return configs


def target_shards(opts: DistillOptions, teacher, configs) -> tuple[list[Path], list[Path]]:
    """(train, val) shard paths: the ones already in opts.targets with --no-build, else built."""
    if not opts.no_build:
        return build_targets(opts, teacher, configs)
    train_paths = sorted(opts.targets.glob("train_set*.npz"))
    val_paths = sorted(opts.targets.glob("val_set*.npz"))
    if not train_paths or not val_paths:
        raise UserError(f"--no-build: {opts.targets} holds {len(train_paths)} train and {len(val_paths)} val "
                        "shards; both are needed")
    return train_paths, val_paths


def prepare_student(opts: DistillOptions, teacher, device) -> StudentRun:
    """Seed, the student (from the teacher or --init) with only its denoiser learning, its
    optimizer, and with --resume the saved weights, optimizer and RNG states."""
    import torch

    from training.train_denoiser import set_dropout

    torch.manual_seed(opts.seed)
    rng = np.random.default_rng(opts.seed)
    cfg, student = _initial_student(opts, teacher)
    student.to(device).eval()
    student.denoising_net.train()  # the only part that learns (and the only one that runs)
    set_dropout(student.denoising_net, 0.0)  # distillation regresses a deterministic map
    params = trainable(student)
    run = StudentRun(cfg, student, params, torch.optim.Adam(params, lr=opts.lr), rng, _recorded_options(opts))
    if opts.resume:
        run.step, run.history = _resume(opts, run)
    return run


def _initial_student(opts: DistillOptions, teacher):
    """(config, student): the --init student with this run's step count, or one made from the teacher."""
    from diffposetalk.model_dir import load_model_dir

    if not opts.init:
        return make_student(teacher, opts.window, opts.steps, opts.n_prev)
    init = load_model_dir(opts.init, "cpu")
    if init.config.kind != "student" or init.config.n_motions != opts.window:
        raise UserError(f"--init {opts.init}: needs a student with a {opts.window}-frame window")
    if opts.n_prev is not None and init.config.n_prev_motions != opts.n_prev:
        raise UserError(f"--init {opts.init}: continues from {init.config.n_prev_motions} previous frames, "
                        f"not {opts.n_prev} (--n-prev)")
    cfg = dataclasses.replace(init.config, student_steps=opts.steps,
                              description=f"{opts.steps}-step student distilled from "
                                          f"{teacher.path.name}, initialised from {Path(opts.init).name}")
    return cfg, init.model


def _recorded_options(opts: DistillOptions) -> dict:
    """The options saved with the checkpoints and in distill.json."""
    return {"teacher": str(opts.teacher), "steps": opts.steps, "window": opts.window, "n_prev": opts.n_prev,
            "batch": opts.batch,
            "seed": opts.seed, "target_sets": opts.target_sets, "target_steps": opts.target_steps,
            "configs": opts.configs, "context_ms": opts.context_ms, "vel_weight": opts.vel_weight,
            "mouth_weight": opts.mouth_weight, "context_mix": opts.context_mix, "lr": opts.lr, "iters": opts.iters,
            "rollout": opts.rollout, "style_weight": opts.style_weight,
            "init": str(opts.init) if opts.init else None,
            "data": str(opts.data) if opts.data else None, "audio": str(opts.audio) if opts.audio else None,
            "styles": str(opts.styles) if opts.styles else None, "style_mix": opts.style_mix,
            "segment_seconds": opts.segment_seconds,
            "stream_encoder": str(opts.stream_encoder) if opts.stream_encoder else None}


def _resume(opts: DistillOptions, run: StudentRun) -> tuple[int, list]:
    from training.train_state import resume_model_dir

    return resume_model_dir(opts.out, run.config, run.student, run.optimizer, run.rng, run.options,
                            ("teacher", "steps", "window", "n_prev", "batch", "seed", "target_sets",
                             "target_steps", "configs", "context_ms", "vel_weight",
                             "mouth_weight", "init", "context_mix", "audio", "styles", "style_mix",
                             "rollout", "style_weight",
                             "segment_seconds"),
                            "is not this run's student (--teacher/--steps/--window/--n-prev)")


def train_student(opts: DistillOptions, teacher, run: StudentRun, train_paths: list[Path], val_paths: list[Path],
                  device) -> None:
    """The training loop over the target shards, from ``run.step``; checkpoints (and distill.json,
    what this student was trained on) go to opts.out."""
    from diffposetalk.model_dir import save_model_dir
    from training.distill_data import DistillSet
    from training.distill_losses import dim_weights, unrolled
    from training.train_loop import optimizer_step, run_training
    from training.train_state import save_state

    out, cfg, student, rng, history = opts.out, run.config, run.student, run.rng, run.history
    train = DistillSet(train_paths, opts.window, cfg.n_prev_motions)
    val = DistillSet(val_paths, opts.window, cfg.n_prev_motions)
    want = "window" if opts.stream_encoder is None else "stream"
    for name, part in (("train", train), ("val", val)):
        if part.features != want:
            raise UserError(f"the {name} targets in {opts.targets} hold {part.features} audio features, this run "
                            f"asks for {want} ones (--stream-encoder): use another --targets folder")
    log.info("train targets: %s; val: %s", train.describe(), val.describe())
    # what this student was trained on (with --no-build the shard list is not implied by the options)
    out.mkdir(parents=True, exist_ok=True)
    (out / "distill.json").write_text(json.dumps(
        {"options": run.options, "train": train.describe(), "val": val.describe(),
         "train_shards": [p.name for p in train_paths], "val_shards": [p.name for p in val_paths]}, indent=1) + "\n")
    stats = {k: v.cpu().numpy() for k, v in teacher.stats.items()}
    dim_w = dim_weights(cfg.motion_dim, cfg.head_pose, opts.mouth_weight, device)
    val_idx = np.linspace(0, len(val) - 1, min(len(val), 2048)).astype(int)
    val_batches = [val_idx[i:i + 256] for i in range(0, len(val_idx), 256)]
    recent = defaultdict(lambda: deque(maxlen=50))
    rollouts = val_rollouts = None
    if opts.rollout:
        from training.distill_rollout import Rollouts, rollout_losses

        frames = student.cfg.style_encoder.n_motions if student.style_encoder is not None else 100
        rollouts, val_rollouts = Rollouts(train, frames), Rollouts(val, frames)
        val_rows = val_rollouts.draw(np.random.default_rng(0), 16)  # the same val rollouts every time
        log.info("rollouts: %d steps of %d frames from %d train starts", rollouts.K, rollouts.hop,
                 len(rollouts.starts))

    def train_step() -> dict:
        idx = rng.integers(0, len(train), size=opts.batch)
        prev = train.decorrelate(idx, rng, opts.context_mix) if opts.context_mix > 0 else None
        loss, terms, _, _ = unrolled(student, train.batch(idx, device, prev), opts.steps, dim_w, opts.vel_weight)
        if rollouts is not None:
            r = rollout_losses(student, train, rollouts.draw(rng, opts.rollout), rollouts.hop, opts.steps, dim_w, device)
            loss = loss + r["coef"] + opts.vel_weight * r["vel"] + opts.style_weight * r["style"]
            for k in ("coef", "style"):
                recent[f"roll_{k}"].append(float(r[k].detach()))
        optimizer_step(run.optimizer, loss, run.params, opts.clip)
        recent["loss"].append(float(loss.detach()))
        for k in ("coef", "vel", "lip"):
            recent[k].append(float(terms[k].detach()))
        return {k: f"{np.mean(v):.3g}" for k, v in recent.items()}

    def validate_now(done: int) -> str:
        v = validate(student, val, val_batches, opts.steps, dim_w, opts.vel_weight, device)
        if val_rollouts is not None:
            import torch

            student.eval()
            with torch.no_grad():
                r = rollout_losses(student, val, val_rows, val_rollouts.hop, opts.steps, dim_w, device)
            student.denoising_net.train()
            v.update({f"val_rollout_{k}": float(x) for k, x in r.items()})
        history.append({"step": done, **{f"train_{k}": float(np.mean(x)) for k, x in recent.items()}, **v})
        per_step = [x for k, x in v.items() if k.startswith("val_coef_step")]
        return (f"step {done}: train {np.mean(recent['loss']):.4f}  val {v['val_loss']:.4f} "
                f"(coef {v['val_coef']:.4f}, lip {v['val_lip']:.4f}, per step "
                + " ".join(f"{x:.4f}" for x in per_step) + ")"
                + ("" if val_rollouts is None else
                   f"  rollout coef {v['val_rollout_coef']:.4f} vel {v['val_rollout_vel']:.5f} "
                   f"style {v['val_rollout_style']:.4f}"))

    def checkpoint(at: int) -> None:
        save_model_dir(out, cfg, student, stats, teacher.styles)
        save_state(out, at, run.optimizer, rng, run.options, history)
        (out / "history.json").write_text(json.dumps(history, indent=1) + "\n")

    run_training(run.step, opts, run.optimizer, train_step, validate_now, checkpoint)
