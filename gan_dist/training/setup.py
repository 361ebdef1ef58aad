"""Everything a training run needs before its first step, checked and built in one call: `setup(args) -> Run`."""
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed

from gan_dist.budgets import BudgetError
from gan_dist.dirlock import DirectoryLock
from gan_dist.evaluation.colour import DriftTracker, colour_stats
from gan_dist.networks.conditioning import classes_as_data, grid_classes, listed
from gan_dist.networks.figures import check_params, describe, network_figures
from gan_dist.networks.models import build_models
from gan_dist.training.augmentation import AdaptiveAugment, make_augment
from gan_dist.training.checkpoint import load_checkpoint, read_meta, remove_partials, resolve_resume
from gan_dist.training.data import check_images, first_batch, to_device_float
from gan_dist.training.ddp import check_launch, check_same_choice, convert_sync_bn, ddp_kwargs, process_group_kwargs
from gan_dist.training.ema import load_ema, make_ema
from gan_dist.training.manifest import check_batch, check_matches, load_manifest, pack_classes
from gan_dist.training.options import BatchSplit, split_batch
from gan_dist.training.options import gan_config as config_of
from gan_dist.training.preemption import StopSignal
from gan_dist.training.progress import Progress
from gan_dist.training.reals import RealData, real_data
from gan_dist.training.rundir import check_run_dir, write_args
from gan_dist.training.runlog import TRAIN_LOG
from gan_dist.training.step import GANStep, adam, compile_available
from gan_dist.training.tracking import MetricsLog, init_trackers, log_grid, tracker_names


class UsageError(Exception):
    """A problem with the run's options or directories that the user has to fix."""


@dataclass
class Run:
    """A run ready to train: its processes, networks, optimizers, data, counters and outputs."""
    args: Any
    accelerator: Accelerator
    output_dir: Path
    manifest: dict
    gan_config: Any
    G: torch.nn.Module  # prepared (DDP-wrapped when multi-process)
    D: torch.nn.Module
    G_ema: Optional[torch.nn.Module]
    opt_G: Any
    opt_D: Any
    gan_step: GANStep
    memory_format: torch.memory_format
    data: RealData
    progress: Progress
    batch: BatchSplit
    steps_per_epoch: int
    max_train_steps: int
    stopper: StopSignal
    drift: DriftTracker
    extractor: Optional[torch.nn.Module]  # FID/KID features, when --eval_steps asks for them
    train_log: MetricsLog
    samples_log: MetricsLog
    eval_log: MetricsLog
    wandb_run_id: Optional[str]
    fixed_z: Optional[torch.Tensor] = None  # main process only: the grids' noise, the same all run
    colour_z: Optional[torch.Tensor] = None
    real_colour: Optional[dict] = None
    ada: Optional[AdaptiveAugment] = None  # --aug ada: the pipeline, its p and r_t
    class_counts: Optional[list] = None  # --cond: the pack's images per class
    fixed_c: Optional[torch.Tensor] = None  # --cond, main process: the grid's classes, one row per class
    colour_c: Optional[torch.Tensor] = None
    grid_columns: int = 5
    dir_lock: Optional[DirectoryLock] = None  # the main process's lock on output_dir

    def classes_as_data(self, n):
        """n class ids at the data's class frequencies (--cond), else None."""
        return classes_as_data(self.class_counts, n) if self.class_counts else None

    def close(self):
        """Give back what setup took in this process: SIGTERM/SIGINT and the run directory's lock."""
        self.stopper.close()
        if self.dir_lock is not None:
            self.dir_lock.release()

    @property
    def global_batch(self):
        return self.batch.global_batch

    @property
    def G_eval(self):
        """The generator that grids and metrics show: G_ema when the run keeps one."""
        return self.G_ema if self.G_ema is not None else self.accelerator.unwrap_model(self.G)

    @property
    def nets(self):
        nets = {"G": self.G, "D": self.D}
        return nets if self.G_ema is None else {**nets, "G_ema": self.G_ema}


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
    ours = gan_config.to_dict()
    if meta and "size" not in meta["gan_config"]:  # saved before --size: the networks' fields alone must match
        ours.pop("size", None)
    if meta and meta["gan_config"] != ours:
        raise UsageError(f"checkpoint {resume_dir} was made for {meta['gan_config']}, not {gan_config.to_dict()}; "
                         "resume with the same --arch/--img_size/--channels/--latent_dim/--cond or use a new "
                         "--output_dir")
    return resume_dir, meta


