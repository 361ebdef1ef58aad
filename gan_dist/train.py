"""Train a GAN on WebDataset shards with Accelerate: one CPU, many GPUs or many nodes.

    python -m gan_dist.train --data shards/digits --img_size 32 --channels 1 --cpu
    accelerate launch gan_dist/train.py --data shards/lfw --img_size 128    # as `accelerate config` says
    accelerate launch --multi_gpu --num_processes 8 --mixed_precision bf16 gan_dist/train.py --data shards/lfw
    torchrun --standalone --nproc_per_node 2 gan_dist/train.py --cpu --data shards/digits --img_size 32 --channels 1

`--batch_size` is per process; the global batch is batch_size x processes. The run
directory (--output_dir) gets args.json, metrics.jsonl, samples/ and checkpoints/.
"""
import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from tqdm.auto import tqdm

from gan_dist.checkpoint import check_finite, read_meta, remove_partials, resolve_resume, save_checkpoint
from gan_dist.data import (DataError, check_matches, decoded_gib, device_decoded, epoch_batches, first_batch,
                           load_into_memory, load_manifest, memory_epoch_batches, shard_counts, to_device_float)
from gan_dist.colour import DriftTracker, colour_report, colour_stats
from gan_dist.ddp import (COMM_HOOKS, DistributedError, check_consistency, check_launch, convert_sync_bn, ddp_kwargs,
                          sync_buffers)
from gan_dist.diffaug import diff_augment, parse_policy
from gan_dist.ema import load_ema, make_ema
from gan_dist.ema import update as ema_update
from gan_dist.losses import d_loss, g_loss
from gan_dist.models import ARCHS, GANConfig, build_models
from gan_dist.preemption import EXIT_PREEMPTED, StopSignal
from gan_dist.stats import TRAIN_KEYS, IntervalStats, check_row, grad_norm
from gan_dist.tracking import MetricsLog, finish_run, init_trackers, log_grid, tracker_names


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="gan_dist.train", description=__doc__.split("\n")[0])
    # the report's hyper-parameters, names and defaults
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
    p.add_argument("--arch", choices=ARCHS, default="mlp", help="mlp: the report's networks; dcgan: conv nets")
    p.add_argument("--output_dir", default="runs/gan")
    p.add_argument("--max_train_steps", type=int, default=None, help="overrides --n_epochs when set")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n_samples", type=int, default=25, help="images in each fixed-noise grid (5x5)")
    # EMA, augmentation, evaluation
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
    try:
        GANConfig(args.arch, args.latent_dim, args.img_size, args.channels)
        parse_policy(args.diffaug)
    except ValueError as e:
        p.error(str(e))
    return args


@torch.no_grad()
def generate(G, z):
    """Images from G in eval mode (BatchNorm running statistics), leaving G in the mode it was in."""
    was_training = G.training
    G.eval()
    images = G(z)
    G.train(was_training)
    return images


def gan_step(accelerator, G, D, opt_G, opt_D, real_img, gen_z, stats, log_now=False, augment=None):
    """One D update then one G update; returns (loss_D, loss_G, real_logits, fake_logits).

    `stats` counts updates the fp16 GradScaler skipped and, when `log_now`, gets gradient
    norms and learning rates. `augment` (DiffAugment) is applied to everything D sees.
    """
    aug = augment or (lambda x: x)
    scaler = accelerator.scaler  # fp16 only: one scaler shared by both optimizers

    def update(opt):
        scale = scaler.get_scale() if scaler is not None else None
        opt.step()
        # An overflow skips the update and lowers the scale. Judged by the scale, as
        # step_was_skipped misses the skips fused optimizers make inside their kernel.
        if scaler is not None and scaler.get_scale() < scale:
            stats.skipped_updates += 1

    # ---- (1) D step: maximize log D(x) + log(1 - D(G(z)))
    with accelerator.autocast():
        gen_img = G(gen_z)
        real_logits, fake_logits = D(aug(real_img)), D(aug(gen_img.detach()))
        loss_D = d_loss(real_logits, fake_logits)
    opt_D.zero_grad(set_to_none=True)
    accelerator.backward(loss_D)  # one backward for both D forwards: one all-reduce, no desync
    if log_now:
        stats.note(grad_norm_D=grad_norm(D, scaler), lr_D=opt_D.param_groups[0]["lr"])
    update(opt_D)

    # ---- (2) G step: maximize log D(G(z)); D frozen so its DDP reducer stays idle
    D.requires_grad_(False)
    with accelerator.autocast():
        loss_G = g_loss(D(aug(gen_img)))
    opt_G.zero_grad(set_to_none=True)
    accelerator.backward(loss_G)
    if log_now:
        stats.note(grad_norm_G=grad_norm(G, scaler), lr_G=opt_G.param_groups[0]["lr"])
    update(opt_G)
    D.requires_grad_(True)
    return loss_D, loss_G, real_logits, fake_logits


