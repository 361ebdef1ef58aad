import json
import shutil

import pytest
import torch
from conftest import call_main, run_here, run_module
from PIL import Image

pytest.importorskip("huggingface_hub", reason="the hf extra is not installed: pip install '.[hf]'")
from huggingface_hub import ModelCard  # noqa: E402

from gan_dist.evaluation import export as export_mod  # noqa: E402
from gan_dist.evaluation.sample import latents, load_generator  # noqa: E402
from gan_dist.evaluation.sample import main as sample_main  # noqa: E402
from gan_dist.networks.hub import TAGS, HubGenerator  # noqa: E402

OFFLINE = {"HF_HUB_OFFLINE": "1"}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def run(digits16, tmp_path_factory):
    """A two-step CPU run on 16x16 digits with G_ema and a metrics row per step."""
    out = tmp_path_factory.mktemp("export") / "run"
    r = run_here("gan_dist.train", "--cpu", "--data", digits16, "--img_size", 16, "--channels", 1,
                 "--batch_size", 32, "--n_cpu", 0, "--max_train_steps", 2, "--log_steps", 1, "--output_dir", out,
                 "--report_to", "none")
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "digits-gan"
    export_mod.main(["--checkpoint", str(run), "--out", str(out), "--n_samples", "9", "--hub_model_id",
                     "tester/digits-gan"])  # named in the card; nothing is uploaded without --push_to_hub
    return out




def pngs(folder, n):
    return [Image.open(folder / f"{i:06d}.png").tobytes() for i in range(n)]


def test_from_pretrained_gives_the_checkpoints_generator(run, exported):
    checkpoint = run / "checkpoints" / "checkpoint-2"
    G_ckpt, used_ema = load_generator(checkpoint)
    G_hub = HubGenerator.from_pretrained(exported)  # huggingface_hub's loading path, on a local folder
    assert used_ema and not G_hub.training
    z = latents(8, G_hub.gan_config.latent_dim, seed=3)
    with torch.no_grad():
        assert torch.equal(G_ckpt(z), G_hub(z))
    config = json.loads((exported / "config.json").read_text())
    assert config["weights"] == "G_ema" and config["global_step"] == 2 and config["checkpoint"] == "checkpoint-2"
    assert config["gan_config"] == {"arch": "mlp", "latent_dim": 100, "img_size": 16, "channels": 1,
                                    "base_width": 64}
    assert config["recipe"]["batch_size"] == 32 and config["dataset"]["source"] == "digits"


def test_sample_from_export_matches_the_checkpoint(run, exported, tmp_path, capsys):
    for name, spec in (("ckpt", run), ("export", exported)):
        code, out, err = call_main(sample_main, capsys, "--checkpoint", spec, "--n", 4, "--seed", 5,
                              "--out_dir", tmp_path / name, "--device", "cpu")
        assert code == 0, err
    assert pngs(tmp_path / "ckpt", 4) == pngs(tmp_path / "export", 4)


