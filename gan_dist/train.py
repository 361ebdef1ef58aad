"""Train a GAN on WebDataset shards with Accelerate: one CPU, many GPUs or many nodes.

    python -m gan_dist.train --data shards/digits --img_size 32 --channels 1 --cpu
    accelerate launch gan_dist/train.py --data shards/lfw --img_size 128    # as `accelerate config` says
    accelerate launch --multi_gpu --num_processes 8 --mixed_precision bf16 gan_dist/train.py --data shards/lfw
    torchrun --standalone --nproc_per_node 2 gan_dist/train.py --cpu --data shards/digits --img_size 32 --channels 1

`--batch_size` is per process per optimizer step; the global batch is batch_size x processes.
`--batch_gpu B` (or `--gradient_accumulation_steps N`) splits it into micro-batches of B images,
accumulated before each step. The run directory (--output_dir) gets args.json, metrics.jsonl,
samples/ and checkpoints/. `--cond` trains class-conditional nets on the pack's class labels.
"""
import contextlib
import sys
import time

import torch
from tqdm.auto import tqdm

from gan_dist.dirlock import DirectoryBusy
from gan_dist.evaluation.colour import colour_report, colour_stats
from gan_dist.networks.models import generate
from gan_dist.training.checkpoint import CheckpointError, check_finite, save_checkpoint
from gan_dist.training.data import mirror, to_device_float
from gan_dist.training.ddp import DistributedError, check_consistency, sync_buffers
from gan_dist.training.ema import update as ema_update
from gan_dist.training.manifest import DataError
from gan_dist.training.options import parse_args
from gan_dist.training.preemption import EXIT_PREEMPTED, Preempted
from gan_dist.training.profiling import StepProfiler
from gan_dist.training.rundir import RunDirError
from gan_dist.training.runlog import TRAIN_KEYS
from gan_dist.training.setup import UsageError, setup
from gan_dist.training.stats import IntervalStats, check_row
from gan_dist.training.step import schedule
from gan_dist.training.tracking import finish_run, log_grid


def batch_stream(data, start_step, max_train_steps, steps_per_epoch):
    """(step, uint8 batch (with --cond: (batch, class ids)), samples skipped) for each step after `start_step`,
    epoch after epoch."""
    step = start_step
    while step < max_train_steps:
        epoch, skip = divmod(step, steps_per_epoch)
        for real_u8, n_skipped in data.batches(epoch, skip):
            step += 1
            yield step, real_u8, n_skipped
            if step >= max_train_steps:
                return


def train(args):
    run = setup(args)
    with contextlib.closing(run):  # signals and the run directory's lock given back at the end
        acc, progress, stats = run.accelerator, run.progress, IntervalStats(run.accelerator.device)
        interactive = sys.stderr.isatty()  # a live bar on a terminal, plain lines in log files
        bar = tqdm(total=run.max_train_steps, initial=progress.step, mininterval=1.0, dynamic_ncols=True,
                   disable=not (acc.is_main_process and interactive))
        profiler = StepProfiler(run.output_dir, args.profile_steps, args.profile_warmup, acc.device, acc.process_index)
        run.gan_step.phase = profiler.phase  # labels the D, regularisation and G phases in the trace
        batches = batch_stream(run.data, progress.step, run.max_train_steps, run.steps_per_epoch)
        t_wait = time.perf_counter()
        for step, real_u8, n_skipped in profiler.labelled(batches, "data"):
            stats.data_wait += time.perf_counter() - t_wait
            progress.count_skipped(n_skipped)
            with profiler.phase("data"):
                real_c = None
                if args.cond:  # the reals' classes; the fakes are drawn for the same classes
                    real_u8, real_c = real_u8
                    real_c = real_c.to(acc.device, non_blocking=True)
                real_img = to_device_float(real_u8, acc.device).contiguous(memory_format=run.memory_format)
                gen_z = torch.randn(real_img.size(0), args.latent_dim, device=acc.device)
                if args.mirror:
                    real_img = mirror(real_img, args.seed, step, acc.process_index)
            lr_G, lr_D, r1_gamma, r2_gamma = schedule(args, step, run.max_train_steps, run.global_batch)
            for opt, lr in ((run.opt_G, lr_G), (run.opt_D, lr_D)):  # from the command line, not a checkpoint
                for group in opt.param_groups:
                    group["lr"] = lr
            done = step >= run.max_train_steps
            log_now = step % args.log_steps == 0 or step % args.checkpointing_steps == 0 or done

            # ---- (1) D step with its penalties, (2) G step, then G's moving average
            if run.ada is not None:
                run.ada.begin(step)  # the augmentations' draws from (seed, step, rank): a resume repeats them
            d, g = run.gan_step(real_img, gen_z, r1_gamma, r2_gamma, with_norms=log_now, real_c=real_c)
            if run.ada is not None:
                run.ada.observe(d, step, acc)  # D's signs on the reals; every --aug_interval steps p moves (collective)
            if run.G_ema is not None:
                with profiler.phase("ema"):
                    ema_update(run.G_ema, run.G, run.global_batch, args.ema_kimg, step * run.global_batch,
                               args.ema_rampup)
            progress.step = step
            stats.add(d, g, lr_D, lr_G)
            profiler.step()
            bar.update(1)

            # ---- periodic work; a requested stop saves and leaves
            stop = run.stopper.should_stop(step) and not done  # a collective every few steps
            if log_now:
                log_metrics(run, stats, step, bar, interactive)
            if acc.is_main_process and (step % args.sample_interval == 0 or done):
                save_grids(run, step)
            if run.extractor is not None and (step % args.eval_steps == 0 or done):
                evaluate_now(run, step)
            if step % args.checkpointing_steps == 0 or done or stop:
                save(run, step)
            if stop:
                profiler.close()
                bar.close()
                finish_run(acc, run.output_dir)
                acc.print(f"stopped by {run.stopper.received or 'a signal on another rank'} at step {step}; checkpoint "
                          f"saved; continue with --resume_from_checkpoint latest (exit {EXIT_PREEMPTED})")
                raise Preempted(step)
            t_wait = time.perf_counter()
        profiler.close()
        bar.close()
        finish_run(acc, run.output_dir)
        acc.print(f"done: {progress.step} steps; run directory {run.output_dir}")


