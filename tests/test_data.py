import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from gan_dist.names import MANIFEST
from gan_dist.packing.shard import pack
from gan_dist.training.data import epoch_batches, load_into_memory, memory_epoch_batches, to_device_float
from gan_dist.training.manifest import DataError, check_matches, load_manifest
from gan_dist.training.reals import resident


def batches(urls, epoch=0, seed=0, skip=0, workers=0, steps=6, bs=32):
    return [b.clone() for b, _ in epoch_batches(urls, bs, steps, seed, epoch, workers, skip=skip)]


def test_exact_step_count_and_uint8_batches(digits16):
    manifest, urls = load_manifest(digits16)
    out = batches(urls, steps=7)
    assert len(out) == 7
    assert all(b.shape == (32, 1, 16, 16) and b.dtype == torch.uint8 for b in out)


def test_stream_is_reproducible_and_changes_with_epoch_and_seed(digits16):
    _, urls = load_manifest(digits16)
    a, b = batches(urls), batches(urls)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(torch.stack(a), torch.stack(batches(urls, epoch=1)))
    assert not torch.equal(torch.stack(a), torch.stack(batches(urls, seed=1)))


def test_skip_resumes_mid_epoch(digits16):
    _, urls = load_manifest(digits16)
    full = batches(urls, workers=2)
    tail = batches(urls, workers=2, skip=4)
    assert len(tail) == 2
    assert all(torch.equal(x, y) for x, y in zip(full[4:], tail))


def test_ranks_draw_different_streams(digits16, monkeypatch):
    _, urls = load_manifest(digits16)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    rank0 = torch.stack(batches(urls))
    monkeypatch.setenv("RANK", "1")
    rank1 = torch.stack(batches(urls))
    assert not torch.equal(rank0, rank1)


def test_more_workers_than_shards(tmp_path):
    from gan_dist.packing.shard import pack
    pack("lfw-subset", tmp_path / "one", size=8, channels=1, shard_size=1000)
    _, urls = load_manifest(tmp_path / "one")
    assert len(urls) == 1
    assert len(batches(urls, workers=2, steps=5, bs=16)) == 5


def test_to_device_float_range():
    x = torch.tensor([[[[0, 255, 128]]]], dtype=torch.uint8)
    y = to_device_float(x, "cpu")
    assert y.dtype == torch.float32
    assert torch.allclose(y, torch.tensor([[[[-1.0, 1.0, 128 / 127.5 - 1]]]]), atol=1e-6)


def test_missing_unfinished_and_empty_data(tmp_path, digits16):
    with pytest.raises(DataError, match="no such directory"):
        load_manifest(tmp_path / "absent")
    (tmp_path / "half").mkdir()
    with pytest.raises(DataError, match="no manifest.json"):
        load_manifest(tmp_path / "half")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / MANIFEST).write_text(json.dumps({"count": 0, "size": 16, "channels": 1, "shards": []}))
    with pytest.raises(DataError, match="holds no images"):
        load_manifest(tmp_path / "empty")


def test_size_mismatch_names_the_fix(digits16):
    manifest, _ = load_manifest(digits16)
    check_matches(manifest, 16, 1, digits16)
    with pytest.raises(DataError, match="--img_size 16 --channels 1"):
        check_matches(manifest, 128, 3, digits16)


def test_in_memory_epochs_deal_disjoint_batches_to_ranks(digits16):
    _, urls = load_manifest(digits16)
    images, skipped = load_into_memory(urls, num_workers=2)
    assert images.shape == (1797, 1, 16, 16) and images.dtype == torch.uint8 and skipped == 0
    assert torch.equal(images, load_into_memory(urls, num_workers=0)[0])  # order independent of workers
    steps = 1797 // (2 * 64)
    per_rank = [torch.cat([b for b, _ in memory_epoch_batches(images, 64, steps, 0, 0, rank, 2)]) for rank in (0, 1)]
    assert all(len(x) == steps * 64 for x in per_rank)
    # identity check by index: each image used at most once per epoch across ranks
    def indices(epoch, rank, skip=0):
        return [b for b, _ in memory_epoch_batches(torch.arange(1797), 64, steps, 0, epoch, rank, 2, skip)]
    perm_rank0, perm_rank1 = indices(0, 0), indices(0, 1)
    used = torch.cat(perm_rank0 + perm_rank1)
    assert len(used) == len(set(used.tolist())) == 2 * steps * 64
    next_epoch = torch.cat(indices(1, 0))
    assert not torch.equal(next_epoch, torch.cat(perm_rank0))
    resumed = indices(0, 0, skip=3)
    assert all(torch.equal(a, b) for a, b in zip(perm_rank0[3:], resumed)) and len(resumed) == steps - 3


@pytest.fixture(scope="module")
def photo_packs(tmp_path_factory):
    """The same 24 smooth 32x32 RGB images packed as png, jpg and npy (2 shards each)."""
    root = tmp_path_factory.mktemp("photos")
    ramp = np.linspace(0, 255, 32, dtype=np.uint8)
    for i in range(24):
        arr = np.stack([ramp[None].repeat(32, 0), ramp[:, None].repeat(32, 1), np.full((32, 32), 10 * i)], -1)
        (root / "src").mkdir(exist_ok=True)
        Image.fromarray(np.roll(arr, i, axis=1).astype(np.uint8)).save(root / "src" / f"{i:02d}.png")
    return {fmt: pack("folder", root / fmt, src=root / "src", size=32, channels=3, shard_size=12, fmt=fmt) and
            root / fmt for fmt in ("png", "jpg", "npy")}


