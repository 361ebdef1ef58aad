"""Helpers for the hostile-input tests: peak memory of a command, and the one-error-line contract."""
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time

from conftest import ROOT

GB = 1 << 30
SAFETY_AS = 12 * GB  # importing torch maps about 3.3 GB of address space; RSS is what the tests measure


def _safety_limit():
    resource.setrlimit(resource.RLIMIT_AS, (SAFETY_AS, SAFETY_AS))


def run_measured(*args, timeout=120, env=None):
    """Run `python ARGS` (e.g. "-m", "gan_dist.train", ...); return (CompletedProcess, its peak RSS in bytes).

    The peak comes from wait4's rusage for this one child (ru_maxrss, KiB on Linux), so
    other processes the test run started do not count. A safety limit on its address space
    (SAFETY_AS) keeps a bomb that is not defused from taking the machine's memory.
    """
    full_env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1",
                **(env or {})}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, *map(str, args)], stdout=out, stderr=err, env=full_env, cwd=ROOT,
                                start_new_session=True, preexec_fn=_safety_limit)
        status, usage = _wait4(proc.pid, timeout)
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        out.seek(0)
        err.seek(0)
        print(f"peak RSS {usage.ru_maxrss / 1024:.0f} MiB: python {' '.join(map(str, args))[:160]}")  # pytest -s
        return (subprocess.CompletedProcess(proc.args, proc.returncode, out.read(), err.read()),
                usage.ru_maxrss * 1024)


def _wait4(pid, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got, status, usage = os.wait4(pid, os.WNOHANG)
        if got:
            return status, usage
        time.sleep(0.05)
    os.killpg(pid, signal.SIGKILL)
    os.wait4(pid, 0)
    raise AssertionError(f"hang: no exit after {timeout} s")


def assert_one_error(r, *fragments, code=None):
    """The command failed with `error: ...` as its last line, no traceback, and the fragments in that line."""
    lines = r.stderr.strip().splitlines()
    assert lines and "Traceback" not in r.stderr, r.stderr[-3000:]
    last = lines[-1]
    assert last.startswith("error: ") or ": error: " in last, r.stderr[-3000:]
    assert r.returncode == (code if code is not None else r.returncode) and r.returncode not in (0, None), r
    for fragment in fragments:
        assert fragment in last, last
    return last
