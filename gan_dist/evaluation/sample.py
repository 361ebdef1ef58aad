"""Draw images from a trained generator: a grid, one PNG per image, or a latent walk.

    python -m gan_dist.sample --checkpoint runs/gan/checkpoints/checkpoint-5000 --n 64 --grid samples.png
    python -m gan_dist.sample --checkpoint runs/gan --n 1000 --out_dir samples/ --seed 1     # latest checkpoint
    python -m gan_dist.sample --checkpoint runs/gan --interpolate --n 8 --grid walk.png        # 8 walks, one per row
    python -m gan_dist.sample --checkpoint runs/gan --interpolate --n 16 --grid walk.gif       # a looping GIF
    python -m gan_dist.sample --checkpoint runs/cond --class 3 --class 7 --n 8 --grid 3s-and-7s.png  # --cond runs

G is rebuilt from the checkpoint's gan.json. The EMA weights (G_ema.safetensors) are used
when the checkpoint has them, unless --no-ema; --ema insists on them. A class-conditional G
draws --n images for each --class (a name, else a class number), one grid row per class with
the same latents down each column; without --class, for its first classes (as the training grids).
"""
import argparse
import math
import re
import sys
from pathlib import Path

import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file
from torchvision.utils import make_grid

from gan_dist.budgets import MAX_SEED, BudgetError, check_sample_bytes
from gan_dist.networks.conditioning import GRID_CLASSES, class_ids
from gan_dist.networks.figures import check_params
from gan_dist.networks.models import GANConfig, build_models, generate
from gan_dist.training.checkpoint import META, WEIGHT_FILES, CheckpointError, list_checkpoints, read_meta
from gan_dist.training.ema import EMA_FILE


