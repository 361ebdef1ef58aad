"""The GAN must learn the embedded digits, judged by a classifier, not by its own losses.

Measure: a logistic-regression digit classifier is fit on the real 16x16 digits. Its
predictions on generated images give a "digit score", the Inception Score with this
classifier in place of Inception: exp(E_x KL(p(y|x) || p(y))). It is 1 when G draws
one thing for every z or nothing recognisable, and 10 at most (confident and evenly
spread over the ten digits); held-out real digits score about 9. We require the trained
G to score far above the untrained one (and at least half as high as real digits), and
to draw most digits: at least 8 of the 10 classes each in more than 2% of its samples
(a collapsed G draws one or two).
"""
import json

import numpy as np
import pytest
import torch
import webdataset as wds
from conftest import run_here
from safetensors.torch import load_file
from sklearn.linear_model import LogisticRegression

from gan_dist.networks.models import GANConfig, build_models, generate
from gan_dist.training.data import decode_sample

STEPS = 2000


def real_digits(shard_dir):
    manifest = json.loads((shard_dir / "manifest.json").read_text())
    images, labels = [], []
    for shard in manifest["shards"]:
        for sample in wds.WebDataset(str(shard_dir / shard["file"]), shardshuffle=False):
            images.append(decode_sample(sample).float().div(127.5).sub(1).flatten().numpy())
            labels.append(int(sample["cls"]))
    return np.stack(images), np.array(labels)


def digit_score(probs):
    p_y = probs.mean(axis=0, keepdims=True)
    kl = (probs * (np.log(probs + 1e-12) - np.log(p_y + 1e-12))).sum(axis=1)
    return float(np.exp(kl.mean()))


@pytest.fixture(scope="module")
def classifier(digits16):
    X, y = real_digits(digits16)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(y))
    train, held_out = order[:1500], order[1500:]
    clf = LogisticRegression(max_iter=3000).fit(X[train], y[train])
    assert clf.score(X[held_out], y[held_out]) > 0.9  # the judge itself can read digits
    return clf, digit_score(clf.predict_proba(X[held_out]))


def test_gan_learns_to_draw_every_digit(tmp_path, digits16, classifier):
    clf, real_score = classifier
    out = tmp_path / "run"
    r = run_here("gan_dist.train", "--cpu", "--data", digits16, "--img_size", 16, "--channels", 1,
                 "--n_cpu", 1, "--max_train_steps", STEPS, "--checkpointing_steps", STEPS,
                 "--sample_interval", STEPS, "--log_steps", 200, "--output_dir", out, "--report_to", "none")
    assert r.returncode == 0, r.stderr[-2000:]
    cfg = GANConfig("mlp", latent_dim=100, img_size=16, channels=1)
    torch.manual_seed(0)  # the trainer's initial weights (seed 0)
    untrained, _ = build_models(cfg)
    trained, _ = build_models(cfg)
    trained.load_state_dict(load_file(out / "checkpoints" / f"checkpoint-{STEPS}" / "model.safetensors"))

    z = torch.randn(1000, 100, generator=torch.Generator().manual_seed(123))
    scores = {}
    for name, G in (("untrained", untrained), ("trained", trained)):
        probs = clf.predict_proba(generate(G, z).flatten(1).numpy())
        scores[name] = digit_score(probs)
        if name == "trained":
            share = np.bincount(probs.argmax(axis=1), minlength=10) / len(probs)
    print(f"digit score: real {real_score:.2f}, trained {scores['trained']:.2f}, "
          f"untrained {scores['untrained']:.2f}; class shares {np.round(share, 3)}")
    assert scores["trained"] > 3 * scores["untrained"]
    assert scores["trained"] > 0.5 * real_score
    assert (share > 0.02).sum() >= 8, f"G draws too few of the digits: {share}"
