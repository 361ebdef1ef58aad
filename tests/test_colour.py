import pytest
import torch

from gan_dist.evaluation.colour import (
    DriftTracker,
    colour_gap,
    colour_report,
    colour_stats,
)


def rgb(r, g, b, size=4, n=2):
    """A batch of flat images of one colour given on the [0, 1] scale, returned in [-1, 1]."""
    img = torch.tensor([r, g, b]).view(1, 3, 1, 1).expand(n, 3, size, size)
    return img * 2 - 1


def test_flat_colours_have_known_saturation_and_no_contrast():
    s = colour_stats(rgb(1.0, 0.0, 0.0))
    assert s["saturation"] == pytest.approx(1.0) and s["contrast"] == pytest.approx(0.0, abs=1e-7)
    assert (s["mean_r"], s["mean_g"], s["mean_b"]) == pytest.approx((1.0, 0.0, 0.0))
    assert s["std_r"] == pytest.approx(0.0, abs=1e-7)
    assert colour_stats(rgb(0.8, 0.4, 0.4))["saturation"] == pytest.approx(0.5)
    assert colour_stats(rgb(0.5, 0.5, 0.5))["saturation"] == pytest.approx(0.0)
    assert colour_stats(rgb(0.0, 0.0, 0.0))["saturation"] == 0.0  # black: S defined as 0


def test_checkerboard_contrast_and_greyscale():
    board = (torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2  # 0/1 checkerboard
    grey = board.float().mul(0.6).add(0.2)[None, None].expand(3, 1, 8, 8) * 2 - 1  # values 0.2 and 0.8
    s = colour_stats(grey)
    assert s["contrast"] == pytest.approx(0.3)  # RMS contrast: std of {0.2, 0.8} in equal parts
    assert s["mean_gray"] == pytest.approx(0.5) and s["std_gray"] == pytest.approx(0.3)
    assert s["saturation"] == 0.0
    with pytest.raises(ValueError, match="1 or 3 channels"):
        colour_stats(torch.zeros(1, 2, 4, 4))


def test_gap_and_report():
    gen, real = colour_stats(rgb(0.8, 0.4, 0.4)), colour_stats(rgb(0.6, 0.6, 0.6))
    assert colour_gap(gen, real)["saturation"] == pytest.approx(0.5)
    row = colour_report(gen, real)
    assert row["gen_saturation"] == pytest.approx(0.5) and row["real_saturation"] == pytest.approx(0.0)
    assert row["gap_mean_r"] == pytest.approx(0.2)


def test_tracker_warns_only_after_consecutive_growth():
    tracker = DriftTracker(keys=("saturation",), patience=3)
    gaps = [0.01, 0.02, 0.05, 0.03, 0.04, 0.06, 0.09, 0.12]
    warned = [bool(tracker.update({"gap_saturation": g}, step)) for step, g in enumerate(gaps)]
    # growth streak broken at 0.03; three growths in a row (0.03->0.04->0.06->0.09) warn from step 6
    assert warned == [False, False, False, False, False, False, True, True]
    message = tracker.update({"gap_saturation": 0.2}, 8)[0]
    assert "saturation" in message and "above" in message and "grown 5 evaluations" in message
    assert tracker.update({"gap_saturation": -0.01}, 9) == []  # smaller gap: the streak ends


def test_tracker_state_round_trip_and_negative_gaps():
    a = DriftTracker(patience=2)
    for step, g in enumerate([-0.01, -0.02]):
        a.update({"gap_contrast": g, "gap_saturation": 0.0}, step)
    b = DriftTracker(patience=2)
    b.load_state_dict(a.state_dict())
    messages = b.update({"gap_contrast": -0.04, "gap_saturation": 0.0}, 2)
    assert len(messages) == 1 and "contrast" in messages[0] and "below" in messages[0]
