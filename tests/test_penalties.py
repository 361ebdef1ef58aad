"""Losses and the R1/R2 penalties: values on known logits, against autograd, under DDP and mixed precision."""
import math
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.optimizer import AcceleratedOptimizer
from conftest import ROOT, finish, launch

from gan_dist.networks.losses import d_loss, g_loss, gradient_penalty
from gan_dist.networks.models import GANConfig, build_models
from gan_dist.training.step import GANStep, adam

REAL, FAKE = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([-3.0, 0.0, 1.5])


def sp(x):
    return math.log1p(math.exp(x))


def test_bce_is_gan_py_binary_cross_entropy():
    expected = (sp(-2) + sp(1) + sp(-0.5)) / 3 + (sp(-3) + sp(0) + sp(1.5)) / 3
    assert d_loss(REAL, FAKE, "bce").item() == pytest.approx(expected, rel=1e-6)
    probs = torch.sigmoid(FAKE)  # gan.py: BCELoss(D(G(z)), ones)
    assert g_loss(FAKE, kind="bce").item() == pytest.approx(F.binary_cross_entropy(probs, torch.ones(3)).item(),
                                                            rel=1e-6)


def test_hinge_values():
    # D: relu(1 - real) = (0, 2, 0.5); relu(1 + fake) = (0, 1, 2.5)
    assert d_loss(REAL, FAKE, "hinge").item() == pytest.approx(2.5 / 3 + 3.5 / 3)
    assert g_loss(FAKE, kind="hinge").item() == pytest.approx(0.5)


def test_rpgan_pairs_each_real_with_its_fake():
    # D: softplus(fake - real) per pair: (-5, 1, 1); G: softplus(real - fake): (5, -1, -1)
    assert d_loss(REAL, FAKE, "rpgan").item() == pytest.approx((sp(-5) + 2 * sp(1)) / 3, rel=1e-6)
    assert g_loss(FAKE, REAL, "rpgan").item() == pytest.approx((sp(5) + 2 * sp(-1)) / 3, rel=1e-6)
    # pairing matters: the same logits in another order give another loss
    assert d_loss(REAL, FAKE.flip(0), "rpgan").item() != pytest.approx(d_loss(REAL, FAKE, "rpgan").item())


def test_unknown_loss_is_refused():
    with pytest.raises(ValueError, match="unknown loss"):
        d_loss(REAL, FAKE, "wgan")


def test_penalty_of_a_linear_d_is_its_squared_weight_norm():
    D = nn.Linear(12, 1)
    x = torch.randn(5, 12, requires_grad=True)
    assert gradient_penalty(D(x), x).item() == pytest.approx(D.weight.square().sum().item(), rel=1e-6)


@pytest.mark.parametrize("scale", [None, 2.0 ** 14])
def test_penalty_equals_direct_autograd_on_a_tiny_resnet_d(scale):
    torch.manual_seed(0)
    _, D = build_models(GANConfig("resnet", latent_dim=8, img_size=32, channels=3, widths=(16, 16, 8, 8),
                                  group_size=8))
    with torch.no_grad():
        for p in D.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.randn(4, 3, 32, 32, requires_grad=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=scale) if scale else None
    penalty = gradient_penalty(D(x), x, scaler)
    (grad,) = torch.autograd.grad(D(x).sum(), x, create_graph=True)
    direct = grad.pow(2).sum(dim=(1, 2, 3)).mean()
    assert penalty.dtype == torch.float32
    assert torch.allclose(penalty, direct, rtol=1e-5)
    # differentiable: its gradient with respect to D's weights is the direct one
    weights = [p for name, p in D.named_parameters() if name != "to_logit.bias"]  # the only one it cannot reach
    g_pen = torch.autograd.grad(penalty, weights, retain_graph=True)
    g_dir = torch.autograd.grad(direct, weights)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(g_pen, g_dir))


def test_penalty_of_a_packing_d_is_taken_per_pack():
    """A D that packs 2 images: the penalty is E ||gradient of D's output w.r.t. its pack||^2 over the packs."""
    torch.manual_seed(0)
    _, D = build_models(GANConfig("resnet", latent_dim=8, img_size=32, channels=3, widths=(16, 16, 8, 8),
                                  group_size=8, pacgan=2))
    with torch.no_grad():
        for p in D.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.randn(6, 3, 32, 32, requires_grad=True)
    logits = D(x)
    assert logits.shape == (3, 1)
    packs = x.detach().reshape(3, 6, 32, 32).requires_grad_(True)  # images 2k and 2k+1 side by side
    D.pacgan = 1  # the same weights fed the PacGAN groups directly
    (grad,) = torch.autograd.grad(D(packs).sum(), packs)
    direct = grad.square().sum(dim=(1, 2, 3)).mean()
    assert torch.allclose(gradient_penalty(logits, x), direct, rtol=1e-5)


