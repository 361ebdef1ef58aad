"""Generators and discriminators: the vanilla MLP pair (PyTorch-GAN's gan.py), a DCGAN pair and an
R3GAN-style residual pair (networks/resnet.py).

Discriminators return logits (no Sigmoid), so the loss can use BCE-with-logits and
run under autocast; D(x) as a probability is `torch.sigmoid(logit)`. With `classes` (--cond) every
pair is class-conditional (networks/conditioning.py): G(z, c) and D(img, c) take class ids c (B,).
"""
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from gan_dist.budgets import class_names_problem
from gan_dist.networks.conditioning import ClassEmbedding, Projection, projected, with_classes
from gan_dist.networks.pacgan import pacgan_inputs
from gan_dist.networks.resnet import ResNetDiscriminator, ResNetGenerator, stage_widths
from gan_dist.networks.sizes import SIZES

ARCHS = ("mlp", "dcgan", "resnet")
# recorded only for --arch resnet
RESNET_FIELDS = ("width", "widths", "blocks", "group_size", "expansion", "mapping_layers", "mbstd_group", "size")
# fields added after gan.json was first written, and the value that leaves each one out of it
LATER_FIELDS = {"mapping_layers": 0, "pacgan": 1, "mbstd_group": 0, "size": "", "classes": []}
MAX_MLP_PARAMS = 2**30  # the MLP G's last layer grows with the image: 4 GiB of float32 weights at most


