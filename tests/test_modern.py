"""The modern recipe end to end: presets resolved into args.json, exact resume with --mirror and penalties,
the resnet checkpoint sampled, and a short run that learns digits."""
import json

import pytest
import torch
from conftest import run_here
from conftest import train_rows as rows
from safetensors.torch import load_file
from test_learning import digit_score

from gan_dist.evaluation.digits import channel_features, fit_judge
from gan_dist.networks.models import GANConfig, build_models, generate
from gan_dist.training.options import GAMMA_FOR_RES, parse_args
from gan_dist.training.presets import modern_values

TINY = ("--widths", "32,32,16,8", "--group_size", "8", "--latent_dim", "32")


def train(data, out, *extra):
    return run_here("gan_dist.train", "--cpu", "--data", data, "--img_size", 32, "--channels", 1,
                    "--batch_size", 16, "--n_cpu", 0, "--output_dir", out, "--report_to", "none", *extra)


def test_default_flags_are_the_vanilla_recipe():
    args = parse_args(["--data", "x"])
    assert (args.preset, args.arch, args.loss, args.lr_g, args.lr_d, args.betas_g, args.betas_d) == (
        "vanilla", "mlp", "bce", 0.0002, 0.0002, [0.5, 0.999], [0.5, 0.999])
    assert (args.r1_gamma, args.r2_gamma, args.schedule, args.mirror, args.ema_kimg, args.ema_rampup) == (
        0.0, 0.0, "constant", False, 10.0, None)


def test_modern_preset_and_explicit_flags_override_it():
    args = parse_args(["--data", "x", "--preset", "modern", "--img_size", "64"])
    assert (args.arch, args.loss, args.betas_g, args.schedule) == ("resnet", "rpgan", [0.0, 0.99], "cosine")
    assert args.r1_gamma == args.r2_gamma == modern_values(args.size, 64)["r1_gamma"]
    args = parse_args(["--data", "x", "--preset", "modern", "--img_size", "32", "--r2_gamma", "0", "--lr", "1e-3",
                       "--lr_d", "5e-4", "--b1", "0.5", "--betas_d", "0.1,0.9", "--arch", "dcgan"])
    assert (args.r1_gamma, args.r2_gamma, args.lr_g, args.lr_d) == (GAMMA_FOR_RES[32], 0.0, 1e-3, 5e-4)
    assert (args.betas_g, args.betas_d, args.arch) == ([0.5, 0.99], [0.1, 0.9], "dcgan")


@pytest.mark.parametrize("argv,message", [
    (["--loss", "wgan"], "invalid choice: 'wgan'"),
    (["--r1_gamma", "-1"], "--r1_gamma must be >= 0"),
    (["--reg_every", "0"], "--reg_every must be >= 1"),
    (["--betas_d", "0.9"], "expected B1,B2"),
    (["--betas_g", "0.5,1.5"], "Adam betas must lie in [0, 1)"),
    (["--lr_d", "0"], "--lr_d (or --lr) must be > 0"),
    (["--arch", "resnet", "--img_size", "48"], "32, 64, 128 or 256"),
    (["--arch", "resnet", "--img_size", "32", "--widths", "64,64"], "needs 4 values"),
    (["--arch", "resnet", "--img_size", "32", "--mapping_layers", "17"], "--mapping_layers must be an integer from 0"),
    (["--batch_size", "6", "--pacgan", "4"], "--batch_size 6 does not split into groups of --pacgan 4"),
    (["--pacgan", "0"], "--pacgan must be an integer from 1 to 16"),
    (["--arch", "resnet", "--img_size", "32", "--blocks", "2,x"], "expected a block count or one per stage"),
    (["--arch", "resnet", "--img_size", "32", "--batch_size", "12", "--mbstd_group", "8"],
     "gives D 12 inputs a step, which do not split into groups of --mbstd_group 8"),
    (["--mbstd_group", "4"], "--mbstd_group is for --arch resnet, got --arch mlp"),
    (["--arch", "resnet", "--img_size", "32", "--mbstd_group", "-1"], "--mbstd_group must be an integer from 0 to 64"),
])
def test_bad_recipe_flags_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--data", "x", *argv])
    err = capsys.readouterr().err
    assert "error:" in err and message in err, err


