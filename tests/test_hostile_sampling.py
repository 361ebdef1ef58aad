"""Hostile inputs at the sampling boundary: counts and values of gan_dist.sample and gan_dist.export."""
import json

import pytest
from conftest import call_main
from hostile import GB, assert_one_error, run_measured
from safetensors.torch import save_file

from gan_dist.evaluation.export import main as export_main
from gan_dist.evaluation.sample import main as sample_main
from gan_dist.networks.models import GANConfig, build_models


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An untrained 16x16 greyscale MLP G written as a checkpoint would hold it."""
    path = tmp_path_factory.mktemp("sampling") / "checkpoint-1"
    path.mkdir()
    cfg = GANConfig("mlp", latent_dim=8, img_size=16, channels=1)
    save_file(build_models(cfg)[0].state_dict(), path / "model.safetensors")
    (path / "gan.json").write_text(json.dumps({"global_step": 1, "gan_config": cfg.to_dict()}))
    return path


def test_sampling_a_billion_images_is_refused_before_allocating(tmp_path, checkpoint):
    r, peak = run_measured("-m", "gan_dist.sample", "--checkpoint", checkpoint, "--n", 10**9, "--out_dir",
                           tmp_path / "many", "--device", "cpu")
    assert_one_error(r, "--n 1,000,000,000 images of 16x16x1 would take", code=1)
    assert peak < GB and not (tmp_path / "many").exists(), f"peak RSS {peak / GB:.2f} GB"


def test_export_with_a_billion_samples_is_one_error(tmp_path, checkpoint, capsys):
    code, _, err = call_main(export_main, capsys, "--checkpoint", checkpoint, "--out", tmp_path / "e",
                             "--n_samples", 10**9, "--weights", "G")
    assert code and err.strip().startswith("error: ") and "--n_samples 1,000,000,000 images" in err, err


@pytest.mark.parametrize("flag,value", [("--truncation", "nan"), ("--truncation", "inf"), ("--seed", -1),
                                        ("--seed", 2**32)])
def test_sample_values_out_of_range_are_one_usage_error(tmp_path, checkpoint, capsys, flag, value):
    code, _, err = call_main(sample_main, capsys, "--checkpoint", checkpoint, "--grid", tmp_path / "g.png", flag,
                             value)
    assert code == 2 and flag in err.strip().splitlines()[-1] and not (tmp_path / "g.png").exists(), err
