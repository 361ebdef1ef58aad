"""Train a GAN on WebDataset shards with Accelerate: one CPU, many GPUs or many nodes.

    python -m gan_dist.train --data shards/digits --img_size 32 --channels 1 --cpu
    accelerate launch gan_dist/train.py --data shards/lfw --img_size 128    # as `accelerate config` says
    accelerate launch --multi_gpu --num_processes 8 --mixed_precision bf16 gan_dist/train.py --data shards/lfw
    torchrun --standalone --nproc_per_node 2 gan_dist/train.py --cpu --data shards/digits --img_size 32 --channels 1

`--batch_size` is per process; the global batch is batch_size x processes. The run
directory (--output_dir) gets args.json, metrics.jsonl, samples/ and checkpoints/.
"""
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, NamedTuple, Optional

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from tqdm.auto import tqdm

from gan_dist.dirlock import DirectoryBusy, DirectoryLock
from gan_dist.evaluation.colour import DriftTracker, colour_report, colour_stats
from gan_dist.networks.augment import diff_augment, parse_policy
from gan_dist.networks.models import build_models, count_params
from gan_dist.training.checkpoint import (
    CheckpointError,
    check_finite,
    load_checkpoint,
    read_meta,
    remove_partials,
    resolve_resume,
    save_checkpoint,
)
from gan_dist.training.data import (
    DataError,
    check_batch,
    check_matches,
    decoded_gib,
    device_decoded,
    epoch_batches,
    first_batch,
    load_into_memory,
    load_manifest,
    memory_epoch_batches,
    mirror,
    shard_counts,
    to_device_float,
)
from gan_dist.training.ddp import (
    DistributedError,
    check_consistency,
    check_launch,
    convert_sync_bn,
    ddp_kwargs,
    process_group_kwargs,
    sync_buffers,
)
from gan_dist.training.ema import load_ema, make_ema
from gan_dist.training.ema import update as ema_update
from gan_dist.training.options import gan_config as config_of
from gan_dist.training.options import parse_args
from gan_dist.training.preemption import EXIT_PREEMPTED, StopSignal
from gan_dist.training.rundir import RunDirError, check_run_dir, write_args
from gan_dist.training.stats import TRAIN_KEYS, IntervalStats, check_row
from gan_dist.training.step import adam, compile_available, gan_step, generate, schedule
from gan_dist.training.tracking import TRAIN_LOG, MetricsLog, finish_run, init_trackers, log_grid, tracker_names


class UsageError(Exception):
    """A problem with the run's options or directories that the user has to fix."""


def check_output_dir(output_dir, resume_from):
    """Fail before any work if output_dir is not writable, or holds a run we were not asked to resume."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=output_dir).close()
    except OSError as e:
        raise UsageError(f"--output_dir {output_dir} is not writable ({e.strerror}); pass a directory you can write")
    check_run_dir(output_dir)
    if resume_from is None and any((output_dir / n).exists() for n in (TRAIN_LOG, "checkpoints")):
        raise UsageError(f"--output_dir {output_dir} already holds a run; continue it with "
                         "--resume_from_checkpoint latest, or pass a new --output_dir")


def read_resume_point(args, output_dir, gan_config):
    """The checkpoint to resume from and its metadata ({} when starting fresh), checked against this run."""
    resume_dir = resolve_resume(args.resume_from_checkpoint, output_dir)
    meta = read_meta(resume_dir, resume=True) if resume_dir is not None else {}
    if meta and meta["gan_config"] != gan_config.to_dict():
        raise UsageError(f"checkpoint {resume_dir} was made for {meta['gan_config']}, not {gan_config.to_dict()}; "
                         "resume with the same --arch/--img_size/--channels/--latent_dim or use a new --output_dir")
    return resume_dir, meta


def make_accelerator(args, output_dir):
    # torch.compile has no double backward: with R1/R2 only G is compiled (in train), D runs eagerly
    penalised = args.r1_gamma > 0 or args.r2_gamma > 0
    dynamo = {"dynamo_backend": "inductor"} if args.compile and not penalised and compile_available() else {}
    return Accelerator(
        cpu=args.cpu, mixed_precision=args.mixed_precision, log_with=tracker_names(args.report_to) or None,
        kwargs_handlers=[ddp_kwargs(args.ddp_bucket_cap_mb, args.ddp_comm_hook),
                         *process_group_kwargs(args.ddp_backend)],
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        **dynamo)


class RealData(NamedTuple):
    """Where a run's real images come from."""
    batches: Callable  # (epoch, skip) -> iterator of (uint8 batch, samples skipped)
    description: str
    skipped_at_load: int  # images that could not be decoded when loading into memory
    in_memory: Optional[torch.Tensor]  # every decoded image, when they are held in memory


