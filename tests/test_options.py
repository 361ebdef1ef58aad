"""Bad command-line values are one-line errors naming the option, before any work."""
import pytest

from gan_dist.training.options import parse_args


@pytest.mark.parametrize("flag,value,message", [
    ("--lr", "-1", "--lr must be > 0"), ("--lr", "nan", "--lr must be > 0"),
    ("--n_cpu", "-1", "--n_cpu must be from 0"),
    ("--latent_dim", "0", "--latent_dim must be an integer from 1"), ("--b1", "1", "--b1 must be in [0, 1)"),
    ("--img_size", "100000", "--img_size must be an integer from 1 to 1024"),
    ("--max_skip_fraction", "2", "--max_skip_fraction must be in [0, 1]"), ("--cache_gb", "-1", "--cache_gb must be"),
    ("--checkpoints_total_limit", "0", "--checkpoints_total_limit must be >= 1"),
    ("--ema_kimg", "inf", "--ema_kimg must be >= 0 and finite")])
def test_out_of_range_values_are_refused(capsys, flag, value, message):
    with pytest.raises(SystemExit) as exc:
        parse_args(["--data", "d", flag, value])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_nccl_on_the_cpu_is_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(["--data", "d", "--cpu", "--ddp_backend", "nccl"])
    assert exc.value.code == 2 and "--ddp_backend nccl needs CUDA devices" in capsys.readouterr().err


def test_the_defaults_pass():
    args = parse_args(["--data", "d"])
    assert args.lr == 0.0002 and args.n_cpu == 2
