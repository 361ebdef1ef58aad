import copy

import pytest
import torch
import torch.nn as nn

from gan_dist.networks.models import GANConfig, build_models
from gan_dist.training.ema import (
    EMA_FILE,
    ema_beta,
    load_ema,
    make_ema,
    save_ema,
    update,
)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2, bias=False)
        self.bn = nn.BatchNorm1d(2)


def test_beta_is_a_half_life_in_images():
    assert ema_beta(global_batch=32, ema_kimg=10) == 0.5 ** (32 / 10_000)
    beta = ema_beta(global_batch=100, ema_kimg=1)  # 10 steps of 100 images = 1 kimg
    assert beta ** 10 == pytest.approx(0.5)
    # ramp-up: early on the half-life is ema_rampup * images seen
    assert ema_beta(100, 10, num_imgs_seen=1000, ema_rampup=0.05) == 0.5 ** (100 / 50)
    assert ema_beta(100, 10, num_imgs_seen=10**7, ema_rampup=0.05) == ema_beta(100, 10)


def test_make_ema_is_a_frozen_eval_copy():
    G = Tiny()
    G_ema = make_ema(G)
    assert not G_ema.training and not any(p.requires_grad for p in G_ema.parameters())
    assert all(p.requires_grad for p in G.parameters()) and G.training
    assert G_ema.lin.weight.data_ptr() != G.lin.weight.data_ptr()
    assert torch.equal(G_ema.lin.weight, G.lin.weight)


def test_update_lerps_parameters_and_copies_buffers_exactly():
    G = Tiny()
    with torch.no_grad():
        G.lin.weight.fill_(1.0)
    G_ema = make_ema(G)
    with torch.no_grad():
        G.lin.weight.fill_(3.0)
        G.bn.running_mean.fill_(7.0)
        G.bn.num_batches_tracked.fill_(5)
    beta = update(G_ema, G, global_batch=500, ema_kimg=1)  # beta = 0.5 ** 0.5
    assert beta == 0.5 ** 0.5
    assert torch.allclose(G_ema.lin.weight, torch.full((2, 2), beta * 1.0 + (1 - beta) * 3.0))
    assert torch.equal(G_ema.bn.running_mean, torch.full((2,), 7.0))
    assert G_ema.bn.num_batches_tracked.item() == 5
    update(G_ema, G, global_batch=500, ema_kimg=1)  # two steps of 500 = one half-life: halfway to 3
    assert torch.allclose(G_ema.lin.weight, torch.full((2, 2), 2.0))
    assert G_ema.lin.weight.grad is None and torch.equal(G.lin.weight, torch.full((2, 2), 3.0))


def test_update_is_deterministic_and_rejects_another_network():
    """Two ranks hold equal copies of G in different objects: their G_ema come out bit for bit equal, and
    equal to beta * G_ema + (1 - beta) * G computed here (so an update that did nothing would not pass)."""
    torch.manual_seed(0)
    G = build_models(GANConfig("mlp", latent_dim=8, img_size=8, channels=1))[0]
    a, b = make_ema(G), make_ema(G)
    start = {k: v.clone() for k, v in a.state_dict().items()}
    with torch.no_grad():
        for p in G.parameters():
            p.add_(torch.randn_like(p))
        for buf in G.buffers():
            buf.add_(1)
    other_rank = copy.deepcopy(G)  # the same weights in another object, as on another process
    beta = update(a, G, 64, ema_kimg=0.1)
    assert update(b, other_rank, 64, ema_kimg=0.1) == beta == 0.5 ** (64 / 100)
    params = dict(G.named_parameters())
    for name, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[name]), name
        if name in params:  # averaged: moved part of the way, by the half-life's weight
            expected = beta * start[name] + (1 - beta) * params[name].detach()
            assert not torch.equal(value, start[name]), name
            assert torch.allclose(value, expected, rtol=0, atol=1e-6), name
        else:  # buffers: copied
            assert torch.equal(value, G.state_dict()[name]), name
    with pytest.raises(ValueError, match="make_ema"):
        update(Tiny(), G, 64)


def test_save_and_load(tmp_path):
    G = Tiny()
    G_ema = make_ema(G)
    assert save_ema(G_ema, tmp_path) == tmp_path / EMA_FILE
    other = make_ema(Tiny())
    assert load_ema(other, tmp_path)
    assert torch.equal(other.lin.weight, G_ema.lin.weight)
    assert not load_ema(other, tmp_path / "missing")
