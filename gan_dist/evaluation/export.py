"""Export a trained generator as a Hugging Face model folder, and optionally upload it to the Hub.

    python -m gan_dist.export --checkpoint runs/gan --out exports/gan                   # latest checkpoint, G_ema
    python -m gan_dist.export --checkpoint runs/gan --out exports/gan --push_to_hub --hub_model_id user/gan

The folder holds model.safetensors (G's weights: G_ema when the checkpoint has it, else G;
--weights chooses), config.json (the GAN config, the weights used, the step, the training
recipe and dataset from the run's args.json and the pack's manifest) and a model card
README.md with a sample grid (samples.png) and the last logged metrics. Load it with
`HubGenerator.from_pretrained(DIR_OR_ID)` (gan_dist/networks/hub.py) or sample from it with
`python -m gan_dist.sample --checkpoint DIR_OR_ID`.
"""
import argparse
import json
import math
import shlex
import sys
from pathlib import Path

from huggingface_hub import HfApi, ModelCard, ModelCardData

from gan_dist.budgets import MAX_SEED, BudgetError, check_sample_bytes
from gan_dist.evaluation.sample import SampleError, grid_image, latents, load_generator, resolve_checkpoint
from gan_dist.names import MANIFEST
from gan_dist.networks.conditioning import grid_classes, listed
from gan_dist.networks.hub import CONFIG, REPO_ID, TAGS, WEIGHTS, HubError, HubGenerator, check_gan_config
from gan_dist.networks.models import generate
from gan_dist.safe_io import UnsafePath, refuse_links
from gan_dist.training.checkpoint import CheckpointError, read_meta
from gan_dist.training.ema import EMA_FILE
from gan_dist.training.runlog import read_log

GRID = "samples.png"
EXPORT_FILES = (CONFIG, WEIGHTS, "README.md", GRID)
# training options that describe the model; paths and machine settings stay private
RECIPE_KEYS = ("preset", "arch", "latent_dim", "img_size", "channels", "base_width", "width", "widths", "blocks",
               "group_size", "expansion", "mapping_layers", "pacgan", "mbstd_group", "loss", "batch_size", "lr_g",
               "lr_d", "betas_g", "betas_d",
               "r1_gamma", "r2_gamma", "reg_every", "schedule", "schedule_kimg", "mirror", "ema_kimg", "ema_rampup",
               "diffaug", "mixed_precision", "n_epochs", "max_train_steps", "seed")
TRAIN_KEYS = ("loss_D", "loss_G", "D_real", "D_fake", "kimg")  # of metrics.jsonl; the rest is speed and bookkeeping
DATASET_KEYS = ("source", "count", "size", "channels", "image_format", "hf_dataset", "hf_origin", "hf_split",
                "notice")


CARD_HEAD = """# {cfg[arch]} GAN generator, {cfg[img_size]}x{cfg[img_size]}x{cfg[channels]}

{kind} trained with gan-dist for {step} steps{kimg}. The weights are {which}.{grid_note}

![{grid}]({grid})

## Use

```python
import torch
from gan_dist.networks.hub import HubGenerator

G = HubGenerator.from_pretrained("{model}")
{use}
```

or `python -m gan_dist.sample --checkpoint {sample_spec} {sample_flags}--n 64 --grid samples.png`.

## GAN config ({config_name})

```json
{config}
```
"""


class ExportError(Exception):
    """A problem with the options or the checkpoint that the user has to fix."""


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="gan_dist.export", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="a checkpoint-STEP directory, or a run directory (its latest)")
    p.add_argument("--out", required=True, help="the model folder to write (new, or an earlier export)")
    p.add_argument("--weights", choices=("G_ema", "G"), default=None,
                   help="which generator to export; default G_ema when the checkpoint has it, else G")
    p.add_argument("--n_samples", type=int, default=16, help="images in the model card's sample grid")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample grid's latents")
    p.add_argument("--push_to_hub", action="store_true", help="upload the folder to the Hugging Face Hub")
    p.add_argument("--hub_model_id", default=None, help="the Hub repository, user/name (with --push_to_hub)")
    p.add_argument("--hub_token", default=None, help="Hub token (default: HF_TOKEN or `hf auth login`)")
    p.add_argument("--private", action="store_true", help="create the Hub repository as private")
    args = p.parse_args(argv)
    if args.push_to_hub and not args.hub_model_id:
        p.error("--push_to_hub needs --hub_model_id user/name")
    if args.hub_model_id and not REPO_ID.fullmatch(args.hub_model_id):
        p.error(f"--hub_model_id {args.hub_model_id}: expected user/name")
    if args.n_samples < 1:
        p.error(f"--n_samples must be >= 1, got {args.n_samples}")
    if not 0 <= args.seed <= MAX_SEED:
        p.error(f"--seed must be from 0 to {MAX_SEED}, got {args.seed}")
    return args


