"""Hostile inputs at the config boundary: --config files and flags; property-based for the config loader and
manifest.json parsing."""
import json
import math
import shutil

import pytest
import yaml
from conftest import call_main
from hostile import GB, assert_one_error, run_measured
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gan_dist.names import MANIFEST
from gan_dist.packing.shard import main as shard_main
from gan_dist.train import main as train_main
from gan_dist.training.manifest import DataError, load_manifest
from gan_dist.training.options import parse_args


def manifest_only_pack(root, size=256, channels=3):
    """A manifest whose shards live elsewhere (--shard_url): enough for the checks that come before data."""
    root.mkdir(parents=True, exist_ok=True)
    (root / MANIFEST).write_text(json.dumps({"count": 100, "size": size, "channels": channels,
                                             "shards": [{"file": "train-000000.tar", "count": 100}]}))
    return root


def test_a_config_asking_for_a_terabyte_of_weights_is_refused_before_allocating(tmp_path):
    data = manifest_only_pack(tmp_path / "pack")
    config = tmp_path / "big.yaml"
    config.write_text(f"data: {data}\nshard_url: file:///nowhere/{{file}}\narch: resnet\nimg_size: 256\n"
                      "width: 4096\nblocks: 10\nexpansion: 16\ngroup_size: 4096\ncpu: true\n")
    r, peak = run_measured("-m", "gan_dist.train", "--config", config, "--output_dir", tmp_path / "run")
    last = assert_one_error(r, "above the budget of 500,000,000 parameters", "--max_params", code=2)
    assert "TB" in last or "GB to train" in last and peak < GB, (last, peak)


BILLION_LAUGHS = """data: {data}
tracker_project_name: [&a [lol,lol,lol,lol,lol,lol,lol,lol,lol], &b [*a,*a,*a,*a,*a,*a,*a,*a,*a],
  &c [*b,*b,*b,*b,*b,*b,*b,*b,*b], &d [*c,*c,*c,*c,*c,*c,*c,*c,*c], &e [*d,*d,*d,*d,*d,*d,*d,*d,*d],
  &f [*e,*e,*e,*e,*e,*e,*e,*e,*e], &g [*f,*f,*f,*f,*f,*f,*f,*f,*f], &h [*g,*g,*g,*g,*g,*g,*g,*g,*g], *h]
"""


def test_yaml_aliases_are_refused(tmp_path, digits16):
    config = tmp_path / "laughs.yaml"
    config.write_text(BILLION_LAUGHS.format(data=digits16))
    assert config.stat().st_size < 600
    r, peak = run_measured("-m", "gan_dist.train", "--config", config, "--output_dir", tmp_path / "run", "--cpu",
                           "--img_size", 16, "--channels", 1, "--report_to", "none", "--max_train_steps", 1,
                           "--n_cpu", 0)
    assert_one_error(r, "aliases (*name) are not allowed", code=2)
    assert peak < GB, f"peak RSS {peak / GB:.2f} GB"


@pytest.mark.parametrize("text,name", [
    ("data: [a, b]", "data"), ("batch_size: null", "batch_size"),
    ("arch: resnet\nimg_size: 32\nwidths: 5", "--widths needs 4 values"),
    ("betas_g: 0.5", "betas_g"), ("1: 2", "keys must be option names"), ("preset: [modern]", "preset"),
    ("lr: {a: 1}", "lr"), ("cpu: 1", "cpu"), ("blocks: [1, true]", "blocks"), ("n_epochs: 2.5", "n_epochs")])
def test_config_values_of_the_wrong_type_are_one_usage_error(tmp_path, capsys, text, name):
    config = tmp_path / "c.yaml"
    config.write_text(text + "\n")
    code, _, err = call_main(train_main, capsys, "--config", config, "--data", tmp_path)
    assert code == 2 and "Traceback" not in err and name in err.strip().splitlines()[-1], err


