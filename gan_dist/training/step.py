"""One GAN training step (a D update then a G update) and the pieces it needs."""
import sys

import torch

from gan_dist.networks.losses import d_loss, g_loss
from gan_dist.training.stats import grad_norm


@torch.no_grad()
def generate(G, z):
    """Images from G in eval mode (BatchNorm running statistics), leaving G in the mode it was in."""
    was_training = G.training
    G.eval()
    images = G(z)
    G.train(was_training)
    return images


def gan_step(accelerator, G, D, opt_G, opt_D, real_img, gen_z, stats, log_now=False, augment=None):
    """One D update then one G update; returns (loss_D, loss_G, real_logits, fake_logits).

    `stats` counts updates the fp16 GradScaler skipped and, when `log_now`, gets gradient
    norms and learning rates. `augment` (DiffAugment) is applied to everything D sees.
    """
    aug = augment or (lambda x: x)
    scaler = accelerator.scaler  # fp16 only: one scaler shared by both optimizers

    def update(opt):
        scale = scaler.get_scale() if scaler is not None else None
        opt.step()
        # An overflow skips the update and lowers the scale. Judged by the scale, as
        # step_was_skipped misses the skips fused optimizers make inside their kernel.
        if scaler is not None and scaler.get_scale() < scale:
            stats.skipped_updates += 1

    # ---- (1) D step: maximize log D(x) + log(1 - D(G(z)))
    with accelerator.autocast():
        gen_img = G(gen_z)
        real_logits, fake_logits = D(aug(real_img)), D(aug(gen_img.detach()))
        loss_D = d_loss(real_logits, fake_logits)
    opt_D.zero_grad(set_to_none=True)
    accelerator.backward(loss_D)  # one backward for both D forwards: one all-reduce, no desync
    if log_now:
        stats.note(grad_norm_D=grad_norm(D, scaler), lr_D=opt_D.param_groups[0]["lr"])
    update(opt_D)

    # ---- (2) G step: maximize log D(G(z)); D frozen so its DDP reducer stays idle
    D.requires_grad_(False)
    with accelerator.autocast():
        loss_G = g_loss(D(aug(gen_img)))
    opt_G.zero_grad(set_to_none=True)
    accelerator.backward(loss_G)
    if log_now:
        stats.note(grad_norm_G=grad_norm(G, scaler), lr_G=opt_G.param_groups[0]["lr"])
    update(opt_G)
    D.requires_grad_(True)
    return loss_D, loss_G, real_logits, fake_logits


def adam(params, lr, betas, device):
    """Adam with the fused kernel where this torch has one for `device` (one pass over each tensor
    instead of several), else the multi-tensor one."""
    params = list(params)
    if device.type in ("cuda", "cpu"):
        try:
            return torch.optim.Adam(params, lr=lr, betas=betas, fused=True)
        except (RuntimeError, TypeError, ValueError):  # an older torch without this kernel
            pass
    return torch.optim.Adam(params, lr=lr, betas=betas, foreach=True)


def compile_available():
    """Whether torch.compile can run here; if not, say why (training goes on uncompiled)."""
    try:
        import torch._dynamo
        if not torch._dynamo.is_dynamo_supported():
            raise RuntimeError(f"TorchDynamo does not support Python {sys.version.split()[0]} on this platform")
    except Exception as e:
        print(f"warning: --compile is unavailable ({e}); training without it", file=sys.stderr)
        return False
    return True
