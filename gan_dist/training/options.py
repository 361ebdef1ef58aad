"""Command-line options of `python -m gan_dist.train`, checked before any work starts."""
import argparse
import math
import os

from gan_dist.networks.augment import parse_policy
from gan_dist.networks.models import ARCHS, GANConfig
from gan_dist.training.ddp import COMM_HOOKS


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="gan_dist.train",
                                description="Train a GAN on WebDataset shards with Accelerate.")
    # the vanilla recipe's hyper-parameters (PyTorch-GAN's gan.py), names and defaults
    p.add_argument("--n_epochs", type=int, default=50, help="passes over the dataset at the global batch")
    p.add_argument("--batch_size", type=int, default=64, help="images per process per step")
    p.add_argument("--lr", type=float, default=0.0002, help="Adam learning rate (G and D)")
    p.add_argument("--b1", type=float, default=0.5, help="Adam beta1")
    p.add_argument("--b2", type=float, default=0.999, help="Adam beta2")
    p.add_argument("--n_cpu", type=int, default=2, help="data loader worker processes per process")
    p.add_argument("--cache_gb", type=float, default=4.0,
                   help="hold the decoded dataset in each process's RAM when it is at most this many GiB "
                        "(true epochs, no decoding per step); 0 streams from the shards always")
    p.add_argument("--decode_on_device", action="store_true",
                   help="stream JPEG shards (--format jpg) and decode each batch on the training device "
                        "(nvJPEG on CUDA); the workers only read the tars")
    p.add_argument("--latent_dim", type=int, default=100)
    p.add_argument("--img_size", type=int, default=128)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--sample_interval", type=int, default=500, help="steps between sample grids")
    # data, model, run
    p.add_argument("--data", required=True, help="shard directory written by `python -m gan_dist.shard`")
    p.add_argument("--shard_url", default=None,
                   help="shards elsewhere (object storage, HTTP): a URL with {file} for each shard name, e.g. "
                        "'pipe:aws s3 cp s3://bucket/lfw/{file} -'; --data then only needs manifest.json")
    p.add_argument("--skip_verify", action="store_true",
                   help="read local shards without checking them against the sha256 in manifest.json")
    p.add_argument("--arch", choices=ARCHS, default="mlp", help="mlp: the vanilla MLP pair; dcgan: conv nets")
    p.add_argument("--output_dir", default="runs/gan")
    p.add_argument("--max_train_steps", type=int, default=None, help="overrides --n_epochs when set")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n_samples", type=int, default=25, help="images in each fixed-noise grid (5x5)")
    # EMA, augmentation, evaluation
    p.add_argument("--ema_rampup", type=float, default=None,
                   help="grow G_ema's half-life with training: at most this fraction of the images seen so far "
                        "(StyleGAN2-ADA uses 0.05); off by default")
    p.add_argument("--ema_kimg", type=float, default=10.0,
                   help="half-life of G's moving average (G_ema, used for samples and metrics) in thousands "
                        "of images; 0 turns it off")
    p.add_argument("--diffaug", default="", help="DiffAugment for real and fake images in both phases, "
                                                 "e.g. color,translation,cutout (for small datasets)")
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
    # data parallelism
    p.add_argument("--sync_bn", action="store_true", help="BatchNorm statistics over the global batch (CUDA)")
    p.add_argument("--ddp_bucket_cap_mb", type=int, default=25, help="DDP gradient bucket size in MiB")
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
    args = p.parse_args(argv)
    for name in ("n_epochs", "batch_size", "sample_interval", "log_steps", "checkpointing_steps", "n_samples",
                 "fid_samples", "colour_samples"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.max_train_steps is not None and args.max_train_steps < 1:
        p.error(f"--max_train_steps must be >= 1, got {args.max_train_steps}")
    if args.checkpoints_total_limit is not None and args.checkpoints_total_limit < 1:
        p.error(f"--checkpoints_total_limit must be >= 1, got {args.checkpoints_total_limit}")
    ranges = {  # name: (check, what it must be)
        "n_cpu": (lambda v: 0 <= v <= 1024, "from 0 to 1024"), "eval_steps": (lambda v: v >= 0, ">= 0"),
        "ddp_bucket_cap_mb": (lambda v: v >= 1, ">= 1"), "lr": (lambda v: 0 < v < math.inf, "> 0 and finite"),
        "b1": (lambda v: 0 <= v < 1, "in [0, 1)"), "b2": (lambda v: 0 <= v < 1, "in [0, 1)"),
        "cache_gb": (lambda v: v >= 0, ">= 0"), "ema_kimg": (lambda v: 0 <= v < math.inf, ">= 0 and finite"),
        "max_skip_fraction": (lambda v: 0 <= v <= 1, "in [0, 1]")}
    for name, (ok, what) in ranges.items():
        if not ok(getattr(args, name)):  # NaN fails every comparison
            p.error(f"--{name} must be {what}, got {getattr(args, name)}")
    if args.ema_rampup is not None and args.ema_rampup <= 0:
        p.error(f"--ema_rampup must be > 0, got {args.ema_rampup}")
    try:
        GANConfig(args.arch, args.latent_dim, args.img_size, args.channels)
        parse_policy(args.diffaug)
    except ValueError as e:
        p.error(str(e))
    return args
