import contextlib
import importlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import traceback
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gan_dist.packing.download import sha256_file
from gan_dist.packing.shard import pack

ROOT = Path(__file__).resolve().parents[1]
# one thread per test process (read when torch is first imported, after this): two xdist workers and torchrun's
# ranks share the cores, and several OpenMP threads each on a busy machine slow the small convolutions many times
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture
def fresh_state():
    """No Accelerator state left over from another test, before or after this one."""
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def write_images(folder, n, size=16, mode="RGB", seed=0):
    """n random images as PNG under folder/a and folder/b; returns the arrays in sorted-path order."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for i in range(n):
        shape = (size, size, 3) if mode == "RGB" else (size, size)
        arr = rng.integers(0, 256, shape, dtype=np.uint8)
        path = Path(folder) / ("a" if i % 2 else "b") / f"img{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr, mode).save(path)
        arrays[str(path.relative_to(folder))] = arr
    return [arrays[k] for k in sorted(arrays)]


@pytest.fixture(scope="session")
def digits16(tmp_path_factory):
    """The embedded digits packed at 16x16 greyscale, 4 shards."""
    out = tmp_path_factory.mktemp("digits16")
    pack("digits", out, size=16, channels=1, shard_size=500, workers=1)
    return out


@pytest.fixture(scope="session")
def digits32(tmp_path_factory):
    """The embedded digits packed at 32x32 greyscale (the smallest size --arch resnet takes), 4 shards."""
    out = tmp_path_factory.mktemp("digits32")
    pack("digits", out, size=32, channels=1, shard_size=500, workers=1)
    return out


def run_module(module, *args, env=None, timeout=300, cwd=None):
    """Run `python -m module args` in a fresh process; returns CompletedProcess (text)."""
    full_env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=cwd or ROOT)


def run_here(module, *args, env=None):
    """`python -m module args` run in this process, for tests that need no process boundary (signals, ranks and
    hangs do): the same exit code and output as run_module, without a new interpreter importing torch again."""
    from accelerate.state import AcceleratorState
    main = importlib.import_module(module).main
    saved_env, saved_signals = dict(os.environ), {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    os.environ.update({"WANDB_MODE": "offline", "WANDB_SILENT": "true", **(env or {})})
    AcceleratorState._reset_state(reset_partial_state=True)
    out, err, code = io.StringIO(), io.StringIO(), 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main([str(a) for a in args])
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else int(e.code is not None)
                if isinstance(e.code, str):
                    print(e.code, file=sys.stderr)
            except Exception:  # what the interpreter would print before exiting with 1
                traceback.print_exc()
                code = 1
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        os.environ.clear()
        os.environ.update(saved_env)
        for sig, handler in saved_signals.items():
            signal.signal(sig, handler)
        signal.set_wakeup_fd(-1)
    return subprocess.CompletedProcess([module, *args], code, out.getvalue(), err.getvalue())


def launch(cmd, env=None, timeout=300):
    """Start cmd in its own process group; on timeout kill the whole group and fail as a hang."""
    full_env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1",
                **(env or {})}
    proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=full_env, cwd=ROOT, start_new_session=True)
    return proc, timeout


def finish(proc, timeout):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"hang: no exit after {timeout} s\n{err[-3000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def torchrun_cmd(script_args, nproc=2, rdzv=("--standalone",)):
    return [sys.executable, "-m", "torch.distributed.run", *rdzv, f"--nproc_per_node={nproc}",
            ROOT / "gan_dist" / "train.py", *script_args]


def run_torchrun(script_args, nproc=2, env=None, timeout=300):
    """Run `torchrun --standalone --nproc_per_node nproc gan_dist/train.py ...` to completion."""
    return finish(*launch(torchrun_cmd(script_args, nproc), env, timeout))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_rows(out):
    """Every row of OUTPUT_DIR/metrics.jsonl, as written."""
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def make_damaged_shards(root, truncate=True):
    """lfw-subset at 8 px in 4 shards; shard 1 gets a corrupt PNG, shard 2 is cut in half (if `truncate`)."""
    m = pack("lfw-subset", root, size=8, channels=1, shard_size=25)
    assert len(m["shards"]) == 4
    one = root / "train-000001.tar"
    with tarfile.open(one) as tar:
        members = [(info, tar.extractfile(info).read()) for info in tar.getmembers()]
    with tarfile.open(one, "w") as tar:
        for info, data in members:
            if info.name.startswith("00000030."):
                data = b"\x89PNG garbage"
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    two = root / "train-000002.tar"
    if truncate:
        two.write_bytes(two.read_bytes()[: two.stat().st_size // 2])
    # damage the packer wrote itself (the manifest's sha256 agrees), so it reaches the reader
    for shard in m["shards"]:
        shard["sha256"], shard["bytes"] = sha256_file(root / shard["file"]), (root / shard["file"]).stat().st_size
    (root / "manifest.json").write_text(json.dumps(m))
    return root


def call_main(main, capsys, *args):
    """A command's main(ARGS) in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:  # argparse errors, and main's "error: ..." exits
        code = e.code
        if isinstance(code, str):
            print(code, file=sys.stderr)
    out, err = capsys.readouterr()
    return code, out, err
