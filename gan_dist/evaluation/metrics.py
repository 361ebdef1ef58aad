"""FID and KID of a generator against its training data, computed by torchmetrics.

    extractor, why_not = inception_for_run(accelerator, args.inception_weights)   # every rank
    if extractor is None: accelerator.print(why_not)                               # go on without
    ...every --eval_steps, on every rank (it gathers):
    result = evaluate(accelerator, G_ema, extractor, real_images, args.data, args.latent_dim,
                      num_gen=args.fid_samples)
    result -> {"fid10k": .., "kid10k": .., "kid10k_std": .., "eval_num_gen": 10000, "eval_num_real": ..,
               "eval_tool": "torchmetrics-1.9.0/inception-v3-compat-6726825d", "eval_resize": "tf1-bilinear"}

Any nn.Module that maps uint8 RGB images (B, 3, H, W) to features (B, D) can stand in for
Inception. Images reach it as uint8: dataset images as they are, generator output in [-1, 1]
as round(x * 127.5 + 127.5) clamped (the inverse of the training scaling); one channel is
repeated to three. Real-image features are cached per dataset, keyed by the manifest's
content, the extractor, its resize mode and the sample count. Inception weights come from
--inception_weights, else $GAN_DIST_INCEPTION_WEIGHTS, else a verified one-time download
into the cache; without them `MetricUnavailable` says which file is missing and where to get it.
Inception's resize mode changes FID: figures are only comparable with the same tool and mode.
"""
import hashlib
import json
import math
import os
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torchmetrics
from safetensors import safe_open
from safetensors.torch import save_file
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from gan_dist.names import MANIFEST
from gan_dist.packing.download import (
    DownloadError,
    default_cache_dir,
    fetch,
    sha256_file,
)

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's port of TF Inception
INCEPTION_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + INCEPTION_FILE
# the name's suffix is the digest's start (torch.hub convention); the full digest and size are the
# ones that projects pinning this file publish
INCEPTION_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
INCEPTION_BYTES = 95_628_359
WEIGHTS_ENV = "GAN_DIST_INCEPTION_WEIGHTS"


class MetricUnavailable(Exception):
    """The metric cannot be computed here (e.g. no Inception weights offline); training can go on without it."""


def cache_root(cache_dir=None):
    return Path(cache_dir) if cache_dir else default_cache_dir()


def inception_weights(path=None, cache_dir=None, urls=(INCEPTION_URL,), sha256=INCEPTION_SHA256, progress=True):
    """Return a verified local copy of the Inception weights, downloading them once if needed.

    Args:
        path: a local weights file (--inception_weights); default $GAN_DIST_INCEPTION_WEIGHTS, else the cache.
        cache_dir: download cache; the file lands in CACHE/inception/. Default $XDG_CACHE_HOME/gan-dist.
        urls: where to download from.
        sha256: expected digest; None skips the check.
        progress: show a download progress bar.

    Raises:
        MetricUnavailable: the file is missing and cannot be downloaded, or its digest is wrong.
    """
    path = path or os.environ.get(WEIGHTS_ENV) or None
    if path is not None:  # a copy the user named: used where it lies, never downloaded over
        path = Path(path).expanduser()
        if not path.is_file():
            raise MetricUnavailable(
                f"FID/KID need the Inception weights {INCEPTION_FILE}, but {path} (from --inception_weights "
                f"or ${WEIGHTS_ENV}) does not exist; download it from {INCEPTION_URL}")
        actual = sha256_file(path)
        if sha256 and actual != sha256:
            raise MetricUnavailable(f"{path} is not {INCEPTION_FILE}: sha256 {actual}, expected {sha256}; "
                                    f"download it again from {INCEPTION_URL}")
        return path
    try:
        return fetch(list(urls), f"inception/{INCEPTION_FILE}", sha256=sha256, cache_dir=cache_root(cache_dir),
                     retries=2, progress=progress).path
    except DownloadError as e:
        where = cache_root(cache_dir) / "inception" / INCEPTION_FILE
        raise MetricUnavailable(
            f"FID/KID need the Inception weights {INCEPTION_FILE} ({INCEPTION_BYTES / 1e6:.1f} MB, "
            f"sha256 {INCEPTION_SHA256}) from {INCEPTION_URL}; none at {where} and none could be fetched "
            f"({e}). Download it where there is network and pass --inception_weights PATH, set "
            f"{WEIGHTS_ENV}=PATH, or put it at {where}") from None


