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
