"""R3GAN-style residual generator and discriminator (Huang et al., "The GAN is dead; long live the GAN!", 2024).

No normalisation layers. Each stage holds residual blocks of the form
    x + 1x1 conv (project) <- act <- grouped 3x3 conv <- act <- 1x1 conv (expand) <- x
whose last conv starts at zero, so every block is the identity at initialisation and the
others are variance-scaled by the number of blocks (fix-up style). Resolution changes use a
[1, 2, 1] low-pass filter (bilinear up in G, blurred stride-2 down in D), with a 1x1 conv
when the width changes. G starts from a learned 4x4 basis scaled per channel by a linear map
of z (through an MLP of `mapping_layers` hidden layers, StyleGAN's mapping network, when asked);
D ends with a 4x4 depthwise conv and a linear layer to one logit. Conditional (cfg.classes), G reads a learned
class embedding beside z, as R3GAN's conditional G, and D adds a projection of its last features
(networks/conditioning.py).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from gan_dist.networks.conditioning import projected, with_classes
from gan_dist.networks.pacgan import pacgan_inputs

LEAK = 0.2
ACT_GAIN = math.sqrt(2 / (1 + LEAK ** 2))  # keeps the variance through a leaky ReLU
LAYERS_PER_BLOCK = 3


def msr_init_(layer, gain=1.0):
    """He/MSR init: weights N(0, gain^2 / fan_in), bias zero; gain 0 zeroes the layer."""
    fan_in = layer.weight[0].numel()  # in_channels / groups * kernel area
    nn.init.normal_(layer.weight, 0.0, gain / math.sqrt(fan_in)) if gain else nn.init.zeros_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


def conv(n_in, n_out, kernel=1, groups=1, gain=1.0):
    return msr_init_(nn.Conv2d(n_in, n_out, kernel, padding=kernel // 2, groups=groups, bias=False), gain)


class BiasedLeakyReLU(nn.Module):
    """leaky_relu(x + b) with a learned bias per channel (the convs have none)."""

    def __init__(self, channels):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        return F.leaky_relu(x + self.bias.view(1, -1, 1, 1).to(x.dtype), LEAK)


class ResidualBlock(nn.Module):
    def __init__(self, width, group_size, expansion, n_blocks):
        super().__init__()
        expanded = width * expansion
        if expanded % group_size:
            raise ValueError(f"the expanded width {expanded} is not a multiple of the group size {group_size}")
        # fix-up scaling: the sum of n_blocks residual branches keeps a bounded variance
        gain = ACT_GAIN * n_blocks ** (-1 / (2 * LAYERS_PER_BLOCK - 2))
        self.expand = conv(width, expanded, 1, gain=gain)
        self.act1 = BiasedLeakyReLU(expanded)
        self.grouped = conv(expanded, expanded, 3, groups=expanded // group_size, gain=gain)
        self.act2 = BiasedLeakyReLU(expanded)
        self.project = conv(expanded, width, 1, gain=0)

    def forward(self, x):  # (B, w, s, s) -> (B, w, s, s)
        return x + self.project(self.act2(self.grouped(self.act1(self.expand(x)))))


class LowPass(nn.Module):
    """Resample by 2 with the separable [1, 2, 1] filter: 'up' = bilinear interpolation, 'down' = blur + stride 2."""

    def __init__(self, direction):
        super().__init__()
        taps = torch.tensor([1.0, 2.0, 1.0])
        kernel = torch.outer(taps, taps)
        # up: zero-insertion then [1,2,1]/2 per axis (x4 in 2-D); down: a normalised blur
        self.register_buffer("kernel", kernel / (4 if direction == "up" else 16), persistent=False)
        self.up = direction == "up"

    def forward(self, x):
        weight = self.kernel.to(x.dtype).expand(x.size(1), 1, 3, 3)
        if self.up:  # (B, c, s, s) -> (B, c, 2s, 2s)
            return F.conv_transpose2d(x, weight, stride=2, padding=1, output_padding=1, groups=x.size(1))
        return F.conv2d(x, weight, stride=2, padding=1, groups=x.size(1))  # (B, c, s, s) -> (B, c, s/2, s/2)


class Transition(nn.Sequential):
    """Width change (1x1 conv, when needed) and resolution change, in the order that costs less."""

    def __init__(self, n_in, n_out, direction):
        layers = [LowPass(direction)]
        if n_in != n_out:
            # convolve at the lower resolution: before going up, after coming down
            layers.insert(0 if direction == "up" else 1, conv(n_in, n_out, 1))
        super().__init__(*layers)


def stage_widths(cfg):
    """Channels per stage, from 4x4 up to img_size: cfg.widths when given, else cfg.width up to 32x32,
    halved per doubling above (at least cfg.width / 8), as image GANs spend fewer channels at high resolution."""
    if cfg.widths:
        return list(cfg.widths)
    n_stages = int(math.log2(cfg.img_size)) - 1
    return [max(cfg.width // max(1, 2 ** (i + 2) // 32), cfg.width // 8, 1) for i in range(n_stages)]


def stage_blocks(cfg):
    """Residual blocks per stage, from 4x4 up: cfg.blocks when it lists them, else cfg.blocks at every stage."""
    n_stages = int(math.log2(cfg.img_size)) - 1
    return list(cfg.blocks) if isinstance(cfg.blocks, tuple) else [cfg.blocks] * n_stages


class ResNetGenerator(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        widths, blocks_at = stage_widths(cfg), stage_blocks(cfg)
        n_blocks = sum(blocks_at)
        self.basis = nn.Parameter(torch.randn(widths[0], 4, 4))  # a learned 4x4 image per channel
        mapping, n_in = [], cfg.g_inputs
        for _ in range(cfg.mapping_layers):  # depth before the first image, where G splits z into separate modes
            mapping += [msr_init_(nn.Linear(n_in, widths[0]), ACT_GAIN), nn.LeakyReLU(LEAK)]
            n_in = widths[0]
        self.mapping = nn.Sequential(*mapping)
        self.modulation = msr_init_(nn.Linear(n_in, widths[0], bias=False))
        stages = []
        for i, w in enumerate(widths):
            blocks = [ResidualBlock(w, cfg.group_size, cfg.expansion, n_blocks) for _ in range(blocks_at[i])]
            stages.append(nn.Sequential(*([Transition(widths[i - 1], w, "up")] if i else []), *blocks))
        self.stages = nn.Sequential(*stages)
        self.to_image = conv(widths[-1], cfg.channels, 1)
        self.embed = cfg.class_embedding()

    def forward(self, z, c=None):  # (B, latent), classes (B,) -> (B, C, H, W), unbounded (no tanh, as in R3GAN)
        z = with_classes(z, c, self.embed)  # (B, latent [+ latent])
        x = self.basis[None] * self.modulation(self.mapping(z))[:, :, None, None]  # (B, w0, 4, 4)
        return self.to_image(self.stages(x))  # each stage doubles: ... -> (B, w_last, H, W)


class DepthwiseBasis(nn.Module):
    """D's last layer: a depthwise 4x4 conv on a 4x4 input (a weight per channel and pixel), as a product and sum.
    The weight is 3-D, so channels-last leaves it alone: a 4-D (w, 1, 4, 4) conv weight gets strides there that
    its gradient does not have, and DDP warns on every such mismatch."""

    def __init__(self, width):
        super().__init__()
        # drawn as the (w, 1, 4, 4) conv this once was, so a seed gives the same D as before
        self.weight = nn.Parameter(conv(width, width, 4, groups=width).weight.detach().squeeze(1))

    def forward(self, x):  # (B, w, 4, 4) -> (B, w)
        return (x * self.weight.to(x.dtype)).sum((2, 3))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "weight"
        if key in state_dict and state_dict[key].dim() == 4:  # saved when this layer was a (w, 1, 4, 4) conv
            state_dict[key] = state_dict[key].squeeze(1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class ResNetDiscriminator(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        widths, blocks_at = stage_widths(cfg)[::-1], stage_blocks(cfg)[::-1]  # img_size down to 4x4
        n_blocks = sum(blocks_at)
        self.pacgan = cfg.pacgan
        self.from_image = conv(cfg.d_channels, widths[0], 1)
        stages = []
        for i, w in enumerate(widths):
            blocks = [ResidualBlock(w, cfg.group_size, cfg.expansion, n_blocks) for _ in range(blocks_at[i])]
            stages.append(nn.Sequential(*blocks, *([Transition(w, widths[i + 1], "down")]
                                                  if i + 1 < len(widths) else [])))
        self.stages = nn.Sequential(*stages)
        self.mbstd_group = cfg.mbstd_group
        if self.mbstd_group:  # the std joins the features as one more channel, mixed back by a 1x1 conv
            self.mbstd = nn.Sequential(conv(widths[-1] + 1, widths[-1], 1, gain=ACT_GAIN),
                                       BiasedLeakyReLU(widths[-1]))
        self.basis = DepthwiseBasis(widths[-1])
        self.to_logit = msr_init_(nn.Linear(widths[-1], 1))
        self.projection = cfg.projection(widths[-1])

    def forward(self, img, c=None):  # (B, C, H, W), classes (B,) -> (B / pacgan, 1) logits
        x = self.stages(self.from_image(pacgan_inputs(img, self.pacgan)))  # (B / pacgan, w_last, 4, 4)
        if self.mbstd_group:
            x = self.mbstd(torch.cat([x, minibatch_std(x, self.mbstd_group)], 1))
        h = self.basis(x)  # (B / pacgan, w_last)
        return projected(self.to_logit(h), h, c, self.projection)


def minibatch_std(x, group):
    """(N, C, H, W) -> (N, 1, H, W): per input, the features' std over its group, averaged over C, H and W
    (StyleGAN's). Groups are strided (inputs i, i + N/g, ...), so they mix the batch's order; a group never
    spans two calls of D (reals and fakes are judged apart) nor two processes (each groups its own batch)."""
    g = min(group, len(x))
    if len(x) % g:
        raise ValueError(f"D's minibatch std groups {g} inputs at a time and got {len(x)}; use a --batch_size "
                         f"(per process, over --pacgan) that is a multiple of --mbstd_group {group}")
    y = x.float().view(g, -1, *x.shape[1:])
    y = (y - y.mean(0)).square().mean(0).add(1e-8).sqrt().mean((1, 2, 3))  # (N / g,)
    return y.repeat(g).view(-1, 1, 1, 1).expand(-1, 1, *x.shape[2:]).to(x.dtype)
