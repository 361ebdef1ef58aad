"""Command-line options of `python -m gan_dist.train`, checked before any work starts.

A preset fills the recipe's options that the command line leaves out: `vanilla` is the
vanilla recipe (PyTorch-GAN's gan.py MLP, BCE, Adam 2e-4 (0.5, 0.999)), `modern` an R3GAN-style
one (residual nets, relativistic loss with R1 + R2, Adam (0, 0.99), cosine decay, G_ema with
a ramp-up), whose networks and some values depend on --size (training/presets.py). Those options
default to None here, so an explicit flag always wins.
"""
import argparse
import math
import os
from typing import NamedTuple

from gan_dist.budgets import BYTES_PER_PARAM, MAX_PARAMS, MAX_SEED, BudgetError
from gan_dist.networks.ada import DEFAULT_PIPE, PIPES
from gan_dist.networks.augment import parse_policy
from gan_dist.networks.figures import check_params
from gan_dist.networks.losses import LOSSES
from gan_dist.networks.models import ARCHS, GANConfig
from gan_dist.networks.sizes import SIZES, TABLE
from gan_dist.training.augmentation import resolve_aug
from gan_dist.training.config_file import apply_config
from gan_dist.training.ddp import COMM_HOOKS
from gan_dist.training.presets import GAMMA_FOR_RES, MODERN, modern_values, resolve_size

# --preset modern on --arch mlp/dcgan (no --size): R3GAN's gamma per resolution (GAMMA_FOR_RES); other sizes (only
# mlp/dcgan take them) use StyleGAN2-ADA's heuristic 0.0002 x size^2 / batch. On --arch resnet, --size decides.
PRESETS = {
    "vanilla": {"arch": "mlp", "loss": "bce", "r1_gamma": 0.0, "r2_gamma": 0.0, "lr": 0.0002, "b1": 0.5,
                "b2": 0.999, "ema_kimg": 10.0, "ema_rampup": None, "schedule": "constant"},
    "modern": {"arch": "resnet", "loss": "rpgan", "r1_gamma": "for --img_size", "r2_gamma": "for --img_size",
               "lr": 0.0002, "b1": 0.0, "b2": 0.99, "ema_kimg": 5.0, "ema_rampup": 0.05, "schedule": "cosine"},
}
# what options a preset leaves alone default to (the values they had before presets filled them)
FALLBACK = {"reg_every": 1, "mbstd_group": 0, "gamma_end_ratio": 0.1, "width": 64, "blocks": 1, "group_size": 16,
            "expansion": 2}


def preset_help(name, text=""):
    by_size = name in MODERN["small"]  # the modern preset's value on --arch resnet depends on --size
    values = [f"{preset}{' on mlp/dcgan' if by_size and preset == 'modern' else ''} {table[name]}"
              for preset, table in PRESETS.items() if name in table]
    if by_size:
        values.append("modern on resnet: by --size, docs/training.md")
    return f"{text} (default from --preset: {', '.join(values)})".strip()


def parse_betas(text):
    try:
        b1, b2 = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected B1,B2 (e.g. 0,0.99), got {text!r}")
    return [b1, b2]


def parse_blocks(text):
    try:
        counts = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a block count or one per stage (e.g. 2 or 2,2,1,1), got {text!r}")
    return counts[0] if len(counts) == 1 else counts


def parse_widths(text):
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated channel counts (e.g. 64,64,32,16), got {text!r}")


def resolve_preset(args):
    """Fill the options left at None from the preset (on --arch resnet, for its --size: presets.py), then the
    per-network ones from the shared ones. ValueError for --size on another arch."""
    values = dict(PRESETS[args.preset])
    resolve_size(args, args.arch or values["arch"])
    if args.preset == "modern" and args.size and args.img_size in TABLE[args.size]:
        values.update(modern_values(args.size, args.img_size))
    for name, value in {**FALLBACK, **values}.items():
        if getattr(args, name) is None:
            if name in ("r1_gamma", "r2_gamma") and isinstance(value, str):
                value = GAMMA_FOR_RES.get(args.img_size, 0.0002 * args.img_size ** 2 / args.batch_size)
            setattr(args, name, value)
    args.lr_g = args.lr if args.lr_g is None else args.lr_g
    args.lr_d = args.lr if args.lr_d is None else args.lr_d
    args.betas_g = [args.b1, args.b2] if args.betas_g is None else args.betas_g
    args.betas_d = [args.b1, args.b2] if args.betas_d is None else args.betas_d
    return args


