import json
import shutil

import pytest
import torch
from conftest import call_main, run_here
from PIL import Image
from safetensors.torch import load_file, save_file

from gan_dist.evaluation.sample import latents, load_generator, main, slerp
from gan_dist.packing.shard import pack
from gan_dist.training.ema import EMA_FILE


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """checkpoint-2 of a two-step CPU training run on 16x16 greyscale digits, without G_ema."""
    root = tmp_path_factory.mktemp("sample")
    pack("digits", root / "digits", size=16, channels=1)
    r = run_here("gan_dist.train", "--cpu", "--data", root / "digits", "--img_size", 16, "--channels", 1,
                 "--batch_size", 32, "--n_cpu", 0, "--max_train_steps", 2, "--output_dir", root / "run",
                 "--report_to", "none", "--ema_kimg", 0)
    assert r.returncode == 0, r.stderr[-3000:]
    return root / "run" / "checkpoints" / "checkpoint-2"


@pytest.fixture(scope="module")
def ema_checkpoint(checkpoint, tmp_path_factory):
    """A copy of the checkpoint with G_ema.safetensors: G's weights, all scaled by 0.5 (so it differs)."""
    copy = tmp_path_factory.mktemp("ema") / "checkpoint-2"
    shutil.copytree(checkpoint, copy)
    weights = load_file(copy / "model.safetensors")
    save_file({k: v * 0.5 if v.is_floating_point() else v for k, v in weights.items()}, copy / EMA_FILE)
    return copy


def sample(capsys, *args):
    """`python -m gan_dist.sample ARGS` in this process: (exit code, stdout, stderr)."""
    return call_main(main, capsys, *args, "--device", "cpu")


