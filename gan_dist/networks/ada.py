"""Adaptive discriminator augmentation's pipeline (Karras et al. 2020, "Training Generative Adversarial Networks
with Limited Data", after StyleGAN2-ADA's training/augment.py), for images in [-1, 1].

    pipe = AugmentPipe("bgc", seed=0)        # the groups of transforms --aug_pipe names
    pipe.p.fill_(0.3)                         # each transform, each image: applied with probability p
    pipe.reseed(step, rank)                   # this step's draws from (seed, step, rank): a resume repeats them
    D(pipe(real_img)), D(pipe(gen_img))

Every transform is applied to every image on its own with probability p (a 0-dim tensor, so the controller can
move it on the device without a host sync), so at p = 0 each image comes out unchanged, bit for bit. The
transforms are differentiable with respect to the images: G learns through them, and R1 reaches the reals
through them.

Groups (their transforms and draws are StyleGAN2-ADA's): `blit` x-flip, 90-degree rotations, integer translation
(up to 1/8 of the size); `geom` isotropic scaling (log2 std 0.2), arbitrary rotation (before and after the
anisotropic scaling, so that one or both happen with probability p), anisotropic scaling (log2 std 0.2),
fractional translation (std 1/8 of the size); `color` brightness (std 0.2), contrast (log2 std 0.5), luma flip,
hue rotation and saturation (log2 std 1; these two on RGB only); `noise` additive Gaussian noise (std |N(0, 0.1)|);
`cutout` a square of half the side set to 0 (mid-grey).

Two simplifications: the geometric transforms, composed into one affine matrix per image, are sampled
bilinearly from the image mirrored at its border (grid_sample's reflection padding), without ADA's 2x
upsampling and wavelet low-pass filter, so rotations and scalings alias a little more; and the image-space
filtering group (ADA's `f`) is left out.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F

GROUPS = {
    "blit": ("xflip", "rotate90", "xint"),
    "geom": ("scale", "rotate", "aniso", "xfrac"),
    "color": ("brightness", "contrast", "lumaflip", "hue", "saturation"),
    "noise": ("noise",),
    "cutout": ("cutout",),
}
# StyleGAN2-ADA's presets, by the initials of their groups (bgc: blit, geom, color); without their `f` group
PIPES = {
    "blit": ("blit",), "geom": ("geom",), "color": ("color",), "noise": ("noise",), "cutout": ("cutout",),
    "bg": ("blit", "geom"), "bgc": ("blit", "geom", "color"), "bgcn": ("blit", "geom", "color", "noise"),
    "bgcnc": ("blit", "geom", "color", "noise", "cutout"),
}
DEFAULT_PIPE = "bgc"
XINT_MAX, SCALE_STD, ANISO_STD, XFRAC_STD = 0.125, 0.2, 0.2, 0.125
BRIGHTNESS_STD, CONTRAST_STD, SATURATION_STD, NOISE_STD, CUTOUT_SIZE = 0.2, 0.5, 1.0, 0.1, 0.5
SEED_TAG = 0x616461  # "ada": these draws apart from every other stream seeded by (seed, step, rank)


TRANSFORMS = tuple(t for group in GROUPS.values() for t in group)


def transforms_of(pipe):
    """'bgc' -> the names of its transforms (a tuple of names passes through: one transform alone, in tests);
    ValueError naming the presets for anything else."""
    if isinstance(pipe, tuple) and set(pipe) <= set(TRANSFORMS):
        return pipe
    if pipe not in PIPES:
        raise ValueError(f"unknown --aug_pipe {pipe!r}; choose one of {', '.join(PIPES)}")
    return tuple(t for group in PIPES[pipe] for t in GROUPS[group])


def _matrix(rows, like):
    """Batched homogeneous matrices from rows of per-image tensors (B,) and numbers: (B, n, n)."""
    ref = torch.zeros_like(like)
    return torch.stack([torch.stack([v if torch.is_tensor(v) else ref + v for v in row], -1) for row in rows], -2)


def translate2d(tx, ty):
    return _matrix([[1, 0, tx], [0, 1, ty], [0, 0, 1]], tx)


def scale2d(sx, sy):
    return _matrix([[sx, 0, 0], [0, sy, 0], [0, 0, 1]], sx)


def rotate2d(theta):
    c, s = torch.cos(theta), torch.sin(theta)
    return _matrix([[c, -s, 0], [s, c, 0], [0, 0, 1]], theta)


class AugmentPipe:
    """The transforms of one preset, each applied per image with probability `p`; see the module's docstring.

    Args:
        pipe: a key of PIPES, or a tuple of TRANSFORMS.
        seed: the run's seed; `reseed(step, rank)` derives each step's draws from it.
        device: where the images are (the generator and p live there too).
    """

    def __init__(self, pipe=DEFAULT_PIPE, seed=0, device="cpu"):
        self.pipe, self.transforms, self.seed = pipe, transforms_of(pipe), seed
        self.device = torch.device(device)
        self.p = torch.zeros((), device=self.device)  # float32, as the controller keeps it
        self.generator = torch.Generator(device=self.device).manual_seed(seed)

    def reseed(self, step, rank=0):
        """Start the draws of optimizer step `step` on `rank`: they depend on (seed, step, rank) alone."""
        mixed = np.random.SeedSequence([self.seed, step, rank, SEED_TAG]).generate_state(1, np.uint64)[0]
        self.generator.manual_seed(int(mixed) & (2**63 - 1))

    # ---- draws: always the same number per call, whatever p, so a step's draws depend on nothing else
    def _uniform(self, *shape):
        return torch.rand(shape, generator=self.generator, device=self.device)

    def _normal(self, *shape):
        return torch.randn(shape, generator=self.generator, device=self.device)

    def _chance(self, n, probability=None):
        """(n,) bool: which images get the transform (probability p unless given)."""
        return self._uniform(n) < (self.p if probability is None else probability)

    def __call__(self, images):
        """Augment a batch (B, C, H, W), C 1 or 3; returns the same shape, dtype and memory format."""
        if images.ndim != 4 or images.size(1) not in (1, 3):
            raise ValueError(f"AugmentPipe takes (B, 1 or 3, H, W) images, got {tuple(images.shape)}")
        dtype, channels_last = images.dtype, images.is_contiguous(memory_format=torch.channels_last) \
            and not images.is_contiguous()
        with torch.autocast(images.device.type, enabled=False):  # in fp32 under bf16/fp16, as R3GAN does
            x = images.float()
            if any(t in GROUPS["blit"] + GROUPS["geom"] for t in self.transforms):
                x = self._geometric(x)
            if any(t in GROUPS["color"] for t in self.transforms):
                x = self._color(x)
            if "noise" in self.transforms:
                x = self._noise(x)
            if "cutout" in self.transforms:
                x = self._cutout(x)
        x = x.to(dtype)
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x

    def _geometric(self, x):
        """One inverse affine matrix per image (output pixel -> input pixel, centred pixel units), then one
        bilinear resampling of the images it moves."""
        B, _, H, W = x.shape
        has = self.transforms.__contains__
        G_inv = torch.eye(3, device=self.device).expand(B, 3, 3)
        moved = torch.zeros(B, dtype=torch.bool, device=self.device)

        def then(matrix, chosen):  # compose this transform for the chosen images
            nonlocal G_inv, moved
            G_inv, moved = G_inv @ matrix, moved | chosen

        if has("xflip"):
            flip, chosen = torch.floor(self._uniform(B) * 2), self._chance(B)
            then(scale2d(1 - 2 * torch.where(chosen, flip, 0.0), torch.ones(B, device=self.device)), chosen)
        if has("rotate90"):
            quarter, chosen = torch.floor(self._uniform(B) * 4), self._chance(B)
            then(rotate2d(math.pi / 2 * torch.where(chosen, quarter, 0.0)), chosen)
        if has("xint"):
            shift, chosen = (self._uniform(B, 2) * 2 - 1) * XINT_MAX, self._chance(B)
            shift = torch.where(chosen[:, None], shift, 0.0)
            then(translate2d(-torch.round(shift[:, 0] * W), -torch.round(shift[:, 1] * H)), chosen)
        if has("scale"):
            s, chosen = torch.exp2(self._normal(B) * SCALE_STD), self._chance(B)
            s = torch.where(chosen, s, 1.0)
            then(scale2d(1 / s, 1 / s), chosen)
        p_rot = 1 - torch.sqrt((1 - self.p).clamp(0, 1))  # rotated before or after the anisotropic scaling: p
        for when in ("before", "after"):
            if has("rotate"):
                theta, chosen = (self._uniform(B) * 2 - 1) * math.pi, self._chance(B, p_rot)
                then(rotate2d(torch.where(chosen, theta, 0.0)), chosen)
            if has("aniso") and when == "before":
                s, chosen = torch.exp2(self._normal(B) * ANISO_STD), self._chance(B)
                s = torch.where(chosen, s, 1.0)
                then(scale2d(1 / s, s), chosen)
        if has("xfrac"):
            shift, chosen = self._normal(B, 2) * XFRAC_STD, self._chance(B)
            shift = torch.where(chosen[:, None], shift, 0.0)
            then(translate2d(-shift[:, 0] * W, -shift[:, 1] * H), chosen)
        # centred pixel units -> grid_sample's [-1, 1] (align_corners=False: the image's outer edges are +-1)
        ones = torch.ones(B, device=self.device)
        theta = scale2d(ones * (2 / W), ones * (2 / H)) @ G_inv @ scale2d(ones * (W / 2), ones * (H / 2))
        grid = F.affine_grid(theta[:, :2, :], list(x.shape), align_corners=False)
        warped = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        return torch.where(moved[:, None, None, None], warped, x)  # images left alone stay exact

    def _color(self, x):
        """One 4x4 matrix per image on homogeneous RGB (brightness, contrast, luma flip, hue, saturation)."""
        B, C, H, W = x.shape
        has = self.transforms.__contains__
        eye = torch.eye(4, device=self.device)
        M = eye.expand(B, 4, 4)
        changed = torch.zeros(B, dtype=torch.bool, device=self.device)
        luma = torch.tensor([1.0, 1.0, 1.0, 0.0], device=self.device) / math.sqrt(3)  # the grey axis
        vvT = torch.outer(luma, luma)
        if has("brightness"):
            b, chosen = self._normal(B) * BRIGHTNESS_STD, self._chance(B)
            b = torch.where(chosen, b, 0.0)
            M, changed = _matrix([[1, 0, 0, b], [0, 1, 0, b], [0, 0, 1, b], [0, 0, 0, 1]], b) @ M, changed | chosen
        if has("contrast"):
            c, chosen = torch.exp2(self._normal(B) * CONTRAST_STD), self._chance(B)
            c = torch.where(chosen, c, 1.0)
            M, changed = _matrix([[c, 0, 0, 0], [0, c, 0, 0], [0, 0, c, 0], [0, 0, 0, 1]], c) @ M, changed | chosen
        if has("lumaflip"):
            flip, chosen = torch.floor(self._uniform(B) * 2), self._chance(B)
            flip = torch.where(chosen, flip, 0.0)
            M, changed = (eye - 2 * vvT * flip[:, None, None]) @ M, changed | chosen  # Householder reflection
        if has("hue") and C == 3:
            theta, chosen = (self._uniform(B) * 2 - 1) * math.pi, self._chance(B)
            M, changed = _rotate_about(luma, torch.where(chosen, theta, 0.0)) @ M, changed | chosen
        if has("saturation") and C == 3:
            s, chosen = torch.exp2(self._normal(B) * SATURATION_STD), self._chance(B)
            s = torch.where(chosen, s, 1.0)
            M, changed = (vvT + (eye - vvT) * s[:, None, None]) @ M, changed | chosen
        flat = x.reshape(B, C, H * W)
        if C == 3:
            out = M[:, :3, :3] @ flat + M[:, :3, 3:]
        else:  # grey (g, g, g) through the matrix, averaged back to one channel
            out = flat * (M[:, :3, :3].sum(dim=(1, 2)) / 3)[:, None, None] + M[:, :3, 3].mean(1)[:, None, None]
        return torch.where(changed[:, None, None, None], out.reshape(B, C, H, W), x)

    def _noise(self, x):
        B = x.size(0)
        sigma, chosen = self._normal(B).abs() * NOISE_STD, self._chance(B)
        noise = self._normal(*x.shape)
        return torch.where(chosen[:, None, None, None], x + noise * sigma[:, None, None, None], x)

    def _cutout(self, x):
        B, _, H, W = x.shape
        chosen, centre = self._chance(B), self._uniform(B, 2)
        ys = (torch.arange(H, device=self.device) + 0.5) / H
        xs = (torch.arange(W, device=self.device) + 0.5) / W
        inside_y = (ys[None, :] - centre[:, 1:]).abs() < CUTOUT_SIZE / 2  # (B, H)
        inside_x = (xs[None, :] - centre[:, :1]).abs() < CUTOUT_SIZE / 2  # (B, W)
        hole = inside_y[:, :, None] & inside_x[:, None, :] & chosen[:, None, None]
        return x * (~hole)[:, None].to(x.dtype)


def _rotate_about(axis, theta):
    """(B, 4, 4) rotations by theta about the unit 3-vector `axis` (Rodrigues), homogeneous."""
    vx, vy, vz = axis[0], axis[1], axis[2]
    s, c = torch.sin(theta), torch.cos(theta)
    cc = 1 - c
    return _matrix([[vx * vx * cc + c, vx * vy * cc - vz * s, vx * vz * cc + vy * s, 0],
                    [vy * vx * cc + vz * s, vy * vy * cc + c, vy * vz * cc - vx * s, 0],
                    [vz * vx * cc - vy * s, vz * vy * cc + vx * s, vz * vz * cc + c, 0],
                    [0, 0, 0, 1]], theta)