class BatchSplit(NamedTuple):
    """How one optimizer step's images divide: micro-batches per process, processes."""
    micro_batch: int  # images in one forward/backward (the per-GPU batch)
    accumulation: int  # micro-batches per process per optimizer step
    processes: int

    @property
    def per_process(self):  # --batch_size
        return self.micro_batch * self.accumulation

    @property
    def global_batch(self):
        return self.per_process * self.processes

    def to_dict(self):
        return {"global_batch": self.global_batch, "per_process": self.per_process, "micro_batch": self.micro_batch,
                "gradient_accumulation_steps": self.accumulation, "processes": self.processes}

    def __str__(self):
        procs = f"{self.processes} process{'es' if self.processes > 1 else ''}"
        if self.accumulation == 1:
            return f"batch {self.per_process} per process, global {self.global_batch} ({self.per_process} x {procs})"
        return (f"batch {self.per_process} per process in {self.accumulation} micro-batches of {self.micro_batch} "
                f"(gradient accumulation), global {self.global_batch} ({self.micro_batch} x {self.accumulation} "
                f"micro-batches x {procs})")


def split_batch(batch_size, accumulation=None, batch_gpu=None):
    """(micro-batch, accumulation steps) for --batch_size, --gradient_accumulation_steps and --batch_gpu (None =
    not given); ValueError naming the flags when the batch does not split into equal micro-batches."""
    for name, value in (("gradient_accumulation_steps", accumulation), ("batch_gpu", batch_gpu)):
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be >= 1, got {value}")
    if accumulation is None:
        if batch_gpu is None or batch_gpu >= batch_size:
            return batch_size, 1
        if batch_size % batch_gpu:
            raise ValueError(f"--batch_size {batch_size} does not split into micro-batches of --batch_gpu "
                             f"{batch_gpu}; use a --batch_gpu that divides it")
        return batch_gpu, batch_size // batch_gpu
    if batch_size % accumulation:
        raise ValueError(f"--batch_size {batch_size} does not split into --gradient_accumulation_steps "
                         f"{accumulation} equal micro-batches; use a --batch_size that is a multiple of it")
    micro = batch_size // accumulation
    if batch_gpu is not None and micro > batch_gpu:
        raise ValueError(f"--gradient_accumulation_steps {accumulation} gives micro-batches of {micro}, above "
                         f"--batch_gpu {batch_gpu}; give one of the two")
    return micro, accumulation


