"""--size: the networks' table, the modern preset per size, the banner's figures, and old checkpoints."""
import json
import re

import pytest
import torch
import torch.nn as nn
from conftest import call_main

from gan_dist.evaluation.sample import load_generator
from gan_dist.networks.figures import describe, network_figures, network_params
from gan_dist.networks.models import GANConfig, build_models, count_params
from gan_dist.networks.sizes import SIZES, TABLE
from gan_dist.train import main as train_main
from gan_dist.training.options import gan_config, parse_args

# the flags the README's modern row and configs/modern-digits.yaml's ten-digit run were measured with, before --size
MEASURED_MODERN = ["--widths", "256,128,32,16", "--expansion", "1", "--group_size", "16", "--r1_gamma", "2",
                   "--r2_gamma", "2", "--lr", "0.001", "--reg_every", "4", "--mbstd_group", "4",
                   "--gamma_end_ratio", "1"]
MEASURED_DIGITS = ["--widths", "256,128,32,16", "--expansion", "1", "--group_size", "16", "--r1_gamma", "0.5",
                   "--r2_gamma", "0.5", "--lr", "0.001", "--reg_every", "4", "--mapping_layers", "4",
                   "--mbstd_group", "0", "--gamma_end_ratio", "0.1"]  # the last two: the defaults then


def args_for(*flags, img_size=32, channels=3):
    return parse_args(["--data", "x", "--img_size", str(img_size), "--channels", str(channels), *map(str, flags)])


def block_params(w, expansion, group_size):
    """A residual block: 1x1 up, learned bias, grouped 3x3, learned bias, 1x1 down (convs without bias)."""
    e = w * expansion
    return w * e + e + e * group_size * 9 + e + e * w


def expected_params(row, latent_dim, channels, mbstd_group):
    """(G, D) parameters of a resnet pair with the table's row, counted from the architecture on paper."""
    ws, stage = row.widths, [row.blocks * block_params(w, row.expansion, row.group_size) for w in row.widths]
    changes = sum(a * b for a, b in zip(ws, ws[1:]) if a != b)  # 1x1 convs where the width changes
    G = ws[0] * 16 + latent_dim * ws[0] + sum(stage) + changes + ws[-1] * channels
    mbstd = (ws[0] + 1) * ws[0] + ws[0] if mbstd_group else 0
    D = channels * ws[-1] + sum(stage) + changes + mbstd + ws[0] * 16 + ws[0] + 1
    return G, D


@pytest.mark.parametrize("size", SIZES)
def test_parameter_counts_per_size_and_resolution(size):
    for img_size, row in TABLE[size].items():
        args = args_for("--preset", "modern", "--size", size, img_size=img_size)
        assert tuple(args.widths) == row.widths and args.blocks == row.blocks
        expected = expected_params(row, args.latent_dim, 3, args.mbstd_group)
        assert network_params(gan_config(args)) == expected, (size, img_size)
        assert all(w * row.expansion % row.group_size == 0 for w in row.widths)  # whole groups at every stage
    # the small nets stay CPU-sized at every resolution, base and large hold R3GAN's tens of millions
    most = {"small": 1e6, "base": 30e6, "large": 150e6}[size]
    least = {"small": 1e5, "base": 15e6, "large": 50e6}[size]
    assert all(least < n < most for r in TABLE[size] for n in
               network_params(gan_config(args_for("--preset", "modern", "--size", size, img_size=r))))


def test_base_and_large_hold_r3gans_cardinality():
    # R3GAN's train.py: CIFAR10 / FFHQ 96 groups at 768 channels, 48 at 384; ImageNet 96 at 1536
    assert TABLE["base"][64].cardinality() == (96, 96, 96, 96, 48)
    assert TABLE["base"][256].cardinality() == (96, 96, 96, 96, 48, 24, 12)
    assert TABLE["large"][64].cardinality() == (96,) * 5


def test_small_preset_is_the_measured_recipe():
    """--preset modern --size small resolves to exactly the nine flags the benchmark measured."""
    for ours, measured in ((["--size", "small"], MEASURED_MODERN),
                           (["--size", "small", "--r1_gamma", "0.5", "--r2_gamma", "0.5", "--mbstd_group", "0",
                             "--gamma_end_ratio", "0.1", "--mapping_layers", "4"], MEASURED_DIGITS)):
        a = vars(args_for("--preset", "modern", "--arch", "resnet", *ours))
        b = vars(args_for("--preset", "modern", "--cpu", *measured))  # the benchmark ran with --cpu: size small
        assert a.pop("size") == "small" and b.pop("size") == "small" and b.pop("cpu") and not a.pop("cpu")
        a.pop("size_reason"), b.pop("size_reason")
        assert a == b


def test_explicit_flags_win_over_the_size():
    args = args_for("--preset", "modern", "--size", "base", "--widths", "64,64,32,16", "--lr", "0.003",
                    "--reg_every", "2", "--blocks", "1")
    assert (args.widths, args.blocks, args.expansion, args.group_size) == ([64, 64, 32, 16], 1, 2, 16)
    assert (args.lr, args.reg_every, args.r1_gamma, args.mbstd_group) == (0.003, 2, 0.05, 0)
    assert "given: --widths --blocks" in args.size_reason
    # --width (one count, halved above 32 px) wins over the size's widths as well
    assert args_for("--preset", "modern", "--size", "large", "--width", "32").widths is None
    # without --preset modern a size picks the networks and nothing else
    args = args_for("--arch", "resnet", "--size", "small")
    assert args.widths == [256, 128, 32, 16] and (args.lr, args.reg_every, args.mbstd_group) == (0.0002, 1, 0)


