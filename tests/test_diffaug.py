import pytest
import torch

from gan_dist.networks.augment import POLICIES, diff_augment, parse_policy

ALL = "color,translation,cutout"


def batch(seed=0, n=4, c=3, size=16):
    return torch.rand(n, c, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_parse_policy():
    assert parse_policy(ALL) == POLICIES
    assert parse_policy(" color , cutout ") == ("color", "cutout")
    assert parse_policy("") == () and parse_policy(None) == ()
    with pytest.raises(ValueError, match="unknown DiffAugment policy hue"):
        parse_policy("color,hue")


def test_empty_policy_is_identity():
    x = batch()
    assert diff_augment(x, ()) is x


@pytest.mark.parametrize("policy", ["color", "translation", "cutout", ALL])
def test_same_input_and_generator_state_give_the_same_output(policy):
    x = batch()
    a = diff_augment(x, policy, torch.Generator().manual_seed(1))
    b = diff_augment(x.clone(), policy, torch.Generator().manual_seed(1))
    c = diff_augment(x, policy, torch.Generator().manual_seed(2))
    assert a.shape == x.shape and torch.equal(a, b)
    assert not torch.equal(a, c) and not torch.equal(a, x)


def test_real_and_fake_get_the_same_policy():
    """The same call on real and fake batches: with the same draws, equal images come out equal."""
    real, fake = batch(0), batch(1)
    fake[0] = real[0]
    g = torch.Generator().manual_seed(3)
    state = g.get_state()
    out_real = diff_augment(real, ALL, g)
    g.set_state(state)
    out_fake = diff_augment(fake, ALL, g)
    assert torch.equal(out_real[0], out_fake[0]) and not torch.equal(out_real[1], out_fake[1])


def test_translation_shifts_content_and_cutout_zeroes_a_square():
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 4, 4] = 1.0
    shifted = diff_augment(x, "translation", torch.Generator().manual_seed(0))
    assert shifted.sum() in (0.0, 1.0) and shifted.abs().max() <= 1.0  # moved by at most 1 px, never duplicated
    ones = torch.ones(2, 3, 8, 8)
    cut = diff_augment(ones, "cutout", torch.Generator().manual_seed(0))
    zeros_per_image = (cut[:, 0] == 0).flatten(1).sum(1)
    assert ((zeros_per_image > 0) & (zeros_per_image <= 16)).all()  # up to a 4x4 square, clipped at the border
    assert torch.equal(cut[:, 0], cut[:, 1])  # the same hole in every channel


def test_gradients_flow_through_every_policy():
    fake = batch(2).requires_grad_(True)
    D = torch.nn.Conv2d(3, 1, 3)
    loss = D(diff_augment(fake, ALL, torch.Generator().manual_seed(0))).mean()
    loss.backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0 and torch.isfinite(fake.grad).all()


def test_global_rng_when_no_generator():
    torch.manual_seed(5)
    a = diff_augment(batch(), ALL)
    torch.manual_seed(5)
    assert torch.equal(a, diff_augment(batch(), ALL))
