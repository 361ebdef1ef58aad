"""One optimizer step of each network as phases, after StyleGAN2-ADA's accumulate_gradients(phase).

    step = GANStep(accelerator, G, D, opt_G, opt_D, loss="rpgan", augment=None)
    d, g = step(real_img, gen_z, r1_gamma, r2_gamma, with_norms=log_now, real_c=None)

The D phase scores reals and fakes, the regularisation phase adds R1/R2 on the steps that
regularise, and the G phase updates G through the updated D. Each phase returns a record of
its diagnostics as device tensors (no host sync); the loop hands them to the stats.
`augment` is applied to every image D sees. With `accumulation` N, each phase works through
N micro-batches of the batch and steps its optimizer once. With class ids `real_c` (--cond), D scores each real
with its own class, and the fakes are drawn for the real batch's classes, so the classes G learns come at the
data's frequencies (and under rpgan each real is paired with a fake of its class).
"""
import contextlib
import math
import sys
from typing import NamedTuple, Optional

import torch
from accelerate.utils import DistributedType

from gan_dist.networks.losses import d_loss, g_loss, gradient_penalty


class DRecord(NamedTuple):
    """What the D phase measured: its loss (penalties excluded), logits, penalties, gradient norm, skip."""
    loss: torch.Tensor
    real_logits: torch.Tensor
    fake_logits: torch.Tensor
    penalties: dict  # "r1"/"r2" -> the unweighted penalty, on steps that regularise
    grad_norm: Optional[torch.Tensor]  # with_norms only
    skipped: torch.Tensor  # 1.0 when the fp16 GradScaler skipped the update, else 0.0


class GRecord(NamedTuple):
    """What the G phase measured: its loss, gradient norm and skip."""
    loss: torch.Tensor
    grad_norm: Optional[torch.Tensor]
    skipped: torch.Tensor


def _mean(values):
    """The batch's mean from its equal micro-batches' means."""
    return values[0] if len(values) == 1 else torch.stack(values).mean()


def _cat(values):
    return values[0] if len(values) == 1 else torch.cat(values)


def grad_norm(module, scaler=None):
    """L2 norm of all gradients of `module` (unscaled when an fp16 GradScaler is in use)."""
    grads = [p.grad.detach().float().norm() for p in module.parameters() if p.grad is not None]
    norm = torch.linalg.vector_norm(torch.stack(grads)) if grads else torch.zeros(())
    return norm / scaler.get_scale() if scaler is not None else norm


def plain_steps(accelerator):
    """Whether Accelerate's backward and optimizer wrappers add nothing here, so the step may call
    `loss.backward()` and the torch optimizers directly: no GradScaler (fp16), no accumulation of Accelerate's
    own (ours is by hand), and plain DDP or one process (not DeepSpeed, FSDP, Megatron or XLA). The wrappers
    then reduce to the same calls (the loss divided by 1, `optimizer.step()`), at a host cost each: a
    `find_spec` per optimizer step, `inspect.signature` per `zero_grad`."""
    return (accelerator.scaler is None and accelerator.gradient_accumulation_steps == 1
            and accelerator.distributed_type in (DistributedType.NO, DistributedType.MULTI_CPU,
                                                 DistributedType.MULTI_GPU))


