"""--aug ada: the pipeline's transforms, the p controller (one process and 2 gloo ranks), exact resume, the flags."""
import json
import math
import sys
from types import SimpleNamespace

import pytest
import torch
from conftest import ROOT, call_main, finish, launch
from conftest import train_rows as rows
from safetensors.torch import load_file

from gan_dist.networks.ada import PIPES, TRANSFORMS, AugmentPipe
from gan_dist.training.augmentation import AdaptiveAugment, valid_state
from gan_dist.training.options import parse_args

RGB_ONLY = {"hue", "saturation"}  # they leave grey images alone


def batch(n=8, c=3, size=16, seed=0):
    return torch.rand(n, c, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def augmented(x, transforms, p=1.0, step=1, rank=0):
    pipe = AugmentPipe(transforms)
    pipe.p.fill_(p)
    pipe.reseed(step, rank)
    return pipe(x)


@pytest.mark.parametrize("name", TRANSFORMS)
def test_each_transform_is_differentiable_and_seeded(name):
    x = batch(c=3).requires_grad_(True)
    out = augmented(x, (name,))
    assert out.shape == x.shape and not torch.equal(out, x)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (grad,) = torch.autograd.grad((out * weights).sum(), x)
    assert grad.abs().sum() > 0 and torch.isfinite(grad).all()  # gradients reach the input images
    assert torch.equal(out, augmented(x, (name,)))  # the same (seed, step, rank): the same images
    assert not torch.equal(out, augmented(x, (name,), step=2)) and not torch.equal(out, augmented(x, (name,), rank=1))


@pytest.mark.parametrize("pipe", PIPES)
@pytest.mark.parametrize("channels", [1, 3])
def test_p_zero_is_the_identity_and_p_one_changes_every_image(pipe, channels):
    x = batch(c=channels)
    assert torch.equal(augmented(x, pipe, p=0.0), x)
    changed = (augmented(x, pipe, p=1.0) != x).flatten(1).any(1)
    assert changed.all(), f"{pipe}: {int((~changed).sum())} images untouched at p = 1"


def test_about_p_of_the_images_get_each_transform():
    x = batch(n=2000, c=1, size=8)
    changed = (augmented(x, ("contrast",), p=0.3) != x).flatten(1).any(1).float().mean()
    assert 0.26 < changed < 0.34


def test_blit_transforms_move_pixels_whole():
    x = batch(n=16, c=1)
    flipped = augmented(x, ("xflip",))
    for img, out in zip(x, flipped):  # half flipped, half as they were (p = 1 draws flip or not)
        assert torch.allclose(out, img, atol=1e-5) or torch.allclose(out, img.flip(-1), atol=1e-5)
    turned = augmented(x, ("rotate90",))
    for img, out in zip(x, turned):
        assert any(torch.allclose(out, torch.rot90(img, k, (-2, -1)), atol=1e-5) for k in range(4))
    shifted = augmented(x, ("xint",))  # up to 1/8 of 16 px = 2 px; the border is mirrored, the inside moves whole
    for img, out in zip(x, shifted):
        found = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                 if torch.allclose(out[:, 2:-2, 2:-2], torch.roll(img, (dy, dx), (-2, -1))[:, 2:-2, 2:-2], atol=1e-5)]
        assert len(found) == 1


def test_colour_transforms():
    x = batch(n=16, c=1)
    bright = augmented(x, ("brightness",)) - x  # one offset per image
    assert torch.allclose(bright, bright.mean(dim=(1, 2, 3), keepdim=True).expand_as(bright), atol=1e-5)
    contrast = augmented(x, ("contrast",)) / x  # one gain per image, around 0 (mid-grey)
    assert torch.allclose(contrast, contrast.mean(dim=(1, 2, 3), keepdim=True).expand_as(contrast), atol=1e-4)
    for img, out in zip(x, augmented(x, ("lumaflip",))):  # grey: the flip about the grey axis negates
        assert torch.allclose(out, img, atol=1e-6) or torch.allclose(out, -img, atol=1e-6)
    rgb = batch(n=16, c=3)
    for name in ("hue", "saturation"):  # keep each pixel's grey level (the mean of R, G and B)
        out = augmented(rgb, (name,))
        assert torch.allclose(out.mean(1), rgb.mean(1), atol=1e-5) and not torch.allclose(out, rgb, atol=1e-3)
        assert torch.equal(augmented(x, (name,)), x)


