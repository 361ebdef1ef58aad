import pytest
import torch

from gan_dist.networks.models import GANConfig, build_models, count_params


def test_vanilla_mlp_has_exact_parameter_counts():
    G, D = build_models(GANConfig("mlp", latent_dim=100, img_size=128, channels=3))
    assert count_params(G) == 51_087_232
    assert count_params(D) == 25_297_921
    # BatchNorm1d with gan.py's eps=0.8 (its second positional argument)
    eps = {m.eps for m in G.modules() if isinstance(m, torch.nn.BatchNorm1d)}
    assert eps == {0.8}


@pytest.mark.parametrize("arch,size,channels", [("mlp", 16, 1), ("mlp", 32, 3), ("dcgan", 32, 1),
                                                ("dcgan", 64, 3), ("dcgan", 128, 3)])
def test_shapes_and_logits(arch, size, channels):
    torch.manual_seed(0)
    G, D = build_models(GANConfig(arch, latent_dim=16, img_size=size, channels=channels, base_width=8))
    img = G(torch.randn(4, 16))
    assert img.shape == (4, channels, size, size)
    assert img.min() >= -1 and img.max() <= 1
    logits = D(img)
    assert logits.shape == (4, 1)
    # logits, not probabilities: an untrained D is not confined to (0, 1)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()


def test_d_returns_unbounded_logits():
    G, D = build_models(GANConfig("mlp", latent_dim=8, img_size=8, channels=1))
    with torch.no_grad():
        for p in D.parameters():
            p.fill_(0.05)
    assert D(torch.ones(2, 1, 8, 8)).min() > 1.0


@pytest.mark.parametrize("kwargs,match", [({"arch": "vit"}, "unknown --arch"),
                                          ({"arch": "dcgan", "img_size": 48}, "32, 64 or 128")])
def test_bad_config_is_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GANConfig(**kwargs)