def test_default_size_follows_the_device(monkeypatch):
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    args = args_for("--preset", "modern", "--cpu")
    assert (args.size, args.size_reason) == ("small", "the default on the CPU (--cpu)")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    args = args_for("--preset", "modern", img_size=64)
    assert (args.size, args.size_reason, args.lr) == ("base", "the default on a CUDA GPU", 0.0002)
    assert args.widths == [768, 768, 768, 768, 384] and args.r1_gamma == 2.0
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    assert args_for("--preset", "modern").size == "small"
    assert args_for("--preset", "vanilla").size is None and args_for("--arch", "resnet").size is None


def test_size_is_refused_off_resnet(capsys):
    with pytest.raises(SystemExit):
        args_for("--preset", "modern", "--arch", "dcgan", "--size", "small")
    assert "--size picks --arch resnet networks, not --arch dcgan; drop --size" in capsys.readouterr().err


def test_a_size_round_trips_through_args_json(tmp_path, monkeypatch):
    # chosen on a GPU, repeated on the CPU: the file names the size, so the networks are the same
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    args = args_for("--preset", "modern", "--r2_gamma", "1")
    assert args.size == "base"
    path = tmp_path / "args.json"
    path.write_text(json.dumps(vars(args)))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    again = parse_args(["--config", str(path)])
    assert (again.size, again.r2_gamma, again.reg_every) == ("base", 1.0, 1) and again.size_reason.startswith("--size")
    assert gan_config(again) == gan_config(args)
    assert network_params(gan_config(again)) == network_params(gan_config(args))


def module_flops(model, x):
    """2 x the multiply-adds of the model's Conv2d and Linear layers on x, counted from their weights by hooks."""
    total = []

    def hook(layer, _, out):
        per_output = layer.weight[0].numel()  # in / groups x kernel: the multiply-adds behind one output value
        total.append(2 * per_output * out.numel())
    for layer in model.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            layer.register_forward_hook(hook)
    with torch.no_grad():
        model(x)
    return sum(total)


def test_flops_per_image_counts_the_layers():
    cfg = GANConfig("resnet", latent_dim=32, img_size=32, channels=3, widths=(64, 64, 32, 16), group_size=8,
                    mbstd_group=4)
    figures = network_figures(cfg)
    f_G, f_D = figures["G_gflops"] * 1e9, figures["D_gflops"] * 1e9
    G, D = build_models(cfg)
    G.eval(), D.eval()
    g_layers, d_layers = module_flops(G, torch.zeros(1, 32)), module_flops(D, torch.zeros(1, 3, 32, 32))
    # the counter also sees the [1, 2, 1] resampling convs (depthwise: a few percent), not elementwise work
    assert g_layers < f_G < 1.1 * g_layers and d_layers < f_D < 1.1 * d_layers


def test_banner_prints_the_models_figures_and_old_resnet_checkpoints_load(tmp_path, digits32, capsys, fresh_state):
    net = ["--arch", "resnet", "--widths", "32,32,16,8", "--group_size", "8", "--latent_dim", "32"]
    common = ["--cpu", "--data", digits32, "--img_size", 32, "--channels", 1, "--batch_size", 8, "--n_cpu", 0,
              "--report_to", "none", "--checkpointing_steps", 2, "--sample_interval", 100, "--log_steps", 1]
    old = tmp_path / "old"  # networks named flag by flag with no --size: gan.json as it was before sizes
    code, out, err = call_main(train_main, capsys, *common, *net, "--max_train_steps", 2, "--output_dir", old)
    assert code == 0, err
    checkpoint = old / "checkpoints" / "checkpoint-2"
    meta = json.loads((checkpoint / "gan.json").read_text())["gan_config"]
    assert "size" not in meta and meta["widths"] == [32, 32, 16, 8]
    G, _ = load_generator(checkpoint)
    cfg = GANConfig.from_dict(meta)
    n_G, n_D = (count_params(m) for m in build_models(cfg))
    assert count_params(G) == n_G
    banner = re.search(r"G ([\d.]+)M parameters, ([\d.]+) GFLOPs per image; D ([\d.]+)M parameters", out)
    assert banner and (float(banner[1]), float(banner[3])) == (round(n_G / 1e6, 2), round(n_D / 1e6, 2))
    assert describe(network_figures(cfg)) in out and "size " not in out
    # the modern preset resumes it (in another directory: this process holds the first one's lock) with --size
    # small's recipe and the networks as saved
    new = tmp_path / "new"
    code, out, err = call_main(train_main, capsys, *common, *net, "--preset", "modern", "--expansion", "2",
                               "--mbstd_group", "0", "--max_train_steps", 4, "--output_dir", new,
                               "--resume_from_checkpoint", checkpoint)
    assert code == 0, err
    assert "resumed from" in out and "size small (the default on the CPU (--cpu); given: --widths --expansion " \
                                     "--group_size)" in out
    assert json.loads((new / "checkpoints" / "checkpoint-4" / "gan.json").read_text())["gan_config"]["size"] == "small"