def test_hub_id_is_read_from_the_hub_cache_offline(exported, tmp_path):
    """`hf://user/name` goes through snapshot_download; here the cache holds the export, as a download leaves it."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--tester--digits-gan"
    shutil.copytree(exported, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    env = {**OFFLINE, "HF_HUB_CACHE": str(tmp_path / "hub")}
    for name, spec in (("hub", "hf://tester/digits-gan"), ("plain", "tester/digits-gan"), ("local", exported)):
        # a process of its own: huggingface_hub reads HF_HUB_CACHE and HF_HUB_OFFLINE when imported
        r = run_module("gan_dist.sample", "--checkpoint", spec, "--n", 3, "--out_dir", tmp_path / name,
                       "--device", "cpu", env=env, timeout=120)
        assert r.returncode == 0, r.stderr
    assert pngs(tmp_path / "hub", 3) == pngs(tmp_path / "local", 3) == pngs(tmp_path / "plain", 3)


def test_model_card_names_config_data_recipe_and_metrics(exported):
    card = ModelCard.load(exported / "README.md")
    assert card.data.library_name == "gan-dist" and card.data.tags == TAGS
    assert card.data.pipeline_tag == "unconditional-image-generation"
    assert '"latent_dim": 100' in card.text and '"arch": "mlp"' in card.text
    assert "](samples.png)" in card.text and Image.open(exported / "samples.png").size == (3 * 18 + 2,) * 2
    assert "| batch_size | 32 |" in card.text and "| source | digits |" in card.text
    assert "logged at step 2" in card.text and "| loss_D |" in card.text
    assert 'from_pretrained("tester/digits-gan")' in card.text and "--checkpoint hf://tester/digits-gan" in card.text


def test_weights_G_and_ema_flags(run, exported, tmp_path, capsys):
    code, out, err = call_main(export_mod.main, capsys, "--checkpoint", run, "--out", tmp_path / "g", "--weights", "G")
    assert code == 0, err
    G_plain, used_ema = load_generator(run / "checkpoints" / "checkpoint-2", ema=False)
    z = latents(4, 100, seed=0)
    with torch.no_grad():
        assert torch.equal(HubGenerator.from_pretrained(tmp_path / "g")(z), G_plain(z))
    code, out, err = call_main(sample_main, capsys, "--checkpoint", tmp_path / "g", "--n", 2,
                               "--out_dir", tmp_path / "s", "--ema")
    assert code != 0 and "holds the trained G only" in err
    code, out, err = call_main(sample_main, capsys, "--checkpoint", exported, "--n", 2, "--out_dir", tmp_path / "s",
                          "--no-ema")
    assert code != 0 and "holds the EMA weights (G_ema) only" in err


def one_error_line(err):
    lines = err.strip().splitlines()
    return len(lines) == 1 and lines[0].startswith("error: ")


def test_bad_inputs_are_one_line_errors(exported, tmp_path, capsys):
    code, out, err = call_main(export_mod.main, capsys, "--checkpoint", tmp_path / "none", "--out", tmp_path / "x")
    assert code != 0 and one_error_line(err) and "neither a checkpoint" in err
    (tmp_path / "empty").mkdir()
    code, out, err = call_main(sample_main, capsys, "--checkpoint", tmp_path / "empty", "--n", 1, "--out_dir", tmp_path)
    assert code != 0 and one_error_line(err) and "config.json" in err
    code, out, err = call_main(sample_main, capsys, "--checkpoint", "hf://nobody/no-model", "--n", 1,
                               "--out_dir", tmp_path)
    assert code != 0 and one_error_line(err) and "HF_HUB_OFFLINE" in err
    shutil.copytree(exported, tmp_path / "no_weights", ignore=shutil.ignore_patterns("*.safetensors"))
    code, out, err = call_main(sample_main, capsys, "--checkpoint", tmp_path / "no_weights", "--n", 1,
                               "--out_dir", tmp_path)
    assert code != 0 and one_error_line(err) and "has no model.safetensors" in err
    code, out, err = call_main(export_mod.main, capsys, "--checkpoint", tmp_path / "none", "--out", tmp_path / "x",
                          "--push_to_hub")
    assert code != 0 and "--hub_model_id" in err
    code, out, err = call_main(export_mod.main, capsys, "--checkpoint", tmp_path, "--out", tmp_path / "x",
                          "--hub_model_id", "no id")
    assert code != 0 and "expected user/name" in err


@pytest.mark.parametrize("change, message", [
    ({"img_size": 10 ** 6}, "expected an integer from 1 to"),
    ({"img_size": 1024, "channels": 3}, "use --arch dcgan"),  # 3.2e9 parameters: refused by GANConfig, never allocated
    ({"arch": "transformer"}, "unknown --arch"),
    ({"depth": 3}, "unknown gan_config fields"),
    ({"latent_dim": 64}, "does not fit config.json"),  # the weights were trained with 100
])
def test_untrusted_config_is_refused(exported, tmp_path, capsys, change, message):
    folder = tmp_path / "m"
    shutil.copytree(exported, folder)
    config = json.loads((folder / "config.json").read_text())
    config["gan_config"].update(change)
    (folder / "config.json").write_text(json.dumps(config))
    code, out, err = call_main(sample_main, capsys, "--checkpoint", folder, "--n", 1, "--out_dir", tmp_path / "s")
    assert code != 0 and one_error_line(err) and message in err, err


def test_resnet_with_a_count_of_blocks_per_stage_exports_and_loads(digits32, tmp_path, capsys):
    """gan.json's per-stage `blocks` (a list, here with stages that only resample) passes config.json's checks."""
    out = tmp_path / "run"
    r = run_here("gan_dist.train", "--cpu", "--data", digits32, "--img_size", 32, "--channels", 1,
                 "--batch_size", 8, "--n_cpu", 0, "--max_train_steps", 1, "--output_dir", out, "--report_to", "none",
                 "--preset", "modern", "--widths", "32,32,16,16", "--blocks", "1,1,0,0")
    assert r.returncode == 0, r.stderr[-3000:]
    code, _, err = call_main(export_mod.main, capsys, "--checkpoint", out, "--out", tmp_path / "m", "--n_samples", 1)
    assert code == 0, err
    G_hub = HubGenerator.from_pretrained(tmp_path / "m")
    assert G_hub.gan_config.blocks == (1, 1, 0, 0)
    z = latents(4, G_hub.gan_config.latent_dim, seed=3)
    with torch.no_grad():
        assert torch.equal(load_generator(out / "checkpoints" / "checkpoint-1")[0](z), G_hub(z))
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["gan_config"]["blocks"] = [1, 1, -1, 0]
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    code, _, err = call_main(sample_main, capsys, "--checkpoint", tmp_path / "m", "--n", 1, "--out_dir", tmp_path / "s")
    assert code != 0 and one_error_line(err) and "gan_config.blocks = [1, 1, -1, 0]" in err, err


def test_export_refuses_a_foreign_nonempty_out_dir(run, tmp_path, capsys):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    code, out, err = call_main(export_mod.main, capsys, "--checkpoint", run, "--out", tmp_path / "busy")
    assert code != 0 and one_error_line(err) and "not empty" in err