@pytest.mark.parametrize("pack", [1, 2])
def test_penalised_d_gradients_under_two_gloo_ranks_equal_one_process(pack):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           ROOT / "tests" / "ddp_penalty_check.py", pack]
    r = finish(*launch(cmd, env={"ACCELERATE_USE_CPU": "1"}, timeout=180))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert r.stdout.count("penalised D gradients match one process") == 2, r.stdout
    assert "Grad strides do not match" not in r.stderr  # channels-last with the depthwise 4x4 of D


def small_resnet(accelerator):
    torch.manual_seed(0)
    G, D = build_models(GANConfig("resnet", latent_dim=8, img_size=32, channels=1, widths=(16, 16, 8, 8),
                                  group_size=8))
    opt_G, opt_D = (adam(n.parameters(), 2e-4, (0.0, 0.99), accelerator.device) for n in (G, D))
    return accelerator.prepare(G, D, opt_G, opt_D)


def batch():
    gen = torch.Generator().manual_seed(1)
    return torch.rand(8, 1, 32, 32, generator=gen) * 2 - 1, torch.randn(8, 8, generator=gen)


def test_penalised_step_under_bf16_is_finite(fresh_state):
    accelerator = Accelerator(cpu=True, mixed_precision="bf16")
    G, D, opt_G, opt_D = small_resnet(accelerator)
    step = GANStep(accelerator, G, D, opt_G, opt_D, loss="rpgan")
    for _ in range(3):
        d, g = step(*batch(), r1_gamma=1.0, r2_gamma=1.0, with_norms=True)
        assert all(torch.isfinite(t).all() for t in (d.loss, g.loss, d.real_logits, d.fake_logits))
    assert d.penalties["r1"].dtype == torch.float32 and math.isfinite(d.penalties["r1"].item())
    assert all(torch.isfinite(p).all() for net in (G, D) for p in net.parameters())


def test_penalised_step_with_the_fp16_scaler_uses_unscaled_penalties(fresh_state):
    accelerator = Accelerator(cpu=True)
    G, D, opt_G, opt_D = small_resnet(accelerator)
    # Accelerate makes no scaler on the CPU; give it a real one, as prepare() does with fp16 on CUDA
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    accelerator.scaler = scaler
    opt_G, opt_D = (AcceleratedOptimizer(o.optimizer, device_placement=False, scaler=scaler) for o in (opt_G, opt_D))
    real, z = batch()
    x = real.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(D(x).sum(), x)
    expected_r1 = grad.square().sum(dim=(1, 2, 3)).mean()
    d, g = GANStep(accelerator, G, D, opt_G, opt_D, loss="rpgan")(real, z, 1.0, 1.0, with_norms=True)
    assert all(torch.isfinite(t).all() for t in (d.loss, g.loss, d.real_logits, d.fake_logits))
    assert d.skipped.item() == 0 and g.skipped.item() == 0 and scaler.get_scale() == 2.0 ** 16
    assert torch.allclose(d.penalties["r1"], expected_r1, rtol=1e-4)  # the penalty, not the scaled one
    assert math.isfinite(d.grad_norm.item())


def test_cosine_schedule_of_rates_and_gammas_with_lazy_regularisation():
    from types import SimpleNamespace

    from gan_dist.training.step import schedule
    args = SimpleNamespace(schedule="cosine", schedule_kimg=None, lr_end_ratio=0.25, gamma_end_ratio=0.1,
                           reg_every=4, lr_g=2e-4, lr_d=1e-4, r1_gamma=1.0, r2_gamma=0.5)
    assert schedule(args, 4, 101, 64) == pytest.approx((2e-4, 1e-4, 4.0, 2.0), rel=5e-3)  # gamma x 4 every 4
    assert schedule(args, 5, 101, 64)[2:] == (0.0, 0.0)  # no penalty between
    assert schedule(args, 101, 101, 64) == pytest.approx((5e-5, 2.5e-5, 0.0, 0.0))
    assert schedule(args, 51, 101, 64)[0] == pytest.approx(2e-4 * (0.25 + 0.75 / 2))  # half way: the mean
    args.schedule_kimg = 6.4  # 100 steps of 64, whatever the run's length
    assert schedule(args, 100, 1000, 64)[1] == pytest.approx(2.5e-5)
    args.schedule, args.reg_every = "constant", 1
    assert schedule(args, 7, 10, 64) == (2e-4, 1e-4, 1.0, 0.5)