def test_grid_and_one_png_per_image(checkpoint, tmp_path):
    r = run_here("gan_dist.sample", "--checkpoint", checkpoint, "--n", 10, "--grid", tmp_path / "grid.png",
                 "--out_dir", tmp_path / "imgs", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert "the trained G (no EMA)" in r.stdout  # this checkpoint has no EMA weights: default falls back
    grid = Image.open(tmp_path / "grid.png")
    assert grid.size == (4 * 18 + 2, 3 * 18 + 2)  # 10 images in rows of ceil(sqrt(10)) = 4, 2 px padding
    files = sorted(p.name for p in (tmp_path / "imgs").iterdir())
    assert files == [f"{i:06d}.png" for i in range(10)]
    img = Image.open(tmp_path / "imgs" / "000003.png")
    assert img.size == (16, 16) and img.mode == "L"


def test_seed_and_truncation(checkpoint, tmp_path, capsys):
    for name, extra in (("a", ()), ("b", ()), ("c", ("--seed", 1)), ("d", ("--truncation", 0.5))):
        code, out, err = sample(capsys, "--checkpoint", checkpoint, "--n", 4, "--out_dir", tmp_path / name, *extra)
        assert code == 0, err
    read = lambda d: [Image.open(tmp_path / d / f"{i:06d}.png").tobytes() for i in range(4)]  # noqa: E731
    assert read("a") == read("b") and read("a") != read("c") and read("a") != read("d")
    assert torch.allclose(latents(3, 5, seed=0, truncation=0.5), latents(3, 5, seed=0) * 0.5)


def test_run_directory_means_its_latest_checkpoint(checkpoint, tmp_path, capsys):
    code, out, err = sample(capsys, "--checkpoint", checkpoint.parent.parent, "--n", 2, "--out_dir", tmp_path)
    assert code == 0, err
    assert "checkpoint-2" in out and len(list(tmp_path.glob("*.png"))) == 2


def test_interpolation_grid_gif_and_frames(checkpoint, tmp_path, capsys):
    code, out, err = sample(capsys, "--checkpoint", checkpoint, "--interpolate", "--n", 3, "--steps", 5,
                            "--grid", tmp_path / "walk.png", "--out_dir", tmp_path / "frames")
    assert code == 0, err
    assert Image.open(tmp_path / "walk.png").size == (5 * 18 + 2, 3 * 18 + 2)  # one walk per row
    assert len(list((tmp_path / "frames").glob("walk0002_*.png"))) == 5
    code, out, err = sample(capsys, "--checkpoint", checkpoint, "--interpolate", "--n", 4, "--steps", 6,
                            "--grid", tmp_path / "walk.gif")
    assert code == 0, err
    gif = Image.open(tmp_path / "walk.gif")
    assert gif.format == "GIF" and gif.n_frames == 2 * 6 - 2 and gif.size == (2 * 18 + 2, 2 * 18 + 2)


def test_slerp_ends_and_norm():
    a, b = torch.randn(2, 16, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(slerp(a, b, torch.tensor(0.0)), a, atol=1e-5)
    assert torch.allclose(slerp(a, b, torch.tensor(1.0)), b, atol=1e-5)
    mid = slerp(a, b, torch.tensor(0.5))
    assert mid.norm() > 0.9 * min(a.norm(), b.norm())  # no shrinking toward 0 as a straight line would


def test_ema_weights_are_used_when_present(checkpoint, ema_checkpoint, tmp_path, capsys):
    G_plain, used = load_generator(ema_checkpoint, ema=False)
    G_ema, used_ema = load_generator(ema_checkpoint)  # default: EMA when the checkpoint has it
    assert not used and used_ema
    name = next(k for k, v in G_plain.state_dict().items() if v.is_floating_point() and v.abs().sum() > 0)
    assert torch.allclose(G_ema.state_dict()[name], G_plain.state_dict()[name] * 0.5)
    assert not G_ema.training

    code, out, err = sample(capsys, "--checkpoint", ema_checkpoint, "--n", 2, "--out_dir", tmp_path / "ema", "--ema")
    assert code == 0 and f"EMA weights ({EMA_FILE})" in out, err
    code, out, err = sample(capsys, "--checkpoint", ema_checkpoint, "--n", 2, "--out_dir", tmp_path / "plain",
                            "--no-ema")
    assert code == 0 and "no EMA" in out, err
    first = [Image.open(tmp_path / d / "000000.png").tobytes() for d in ("ema", "plain")]
    assert first[0] != first[1]


def test_missing_ema_and_bad_options_say_so(checkpoint, tmp_path, capsys):
    code, out, err = sample(capsys, "--checkpoint", checkpoint, "--n", 2, "--out_dir", tmp_path, "--ema")
    assert code != 0 and f"has no EMA weights ({EMA_FILE})" in err and "--no-ema" in err
    code, out, err = sample(capsys, "--checkpoint", checkpoint, "--n", 2)
    assert code != 0 and "--grid" in err and "--out_dir" in err
    code, out, err = sample(capsys, "--checkpoint", checkpoint, "--grid", tmp_path / "x.gif")
    assert code != 0 and "--interpolate" in err
    code, out, err = sample(capsys, "--checkpoint", tmp_path / "nothing", "--grid", tmp_path / "x.png")
    assert code != 0 and "neither a checkpoint" in err


def test_gan_json_cannot_point_the_weights_outside_the_checkpoint(checkpoint, tmp_path):
    copy = tmp_path / "checkpoint-2"
    shutil.copytree(checkpoint, copy)
    outside = tmp_path / "elsewhere.safetensors"
    save_file({k: torch.zeros_like(v) for k, v in load_file(copy / "model.safetensors").items()}, outside)
    meta = json.loads((copy / "gan.json").read_text())
    meta["weights"]["G"] = str(outside)  # or "../elsewhere.safetensors"
    (copy / "gan.json").write_text(json.dumps(meta))
    G, _ = load_generator(copy, ema=False)
    inside = load_file(copy / "model.safetensors")  # the checkpoint's own G, not the zeros outside
    assert G.state_dict().keys() == inside.keys()
    assert all(torch.equal(v, inside[k]) for k, v in G.state_dict().items())
    assert any(v.abs().sum() > 0 for v in inside.values() if v.is_floating_point())


@pytest.mark.parametrize("damage,message", [
    ("gan.json", "gan.json is malformed"), ("sizes", "--img_size must be an integer from 1 to 1024"),
    ("mlp_too_big", "use --arch dcgan"), ("model.safetensors", "model.safetensors is damaged")])
def test_damaged_checkpoints_are_named(checkpoint, tmp_path, capsys, damage, message):
    copy = tmp_path / "checkpoint-2"
    shutil.copytree(checkpoint, copy)
    meta = json.loads((copy / "gan.json").read_text())
    if damage == "sizes":
        meta["gan_config"]["img_size"] = 10**9  # would ask for petabytes
        (copy / "gan.json").write_text(json.dumps(meta))
    elif damage == "mlp_too_big":
        meta["gan_config"].update(img_size=1024, channels=3)
        (copy / "gan.json").write_text(json.dumps(meta))
    else:
        (copy / damage).write_bytes((copy / damage).read_bytes()[:100])
    code, out, err = sample(capsys, "--checkpoint", copy, "--n", 2, "--out_dir", tmp_path / "out")
    assert code != 0 and message in err and "Traceback" not in err
