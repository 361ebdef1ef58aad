"""Helpers for the hostile-input tests: peak memory of a command, and the one-error-line contract."""
import os
import signal
import subprocess
import sys

from conftest import ROOT

GB = 1 << 30
SAFETY_AS = 8 * GB  # imports map about 5 GB of address space (torch, accelerate, sklearn); RSS is what is measured


# Forks from this small process, not from pytest: a child forked from a process holding torch starts with
# that process's resident pages counted in its ru_maxrss (Linux records the old mm's peak at exec).
LAUNCHER = """
import os, resource, sys
limit = int(sys.argv[1])
pid = os.fork()
if pid == 0:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
_, status, usage = os.wait4(pid, 0)
print(PEAK, usage.ru_maxrss, file=sys.stderr)
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""
PEAK = "__peak_rss_kib__"


def run_measured(*args, timeout=120, env=None):
    """Run `python ARGS` (e.g. "-m", "gan_dist.train", ...); return (CompletedProcess, its peak RSS in bytes).

    The peak is wait4's ru_maxrss for that one process, taken by a small launcher that forks it,
    so neither pytest's memory nor other processes count. A limit on its address space
    (SAFETY_AS) keeps a bomb that is not defused from taking the machine's memory.
    """
    full_env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1",
                **(env or {})}
    cmd = [sys.executable, "-c", LAUNCHER.replace("PEAK", repr(PEAK)), str(SAFETY_AS), *map(str, args)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env, cwd=ROOT,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError(f"hang: no exit after {timeout} s") from None
    err, _, peak = err.rpartition(PEAK)
    peak_kib = int(peak.split()[0])
    print(f"peak RSS {peak_kib / 1024:.0f} MiB: python {' '.join(map(str, args))[:160]}")  # pytest -s shows it
    return subprocess.CompletedProcess(args, proc.returncode, out, err), peak_kib * 1024


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
