"""DiffAugment (Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN Training").

    policy = parse_policy(args.diffaug)           # "color,translation,cutout" -> ("color", ...)
    D(diff_augment(real_img, policy)), D(diff_augment(gen_img.detach(), policy))   # D step
    D(diff_augment(gen_img, policy))                                               # G step

D only ever sees augmented images, real and fake alike, in both phases; the transforms
are differentiable, so G learns through them. Each call draws new transforms per image.
Follows the authors' PyTorch code (mit-han-lab/data-efficient-gans) for images in [-1, 1].
"""
import torch
import torch.nn.functional as F

POLICIES = ("color", "translation", "cutout")


def parse_policy(spec):
    """'color,translation,cutout' -> ('color', 'translation', 'cutout'); '' or None -> () (off)."""
    names = tuple(p.strip() for p in (spec or "").split(",") if p.strip())
    unknown = [p for p in names if p not in POLICIES]
    if unknown:
        raise ValueError(f"unknown DiffAugment policy {', '.join(unknown)}; choose from {', '.join(POLICIES)}")
    return names


def _rand(x, generator, *shape):
    device = generator.device if generator is not None else x.device
    return torch.rand(shape, generator=generator, device=device).to(x.device, x.dtype)


def _randint(x, generator, low, high, *shape):
    device = generator.device if generator is not None else x.device
    return torch.randint(low, high, shape, generator=generator, device=device).to(x.device)


def rand_brightness(x, generator=None):
    return x + (_rand(x, generator, x.size(0), 1, 1, 1) - 0.5)


def rand_saturation(x, generator=None):
    x_mean = x.mean(dim=1, keepdim=True)
    return (x - x_mean) * (_rand(x, generator, x.size(0), 1, 1, 1) * 2) + x_mean


def rand_contrast(x, generator=None):
    x_mean = x.mean(dim=[1, 2, 3], keepdim=True)
    return (x - x_mean) * (_rand(x, generator, x.size(0), 1, 1, 1) + 0.5) + x_mean


def rand_translation(x, generator=None, ratio=0.125):
    """Shift each image by up to `ratio` of its size, filling with zeros."""
    B, _, H, W = x.shape
    shift_h, shift_w = int(H * ratio + 0.5), int(W * ratio + 0.5)
    dh = _randint(x, generator, -shift_h, shift_h + 1, B, 1, 1)
    dw = _randint(x, generator, -shift_w, shift_w + 1, B, 1, 1)
    # broadcast (B, 1, 1), (1, H, 1), (1, 1, W) indices: the (B, H, W) grids are never built
    grid_b = torch.arange(B, device=x.device)[:, None, None]
    grid_h = torch.clamp(torch.arange(H, device=x.device)[None, :, None] + dh + 1, 0, H + 1)  # +1: the padding
    grid_w = torch.clamp(torch.arange(W, device=x.device)[None, None, :] + dw + 1, 0, W + 1)
    x_pad = F.pad(x, [1, 1, 1, 1])
    return x_pad.permute(0, 2, 3, 1)[grid_b, grid_h, grid_w].permute(0, 3, 1, 2)  # (B, C, H, W)


def rand_cutout(x, generator=None, ratio=0.5):
    """Zero one square of `ratio` of the image's side per image, at a random place."""
    B, _, H, W = x.shape
    cut_h, cut_w = int(H * ratio + 0.5), int(W * ratio + 0.5)
    off_h = _randint(x, generator, 0, H + (1 - cut_h % 2), B, 1, 1)
    off_w = _randint(x, generator, 0, W + (1 - cut_w % 2), B, 1, 1)
    grid_b = torch.arange(B, device=x.device)[:, None, None]
    grid_h = torch.clamp(torch.arange(cut_h, device=x.device)[None, :, None] + off_h - cut_h // 2, 0, H - 1)
    grid_w = torch.clamp(torch.arange(cut_w, device=x.device)[None, None, :] + off_w - cut_w // 2, 0, W - 1)
    mask = torch.ones(B, H, W, dtype=x.dtype, device=x.device)
    mask[grid_b, grid_h, grid_w] = 0
    return x * mask.unsqueeze(1)


AUGMENT_FNS = {
    "color": (rand_brightness, rand_saturation, rand_contrast),
    "translation": (rand_translation,),
    "cutout": (rand_cutout,),
}


def diff_augment(x, policy, generator=None):
    """Apply the policy's transforms, in order, to a batch; differentiable with respect to x.

    Args:
        x: float (B, C, H, W), nominally in [-1, 1].
        policy: names from POLICIES (a tuple from `parse_policy`, or the comma string itself).
        generator: a torch.Generator for reproducible draws (any device); None uses the global RNG.
    """
    if isinstance(policy, str):
        policy = parse_policy(policy)
    for name in policy:
        for fn in AUGMENT_FNS[name]:
            x = fn(x, generator)
    return x