def adam(params, lr, betas, device):
    """Adam with the fused kernel where this torch has one for `device` (one pass over each tensor
    instead of several: 5x faster on the CPU for the report's model), else the multi-tensor one."""
    params = list(params)
    if device.type in ("cuda", "cpu"):
        try:
            return torch.optim.Adam(params, lr=lr, betas=betas, fused=True)
        except (RuntimeError, TypeError, ValueError):  # an older torch without this kernel
            pass
    return torch.optim.Adam(params, lr=lr, betas=betas, foreach=True)


def compile_available():
    """Whether torch.compile can run here; if not, say why (training goes on uncompiled)."""
    try:
        import torch._dynamo
        if not torch._dynamo.is_dynamo_supported():
            raise RuntimeError(f"TorchDynamo does not support Python {sys.version.split()[0]} on this platform")
    except Exception as e:
        print(f"warning: --compile is unavailable ({e}); training without it", file=sys.stderr)
        return False
    return True


class UsageError(Exception):
    """A problem with the run's options or directories that the user has to fix."""


def check_output_dir(output_dir, resume_from):
    """Fail before any work if output_dir is not writable, or holds a run we were not asked to resume."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=output_dir).close()
    except OSError as e:
        raise UsageError(f"--output_dir {output_dir} is not writable ({e.strerror}); pass a directory you can write")
    if resume_from is None and any((output_dir / n).exists() for n in ("metrics.jsonl", "checkpoints")):
        raise UsageError(f"--output_dir {output_dir} already holds a run; continue it with "
                         "--resume_from_checkpoint latest, or pass a new --output_dir")


def data_source(args, manifest, urls, accelerator, steps_per_epoch):
    """Return (batches_of(epoch, skip) -> iterator of (uint8 batch, skipped), description, skipped at load,
    the decoded images when they are held in memory, else None)."""
    if decoded_gib(manifest) <= args.cache_gb and not args.decode_on_device:
        images, skipped = load_into_memory(urls, args.n_cpu, shard_counts(manifest, urls))
        if skipped / (skipped + len(images)) > args.max_skip_fraction:
            raise DataError(f"{skipped} of {skipped + len(images)} images in {args.data} could not be decoded, "
                            f"above --max_skip_fraction {args.max_skip_fraction}; repack the shards")

        def batches_of(epoch, skip):
            return memory_epoch_batches(images, args.batch_size, steps_per_epoch, args.seed, epoch,
                                        accelerator.process_index, accelerator.num_processes, skip)
        return batches_of, f"in memory ({decoded_gib(manifest):.2f} GiB decoded)", skipped, images

    def batches_of(epoch, skip):
        batches = epoch_batches(urls, args.batch_size, steps_per_epoch, args.seed, epoch, args.n_cpu, skip=skip,
                                pin_memory=accelerator.device.type == "cuda", expected=shard_counts(manifest, urls),
                                encoded=args.decode_on_device)
        return device_decoded(batches, accelerator.device, args.channels) if args.decode_on_device else batches
    where = f", JPEG decoded on {accelerator.device}" if args.decode_on_device else ""
    return batches_of, f"streamed from {len(urls)} shards by {args.n_cpu} workers{where}", 0, None


def train(args):
    manifest, urls = load_manifest(args.data, args.shard_url)
    check_matches(manifest, args.img_size, args.channels, args.data, jpeg=args.decode_on_device)
    gan_config = GANConfig(args.arch, args.latent_dim, args.img_size, args.channels)
    output_dir = Path(args.output_dir)
    check_output_dir(output_dir, args.resume_from_checkpoint)
    resume_dir = resolve_resume(args.resume_from_checkpoint, output_dir)
    meta = read_meta(resume_dir) if resume_dir is not None else {}
    if meta and meta["gan_config"] != gan_config.to_dict():
        raise UsageError(f"checkpoint {resume_dir} was made for {meta['gan_config']}, not {gan_config.to_dict()}; "
                         "resume with the same --arch/--img_size/--channels/--latent_dim or use a new --output_dir")

    accelerator = Accelerator(
        cpu=args.cpu, mixed_precision=args.mixed_precision, log_with=tracker_names(args.report_to) or None,
        kwargs_handlers=[ddp_kwargs(args.ddp_bucket_cap_mb, args.ddp_comm_hook)],
        **({"dynamo_backend": "inductor"} if args.compile and compile_available() else {}),
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")))
    check_launch(accelerator)
    stopper = StopSignal(accelerator)
    if accelerator.is_main_process:
        (output_dir / "args.json").write_text(json.dumps(vars(args), indent=2) + "\n")
        remove_partials(output_dir)

    set_seed(args.seed)  # same initial weights for any world size (DDP also broadcasts rank 0's)
    G, D = convert_sync_bn(accelerator, *build_models(gan_config)) if args.sync_bn else build_models(gan_config)
    memory_format = torch.channels_last if args.arch == "dcgan" else torch.contiguous_format  # NHWC convs are faster
    G, D = G.to(memory_format=memory_format), D.to(memory_format=memory_format)
    opt_G, opt_D = (adam(net.parameters(), args.lr, (args.b1, args.b2), accelerator.device) for net in (G, D))
    G, D, opt_G, opt_D = accelerator.prepare(G, D, opt_G, opt_D)
    set_seed(args.seed, device_specific=True)  # each rank draws its own noise
    policy = parse_policy(args.diffaug)
    augment = (lambda x: diff_augment(x, policy)) if policy else None
    drift = DriftTracker()
    global_batch = args.batch_size * accelerator.num_processes
    steps_per_epoch = max(1, manifest["count"] // global_batch)
    max_train_steps = args.max_train_steps or args.n_epochs * steps_per_epoch
    global_step = meta.get("global_step", 0)
    if resume_dir is not None:
        accelerator.load_state(str(resume_dir))  # weights, optimizers, scaler and every rank's RNG
        for opt in (opt_G, opt_D):  # the command line wins over the saved rate (e.g. a lower --lr after a NaN)
            for group in opt.param_groups:
                group["lr"] = args.lr
        accelerator.print(f"resumed from {resume_dir} at step {global_step}")
        drift.load_state_dict(meta.get("colour_drift", drift.state_dict()))
        if meta["global_batch"] != global_batch:
            accelerator.print(f"warning: the global batch changed ({meta['global_batch']} -> {global_batch}); "
                              "training continues, but not bit-exactly: the data order differs")
    elif args.resume_from_checkpoint:
        accelerator.print(f"no checkpoint in {output_dir / 'checkpoints'}; starting from scratch")
    G_ema = make_ema(accelerator.unwrap_model(G)) if args.ema_kimg > 0 else None  # after loading: a copy of G
    if G_ema is not None and resume_dir is not None and not load_ema(G_ema, resume_dir):
        accelerator.print("warning: the checkpoint has no G_ema; the average starts again from G")

    device = accelerator.device
    batches_of, data_desc, skipped_at_load, images = data_source(args, manifest, urls, accelerator, steps_per_epoch)
    real_images = (lambda: images) if images is not None else (lambda: load_into_memory(urls, args.n_cpu)[0])
    skipped_total = meta.get("skipped_samples", skipped_at_load)
    noise = torch.Generator().manual_seed(args.seed)  # the same z for the whole run: progress is visible
    fixed_z = torch.randn(args.n_samples, args.latent_dim, generator=noise).to(device)
    colour_z = torch.randn(args.colour_samples, args.latent_dim, generator=noise).to(device)
    real_colour = colour_stats(to_device_float(first_batch(urls, args.colour_samples, args.seed + 1), "cpu"))
    sampler = G_ema if G_ema is not None else accelerator.unwrap_model(G)
    nets = {"G": G, "D": D, **({"G_ema": G_ema} if G_ema is not None else {})}
    extractor = None
    if args.eval_steps:
        from gan_dist.metrics import evaluate, format_result, inception_for_run  # torchmetrics: 2 s to import
        extractor, why_not = inception_for_run(accelerator, args.inception_weights)
        if why_not:
            accelerator.print(f"warning: {why_not}")
    metrics = MetricsLog(accelerator, output_dir)
    init_trackers(accelerator, args.tracker_project_name, vars(args), output_dir)
    if global_step == 0:
        log_grid(accelerator, to_device_float(first_batch(urls, args.n_samples, args.seed), "cpu"),
                 output_dir, 0, key="reals")
    accelerator.print(
        f"***** training {args.arch} on {manifest['count']} images {args.img_size}x{args.img_size}x{args.channels} *****\n"
        f"  data {data_desc}\n"
        f"  processes {accelerator.num_processes} ({accelerator.distributed_type}, {device}), "
        f"mixed precision {accelerator.mixed_precision}\n  batch {args.batch_size} per process, {global_batch} global; "
        f"{steps_per_epoch} steps per epoch; {max_train_steps} steps ({max_train_steps / steps_per_epoch:.1f} epochs)")

    stats = IntervalStats(device)
    interactive = sys.stderr.isatty()  # a live bar on a terminal, plain lines in log files
    progress = tqdm(total=max_train_steps, initial=global_step, mininterval=1.0, dynamic_ncols=True,
                    disable=not (accelerator.is_main_process and interactive))
    stop = False
    while global_step < max_train_steps and not stop:
        epoch, skip = divmod(global_step, steps_per_epoch)
        t_wait = time.perf_counter()
        for real_u8, n_skipped in batches_of(epoch, skip):
            stats.data_wait += time.perf_counter() - t_wait
            stats.skipped += n_skipped
            real_img = to_device_float(real_u8, device).contiguous(memory_format=memory_format)
            gen_z = torch.randn(real_img.size(0), args.latent_dim, device=device)
            step = global_step + 1
            log_now = step % args.log_steps == 0 or step % args.checkpointing_steps == 0 or step == max_train_steps

            loss_D, loss_G, real_logits, fake_logits = gan_step(
                accelerator, G, D, opt_G, opt_D, real_img, gen_z, stats, log_now, augment)
            if G_ema is not None:
                ema_update(G_ema, G, global_batch, args.ema_kimg)

            # ---- bookkeeping: stats; log / sample / checkpoint; a requested stop
            global_step = step
            progress.update(1)
            stats.add(loss_D, loss_G, real_logits, fake_logits)
            done = step >= max_train_steps
            stop = stopper.should_stop(step) and not done
            if log_now:
                row = stats.collect(accelerator, global_batch)
                skipped_total += row["skipped_samples"]
                check_row(row, step, skipped_total, step * global_batch, args.max_skip_fraction)
                metrics.log({**row, "skipped_samples": skipped_total, "epoch": step / steps_per_epoch,
                             "kimg": step * global_batch / 1000, "global_batch": global_batch}, step)
                summary = " ".join(f"{k} {row[k]:.3f}" for k in TRAIN_KEYS) + f" img/s {row['img_per_s']:.0f}"
                progress.set_postfix_str(summary, refresh=False)
                if not interactive:
                    accelerator.print(f"step {step}/{max_train_steps} {summary}")
            if step % args.sample_interval == 0 or done:
                log_grid(accelerator, generate(sampler, fixed_z), output_dir, step)
                colour = colour_report(colour_stats(generate(sampler, colour_z)), real_colour)
                for warning in drift.update(colour, step):  # the report's saturation / contrast creep
                    accelerator.print(warning)
                metrics.log(colour, step)
            if extractor is not None and (step % args.eval_steps == 0 or done):
                sync_buffers(accelerator, nets)
                result = evaluate(accelerator, sampler, extractor, real_images, args.data, args.latent_dim,
                                  num_gen=args.fid_samples, seed=args.seed)
                accelerator.print(f"step {step}: {format_result(result)}")
                metrics.log(result, step)
            if step % args.checkpointing_steps == 0 or done or stop:
                check_finite(nets, step)
                sync_buffers(accelerator, nets)
                check_consistency(accelerator, nets)  # before saving: never keep a drifted state
                position = {"epoch": step // steps_per_epoch, "batch_in_epoch": step % steps_per_epoch,
                            "num_imgs_seen": step * global_batch, "global_batch": global_batch,
                            "num_processes": accelerator.num_processes, "skipped_samples": skipped_total,
                            "colour_drift": drift.state_dict()}
                save_checkpoint(accelerator, output_dir, step, gan_config, position, args.checkpoints_total_limit,
                                ema=G_ema)
            if done or stop:
                break
            t_wait = time.perf_counter()
    progress.close()
    finish_run(accelerator, output_dir)
    if stop:
        accelerator.print(f"stopped by {stopper.received or 'a signal on another rank'} at step {global_step}; "
                          f"checkpoint saved; continue with --resume_from_checkpoint latest (exit {EXIT_PREEMPTED})")
        sys.exit(EXIT_PREEMPTED)
    accelerator.print(f"done: {global_step} steps; run directory {output_dir}")


def main(argv=None):
    args = parse_args(argv)
    try:
        train(args)
    except (DataError, UsageError, DistributedError, FileNotFoundError, FloatingPointError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
