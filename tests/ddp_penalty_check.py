"""Run under torchrun with 2 CPU ranks: D's gradients from gan_step with rpgan + R1 + R2, each rank on half
of the global batch, must equal a direct single-process autograd computation on the whole batch.

Steps 1-3 alternate penalties off / on / on (lazy regularisation) so the reducer sees both graphs.
With an argument PACK, D judges packs of that many images (each rank's half of the batch splits into whole packs).
"""
import copy
import sys

import torch
import torch.nn.functional as F
from accelerate import Accelerator

from gan_dist.networks.models import GANConfig, build_models
from gan_dist.training.step import GANStep, adam

GAMMA = 100.0  # large enough that the penalties carry a good share of the gradient
PACK = int(sys.argv[1]) if len(sys.argv) > 1 else 1
accelerator = Accelerator(cpu=True)
rank, world = accelerator.process_index, accelerator.num_processes
torch.manual_seed(0)
G, D = build_models(GANConfig("resnet", latent_dim=8, img_size=32, channels=3, widths=(16, 16, 8, 8), group_size=8,
                                pacgan=PACK))
G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)  # as the trainer runs them
with torch.no_grad():  # give the zero-initialised last convs weights, so every layer has a gradient
    for net in (G, D):
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
G_ref, D_ref = copy.deepcopy(G), copy.deepcopy(D)
opt_G, opt_D = (adam(n.parameters(), 0.0, (0.0, 0.99), accelerator.device) for n in (G, D))  # lr 0: weights stay
G, D, opt_G, opt_D = accelerator.prepare(G, D, opt_G, opt_D)
gan_step = GANStep(accelerator, G, D, opt_G, opt_D, loss="rpgan")

for step, gamma in enumerate((0.0, GAMMA, GAMMA), start=1):
    gen = torch.Generator().manual_seed(step)
    real, z = torch.rand(8, 3, 32, 32, generator=gen) * 2 - 1, torch.randn(8, 8, generator=gen)
    half = slice(rank * 8 // world, (rank + 1) * 8 // world)
    gan_step(real[half], z[half], r1_gamma=gamma, r2_gamma=gamma, with_norms=True)

# the reference: one process, the whole batch, autograd directly
x = real.clone().requires_grad_(True)
fake = G_ref(z).detach().requires_grad_(True)
real_logits, fake_logits = D_ref(x), D_ref(fake)
(g_real,) = torch.autograd.grad(real_logits.sum(), x, create_graph=True)
(g_fake,) = torch.autograd.grad(fake_logits.sum(), fake, create_graph=True)
n_packs = 8 // PACK  # a pack's gradient is its images' gradients side by side


def penalty(grad):
    return grad.reshape(n_packs, -1).square().sum(1).mean()


loss = F.softplus(fake_logits - real_logits).mean() + GAMMA / 2 * penalty(g_real) + GAMMA / 2 * penalty(g_fake)
loss.backward()

worst = 0.0
for (name, p), p_ref in zip(accelerator.unwrap_model(D).named_parameters(), D_ref.parameters()):
    assert p.grad is not None, f"rank {rank}: D.{name} has no gradient"
    if not torch.allclose(p.grad, p_ref.grad, rtol=1e-4, atol=1e-6):
        raise SystemExit(f"rank {rank}: D.{name} gradient differs: max |diff| "
                         f"{(p.grad - p_ref.grad).abs().max():.3g}, max |ref| {p_ref.grad.abs().max():.3g}")
    worst = max(worst, float((p.grad - p_ref.grad).abs().max()))
penalty_share = 1 - F.softplus(fake_logits - real_logits).mean().item() / loss.item()
print(f"rank {rank}: penalised D gradients match one process (max |diff| {worst:.2g}, "
      f"penalties {penalty_share:.0%} of the loss)")
accelerator.end_training()
