"""A failing data loader or a stuck run ends with an error or on SIGTERM, in seconds, never hangs."""
import io
import json
import signal
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest
from conftest import ROOT, finish, launch, run_torchrun
from PIL import Image

from gan_dist.packing.download import sha256_file
from gan_dist.packing.shard import pack
from gan_dist.training.data import load_into_memory
from gan_dist.training.manifest import DataError, load_manifest, shard_counts
from gan_dist.training.preemption import REPEAT_S


@pytest.fixture(scope="module")
def odd_size_pack(tmp_path_factory):
    """lfw-subset at 8 px in 4 shards, one image of which is 4x4 (its sha256 in the manifest agrees)."""
    root = tmp_path_factory.mktemp("odd") / "pack"
    m = pack("lfw-subset", root, size=8, channels=1, shard_size=25)
    shard = root / m["shards"][1]["file"]
    with tarfile.open(shard) as tar:
        members = [(info, tar.extractfile(info).read()) for info in tar.getmembers()]
    small = io.BytesIO()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(small, "PNG")
    with tarfile.open(shard, "w") as tar:
        for info, data in members:
            if info.name.endswith(".png") and info.name.startswith("00000030"):
                data, info.size = small.getvalue(), len(small.getvalue())
            tar.addfile(info, io.BytesIO(data))
    m["shards"][1]["sha256"] = sha256_file(shard)
    (root / "manifest.json").write_text(json.dumps(m))
    return root


def train(data, out, *extra):
    return [sys.executable, "-m", "gan_dist.train", "--cpu", "--data", data, "--img_size", 8, "--channels", 1,
            "--batch_size", 8, "--output_dir", out, "--report_to", "none", "--max_train_steps", 20, *extra]


def test_an_exception_in_a_loader_worker_ends_the_run_with_an_error(tmp_path, odd_size_pack):
    r = finish(*launch(train(odd_size_pack, tmp_path / "run", "--n_cpu", 1), timeout=90))
    assert r.returncode == 1, r.stderr[-2000:]
    assert "error: reading the shards failed: RuntimeError: stack expects each tensor to be equal size" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_failing_pipe_command_is_a_skipped_shard_not_a_crash(digits16):
    manifest, urls = load_manifest(digits16, shard_url="pipe:exit 3 # {file}")
    with pytest.raises(DataError, match="none of the 0 images"):
        load_into_memory(urls, num_workers=1, expected=None)
    _, good = load_manifest(digits16, shard_url=f"pipe:cat {digits16}/{{file}}; exit 3")  # data, then a failure
    images, skipped = load_into_memory(good, num_workers=1, expected=shard_counts(manifest, good))
    assert len(images) + skipped == manifest["count"]


def test_sigterm_twice_stops_a_run_stuck_reading_data(tmp_path, digits16):
    out = tmp_path / "run"
    proc, _ = launch([sys.executable, "-m", "gan_dist.train", "--cpu", "--data", digits16, "--img_size", 16,
                      "--channels", 1, "--n_cpu", 1, "--output_dir", out, "--report_to", "none",
                      "--shard_url", f"pipe:sleep 600; cat {digits16}/{{file}}"])
    deadline = time.monotonic() + 60
    while not (out / "args.json").exists():  # past setup, into reading the shards
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-2000:]
        time.sleep(0.2)
    time.sleep(1)
    proc.send_signal(signal.SIGTERM)
    time.sleep(REPEAT_S + 0.5)
    proc.send_signal(signal.SIGTERM)
    r = finish(proc, 20)  # its stderr closes only once the `sleep 600` of the pipe is gone too
    assert r.returncode == 143 and "stopping now on a second SIGTERM" in r.stderr


STUCK = """
import os, signal, sys, types
from gan_dist.training.preemption import StopSignal
StopSignal(types.SimpleNamespace(num_processes=1), grace_s=1)
print("ready", flush=True)
os.read(os.pipe()[0], 1)  # blocked for ever, as a rank waiting on a dead peer
"""


def test_a_stop_signal_ends_a_stuck_process_after_the_grace_period():
    proc = subprocess.Popen([sys.executable, "-c", STUCK], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT)
    assert proc.stdout.readline() == "ready\n"
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 143 and "no training step finished in the 1 s after it" in err
    assert time.monotonic() - start < 10


def test_a_data_failure_on_one_rank_ends_both_ranks(tmp_path, digits16):
    # rank 1's shard command fails; rank 0 reads its data and would wait for rank 1 in the first all-reduce
    r = run_torchrun(["--cpu", "--data", digits16, "--img_size", 16, "--channels", 1, "--batch_size", 16,
                      "--n_cpu", 1, "--max_train_steps", 30, "--output_dir", tmp_path / "run", "--report_to", "none",
                      "--shard_url", f'pipe:test "$RANK" = 1 && exit 3; cat {digits16}/{{file}}'], timeout=120)
    assert r.returncode != 0 and "error: none of the 1797 images in the shards could be decoded" in r.stderr