def test_formats_decode_to_the_same_batches(photo_packs):
    """png and npy give identical pixels (npy's batch is a channels-last view of the same values), jpg close."""
    streams = {}
    for fmt, data in photo_packs.items():
        manifest, urls = load_manifest(data)
        streams[fmt] = next(epoch_batches(urls, 8, 1, 0, 0, 0))[0]
        assert streams[fmt].shape == (8, 3, 32, 32) and streams[fmt].dtype == torch.uint8
        in_memory, _ = load_into_memory(urls)
        assert in_memory.is_contiguous() and in_memory.shape == (24, 3, 32, 32)
    assert torch.equal(streams["npy"], streams["png"])
    assert streams["npy"].is_contiguous(memory_format=torch.channels_last)
    assert (streams["jpg"].int() - streams["png"].int()).abs().float().mean() < 6  # lossy, same images


def test_npy_fast_path_checks_dtype_and_order(tmp_path):
    from gan_dist.training.data import decode_sample
    img = np.arange(5 * 4 * 3, dtype=np.uint8).reshape(5, 4, 3)
    for arr in (img, img[:, :, 0]):
        buf = io.BytesIO()
        np.save(buf, arr)
        got = decode_sample({"npy": buf.getvalue()})
        assert torch.equal(got, torch.from_numpy(arr.reshape(5, 4, -1)).permute(2, 0, 1))
    for bad, what in ((img.astype(np.float32), "float32"), (np.asfortranarray(img), "Fortran order")):
        buf = io.BytesIO()
        np.save(buf, bad)
        with pytest.raises(ValueError, match=what):
            decode_sample({"npy": buf.getvalue()})


def test_decode_on_device_matches_the_workers_and_replaces_a_bad_jpeg(photo_packs):
    from gan_dist.training.data import decode_on_device, device_decoded
    manifest, urls = load_manifest(photo_packs["jpg"])
    decoded = next(epoch_batches(urls, 8, 1, 0, 0, 0))[0]
    (data, offsets), skipped = next(epoch_batches(urls, 8, 1, 0, 0, 2, encoded=True))
    assert skipped == 0 and data.dtype == torch.uint8 and data.dim() == 1 and offsets.tolist()[-1] == len(data)
    images, failed = decode_on_device((data, offsets), "cpu", 3)
    assert failed == 0 and torch.equal(images, decoded)

    broken = data.clone()
    broken[offsets[2]:offsets[3]] = 0  # the third JPEG is now zeros
    images, failed = decode_on_device((broken, offsets), "cpu", 3)
    assert failed == 1 and images.shape == decoded.shape
    assert torch.equal(images[[0, 1, 3]], decoded[[0, 1, 3]])

    batches = list(device_decoded([((broken, offsets), 2)], "cpu", 3))
    assert batches[0][1] == 3  # the workers' 2 and the one that failed here
    with pytest.raises(DataError, match="none of the 8 JPEGs"):
        decode_on_device((torch.zeros_like(data), offsets), "cpu", 3)

    with pytest.raises(DataError, match="--format jpg"):
        check_matches(load_manifest(photo_packs["png"])[0], 32, 3, photo_packs["png"], jpeg=True)


def test_a_streamed_run_measures_fid_on_a_bounded_draw_of_reals(digits16):
    """FID/KID during a streamed run decodes --fid_samples reals, never the whole set that did not fit in memory."""
    from types import SimpleNamespace

    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from gan_dist.training.reals import real_data

    manifest, urls = load_manifest(digits16)
    args = SimpleNamespace(cache_gb=0, decode_on_device=False, batch_size=16, seed=0, n_cpu=0, channels=1)
    try:
        data = real_data(args, manifest, urls, Accelerator(cpu=True), steps_per_epoch=4)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert data.in_memory is None
    reals = data.for_metrics(40, seed=3)
    assert reals.shape == (40, 1, 16, 16) and manifest["count"] > 40
    assert torch.equal(reals, data.for_metrics(40, seed=3))  # the same draw each evaluation: comparable figures


def test_the_in_memory_set_is_held_on_the_device_when_it_fits_and_batches_are_gathered_there():
    images = torch.arange(4 * 3 * 2 * 2, dtype=torch.uint8).reshape(4, 3, 2, 2)
    held, where = resident(images, "cpu")
    assert held.data_ptr() == images.data_ptr() and where == "on cpu"  # the CPU is the host: no copy
    assert resident(images, "cpu", enabled=False)[1] == "in host memory (--no-data_on_device)"
    assert resident(images, "cpu", free_bytes=2 * images.nbytes)[1] == "on cpu"
    kept, why = resident(images, "cpu", free_bytes=2 * images.nbytes - 1)  # over half of what is free
    assert kept is images and why.startswith("in host memory: ")
    # the permutation is drawn on the host and the gather happens where the images lie
    on_meta = [b for b, _ in memory_epoch_batches(images.to("meta"), 2, 2, 0, 0, 0, 1)]
    assert [b.device.type for b in on_meta] == ["meta", "meta"]
    host = [b for b, _ in memory_epoch_batches(images, 2, 2, 0, 0, 0, 1)]
    assert [b.shape for b in host] == [b.shape for b in on_meta]