class InceptionFeatures(nn.Module):
    """2048-d pool features of torchmetrics' NoTrainInceptionV3 (torch-fidelity's TF-compatible Inception)."""

    resize = "tf1-bilinear"  # torch-fidelity's TF1-compatible resize, the published protocol

    def __init__(self, weights):
        super().__init__()
        from torchmetrics.image.fid import NoTrainInceptionV3
        self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                      feature_extractor_weights_path=str(weights), antialias=False)
        self.extractor_id = f"inception-v3-compat-{sha256_file(weights)[:8]}"

    def forward(self, images):  # uint8 (B, 3, H, W) -> (B, 2048), resized to 299x299 inside
        return self.net(images)


def load_inception(weights=None, cache_dir=None, **fetch_kwargs):
    """InceptionFeatures from `inception_weights(weights, cache_dir, ...)`; raises MetricUnavailable."""
    return InceptionFeatures(inception_weights(weights, cache_dir, **fetch_kwargs))


def inception_for_run(accelerator, weights=None, cache_dir=None, **fetch_kwargs):
    """Load Inception on every rank (one download per node); return (extractor, None) or (None, message).

    Every rank must call it: ranks agree (one gather) so that either all evaluate or none does.
    """
    extractor, message = None, None
    with accelerator.local_main_process_first():
        try:
            extractor = load_inception(weights, cache_dir,
                                       progress=accelerator.is_local_main_process, **fetch_kwargs)
        except MetricUnavailable as e:
            message = str(e)
    ok = accelerator.gather(torch.tensor([int(extractor is not None)], device=accelerator.device))
    if not bool(ok.all()):
        why = message or "another rank could not load the Inception weights"
        return None, why
    return extractor.to(accelerator.device), None


def to_uint8_rgb(images):
    """uint8 images as they are, or float images in [-1, 1] -> uint8 [0, 255]; 1 channel -> 3. (B, 3, H, W)."""
    if images.dtype != torch.uint8:
        images = (images.float() * 127.5 + 127.5).round().clamp(0, 255).to(torch.uint8)
    if images.size(1) == 1:
        images = images.expand(-1, 3, -1, -1)
    return images


def metric_name(metric, num):
    """('fid', 10000) -> 'fid10k'; ('kid', 2500) -> 'kid2500'."""
    return f"{metric}{num // 1000}k" if num % 1000 == 0 else f"{metric}{num}"