def log_metrics(run, stats, step, bar, interactive):
    """A metrics row: means since the last row over all ranks (a collective), checked, then logged."""
    row = stats.collect(run.accelerator, run.global_batch)
    skipped = run.progress.reduce(run.accelerator)
    # images skipped at load were judged against the whole dataset already
    check_row(row, step, skipped - run.data.skipped_at_load, run.progress.num_imgs_seen, run.args.max_skip_fraction)
    if run.ada is not None:
        row.update(run.ada.log_row())
    run.train_log.log({**row, "skipped_samples": skipped, "epoch": step / run.steps_per_epoch,
                       "kimg": run.progress.num_imgs_seen / 1000, "global_batch": run.global_batch}, step)
    summary = " ".join(f"{k} {row[k]:.3f}" for k in TRAIN_KEYS) + f" img/s {row['img_per_s']:.0f}"
    bar.set_postfix_str(summary, refresh=False)
    if not interactive:
        run.accelerator.print(f"step {step}/{run.max_train_steps} {summary}")


def save_grids(run, step):
    """The fixed-noise grid (with --cond one row per class) and the colour statistics against the reals
    (main process)."""
    classes = run.gan_config.classes
    caption = f"rows: {', '.join(classes[i] for i in run.fixed_c.unique().tolist())}" if classes else None
    log_grid(run.accelerator, generate(run.G_eval, run.fixed_z, c=run.fixed_c), run.output_dir, step,
             nrow=run.grid_columns, caption=caption)
    colour = colour_report(colour_stats(generate(run.G_eval, run.colour_z, c=run.colour_c)), run.real_colour)
    for warning in run.drift.update(colour, step):  # the saturation / contrast creep of the vanilla recipe
        run.accelerator.print(warning)
    run.samples_log.log(colour, step)


def evaluate_now(run, step):
    """FID/KID of the sampler against the reals (a collective: every rank computes features)."""
    from gan_dist.evaluation.metrics import evaluate, format_result  # slow to import
    args, acc = run.args, run.accelerator
    sync_buffers(acc, run.nets)
    num_real = min(args.fid_samples, run.manifest["count"])
    result = evaluate(acc, run.G_eval, run.extractor, lambda: run.data.for_metrics(num_real, args.seed), args.data,
                      args.latent_dim, num_gen=args.fid_samples, seed=args.seed,
                      real_subset="memory" if run.data.in_memory is not None else "stream",
                      classes=run.classes_as_data(args.fid_samples))
    acc.print(f"step {step}: {format_result(result)}")
    run.eval_log.log(result, step)


def save(run, step):
    """A checkpoint on every rank, once the weights are finite and the ranks agree."""
    acc = run.accelerator
    check_finite(run.nets, step)
    sync_buffers(acc, run.nets)
    check_consistency(acc, run.nets)  # before saving: never keep a drifted state
    run.progress.reduce(acc)
    position = {**run.progress.state_dict(), "colour_drift": run.drift.state_dict(),
                "wandb_run_id": run.wandb_run_id}
    if run.ada is not None:
        position["augment"] = run.ada.state_dict(acc)  # a collective: the signs every rank counted
    save_checkpoint(acc, run.output_dir, step, run.gan_config, position, run.args.checkpoints_total_limit,
                    ema=run.G_ema)


def main(argv=None):
    args = parse_args(argv)
    try:
        train(args)
    except Preempted:
        sys.exit(EXIT_PREEMPTED)
    except (DataError, UsageError, DistributedError, CheckpointError, DirectoryBusy, FileNotFoundError,
            FloatingPointError, RunDirError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