def real_data(args, manifest, urls, accelerator, steps_per_epoch):
    """Hold the decoded dataset in memory when it fits in --cache_gb (true epochs), else stream the shards."""
    if decoded_gib(manifest) <= args.cache_gb and not args.decode_on_device:
        images, skipped = load_into_memory(urls, args.n_cpu, shard_counts(manifest, urls))
        if skipped / (skipped + len(images)) > args.max_skip_fraction:
            raise DataError(f"{skipped} of {skipped + len(images)} images in {args.data} could not be decoded, "
                            f"above --max_skip_fraction {args.max_skip_fraction}; repack the shards")

        def from_memory(epoch, skip):
            return memory_epoch_batches(images, args.batch_size, steps_per_epoch, args.seed, epoch,
                                        accelerator.process_index, accelerator.num_processes, skip)
        return RealData(from_memory, f"in memory ({decoded_gib(manifest):.2f} GiB decoded)", skipped, images)

    def streamed(epoch, skip):
        batches = epoch_batches(urls, args.batch_size, steps_per_epoch, args.seed, epoch, args.n_cpu, skip=skip,
                                pin_memory=accelerator.device.type == "cuda", expected=shard_counts(manifest, urls),
                                encoded=args.decode_on_device)
        if args.decode_on_device:
            return device_decoded(batches, accelerator.device, args.channels)
        return batches
    where = f", JPEG decoded on {accelerator.device}" if args.decode_on_device else ""
    return RealData(streamed, f"streamed from {len(urls)} shards by {args.n_cpu} workers{where}", 0, None)