@dataclass(frozen=True)
class GANConfig:
    """Everything needed to rebuild G and D; stored with every checkpoint."""

    arch: str = "mlp"
    latent_dim: int = 100
    img_size: int = 128
    channels: int = 3
    base_width: int = 64  # DCGAN only: channels of the widest G / narrowest D layer
    width: int = 64  # resnet only: channels per stage up to 32x32 (halved per doubling above)
    widths: tuple = ()  # resnet only: channels per stage from 4x4 up, overriding `width`
    blocks: int | tuple = 1  # resnet only: residual blocks per stage, or one count per stage from 4x4 up
    group_size: int = 16  # resnet only: channels per group of the grouped 3x3 convs
    expansion: int = 2  # resnet only: a block's inner width / its width
    mapping_layers: int = 0  # resnet only: hidden layers of the MLP that maps z before G's 4x4 stage
    pacgan: int = 1  # D judges this many images at once, stacked along the channels (PacGAN)
    mbstd_group: int = 0  # resnet only: D sees the std of its features over groups of this many inputs (0 = off)
    size: str = ""  # resnet only: the --size row (networks/sizes.py) the run started from; "" = none (a label only:
    # the fields above hold the networks as built, given flags included)
    classes: tuple = ()  # class names (--cond): G and D take class ids; empty = unconditional

    def __post_init__(self):
        for name, low, high in (("latent_dim", 1, 4096), ("img_size", 1, 1024), ("channels", 1, 3),
                                ("base_width", 1, 1024), ("width", 1, 4096),
                                ("group_size", 1, 4096), ("expansion", 1, 16), ("mapping_layers", 0, 16),
                                ("pacgan", 1, 16), ("mbstd_group", 0, 64)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise ValueError(f"--{name} must be an integer from {low} to {high}, got {value!r}")
        if self.channels == 2:
            raise ValueError("--channels must be 1 (greyscale) or 3 (RGB), got 2")
        if self.arch == "mlp" and 1024 * self.channels * self.img_size ** 2 > MAX_MLP_PARAMS:
            raise ValueError(f"--arch mlp at --img_size {self.img_size} x {self.channels} channels needs more than "
                             f"{MAX_MLP_PARAMS / 1e9:.0f}e9 parameters in G's last layer; use --arch dcgan")
        if self.arch not in ARCHS:
            raise ValueError(f"unknown --arch {self.arch!r}; choose one of {', '.join(ARCHS)}")
        if self.arch == "dcgan" and (self.img_size not in (32, 64, 128)):
            raise ValueError(f"--arch dcgan needs --img_size 32, 64 or 128, got {self.img_size}; "
                             "use --arch mlp for other sizes")
        object.__setattr__(self, "widths", tuple(self.widths))  # a list when read back from gan.json
        problem = class_names_problem(self.classes)
        if problem:
            raise ValueError(f"classes: {problem}")
        object.__setattr__(self, "classes", tuple(self.classes))
        if self.classes and self.pacgan > 1:
            raise ValueError(f"--cond needs --pacgan 1: a PacGAN group of {self.pacgan} images would mix classes "
                             "under one logit")
        if isinstance(self.blocks, list):
            object.__setattr__(self, "blocks", tuple(self.blocks))
        counts = self.blocks if isinstance(self.blocks, tuple) else (self.blocks,)
        # a stage may go without blocks (it only resamples), the network as a whole may not
        if (any(not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= 64 for n in counts)
                or sum(counts) < 1):
            raise ValueError(f"--blocks must be an integer from 1 to 64, or one per stage from 0 to 64 with at "
                             f"least one block in all, got {self.blocks!r}")
        if not all(type(w) is int for w in self.widths):
            raise ValueError(f"--widths must be whole numbers of channels, got {list(self.widths)}")
        if self.size not in ("", *SIZES) or (self.size and self.arch != "resnet"):
            raise ValueError(f"--size must be one of {', '.join(SIZES)} with --arch resnet, got --size "
                             f"{self.size!r} with --arch {self.arch}")
        if self.mbstd_group and self.arch != "resnet":
            raise ValueError(f"--mbstd_group is for --arch resnet, got --arch {self.arch}; leave it at 0")
        if self.arch == "resnet":
            if self.img_size not in (32, 64, 128, 256):
                raise ValueError(f"--arch resnet needs --img_size 32, 64, 128 or 256, got {self.img_size}")
            n_stages = int(math.log2(self.img_size)) - 1
            if isinstance(self.blocks, tuple) and len(self.blocks) != n_stages:
                raise ValueError(f"--blocks needs 1 or {n_stages} values at --img_size {self.img_size} (4x4 up to "
                                 f"{self.img_size}x{self.img_size}), got {len(self.blocks)}")
            if self.widths and len(self.widths) != n_stages:
                raise ValueError(f"--widths needs {n_stages} values at --img_size {self.img_size} (4x4 up to "
                                 f"{self.img_size}x{self.img_size}), got {len(self.widths)}")
            if not all(1 <= w <= 4096 for w in self.widths):
                raise ValueError(f"--widths must lie from 1 to 4096, got {list(self.widths)}")
            for w in set(stage_widths(self)):
                if w < 1 or (w * self.expansion) % self.group_size:
                    raise ValueError(f"--arch resnet: a stage of width {w} expands to {w * self.expansion} "
                                     f"channels, not a multiple of --group_size {self.group_size}; "
                                     "pick a --width or --group_size that divides")

    @classmethod
    def from_dict(cls, d):
        """The config a gan.json (or config.json's gan_config) holds; its older name `pack` is `pacgan`."""
        d = dict(d)
        if "pack" in d and "pacgan" not in d:
            d["pacgan"] = d.pop("pack")
        return cls(**d)

    def to_dict(self):
        d = asdict(self)
        d["widths"] = list(self.widths)  # as JSON reads it back, so a resumed config compares equal
        d["classes"] = list(self.classes)
        if isinstance(self.blocks, tuple):
            d["blocks"] = list(self.blocks)
        if self.arch != "resnet":  # the other archs' gan.json stays as it was (old checkpoints still resume)
            for name in RESNET_FIELDS:
                del d[name]
        for name, off in LATER_FIELDS.items():  # at their "off" value, gan.json stays as it was before them
            if d.get(name) == off:
                del d[name]
        return d

    @property
    def d_channels(self):
        """Channels D's first layer takes: the image's, once per image of a PacGAN group."""
        return self.channels * self.pacgan

    @property
    def g_inputs(self):
        """Size of G's input: z, and as R3GAN's conditional G, a class embedding as long as z beside it."""
        return self.latent_dim * (2 if self.classes else 1)

    def class_embedding(self):
        """G's class embedding (None when unconditional)."""
        return ClassEmbedding(len(self.classes), self.latent_dim) if self.classes else None

    def projection(self, features):
        """D's projection head on `features` features (None when unconditional)."""
        return Projection(len(self.classes), features) if self.classes else None


class MLPGenerator(nn.Module):
    """The vanilla generator: Linear+BatchNorm1d(eps=0.8)+LeakyReLU blocks, Tanh image."""

    def __init__(self, cfg: GANConfig):
        super().__init__()
        self.img_shape = (cfg.channels, cfg.img_size, cfg.img_size)

        def block(n_in, n_out, normalize=True):
            layers = [nn.Linear(n_in, n_out)]
            if normalize:
                layers.append(nn.BatchNorm1d(n_out, eps=0.8))  # gan.py's eps, kept as is
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            return layers

        self.model = nn.Sequential(
            *block(cfg.g_inputs, 128, normalize=False), *block(128, 256),
            *block(256, 512), *block(512, 1024),
            nn.Linear(1024, math.prod(self.img_shape)), nn.Tanh())
        self.embed = cfg.class_embedding()

    def forward(self, z, c=None):  # (B, latent), classes (B,) -> (B, C, H, W) in [-1, 1]
        return self.model(with_classes(z, c, self.embed)).view(z.size(0), *self.img_shape)


class MLPDiscriminator(nn.Module):
    """The vanilla 3-layer MLP discriminator, returning a logit instead of a probability."""

    def __init__(self, cfg: GANConfig):
        super().__init__()
        self.model = nn.Sequential(
            nn.Linear(cfg.d_channels * cfg.img_size ** 2, 512), nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(512, 256), nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(256, 1))
        self.pacgan = cfg.pacgan
        self.projection = cfg.projection(256)

    def forward(self, img, c=None):  # (B, C, H, W), classes (B,) -> (B / pacgan, 1) logits
        x = pacgan_inputs(img, self.pacgan).flatten(1)
        if self.projection is None and c is None:
            return self.model(x)
        h = self.model[:-1](x)  # (B, 256): the features the last layer and the projection both read
        return projected(self.model[-1](h), h, c, self.projection)


class DCGANGenerator(nn.Module):
    """DCGAN generator (Radford et al.): a 4x4 seed doubled by strided transposed convs."""

    def __init__(self, cfg: GANConfig):
        super().__init__()
        n_up = int(math.log2(cfg.img_size)) - 3  # 4x4 -> img_size/2, last layer doubles once more
        width = cfg.base_width * 2 ** n_up
        layers = [nn.ConvTranspose2d(cfg.g_inputs, width, 4, 1, 0, bias=False),
                  nn.BatchNorm2d(width), nn.ReLU(True)]  # (B, width, 4, 4)
        for _ in range(n_up):  # each: (B, w, s, s) -> (B, w/2, 2s, 2s)
            layers += [nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(width // 2), nn.ReLU(True)]
            width //= 2
        layers += [nn.ConvTranspose2d(width, cfg.channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.model = nn.Sequential(*layers)
        self.embed = cfg.class_embedding()

    def forward(self, z, c=None):  # (B, latent), classes (B,) -> (B, C, H, W) in [-1, 1]
        return self.model(with_classes(z, c, self.embed)[:, :, None, None])


class DCGANDiscriminator(nn.Module):
    """DCGAN discriminator: strided convs down to 4x4, then a 4x4 conv to one logit."""

    def __init__(self, cfg: GANConfig):
        super().__init__()
        n_down = int(math.log2(cfg.img_size)) - 3
        width = cfg.base_width
        layers = [nn.Conv2d(cfg.d_channels, width, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
        for _ in range(n_down):  # each: (B, w, s, s) -> (B, 2w, s/2, s/2)
            layers += [nn.Conv2d(width, width * 2, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(width * 2), nn.LeakyReLU(0.2, True)]
            width *= 2
        layers += [nn.Conv2d(width, 1, 4, 1, 0, bias=False)]  # (B, 1, 1, 1)
        self.model = nn.Sequential(*layers)
        self.pacgan = cfg.pacgan
        self.projection = cfg.projection(width)

    def forward(self, img, c=None):  # (B, C, H, W), classes (B,) -> (B / pacgan, 1) logits
        x = pacgan_inputs(img, self.pacgan)
        if self.projection is None and c is None:
            return self.model(x).flatten(1)
        h = self.model[:-1](x)  # (B, width, 4, 4); the projection reads it summed over the 4x4 (SNGAN's pooling)
        return projected(self.model[-1](h).flatten(1), h.sum((2, 3)), c, self.projection)


def dcgan_init_(module):
    """The DCGAN paper's init: conv weights N(0, 0.02), BatchNorm weights N(1, 0.02)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def build_models(cfg: GANConfig):
    """Return (G, D) for `cfg.arch`, freshly initialised."""
    if cfg.arch == "mlp":
        return MLPGenerator(cfg), MLPDiscriminator(cfg)
    if cfg.arch == "resnet":
        return ResNetGenerator(cfg), ResNetDiscriminator(cfg)  # initialised by their own layers
    G, D = DCGANGenerator(cfg), DCGANDiscriminator(cfg)
    dcgan_init_(G)
    dcgan_init_(D)
    return G, D


def count_params(module):
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def generate(G, z, device=None, batch_size=256, c=None):
    """G's images for latents z (N, latent_dim) and, for a conditional G, class ids c (N,), in batches and in eval
    mode (BatchNorm's running statistics; G's mode is restored): float32 (N, C, H, W) in [-1, 1] on the CPU."""
    device = device or next(G.parameters()).device
    was_training = G.training
    G.eval()
    try:
        if c is None:
            return torch.cat([G(zb.to(device)).float().cpu() for zb in z.split(batch_size)])
        return torch.cat([G(zb.to(device), cb.to(device)).float().cpu()
                          for zb, cb in zip(z.split(batch_size), c.split(batch_size))])
    finally:
        G.train(was_training)
