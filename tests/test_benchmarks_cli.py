"""`python -m benchmarks`: the command is found wherever it stands among the options."""
import pytest

from benchmarks.__main__ import main


def test_the_command_may_follow_the_options(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--out", str(tmp_path / "r.json"), "quality", "--help"])
    assert e.value.code == 0 and "usage: python -m benchmarks quality" in capsys.readouterr().out
    assert not (tmp_path / "r.json").exists()  # nothing ran
    with pytest.raises(SystemExit) as e:
        main(["--seconds", "1", "step", "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "usage: python -m benchmarks " in out and "--repeats" in out
    with pytest.raises(SystemExit) as e:
        main(["--steps", "5", "small-data", "--help"])
    assert e.value.code == 0 and "usage: python -m benchmarks small-data" in capsys.readouterr().out



def test_an_unknown_command_is_refused_by_name(capsys):
    with pytest.raises(SystemExit) as e:
        main(["speed"])
    assert e.value.code == 2 and "invalid choice: 'speed'" in capsys.readouterr().err