def train(args):
    # ---- check the data, the run directory and the resume point (before any process group starts)
    manifest, urls = load_manifest(args.data, args.shard_url, verify=not args.skip_verify)
    check_matches(manifest, args.img_size, args.channels, args.data, jpeg=args.decode_on_device)
    gan_config = config_of(args)
    output_dir = Path(args.output_dir)
    check_output_dir(output_dir, args.resume_from_checkpoint)
    resume_dir, meta = read_resume_point(args, output_dir, gan_config)

    # ---- processes, devices, precision
    accelerator = make_accelerator(args, output_dir)
    check_launch(accelerator)
    stopper = StopSignal(accelerator)
    is_main = accelerator.is_main_process
    device = accelerator.device
    if is_main:
        DirectoryLock(output_dir, "gan_dist.train")  # one trainer per run directory, until this process exits
        write_args(output_dir, vars(args))
        remove_partials(output_dir)

    # ---- networks and optimizers
    set_seed(args.seed)  # same initial weights for any world size (DDP also broadcasts rank 0's)
    G, D = build_models(gan_config)
    if args.sync_bn:
        G, D = convert_sync_bn(accelerator, G, D)
    memory_format = torch.channels_last if args.arch != "mlp" else torch.contiguous_format  # NHWC convs are faster
    G, D = G.to(memory_format=memory_format), D.to(memory_format=memory_format)
    opt_G = adam(G.parameters(), args.lr_g, args.betas_g, device)
    opt_D = adam(D.parameters(), args.lr_d, args.betas_d, device)
    G, D, opt_G, opt_D = accelerator.prepare(G, D, opt_G, opt_D)
    set_seed(args.seed, device_specific=True)  # each rank draws its own noise
    policy = parse_policy(args.diffaug)
    augment = (lambda x: diff_augment(x, policy)) if policy else None

    # ---- schedule, counted in steps of the global batch
    global_batch = args.batch_size * accelerator.num_processes
    check_batch(manifest, global_batch, args.data)
    steps_per_epoch = manifest["count"] // global_batch
    max_train_steps = args.max_train_steps or args.n_epochs * steps_per_epoch
    global_step = meta.get("global_step", 0)

    # ---- resume: weights, optimizers, scaler, every rank's RNG, then G_ema and the drift history
    drift = DriftTracker()
    if resume_dir is not None:
        load_checkpoint(accelerator, resume_dir)
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
    if args.compile and (args.r1_gamma > 0 or args.r2_gamma > 0) and compile_available():
        accelerator.unwrap_model(G).compile()  # in place, after G_ema's copy; D stays eager (see make_accelerator)
    sampler = G_ema if G_ema is not None else accelerator.unwrap_model(G)  # what grids and metrics show
    nets = {"G": G, "D": D} if G_ema is None else {"G": G, "D": D, "G_ema": G_ema}

    # ---- real images
    data = real_data(args, manifest, urls, accelerator, steps_per_epoch)
    skipped_total = meta.get("skipped_samples", data.skipped_at_load)

    # ---- evaluation (a collective: every rank computes features)
    extractor = None
    if args.eval_steps:
        from gan_dist.evaluation.metrics import evaluate, format_result, inception_for_run  # slow to import
        extractor, why_not = inception_for_run(accelerator, args.inception_weights)
        if why_not:
            accelerator.print(f"warning: {why_not}; training goes on without FID/KID")

    # ---- what only the main process needs: fixed noise for grids, real colour statistics, trackers
    train_log, samples_log, eval_log = (MetricsLog(accelerator, output_dir, kind) for kind in ("train", "samples",
                                                                                               "eval"))
    if is_main:
        noise = torch.Generator().manual_seed(args.seed)  # the same z for the whole run: progress is visible
        fixed_z = torch.randn(args.n_samples, args.latent_dim, generator=noise).to(device)
        colour_z = torch.randn(args.colour_samples, args.latent_dim, generator=noise).to(device)
        real_colour = colour_stats(to_device_float(first_batch(urls, args.colour_samples, args.seed + 1), "cpu"))
    wandb_run_id = init_trackers(accelerator, args.tracker_project_name, vars(args), output_dir,
                                 meta.get("wandb_run_id"))
    if is_main and global_step == 0:
        log_grid(accelerator, to_device_float(first_batch(urls, args.n_samples, args.seed), "cpu"),
                 output_dir, 0, key="reals")
    accelerator.print(
        f"***** training {args.arch} on {manifest['count']} images {args.img_size}x{args.img_size}x{args.channels} "
        f"*****\n  G {count_params(G) / 1e6:.2f}M parameters, D {count_params(D) / 1e6:.2f}M\n"
        f"  data {data.description}\n"
        f"  processes {accelerator.num_processes} ({accelerator.distributed_type}, "
        f"{accelerator.state.backend or 'no process group'}, {device}), "
        f"mixed precision {accelerator.mixed_precision}\n  batch {args.batch_size} per process, {global_batch} global; "
        f"{steps_per_epoch} steps per epoch; {max_train_steps} steps ({max_train_steps / steps_per_epoch:.1f} epochs)")

    stats = IntervalStats(device)
    interactive = sys.stderr.isatty()  # a live bar on a terminal, plain lines in log files
    progress = tqdm(total=max_train_steps, initial=global_step, mininterval=1.0, dynamic_ncols=True,
                    disable=not (is_main and interactive))
    stop = False
    while global_step < max_train_steps and not stop:
        epoch, skip = divmod(global_step, steps_per_epoch)
        t_wait = time.perf_counter()
        for real_u8, n_skipped in data.batches(epoch, skip):
            stats.data_wait += time.perf_counter() - t_wait
            stats.skipped += n_skipped
            real_img = to_device_float(real_u8, device).contiguous(memory_format=memory_format)
            gen_z = torch.randn(real_img.size(0), args.latent_dim, device=device)
            step = global_step + 1
            if args.mirror:
                real_img = mirror(real_img, args.seed, step, accelerator.process_index)
            lr_G, lr_D, r1_gamma, r2_gamma = schedule(args, step, max_train_steps, global_batch)
            for opt, lr in ((opt_G, lr_G), (opt_D, lr_D)):  # from the command line, not a checkpoint (--lr after a NaN)
                for group in opt.param_groups:
                    group["lr"] = lr
            log_now = step % args.log_steps == 0 or step % args.checkpointing_steps == 0 or step == max_train_steps

            # ---- (1) D step, (2) G step (gan_step), then G's moving average
            loss_D, loss_G, real_logits, fake_logits = gan_step(
                accelerator, G, D, opt_G, opt_D, real_img, gen_z, stats, log_now, augment,
                args.loss, r1_gamma, r2_gamma)
            if G_ema is not None:
                ema_update(G_ema, G, global_batch, args.ema_kimg, step * global_batch, args.ema_rampup)

            # ---- bookkeeping: stats; log / sample / evaluate / checkpoint; a requested stop
            global_step = step
            progress.update(1)
            stats.add(loss_D, loss_G, real_logits, fake_logits)
            done = step >= max_train_steps
            stop = stopper.should_stop(step) and not done
            if log_now:
                row = stats.collect(accelerator, global_batch)  # a collective
                skipped_total += row["skipped_samples"]
                # images skipped at load were judged against the whole dataset already
                check_row(row, step, skipped_total - data.skipped_at_load, step * global_batch,
                          args.max_skip_fraction)
                train_log.log({**row, "skipped_samples": skipped_total, "epoch": step / steps_per_epoch,
                               "kimg": step * global_batch / 1000, "global_batch": global_batch}, step)
                summary = " ".join(f"{k} {row[k]:.3f}" for k in TRAIN_KEYS) + f" img/s {row['img_per_s']:.0f}"
                progress.set_postfix_str(summary, refresh=False)
                if not interactive:
                    accelerator.print(f"step {step}/{max_train_steps} {summary}")
            if is_main and (step % args.sample_interval == 0 or done):
                log_grid(accelerator, generate(sampler, fixed_z), output_dir, step)
                colour = colour_report(colour_stats(generate(sampler, colour_z)), real_colour)
                for warning in drift.update(colour, step):  # the saturation / contrast creep of the vanilla recipe
                    accelerator.print(warning)
                samples_log.log(colour, step)
            if extractor is not None and (step % args.eval_steps == 0 or done):
                sync_buffers(accelerator, nets)
                result = evaluate(accelerator, sampler, extractor, lambda: real_images(data, urls, args.n_cpu),
                                  args.data, args.latent_dim, num_gen=args.fid_samples, seed=args.seed)
                accelerator.print(f"step {step}: {format_result(result)}")
                eval_log.log(result, step)
            if step % args.checkpointing_steps == 0 or done or stop:
                check_finite(nets, step)
                sync_buffers(accelerator, nets)
                check_consistency(accelerator, nets)  # before saving: never keep a drifted state
                position = {"epoch": step // steps_per_epoch, "batch_in_epoch": step % steps_per_epoch,
                            "num_imgs_seen": step * global_batch, "global_batch": global_batch,
                            "num_processes": accelerator.num_processes, "skipped_samples": skipped_total,
                            "colour_drift": drift.state_dict(), "wandb_run_id": wandb_run_id}
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


def real_images(data, urls, n_cpu):
    """Every real image, for FID/KID: those held in memory, else decoded from the shards now."""
    return data.in_memory if data.in_memory is not None else load_into_memory(urls, n_cpu)[0]


def main(argv=None):
    args = parse_args(argv)
    try:
        train(args)
    except (DataError, UsageError, DistributedError, CheckpointError, DirectoryBusy, FileNotFoundError,
            FloatingPointError, RunDirError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
