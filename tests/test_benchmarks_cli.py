"""`python -m benchmarks`: the command is found wherever it stands among the options."""
import subprocess
import sys

from conftest import ROOT


def run(*args):
    return subprocess.run([sys.executable, "-m", "benchmarks", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)


def test_the_command_may_follow_the_options(tmp_path):
    r = run("--out", str(tmp_path / "r.json"), "quality", "--help")
    assert r.returncode == 0 and "usage: python -m benchmarks quality" in r.stdout
    assert not (tmp_path / "r.json").exists()  # nothing ran
    r = run("--seconds", "1", "step", "--help")
    assert r.returncode == 0 and "usage: python -m benchmarks " in r.stdout and "--repeats" in r.stdout


def test_an_unknown_command_is_refused_by_name():
    r = run("speed")
    assert r.returncode == 2 and "invalid choice: 'speed'" in r.stderr
