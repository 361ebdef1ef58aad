"""One GAN training step (a D update then a G update) and the pieces it needs."""
import math
import sys

import torch

from gan_dist.networks.losses import d_loss, g_loss, gradient_penalty
from gan_dist.training.stats import grad_norm


@torch.no_grad()
def generate(G, z):
    """Images from G in eval mode (BatchNorm running statistics), leaving G in the mode it was in."""
    was_training = G.training
    G.eval()
    images = G(z)
    G.train(was_training)
    return images


def gan_step(accelerator, G, D, opt_G, opt_D, real_img, gen_z, stats, log_now=False, augment=None,
             loss="bce", r1_gamma=0.0, r2_gamma=0.0):
    """One D update then one G update; returns (loss_D, loss_G, real_logits, fake_logits).

    `stats` counts updates the fp16 GradScaler skipped and, when `log_now`, gets gradient
    norms, learning rates and penalties. `augment` (DiffAugment) is applied to everything D sees.
    `loss` is bce, hinge or rpgan; D's loss adds (r1_gamma / 2) R1 + (r2_gamma / 2) R2 (0 = off;
    lazy regularisation passes gamma x N every N steps and 0 between).
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

    # ---- (1) D step: maximize log D(x) + log(1 - D(G(z))) (or the hinge / relativistic objective)
    with accelerator.autocast():
        gen_img = G(gen_z)
        real_in, fake_in = aug(real_img), aug(gen_img.detach())
        # the penalties differentiate D's output with respect to exactly what D saw
        if r1_gamma:
            real_in = real_in.detach().requires_grad_(True)
        if r2_gamma:
            fake_in = fake_in.detach().requires_grad_(True)
        real_logits, fake_logits = D(real_in), D(fake_in)
        loss_D = d_loss(real_logits, fake_logits, loss)
    # input gradients only (no parameter .grad, no DDP hook); their graph joins the one backward below
    penalties = {}
    if r1_gamma:
        penalties["r1"] = gradient_penalty(real_logits, real_in, scaler)
    if r2_gamma:
        penalties["r2"] = gradient_penalty(fake_logits, fake_in, scaler)
    total_D = loss_D
    for name, gamma in (("r1", r1_gamma), ("r2", r2_gamma)):
        if name in penalties:
            total_D = total_D + (gamma / 2) * penalties[name]
    opt_D.zero_grad(set_to_none=True)
    accelerator.backward(total_D)  # one backward for both D forwards and the penalties: one all-reduce
    if log_now:
        stats.note(grad_norm_D=grad_norm(D, scaler), lr_D=opt_D.param_groups[0]["lr"],
                   **{k: v.detach() for k, v in penalties.items()})
    update(opt_D)

    # ---- (2) G step: maximize log D(G(z)); D frozen so its DDP reducer stays idle
    D.requires_grad_(False)
    with accelerator.autocast():
        paired_real = None
        if loss == "rpgan":  # the reals paired with this batch's fakes, scored by the updated D
            with torch.no_grad():
                paired_real = D(aug(real_img))
        loss_G = g_loss(D(aug(gen_img)), paired_real, loss)
    opt_G.zero_grad(set_to_none=True)
    accelerator.backward(loss_G)
    if log_now:
        stats.note(grad_norm_G=grad_norm(G, scaler), lr_G=opt_G.param_groups[0]["lr"])
    update(opt_G)
    D.requires_grad_(True)
    return loss_D, loss_G, real_logits, fake_logits


def cosine(start, end, progress):
    """Cosine interpolation from `start` (progress 0) to `end` (progress >= 1)."""
    progress = min(max(progress, 0.0), 1.0)
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * progress))


def schedule(args, step, max_train_steps, global_batch):
    """(lr_G, lr_D, r1_gamma, r2_gamma) for optimizer step `step` (1-based).

    With --schedule cosine the rates fall to --lr_end_ratio and the gammas to --gamma_end_ratio of their
    start, as in R3GAN, over --schedule_kimg (default: the whole run). The gammas are x --reg_every on
    the steps that regularise (lazy regularisation) and 0 on the others.
    """
    horizon = args.schedule_kimg * 1000 / global_batch if args.schedule_kimg else max_train_steps
    progress = (step - 1) / max(horizon - 1, 1)
    lr_ratio, gamma_ratio = 1.0, 1.0
    if args.schedule == "cosine":
        lr_ratio, gamma_ratio = cosine(1.0, args.lr_end_ratio, progress), cosine(1.0, args.gamma_end_ratio, progress)
    reg = args.reg_every if step % args.reg_every == 0 else 0
    return (args.lr_g * lr_ratio, args.lr_d * lr_ratio,
            args.r1_gamma * gamma_ratio * reg, args.r2_gamma * gamma_ratio * reg)


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