@pytest.mark.parametrize("flag,value", [
    ("--seed", -1), ("--seed", 2**32), ("--lr_end_ratio", "inf"), ("--lr_end_ratio", "nan"),
    ("--gamma_end_ratio", "inf"), ("--r1_gamma", "nan"), ("--r1_gamma", "inf"), ("--ema_rampup", "nan"),
    ("--ema_rampup", "inf"), ("--n_samples", 10**9)])
def test_out_of_range_flags_are_one_usage_error(tmp_path, capsys, flag, value):
    code, _, err = call_main(train_main, capsys, "--data", tmp_path, flag, value)
    assert code == 2 and "Traceback" not in err and flag in err.strip().splitlines()[-1], err


def test_shard_seed_out_of_range_is_one_error(tmp_path, capsys):
    code, _, err = call_main(shard_main, capsys, "digits", "--out", tmp_path / "out", "--seed", -1)
    assert code and err.strip().startswith("error: ") and "--seed -1 (0-4294967295)" in err, err


# ---- property-based: random, mistyped and extreme values never give a traceback

scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                    st.sampled_from(["modern", "vanilla", "resnet", "mlp", "dcgan", "0,0.99", "2,2,1,1", "64,64,32,16",
                                     "rpgan", "cosine", "nan", "-inf", "1e-4", "wandb", "none"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner,
                                                                                           max_size=3), max_leaves=8)


TRAIN_OPTIONS = sorted(vars(parse_args(["--data", "x"])))  # every option name, and those it derives
configs = st.dictionaries(st.sampled_from(TRAIN_OPTIONS) | st.text(max_size=6), values, max_size=6)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(config=configs, as_json=st.booleans())
def test_any_config_file_is_a_valid_run_or_a_usage_error(tmp_path, capsys, config, as_json):
    path = tmp_path / ("c.json" if as_json else "c.yaml")
    path.write_text(json.dumps(config) if as_json else yaml.safe_dump(config))
    try:
        args = parse_args(["--config", str(path), "--data", str(tmp_path)])
    except SystemExit as e:
        assert e.code == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("gan_dist.train: error: ")
        return
    assert args.batch_size >= 1 and all(math.isfinite(b) for b in args.betas_g + args.betas_d)


json_values = st.recursive(st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70) |
                           st.floats(allow_nan=False) | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                                       max_size=4), max_leaves=10)
shard_entries = st.fixed_dictionaries(
    {"file": st.sampled_from(["train-000000.tar", "train-000000.tar\n", "../x.tar", "x.tar", "/etc/passwd"])
     | json_values,
     "count": st.integers(min_value=-5, max_value=10**12) | json_values},
    optional={"sha256": json_values, "bytes": st.integers(min_value=-1, max_value=10**13) | json_values})
manifests = st.fixed_dictionaries(
    {}, optional={"count": st.integers(min_value=-5, max_value=10**12) | json_values,
                  "size": st.integers(min_value=-1, max_value=10**6) | json_values,
                  "channels": st.integers(min_value=-1, max_value=5) | json_values,
                  "image_format": st.sampled_from(["png", "jpg", "npy", "gif"]) | json_values,
                  "shards": st.lists(shard_entries, max_size=4) | json_values}) | json_values


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory, digits16):
    root = tmp_path_factory.mktemp("prop")
    shutil.copy(digits16 / "train-000000.tar", root / "train-000000.tar")
    return root


@settings(max_examples=80, deadline=None)
@given(manifest=manifests)
def test_any_manifest_is_a_pack_or_a_data_error(shard_dir, manifest):
    (shard_dir / MANIFEST).write_text(json.dumps(manifest))
    try:
        checked, urls = load_manifest(shard_dir, verify=False)
    except DataError as e:
        assert str(e).startswith("--data ") and "\n" not in str(e)
        return
    assert checked["count"] == sum(s["count"] for s in checked["shards"]) and len(urls) >= 1
