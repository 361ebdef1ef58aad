"""The modern preset's values per network size (`--size`, networks/sizes.py) and resolution, each with where it
comes from, and the size a run gets when it names none: `small` on the CPU, `base` on a CUDA GPU.

The values here differ by size; those that do not (loss, Adam betas, the cosine schedule, the EMA ramp-up) sit
in options.PRESETS. A value is filled only where the command line (or --config) left the option out.
"""
from accelerate.utils import parse_flag_from_env

from gan_dist.networks.sizes import TABLE

# R3GAN's gamma per resolution: CIFAR-10 at 32, FFHQ at 64 and 256; 128 geometrically between
GAMMA_FOR_RES = {32: 0.05, 64: 2.0, 128: 17.0, 256: 150.0}
_SMALL_GAMMA = "32 px: ours, measured (40x R3GAN's 0.05: each channel's digits come out more evenly); above: base's"
_OURS = "ours, measured at 32 px on stacked digits (docs/tuning-history.md)"
MODERN = {  # size: option: (value, or {img_size: value}; source)
    "small": {
        "r1_gamma": ({**GAMMA_FOR_RES, 32: 2.0}, _SMALL_GAMMA),
        "r2_gamma": ({**GAMMA_FOR_RES, 32: 2.0}, _SMALL_GAMMA),
        "lr": (0.001, f"{_OURS}: 5x R3GAN's; small He-initialised nets learn slowly at 2e-4"),
        "reg_every": (4, f"{_OURS}: lazy R1/R2, as a penalised step costs 2.4x a plain one on the CPU"),
        "mbstd_group": (4, f"{_OURS}: D's minibatch std over groups of 4"),
        "gamma_end_ratio": (1.0, f"{_OURS}: R1/R2 held to the end; R3GAN's fall to 1/10 raised a short run's KL"),
        "ema_kimg": (5.0, "the preset's value before sizes, with which the 32-px recipe was measured"),
    },
    "base": {
        "r1_gamma": (GAMMA_FOR_RES, "R3GAN's CIFAR10, FFHQ-64 and FFHQ-256 presets (128: between)"),
        "r2_gamma": (GAMMA_FOR_RES, "R3GAN's (R1 = R2)"),
        "lr": (0.0002, "R3GAN's 2e-4, falling to 5e-5 (--lr_end_ratio 0.25)"),
        "reg_every": (1, "R3GAN's: R1 and R2 at every step"),
        "mbstd_group": (0, "R3GAN's D has no minibatch std"),
        "gamma_end_ratio": (0.1, "R3GAN's: gamma falls to 1/10 over the schedule"),
        "ema_kimg": ({32: 5000.0, 64: 500.0, 128: 500.0, 256: 500.0},
                     "R3GAN's final half-life: CIFAR10 5,000 kimg, FFHQ 500 kimg (reached by --ema_rampup)"),
    },
}
# large: the networks of R3GAN's ImageNet presets with base's recipe; R3GAN's ImageNet gammas (0.5 at 32, 1 at 64)
# and 50,000-kimg EMA belong to ImageNet's 1.3 M images and 200 M-image runs, not to the network
MODERN["large"] = MODERN["base"]
NETWORK_OPTIONS = ("widths", "blocks", "expansion", "group_size")


def modern_values(size, img_size):
    """The modern preset's size-dependent values at img_size: {option: value}."""
    return {name: value[img_size] if isinstance(value, dict) else value for name, (value, _) in MODERN[size].items()}


def default_size(cpu):
    """(size, why) for a run that names none: small where training runs on the CPU, base on a CUDA GPU."""
    if cpu:
        return "small", "the default on the CPU (--cpu)"
    if parse_flag_from_env("ACCELERATE_USE_CPU"):  # Accelerate trains on the CPU then, GPU or not
        return "small", "the default on the CPU (ACCELERATE_USE_CPU)"
    import torch
    if not torch.cuda.is_available():
        return "small", "the default on the CPU (no CUDA device)"
    return "base", "the default on a CUDA GPU"


def resolve_size(args, arch):
    """Set args.size and args.size_reason, and fill the network options left out (None) from the size's row.

    --size given wins; else --preset modern picks by device (default_size); else no size (the options' own
    defaults). Only --arch resnet has sizes; ValueError for --size with another arch."""
    args.size_reason = None
    if arch != "resnet":
        if args.size is not None:
            raise ValueError(f"--size picks --arch resnet networks, not --arch {arch}; drop --size")
        return args
    if args.size is not None:
        reason = "--size"
    elif args.preset == "modern":
        args.size, reason = default_size(args.cpu)
    else:
        return args
    row = TABLE[args.size].get(args.img_size)  # None: GANConfig names the image sizes resnet takes
    given = [f"--{name}" for name in ("width", *NETWORK_OPTIONS) if getattr(args, name) is not None]
    if row is not None:
        if args.widths is None and args.width is None:  # --width (one count, halved above 32 px) wins too
            args.widths = list(row.widths)
        for name in NETWORK_OPTIONS[1:]:
            if getattr(args, name) is None:
                setattr(args, name, getattr(row, name))
    args.size_reason = reason + (f"; given: {' '.join(given)}" if given else "")
    return args