def test_modern_resume_with_mirror_and_lazy_penalties_is_bit_exact(tmp_path, digits32):
    # the cosine schedule spans --schedule_kimg, not the (shorter) first run
    common = ("--preset", "modern", *TINY, "--mapping_layers", 2, "--pacgan", 2, "--mbstd_group", 4, "--mirror",
              "--reg_every", "2", "--r1_gamma", "1", "--log_steps", 2, "--schedule_kimg", 6 * 16 / 1000,
              "--checkpointing_steps", 4, "--sample_interval", 100)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    r = train(digits32, straight, "--max_train_steps", 6, *common)
    assert r.returncode == 0, r.stderr[-3000:]
    assert train(digits32, resumed, "--max_train_steps", 4, *common).returncode == 0
    r = train(digits32, resumed, "--max_train_steps", 6, "--resume_from_checkpoint", "latest", *common)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stdout
    for name in ("model.safetensors", "model_1.safetensors", "G_ema.safetensors"):
        a = load_file(straight / "checkpoints" / "checkpoint-6" / name)
        b = load_file(resumed / "checkpoints" / "checkpoint-6" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    logged = rows(straight)
    assert "r1" in logged[0] and "r2" in logged[0]  # penalties logged on the steps that apply them
    args = json.loads((straight / "args.json").read_text())
    assert (args["arch"], args["loss"], args["betas_d"], args["r1_gamma"], args["r2_gamma"], args["mirror"]) == (
        "resnet", "rpgan", [0.0, 0.99], 1.0, modern_values("small", 32)["r2_gamma"], True)  # --cpu: size small
    meta = json.loads((straight / "checkpoints" / "checkpoint-6" / "gan.json").read_text())
    assert meta["gan_config"]["widths"] == [32, 32, 16, 8] and meta["gan_config"]["arch"] == "resnet"
    assert meta["gan_config"]["mapping_layers"] == 2  # gan_dist.sample below rebuilds G's mapping MLP from it
    assert meta["gan_config"]["pacgan"] == 2 and meta["gan_config"]["mbstd_group"] == 4

    grid = tmp_path / "grid.png"
    r = run_here("gan_dist.sample", "--checkpoint", straight, "--n", 4, "--grid", grid)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "EMA weights" in r.stdout and grid.is_file()


LEARN_STEPS = 120


def test_modern_preset_learns_digits(tmp_path, digits32):
    """A tiny, short modern run (rpgan, R1 + R2, G_ema) must draw clearly more readable and varied digits than
    its untrained G. Judge: the bench's SVM on the digits' 8x8 grid (a logistic regression on raw pixels is
    fooled by untrained noise here); score: test_learning's digit score (1 = one thing or nothing, 10 = all ten).
    About 4,000 images is early for this recipe (shapes, not yet clean digits), hence the modest margin."""
    clf, accuracy, _ = fit_judge()
    assert accuracy > 0.95
    out = tmp_path / "run"
    r = train(digits32, out, "--preset", "modern", *TINY, "--batch_size", 32, "--lr", "1e-3",
              "--max_train_steps", LEARN_STEPS, "--checkpointing_steps", LEARN_STEPS,
              "--sample_interval", LEARN_STEPS, "--log_steps", 40)
    assert r.returncode == 0, r.stderr[-2000:]
    ckpt = out / "checkpoints" / f"checkpoint-{LEARN_STEPS}"
    cfg = GANConfig(**json.loads((ckpt / "gan.json").read_text())["gan_config"])
    torch.manual_seed(0)  # the trainer's initial weights (seed 0)
    untrained, _ = build_models(cfg)
    trained, _ = build_models(cfg)
    trained.load_state_dict(load_file(ckpt / "G_ema.safetensors"))
    z = torch.randn(1000, cfg.latent_dim, generator=torch.Generator().manual_seed(123))
    scores = {name: digit_score(clf.predict_proba(channel_features(generate(G, z))))
              for name, G in (("untrained", untrained), ("trained", trained))}
    print(f"digit score: trained G_ema {scores['trained']:.2f}, untrained {scores['untrained']:.2f}")
    assert scores["trained"] > 1.35 * scores["untrained"]
