import math

import pytest
import torch

from gan_dist.networks.models import GANConfig, build_models, count_params
from gan_dist.networks.resnet import minibatch_std


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
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    # logits, not probabilities: nothing squashes the last layer's output. Scaled 1000-fold, that layer gives
    # 1000 times the logits, far outside (0, 1); a Sigmoid (or any squashing) after it would saturate instead.
    last = [m for m in D.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))][-1]
    with torch.no_grad():
        for p in last.parameters():
            p.mul_(1000)
        scaled = D(img)
    assert torch.allclose(scaled, 1000 * logits, rtol=1e-4, atol=1e-3)
    assert scaled.abs().max() > 1


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


def resnet_param_count(latent, channels, widths, blocks, group, expansion=2, mapping=0):
    """Counted from the design: block = 1x1 expand + bias, grouped 3x3 + bias, 1x1 project (`blocks` per stage,
    or a count per stage from 4x4 up); 1x1 convs between stages of different widths; G: 4x4 basis + mapping MLP
    (linear + bias per hidden layer, widths[0] wide) + z map + to-image; D: from-image + depthwise 4x4 + linear."""
    def block(w):
        e = w * expansion
        return w * e + e + e * group * 9 + e + e * w
    counts = blocks if isinstance(blocks, tuple) else [blocks] * len(widths)
    stages = sum(n * block(w) for n, w in zip(counts, widths))
    transitions = sum(a * b for a, b in zip(widths, widths[1:]) if a != b)
    w0 = widths[0]
    mlp = mapping and (latent * w0 + w0) + (mapping - 1) * (w0 * w0 + w0)
    z_map = (w0 if mapping else latent) * w0
    G = w0 * 16 + mlp + z_map + stages + transitions + widths[-1] * channels
    D = channels * widths[-1] + stages + transitions + widths[0] * 16 + widths[0] + 1
    return G, D


@pytest.mark.parametrize("size,channels,kwargs,widths", [
    (32, 1, {"widths": (64, 64, 32, 16), "group_size": 8}, (64, 64, 32, 16)),
    (32, 3, {"width": 32, "blocks": 2}, (32, 32, 32, 32)),
    (64, 3, {"width": 64}, (64, 64, 64, 64, 32)),
    (128, 1, {"width": 64}, (64, 64, 64, 64, 32, 16)),
    (32, 3, {"widths": (64, 32, 32, 16), "mapping_layers": 3}, (64, 32, 32, 16)),
    (32, 3, {"widths": (64, 32, 32, 16), "blocks": (2, 3, 1, 1)}, (64, 32, 32, 16)),
    (32, 3, {"widths": (64, 32, 32, 16), "blocks": (1, 1, 0, 0)}, (64, 32, 32, 16)),
])
def test_resnet_shapes_and_parameter_counts(size, channels, kwargs, widths):
    torch.manual_seed(0)
    cfg = GANConfig("resnet", latent_dim=16, img_size=size, channels=channels, **kwargs)
    G, D = build_models(cfg)
    img = G(torch.randn(2, 16))
    assert img.shape == (2, channels, size, size)
    assert D(img).shape == (2, 1) and torch.isfinite(D(img)).all()
    assert (count_params(G), count_params(D)) == resnet_param_count(16, channels, widths, cfg.blocks, cfg.group_size,
                                                                    mapping=cfg.mapping_layers)
    assert len(G.mapping) == 2 * cfg.mapping_layers  # linear + leaky ReLU per hidden layer
    if cfg.blocks == (2, 3, 1, 1):  # G's stages run from 4x4 up, D's from the image down
        assert [len(stage) for stage in G.stages] == [2, 4, 2, 2]  # a transition before every stage but the first
        assert [len(stage) for stage in D.stages] == [2, 2, 4, 2]
    if cfg.blocks == (1, 1, 0, 0):  # the 16x16 and 32x32 stages only resample
        assert [len(stage) for stage in G.stages] == [1, 2, 1, 1]
        assert [len(stage) for stage in D.stages] == [1, 1, 2, 1]
    assert not any(isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)) for m in [*G.modules(), *D.modules()])


def test_resnet_blocks_start_as_identity_and_layers_are_variance_scaled():
    from gan_dist.networks.resnet import ACT_GAIN, ResidualBlock
    torch.manual_seed(0)
    block = ResidualBlock(64, group_size=16, expansion=2, n_blocks=16)
    x = torch.randn(4, 64, 8, 8)
    assert torch.equal(block(x), x)  # the last conv of the branch is zero
    assert block.project.weight.abs().max() == 0
    # He init scaled by L^(-1/4) for L = 16 blocks: std = gain / sqrt(fan_in)
    expected = ACT_GAIN * 16 ** -0.25 / math.sqrt(64)
    assert block.expand.weight.std().item() == pytest.approx(expected, rel=0.05)
    assert block.grouped.groups == 8