def test_cutout_zeroes_a_square_of_half_the_side():
    cut = augmented(torch.ones(32, 3, 16, 16), ("cutout",))
    for img in cut[:, 0]:
        rows_, cols = (img == 0).any(1).nonzero().flatten(), (img == 0).any(0).nonzero().flatten()
        assert 0 < len(rows_) <= 8 and 0 < len(cols) <= 8  # 8 x 8, less where it crosses the border
        assert int((img == 0).sum()) == len(rows_) * len(cols)
    assert torch.equal(cut[:, 0], cut[:, 2]) and (cut == 0).float().mean() > 0.1


def test_dtype_and_memory_format_are_kept():
    x = batch().to(memory_format=torch.channels_last)
    out = augmented(x, "bgc", p=0.5)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert augmented(x.bfloat16(), "bgc", p=0.5).dtype == torch.bfloat16


def test_unknown_pipe_is_refused():
    with pytest.raises(ValueError, match="unknown --aug_pipe 'bgcf'; choose one of blit"):
        AugmentPipe("bgcf")


# ---- the controller

class OneProcess:
    """The accelerator's reduce for one process."""
    process_index, num_processes = 0, 1

    @staticmethod
    def reduce(tensor, reduction):
        return tensor.clone()


def record(real, fake=None):
    return SimpleNamespace(real_logits=torch.tensor(real), fake_logits=torch.tensor(fake or [0.0] * len(real)))


def controller(target=0.6, p=0.0, relative=False, interval=4, kimg=1.0):
    return AdaptiveAugment("bgc", 0, "cpu", 0, target, interval, kimg, global_batch=8, relative=relative, p=p)