class SampleError(Exception):
    """A problem with the options or the checkpoint that the user has to fix."""


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="gan_dist.sample", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="a checkpoint-STEP directory, a run directory (its latest), "
                   "a folder from `python -m gan_dist.export`, or a Hub id (hf://user/name or user/name)")
    p.add_argument("--n", type=int, default=64,
                   help="images (with --interpolate: walks); for a class-conditional G, images per class")
    p.add_argument("--class", dest="classes", action="append", default=None, metavar="NAME|ID",
                   help="class-conditional G: draw this class (a class name, else its number from 0); repeat for "
                        f"several, one grid row each (default: the first {GRID_CLASSES} classes)")
    p.add_argument("--grid", default=None, help="write a grid to this .png (or .gif with --interpolate)")
    p.add_argument("--out_dir", default=None, help="write one PNG per image into this directory")
    p.add_argument("--interpolate", action="store_true",
                   help="latent walks: each of --n latents moves to another over --steps frames")
    p.add_argument("--steps", type=int, default=8, help="frames per walk with --interpolate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--truncation", type=float, default=1.0,
                   help="scale z toward the mean (0) by this factor: < 1 trades variety for fidelity; 1 = off")
    p.add_argument("--ema", action=argparse.BooleanOptionalAction, default=None,
                   help=f"use the EMA weights ({EMA_FILE}); default: when the checkpoint has them")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch_size", type=int, default=256, help="images per forward pass")
    args = p.parse_args(argv)
    if args.grid is None and args.out_dir is None:
        p.error("nothing to write: pass --grid FILE.png and/or --out_dir DIR")
    for name in ("n", "steps", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.interpolate and args.steps < 2:
        p.error("--interpolate needs --steps >= 2")
    if not 0 < args.truncation < math.inf:  # NaN or inf would draw an all-black grid
        p.error(f"--truncation must be > 0 and finite, got {args.truncation}")
    if not 0 <= args.seed <= MAX_SEED:
        p.error(f"--seed must be from 0 to {MAX_SEED}, got {args.seed}")
    if args.grid and Path(args.grid).suffix.lower() == ".gif" and not args.interpolate:
        p.error("a .gif grid is a latent walk: add --interpolate (or write a .png)")
    return args


def resolve_checkpoint(path):
    """A checkpoint-STEP directory, or the latest one of a run directory."""
    path = Path(path)
    if (path / META).is_file():
        return path
    found = list_checkpoints(path)
    if found:
        return found[-1][1]
    raise SampleError(f"--checkpoint {path}: neither a checkpoint (no {META}) nor a run directory with "
                      "checkpoints/checkpoint-STEP inside, nor an exported model (config.json)")


def load_generator(checkpoint, ema=None, device="cpu"):
    """Rebuild G from a checkpoint; return (G in eval mode on device, whether the EMA weights were used).

    Args:
        checkpoint: a checkpoint-STEP directory.
        ema: True = the EMA weights (SampleError if absent); False = the trained G; None = EMA if present.
        device: where G goes.
    """
    checkpoint = Path(checkpoint)
    G, _ = build_models(checkpoint_config(checkpoint))
    ema_path = checkpoint / EMA_FILE
    if ema and not ema_path.is_file():
        raise SampleError(f"--ema: {checkpoint} has no EMA weights ({EMA_FILE}); the run was trained without "
                          "EMA or before it was saved. Use --no-ema for the trained G")
    use_ema = ema_path.is_file() if ema is None else ema
    # fixed names: gan.json's "weights" is only a record, never a path to follow
    path = ema_path if use_ema else checkpoint / WEIGHT_FILES["G"]
    if not path.is_file():
        raise SampleError(f"{checkpoint} has no generator weights {path.name}")
    try:
        G.load_state_dict(load_file(str(path)))
    except (SafetensorError, OSError, RuntimeError) as e:  # RuntimeError: tensors that do not fit gan.json
        raise SampleError(f"{path} is damaged or does not match {META} ({str(e).splitlines()[0][:200]}); "
                          "use another checkpoint") from None
    return G.to(device).eval(), use_ema


def checkpoint_config(checkpoint):
    """The GANConfig in a checkpoint's gan.json, checked (SampleError names what is wrong)."""
    config = read_meta(checkpoint)["gan_config"]  # CheckpointError if gan.json is not JSON
    try:
        cfg = GANConfig.from_dict(config)
        check_params(cfg, where=f"{Path(checkpoint) / META}: ")  # counted before G is built
        return cfg
    except BudgetError as e:
        raise SampleError(str(e)) from None
    except (ValueError, TypeError) as e:
        raise SampleError(f"{Path(checkpoint) / META} is malformed ({e.__class__.__name__}: {e}); "
                          "use another checkpoint") from None


def is_hub_model(spec):
    """An exported model folder (config.json, no gan.json), `hf://user/name`, or `user/name` that is no local path."""
    path = Path(spec)
    if str(spec).startswith("hf://"):
        return True
    if path.exists():
        return (path / "config.json").is_file() and not (path / META).is_file()
    return re.fullmatch(r"[\w.-]+/[\w.-]+", str(spec)) is not None


def open_generator(spec, ema=None, device="cpu"):
    """G from a checkpoint, a run directory, an exported folder or a Hub id: (source, G, used EMA, its GANConfig)."""
    if not is_hub_model(spec):
        checkpoint = resolve_checkpoint(spec)
        G, used_ema = load_generator(checkpoint, ema, device)
        return checkpoint, G, used_ema, checkpoint_config(checkpoint)
    try:
        from gan_dist.networks.hub import HubError, load_exported
    except ImportError as e:
        raise SampleError(f"--checkpoint {spec} is a Hugging Face model, which needs {e.name}: "
                          "pip install 'gan-dist[hf]'") from None
    try:
        folder, G, used_ema, _ = load_exported(spec, ema, device)
        return folder, G, used_ema, G.gan_config
    except HubError as e:
        raise SampleError(str(e)) from None


def slerp(a, b, t):
    """Spherical interpolation between latents a and b (rows), t in [0, 1]; keeps norms Gaussian-like."""
    a_n, b_n = a / a.norm(dim=-1, keepdim=True), b / b.norm(dim=-1, keepdim=True)
    omega = torch.acos((a_n * b_n).sum(-1, keepdim=True).clamp(-1, 1))
    so = torch.sin(omega)
    linear = (1 - t) * a + t * b
    return torch.where(so < 1e-6, linear, (torch.sin((1 - t) * omega) / so) * a + (torch.sin(t * omega) / so) * b)


def latents(n, latent_dim, seed, truncation=1.0, walk_steps=None):
    """(n, latent_dim) Gaussian latents, or with walk_steps (n, walk_steps, latent_dim) walks; scaled by truncation."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, latent_dim, generator=gen)
    if walk_steps is not None:
        z_end = torch.randn(n, latent_dim, generator=gen)
        t = torch.linspace(0, 1, walk_steps)[None, :, None]  # (1, steps, 1)
        z = slerp(z[:, None], z_end[:, None], t)  # (n, steps, latent)
    return z * truncation


def to_pil(img):
    """(C, H, W) in [-1, 1] -> a PIL image (mode L for one channel, RGB for three)."""
    arr = ((img.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)


def grid_image(images, nrow):
    return to_pil(make_grid(images, nrow=nrow, padding=2, pad_value=-1))


def write_images(images, out_dir, names):
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for img, name in zip(images, names):
        to_pil(img).save(out_dir / name)
    return out_dir


def write_gif(frames, path, duration_ms=100):
    """frames: list of PIL images; played forward then back, looping."""
    frames = frames + frames[-2:0:-1]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=duration_ms, loop=0)


def chosen_classes(cfg, wanted, where):
    """The class ids --class asks for (default: the first GRID_CLASSES), or None for an unconditional G;
    SampleError names a class that is not one of G's, or --class given to an unconditional G."""
    if not cfg.classes:
        if wanted:
            raise SampleError(f"--class: {where} is an unconditional generator (trained without --cond); "
                              "drop --class")
        return None
    try:
        return torch.tensor(class_ids(cfg.classes, wanted) if wanted else list(range(min(len(cfg.classes),
                                                                                            GRID_CLASSES))))
    except ValueError as e:
        raise SampleError(f"--class: {e}") from None


def sample(args):
    checkpoint, G, used_ema, cfg = open_generator(args.checkpoint, args.ema, args.device)
    latent_dim, written = cfg.latent_dim, []
    ids = chosen_classes(cfg, args.classes, checkpoint)
    rows = 1 if ids is None or args.interpolate else len(ids)  # a conditional grid: a row of --n per class
    try:
        check_sample_bytes(args.n * rows * (args.steps if args.interpolate else 1), latent_dim, cfg, "--n")
    except BudgetError as e:
        raise SampleError(str(e)) from None
    if args.interpolate:
        z = latents(args.n, latent_dim, args.seed, args.truncation, walk_steps=args.steps)  # (n, steps, latent)
        # a conditional G walks within a class: walk i in the i-th class asked for (in turn)
        c = None if ids is None else ids[torch.arange(args.n) % len(ids)].repeat_interleave(args.steps)
        images = generate(G, z.flatten(0, 1), args.device, args.batch_size, c)  # walk-major: (n * steps, C, H, W)
        if args.grid and Path(args.grid).suffix.lower() == ".gif":
            per_frame = images.view(args.n, args.steps, *images.shape[1:]).transpose(0, 1)  # (steps, n, C, H, W)
            nrow = math.ceil(math.sqrt(args.n))
            write_gif([grid_image(frame, nrow) for frame in per_frame], args.grid)
            written.append(args.grid)
        elif args.grid:
            grid_image(images, nrow=args.steps).save(args.grid)  # one walk per row
            written.append(args.grid)
        names = [f"walk{i:04d}_{s:03d}.png" for i in range(args.n) for s in range(args.steps)]
    elif ids is not None:  # class by class, the same latents in each: row k, column j is G(z_j, class k)
        z = latents(args.n, latent_dim, args.seed, args.truncation)
        images = generate(G, z.repeat(len(ids), 1), args.device, args.batch_size, ids.repeat_interleave(args.n))
        if args.grid:
            grid_image(images, nrow=args.n).save(args.grid)
            written.append(args.grid)
        names = [f"class{k:05d}_{i:06d}.png" for k in ids.tolist() for i in range(args.n)]
    else:
        images = generate(G, latents(args.n, latent_dim, args.seed, args.truncation), args.device, args.batch_size)
        if args.grid:
            grid_image(images, nrow=math.ceil(math.sqrt(args.n))).save(args.grid)
            written.append(args.grid)
        names = [f"{i:06d}.png" for i in range(args.n)]
    if args.out_dir:
        write_images(images, args.out_dir, names)
        written.append(f"{args.out_dir}/ ({len(names)} PNGs)")
    weights = f"EMA weights ({EMA_FILE})" if used_ema else "the trained G (no EMA)"
    drawn = "" if ids is None else f", classes {', '.join(f'{cfg.classes[k]} ({k})' for k in ids.tolist())}"
    print(f"{checkpoint} ({weights}, seed {args.seed}, truncation {args.truncation}{drawn}): "
          f"wrote {', '.join(written)}")


def main(argv=None):
    args = parse_args(argv)
    try:
        sample(args)
    except (SampleError, CheckpointError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