def _read_json(path):
    """A JSON object from path, or None (absent, damaged, or not an object)."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def check_out(out):
    """Raise ExportError unless `out` is new, empty, or an earlier export (only our files, a gan-dist config.json,
    no links): another model's folder is never overwritten."""
    if not out.exists():
        return
    names = {p.name for p in out.iterdir()} if out.is_dir() else None
    if names == set():
        return
    earlier = _read_json(out / CONFIG) if names else None
    ours = earlier and isinstance(earlier.get("gan_config"), dict) and earlier.get("weights") in ("G", "G_ema")
    if names is None or not names <= set(EXPORT_FILES) or not ours:
        raise ExportError(f"--out {out} is not empty and not an earlier gan-dist export; pick a new directory")
    try:
        refuse_links(out, EXPORT_FILES)
    except UnsafePath as e:
        raise ExportError(f"--out {e}") from None


def run_info(checkpoint, step):
    """(recipe, dataset, metrics) of the run that wrote checkpoint; each empty when its file is missing."""
    run_dir = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else None
    run_args = (_read_json(run_dir / "args.json") if run_dir else None) or {}
    recipe = {k: run_args[k] for k in RECIPE_KEYS if run_args.get(k) not in (None, "")}
    dataset = {}
    if isinstance(run_args.get("data"), str) and run_args["data"]:
        dataset["data"] = Path(run_args["data"]).name
        manifest = _read_json(Path(run_args["data"]) / MANIFEST) or {}
        dataset.update({k: manifest[k] for k in DATASET_KEYS if manifest.get(k) is not None})
    metrics = {}
    for kind in ("train", "eval"):  # the last row at or before the checkpoint's step
        rows = [r for r in read_log(run_dir, kind) if r["step"] <= step] if run_dir else []
        if rows:
            metrics[kind] = rows[-1]
    return recipe, dataset, metrics


def _table(rows, head=("", "")):
    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v).replace("|", "\\|")

    return "\n".join([f"| {head[0]} | {head[1]} |", "|---|---|", *(f"| {k} | {cell(v)} |" for k, v in rows.items())])


def model_card(config, metrics, repo_id, folder):
    """The model card (huggingface_hub's ModelCard) for an export described by config.json's contents."""
    cfg, dataset, step = config["gan_config"], config["dataset"], config["global_step"]
    classes = cfg.get("classes") or []
    from_hub = dataset.get("source") == "hf" and dataset.get("hf_origin") == "hub"
    tags = [t for t in TAGS if t != "unconditional-image-generation"] + ["class-conditional"] if classes else TAGS
    data = ModelCardData(library_name="gan-dist", tags=list(tags),
                         pipeline_tag=None if classes else "unconditional-image-generation",
                         datasets=[dataset["hf_dataset"]] if from_hub else None)
    kimg = f" ({config['num_imgs_seen'] / 1000:g} kimg)" if config.get("num_imgs_seen") else ""
    which = "the exponential moving average of G (G_ema)" if config["weights"] == "G_ema" else "the trained G"
    shape = f"({{n}}, {cfg['channels']}, {cfg['img_size']}, {cfg['img_size']}) in [-1, 1]"
    if classes:
        kind = f"A class-conditional image generator of {len(classes)} classes ({listed(classes)}),"
        use = (f"images = G(torch.randn(2, {cfg['latent_dim']}), G.class_ids([{classes[0]!r}, {classes[-1]!r}]))"
               f"  # {shape.format(n=2)}; by class name, or number")
    else:
        kind = "An unconditional image generator"
        use = f"images = G(torch.randn(16, {cfg['latent_dim']}))  # {shape.format(n=16)}"
    lines = [CARD_HEAD.format(
        cfg=cfg, step=step, kimg=kimg, which=which, grid=GRID, config_name=CONFIG, config=json.dumps(cfg, indent=2),
        model=repo_id or folder, sample_spec=f"hf://{repo_id}" if repo_id else folder, kind=kind, use=use,
        sample_flags=f"--class {shlex.quote(classes[0])} " if classes else "",
        grid_note=" The grid shows one class per row (the first classes), the same latent down each column."
        if classes else "")]
    if config["recipe"]:
        lines += ["## Training recipe", "", _table(config["recipe"], ("option", "value")), ""]
    if dataset:
        lines += ["## Dataset", "", _table({k: v for k, v in dataset.items() if k != "notice"}, ("", "")), ""]
        if dataset.get("notice"):
            lines += [f"> {dataset['notice']}", ""]
    for kind, row in metrics.items():
        title = "Evaluation" if kind == "eval" else "Training losses"
        shown = {k: v for k, v in row.items() if k != "step" and (kind == "eval" or k in TRAIN_KEYS)}
        lines += [f"## {title} (logged at step {row['step']})", "", _table(shown, ("metric", "value")), ""]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