def gan_config(args, classes=()):
    """The networks' configuration (GANConfig) these options ask for; `classes`: the pack's class names (--cond)."""
    return GANConfig(args.arch, args.latent_dim, args.img_size, args.channels, width=args.width,
                     widths=tuple(args.widths or ()), blocks=args.blocks, group_size=args.group_size,
                     expansion=args.expansion, mapping_layers=args.mapping_layers, pacgan=args.pacgan,
                     mbstd_group=args.mbstd_group, size=args.size or "", classes=tuple(classes))


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="gan_dist.train",
                                description="Train a GAN on WebDataset shards with Accelerate.")
    p.add_argument("--preset", choices=sorted(PRESETS), default="vanilla",
                   help="the recipe for the options marked 'default from --preset' (explicit flags win)")
    # the vanilla recipe's hyper-parameters (PyTorch-GAN's gan.py), names and defaults
    p.add_argument("--n_epochs", type=int, default=50, help="passes over the dataset at the global batch")
    p.add_argument("--batch_size", type=int, default=64,
                   help="images per process per optimizer step, whatever the accumulation: the global batch is "
                        "batch_size x processes")
    p.add_argument("--lr", type=float, default=None, help=preset_help("lr", "Adam learning rate (G and D)"))
    p.add_argument("--b1", type=float, default=None, help=preset_help("b1", "Adam beta1"))
    p.add_argument("--b2", type=float, default=None, help=preset_help("b2", "Adam beta2"))
    p.add_argument("--n_cpu", type=int, default=2, help="data loader worker processes per process")
    p.add_argument("--cache_gb", type=float, default=4.0,
                   help="hold the decoded dataset in each process's RAM when it is at most this many GiB "
                        "(true epochs, no decoding per step); 0 streams from the shards always")
    p.add_argument("--data_on_device", action=argparse.BooleanOptionalAction, default=True,
                   help="hold the in-memory set (see --cache_gb) on the training device when it takes at most half of "
                        "the device's free memory, and index each batch there; --no-data_on_device keeps it in "
                        "host memory")
    p.add_argument("--decode_on_device", action="store_true",
                   help="stream JPEG shards (--format jpg) and decode each batch on the training device "
                        "(nvJPEG on CUDA); the workers only read the tars")
    p.add_argument("--latent_dim", type=int, default=100)
    p.add_argument("--img_size", type=int, default=128)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--sample_interval", type=int, default=500, help="steps between sample grids")
    # data, model, run
    p.add_argument("--config", default=None,
                   help="YAML or JSON file of option values, e.g. configs/*.yaml or a run's args.json; flags given "
                        "here win")
    p.add_argument("--data", default=None, help="shard directory written by `python -m gan_dist.shard` (required)")
    p.add_argument("--shard_url", default=None,
                   help="shards elsewhere (object storage, HTTP): a URL with {file} for each shard name, e.g. "
                        "'pipe:aws s3 cp s3://bucket/lfw/{file} -'; --data then only needs manifest.json")
    p.add_argument("--skip_verify", action="store_true",
                   help="read local shards without checking them against the sha256 in manifest.json")
    p.add_argument("--arch", choices=ARCHS, default=None,
                   help=preset_help("arch", "mlp: the vanilla MLP pair; dcgan: conv nets; resnet: R3GAN-style"))
    # the recipe: networks, loss, penalties, optimizers and schedules
    p.add_argument("--size", choices=SIZES, default=None,
                   help="resnet: the networks' size (widths, blocks, expansion, group size per resolution; "
                        "docs/training.md); with --preset modern also its size's recipe. Default with --preset "
                        "modern: small on the CPU, base on a CUDA GPU; the flags below win over it")
    p.add_argument("--width", type=int, default=None,
                   help="resnet: channels per stage up to 32x32, halved above (default: --size's widths, else 64)")
    p.add_argument("--widths", type=parse_widths, default=None,
                   help="resnet: channels per stage from 4x4 up to --img_size, e.g. 64,64,32,16 at 32 px")
    p.add_argument("--blocks", type=parse_blocks, default=None,
                   help="resnet: residual blocks per stage, or one count per stage from 4x4 up (e.g. 2,2,1,1); "
                        "0 leaves a stage with its resampling alone (default: --size's, else 1)")
    p.add_argument("--group_size", type=int, default=None,
                   help="resnet: channels per group in the grouped 3x3 convs (default: --size's, else 16)")
    p.add_argument("--expansion", type=int, default=None,
                   help="resnet: inner width of a block / its width (default: --size's, else 2)")
    p.add_argument("--mapping_layers", type=int, default=0,
                   help="resnet: hidden layers of an MLP on z before G's first stage (0: a linear map only)")
    p.add_argument("--pacgan", type=int, default=1,
                   help="D judges this many images at once, stacked along the channels (PacGAN; 1 = off); "
                        "--batch_size must be a multiple")
    p.add_argument("--mbstd_group", type=int, default=None,
                   help=preset_help("mbstd_group", "resnet: D also sees the std of its 4x4 features over groups of "
                                    "this many inputs (StyleGAN's minibatch std; 0 = off); the (micro-)batch per "
                                    "process over --pacgan must be a multiple; default 0"))
    p.add_argument("--cond", action="store_true",
                   help="class-conditional G and D from the pack's class labels (the shards' cls): G embeds the "
                        "class beside z, D adds a projection head; the fakes take the real batch's classes")
    p.add_argument("--loss", choices=LOSSES, default=None,
                   help=preset_help("loss", "bce: the vanilla BCE; hinge; rpgan: relativistic pairing"))
    p.add_argument("--r1_gamma", type=float, default=None,
                   help=preset_help("r1_gamma", "weight of the R1 penalty on reals (D loss + gamma/2 R1); 0 = off; "
                                                "modern on mlp/dcgan: " + ", ".join(f"{g:g} at {r}" for r, g in
                                                                           GAMMA_FOR_RES.items())))
    p.add_argument("--r2_gamma", type=float, default=None,
                   help=preset_help("r2_gamma", "weight of the R2 penalty on fakes; 0 = off"))
    p.add_argument("--reg_every", type=int, default=None,
                   help=preset_help("reg_every", "lazy regularisation: penalise every N steps with gamma x N "
                                    "(1 = every step); default 1"))
    p.add_argument("--lr_g", type=float, default=None, help="G's learning rate (default --lr)")
    p.add_argument("--lr_d", type=float, default=None, help="D's learning rate (default --lr)")
    p.add_argument("--betas_g", type=parse_betas, default=None, help="G's Adam betas B1,B2 (default --b1,--b2)")
    p.add_argument("--betas_d", type=parse_betas, default=None, help="D's Adam betas B1,B2 (default --b1,--b2)")
    p.add_argument("--schedule", choices=("constant", "cosine"), default=None,
                   help=preset_help("schedule", "cosine: learning rates and gammas decay over the run "
                                                "(to --lr_end_ratio and --gamma_end_ratio of their start)"))
    p.add_argument("--schedule_kimg", type=float, default=None,
                   help="length of the cosine decay in thousands of images (default: the whole run); set it to "
                        "resume or extend a run on the same schedule")
    p.add_argument("--lr_end_ratio", type=float, default=0.25, help="final / initial learning rate with cosine")
    p.add_argument("--gamma_end_ratio", type=float, default=None,
                   help=preset_help("gamma_end_ratio", "final / initial gamma with cosine; default 0.1"))
    p.add_argument("--mirror", action="store_true",
                   help="flip half of the real images horizontally (seeded by step and rank: resumes exactly); "
                        "not for data whose mirror image is another thing, such as digits")
    p.add_argument("--output_dir", default="runs/gan")
    p.add_argument("--max_train_steps", type=int, default=None, help="overrides --n_epochs when set")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n_samples", type=int, default=25, help="images in each fixed-noise grid (5x5)")
    # EMA, augmentation, evaluation
    p.add_argument("--ema_kimg", type=float, default=None,
                   help=preset_help("ema_kimg", "half-life of G's moving average (G_ema, used for samples and "
                                                "metrics) in thousands of images; 0 turns it off"))
    p.add_argument("--ema_rampup", type=float, default=None,
                   help=preset_help("ema_rampup", "grow G_ema's half-life with training: at most this fraction of "
                                                  "the images seen so far (StyleGAN2-ADA uses 0.05); None = off"))
    p.add_argument("--aug", choices=("none", "diffaug", "ada"), default=None,
                   help="augment every image D sees, real and fake, in both phases: diffaug (a fixed DiffAugment "
                        "policy, --diffaug) or ada (StyleGAN2-ADA's pipeline, applied with a probability p adapted "
                        "to D's overfitting); default diffaug when --diffaug is given, else none")
    p.add_argument("--diffaug", default="", help="DiffAugment for real and fake images in both phases, "
                                                 "e.g. color,translation,cutout (for small datasets; implies "
                                                 "--aug diffaug, whose default policy this is)")
    p.add_argument("--aug_pipe", choices=tuple(PIPES), default=None,
                   help=f"--aug ada: the groups of transforms, StyleGAN2-ADA's presets: blit (flips, 90-degree "
                        f"rotations, integer shifts), geom (scaling, rotation, fractional shifts), color, noise, "
                        f"cutout, and their unions bg, bgc, bgcn, bgcnc (default {DEFAULT_PIPE})")
    p.add_argument("--aug_p", type=float, default=None,
                   help="--aug ada: a fixed probability p in [0, 1] per image and transform (no adaptation)")
    p.add_argument("--aug_target", type=float, default=None,
                   help="--aug ada: the r_t = E[sign(D(real))] that p steers towards (default 0.6)")
    p.add_argument("--aug_interval", type=int, default=None,
                   help="--aug ada: steps between adjustments of p (default 4)")
    p.add_argument("--aug_kimg", type=float, default=None,
                   help="--aug ada: thousands of images for p to move by 1 at the most (default 500)")
    p.add_argument("--eval_steps", type=int, default=0, help="steps between FID/KID evaluations; 0 = never")
    p.add_argument("--fid_samples", type=int, default=10000, help="generated images per FID/KID evaluation")
    p.add_argument("--inception_weights", default=None,
                   help="Inception weights file for FID/KID (else $GAN_DIST_INCEPTION_WEIGHTS, else a one-time "
                        "verified download into the cache)")
    p.add_argument("--colour_samples", type=int, default=256,
                   help="images compared with reals for colour drift at each --sample_interval")
    p.add_argument("--mixed_precision", choices=("no", "fp16", "bf16"), default=None,
                   help="default: what `accelerate config`/`accelerate launch` set, else no")
    p.add_argument("--cpu", action="store_true", help="train on CPU even if a GPU is present (gloo when multi-process)")
    p.add_argument("--compile", action="store_true", help="torch.compile G and D (inductor); falls back with a message")
    p.add_argument("--allow_tf32", action=argparse.BooleanOptionalAction, default=True,
                   help="TF32 matmuls and convolutions on Ampere GPUs and later (--no-allow_tf32 for full fp32)")
    p.add_argument("--cudnn_benchmark", action=argparse.BooleanOptionalAction, default=True,
                   help="let cuDNN time its algorithms for each shape (--no-cudnn_benchmark for repeatable "
                        "algorithm choices)")
    p.add_argument("--profile_steps", type=int, default=0,
                   help="write a torch.profiler trace of this many steps (after --profile_warmup) to "
                        "OUTPUT_DIR/profile/: trace.json (Chrome trace) and key_averages.txt; 0 = off")
    p.add_argument("--profile_warmup", type=int, default=5, help="steps run before --profile_steps are traced")
    # data parallelism and gradient accumulation
    p.add_argument("--gradient_accumulation_steps", type=int, default=None,
                   help="split each process's --batch_size into this many equal micro-batches, one forward and "
                        "backward each, and step the optimizers once (default 1, or from --batch_gpu). Exact for "
                        "the norm-free resnet without --mbstd_group; not for BatchNorm (--arch mlp, dcgan: "
                        "statistics of a micro-batch are not the batch's), nor the minibatch std (its groups are "
                        "drawn from a micro-batch), nor --aug (transforms drawn per micro-batch)")
    p.add_argument("--batch_gpu", type=int, default=None,
                   help="most images per forward and backward (the per-GPU batch, as in StyleGAN2-ADA): a "
                        "--batch_size above it is accumulated in micro-batches of this size, which must divide it "
                        "(exact where --gradient_accumulation_steps says)")
    p.add_argument("--sync_bn", action="store_true", help="BatchNorm statistics over the global batch (CUDA)")
    p.add_argument("--ddp_bucket_cap_mb", type=int, default=25, help="DDP gradient bucket size in MiB")
    p.add_argument("--ddp_backend", choices=("nccl", "gloo"), default=None,
                   help="process-group backend (default: Accelerate's, nccl on CUDA, gloo on the CPU); gloo also "
                        "runs several processes on one GPU, which nccl refuses")
    p.add_argument("--ddp_comm_hook", choices=sorted(COMM_HOOKS), default="no",
                   help="compress gradients for the all-reduce (bf16/fp16 halve the bytes sent)")
    # logging and checkpoints
    p.add_argument("--report_to", choices=("wandb", "tensorboard", "all", "none"), default="wandb")
    p.add_argument("--tracker_project_name", default=os.environ.get("WANDB_PROJECT", "gan-dist"),
                   help="W&B project (default: $WANDB_PROJECT, else gan-dist)")
    p.add_argument("--log_steps", type=int, default=50, help="steps between metrics rows")
    p.add_argument("--checkpointing_steps", type=int, default=1000)
    p.add_argument("--checkpoints_total_limit", type=int, default=None)
    p.add_argument("--resume_from_checkpoint", default=None, help="a checkpoint-STEP directory or 'latest'")
    p.add_argument("--max_skip_fraction", type=float, default=0.01,
                   help="stop when more than this fraction of samples read could not be decoded")
    p.add_argument("--max_params", type=int, default=MAX_PARAMS,
                   help="refuse networks above this many parameters each (counted before anything is allocated; "
                        f"about {BYTES_PER_PARAM} bytes per parameter to train); raise it for a bigger model")
    config = p.parse_known_args(argv)[0].config
    if config is not None:
        try:
            apply_config(p, config)
        except ValueError as e:
            p.error(str(e))
    args = p.parse_args(argv)
    if args.data is None:
        p.error("--data is required (on the command line or in --config)")
    for name in ("n_epochs", "batch_size", "sample_interval", "log_steps", "checkpointing_steps", "n_samples",
                 "fid_samples", "colour_samples", "max_params"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    for name, most in (("n_samples", 1024), ("colour_samples", 10_000), ("fid_samples", 1_000_000)):
        if getattr(args, name) > most:  # each is drawn as one tensor of latents
            p.error(f"--{name} must be at most {most:,}, got {getattr(args, name):,}")
    if not 0 <= args.seed <= MAX_SEED:
        p.error(f"--seed must be from 0 to {MAX_SEED} (numpy's seeds are 32-bit), got {args.seed}")
    try:
        resolve_preset(args)
    except ValueError as e:
        p.error(str(e))
    if args.reg_every < 1:
        p.error(f"--reg_every must be >= 1, got {args.reg_every}")
    if args.max_train_steps is not None and args.max_train_steps < 1:
        p.error(f"--max_train_steps must be >= 1, got {args.max_train_steps}")
    if args.checkpoints_total_limit is not None and args.checkpoints_total_limit < 1:
        p.error(f"--checkpoints_total_limit must be >= 1, got {args.checkpoints_total_limit}")
    ranges = {  # name: (check, what it must be)
        "n_cpu": (lambda v: 0 <= v <= 1024, "from 0 to 1024"), "eval_steps": (lambda v: v >= 0, ">= 0"),
        "profile_steps": (lambda v: v >= 0, ">= 0"), "profile_warmup": (lambda v: v >= 0, ">= 0"),
        "ddp_bucket_cap_mb": (lambda v: v >= 1, ">= 1"), "lr": (lambda v: 0 < v < math.inf, "> 0 and finite"),
        "b1": (lambda v: 0 <= v < 1, "in [0, 1)"), "b2": (lambda v: 0 <= v < 1, "in [0, 1)"),
        "cache_gb": (lambda v: v >= 0, ">= 0"), "ema_kimg": (lambda v: 0 <= v < math.inf, ">= 0 and finite"),
        "max_skip_fraction": (lambda v: 0 <= v <= 1, "in [0, 1]")}
    for name, (ok, what) in ranges.items():
        if not ok(getattr(args, name)):  # NaN fails every comparison
            p.error(f"--{name} must be {what}, got {getattr(args, name)}")
    for name in ("lr_g", "lr_d"):
        if not 0 < getattr(args, name) < math.inf:
            p.error(f"--{name} (or --lr) must be > 0 and finite, got {getattr(args, name)}")
    if args.cpu and args.ddp_backend == "nccl":
        p.error("--ddp_backend nccl needs CUDA devices and --cpu trains on the CPU; "
                "use --ddp_backend gloo or drop --cpu")
    if args.schedule_kimg is not None and not 0 < args.schedule_kimg < math.inf:
        p.error(f"--schedule_kimg must be > 0 and finite, got {args.schedule_kimg}")
    for name in ("r1_gamma", "r2_gamma", "ema_kimg", "lr_end_ratio", "gamma_end_ratio"):
        if not 0 <= getattr(args, name) < math.inf:  # NaN and inf would surface later as a "lower --lr" error
            p.error(f"--{name} must be >= 0 and finite, got {getattr(args, name)}")
    for name in ("betas_g", "betas_d"):
        if not all(0 <= b < 1 for b in getattr(args, name)):
            p.error(f"Adam betas must lie in [0, 1), got {name} {getattr(args, name)} (from --{name} or --b1/--b2)")
    try:
        micro, accumulation = split_batch(args.batch_size, args.gradient_accumulation_steps, args.batch_gpu)
    except ValueError as e:
        p.error(str(e))
    batch = f"--batch_size {args.batch_size}" + (f" (micro-batches of {micro})" if accumulation > 1 else "")
    if args.cond and args.pacgan > 1:
        p.error(f"--cond needs --pacgan 1: a PacGAN group of {args.pacgan} images would mix classes under one logit")
    if args.pacgan >= 1 and micro % args.pacgan:
        p.error(f"{batch} does not split into groups of --pacgan {args.pacgan}; use a multiple of it")
    per_d = micro // max(1, args.pacgan)
    if args.mbstd_group > 0 and per_d > args.mbstd_group and per_d % args.mbstd_group:
        each = "a step" if accumulation == 1 else "a micro-batch"
        p.error(f"{batch} gives D {per_d} inputs {each}, which do not split into groups of "
                f"--mbstd_group {args.mbstd_group}; use a batch (over --pacgan) that is a multiple of it")
    if args.ema_rampup is not None and not 0 < args.ema_rampup < math.inf:
        p.error(f"--ema_rampup must be > 0 and finite, got {args.ema_rampup}")
    resolve_aug(p, args)
    try:
        config = gan_config(args)
        parse_policy(args.diffaug)
        check_params(config, args.max_params, both=True)  # on the meta device, before anything is allocated
    except BudgetError as e:
        p.error(f"{e}; pass a larger --max_params if you mean it")
    except ValueError as e:
        p.error(str(e))
    return args