def test_p_moves_towards_the_target_and_stays_at_or_above_zero():
    step = 8 * 4 / 1000  # global batch x interval / (aug_kimg x 1000)
    ada = controller()
    for s in range(1, 9):  # r_t = 1 (every real above 0) > 0.6: p rises at every 4th step
        ada.observe(record([1.0, 2.0, 0.5, 3.0, 1.0, 1.0, 1.0, 1.0]), s, OneProcess)
        assert float(ada.p) == pytest.approx(step * (s // 4))
    assert ada.log_row() == {"aug_p": pytest.approx(2 * step), "aug_rt": 1.0}
    ada = controller(p=0.1)
    for s in range(1, 5):  # r_t = (5 - 3) / 8 = 0.25 < 0.6: p falls
        ada.observe(record([1.0, 1.0, 1.0, 1.0, 1.0, -1.0, -1.0, -1.0]), s, OneProcess)
    assert float(ada.p) == pytest.approx(0.1 - step) and ada.log_row()["aug_rt"] == 0.25
    for s in range(5, 41):
        ada.observe(record([-1.0] * 8), s, OneProcess)
    assert float(ada.p) == 0.0  # clamped
    assert ada.log_row() == {"aug_p": 0.0, "aug_rt": -1.0}


def test_relativistic_r_t_compares_each_real_with_its_fake():
    ada = controller(relative=True)  # --loss rpgan: D's outputs have no zero of their own
    for s in range(1, 5):
        ada.observe(record([-5.0] * 4, [-6.0] * 4), s, OneProcess)
    assert ada.log_row()["aug_rt"] == 1.0 and float(ada.p) > 0


def test_fixed_p_does_not_move_but_r_t_is_logged():
    ada = controller(target=None, p=0.3)
    for s in range(1, 9):
        ada.observe(record([1.0] * 8), s, OneProcess)
    assert ada.log_row() == {"aug_p": pytest.approx(0.3), "aug_rt": 1.0}


def test_state_round_trip_keeps_the_pending_signs():
    ada = controller()
    for s in range(1, 7):  # steps 5 and 6 are pending at a save after step 6
        ada.observe(record([1.0, -1.0, 1.0, 1.0]), s, OneProcess)
    state = ada.state_dict(OneProcess)
    assert state == {"p": float(ada.p), "signs": 4.0, "count": 8.0} and valid_state(json.loads(json.dumps(state)))
    again = controller()
    again.load_state_dict(state)
    for a in (ada, again):
        a.observe(record([1.0, -1.0, 1.0, 1.0]), 7, OneProcess)
        a.observe(record([1.0, -1.0, 1.0, 1.0]), 8, OneProcess)
    assert torch.equal(ada.p, again.p) and ada.log_row()["aug_rt"] == again.log_row()["aug_rt"] == 0.5
    for bad in ({"p": -1, "signs": 0, "count": 0}, {"p": 0.1, "signs": 5, "count": 4},
                {"p": math.nan, "signs": 0, "count": 0}, {"p": 0.1, "signs": 0.5, "count": 4}, {"p": 0.1}, [0.1]):
        assert not valid_state(bad), bad


def test_two_ranks_with_different_logits_get_the_same_p():
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           ROOT / "tests" / "ada_ranks_check.py"]
    r = finish(*launch(cmd, timeout=120))
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("same p") == 2, r.stdout + r.stderr[-3000:]


# ---- R1 through the pipeline

def test_r1_is_taken_on_the_reals_before_augmentation(fresh_state):
    from accelerate import Accelerator

    from gan_dist.networks.losses import gradient_penalty
    from gan_dist.networks.models import GANConfig, build_models
    from gan_dist.training.step import GANStep, adam
    acc = Accelerator(cpu=True)
    torch.manual_seed(0)
    G, D = build_models(GANConfig("mlp", latent_dim=8, img_size=8, channels=1))
    opt_G, opt_D = (adam(n.parameters(), 0.0, (0.5, 0.999), acc.device) for n in (G, D))
    pipe = AugmentPipe(("contrast", "scale"))  # both change the input gradient's size
    pipe.p.fill_(1.0)
    step = GANStep(acc, G, D, opt_G, opt_D, loss="bce", augment=pipe)
    real, z = batch(n=16, c=1, size=8), torch.randn(16, 8)
    pipe.reseed(3)
    d, _ = step(real, z, r1_gamma=1.0)
    pipe.reseed(3)  # the D phase's first draw augments the reals
    x = real.clone().requires_grad_(True)
    seen = pipe(x)
    before = gradient_penalty(D(seen), x)
    after_in = seen.detach().requires_grad_(True)
    after = gradient_penalty(D(after_in), after_in)
    assert d.penalties["r1"] == pytest.approx(before.item(), rel=1e-5)
    assert abs(before.item() - after.item()) > 1e-3 * after.item()  # the two choices differ here


# ---- a run: flags, logging, exact resume

def test_a_run_with_ada_resumes_exactly(tmp_path, digits16, capsys, fresh_state):
    """8 steps straight, or 5 (a checkpoint between two adjustments of p), then 3 more from the checkpoint:
    the same rows (p, r_t, losses), the same p and pending signs in gan.json, the same weights."""
    from accelerate.state import AcceleratorState

    from gan_dist.train import main as train_main
    common = ("--cpu", "--data", digits16, "--img_size", 16, "--channels", 1, "--batch_size", 16, "--n_cpu", 0,
              "--report_to", "none", "--log_steps", 2, "--checkpointing_steps", 5, "--sample_interval", 100,
              "--aug", "ada", "--aug_kimg", 0.5, "--aug_target", 0.5, "--r1_gamma", 0.1)
    # the second part in a directory of its own: this process keeps the first part's directory locked
    straight, first, second = tmp_path / "straight", tmp_path / "first", tmp_path / "second"
    five = first / "checkpoints" / "checkpoint-5"
    for out, steps, more in ((straight, 8, ()), (first, 5, ()), (second, 8, ("--resume_from_checkpoint", five))):
        code, _, err = call_main(train_main, capsys, *common, "--output_dir", out, "--max_train_steps", steps, *more)
        assert code == 0, err[-2000:]
        AcceleratorState._reset_state(reset_partial_state=True)
    timing = {"img_per_s", "sec_per_step", "data_wait"}
    a, b = ([{k: v for k, v in row.items() if k not in timing} for row in rows(out)] for out in (straight, first))
    b += [{k: v for k, v in row.items() if k not in timing} for row in rows(second)]
    assert a == b and [row["step"] for row in a] == [2, 4, 5, 6, 8]
    # adjusted at steps 4 and 8 (r_t above the target: D is right on most reals), by 16 x 4 / 500 each
    assert [row["aug_p"] for row in a if "aug_rt" in row] == pytest.approx([0.128, 0.256])
    metas = [json.loads((out / "checkpoints" / "checkpoint-8" / "gan.json").read_text()) for out in (straight, second)]
    assert metas[0]["augment"] == metas[1]["augment"] and metas[0]["augment"]["count"] == 0
    # step 5's signs, counted after the adjustment at step 4
    assert json.loads((five / "gan.json").read_text())["augment"]["count"] == 16
    for name in ("model.safetensors", "model_1.safetensors", "G_ema.safetensors"):
        w = [load_file(out / "checkpoints" / "checkpoint-8" / name) for out in (straight, second)]
        assert all(torch.equal(w[0][k], w[1][k]) for k in w[0]), name


@pytest.mark.parametrize("argv,message", [
    (["--aug", "ada", "--aug_p", "1.5"], "--aug_p must be in [0, 1]"),
    (["--aug", "ada", "--aug_target", "-0.1"], "--aug_target must be in [0, 1]"),
    (["--aug", "ada", "--aug_interval", "0"], "--aug_interval must be >= 1"),
    (["--aug", "ada", "--aug_kimg", "0"], "--aug_kimg must be > 0"),
    (["--aug", "ada", "--aug_kimg", "inf"], "--aug_kimg must be > 0 and finite"),
    (["--aug", "ada", "--aug_p", "0.2", "--aug_target", "0.6"], "give one of the two"),
    (["--aug", "ada", "--aug_pipe", "bgcf"], "invalid choice: 'bgcf'"),
    (["--aug_pipe", "bgc"], "--aug_pipe is an option of --aug ada, not --aug none"),
    (["--diffaug", "color", "--aug_p", "0.3"], "--aug_p is an option of --aug ada, not --aug diffaug"),
    (["--aug", "ada", "--diffaug", "color"], "pass --aug diffaug or drop --diffaug"),
    (["--aug", "diffaug", "--diffaug", "hue"], "unknown DiffAugment policy hue")])
def test_bad_aug_options_are_refused(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        parse_args(["--data", "d", *argv])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_aug_defaults_and_the_config_file(tmp_path):
    assert parse_args(["--data", "d"]).aug == "none"
    assert parse_args(["--data", "d", "--diffaug", "color"]).aug == "diffaug"  # as before --aug existed
    args = parse_args(["--data", "d", "--aug", "ada"])
    assert (args.aug_pipe, args.aug_p, args.aug_target, args.aug_interval, args.aug_kimg) == ("bgc", None, 0.6, 4, 500)
    fixed = parse_args(["--data", "d", "--aug", "ada", "--aug_p", "0.2"])
    assert fixed.aug_p == 0.2 and fixed.aug_target is None
    config = tmp_path / "ada.yaml"
    config.write_text("data: d\naug: ada\naug_pipe: bgcnc\naug_target: 0.7\naug_kimg: 100\n")
    args = parse_args(["--config", str(config)])
    assert (args.aug, args.aug_pipe, args.aug_target, args.aug_kimg) == ("ada", "bgcnc", 0.7, 100)
    resolved = tmp_path / "args.json"  # a run's args.json, as setup writes it, repeats the run
    resolved.write_text(json.dumps({k: v for k, v in vars(args).items() if k != "config"}))
    again = parse_args(["--config", str(resolved)])
    assert (again.aug, again.aug_pipe, again.aug_target, again.aug_interval) == ("ada", "bgcnc", 0.7, 4)
