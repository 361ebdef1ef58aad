"""A digit judge for generated digits: an SVM fit on scikit-learn's real digits reads each image channel.

    clf, accuracy, n = fit_judge()
    mode_report(clf, stacked_images)      # stacked digits: modes of 1,000, KL to uniform, confident share
    copy_report(clf, training_images, n)  # the same for n draws from the training set's own mode histogram
    digit_report(clf, digit_images)       # one channel: digit score, confident share, class shares
    requested_report(clf, images, digits) # a conditional G: the share read as the digit each image was drawn for

Used by `python -m gan_dist.evaluate --metrics digits` (a metric that needs no Inception
weights) and by `python -m benchmarks quality`. Images are float in [-1, 1], any size:
each channel is averaged back to the digits' 8x8 grid.
"""
import functools
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

CONFIDENT = 0.8  # "confidently classified": the most likely digit has at least this probability


def channel_features(images):
    """Float (N, C, 32, 32) in [-1, 1] -> (N * C, 64): each channel averaged back to the digits' 8x8 grid."""
    x = images.float().clamp(-1, 1).flatten(0, 1)[:, None]  # (N * C, 1, 32, 32)
    return F.adaptive_avg_pool2d(x, 8).flatten(1).numpy()


@functools.cache  # the judge's fit and every requested_report read them: decode and resize the digits once
def real_digits():
    """The real digits taken through the packer's path (8x8 -> 32x32 bicubic -> 8x8): (features (N, 64), digits),
    read-only (they are shared)."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    up = np.stack([np.asarray(Image.fromarray(img).resize((32, 32), Image.Resampling.BICUBIC))
                   for img in np.round(digits.images * (255 / 16)).astype(np.uint8)])
    features, target = channel_features(torch.from_numpy(up)[:, None].float() / 127.5 - 1), digits.target
    features.flags.writeable = target.flags.writeable = False
    return features, target


def spread(features, labels):
    """{digit: the root-mean-square distance of its images' features from their mean}: how varied a class is."""
    return {int(d): float(np.sqrt(((f - f.mean(0)) ** 2).sum(1).mean()))
            for d in np.unique(labels) for f in [features[labels == d]]}


def fit_judge(seed=0):
    """An SVM on the real digits (real_digits); returns (classifier, held-out accuracy, held-out count)."""
    from sklearn.svm import SVC
    x, target = real_digits()
    order = np.random.default_rng(seed).permutation(len(x))
    train, held_out = order[:1500], order[1500:]
    with warnings.catch_warnings():
        # Platt scaling (probability=True) is deprecated for CalibratedClassifierCV, but that one gives
        # confident probabilities to noise far from every digit (half of an untrained G's samples)
        warnings.simplefilter("ignore", FutureWarning)
        clf = SVC(C=10, probability=True, random_state=seed).fit(x[train], target[train])
    return clf, float(clf.score(x[held_out], target[held_out])), len(held_out)


def mode_report(clf, images):
    """Modes covered (of 1,000) and KL(histogram || uniform) of stacked images (N, 3, 32, 32), and the share of
    their channels read with probability >= CONFIDENT: ambiguous digits, not only missing modes, raise the KL.

    The KL splits exactly into `kl_channels`, how uneven each channel's digits are (the three channels' KL to
    uniform, summed), and `kl_dependence`, how far the three digits are from independent (KL of the histogram to
    the product of the channels' own); from finite samples the second is about (1000 - 28) / (2 N) even then."""
    x = channel_features(images)
    digits = clf.predict(x).reshape(len(images), 3)
    return {**_histogram_report(digits), "confident": _shares(clf.predict_proba(x), len(images))["confident"],
            "samples": len(images)}


def copy_report(clf, images, n, draws=20, seed=0):
    """What a generator that draws the training images' mode histogram exactly would score with n samples: the
    mean report of `draws` sets of n modes drawn from the judge's histogram of `images` (the training set). Its
    KL is the training set's own unevenness plus the sampling's, above that of n real images it holds."""
    digits = clf.predict(channel_features(images)).reshape(len(images), 3)
    hist = np.bincount(digits @ np.array([100, 10, 1]), minlength=1000) / len(images)
    rng = np.random.default_rng(seed)
    reports = [_histogram_report(np.stack(np.unravel_index(rng.choice(1000, n, p=hist), (10, 10, 10)), 1))
               for _ in range(draws)]
    return {**{k: float(np.mean([r[k] for r in reports])) for k in reports[0]}, "samples": n, "draws": draws,
            "training_images": len(images)}


def _histogram_report(digits):
    """(N, 3) digits -> modes covered and the KL to uniform, split into the channels' part and the dependence."""
    hist = np.bincount(digits @ np.array([100, 10, 1]), minlength=1000) / len(digits)
    channels = [np.bincount(digits[:, c], minlength=10) / len(digits) for c in range(3)]
    independent = np.einsum("i,j,k->ijk", *channels).reshape(-1)
    seen = hist > 0
    p = hist[seen]
    return {"modes": int(seen.sum()), "kl": float((p * np.log(p * 1000)).sum()),
            "kl_channels": float(sum((q[q > 0] * np.log(q[q > 0] * 10)).sum() for q in channels)),
            "kl_dependence": float((p * np.log(p / independent[seen])).sum())}


def confident_share(clf, images):
    """Share of single-channel images whose most likely digit has probability >= CONFIDENT, and the classes drawn."""
    return _shares(clf.predict_proba(channel_features(images)), len(images))


def _shares(probs, samples):
    share = np.bincount(probs.argmax(1), minlength=10) / len(probs)
    return {"confident": float((probs.max(1) >= CONFIDENT).mean()), "class_shares": share.round(4).tolist(),
            "samples": samples}


def digit_report(clf, images):
    """One-channel digits (N, 1, H, W): the digit score (the Inception Score with this judge: exp E KL(p(y|x) || p(y)),
    10 at most), the share read with probability >= CONFIDENT, and each class's share."""
    probs = clf.predict_proba(channel_features(images))
    p_y = probs.mean(axis=0, keepdims=True)
    kl = (probs * (np.log(probs + 1e-12) - np.log(p_y + 1e-12))).sum(axis=1)
    return {"digit_score": float(np.exp(kl.mean())), **_shares(probs, len(images))}


def requested_report(clf, images, requested):
    """One-channel digits (N, 1, H, W) drawn for the digits `requested` (N,): the share the judge reads as the
    requested digit with probability >= CONFIDENT, over all and per requested digit ({digit: share}), with the
    lowest per-digit share and the samples per digit. A G that draws one image per digit reads perfectly, so
    each digit's spread (see `spread`) is also given as a share of the real digits' spread of that digit."""
    requested = np.asarray(requested)
    x = channel_features(images)
    probs = clf.predict_proba(x)
    hit = (probs.argmax(1) == requested) & (probs.max(1) >= CONFIDENT)
    per_digit = {int(d): float(hit[requested == d].mean()) for d in np.unique(requested)}
    real = spread(*real_digits())
    spread_vs_real = {d: s / real[d] for d, s in spread(x, requested).items()}
    return {"read_as_requested": float(hit.mean()), "per_digit": per_digit, "lowest": min(per_digit.values()),
            "spread_vs_real": spread_vs_real, "lowest_spread": min(spread_vs_real.values()),
            "samples_per_digit": {int(d): int((requested == d).sum()) for d in np.unique(requested)},
            "samples": len(images)}
