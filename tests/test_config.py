"""--config: option values from YAML or JSON (a run's own args.json included); the command line wins."""
import json

import pytest
from conftest import ROOT, run_here, train_rows

from gan_dist.training.options import parse_args
from gan_dist.training.presets import modern_values


def test_a_run_repeats_from_its_own_args_json(tmp_path, digits16):
    first = tmp_path / "first"
    r = run_here("gan_dist.train", "--cpu", "--data", digits16, "--img_size", 16, "--channels", 1,
                 "--batch_size", 32, "--n_cpu", 0, "--output_dir", first, "--report_to", "none",
                 "--max_train_steps", 4, "--log_steps", 2, "--lr", 0.0005, "--ema_kimg", 0)
    assert r.returncode == 0, r.stderr[-2000:]
    again = tmp_path / "again"
    r = run_here("gan_dist.train", "--config", first / "args.json", "--output_dir", again)
    assert r.returncode == 0, r.stderr[-2000:]
    recorded, repeated = (json.loads((d / "args.json").read_text()) for d in (first, again))
    assert {**recorded, "output_dir": None, "config": None} == {**repeated, "output_dir": None, "config": None}
    assert repeated["config"] == str(first / "args.json") and repeated["lr"] == 0.0005
    keys = ("step", "loss_D", "loss_G", "D_real", "D_fake")
    first_rows, again_rows = ([[row[k] for k in keys] for row in train_rows(d)] for d in (first, again))
    assert first_rows == again_rows


def test_resolved_values_round_trip_and_flags_win(tmp_path):
    args = parse_args(["--data", "d", "--preset", "modern", "--img_size", "64", "--lr_d", "0.001"])
    path = tmp_path / "args.json"
    path.write_text(json.dumps(vars(args)))
    repeated = parse_args(["--config", str(path)])
    assert repeated.size_reason.startswith("--size")  # the file names the size now, not the device
    assert {**vars(repeated), "config": None, "size_reason": None} == {**vars(args), "size_reason": None}
    overridden = parse_args(["--config", str(path), "--r1_gamma", "3", "--data", "other"])
    assert overridden.r1_gamma == 3.0 and overridden.data == "other" and overridden.lr_d == 0.001


def test_yaml_with_a_preset_fills_the_rest(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("preset: modern\ndata: shards/x\nimg_size: 32\nbetas_g: '0,0.9'\ncpu: true\n")
    args = parse_args(["--config", str(path)])
    assert args.arch == "resnet" and args.loss == "rpgan" and args.betas_g == [0.0, 0.9]
    assert args.size == "small" and args.r1_gamma == modern_values("small", 32)["r1_gamma"]


@pytest.mark.parametrize("text, message", [
    ("data: x\nlearning_rate: 0.1\n", "unknown option(s) learning_rate"),
    ("data: x\nlr: fast\n", "lr: 'fast' is not a valid value for --lr"),
    ("data: x\narch: vgg\n", "arch: 'vgg' is not a valid value for --arch"),
    ("data: x\ncpu: 1\n", "cpu: 1 is not a valid value for --cpu"),
    ("- data\n", "expected a mapping"),
    ("data: [\n", "not valid YAML"),
])
def test_bad_config_files_are_refused_by_name(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    r = run_here("gan_dist.train", "--config", path)
    assert r.returncode == 2 and message in r.stderr, r.stderr


def test_data_is_required_somewhere(tmp_path):
    r = run_here("gan_dist.train", "--img_size", 32)
    assert r.returncode == 2 and "--data is required (on the command line or in --config)" in r.stderr


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_committed_configs_parse(path):
    args = parse_args(["--config", str(path)])
    assert args.data.startswith("shards/") and args.preset in path.name
