import json
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn as nn
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from conftest import finish, launch

from gan_dist.evaluation.metrics import (
    INCEPTION_FILE,
    INCEPTION_URL,
    WEIGHTS_ENV,
    MetricUnavailable,
    evaluate,
    fid_kid,
    format_result,
    generated_features,
    inception_for_run,
    inception_weights,
    metric_name,
    real_features,
    to_uint8_rgb,
)

LATENT = 8


@pytest.fixture
def accelerator():
    """A one-process CPU Accelerator; its global state is cleared afterwards for the tests that follow."""
    yield Accelerator(cpu=True)
    AcceleratorState._reset_state(reset_partial_state=True)


class PoolFeatures(nn.Module):
    """A small deterministic extractor: uint8 RGB -> 4x4 average-pooled grey levels (16 features)."""

    resize = "adaptive-avg-pool-4"

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        assert x.dtype == torch.uint8 and x.size(1) == 3
        self.calls += 1
        return F.adaptive_avg_pool2d(x.float().mean(1, keepdim=True) / 255, 4).flatten(1)


class TinyG(nn.Module):
    """z (B, 8) -> greyscale 16x16 images in [-1, 1] that vary with z; has BatchNorm to exercise eval mode."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(LATENT, 256), nn.BatchNorm1d(256), nn.Tanh())

    def forward(self, z):
        return self.net(z).view(-1, 1, 16, 16)


def make_G():
    return TinyG()


def write_manifest(folder, count, tag="a"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps({"count": count, "size": 16, "channels": 1, "tag": tag}))
    return folder


def gaussian(n, mean, cov, seed):
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.multivariate_normal(mean, cov, size=n))


def frechet(a, b):
    """The closed form ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2), in numpy/scipy."""
    a, b = a.numpy(), b.numpy()
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s_a @ s_b).real
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s_a + s_b - 2 * covmean))


def test_fid_matches_the_closed_form_on_shifted_gaussians():
    real = gaussian(20000, [0, 0, 0], np.eye(3), seed=0)
    gen = gaussian(20000, [1, 2, 0], np.diag([4.0, 1, 1]), seed=1)
    fid, _, _ = fid_kid(real, gen, kid_subsets=2, kid_subset_size=100)
    assert fid == pytest.approx(frechet(real, gen), rel=1e-6)  # the sample statistics, exactly
    assert fid == pytest.approx(5 + (3 + 6 - 2 * (2 + 1 + 1)), abs=0.15)  # the population's: 6


def test_identical_sets_give_zero_and_kid_matches_the_unbiased_mmd():
    x = gaussian(1000, np.zeros(4), np.eye(4), seed=2)
    fid, kid_same, _ = fid_kid(x, x.clone(), kid_subsets=10, kid_subset_size=500)
    _, kid_fresh, _ = fid_kid(x, gaussian(1000, np.zeros(4), np.eye(4), seed=9), 10, 500)
    _, kid_shifted, _ = fid_kid(x, gaussian(1000, np.full(4, 0.5), np.eye(4), seed=9), 10, 500)
    assert abs(fid) < 1e-6
    # KID is unbiased for independent draws; reusing the same points biases it slightly negative
    assert abs(kid_same) < 0.05 and abs(kid_fresh) < 0.02 and kid_shifted > 1.0

    x = x[:300]

    y = gaussian(300, np.full(4, 0.5), np.eye(4), seed=3)
    _, kid, kid_std = fid_kid(x, y, kid_subsets=1, kid_subset_size=300)  # one subset = the whole set
    k = lambda a, b: (a @ b.T / a.shape[1] + 1) ** 3  # noqa: E731 (KID's cubic polynomial kernel)
    a, b, m = x.numpy(), y.numpy(), len(x)
    kxx, kyy = k(a, a), k(b, b)
    expected = ((kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                - 2 * k(a, b).sum() / m**2)
    assert kid == pytest.approx(expected, rel=1e-9) and kid_std == 0.0 and kid > 0.05


def test_kid_is_the_same_on_every_call_and_leaves_the_global_rng_alone():
    """KID's subsets come from `seed` alone: not from the global RNG's state, which they leave untouched
    (the trainer's noise goes on as if no evaluation had run)."""
    x, y = gaussian(200, np.zeros(2), np.eye(2), 4), gaussian(200, np.ones(2), np.eye(2), 5)
    torch.manual_seed(1)
    first = fid_kid(x, y, 10, 50, seed=0)
    after = torch.get_rng_state()
    torch.manual_seed(1)
    assert torch.equal(after, torch.get_rng_state())
    torch.manual_seed(2)
    assert fid_kid(x, y, 10, 50, seed=0) == first
    other = fid_kid(x, y, 10, 50, seed=1)  # other subsets: another mean, the same FID
    assert other[0] == first[0] and other[1] != first[1] and first[2] > 0


def test_to_uint8_rgb_inverts_the_training_scaling():
    u8 = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    back = to_uint8_rgb(u8.float() / 127.5 - 1)
    assert back.shape == (1, 3, 16, 16) and back.dtype == torch.uint8
    assert torch.equal(back[:, 0:1], u8) and torch.equal(back[:, 2], back[:, 0])
    assert torch.equal(to_uint8_rgb(torch.tensor([-5.0, 5.0]).view(1, 1, 1, 2)).flatten()[:2],
                       torch.tensor([0, 255], dtype=torch.uint8))


def test_metric_names_encode_the_sample_count():
    assert metric_name("fid", 10000) == "fid10k" and metric_name("kid", 50000) == "kid50k"
    assert metric_name("fid", 256) == "fid256"


def test_evaluate_on_identical_sets_and_reports_count_tool_and_resize(tmp_path, accelerator):
    G, extractor = make_G(), PoolFeatures()
    n = 200
    z = torch.randn(n, LATENT, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        real = to_uint8_rgb(G.eval()(z))[:, :1]  # the images G makes from seed 7, stored as a dataset would
    G.train()
    data = write_manifest(tmp_path / "data", n)
    result = evaluate(accelerator, G, extractor, real, data, LATENT, num_gen=n, cache_dir=tmp_path / "cache",
                      batch_size=64, seed=7, kid_subsets=5, kid_subset_size=100)
    assert G.training  # mode restored
    assert abs(result["fid200"]) < 1e-6 and abs(result["kid200"]) < 1e-3, result
    assert result["eval_num_gen"] == n and result["eval_num_real"] == n
    assert result["eval_tool"].startswith("torchmetrics-") and "PoolFeatures-" in result["eval_tool"]
    assert result["eval_resize"] == "adaptive-avg-pool-4" and result["eval_real_cached"] is False
    assert "200 generated vs 200 real" in format_result(result) and "fid200" in format_result(result)

    other = evaluate(accelerator, G, extractor, real, data, LATENT, num_gen=n, cache_dir=tmp_path / "cache",
                     seed=8, kid_subsets=5, kid_subset_size=100)
    assert other["fid200"] > 1e-4 and other["eval_real_cached"] is True  # other latents: a real distance


def test_real_features_are_cached_and_invalidated_when_the_data_changes(tmp_path, accelerator):
    extractor = PoolFeatures()
    images = torch.randint(0, 256, (50, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    loads = []

    def load():
        loads.append(1)
        return images

    data = write_manifest(tmp_path / "data", 50)
    first, path, cached = real_features(accelerator, extractor, load, data, 40, tmp_path / "cache", batch_size=16)
    assert not cached and first.shape == (40, 16) and path.is_file() and extractor.calls == 3 and len(loads) == 1
    assert not list(path.parent.glob(".*.tmp"))  # written atomically

    again, path2, cached = real_features(accelerator, extractor, load, data, 40, tmp_path / "cache")
    assert cached and path2 == path and torch.equal(again, first)
    assert extractor.calls == 3 and len(loads) == 1  # neither the images nor the extractor were touched

    write_manifest(data, 50, tag="repacked")  # the data changed
    _, path3, cached = real_features(accelerator, extractor, load, data, 40, tmp_path / "cache", batch_size=16)
    assert not cached and path3 != path and extractor.calls == 6 and len(loads) == 2

    _, path4, cached = real_features(accelerator, extractor, load, data, 30, tmp_path / "cache")
    assert not cached and path4 != path3  # another sample count: another entry

    path3.write_bytes(b"truncated")  # a damaged cache file is recomputed, not trusted
    _, _, cached = real_features(accelerator, extractor, load, data, 40, tmp_path / "cache")
    assert not cached


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


def test_offline_without_weights_names_the_file_and_its_url(tmp_path, monkeypatch, accelerator):
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    url = f"http://127.0.0.1:{closed_port()}/{INCEPTION_FILE}"
    with pytest.raises(MetricUnavailable) as e:
        inception_weights(cache_dir=tmp_path / "empty", urls=[url], progress=False)
    message = str(e.value)
    assert INCEPTION_FILE in message and INCEPTION_URL in message and "--inception_weights" in message
    assert WEIGHTS_ENV in message and str(tmp_path / "empty") in message

    extractor, why = inception_for_run(accelerator, cache_dir=tmp_path / "empty", urls=[url])
    assert extractor is None and INCEPTION_FILE in why


def test_weights_named_by_env_or_flag_must_exist_and_match(tmp_path, monkeypatch):
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "nowhere.pth"))
    with pytest.raises(MetricUnavailable, match="nowhere.pth .* does not exist"):
        inception_weights(cache_dir=tmp_path)
    wrong = tmp_path / INCEPTION_FILE
    wrong.write_bytes(b"not inception")
    with pytest.raises(MetricUnavailable, match="sha256 .* expected 6726825d"):
        inception_weights(wrong)  # the flag wins over the environment


def _two_ranks(cache_dir):
    AcceleratorState._reset_state(reset_partial_state=True)  # forked: drop any one-process state inherited
    accelerator = Accelerator(cpu=True)
    assert accelerator.num_processes == 2
    G, extractor = make_G(), PoolFeatures()
    gen = generated_features(accelerator, extractor, G, LATENT, num_gen=37, batch_size=8, seed=3)
    with torch.no_grad():  # what one process computes alone
        z = torch.randn(37, LATENT, generator=torch.Generator().manual_seed(3))
        alone = extractor(to_uint8_rgb(G.eval()(z)))
    assert gen.shape == (37, 16) and torch.allclose(gen, alone, atol=1e-6)

    images = torch.randint(0, 256, (41, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    data = cache_dir / "data"
    if accelerator.is_main_process:
        write_manifest(data, 41)
    accelerator.wait_for_everyone()
    real, _, cached = real_features(accelerator, extractor, images, data, None, cache_dir, batch_size=8)
    assert not cached and torch.allclose(real, extractor(to_uint8_rgb(images)), atol=1e-6)
    result = evaluate(accelerator, G, extractor, images, data, LATENT, num_gen=37, num_real=41, cache_dir=cache_dir,
                      batch_size=8, seed=3, kid_subsets=4, kid_subset_size=20)
    assert result["eval_real_cached"] is True
    fids = accelerator.gather(torch.tensor([result["fid37"], result["kid37"]]))
    assert torch.equal(fids[:2], fids[2:])  # every rank holds the same figures
    assert result["fid37"] == pytest.approx(fid_kid(real, alone, 4, 20, seed=3)[0], rel=1e-6)


def test_two_ranks_gather_the_same_features_as_one(tmp_path):
    # a fresh interpreter: forking this one, whose thread pools have run, can deadlock the children
    code = ("import sys, pathlib; sys.path.insert(0, sys.argv[1]); from accelerate import debug_launcher; "
            "import test_metrics; debug_launcher(test_metrics._two_ranks, args=(pathlib.Path(sys.argv[2]),), "
            "num_processes=2)")
    r = finish(*launch([sys.executable, "-c", code, Path(__file__).parent, tmp_path], timeout=120))
    assert r.returncode == 0, r.stderr[-3000:]
