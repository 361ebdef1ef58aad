import pytest
import torch
import torch.nn.functional as F

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


def shifted(img, dh, dw, pad=2):
    """img moved so that out[..., h, w] = img[..., h + dh, w + dw], zeros where that falls outside."""
    H, W = img.shape[-2:]
    return F.pad(img, [pad] * 4)[..., pad + dh:pad + dh + H, pad + dw:pad + dw + W]


def test_translation_shifts_each_image_with_zero_fill():
    """16 px images move by up to 12.5% = 2 px per axis, each by its own draw; what comes in is zeros."""
    x = batch(n=64, size=16)  # random values: no two shifts of one image look alike, and none is zero
    out = diff_augment(x, "translation", torch.Generator().manual_seed(0))
    moves = []
    for img, got in zip(x, out):
        found = [(dh, dw) for dh in range(-2, 3) for dw in range(-2, 3) if torch.equal(got, shifted(img, dh, dw))]
        assert len(found) == 1, "not a whole-pixel shift of at most 2 px with zero fill"
        moves.append(found[0])
    assert moves.count((0, 0)) < len(moves) / 4  # most images moved (1 in 25 draws is no move)
    assert {dh for dh, _ in moves} == {dw for _, dw in moves} == {-2, -1, 0, 1, 2}  # both axes, both ways


def test_cutout_zeroes_one_square_in_every_channel():
    """8 px images lose a 4x4 square (50% of the side) per image, clipped where it crosses the border."""
    ones = torch.ones(32, 3, 8, 8)
    cut = diff_augment(ones, "cutout", torch.Generator().manual_seed(0))
    assert torch.equal(cut[:, 0], cut[:, 1]) and torch.equal(cut[:, 0], cut[:, 2])  # the same hole in every channel
    assert set(cut.unique().tolist()) == {0.0, 1.0}
    sides = []
    for img in cut[:, 0]:
        rows, cols = (img == 0).any(1).nonzero().flatten(), (img == 0).any(0).nonzero().flatten()
        assert len(rows) and len(cols), "no hole"
        # one rectangle: every pixel in the rows and columns it spans is zero, and nothing else is
        assert (img[rows.min():rows.max() + 1, cols.min():cols.max() + 1] == 0).all()
        assert int((img == 0).sum()) == len(rows) * len(cols)
        for idx in (rows, cols):
            assert torch.equal(idx, torch.arange(idx.min(), idx.max() + 1))  # contiguous
            touches_border = idx.min() == 0 or idx.max() == 7
            assert len(idx) == 4 or (touches_border and len(idx) < 4)
        sides.append((len(rows), len(cols)))
    assert sides.count((4, 4)) >= 8 and len(set(sides)) > 1  # whole squares inside, clipped ones at the border


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