def test_low_pass_resampling_keeps_flat_images_flat():
    from gan_dist.networks.resnet import LowPass
    flat = torch.full((1, 2, 8, 8), 3.0)
    up, down = LowPass("up")(flat), LowPass("down")(flat)
    assert up.shape == (1, 2, 16, 16) and down.shape == (1, 2, 4, 4)
    assert torch.allclose(up[..., 1:-1, 1:-1], torch.tensor(3.0))  # borders see the zero padding
    assert torch.allclose(down[..., 1:, 1:], torch.tensor(3.0))
    ramp = torch.arange(4.0).view(1, 1, 1, 4).expand(1, 1, 4, 4)
    assert torch.allclose(LowPass("up")(ramp)[0, 0, 2, :7], torch.arange(7.0) / 2)  # bilinear in between


def test_resnet_config_round_trips_through_gan_json():
    import json
    cfg = GANConfig("resnet", latent_dim=16, img_size=32, channels=3, widths=(64, 64, 32, 16), group_size=8)
    back = GANConfig(**json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and back.to_dict() == cfg.to_dict()
    assert cfg.to_dict()["widths"] == [64, 64, 32, 16]
    assert "widths" not in GANConfig("mlp").to_dict()  # other archs' gan.json unchanged
    # no mapping MLP: the key is left out, so gan.json written before it existed still resumes (compares equal)
    assert "mapping_layers" not in cfg.to_dict()
    mapped = GANConfig("resnet", latent_dim=16, img_size=32, widths=(64, 64, 32, 16), group_size=8, mapping_layers=2)
    assert mapped.to_dict()["mapping_layers"] == 2 and GANConfig(**json.loads(json.dumps(mapped.to_dict()))) == mapped
    per_stage = GANConfig("resnet", img_size=32, widths=(64, 64, 32, 16), blocks=(2, 2, 1, 1))
    assert per_stage.to_dict()["blocks"] == [2, 2, 1, 1] and cfg.to_dict()["blocks"] == 1
    assert GANConfig(**json.loads(json.dumps(per_stage.to_dict()))) == per_stage
    assert "pacgan" not in cfg.to_dict() and "pacgan" not in GANConfig("mlp").to_dict()  # likewise
    packed = GANConfig("dcgan", img_size=32, pacgan=4)
    assert packed.to_dict()["pacgan"] == 4 and GANConfig(**json.loads(json.dumps(packed.to_dict()))) == packed
    # gan.json written before PacGAN's option had its name calls it "pack"
    old = {k: v for k, v in packed.to_dict().items() if k != "pacgan"} | {"pack": 4}
    assert GANConfig.from_dict(old) == packed
    assert "mbstd_group" not in cfg.to_dict()  # likewise from before the minibatch std
    grouped = GANConfig("resnet", img_size=32, widths=(64, 64, 32, 16), mbstd_group=4)
    assert grouped.to_dict()["mbstd_group"] == 4 and GANConfig(**json.loads(json.dumps(grouped.to_dict()))) == grouped


@pytest.mark.parametrize("arch", ["mlp", "dcgan", "resnet"])
def test_pacgan_d_judges_consecutive_images_together(arch):
    torch.manual_seed(0)
    kwargs = {"widths": (16, 16, 8, 8), "group_size": 8} if arch == "resnet" else {}
    G, D = build_models(GANConfig(arch, latent_dim=8, img_size=32, channels=3, pacgan=2, **kwargs))
    D.eval()  # DCGAN's BatchNorm would otherwise mix the packs through the batch statistics
    images = G(torch.randn(6, 8)).detach()
    logits = D(images)
    assert logits.shape == (3, 1)
    # pack k is images 2k and 2k+1: changing image 3 changes the second logit only
    changed = images.clone()
    changed[3] = -changed[3]
    moved = (D(changed) - logits).abs().flatten()
    assert moved[1] > 0 and moved[0] == 0 and moved[2] == 0
    with pytest.raises(ValueError, match="a batch of 5 images does not split into PacGAN groups of 2"):
        D(images[:5])


def test_minibatch_std_joins_each_input_to_its_group():
    torch.manual_seed(0)
    x = torch.randn(8, 5, 4, 4)
    std = minibatch_std(x, 4)
    assert std.shape == (8, 1, 4, 4)
    # groups are strided: inputs 0, 2, 4, 6 and 1, 3, 5, 7; each gets its group's std, averaged over C, H, W
    for first in (0, 1):
        group = list(range(first, 8, 2))
        expected = x[group].std(0, unbiased=False).mean()
        assert torch.allclose(std[group], expected.expand(4, 1, 4, 4), atol=1e-6)
    assert torch.equal(minibatch_std(x[:3], 4), minibatch_std(x[:3], 3))  # a smaller batch is one group
    with pytest.raises(ValueError, match="groups 4 inputs at a time and got 6"):
        minibatch_std(x[:6], 4)

    G, D = build_models(GANConfig("resnet", latent_dim=8, img_size=32, widths=(16, 16, 8, 8), group_size=8,
                                  mbstd_group=4))
    assert count_params(D) == count_params(build_models(GANConfig("resnet", latent_dim=8, img_size=32,
                                                                  widths=(16, 16, 8, 8), group_size=8))[1]) + (
        17 * 16 + 16)  # at 4x4 (16 wide): the 1x1 conv from 16 + 1 channels back to 16, its activation's bias
    images = G(torch.randn(8, 8)).detach()
    logits = D(images)
    changed = images.clone()
    changed[3] = -changed[3]
    moved = (D(changed) - logits).abs().flatten()
    # image 3 moves its own logit and, through the group's std, those of 1, 5 and 7; not the other group's
    assert (moved[[1, 3, 5, 7]] > 0).all() and (moved[[0, 2, 4, 6]] == 0).all()


@pytest.mark.parametrize("kwargs,match", [({"img_size": 48}, "32, 64, 128 or 256"),
                                          ({"widths": (64, 64, 32)}, "needs 4 values"),
                                          ({"width": 24, "group_size": 32}, "multiple of --group_size"),
                                          ({"blocks": 0}, "--blocks must be an integer from 1 to 64"),
                                          ({"blocks": (2, 1)}, "--blocks needs 1 or 4 values"),
                                          ({"blocks": (2, -1, 1, 1)}, "one per stage from 0 to 64"),
                                          ({"blocks": (0, 0, 0, 0)}, "at least one block in all"),
                                          ({"mapping_layers": -1}, "--mapping_layers must be an integer from 0"),
                                          ({"mbstd_group": 65}, "--mbstd_group must be an integer from 0 to 64")])
def test_bad_resnet_config_is_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GANConfig(**{"arch": "resnet", "img_size": 32, **kwargs})


@pytest.mark.parametrize("mbstd_group", [0, 2])
def test_resnet_compiles_as_one_graph_and_matches_eager_in_channels_last(mbstd_group):
    """--compile and channels-last: both nets trace without graph breaks (fullgraph) and give eager's images,
    logits and G's gradients. aot_eager traces forward and backward like inductor without a C++ compiler."""
    torch.manual_seed(0)
    G, D = build_models(GANConfig("resnet", latent_dim=16, img_size=32, channels=3, widths=(32, 32, 16, 16),
                                  group_size=8, mbstd_group=mbstd_group))
    G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
    z = torch.randn(4, 16)
    eager_img = G(z)
    eager_logits = D(eager_img)
    eager_logits.sum().backward()
    eager_grads = [p.grad.clone() for p in G.parameters()]
    G.zero_grad(), D.zero_grad()
    torch._dynamo.reset()
    img = torch.compile(G, backend="aot_eager", fullgraph=True)(z)
    logits = torch.compile(D, backend="aot_eager", fullgraph=True)(img)
    logits.sum().backward()
    assert torch.allclose(img, eager_img, atol=1e-5) and torch.allclose(logits, eager_logits, atol=1e-5)
    assert all(torch.allclose(p.grad, g, atol=1e-5) for p, g in zip(G.parameters(), eager_grads))


def test_resnet_checkpoints_with_the_conv_form_of_d_basis_still_load():
    """D's last depthwise 4x4 was once a conv with a (w, 1, 4, 4) weight; such state dicts load into today's D."""
    torch.manual_seed(0)
    _, D = build_models(GANConfig("resnet", latent_dim=16, img_size=32, channels=3, widths=(32, 32, 16, 16),
                                  group_size=8))
    old = {k: (v.unsqueeze(1) if k == "basis.weight" else v) for k, v in D.state_dict().items()}
    assert old["basis.weight"].shape == (32, 1, 4, 4)  # D ends at the 4x4 stage, 32 wide
    _, fresh = build_models(GANConfig("resnet", latent_dim=16, img_size=32, channels=3, widths=(32, 32, 16, 16),
                                      group_size=8))
    fresh.load_state_dict(old)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(fresh(x), D(x))
