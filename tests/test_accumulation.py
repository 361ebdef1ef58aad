"""Gradient accumulation: the batch's split refused by name, accumulated steps equal to one big batch (1 process
and 2 gloo ranks), one all-reduce per step, and a bit-exact resume."""
import json
import sys

import pytest
import torch
from accelerate import Accelerator
from accumulation_check import CASES, differences, train
from conftest import ROOT, finish, launch, run_here
from safetensors.torch import load_file

from gan_dist.training.options import BatchSplit, parse_args, split_batch


@pytest.mark.parametrize("given,expected", [
    ((64, None, None), (64, 1)), ((64, 2, None), (32, 2)), ((64, None, 16), (16, 4)),
    ((64, None, 128), (64, 1)),  # a cap above the batch changes nothing
    ((64, 4, 32), (16, 4)),  # both given: the micro-batch fits under the cap
])
def test_batch_split(given, expected):
    assert split_batch(*given) == expected


def test_global_batch_is_batch_size_times_processes_whatever_the_accumulation():
    split = BatchSplit(micro_batch=16, accumulation=2, processes=8)
    assert (split.per_process, split.global_batch) == (32, 256)
    assert str(split) == ("batch 32 per process in 2 micro-batches of 16 (gradient accumulation), global 256 "
                          "(16 x 2 micro-batches x 8 processes)")
    assert str(BatchSplit(64, 1, 1)) == "batch 64 per process, global 64 (64 x 1 process)"


@pytest.mark.parametrize("argv,message", [
    (["--batch_size", "64", "--gradient_accumulation_steps", "3"],
     "--batch_size 64 does not split into --gradient_accumulation_steps 3 equal micro-batches"),
    (["--batch_size", "64", "--batch_gpu", "24"],
     "--batch_size 64 does not split into micro-batches of --batch_gpu 24"),
    (["--batch_size", "64", "--gradient_accumulation_steps", "2", "--batch_gpu", "16"],
     "--gradient_accumulation_steps 2 gives micro-batches of 32, above --batch_gpu 16"),
    (["--gradient_accumulation_steps", "0"], "--gradient_accumulation_steps must be >= 1"),
    (["--batch_gpu", "0"], "--batch_gpu must be >= 1"),
    (["--batch_size", "8", "--batch_gpu", "4", "--pacgan", "8"],
     "--batch_size 8 (micro-batches of 4) does not split into groups of --pacgan 8"),
    (["--arch", "resnet", "--img_size", "32", "--batch_size", "48", "--gradient_accumulation_steps", "2",
      "--mbstd_group", "16"], "gives D 24 inputs a micro-batch, which do not split into groups of --mbstd_group 16"),
])
def test_a_batch_that_does_not_split_is_refused_by_name(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--data", "x", *argv])
    err = capsys.readouterr().err
    assert "error:" in err and message in err, err


def test_help_says_where_accumulation_is_not_exact_and_why(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for words in ("Exact for the norm-free resnet", "not for BatchNorm (--arch mlp, dcgan: statistics of a "
                  "micro-batch are not the batch's)", "minibatch std (its groups are drawn from a micro-batch)"):
        assert words in text


@pytest.mark.parametrize("case", sorted(CASES))
def test_one_process_32_x_2_equals_one_batch_of_64(fresh_state, case):
    """The norm-free resnet: D's and G's gradients and weights after each step, to float tolerance."""
    loss, gammas = CASES[case]
    accelerator = Accelerator(cpu=True)
    reference, _ = train(accelerator, loss, gammas, accumulation=1, prepare=False)
    got, _ = train(accelerator, loss, gammas, accumulation=2, prepare=True)
    wrong, _ = differences(got, reference)
    assert not wrong, "\n".join(wrong[:10])
    assert any(g.abs().max() > 0 for name, g in got[-1].items() if name.endswith(".grad"))


def test_two_gloo_ranks_16_x_2_equal_one_batch_of_64_with_one_all_reduce_per_step():
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           ROOT / "tests" / "accumulation_check.py"]
    r = finish(*launch(cmd, env={"ACCELERATE_USE_CPU": "1"}, timeout=240))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    for case in CASES:
        assert r.stdout.count(f"{case}: accumulated gradients and weights match one process") == 2, r.stdout
    # each rank checked that no bucket was all-reduced twice in a step (all micro-batches but the last run
    # under no_sync, and D's forwards in G's phase do not arm its reducer)
    assert r.stdout.count("all-reduced buckets per step [{") == 2 * len(CASES), r.stdout


def test_resume_with_accumulation_is_bit_exact(tmp_path, digits32):
    """The modern recipe (lazy R1 + R2, G_ema, mirror) in micro-batches of 8: 2 + 2 steps resumed equal 4."""
    common = ("--cpu", "--data", digits32, "--img_size", 32, "--channels", 1, "--batch_size", 16, "--batch_gpu", 8,
              "--n_cpu", 0, "--report_to", "none", "--preset", "modern", "--widths", "32,32,16,8", "--group_size", 8,
              "--latent_dim", 32, "--mirror", "--reg_every", 2, "--schedule_kimg", 4 * 16 / 1000, "--log_steps", 2,
              "--checkpointing_steps", 2, "--sample_interval", 100)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    resume = ("--resume_from_checkpoint", "latest")
    for out, steps, extra in ((straight, 4, ()), (resumed, 2, ()), (resumed, 4, resume)):
        r = run_here("gan_dist.train", *common, "--output_dir", out, "--max_train_steps", steps, *extra,
                     env={"OMP_NUM_THREADS": "1"})
        assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stdout and "at step 2" in r.stdout
    assert "batch 16 per process in 2 micro-batches of 8 (gradient accumulation), global 16" in r.stdout
    for name in ("model.safetensors", "model_1.safetensors", "G_ema.safetensors"):
        a = load_file(straight / "checkpoints" / "checkpoint-4" / name)
        b = load_file(resumed / "checkpoints" / "checkpoint-4" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    recorded = json.loads((straight / "args.json").read_text())
    assert recorded["batch_gpu"] == 8 and recorded["batch_split"] == {
        "global_batch": 16, "per_process": 16, "micro_batch": 8, "gradient_accumulation_steps": 2, "processes": 1}