class GANStep:
    """The D, regularisation and G phases of one training step on one batch.

    `loss` is bce, hinge or rpgan. D's loss adds (r1_gamma / 2) R1 + (r2_gamma / 2) R2
    (0 = off; lazy regularisation passes gamma x N every N steps and 0 between).

    With `accumulation` N > 1 each phase runs its forwards and backwards on N equal micro-batches,
    each loss and penalty scaled by 1/N (they are batch means), and steps its optimizer once: the
    gradients are the whole batch's. Under DDP only the last micro-batch's backward all-reduces.
    `plain` (default: `plain_steps(accelerator)`) bypasses Accelerate's backward and optimizer wrappers.
    """

    def __init__(self, accelerator, G, D, opt_G, opt_D, loss="bce", augment=None, accumulation=1, plain=None):
        self.accelerator, self.G, self.D, self.opt_G, self.opt_D = accelerator, G, D, opt_G, opt_D
        self.loss, self.augment, self.accumulation = loss, augment or (lambda x: x), accumulation
        self.scaler = accelerator.scaler  # fp16 only: one scaler shared by both optimizers
        self.phase = contextlib.nullcontext  # name -> a context labelling a phase (training.profiling)
        # the torch optimizers and a bare backward where Accelerate's wrappers would only add host work
        self.plain = plain_steps(accelerator) if plain is None else plain
        self.update_G, self.update_D = ((getattr(opt_G, "optimizer", opt_G), getattr(opt_D, "optimizer", opt_D))
                                        if self.plain else (opt_G, opt_D))
        self.backward = (lambda loss: loss.backward()) if self.plain else accelerator.backward

    def __call__(self, real_img, gen_z, r1_gamma=0.0, r2_gamma=0.0, with_norms=False, real_c=None):
        """One D update then one G update; returns (DRecord, GRecord). `real_c`: the reals' class ids (--cond)."""
        n = self.accumulation
        with self.phase("D_phase"):
            if n == 1:
                with self.accelerator.autocast():
                    gen_img = self._G(gen_z, real_c)  # one G forward: D's phase sees it detached, G's phase reuses it
                micro_batches = [(real_img, real_c, gen_z, gen_img)]
            else:
                if real_img.size(0) % n:
                    raise ValueError(f"a batch of {real_img.size(0)} does not split into {n} equal micro-batches")
                # each phase runs G on its micro-batch: keeping G's graph for every micro-batch until the G phase
                # would hold the whole batch's activations, which accumulation is there to avoid
                classes = real_c.chunk(n) if real_c is not None else [None] * n
                micro_batches = list(zip(real_img.chunk(n), classes, gen_z.chunk(n), [None] * n))
            d = self.discriminator_phase(micro_batches, r1_gamma, r2_gamma, with_norms)
        with self.phase("G_phase"):
            g = self.generator_phase(micro_batches, with_norms)
        return d, g

    def _G(self, z, c):
        return self.G(z) if c is None else self.G(z, c)

    def _D(self, img, c):
        return self.D(img) if c is None else self.D(img, c)

    def _sync_unless_last(self, model, i):
        """DDP all-reduces on the last micro-batch's backward only; the others accumulate locally."""
        return self.accelerator.no_sync(model) if i < self.accumulation - 1 else contextlib.nullcontext()

    def discriminator_phase(self, micro_batches, r1_gamma, r2_gamma, with_norms):
        """(1) Update D: maximize log D(x) + log(1 - D(G(z))) (or the hinge / relativistic objective).

        `micro_batches`: (reals, their classes or None, z, G's images or None to generate them here) for each
        micro-batch; the fakes are drawn for the reals' classes."""
        self.update_D.zero_grad(set_to_none=True)
        parts = []
        for i, (real_img, c, gen_z, gen_img) in enumerate(micro_batches):
            with self._sync_unless_last(self.D, i):
                if gen_img is None:
                    with torch.no_grad(), self.accelerator.autocast():
                        gen_img = self._G(gen_z, c)
                parts.append(self._discriminator_micro_batch(real_img, gen_img, c, r1_gamma, r2_gamma))
        norm = grad_norm(self.D, self.scaler) if with_norms else None
        losses, real_logits, fake_logits, penalties = zip(*parts)
        penalties = {k: _mean([p[k] for p in penalties]) for k in penalties[0]}
        return DRecord(_mean(losses), _cat(real_logits), _cat(fake_logits), penalties, norm,
                       self._update(self.update_D))

    def _discriminator_micro_batch(self, real_img, gen_img, c, r1_gamma, r2_gamma):
        """D's loss and penalties on one micro-batch (classes `c` for reals and fakes alike, or None),
        backpropagated with its share of the batch."""
        # the penalties differentiate D's output with respect to the images before augmentation, through it, as
        # StyleGAN2-ADA and R3GAN do (without augmentation: exactly what D saw); never with respect to the classes
        real_img = real_img.detach().requires_grad_(bool(r1_gamma))
        gen_img = gen_img.detach().requires_grad_(bool(r2_gamma))
        with self.accelerator.autocast():
            real_logits, fake_logits = self._D(self.augment(real_img), c), self._D(self.augment(gen_img), c)
            loss_D = d_loss(real_logits, fake_logits, self.loss)
        penalties, total_D = self.regularisation_phase(loss_D, real_logits, real_img, fake_logits, gen_img,
                                                       r1_gamma, r2_gamma)
        # one backward for both D forwards and the penalties: one all-reduce (on the last micro-batch)
        self.backward(total_D * (1 / self.accumulation))
        return loss_D.detach(), real_logits.detach(), fake_logits.detach(), penalties

    def regularisation_phase(self, loss_D, real_logits, real_in, fake_logits, fake_in, r1_gamma, r2_gamma):
        """R1 on the reals, R2 on the fakes, before augmentation: ({name: penalty}, loss_D plus the weighted penalties).

        Input gradients only (no parameter .grad, no DDP hook): their graph joins D's one backward.
        A penalty is a mean over the (micro-)batch, so it is scaled with D's loss under accumulation.
        """
        penalties, total = {}, loss_D
        if not (r1_gamma or r2_gamma):
            return penalties, total
        with self.phase("regularisation"):
            for name, gamma, logits, inputs in (("r1", r1_gamma, real_logits, real_in),
                                                ("r2", r2_gamma, fake_logits, fake_in)):
                if gamma:
                    penalties[name] = gradient_penalty(logits, inputs, self.scaler)
                    total = total + (gamma / 2) * penalties[name]
        return {k: v.detach() for k, v in penalties.items()}, total

    def generator_phase(self, micro_batches, with_norms):
        """(2) Update G: maximize log D(G(z)); D frozen so its DDP reducer stays idle. Runs after D's update."""
        aug = self.augment
        self.D.requires_grad_(False)
        self.update_G.zero_grad(set_to_none=True)
        losses = []
        for i, (real_img, c, gen_z, gen_img) in enumerate(micro_batches):
            # D under no_sync as well: a forward of a DDP D outside it arms D's reducer, which would then
            # all-reduce in the next step's first micro-batch, under no_sync or not
            with self._sync_unless_last(self.G, i), self.accelerator.no_sync(self.D):
                with self.accelerator.autocast():
                    if gen_img is None:
                        gen_img = self._G(gen_z, c)
                    paired_real = None
                    if self.loss == "rpgan":  # the reals paired with this batch's fakes, scored by the updated D
                        with torch.no_grad():
                            paired_real = self._D(aug(real_img), c)
                    loss_G = g_loss(self._D(aug(gen_img), c), paired_real, self.loss)
                self.backward(loss_G * (1 / self.accumulation))
            losses.append(loss_G.detach())
        norm = grad_norm(self.G, self.scaler) if with_norms else None
        skipped = self._update(self.update_G)
        self.D.requires_grad_(True)
        return GRecord(_mean(losses), norm, skipped)

    def _update(self, opt):
        """opt.step(); 1.0 on the device when the fp16 scaler skipped it (an overflow lowers the scale).
        Judged by the scale, as step_was_skipped misses the skips fused optimizers make inside their kernel;
        the scale is read as a tensor, since get_scale() waits for the device."""
        if self.scaler is None:
            opt.step()
            return torch.zeros((), device=self.accelerator.device)
        before = self.scaler._get_scale_async().clone()
        opt.step()
        return (self.scaler._get_scale_async() < before).float()


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