def export(args):
    """Write the model folder; return (folder, config.json's contents)."""
    try:
        checkpoint = resolve_checkpoint(args.checkpoint)
    except SampleError as e:
        raise ExportError(str(e)) from None
    meta = read_meta(checkpoint)
    has_ema = (checkpoint / EMA_FILE).is_file()
    weights = args.weights or ("G_ema" if has_ema else "G")
    if weights == "G_ema" and not has_ema:
        raise ExportError(f"--weights G_ema: {checkpoint} has no {EMA_FILE} (trained without EMA); "
                          "export the trained G with --weights G")
    out = Path(args.out)
    check_out(out)
    cfg = check_gan_config(meta["gan_config"])  # before load_generator builds G from it
    try:  # a conditional grid: a row of a square grid's columns for each of the first classes
        n_grid = len(grid_classes(len(cfg.classes), args.n_samples)[0]) if cfg.classes else args.n_samples
        check_sample_bytes(n_grid, cfg.latent_dim, cfg, "--n_samples")
    except BudgetError as e:
        raise ExportError(str(e)) from None
    G, _ = load_generator(checkpoint, ema=weights == "G_ema", device="cpu")
    model = HubGenerator(meta["gan_config"])
    model.net.load_state_dict(G.state_dict())
    model.eval()

    step = meta["global_step"]
    recipe, dataset, metrics = run_info(checkpoint, step)
    config = {"gan_config": meta["gan_config"], "weights": weights, "global_step": step,
              "num_imgs_seen": meta.get("num_imgs_seen"), "checkpoint": checkpoint.name,
              "recipe": recipe, "dataset": dataset}
    out.mkdir(parents=True, exist_ok=True)
    if cfg.classes:  # one row per class (the first ones), the same latents down each column
        c, columns = grid_classes(len(cfg.classes), args.n_samples)
        z = latents(columns, cfg.latent_dim, args.seed).repeat(len(c) // columns, 1)
        images = generate(model, z, "cpu", c=c)
    else:
        columns = math.ceil(math.sqrt(args.n_samples))
        images = generate(model, latents(args.n_samples, model.gan_config.latent_dim, args.seed), "cpu")
    grid_image(images, nrow=columns).save(out / GRID)
    # before save_pretrained, which keeps a README.md it finds
    model_card(config, metrics, args.hub_model_id, out).save(out / "README.md")
    model.save_pretrained(out, config=config)
    return out, config


def push(folder, repo_id, token=None, private=False):
    """Create the Hub repository if needed and upload the folder as one commit; return the commit URL."""
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True).repo_id
    return api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=folder,
                             allow_patterns=[CONFIG, WEIGHTS, "README.md", GRID],
                             commit_message="Upload a gan-dist generator")


def main(argv=None):
    args = parse_args(argv)
    try:
        out, config = export(args)
    except (ExportError, HubError, SampleError, CheckpointError) as e:
        sys.exit(f"error: {e}")
    print(f"{args.checkpoint}: wrote {out} ({config['weights']} weights at step {config['global_step']}: "
          f"{WEIGHTS}, {CONFIG}, README.md, {GRID})")
    if args.push_to_hub:
        try:
            url = push(out, args.hub_model_id, args.hub_token, args.private)
        except (OSError, ValueError) as e:  # token, permissions, network, a malformed id
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            sys.exit(f"error: could not upload {out} to {args.hub_model_id} ({reason}); check --hub_token "
                     "(or `hf auth login`), the id and the network")
        print(f"uploaded: {url}")


if __name__ == "__main__":
    main()