def extractor_id(extractor):
    """The extractor's `extractor_id`, else its class name and a digest of its weights."""
    if getattr(extractor, "extractor_id", None):
        return extractor.extractor_id
    h = hashlib.sha256()
    for name, t in sorted({**dict(extractor.named_parameters()), **dict(extractor.named_buffers())}.items()):
        h.update(name.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return f"{type(extractor).__name__}-{h.hexdigest()[:12]}"


def tool_name(extractor):
    return f"torchmetrics-{torchmetrics.__version__}/{extractor_id(extractor)}"


def _manifest_path(data):
    path = Path(data)
    return path / MANIFEST if path.is_dir() else path


def real_cache_path(data, extractor, num_real, cache_dir=None, subset="memory"):
    """Where the real features of `data` (a shard dir or its manifest.json) are cached for this extractor.
    `subset` says how the images were chosen (see `real_features`); each choice has its own file."""
    manifest = _manifest_path(data)
    key = {"manifest_sha256": sha256_file(manifest), "extractor": extractor_id(extractor),
           "resize": getattr(extractor, "resize", "none"), "num_real": num_real, "input": "uint8-rgb"}
    if subset != "memory":  # the key of the in-memory choice stays as it was: its cached files stay valid
        key["subset"] = subset
    key = json.dumps(key, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()
    name = f"{manifest.parent.name}-{num_real}-{digest[:16]}.safetensors"
    return cache_root(cache_dir) / "real-features" / name, digest


def _rank_indices(n, accelerator):
    """This rank's equal share of range(n), padded with the last index, so that gather()[:n] is range(n)."""
    per_rank = math.ceil(n / accelerator.num_processes)
    start = accelerator.process_index * per_rank
    return torch.arange(start, start + per_rank).clamp_(max=n - 1)


@torch.no_grad()
def _features(extractor, batches, device):
    out = [extractor(to_uint8_rgb(b.to(device))).float().reshape(len(b), -1) for b in batches]
    return torch.cat(out)


def _cache_valid(path, digest):
    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("key") == digest
    except Exception:  # missing, truncated or foreign file
        return False


def real_subset_index(n, num_real):
    """Which num_real of n real images the features are taken of, when fewer than all (a fixed random subset)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(0))[:num_real]


def real_features(accelerator, extractor, real_images, data, num_real=None, cache_dir=None, batch_size=64,
                  subset="memory"):
    """Features of up to `num_real` real images, from the cache or computed on all ranks and gathered.

    Args:
        accelerator: every rank must call this (one gather, plus the extraction's gather on a miss).
        extractor: uint8 (B, 3, H, W) -> (B, D) module, on accelerator.device.
        real_images: uint8 (N, C, H, W), or a callable returning it (only called when the cache misses).
        data: the shard directory (or its manifest.json) the images come from; keys the cache.
        num_real: images to use (a fixed random subset when fewer than the dataset); None = the whole dataset.
        cache_dir: cache root (features go to CACHE/real-features/); default $XDG_CACHE_HOME/gan-dist.
        batch_size: images per extractor call.
        subset: "memory" when `real_images` is the whole decoded set (a seeded subset of it is taken), "stream"
            when it is `num_real` images drawn from the shard stream (a streamed run never decodes the whole set).

    Returns:
        (features float32 (num_real, D) on accelerator.device, cache path, whether the cache was used).
    """
    count = json.loads(_manifest_path(data).read_text())["count"]
    num_real = min(num_real or count, count)
    path, digest = real_cache_path(data, extractor, num_real, cache_dir, subset)
    hit = accelerator.gather(torch.tensor([int(_cache_valid(path, digest))], device=accelerator.device)).all()
    if hit:  # all ranks see a valid copy (node-local caches included)
        with safe_open(str(path), framework="pt") as f:
            return f.get_tensor("features").to(accelerator.device), path, True
    images = real_images() if callable(real_images) else real_images
    if num_real < len(images):
        images = images[real_subset_index(len(images), num_real)]
    num_real = min(num_real, len(images))  # the manifest may count images that failed to decode
    idx = _rank_indices(num_real, accelerator)
    mine = _features(extractor, images[idx].split(batch_size), accelerator.device)
    feats = accelerator.gather(mine)[:num_real].contiguous()
    if accelerator.is_local_main_process:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_file({"features": feats.cpu()}, str(tmp), metadata={"key": digest, "data": str(data)})
        os.replace(tmp, path)  # readers see the old file or the whole new one, never a part
    accelerator.wait_for_everyone()
    return feats, path, False


@torch.no_grad()
def generated_features(accelerator, extractor, G, latent_dim, num_gen, batch_size=64, seed=0, classes=None):
    """Features of `num_gen` images of G, split over the ranks and gathered (every rank must call this).

    Args:
        G: the generator (G_ema, or the unwrapped G); run in eval mode, its mode restored after.
        latent_dim: size of z.
        num_gen: images to generate over all ranks.
        seed: draws the latents; the same images for any number of ranks.
        classes: for a conditional G, the class id of each image (num_gen,).
    """
    z = torch.randn(num_gen, latent_dim, generator=torch.Generator().manual_seed(seed))
    idx = _rank_indices(num_gen, accelerator)
    was_training = G.training
    G.eval()
    try:
        if classes is None:
            batches = (G(zb.to(accelerator.device)) for zb in z[idx].split(batch_size))
        else:
            batches = (G(zb.to(accelerator.device), cb.to(accelerator.device))
                       for zb, cb in zip(z[idx].split(batch_size), classes[idx].split(batch_size)))
        mine = _features(extractor, batches, accelerator.device)
    finally:
        G.train(was_training)
    return accelerator.gather(mine)[:num_gen].contiguous()


class _Features(nn.Module):
    """Identity 'extractor': torchmetrics receives features computed (and gathered) beforehand."""

    def __init__(self, num_features):
        super().__init__()
        self.num_features = num_features

    def forward(self, x):
        return x


def fid_kid(real_feats, gen_feats, kid_subsets=100, kid_subset_size=1000, seed=0):
    """FID and KID (mean, std over subsets) of two feature sets, by torchmetrics in float64.

    Args:
        real_feats, gen_feats: (N, D) and (M, D) features.
        kid_subsets: random subsets KID averages over.
        kid_subset_size: images per subset (capped at N and M).
        seed: seeds the subsets, so every rank gets the same KID.

    Returns:
        (fid, kid_mean, kid_std) as floats.
    """
    real, gen = real_feats.double(), gen_feats.double()
    # sync_on_compute=False: each rank already holds every feature; a sync would count them twice
    fid = FrechetInceptionDistance(feature=_Features(real.size(1)), sync_on_compute=False).to(real.device)
    fid.update(real, real=True)
    fid.update(gen, real=False)
    subset = min(kid_subset_size, len(real), len(gen))
    with warnings.catch_warnings():  # "KID saves all features": it holds what we already hold
        warnings.filterwarnings("ignore", message=".*Kernel Inception Distance.*")
        kid = KernelInceptionDistance(feature=_Features(real.size(1)), subsets=kid_subsets, subset_size=subset,
                                      sync_on_compute=False).to(real.device)
    kid.update(real, real=True)
    kid.update(gen, real=False)
    with torch.random.fork_rng(devices=[]):  # KID draws its subsets from the global CPU RNG
        torch.manual_seed(seed)
        kid_mean, kid_std = kid.compute()
    return fid.compute().item(), kid_mean.item(), kid_std.item()


def evaluate(accelerator, G, extractor, real_images, data, latent_dim, num_gen=10000, num_real=None,
             cache_dir=None, batch_size=64, seed=0, kid_subsets=100, kid_subset_size=1000, real_subset="memory",
             classes=None, real_labels=None):
    """FID and KID of G against the dataset; every rank must call it and gets the same result.

    Args:
        accelerator: the run's Accelerator (its gathers are collectives).
        G: generator (G_ema preferably); images in [-1, 1].
        extractor: feature extractor on accelerator.device (`inception_for_run`, or any uint8 -> (B, D) module).
        real_images: uint8 (N, C, H, W) or a callable returning it; only used when the cache misses.
        data: the shard directory (its manifest.json keys the real-feature cache).
        latent_dim: size of z.
        num_gen: generated images (the name's count: fid10k for 10000).
        num_real: real images; default num_gen, at most the dataset.
        cache_dir, batch_size, real_subset: see `real_features` (its `subset`).
        seed: latents and KID subsets.
        kid_subsets, kid_subset_size: see `fid_kid`.
        classes: for a conditional G, the class id of each generated image (num_gen,).
        real_labels: with `classes`, the class id of each of `real_images` (N,): the result then has FID/KID per
            class too, each class's generated images against its real ones.

    Returns:
        {"fidN": float, "kidN": float, "kidN_std": float, "eval_num_gen": int, "eval_num_real": int,
         "eval_tool": str, "eval_resize": str, "eval_real_cached": bool}, and with `real_labels`
        "per_class": {class id: {"fid", "kid", "kid_std", "num_gen", "num_real"}} for each class with at least two
        generated and two real images.
    """
    real, _, cached = real_features(accelerator, extractor, real_images, data, num_real or num_gen, cache_dir,
                                    batch_size, real_subset)
    gen = generated_features(accelerator, extractor, G, latent_dim, num_gen, batch_size, seed, classes)
    fid, kid, kid_std = fid_kid(real, gen, kid_subsets, kid_subset_size, seed)
    result = {metric_name("fid", num_gen): fid, metric_name("kid", num_gen): kid,
              f"{metric_name('kid', num_gen)}_std": kid_std, "eval_num_gen": num_gen, "eval_num_real": len(real),
              "eval_tool": tool_name(extractor), "eval_resize": getattr(extractor, "resize", "none"),
              "eval_real_cached": cached}
    if classes is not None and real_labels is not None:
        if len(real) < len(real_labels):  # the subset real_features took
            real_labels = real_labels[real_subset_index(len(real_labels), len(real))]
        result["per_class"] = {}
        for k in sorted(set(classes.tolist()) & set(real_labels.tolist())):
            mine_real, mine_gen = real[real_labels.to(real.device) == k], gen[classes.to(gen.device) == k]
            if min(len(mine_real), len(mine_gen)) >= 2:
                fid_k, kid_k, kid_std_k = fid_kid(mine_real, mine_gen, kid_subsets, kid_subset_size, seed)
                result["per_class"][k] = {"fid": fid_k, "kid": kid_k, "kid_std": kid_std_k,
                                          "num_gen": len(mine_gen), "num_real": len(mine_real)}
    return result


def format_result(result):
    """One line for the console, e.g. 'fid10k 23.41  kid10k 0.0123 +- 0.0011  (10000 gen vs 1797 real; ...)'."""
    numbers = "  ".join(f"{k} {v:.4g}" + (f" +- {result[k + '_std']:.2g}" if k + "_std" in result else "")
                        for k, v in result.items()
                        if k.startswith(("fid", "kid")) and not k.endswith("_std"))
    return (f"{numbers}  ({result['eval_num_gen']} generated vs {result['eval_num_real']} real; "
            f"{result['eval_tool']}; resize {result['eval_resize']})")