def make_accelerator(args, output_dir):
    # torch.compile has no double backward: with R1/R2 only G is compiled (in setup), D runs eagerly
    penalised = args.r1_gamma > 0 or args.r2_gamma > 0
    dynamo = {"dynamo_backend": "inductor"} if args.compile and not penalised and compile_available() else {}
    return Accelerator(
        cpu=args.cpu, mixed_precision=args.mixed_precision, log_with=tracker_names(args.report_to) or None,
        kwargs_handlers=[ddp_kwargs(args.ddp_bucket_cap_mb, args.ddp_comm_hook),
                         *process_group_kwargs(args.ddp_backend)],
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        **dynamo)


def set_backends(allow_tf32, cudnn_benchmark):
    """TF32 matmuls and convolutions on Ampere and later, and cuDNN's autotuner (no effect on the CPU)."""
    torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    torch.backends.cudnn.allow_tf32 = allow_tf32
    torch.backends.cudnn.benchmark = cudnn_benchmark


def setup(args):
    """Check the data, run directory and resume point, then build the processes, networks, data and outputs."""
    # ---- checks before any process group starts
    manifest, urls = load_manifest(args.data, args.shard_url, verify=not args.skip_verify)
    if not args.shard_url:
        check_images(manifest, urls, args.data)
    check_matches(manifest, args.img_size, args.channels, args.data, jpeg=args.decode_on_device)
    classes, class_counts = pack_classes(manifest, args.data) if args.cond else ((), None)
    gan_config = config_of(args, classes)
    if classes:
        try:  # the class embeddings' parameters, now that the pack says how many classes there are
            check_params(gan_config, args.max_params, where=f"--cond with {len(classes):,} classes: ", both=True)
        except BudgetError as e:
            raise UsageError(f"{e}; pass a larger --max_params if you mean it") from None
    output_dir = Path(args.output_dir)
    check_output_dir(output_dir, args.resume_from_checkpoint)
    resume_dir, meta = read_resume_point(args, output_dir, gan_config)

    # ---- processes, devices, precision
    set_backends(args.allow_tf32, args.cudnn_benchmark)
    acc = make_accelerator(args, output_dir)
    check_launch(acc)
    check_same_choice(acc, "--size", args.size, "some see a CUDA GPU and others do not: pass --size")
    stopper = StopSignal(acc)
    batch = BatchSplit(*split_batch(args.batch_size, args.gradient_accumulation_steps, args.batch_gpu),
                       acc.num_processes)
    config = {**vars(args), "batch_split": batch.to_dict()}  # the split as run (--config ignores it)
    if acc.is_main_process:
        dir_lock = DirectoryLock(output_dir, "gan_dist.train")  # one trainer per run directory
        write_args(output_dir, config)
        remove_partials(output_dir)

    # ---- networks and optimizers
    set_seed(args.seed)  # same initial weights for any world size (DDP also broadcasts rank 0's)
    G, D = build_models(gan_config)
    if args.sync_bn:
        G, D = convert_sync_bn(acc, G, D)
    memory_format = torch.channels_last if args.arch != "mlp" else torch.contiguous_format  # NHWC convs are faster
    G, D = G.to(memory_format=memory_format), D.to(memory_format=memory_format)
    opt_G = adam(G.parameters(), args.lr_g, args.betas_g, acc.device)
    opt_D = adam(D.parameters(), args.lr_d, args.betas_d, acc.device)
    G, D, opt_G, opt_D = acc.prepare(G, D, opt_G, opt_D)
    set_seed(args.seed, device_specific=True)  # each rank draws its own noise

    # ---- schedule, counted in steps of the global batch
    global_batch = batch.global_batch  # batch_size x processes, whatever the accumulation
    check_batch(manifest, global_batch, args.data)
    steps_per_epoch = manifest["count"] // global_batch
    max_train_steps = args.max_train_steps or args.n_epochs * steps_per_epoch

    # ---- resume: weights, optimizers, scaler, every rank's RNG, then G_ema and the drift history
    drift = DriftTracker()
    if resume_dir is not None:
        load_checkpoint(acc, resume_dir)
        acc.print(f"resumed from {resume_dir} at step {meta['global_step']}")
        drift.load_state_dict(meta.get("colour_drift", drift.state_dict()))
        if meta["global_batch"] != global_batch:
            acc.print(f"warning: the global batch changed ({meta['global_batch']} -> {global_batch}); "
                      "training continues, but not bit-exactly: the data order differs")
    elif args.resume_from_checkpoint:
        acc.print(f"no checkpoint in {output_dir / 'checkpoints'}; starting from scratch")
    G_ema = make_ema(acc.unwrap_model(G)) if args.ema_kimg > 0 else None  # after loading: a copy of G
    if G_ema is not None and resume_dir is not None and not load_ema(G_ema, resume_dir):
        acc.print("warning: the checkpoint has no G_ema; the average starts again from G")
    augment, ada = make_augment(args, acc, global_batch, meta)  # ADA's p and pending signs from gan.json
    if args.compile and (args.r1_gamma > 0 or args.r2_gamma > 0) and compile_available():
        acc.unwrap_model(G).compile()  # in place, after G_ema's copy; D stays eager (see make_accelerator)

    # ---- real images and the run's counters
    data = real_data(args, manifest, urls, acc, steps_per_epoch, len(classes) or None)
    progress = Progress(global_batch, steps_per_epoch, acc.num_processes, meta.get("global_step", 0),
                        meta.get("skipped_samples", data.skipped_at_load))

    # ---- evaluation (a collective: every rank computes features)
    extractor = None
    if args.eval_steps:
        from gan_dist.evaluation.metrics import inception_for_run  # slow to import
        extractor, why_not = inception_for_run(acc, args.inception_weights)
        if why_not:
            acc.print(f"warning: {why_not}; training goes on without FID/KID")

    # ---- outputs: logs, trackers, and what only the main process needs for grids
    run = Run(args, acc, output_dir, manifest, gan_config, G, D, G_ema, opt_G, opt_D,
              GANStep(acc, G, D, opt_G, opt_D, args.loss, augment, batch.accumulation), memory_format, data,
              progress, batch, steps_per_epoch, max_train_steps, stopper, drift, extractor,
              *(MetricsLog(acc, output_dir, kind) for kind in ("train", "samples", "eval")),
              init_trackers(acc, args.tracker_project_name, config, output_dir, meta.get("wandb_run_id")),
              ada=ada, class_counts=class_counts)
    if acc.is_main_process:
        run.dir_lock = dir_lock
        noise = torch.Generator().manual_seed(args.seed)  # the same z for the whole run: progress is visible
        if classes:  # one row per class, the same z down each column
            fixed_c, run.grid_columns = grid_classes(len(classes), args.n_samples)
            z = torch.randn(run.grid_columns, args.latent_dim, generator=noise)
            run.fixed_z, run.fixed_c = z.repeat(len(fixed_c) // run.grid_columns, 1).to(acc.device), fixed_c
            run.colour_c = run.classes_as_data(args.colour_samples)
        else:
            run.fixed_z = torch.randn(args.n_samples, args.latent_dim, generator=noise).to(acc.device)
        run.colour_z = torch.randn(args.colour_samples, args.latent_dim, generator=noise).to(acc.device)
        run.real_colour = colour_stats(to_device_float(first_batch(urls, args.colour_samples, args.seed + 1), "cpu"))
        if progress.step == 0:
            log_grid(acc, to_device_float(first_batch(urls, args.n_samples, args.seed), "cpu"), output_dir, 0,
                     key="reals")
    print_banner(run)
    return run


def print_banner(run):
    """The start banner, on rank 0 only (counting FLOPs builds the networks again, on the meta device)."""
    args, acc, m = run.args, run.accelerator, run.manifest
    if not acc.is_main_process:
        return
    size = f"  size {args.size} ({args.size_reason})\n" if args.size else ""
    acc.print(
        f"***** training {args.arch} on {m['count']} images {args.img_size}x{args.img_size}x{args.channels} "
        f"*****\n{size}  {describe(network_figures(run.gan_config))}\n"
        f"  data {run.data.description}\n"
        f"  processes {acc.num_processes} ({acc.distributed_type}, {acc.state.backend or 'no process group'}, "
        f"{acc.device}), mixed precision {acc.mixed_precision}\n"
        f"  {run.batch}; {run.steps_per_epoch} steps per epoch; "
        f"{run.max_train_steps} steps ({run.max_train_steps / run.steps_per_epoch:.1f} epochs)"
        + (f"\n  class-conditional: {len(run.gan_config.classes)} classes ({listed(list(run.gan_config.classes))})"
           if run.gan_config.classes else ""))
