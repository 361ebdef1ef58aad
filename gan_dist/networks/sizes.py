"""Network sizes for `--arch resnet` (`--size small|base|large`): one table of widths, blocks, expansion and
group size per size and resolution, and what a network costs (parameters, FLOPs per image).

A block's grouped 3x3 conv has cardinality = width x expansion / group_size groups. R3GAN (brownvc/R3GAN,
train.py) gives cardinality per stage; at widths 768 and 384 with expansion 2 its groups hold 16 channels,
at 1536 (its ImageNet presets) 32, so one group size per size describes every stage.
"""
from typing import NamedTuple

SIZES = ("small", "base", "large")


class NetSize(NamedTuple):
    widths: tuple  # channels per stage, from 4x4 up to the image
    blocks: int  # residual blocks per stage
    expansion: int  # a block's inner width / its width
    group_size: int  # channels per group of the grouped 3x3 convs
    source: str  # where these values come from

    def cardinality(self):
        """Groups of each stage's grouped conv (R3GAN's CardinalityPerStage)."""
        return tuple(w * self.expansion // self.group_size for w in self.widths)


_SMALL = "ours: halved per doubling from 8x8 up (each stage about the same cost), 16 at least; not measured"
_LARGE = ("ours: R3GAN's ImageNet-64 preset, halved per doubling above 64x64 as its FFHQ-256 preset halves above "
          "32x32 (R3GAN publishes no ImageNet preset above 64 px); not measured")
TABLE = {
    "small": {  # fits a CPU: 1 block, expansion 1 (dense-ish 3x3 convs)
        32: NetSize((256, 128, 32, 16), 1, 1, 16,
                    "ours, measured: the quality bench's stacked digits (docs/performance.md, tuning-history.md)"),
        64: NetSize((256, 128, 64, 32, 16), 1, 1, 16, _SMALL),
        128: NetSize((256, 128, 64, 32, 16, 16), 1, 1, 16, _SMALL),
        256: NetSize((256, 128, 64, 32, 16, 16, 16), 1, 1, 16, _SMALL),
    },
    "base": {  # R3GAN's CIFAR-10 and FFHQ presets: 768 channels up to 32x32, halved above, 2 blocks, cardinality 96
        32: NetSize((768,) * 4, 2, 2, 16, "R3GAN's CIFAR10 preset"),
        64: NetSize((768,) * 4 + (384,), 2, 2, 16, "R3GAN's FFHQ-64 preset"),
        128: NetSize((768,) * 4 + (384, 192), 2, 2, 16, "R3GAN's FFHQ-256 preset up to 128x128"),
        256: NetSize((768,) * 4 + (384, 192, 96), 2, 2, 16, "R3GAN's FFHQ-256 preset"),
    },
    "large": {  # R3GAN's ImageNet presets: 1536 channels, 2 blocks, cardinality 96
        32: NetSize((1536,) * 4, 2, 2, 32, "R3GAN's ImageNet-32 preset"),
        64: NetSize((1536,) * 5, 2, 2, 32, "R3GAN's ImageNet-64 preset"),
        128: NetSize((1536,) * 5 + (768,), 2, 2, 32, _LARGE),
        256: NetSize((1536,) * 5 + (768, 384), 2, 2, 32, _LARGE),
    },
}


def net_size(size, img_size):
    """The table's row for `size` at `img_size`; ValueError naming the sizes it has."""
    if size not in TABLE:
        raise ValueError(f"unknown --size {size!r}; choose one of {', '.join(SIZES)}")
    if img_size not in TABLE[size]:
        raise ValueError(f"--size {size} is defined at --img_size {', '.join(map(str, TABLE[size]))}, "
                         f"not {img_size}")
    return TABLE[size][img_size]


def flops_per_image(gan_config):
    """(G's forward FLOPs for one image, D's), counted by torch's FlopCounterMode (convolutions and matrix
    products; elementwise work is not counted) on the meta device, so nothing is computed or allocated."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from gan_dist.networks.models import build_models
    with torch.device("meta"), torch.no_grad():
        G, D = build_models(gan_config)
        G.eval(), D.eval()  # BatchNorm on one image: its running statistics
        z = torch.zeros(1, gan_config.latent_dim)
        imgs = torch.zeros(gan_config.pacgan, gan_config.channels, gan_config.img_size, gan_config.img_size)
        with FlopCounterMode(display=False) as g_count:
            G(z)
        with FlopCounterMode(display=False) as d_count:
            D(imgs)  # a PacGAN group is one input of D
    return g_count.get_total_flops(), d_count.get_total_flops() // gan_config.pacgan


def network_figures(gan_config):
    """G's and D's parameters and forward GFLOPs per image: {"G_params", "D_params", "G_gflops", "D_gflops"}."""
    from gan_dist.budgets import network_params
    n_G, n_D = network_params(gan_config)
    f_G, f_D = flops_per_image(gan_config)
    return {"G_params": n_G, "D_params": n_D, "G_gflops": f_G / 1e9, "D_gflops": f_D / 1e9}


def describe(figures):
    """The banner's line: 'G 0.15M parameters, 0.06 GFLOPs per image; D ...'."""
    return "; ".join(f"{net} {figures[f'{net}_params'] / 1e6:.2f}M parameters, "
                     f"{figures[f'{net}_gflops']:.3g} GFLOPs per image" for net in ("G", "D"))
